"""The handoff figures of the metrics, over the conversations the filters select.

A handoff is an *episode*: it starts with a change (``runtime.models.HandoffChange``) from ``ai`` to
``waiting_for_human`` or ``with_human`` and ends with the next change back to ``ai`` (an operator's hand-back, the
idle return, an operator closing the conversation), or is still open. Moves between the two human states inside an
episode start nothing.

- handoffs by reason (``runtime.handoff.reason_category``): one per episode, by the change that started it --
  ``customer_request`` (the customer asked for a person, before the model ran), ``model_transfer`` (the model
  called ``transfer_to_human``), ``fallback_streak`` (too many fallback replies in a row), ``operator_takeover``
  (an operator wrote, or paused the AI, while the AI had the conversation), ``business_app`` (the same, from the
  WhatsApp Business app), ``other``; plus ``model_failure``: turns with status ``error`` (the model failed, the
  conversation is flagged for a person but stays with the AI, so these start no episode). ``total`` sums them.
- time to first human reply: per episode that started in ``waiting_for_human`` (a customer was told a person
  would come) and had an operator message (``kind`` operator: dashboard, API or WhatsApp Business app) before
  it ended, that message's ``created_at`` minus the episode's start; count, p50 and p95 (linear interpolation
  between closest ranks), in seconds. Episodes an operator started by writing are left out (nobody waited).
- abandoned handoffs: episodes that started in ``waiting_for_human`` and ended with no operator message between
  start and end -- the customer waited and was given back to the AI (hand-back, idle return or close) without a
  person ever writing. ``abandoned_rate`` = abandoned / ended episodes that started in ``waiting_for_human``;
  ``still_waiting``: such episodes not ended and with no operator message yet.
"""
from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from runtime.handoff import REASON_CATEGORIES, reason_category
from runtime.models import HandoffChange, Message, Turn
from runtime.review.stats import percentile, ratio


@dataclass
class Episode:
    """One stay of a conversation away from the AI: the change that started it, when it ended (None: open)."""

    start: HandoffChange
    end: datetime | None


def episodes(log: list[HandoffChange]) -> list[Episode]:
    """A conversation's episodes away from the AI, from its changes oldest first."""
    found: list[Episode] = []
    for change in log:
        if change.from_state == "ai" and change.to_state != "ai":
            found.append(Episode(change, None))
        elif change.to_state == "ai" and found and found[-1].end is None:
            found[-1].end = change.at
    return found


def handoff_metrics(session: Session, sel) -> dict:
    """The handoff figures (definitions in the module docstring) of the conversations ``sel`` selects."""
    log: dict[str, list[HandoffChange]] = {}
    for change in session.scalars(select(HandoffChange).where(HandoffChange.conversation_id.in_(sel))
                                  .order_by(HandoffChange.at, HandoffChange.id)):
        log.setdefault(change.conversation_id, []).append(change)
    replies = _operator_times(session, sel)
    by_reason = dict.fromkeys(REASON_CATEGORIES, 0)
    waits: list[float] = []
    abandoned = ended = still_waiting = 0
    for cid, conversation_log in log.items():
        for ep in episodes(conversation_log):
            by_reason[reason_category(ep.start)] += 1
            if ep.start.to_state != "waiting_for_human":
                continue
            first = _first_between(replies.get(cid, []), ep.start.at, ep.end)
            if first is not None:
                waits.append((first - ep.start.at).total_seconds())
            if ep.end is not None:
                ended += 1
                abandoned += first is None
            elif first is None:
                still_waiting += 1
    by_reason["model_failure"] = session.scalar(select(func.count()).select_from(Turn).where(
        Turn.conversation_id.in_(sel), Turn.status == "error")) or 0
    return {"total": sum(by_reason.values()), "by_reason": by_reason,
            "first_reply": {"count": len(waits), "p50_s": percentile(waits, 50), "p95_s": percentile(waits, 95)},
            "abandoned": abandoned, "abandoned_rate": ratio(abandoned, ended), "still_waiting": still_waiting}


def _operator_times(session: Session, sel) -> dict[str, list[datetime]]:
    """Per selected conversation with any, its operator messages' times, oldest first."""
    out: dict[str, list[datetime]] = {}
    for cid, at in session.execute(select(Message.conversation_id, Message.created_at)
                                   .where(Message.conversation_id.in_(sel), Message.kind == "operator")
                                   .order_by(Message.created_at)):
        out.setdefault(cid, []).append(at)
    return out


def _first_between(times: list[datetime], start: datetime, end: datetime | None) -> datetime | None:
    """The first of the sorted ``times`` at or after ``start`` and before ``end`` (None: no end)."""
    i = bisect_left(times, start)
    if i < len(times) and (end is None or times[i] < end):
        return times[i]
    return None
