"""The exactly-once checks of ``ingest_load`` and ``replay``, and the join of each reply to its turn.

Unlike ``verify`` (whose every turn is answered with the scripted REPLY), the turns here may end in any of the
product's outcomes (answered, smalltalk, fallback, handoff; paused once a person has the conversation), so the
reply is not checked against a fixed text. The checks (each failure a violation, with an example): each
acknowledged wamid stored exactly once, nothing stored that was not posted, no post failed processing
(``verify._check_stored``); every inbound message covered by a turn; no turn ended in error; each turn that
answers has exactly one reply, every part of it sent; a paused turn has none; no reply without a turn; messages
received by the stand-in == parts with status ``sent``, none received twice (``verify._check_sent``).
"""
from __future__ import annotations

import collections
from dataclasses import dataclass

import numpy as np

from atende.bench.whatsapp_load.load import Ack
from atende.bench.whatsapp_load.verify import Tables, _check_sent, _check_stored, _read_tables, _Violations

SILENT = frozenset({"paused"})  # turn statuses that send nothing


def percentiles(values: list[float], digits: int = 3) -> dict:
    """n, p50, p95, max (and mean) of ``values``."""
    if not values:
        return {"n": 0}
    p50, p95 = (float(v) for v in np.percentile(values, [50, 95]))
    return {"n": len(values), "p50": round(p50, digits), "p95": round(p95, digits), "max": round(max(values), digits),
            "mean": round(float(np.mean(values)), digits)}


@dataclass
class Checked:
    """The tables read after the drain, the violations found, and the reply of each turn as the stand-in saw it."""

    tables: Tables
    violations: dict
    examples: dict
    reply_at: dict  # turn id -> wall-clock arrival of the reply's last part at the stand-in
    inbound_turn: dict  # wamid -> turn id
    timings: dict  # turn id -> the timings the turn logged (retrieval_ms, llm_ms, ...)

    @property
    def count(self) -> int:
        return sum(self.violations.values())


def _check_turns(t: Tables, violate: _Violations) -> None:
    for m in t.inbound:
        if m.turn_id is None:
            violate("inbound_not_covered", m.channel_message_id)
        elif m.turn_id not in t.turn_by_id:
            violate("inbound_turn_missing", m.channel_message_id)
    for turn in t.turns:
        if turn.status == "error":
            violate("turn_error", f"{turn.id}: {(turn.error or '')[:160]}")
        if not t.covered.get(turn.id):
            violate("turn_without_messages", turn.id)
        replies = t.replies.get(turn.id, [])
        if turn.status in SILENT:
            if replies:
                violate("silent_turn_with_reply", f"{turn.id} ({turn.status})")
        elif not replies:
            violate("turn_without_reply", f"{turn.id} ({turn.status})")
        elif len(replies) != 1:
            violate("turn_with_extra_replies", f"{turn.id}: {len(replies)} outbound")
        elif not t.parts[replies[0].id]:
            violate("reply_without_parts", f"{turn.id}: {replies[0].id}")
    for turn_id, rs in t.replies.items():
        if turn_id is None or turn_id not in t.turn_by_id:
            violate("reply_without_turn", rs[0].id, len(rs))


def check(services, rows: list[Ack], sent: list[dict]) -> Checked:
    """Read the database after the drain and run the checks on the posts' ``rows`` and the stand-in's ``sent``."""
    from sqlalchemy import select

    from runtime.models import MessagePart, Turn

    t = _read_tables(services)
    violate = _Violations()
    _check_stored(rows, t, violate)
    _check_turns(t, violate)
    _check_sent(sent, t, violate)
    with services.session() as session:
        part_message = {part_id: message_id for part_id, message_id in
                        session.execute(select(MessagePart.id, MessagePart.message_id))}
        timings = {turn_id: value or {} for turn_id, value in session.execute(select(Turn.id, Turn.timings))}
    turn_of_message = {o.id: o.turn_id for o in t.outbound}
    reply_at: dict[str, float] = {}
    for s in sent:
        part = (s.get("json") or {}).get("biz_opaque_callback_data")
        turn_id = turn_of_message.get(part_message.get(part))
        if turn_id is not None:
            reply_at[turn_id] = max(reply_at.get(turn_id, 0.0), s["wall"])
    return Checked(t, dict(violate.counts), violate.examples, reply_at,
                   {m.channel_message_id: m.turn_id for m in t.inbound}, timings)


def turn_statuses(t: Tables, turn_ids) -> dict:
    return dict(collections.Counter(t.turn_by_id[i].status for i in turn_ids))


def turn_notes(t: Tables, top: int = 5) -> dict:
    """The commonest notes the turns logged (why a reply was rejected and asked again, an error), first 90
    characters, with their counts; turns with none are counted as "(none)"."""
    return dict(collections.Counter((turn.error or "(none)")[:90] for turn in t.turns).most_common(top))
