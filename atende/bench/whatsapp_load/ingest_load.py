"""Ingest under load: customers write at a steady rate, first with no ingest, then while a large document ingests
into the same assistant's knowledge base through the admin API, in one run; how much slower the replies get.

``atende bench whatsapp --during-ingest PATH`` (``run_ingest_load``). The app is served as ``stack.serve`` does
(the embedded profile: the API, the customer-queue consumers and the ingest-queue consumer in this process;
the scale profile: API processes, ``atende worker --queue customer`` processes and one ``atende worker --queue
ingest`` process, on PostgreSQL and Redis). The customers (``customers``, in a process of their own with the
Graph API stand-in) post open-loop at ``rate`` posts/s, round-robin over ``customers`` customers (post ``i`` due
at ``t0 + i / rate``, whatever happened to the earlier ones). After ``baseline_s`` seconds the document is
uploaded as the product's admin does (``POST /api/assistants/bench/documents``, multipart), then polled
(``GET /api/documents/{id}``, every second) until it is ready or failed (or ``ingest_timeout_s``); the load
stops there, the app drains and the bookkeeping is checked (``checks``).

Each reply's latency, excluding the model: from the acknowledgement of the newest message its turn covers to
the arrival of its last part at the stand-in, minus the time the scripted model spent in that turn's calls
(each call logged with its start and end, ``stack.CallLog``; a turn may call it 0, 1 or several times: a
focused look, a retry told why its answer was rejected). The debounce (``whatsapp_debounce_s``, 2 s by default:
a turn waits for the burst to be quiet) is part of it,
as a customer sees it. Phases: ``without_ingest`` (the reply arrived before the upload started, its message
acknowledged after the first ``warmup_s`` seconds), ``during_ingest`` (acknowledged after the upload started, the
reply arrived before the ingest finished); the turns that straddle either edge are left out. Per phase: reply latency
excluding the model (p50, p95, max), the turn's start after its newest message (the debounce plus the wait in
the customer queue: separate from the ingest queue, it should not grow), the retrieval time the turn logged
(CPU shared with the embedding), the model calls and their time; then the ratios during/without.
"""
from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import distinct, func, select
from sqlalchemy.orm import aliased

from atende.bench.whatsapp_load.checks import check, percentiles, turn_notes
from atende.bench.whatsapp_load.customers import Customers
from atende.bench.whatsapp_load.harness import busy, host_cpu
from atende.bench.whatsapp_load.stack import serve
from atende.bench.whatsapp_load.verify import ack_figures, wait_drained
from runtime.models import Message

BASELINE, DURING = "without_ingest", "during_ingest"


def run_ingest_load(document: Path, customers: int = 100, rate: float = 10.0, baseline_s: float = 60.0,
                    llm_delay_s: float = 2.0, workers: int = 32, database_url: str | None = None,
                    redis_url: str | None = None, *, profile: str = "embedded", api_processes: int = 2,
                    worker_processes: int = 2, debounce_s: float | None = None, ingest_timeout_s: float = 1800.0,
                    drain_timeout_s: float = 180.0, warmup_s: float = 15.0, baseline_replies: int = 0,
                    logs_dir: Path | None = None, quiet: bool = False) -> dict:
    """One run: ``baseline_s`` seconds of load, then the same load while ``document`` ingests; the report (printed
    unless ``quiet``). ``report["violation_count"]`` must be 0 and ``report["ingest"]["status"]`` "ready". The
    turns of the load's first ``warmup_s`` seconds are not counted in the phase without ingest (the scale
    profile's worker processes load their embedding model then). The phase without ingest goes on past
    ``baseline_s`` until ``baseline_replies`` replies to messages of after the warm-up were sent (at most
    ``drain_timeout_s`` more): on a loaded machine the first turns can take longer than the phase."""
    document = Path(document)
    with Customers() as people, serve(profile, people.graph_url, database_url=database_url, redis_url=redis_url,
                                      workers=workers, llm_delay_s=llm_delay_s, debounce_s=debounce_s,
                                      api_processes=api_processes, worker_processes=worker_processes,
                                      ingest_processes=1 if profile == "scale" else 0, logs_dir=logs_dir) as st:
        cpu0, host0, load0 = st.server_cpu(), host_cpu(), os.getloadavg()
        started = time.time()
        people.start("open", url=f"{st.base}/webhooks/whatsapp", customers=customers, rate=rate, run_id=st.run_id)
        time.sleep(baseline_s)
        _wait_for_replies(st.services, started + warmup_s + 1.0, baseline_replies, drain_timeout_s)
        baseline_s = time.time() - started
        cpu1, host1, load1 = st.server_cpu(), host_cpu(), os.getloadavg()
        ingest = _ingest(st, document, ingest_timeout_s)
        cpu2, host2, load2 = st.server_cpu(), host_cpu(), os.getloadavg()
        people.stop()
        load = people.result(120)
        drained, drain_s, last_state = wait_drained(st.services, st.watch, drain_timeout_s)
        sent = people.sent()
        checked = check(st.services, load["rows"], sent)
        calls = list(st.llm.call_log)
        report: dict[str, Any] = {
            "document": {"path": str(document), "bytes": document.stat().st_size},
            "customers": customers, "target_rate": rate, "baseline_s": round(baseline_s, 1), "warmup_s": warmup_s,
            "acks": ack_figures(load["rows"]), "ingest": ingest,
            "phases": _phases(checked, load, calls, ingest, rate, warmup_s),
            "messages_stored": len(checked.tables.inbound), "turns": len(checked.tables.turns),
            "turn_notes": turn_notes(checked.tables),
            "replies_sent_to_standin": len(sent),
            "llm": {"calls": st.llm.calls, "max_concurrent": st.llm.max_in_flight},
            "queue": _queue(st.watch, ingest),
            "cpu": {"server_cores_without_ingest": round((cpu1 - cpu0) / max(baseline_s, 1e-9), 2),
                    "server_cores_during_ingest": round((cpu2 - cpu1) / max(ingest["polled_s"], 1e-9), 2),
                    "host_busy_without_ingest": busy(host0, host1), "host_busy_during_ingest": busy(host1, host2),
                    # the machine's 1-minute load average at the start, the upload and the end of the ingest
                    "loadavg_1m": [round(x[0], 2) for x in (load0, load1, load2)]},
            "drained": drained, "drain_s": round(drain_s, 1), "state_at_end": last_state,
            "violations": dict(checked.violations), "violation_examples": checked.examples,
        }
        if not drained:
            report["violations"]["not_drained"] = 1
        report["violation_count"] = sum(report["violations"].values())
        report["setup"] = {**st.setup, "machine": f"{os.cpu_count()} CPU cores, Python {platform.python_version()}",
                           "load": "open loop (post i due at t0 + i/rate), customers round-robin, separate process"}
    if not quiet:
        print_report(report)
    return report


def _wait_for_replies(services, since: float, count: int, timeout_s: float) -> None:
    """Wait until ``count`` turns that cover a message stored after ``since`` (epoch seconds) have a reply sent,
    or ``timeout_s`` has passed."""
    since_at = datetime.fromtimestamp(since, UTC)
    inbound, outbound = aliased(Message), aliased(Message)
    query = (select(func.count(distinct(outbound.turn_id)))
             .join(inbound, (inbound.turn_id == outbound.turn_id) & (inbound.direction == "inbound"))
             .where(outbound.direction == "outbound", outbound.sent_at.is_not(None), inbound.created_at >= since_at))
    deadline = time.time() + timeout_s
    while count > 0 and time.time() < deadline:
        with services.session() as session:
            if session.scalar(query) >= count:
                return
        time.sleep(0.5)


def _ingest(st, document: Path, timeout_s: float) -> dict:
    """Upload ``document`` through the admin API and poll it until it is ready or failed (or ``timeout_s``)."""
    with st.admin() as admin, document.open("rb") as f:
        started = time.time()
        response = admin.post("/api/assistants/bench/documents", files={"file": (document.name, f)})
        acked = time.time()
        response.raise_for_status()
        doc = response.json()
        status, polls = doc["status"], 0
        while status not in ("ready", "failed") and time.time() - started < timeout_s:
            time.sleep(1.0)
            doc = admin.get(f"/api/documents/{doc['id']}").json()
            status, polls = doc["status"], polls + 1
        seen_done = time.time()
    job = doc.get("job") or {}
    job_started, job_finished = _ts(job.get("started_at")), _ts(job.get("finished_at"))
    finished = job_finished if job_finished and status in ("ready", "failed") else None
    return {
        "status": status, "finished": status == "ready", "error": doc.get("error"),
        "upload_started": started, "upload_acked": acked, "upload_s": round(acked - started, 2),
        "finished_at": finished, "seen_finished_at": seen_done,
        "duration_s": round(finished - started, 1) if finished else None,  # upload to the job's end
        "job_s": round(job_finished - job_started, 1) if job_finished and job_started else None,
        "queued_s": round(job_started - acked, 2) if job_started else None,
        "chunks": doc.get("chunk_count"), "elements": job.get("elements"), "job_timings": job.get("timings"),
        "polls": polls, "polled_s": round(seen_done - started, 1), "timeout_s": timeout_s,
    }


def _ts(value: str | None) -> float | None:
    from datetime import UTC, datetime

    if not value:
        return None
    when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def _phases(checked, load: dict, calls: list, ingest: dict, rate: float, warmup_s: float) -> dict:
    """Per phase: reply latency excluding the model, turn start after the newest message, retrieval, model."""
    t = checked.tables
    acked = {r.wamid: load["wall_t0"] + r.done_s for r in load["rows"] if r.status == 200}
    due = {r.wamid: load["wall_t0"] + r.i / rate for r in load["rows"]}
    index = {r.i: r.wamid for r in load["rows"]}
    model_s: dict[str, float] = {}
    model_calls: dict[str, int] = {}
    unmatched = 0
    for start, end, marker in calls:
        turn_id = checked.inbound_turn.get(index.get(marker)) if marker is not None else None
        if turn_id is None:
            unmatched += 1
            continue
        model_s[turn_id] = model_s.get(turn_id, 0.0) + (end - start)
        model_calls[turn_id] = model_calls.get(turn_id, 0) + 1
    upload, done = ingest["upload_started"], ingest["finished_at"] or ingest["seen_finished_at"]
    rows: dict[str, dict[str, list]] = {p: {"latency": [], "from_due": [], "start": [], "retrieval": [], "model": [],
                                            "calls": [], "status": []} for p in (BASELINE, DURING)}
    for turn in t.turns:
        msgs = [m for m in t.covered.get(turn.id, []) if m.channel_message_id in acked]
        reply = checked.reply_at.get(turn.id)
        if not msgs or reply is None:
            continue
        newest = max(msgs, key=lambda m: acked[m.channel_message_id])
        ack = acked[newest.channel_message_id]
        if reply < upload:
            phase = BASELINE if ack >= load["wall_t0"] + warmup_s else None
        else:
            phase = DURING if ack >= upload and reply <= done else None
        if phase is None:
            continue
        r = rows[phase]
        spent = model_s.get(turn.id, 0.0)
        r["latency"].append(reply - ack - spent)
        r["from_due"].append(reply - due[newest.channel_message_id] - spent)
        r["start"].append((turn.started_at - max(m.created_at for m in msgs)).total_seconds())
        r["retrieval"].append(float(checked.timings.get(turn.id, {}).get("retrieval_ms", 0.0)))
        r["model"].append(spent)
        r["calls"].append(model_calls.get(turn.id, 0))
        r["status"].append(turn.status)
    out: dict = {"model_calls_unmatched": unmatched}
    for phase, r in rows.items():
        out[phase] = {
            "turns": len(r["latency"]),
            "reply_latency_excl_model_s": percentiles(r["latency"]),
            "reply_latency_excl_model_from_schedule_s": percentiles(r["from_due"]),
            "turn_start_after_newest_message_s": percentiles(r["start"]),
            "retrieval_ms": percentiles(r["retrieval"], 1),
            "model_s_per_turn": percentiles(r["model"]),
            "model_calls_per_turn": dict(sorted(_count(r["calls"]).items())),
            "turn_statuses": _count(r["status"]),
        }
    a, b = out[BASELINE]["reply_latency_excl_model_s"], out[DURING]["reply_latency_excl_model_s"]
    out["ratio_during_without"] = {k: round(b[k] / a[k], 3) if a.get(k) and b.get(k) else None
                                   for k in ("p50", "p95", "max")}
    return out


def _count(values: list) -> dict:
    counts: dict = {}
    for v in values:
        counts[v] = counts.get(v, 0) + 1
    return counts


def _queue(watch, ingest: dict) -> dict:
    """The customer queue's backlog over the run (the ingest job runs on the other queue)."""
    samples = watch.samples
    peak = max(samples, key=lambda s: s[1] + s[2], default=(0, 0, 0, 0))
    return {"customer_queue_peak": {"at_s": round(peak[0], 1), "queued": peak[1], "scheduled": peak[2],
                                    "running": peak[3]},
            "executed": dict(watch.executed), "errors": dict(watch.errors),
            # (s, queued, scheduled, running) about 20 times over the run
            "timeline": [(round(s), q, sc, r) for s, q, sc, r in samples[4::max(10, len(samples) // 20)]]}


def print_report(report: dict) -> None:
    """The figures, one aspect per line."""
    s, i, ph, a = report["setup"], report["ingest"], report["phases"], report["acks"]
    print(f"\ningest under load: {report['customers']} customers at {report['target_rate']:g} posts/s (open loop); "
          f"{report['baseline_s']:g} s without ingest (the first {report['warmup_s']:g} s not counted), then while "
          f"{Path(report['document']['path']).name} ({report['document']['bytes'] / 1e6:.1f} MB) ingests")
    print(f"  profile  {s['profile']}   database {s['database']}   queue {s['queue']}   machine {s['machine']}")
    print(f"  setup    LLM {s['llm_delay_s']:g} s/call (scripted), {s['workers']} customer workers, debounce "
          f"{s['debounce_s']:g} s, embedding model {s['embedding_model']}")
    print(f"  posts    {a['ok']} of {a['posts']} acknowledged 200 (offered {a['offered_per_s']}/s); ack p50 "
          f"{a['latency_from_schedule_ms'].get('p50')} ms p99 {a['latency_from_schedule_ms'].get('p99')} ms")
    print(f"  ingest   {i['status']} ({'finished' if i['finished'] else 'NOT finished'}) in {i['duration_s']} s "
          f"from the upload (job {i['job_s']} s, queued {i['queued_s']} s, upload {i['upload_s']} s); "
          f"{i['chunks']} chunks, {i['elements']} elements; stages {i['job_timings']}")
    print("  reply latency excluding the model (from the ack of the turn's newest message to its last part "
          "at the stand-in, minus its model calls):")
    for name in (BASELINE, DURING):
        p = ph[name]
        lat, start, ret = p["reply_latency_excl_model_s"], p["turn_start_after_newest_message_s"], p["retrieval_ms"]
        print(f"    {name:<15} {p['turns']:>5} turns  p50 {lat.get('p50')} s  p95 {lat.get('p95')} s  max {lat.get('max')} s"
              f"   | turn start after msg p50 {start.get('p50')} p95 {start.get('p95')} s"
              f" | retrieval p50 {ret.get('p50')} p95 {ret.get('p95')} ms | model calls/turn {p['model_calls_per_turn']}"
              f" | {p['turn_statuses']}")
    r = ph["ratio_during_without"]
    print(f"  ratio    during/without ingest: p50 {r['p50']}  p95 {r['p95']}  max {r['max']}"
          f"   (model calls not matched to a turn: {ph['model_calls_unmatched']})")
    q = report["queue"]
    print(f"  queue    customer queue peak {q['customer_queue_peak']}; (s, queued, scheduled, running) over the run: "
          f"{q['timeline']}")
    c = report["cpu"]
    counted = ("this process: the parser's sandbox process is not counted" if s["profile"] == "embedded" else
               "every API, worker and ingest process")
    print(f"  cpu      server {c['server_cores_without_ingest']} cores without ingest, {c['server_cores_during_ingest']}"
          f" during ({counted});"
          f" machine busy {c['host_busy_without_ingest']} / {c['host_busy_during_ingest']}, load average"
          f" {c['loadavg_1m']} (other processes included)")
    print(f"  stored   {report['messages_stored']} messages, {report['turns']} turns, {report['replies_sent_to_standin']}"
          f" messages at the stand-in; LLM calls {report['llm']['calls']} (max {report['llm']['max_concurrent']} at once)")
    print(f"  notes    the turns' logged notes: {report['turn_notes']}")
    print(f"  drain    {'drained' if report['drained'] else 'NOT drained'} in {report['drain_s']} s "
          f"(state {report['state_at_end']})")
    print(f"  exactly-once violations: {report['violation_count']}"
          + (f"  {report['violations']}  e.g. {report['violation_examples']}" if report["violation_count"] else ""))


def run_from_args(args) -> int:
    """``atende bench whatsapp --during-ingest PATH`` (the whatsapp benchmark's options); the exit code: 1 if an
    invariant was violated or the ingest did not finish."""
    from atende.bench.whatsapp_load.stack import database_from_args, write_json

    with database_from_args(args) as database_url:
        report = run_ingest_load(args.during_ingest, customers=args.customers, rate=args.rate, baseline_s=args.seconds,
                                 llm_delay_s=args.llm_delay, workers=args.workers, database_url=database_url,
                                 redis_url=args.redis, profile=args.profile, api_processes=args.api_processes,
                                 worker_processes=args.worker_processes, debounce_s=args.debounce,
                                 ingest_timeout_s=args.ingest_timeout, drain_timeout_s=args.drain_timeout,
                                 warmup_s=args.warmup, logs_dir=args.logs)
    write_json(args.json, report)
    return 1 if report["violation_count"] or not report["ingest"]["finished"] else 0
