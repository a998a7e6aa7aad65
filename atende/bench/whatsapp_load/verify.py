"""After the load: wait for the drain, then check the bookkeeping from the database and gather the figures.

The checks (each failure counted as a violation, with an example): each acknowledged wamid stored exactly
once; every inbound message covered by a turn; one reply per turn, sent in as many parts as it splits into;
messages received by the stand-in == parts with status ``sent`` (and none sent twice).
"""
from __future__ import annotations

import collections
import statistics
import time
from dataclasses import dataclass, field

import numpy as np

from atende.bench.whatsapp_load.harness import QueueWatch, SlowScriptedLLM
from atende.bench.whatsapp_load.load import Ack
from atende.bench.whatsapp_load.payloads import REPLY


def summarize(values: list[float], digits: int = 1) -> dict:
    """n, p50, p90, p99, max and mean of ``values``, rounded to ``digits``."""
    if not values:
        return {"n": 0}
    p50, p90, p99 = (float(v) for v in np.percentile(values, [50, 90, 99]))
    return {"n": len(values), "p50": round(p50, digits), "p90": round(p90, digits), "p99": round(p99, digits),
            "max": round(max(values), digits), "mean": round(statistics.fmean(values), digits)}


def _state(services, watch: QueueWatch) -> dict:
    from sqlalchemy import func, select

    from runtime.models import Message
    from runtime.whatsapp.models import WebhookPost

    with services.session() as session:
        unprocessed = session.scalar(select(func.count()).select_from(WebhookPost).where(WebhookPost.processed.is_(False)))
        uncovered = session.scalar(select(func.count()).select_from(Message).where(
            Message.direction == "inbound", Message.status == "received"))
        unsent = session.scalar(select(func.count()).select_from(Message).where(
            Message.direction == "outbound", Message.status.in_(("answered", "pending"))))
    queued, scheduled = watch.counts()
    return {"unprocessed_posts": unprocessed, "uncovered_inbound": uncovered, "unsent_replies": unsent,
            "queued": queued, "scheduled": scheduled, "running": watch.running}


def wait_drained(services, watch: QueueWatch, timeout_s: float) -> tuple[bool, float, dict]:
    """Poll until nothing is left to do (twice in a row); bounded by ``timeout_s``."""
    t0 = time.monotonic()
    quiet_polls, state = 0, {}
    while time.monotonic() - t0 < timeout_s:
        try:
            state = _state(services, watch)
        except Exception as exc:  # noqa: BLE001 (a locked database: try again)
            state = {"error": str(exc)[:120]}
            quiet_polls = 0
        else:
            quiet_polls = quiet_polls + 1 if not any(state.values()) else 0
            if quiet_polls >= 2:
                return True, time.monotonic() - t0, state
        time.sleep(0.5)
    return False, time.monotonic() - t0, state


def ack_figures(rows: list[Ack]) -> dict:
    """What the generator saw: statuses, offered and acknowledged rates, latencies, acks per second."""
    ok = [r for r in rows if r.status == 200]
    statuses = collections.Counter(r.status for r in rows)
    first_send, last_send = min(r.sent_s for r in rows), max(r.sent_s for r in rows)
    last_done = max(r.done_s for r in rows)
    buckets = collections.Counter(int(r.done_s) for r in ok)  # acks completed in each 1 s of the run
    return {
        "posts": len(rows), "ok": len(ok), "non_200": len(rows) - len(ok),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "offered_per_s": round((len(rows) - 1) / max(last_send - first_send, 1e-9), 1),
        "acked_per_s": round(len(ok) / max(last_done - first_send, 1e-9), 1),
        "latency_from_schedule_ms": summarize([r.from_schedule_ms for r in rows]),
        "latency_from_send_ms": summarize([r.from_send_ms for r in rows]),
        "generator_lag_ms": summarize([r.lag_ms for r in rows]),
        "acked_per_s_by_second": [buckets.get(s, 0) for s in range(int(last_done) + 1)],
    }


@dataclass
class Tables:
    """The rows the checks read, once, and the turn each message and reply belongs to."""

    convs: dict
    inbound: list
    outbound: list
    parts: collections.Counter
    parts_sent: int
    turns: list
    posts: list
    turn_by_id: dict = field(init=False)
    covered: dict = field(init=False)  # turn id -> its inbound messages
    replies: dict = field(init=False)  # turn id -> its outbound messages

    def __post_init__(self) -> None:
        self.turn_by_id = {t.id: t for t in self.turns}
        self.covered = collections.defaultdict(list)
        for m in self.inbound:
            if m.turn_id in self.turn_by_id:
                self.covered[m.turn_id].append(m)
        self.replies = collections.defaultdict(list)
        for o in self.outbound:
            self.replies[o.turn_id].append(o)


def _read_tables(services) -> Tables:
    from sqlalchemy import func, select

    from runtime.models import Conversation, Message, MessagePart, Turn
    from runtime.whatsapp.models import WebhookPost

    with services.session() as session:
        return Tables(
            convs={c.id: c.customer_id for c in session.scalars(select(Conversation))},
            inbound=list(session.execute(select(Message.channel_message_id, Message.conversation_id, Message.turn_id,
                                                Message.status, Message.created_at).where(Message.direction == "inbound"))),
            outbound=list(session.execute(select(Message.id, Message.turn_id, Message.status, Message.sent_at,
                                                 Message.text).where(Message.direction == "outbound"))),
            parts=collections.Counter(session.scalars(select(MessagePart.message_id))),
            parts_sent=session.scalar(select(func.count()).select_from(MessagePart).where(MessagePart.status == "sent")),
            turns=list(session.execute(select(Turn.id, Turn.conversation_id, Turn.status, Turn.started_at,
                                              Turn.finished_at, Turn.error))),
            posts=list(session.execute(select(WebhookPost.received_at, WebhookPost.body, WebhookPost.processed,
                                              WebhookPost.error))),
        )


class _Violations:
    def __init__(self) -> None:
        self.counts: collections.Counter = collections.Counter()
        self.examples: dict[str, str] = {}

    def __call__(self, kind: str, example: str, n: int = 1) -> None:
        self.counts[kind] += n
        self.examples.setdefault(kind, example)


def _check_stored(rows: list[Ack], t: Tables, violate: _Violations) -> None:
    """Each acknowledged wamid stored exactly once, nothing else stored, every post processed."""
    stored = collections.Counter(m.channel_message_id for m in t.inbound)
    for r in rows:
        if r.status == 200 and stored[r.wamid] == 0:
            violate("acked_not_stored", r.wamid)
    for wamid, n in stored.items():
        if n > 1:
            violate("stored_more_than_once", wamid, n - 1)
    posted = {r.wamid for r in rows}
    for wamid in stored:
        if wamid not in posted:
            violate("stored_not_posted", wamid)
    for p in t.posts:
        if p.error:
            violate("post_processing_error", p.error[:160])


def _check_turns(t: Tables, violate: _Violations) -> None:
    """Every inbound message covered by exactly one turn (turn_id is a single column: one turn at most);
    each turn produced exactly one reply, sent in the parts it splits into."""
    from runtime.whatsapp.render import render_for_whatsapp
    from runtime.whatsapp.split import split_message

    for m in t.inbound:
        if m.turn_id is None:
            violate("inbound_not_covered", m.channel_message_id)
        elif m.turn_id not in t.turn_by_id:
            violate("inbound_turn_missing", m.channel_message_id)
        elif m.status != "answered":
            violate("inbound_not_answered", f"{m.channel_message_id} status {m.status}")
    # a burst of greetings or thanks only ("Oi", "Obrigado!") is answered without the model, in one short message
    expected_parts = {"answered": len(split_message(render_for_whatsapp(REPLY))), "smalltalk": 1}
    for turn in t.turns:
        if turn.status not in expected_parts:
            violate(f"turn_{turn.status}", f"{turn.id}: {(turn.error or '')[:160]}")
        if not t.covered.get(turn.id):
            violate("turn_without_messages", turn.id)
        replies = t.replies.get(turn.id, [])
        if not replies:
            violate("turn_without_reply", turn.id)
        elif len(replies) != 1:
            violate("turn_with_extra_replies", f"{turn.id}: {len(replies)} outbound")
        elif t.parts[replies[0].id] != expected_parts.get(turn.status):
            violate("reply_with_wrong_parts", f"{turn.id}: {t.parts[replies[0].id]} parts")
    for turn_id, rs in t.replies.items():
        if turn_id is None or turn_id not in t.turn_by_id:
            violate("reply_without_turn", rs[0].id, len(rs))


def _check_sent(sent: list[dict], t: Tables, violate: _Violations) -> None:
    """Messages the stand-in received == parts with status sent; none sent twice."""
    by_callback = collections.Counter((s["json"] or {}).get("biz_opaque_callback_data") for s in sent)
    if len(sent) != t.parts_sent:
        violate("standin_vs_sent_mismatch", f"stand-in got {len(sent)}, {t.parts_sent} parts sent",
                abs(len(sent) - t.parts_sent))
    for cb, n in by_callback.items():
        if n > 1:
            violate("reply_sent_twice", str(cb), n - 1)
    for o in t.outbound:
        if o.status != "sent":
            violate(f"outbound_{o.status}", o.id)


def _debounce(t: Tables, debounce_s: float) -> dict:
    """Turns that started before their burst was quiet, and bursts answered by more than one turn."""
    per_conv = collections.defaultdict(list)
    for turn in t.turns:
        per_conv[turn.conversation_id].append(turn)
    premature, split_bursts = 0, 0
    for conv_turns in per_conv.values():
        conv_turns.sort(key=lambda turn: turn.started_at)
        prev_last = None
        for turn in conv_turns:
            msgs = t.covered.get(turn.id, [])
            if not msgs:
                continue
            newest, oldest = max(m.created_at for m in msgs), min(m.created_at for m in msgs)
            if (turn.started_at - newest).total_seconds() < debounce_s - 0.05:
                premature += 1
            if prev_last is not None and (oldest - prev_last).total_seconds() < debounce_s:
                split_bursts += 1
            prev_last = newest
    return {"premature_turns": premature, "bursts_split": split_bursts}


def _timings(t: Tables, wall_t0: float) -> dict:
    """Where the time went, from the database timestamps."""
    received = {}
    for p in t.posts:
        try:
            wamid = p.body["entry"][0]["changes"][0]["value"]["messages"][0]["id"]
        except (KeyError, IndexError, TypeError):
            continue
        received[wamid] = p.received_at
    store_lag = [(m.created_at - received[m.channel_message_id]).total_seconds() * 1000
                 for m in t.inbound if m.channel_message_id in received]
    turn_wait, send_lag, end_to_end = [], [], []
    for turn in t.turns:
        msgs = t.covered.get(turn.id, [])
        if msgs:
            turn_wait.append((turn.started_at - max(m.created_at for m in msgs)).total_seconds())
        for o in t.replies.get(turn.id, []):
            if o.sent_at and turn.finished_at:
                send_lag.append((o.sent_at - turn.finished_at).total_seconds() * 1000)
            if o.sent_at and msgs:
                last = max(msgs, key=lambda m: m.created_at)
                if last.channel_message_id in received:
                    end_to_end.append((o.sent_at - received[last.channel_message_id]).total_seconds())
    last_reply = max((o.sent_at for o in t.outbound if o.sent_at), default=None)
    return {
        "stored_after_ack_ms": summarize(store_lag),
        "turn_start_after_newest_message_s": summarize(turn_wait, 2),
        "reply_sent_after_turn_ms": summarize(send_lag),
        "reply_after_last_message_acked_s": summarize(end_to_end, 2),
        "last_reply_after_load_start_s": round(last_reply.timestamp() - wall_t0, 1) if last_reply else None,
    }


def _queue_figures(watch: QueueWatch, turns: int) -> dict:
    peak = max(watch.samples, key=lambda s: s[1] + s[2], default=(0, 0, 0, 0))
    return {
        "enqueued": dict(watch.enqueued), "executed": dict(watch.executed), "errors": dict(watch.errors),
        "busy_s": {k: round(v, 1) for k, v in watch.busy_s.items()},
        "turn_jobs_per_turn": round(watch.executed.get("whatsapp.turn", 0) / max(turns, 1), 1),
        "peak_backlog": {"at_s": round(peak[0], 1), "queued": peak[1], "scheduled": peak[2], "running": peak[3]},
        "error_samples": dict(watch.error_texts.most_common(3)),
        # (seconds since the load started, queued, scheduled, running) every 5 s
        "timeline": [(round(s), q, sc, r) for s, q, sc, r in watch.samples[4::5]],
    }


def verify(services, graph, llm: SlowScriptedLLM, watch: QueueWatch, load: dict, rate: float, seconds: float,
           customers: int) -> dict:
    """The report of a drained run: figures, and ``violations`` (``violation_count`` must be 0)."""
    rows: list[Ack] = load["rows"]
    t = _read_tables(services)
    violate = _Violations()
    _check_stored(rows, t, violate)
    _check_turns(t, violate)
    with graph._lock:
        sent = list(graph.sent)
    _check_sent(sent, t, violate)
    turns_per_customer = collections.Counter(t.convs[turn.conversation_id] for turn in t.turns)
    report = {
        "target_rate": rate, "seconds": seconds, "customers": customers, "acks": ack_figures(rows),
        "messages_stored": len(t.inbound), "conversations": len(t.convs), "turns": len(t.turns),
        "turn_statuses": dict(collections.Counter(turn.status for turn in t.turns)),
        "replies_sent_to_standin": len(sent), "outbound_sent": t.parts_sent,
        "outbound_statuses": dict(collections.Counter(o.status for o in t.outbound)),
        "messages_per_turn": summarize([len(t.covered[turn.id]) for turn in t.turns if t.covered.get(turn.id)]),
        "turns_per_customer": summarize(list(turns_per_customer.values())),
        "debounce": _debounce(t, services.settings.whatsapp_debounce_s),
        "timings": _timings(t, load["wall_t0"]),
        "llm": {"calls": llm.calls, "max_concurrent": llm.max_in_flight},
        "queue": _queue_figures(watch, len(t.turns)),
        "violations": dict(violate.counts), "violation_examples": violate.examples,
    }
    report["violation_count"] = sum(violate.counts.values())
    return report
