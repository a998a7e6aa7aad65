"""The printed figures of a run: one line per aspect (rate, acknowledgement latency, what was stored, debounce,
lags, queue, drain, CPU, violations)."""
from __future__ import annotations


def print_report(report: dict) -> None:
    s, a = report["setup"], report["acks"]
    lat, snd = a["latency_from_schedule_ms"], a["latency_from_send_ms"]
    print(f"\nwhatsapp load benchmark: {report['customers']} customers, target {report['target_rate']:g} posts/s "
          f"for {report['seconds']:g} s, LLM {s['llm_delay_s']:g} s/reply, {s['workers']} workers, debounce {s['debounce_s']:g} s")
    print(f"  profile  {s['profile']}   machine  {s['machine']}")
    print(f"  setup    database {s['database']}   queue {s['queue']}   load generator: {s['generator']}")
    print(f"  rate     target {report['target_rate']:g}/s   offered {a['offered_per_s']}/s   acknowledged {a['acked_per_s']}/s "
          f"({a['ok']} of {a['posts']} posts 200, non-200 {a['non_200']}: {a['statuses']})")
    print(f"  ack      from scheduled time p50 {lat.get('p50')} ms  p99 {lat.get('p99')} ms  max {lat.get('max')} ms"
          f"   (from send: p50 {snd.get('p50')}  p99 {snd.get('p99')}  max {snd.get('max')} ms;"
          f" generator lag p99 {a['generator_lag_ms'].get('p99')} ms)")
    print(f"  acks/s   per second of the run: {a['acked_per_s_by_second']}")
    mpt, tpc = report["messages_per_turn"], report["turns_per_customer"]
    print(f"  stored   {report['messages_stored']} messages in {report['conversations']} conversations; "
          f"{report['turns']} turns {report['turn_statuses']}; replies sent to the stand-in {report['replies_sent_to_standin']}"
          f" (outbound {report['outbound_statuses']})")
    print(f"  debounce messages/turn p50 {mpt.get('p50')} max {mpt.get('max')}   turns/customer p50 {tpc.get('p50')} "
          f"max {tpc.get('max')}   premature turns {report['debounce']['premature_turns']}   "
          f"bursts split {report['debounce']['bursts_split']}")
    t = report["timings"]
    print(f"  lags     stored after ack p50 {t['stored_after_ack_ms'].get('p50')} ms p99 {t['stored_after_ack_ms'].get('p99')} ms;"
          f" turn start after newest msg p50 {t['turn_start_after_newest_message_s'].get('p50')} s"
          f" max {t['turn_start_after_newest_message_s'].get('max')} s;"
          f" reply after last msg p50 {t['reply_after_last_message_acked_s'].get('p50')} s"
          f" max {t['reply_after_last_message_acked_s'].get('max')} s")
    q = report["queue"]
    counted = (f"executed {q['executed']}  errors {q['errors']}  turn jobs per turn {q['turn_jobs_per_turn']}"
               if s["profile"] == "embedded" else "executed/errors/running: not counted (the consumers run in other processes)")
    print(f"  queue    {counted}"
          f"  peak backlog {q['peak_backlog']}  LLM calls {report['llm']['calls']} (max {report['llm']['max_concurrent']} at once)")
    print(f"  backlog  (s, queued, scheduled, running) every 5 s: {q['timeline']}")
    if q["error_samples"]:
        print(f"  errors   {q['error_samples']}")
    print(f"  drain    {'drained' if report['drained'] else 'NOT drained'} in {report['drain_s']} s after the load"
          f" (bound {report['drain_timeout_s']:g} s; state {report['state_at_end']})")
    c = report.get("cpu", {})
    print(f"  cpu      server process {c.get('server_cores_during_load')} cores during the load, "
          f"{c.get('server_cores_during_drain')} during the drain, {c.get('server_cpu_ms_per_post')} ms per post; "
          f"whole machine busy {c.get('host_busy_during_load')} / {c.get('host_busy_during_drain')} (other processes included)")
    if "api_cpu_ms_per_post" in c:
        print(f"  api      the API processes {c['api_cores_during_load']} cores during the load, "
              f"{c['api_cpu_ms_per_post']} ms CPU per post acknowledged")
    print(f"  invariant violations: {report['violation_count']}"
          + (f"  {report['violations']}  e.g. {report['violation_examples']}" if report["violation_count"] else ""))
