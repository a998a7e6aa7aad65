"""Replay: real customer-service dialogues as concurrent WhatsApp conversations, closed-loop, against the real app.

``atende bench replay`` (``run_replay``). The dialogues are JSON lines (``{"conversation_id", "turns": [{"speaker":
"user"|"agent"|"action", "text"}]}``) from ``data_dir`` (``../shared/data/conversations/*.jsonl``, 884 of them);
``conversations`` of them run at once (1,000 by default: the files are cycled, each conversation a customer of
its own), their starts spread over ``ramp_s`` seconds. Each customer posts its user turns one by one as signed
webhooks, the next once the whole reply to the previous one has reached its phone (the Graph API stand-in in
the customers' process, ``customers.replay``), with no think time; the agent's and the actions' lines are not
sent (the assistant answers instead). A customer whose conversation was handed off to a person (the intent
detector heard a request for one, or the fallbacks piled up) stops there: the AI no longer answers it.

The app is served as ``stack.serve`` does (``embedded`` or ``scale``), the model the slow scripted one. Reported:
throughput (answered turns per second, from the first post to the last reply), reply latency (from the post
being sent to the reply's last part at the stand-in; p50, p95, max), the acknowledgement latency, the resident
memory of the server's process(es) every ``rss_every_s`` seconds (start, peak, end and a series), the handoffs
(how many, why, and the customer texts that caused them), and the exactly-once checks (``checks``).
"""
from __future__ import annotations

import collections
import json
import os
import platform
from pathlib import Path

from atende.bench.whatsapp_load.checks import check, percentiles, turn_notes, turn_statuses
from atende.bench.whatsapp_load.customers import Customers
from atende.bench.whatsapp_load.harness import busy, host_cpu
from atende.bench.whatsapp_load.stack import RssSampler, serve
from atende.bench.whatsapp_load.verify import ack_figures, wait_drained

DATA_DIR = Path(__file__).resolve().parents[4] / "shared" / "data" / "conversations"
# the scripted model's reply: in the dialogues' language (English), as a working model would answer; the bench's
# Portuguese REPLY would be rejected as written in another language than the customer's and asked for again
# (two model calls a turn, and the reply sent anyway: a test of that path, not of a conversation)
ENGLISH_REPLY = "Thanks for your message! We are looking into it. *Opening hours*: Mon to Fri, 9am to 6pm."


def load_conversations(data_dir: Path, n: int) -> list[dict]:
    """``n`` conversations (``{"source", "texts"}``: the id and the user turns' texts), cycling through the
    dialogues of ``data_dir/*.jsonl`` in file and line order; dialogues with no user text are skipped."""
    dialogues: list[dict] = []
    for path in sorted(Path(data_dir).glob("*.jsonl")):
        with path.open(encoding="utf-8") as f:
            for line in f:
                if not line.strip():
                    continue
                d = json.loads(line)
                texts = [t["text"].strip() for t in d.get("turns", []) if t.get("speaker") == "user" and
                         str(t.get("text") or "").strip()]
                if texts:
                    dialogues.append({"source": d.get("conversation_id", f"{path.name}:{len(dialogues)}"),
                                      "texts": texts})
    if not dialogues:
        raise ValueError(f"no dialogues with user turns in {data_dir}")
    return [dialogues[k % len(dialogues)] for k in range(n)]


def run_replay(conversations: int = 1000, data_dir: Path = DATA_DIR, llm_delay_s: float = 2.0, workers: int = 32,
               database_url: str | None = None, redis_url: str | None = None, *, profile: str = "embedded",
               api_processes: int = 2, worker_processes: int = 2, debounce_s: float | None = None,
               ramp_s: float = 10.0, reply_timeout_s: float = 900.0, rss_every_s: float = 5.0,
               drain_timeout_s: float = 180.0, logs_dir: Path | None = None, reply: str = ENGLISH_REPLY,
               quiet: bool = False) -> dict:
    """Replay ``conversations`` dialogues at once, closed-loop, the scripted model answering ``reply``; the report
    (printed unless ``quiet``). ``report["violation_count"]`` must be 0."""
    convs = load_conversations(data_dir, conversations)
    with Customers() as people, serve(profile, people.graph_url, database_url=database_url, redis_url=redis_url,
                                      workers=workers, llm_delay_s=llm_delay_s, debounce_s=debounce_s,
                                      api_processes=api_processes, worker_processes=worker_processes,
                                      logs_dir=logs_dir, reply=reply) as st:
        database = st.services.settings.resolved_database_url
        with RssSampler(st.server_pids, rss_every_s) as rss:
            cpu0, host0, load0 = st.server_cpu(), host_cpu(), os.getloadavg()
            people.start("replay", url=f"{st.base}/webhooks/whatsapp", conversations=convs, run_id=st.run_id,
                         database_url=database, ramp_s=ramp_s, reply_timeout_s=reply_timeout_s)
            result = people.result(reply_timeout_s * (1 + max(len(c["texts"]) for c in convs)) + 600)
            cpu1, host1, load1 = st.server_cpu(), host_cpu(), os.getloadavg()
        drained, drain_s, last_state = wait_drained(st.services, st.watch, drain_timeout_s)
        sent = people.sent()
        checked = check(st.services, result["rows"], sent)
        reasons = _handoff_reasons(st.services)
        report = _report(convs, result, checked, sent, rss.figures(), reasons)
        wall = result["wall_end"] - result["wall_t0"]
        report.update(
            llm={"calls": st.llm.calls, "max_concurrent": st.llm.max_in_flight,
                 "calls_per_answered_turn": round(st.llm.calls / max(report["answered_turns"], 1), 2)},
            cpu={"server_cores": round((cpu1 - cpu0) / max(wall, 1e-9), 2), "host_busy": busy(host0, host1),
                 "loadavg_1m": [round(load0[0], 2), round(load1[0], 2)]},
            drained=drained, drain_s=round(drain_s, 1), state_at_end=last_state)
        if not drained:
            report["violations"]["not_drained"] = 1
        report["violation_count"] = sum(report["violations"].values())
        report["setup"] = {**st.setup, "machine": f"{os.cpu_count()} CPU cores, Python {platform.python_version()}",
                           "load": f"closed loop, {len(convs)} conversations at once (starts over {ramp_s:g} s), no "
                                   "think time, customers in a separate process", "data_dir": str(data_dir)}
    if not quiet:
        print_report(report)
    return report


def _handoff_reasons(services) -> dict[str, dict]:
    """customer id -> the first handoff change of its conversation (who, why)."""
    from sqlalchemy import select

    from runtime.models import Conversation, HandoffChange

    with services.session() as session:
        rows = session.execute(select(Conversation.customer_id, HandoffChange.actor, HandoffChange.reason,
                                      HandoffChange.to_state)
                               .join(HandoffChange, HandoffChange.conversation_id == Conversation.id)
                               .order_by(HandoffChange.at)).all()
    first: dict[str, dict] = {}
    for customer, actor, reason, to_state in rows:
        first.setdefault(customer, {"actor": actor, "reason": reason, "to": to_state})
    return first


def _report(convs: list[dict], result: dict, checked, sent: list[dict], rss: dict, reasons: dict) -> dict:
    from atende.bench.whatsapp_load.payloads import customer_id
    from runtime.intent import wants_human

    turns, rows = result["turns"], result["rows"]
    wall = max((t["reply"] for t in turns), default=result["wall_t0"]) - result["wall_t0"]
    handoffs = []
    for h in result["handoffs"]:
        why = reasons.get(customer_id(h["conversation"]), {})
        handoffs.append({**h, "actor": why.get("actor"), "reason": why.get("reason"),
                         "asks_for_a_person_by_the_detector": wants_human([h["text"], *h["earlier"]])})
    t = checked.tables
    violations = dict(checked.violations)
    if result["unanswered"]:
        violations["post_without_reply"] = len(result["unanswered"])
        checked.examples.setdefault("post_without_reply", str(result["unanswered"][0]))
    if result["stray"]:
        violations["message_to_unknown_customer"] = result["stray"]
    user_turns = sum(len(c["texts"]) for c in convs)
    return {
        "conversations": len(convs), "distinct_dialogues": len({c["source"] for c in convs}),
        "user_turns_in_dialogues": user_turns, "posts": len(rows), "answered_turns": len(turns),
        "conversations_completed": len(convs) - len(result["handoffs"]) - len({u["conversation"] for u in result["unanswered"]}),
        "wall_s": round(wall, 1), "throughput_turns_per_s": round(len(turns) / max(wall, 1e-9), 2),
        "reply_latency_s": percentiles([x["reply"] - x["sent"] for x in turns], 2),
        "acks": ack_figures(rows),
        "turns_in_db": len(t.turns), "turn_statuses": turn_statuses(t, t.turn_by_id), "turn_notes": turn_notes(t),
        "replies_sent_to_standin": len(sent),
        "handoffs": {"count": len(handoffs),
                     "by_reason": dict(collections.Counter(f"{h['actor']}: {h['reason']}" for h in handoffs)),
                     "detector_heard_a_request": sum(h["asks_for_a_person_by_the_detector"] for h in handoffs),
                     "examples": handoffs[:10], "all": handoffs},
        "rss_mb": rss,
        "violations": violations, "violation_examples": checked.examples,
    }


def print_report(report: dict) -> None:
    """The figures, one aspect per line; the handoffs with the texts that caused them."""
    s, lat, a, rss = report["setup"], report["reply_latency_s"], report["acks"], report["rss_mb"]
    print(f"\nreplay: {report['conversations']} conversations ({report['distinct_dialogues']} distinct dialogues), "
          f"{report['user_turns_in_dialogues']} user turns in them; {s['load']}")
    print(f"  profile  {s['profile']}   database {s['database']}   queue {s['queue']}   machine {s['machine']}")
    print(f"  setup    LLM {s['llm_delay_s']:g} s/call (scripted: {s['reply'][:40]!r}...), {s['workers']} customer "
          f"workers, debounce {s['debounce_s']:g} s")
    print(f"  rate     {report['answered_turns']} turns answered of {report['posts']} posted in {report['wall_s']} s: "
          f"{report['throughput_turns_per_s']} turns/s; {report['conversations_completed']} conversations completed")
    print(f"  latency  reply (post sent -> last part at the stand-in) p50 {lat.get('p50')} s  p95 {lat.get('p95')} s"
          f"  max {lat.get('max')} s;  ack p50 {a['latency_from_send_ms'].get('p50')} ms"
          f" p99 {a['latency_from_send_ms'].get('p99')} ms ({a['ok']} of {a['posts']} 200)")
    if rss:
        print(f"  rss      server process(es) start {rss['start_mb']} MB, peak {rss['peak_mb']} MB (at {rss['peak_at_s']} s),"
              f" end {rss['end_mb']} MB; every {rss['every_s']:g} s:")
        print("           " + "  ".join(f"{t:g}s {mb:g}" for t, mb in rss["series"]))
        print(f"           at the peak by process: {rss['peak_by_process']}")
    h = report["handoffs"]
    print(f"  handoffs {h['count']} conversations ({h['detector_heard_a_request']} by the intent detector's words); "
          f"{h['by_reason']}")
    for e in h["examples"]:
        print(f"           - {e['text'][:110]!r} (turn {e['turn']} of {e['source']})")
    print(f"  turns    {report['turns_in_db']} in the database {report['turn_statuses']}; "
          f"{report['replies_sent_to_standin']} messages at the stand-in; LLM calls {report['llm']['calls']} "
          f"(max {report['llm']['max_concurrent']} at once, {report['llm']['calls_per_answered_turn']} per answered turn)")
    print(f"  notes    the turns' logged notes: {report['turn_notes']}")
    print(f"  cpu      server {report['cpu']['server_cores']} cores; machine busy {report['cpu']['host_busy']}, load average"
          f" {report['cpu']['loadavg_1m']} at the start and the end (other processes included)")
    print(f"  drain    {'drained' if report['drained'] else 'NOT drained'} in {report['drain_s']} s "
          f"(state {report['state_at_end']})")
    print(f"  exactly-once violations: {report['violation_count']}"
          + (f"  {report['violations']}  e.g. {report['violation_examples']}" if report["violation_count"] else ""))


def run_from_args(args) -> int:
    """``atende bench replay`` (``options.add_replay_arguments``); the exit code: 1 if an invariant was violated."""
    from atende.bench.whatsapp_load.stack import database_from_args, write_json

    with database_from_args(args) as database_url:
        report = run_replay(args.conversations, args.data or DATA_DIR, llm_delay_s=args.llm_delay, workers=args.workers,
                            database_url=database_url, redis_url=args.redis, profile=args.profile,
                            api_processes=args.api_processes, worker_processes=args.worker_processes,
                            debounce_s=args.debounce, ramp_s=args.ramp, reply_timeout_s=args.reply_timeout,
                            rss_every_s=args.rss_every, drain_timeout_s=args.drain_timeout, logs_dir=args.logs,
                            reply=args.reply or ENGLISH_REPLY)
    write_json(args.json, report)
    return 1 if report["violation_count"] else 0
