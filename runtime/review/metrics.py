"""The review dashboard's figures, computed over the conversations the filters select, with all of their
messages.

- cost: LLM cost plus channel (Meta) cost, summed from the messages.
- response rate: turn-worthy inbound messages (every inbound one but ``logged`` ones such as reactions)
  covered by a turn that produced a reply / turn-worthy inbound messages; pending and paused ones count
  as unanswered.
- response time: per turn with a reply, its first reply's ``created_at`` minus its first covered inbound
  message's ``created_at`` -- what the customer waited, debounce and queueing included (the engine's own
  time is the reply's ``latency_ms``). Percentiles interpolate linearly between closest ranks.
- handoff rate: conversations with a ``handoff`` turn / conversations.
- handoffs: by reason, time to first human reply (p50/p95) and abandoned handoffs, defined in
  ``runtime.review.handoff_metrics``.
- fallback rate: ``fallback`` turns / turns that produced a reply (answered, fallback, handoff).
- delivery failures / unknown sends / not sent / retrying sends: outbound messages in status ``failed`` /
  ``unknown`` / ``not_sent`` / ``retrying`` (the outbox will try again).
- per day (UTC, by message ``created_at``): conversations active that day, messages, replies (turns
  with a reply), cost.
- feedback (``runtime.feedback``): ratings of the selection's AI replies by rating and by source (reviewer,
  customer reaction, widget); satisfaction rate = good / (good + bad), neutral reactions left out; bad
  ratings' reasons, most frequent first; and per day of the rated reply (UTC), good / bad / neutral.
Ratios whose denominator is zero are ``None``.
"""
from __future__ import annotations

from sqlalchemy import case, func, literal_column, select
from sqlalchemy.orm import Session, aliased

from runtime.cost import round_usd
from runtime.feedback import RATINGS, SOURCES
from runtime.models import Message, MessageFeedback, Turn
from runtime.review.filters import ConversationFilters, selected_ids
from runtime.review.handoff_metrics import handoff_metrics
from runtime.review.stats import percentile, ratio

REPLY_TURNS = ("answered", "smalltalk", "fallback", "handoff")
_INBOUND = Message.direction == "inbound"
_OUTBOUND = Message.direction == "outbound"


def compute_metrics(session: Session, filters: ConversationFilters) -> dict:
    """The review dashboard's figures (definitions in the module docstring)."""
    sel = selected_ids(filters)
    conversations = session.scalar(select(func.count()).select_from(sel.subquery()))
    turns, turn_conversations = _turn_counts(session, sel)
    feedback = feedback_metrics(session, sel)
    good, bad = feedback["by_rating"]["good"], feedback["by_rating"]["bad"]
    return {
        "conversations": conversations, **_message_figures(session, sel, conversations),
        "turns": turns, "handoff_conversations": turn_conversations.get("handoff", 0),
        "handoff_rate": ratio(turn_conversations.get("handoff", 0), conversations),
        "fallback_rate": ratio(turns.get("fallback", 0), sum(turns.get(s, 0) for s in REPLY_TURNS)),
        "handoffs": handoff_metrics(session, sel), "per_day": per_day(session, sel),
        "satisfaction_rate": ratio(good, good + bad), "feedback": feedback,
    }


def _message_figures(session: Session, sel, conversations: int) -> dict:
    """Message counts, the response rate and time, cost and delivery problems of the selected conversations."""
    in_sel = Message.conversation_id.in_(sel)
    messages, inbound, outbound, llm, channel, failed, unknown, not_sent, retrying = session.execute(select(
        func.count(), func.count(case((_INBOUND, 1))), func.count(case((_OUTBOUND, 1))),
        func.sum(Message.cost), func.sum(Message.channel_cost),
        *(func.count(case((_OUTBOUND & (Message.status == s), 1)))
          for s in ("failed", "unknown", "not_sent", "retrying")),
    ).where(in_sel)).one()
    llm, channel = round_usd(llm), round_usd(channel)
    total = round_usd(llm + channel)
    reply = aliased(Message)
    replied = Message.turn_id.in_(select(reply.turn_id).where(reply.direction == "outbound", reply.turn_id.is_not(None)))
    worthy, answered = session.execute(
        select(func.count(), func.count(case((replied, 1)))).where(in_sel, _INBOUND, Message.status != "logged")).one()
    waits = response_times_ms(session, sel)
    return {
        "messages": messages, "inbound_messages": inbound, "outbound_messages": outbound,
        "messages_per_conversation": ratio(messages, conversations),
        "turn_worthy_inbound": worthy, "answered_inbound": answered, "response_rate": ratio(answered, worthy),
        "response_time": {"count": len(waits), "avg_ms": ratio(sum(waits), len(waits)),
                          "p50_ms": percentile(waits, 50), "p95_ms": percentile(waits, 95)},
        "cost": {"llm": llm, "channel": channel, "total": total, "per_conversation": ratio(total, conversations)},
        "delivery_failures": failed, "unknown_sends": unknown, "not_sent": not_sent, "retrying_sends": retrying,
    }


def _turn_counts(session: Session, sel) -> tuple[dict[str, int], dict[str, int]]:
    """Per turn status: (turns, distinct conversations with such a turn)."""
    turns, conversations = {}, {}
    for status, n, convs in session.execute(
            select(Turn.status, func.count(), func.count(Turn.conversation_id.distinct()))
            .where(Turn.conversation_id.in_(sel)).group_by(Turn.status)):
        turns[status], conversations[status] = n, convs
    return turns, conversations


def response_times_ms(session: Session, sel) -> list[float]:
    """Per turn with a reply: first reply minus first covered inbound message, in milliseconds."""
    first_in = func.min(case((_INBOUND, Message.created_at)))
    first_out = func.min(case((_OUTBOUND, Message.created_at)))
    rows = session.execute(select(first_in, first_out)
                           .where(Message.conversation_id.in_(sel), Message.turn_id.is_not(None))
                           .group_by(Message.turn_id))
    return [(o - i).total_seconds() * 1000 for i, o in rows if i is not None and o is not None]


def _utc_day(session: Session):
    """The UTC day of a message's ``created_at``, as SQL."""
    if session.get_bind().dialect.name == "postgresql":
        return func.date(func.timezone(literal_column("'UTC'"), Message.created_at)).label("day")
    return func.date(Message.created_at).label("day")  # SQLite stores UTC text


def per_day(session: Session, sel) -> list[dict]:
    """Per UTC day: conversations active, messages, replies and cost."""
    day = _utc_day(session)
    rows = session.execute(
        select(day, func.count(Message.conversation_id.distinct()), func.count(),
               func.count(case((_OUTBOUND, Message.turn_id)).distinct()),
               func.sum(Message.cost + Message.channel_cost))
        .where(Message.conversation_id.in_(sel)).group_by(day).order_by(day))
    return [{"day": str(d), "conversations": c, "messages": m, "replies": r, "cost": round_usd(cost)}
            for d, c, m, r, cost in rows]


def feedback_metrics(session: Session, sel) -> dict:
    """Ratings of the selected conversations' replies: by rating, by source, bad reasons, per day."""
    in_sel = MessageFeedback.conversation_id.in_(sel)
    by_source = {source: dict.fromkeys(RATINGS, 0) for source in SOURCES}
    for source, rating, count in session.execute(select(MessageFeedback.source, MessageFeedback.rating, func.count())
                                                 .where(in_sel).group_by(MessageFeedback.source, MessageFeedback.rating)):
        by_source[source][rating] = count
    by_rating = {rating: sum(counts[rating] for counts in by_source.values()) for rating in RATINGS}
    n = func.count().label("n")
    reasons = session.execute(select(MessageFeedback.reason, n)
                              .where(in_sel, MessageFeedback.rating == "bad", MessageFeedback.reason.is_not(None))
                              .group_by(MessageFeedback.reason).order_by(n.desc(), MessageFeedback.reason))
    return {"total": sum(by_rating.values()), "by_rating": by_rating, "by_source": by_source,
            "bad_reasons": [{"reason": r, "count": c} for r, c in reasons],
            "per_day": _feedback_per_day(session, in_sel)}


def _feedback_per_day(session: Session, in_sel) -> list[dict]:
    """Per UTC day of the rated reply: good / bad / neutral ratings and the satisfaction rate."""
    day = _utc_day(session)
    days: dict[str, dict] = {}
    for d, rating, count in session.execute(
            select(day, MessageFeedback.rating, func.count())
            .join(Message, Message.id == MessageFeedback.message_id).where(in_sel)
            .group_by(day, MessageFeedback.rating).order_by(day)):
        days.setdefault(str(d), {"day": str(d), **dict.fromkeys(RATINGS, 0)})[rating] = count
    for row in days.values():
        row["satisfaction_rate"] = ratio(row["good"], row["good"] + row["bad"])
    return list(days.values())
