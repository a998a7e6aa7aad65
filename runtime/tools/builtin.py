"""The built-in tools an assistant can enable: knowledge-base search, hand-off to a human, data
collection, appointment booking and follow-ups. Each is a typed function ``tool(ctx, ...)``: its annotated
parameters (``Annotated[str, "what it is"]``) and docstring are the schema the model sees."""
from __future__ import annotations

import contextlib
import json
import re
from dataclasses import replace
from datetime import date, datetime, timedelta
from datetime import time as dt_time
from typing import Annotated, Literal
from zoneinfo import ZoneInfo

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from core.db import new_id
from kb.models import KnowledgeBase
from kb.search import search
from kb.types import Source
from runtime.config import DataField
from runtime.events import emit
from runtime.handoff import flag_for_human
from runtime.models import CollectedData, Conversation, Message, ReplyOption, Turn
from runtime.options import Choice, clean_choices
from runtime.scheduling import SlotTaken, available_slots, book, ensure_bookable, opening_hours
from runtime.tools.context import ToolContext, ToolError
from runtime.validators import InvalidValue, parse_date, validate_value

PROPOSAL = "Not booked yet."  # how schedule_appointment's proposals begin (and are found in the log)
MAX_LISTED_SLOTS = 24
MAX_OFFERED_SLOTS = 10  # a WhatsApp list message's rows
NEXT_FREE_SEARCH_DAYS = 14


def search_knowledge_base(ctx: ToolContext, query: Annotated[str, "what to look up"]) -> str:
    """Search the knowledge base; cite passages by their [n]."""
    if not query.strip():
        raise ToolError("query must not be empty")
    retrieval = ctx.config.retrieval
    with ctx.services.session() as session:
        kb = session.scalar(select(KnowledgeBase).where(KnowledgeBase.assistant_id == ctx.assistant.id))
        hits = search(ctx.services, session, kb, query, retrieval.top_k)
    hits = [h for h in hits if h.score >= retrieval.threshold(kb.embedding_model)]
    if not hits:
        return "No relevant passages found in the knowledge base."
    return cite_passages(ctx.sources, hits)


def cite_passages(sources: list[Source], hits: list[Source]) -> str:
    """Number ``hits`` as "[n] filename (p. X, section): text", adding new ones to ``sources``
    (a passage already there keeps its number, so citations stay stable within a turn)."""
    lines = []
    for hit in hits:
        number = next((i + 1 for i, s in enumerate(sources) if s.chunk_id == hit.chunk_id), None)
        if number is None:
            sources.append(replace(hit, rank=len(sources) + 1))
            number = len(sources)
        where = ", ".join(x for x in (f"p. {hit.page}" if hit.page is not None else "", hit.section) if x)
        lines.append(f"[{number}] {hit.filename}{f' ({where})' if where else ''}: {hit.text}")
    return "\n\n".join(lines)


def transfer_to_human(
    ctx: ToolContext,
    reason: Annotated[str, "why a human is needed"],
    callback_phone: Annotated[str | None, "phone to call back"] = None,
    callback_time: Annotated[str | None, "when to call back"] = None,
) -> str:
    """Hand the conversation to a human agent and pause automatic replies."""
    phone = callback_phone
    if phone:
        # a handoff must not fail on a badly typed number: the human can read it as given
        with contextlib.suppress(InvalidValue):
            phone = validate_value(DataField(name="callback_phone", type="phone"), phone)
    handoff = {"reason": reason, "callback_phone": phone, "callback_time": callback_time, "at": ctx.now.isoformat()}
    with ctx.services.session() as session:
        conversation = session.get(Conversation, ctx.conversation_id)
        if conversation is None:
            raise ToolError("this conversation no longer exists")
        event_id = flag_for_human(session, conversation, ctx.assistant.id, ctx.config, handoff, pause=True)
        session.commit()
    if event_id:
        ctx.events.append(event_id)
    callback = (f" A call back was requested{f' at {phone}' if phone else ''}"
                f"{f' ({callback_time})' if callback_time else ''}." if phone or callback_time else "")
    return f"Transferred to a human agent; automatic replies are paused.{callback} Tell the customer a person will follow up."


def collect_data(
    ctx: ToolContext, field: Annotated[str, "field name"], value: Annotated[str, "the customer's answer"]
) -> str:
    """Save a piece of customer data (validated)."""
    fields = {f.name: f for f in ctx.config.data_fields}
    if field not in fields:
        raise ToolError(f"unknown field '{field}'; known fields: {', '.join(fields) or 'none'}")
    try:
        normalized = validate_value(fields[field], value)
    except InvalidValue as exc:
        raise ToolError(f"invalid {field}: {exc.reason}. Ask the customer again.") from None
    for attempt in range(2):  # a concurrent first insert of the same field wins; then update it
        with ctx.services.session() as session:
            row = session.scalar(
                select(CollectedData).where(CollectedData.conversation_id == ctx.conversation_id, CollectedData.field == field)
            )
            conversation = session.get(Conversation, ctx.conversation_id)  # before the insert: no autoflush of it
            if row is None:
                session.add(CollectedData(id=new_id(), conversation_id=ctx.conversation_id, field=field, value=normalized, source="ai"))
            else:
                row.value, row.source = normalized, "ai"
            if conversation is not None:
                emit(session, conversation, "data.collected", {"field": field, "value": normalized})
            try:
                session.commit()
                break
            except IntegrityError:
                if attempt:
                    raise
    return f"Saved {field}: {normalized}"


def list_available_slots(ctx: ToolContext, date: Annotated[str, "YYYY-MM-DD"]) -> str:
    """List free appointment times on a date."""
    day = _parse_day(date)
    scheduling = ctx.config.scheduling
    with ctx.services.session() as session:
        slots = available_slots(session, ctx.assistant.id, scheduling, day, ctx.now)
        if slots:  # the customer gets them to tap (runtime.options): a WhatsApp list shows 10 rows
            ctx.offer([Choice(s.strftime("%H:%M"), value=s.strftime("%Y-%m-%d %H:%M"),
                              description=f"{day.strftime('%a')} {day.isoformat()}") for s in slots[:MAX_OFFERED_SLOTS]])
            return (f"Free times on {day.isoformat()} ({day.strftime('%A')}, {scheduling.timezone}): {_times(slots)}. "
                    f"The first {min(len(slots), MAX_OFFERED_SLOTS)} are shown to the customer as choices under your "
                    "reply: ask which one suits them.")
        following = _next_free(session, ctx, day)
    why = "no free times" if opening_hours(scheduling, day) != "closed" else "closed"
    today = ctx.now.astimezone(ZoneInfo(scheduling.timezone)).date()
    if day < today:
        why = "that date is in the past"
    elif (day - today).days > scheduling.horizon_days:
        why = f"bookings are only open {scheduling.horizon_days} days ahead"
    nxt = f" Next free time: {following.strftime('%Y-%m-%d %H:%M')}." if following else ""
    return f"{day.isoformat()} ({day.strftime('%A')}): {why}.{nxt}"


def offer_options(
    ctx: ToolContext,
    options: Annotated[list[str], "the choices, short, 2 to 10"],
    prompt: Annotated[str, "the question they answer"] = "",
) -> str:
    """Show the customer choices to tap (buttons or a list) under your reply; their answer comes back as
    "The customer chose: ..."."""
    choices = clean_choices(options)
    if not choices:
        raise ToolError("options must hold at least one non-empty choice")
    ctx.offer(choices, prompt.strip()[:1024] or None)
    shown = "; ".join(c.title for c in choices)
    return f"The customer will see these choices under your reply: {shown}. Now write your reply (the question)."


# what WhatsApp takes as a document (Meta: PDF, Word, Excel, PowerPoint, plain text) or an image (JPEG, PNG), by the
# knowledge base's file type, and the most each may weigh
SENDABLE = {"pdf": ("document", "application/pdf"),
            "docx": ("document", "application/vnd.openxmlformats-officedocument.wordprocessingml.document"),
            "xlsx": ("document", "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"),
            "pptx": ("document", "application/vnd.openxmlformats-officedocument.presentationml.presentation"),
            "txt": ("document", "text/plain"), "jpg": ("image", "image/jpeg"), "jpeg": ("image", "image/jpeg"),
            "png": ("image", "image/png")}
SEND_LIMIT_MB = {"document": 100.0, "image": 5.0}
MAX_FILES = 3  # per reply


def send_file(
    ctx: ToolContext,
    filename: Annotated[str, "the knowledge-base file, as the sources name it (e.g. precos.pdf)"],
    caption: Annotated[str, "a line shown with the file"] = "",
) -> str:
    """Send the customer a file of the knowledge base (a price table, a form) with your reply, on WhatsApp."""
    from kb.models import Document, DocumentVersion

    with ctx.services.session() as session:
        conv = session.get(Conversation, ctx.conversation_id)
        if conv is None or conv.channel != "whatsapp":
            raise ToolError("files can only be sent on WhatsApp; tell the customer where to find it instead")
        kb = session.scalar(select(KnowledgeBase).where(KnowledgeBase.assistant_id == ctx.assistant.id))
        name = filename.strip().rsplit("/", 1)[-1]
        doc = session.scalar(select(Document).where(Document.knowledge_base_id == kb.id, Document.filename == name)) \
            if kb is not None and name else None
        version = session.scalar(select(DocumentVersion).where(
            DocumentVersion.document_id == doc.id, DocumentVersion.version == doc.current_version)) \
            if doc is not None and doc.current_version is not None else None
    if version is None:
        raise ToolError(f"no file named {filename!r} in the knowledge base; use a filename the sources show")
    sendable = SENDABLE.get(version.file_type)
    if sendable is None:
        raise ToolError(f"{name} ({version.file_type}) cannot be sent on WhatsApp: only PDF, Word, Excel, PowerPoint, "
                        "text files and JPEG/PNG images")
    kind, mime = sendable
    if version.size_bytes > SEND_LIMIT_MB[kind] * 1024 * 1024:
        raise ToolError(f"{name} is too large to send on WhatsApp (at most {SEND_LIMIT_MB[kind]:g} MB)")
    if any(f["sha256"] == version.content_hash for f in ctx.files):
        return f"{name} is already going with your reply."
    if len(ctx.files) >= MAX_FILES:
        raise ToolError(f"at most {MAX_FILES} files go with one reply")
    ctx.files.append({"kind": kind, "sha256": version.content_hash, "mime_type": mime, "filename": name,
                      "caption": caption.strip()[:1024] or None})
    return f"{name} will be sent with your reply. Now write your reply (mention the file)."


def schedule_appointment(
    ctx: ToolContext,
    start: Annotated[str, "local time YYYY-MM-DD HH:MM"],
    name: Annotated[str, "customer name"],
    kind: Literal["appointment", "callback"] = "appointment",
    notes: Annotated[str, "details"] = "",
    confirmed: Annotated[bool, "true only once the customer said yes to this exact time"] = False,
) -> str:
    """Book an appointment or call back at a free time, after the customer confirms it."""
    when, name = _parse_start(start), name.strip()[:200]
    if not name:
        raise ToolError("the customer's name is required")
    scheduling = ctx.config.scheduling
    try:
        if confirmed and _customer_confirmed(ctx, when, name, kind):
            appointment = book(ctx.services, ctx.assistant.id, ctx.conversation_id, scheduling, when, name, kind, notes, ctx.now)
        else:
            with ctx.services.session() as session:
                local = ensure_bookable(session, ctx.assistant.id, ctx.conversation_id, scheduling, when, ctx.now)
            return (f"{PROPOSAL} Ask the customer to confirm: {kind} for {name} on {local.strftime('%Y-%m-%d')} at "
                    f"{local.strftime('%H:%M')} ({scheduling.timezone}). When they say yes, call schedule_appointment "
                    "again with the same start, name and kind and confirmed=true.")
    except SlotTaken as exc:
        with ctx.services.session() as session:
            free = available_slots(session, ctx.assistant.id, scheduling, when.date(), ctx.now)
        raise ToolError(f"{exc}. {'Free times that day: ' + _times(free[:6]) if free else 'No free times left that day.'}") from None
    local = appointment.starts_at.astimezone(ZoneInfo(scheduling.timezone))
    return (
        f"Booked {kind} for {appointment.name} on {local.strftime('%Y-%m-%d')} at {local.strftime('%H:%M')} "
        f"({scheduling.timezone}). Reference: {appointment.id[:8]}."
    )


def schedule_followup(
    ctx: ToolContext,
    at: Annotated[str, "local time YYYY-MM-DD HH:MM"],
    message: Annotated[str, "what to send the customer then; for a call, a note for the person who calls"],
    kind: Literal["message", "call"] = "message",
) -> str:
    """Follow up later: send the customer a message at a time, or have a person call them then."""
    from runtime.followups import schedule

    zone = ZoneInfo(ctx.config.scheduling.timezone)
    try:  # seconds and an explicit offset are taken too
        when = datetime.fromisoformat(at.strip())
    except ValueError:
        raise ToolError("at must be a local time like 2025-05-20 14:30") from None
    local = (when if when.tzinfo else when.replace(tzinfo=zone)).astimezone(zone)
    followup = schedule(ctx.services, ctx.conversation_id, due_at=local.astimezone(ZoneInfo("UTC")), kind=kind,
                        text=message, created_by="assistant")
    what = "the message will be sent" if kind == "message" else "a person will call the customer"
    return (f"Follow-up scheduled: {what} on {local:%Y-%m-%d} at {local:%H:%M} ({zone.key}). Reference: "
            f"{followup.id[:8]}. Tell the customer.")


def _parse_start(text: str) -> datetime:
    m = re.fullmatch(r"\s*(\S+)[ T]+(\d{1,2})[:h](\d{2})(?::00)?\s*", text)
    if not m or int(m.group(2)) > 23 or int(m.group(3)) > 59:
        raise ToolError("start must be a local time like 2025-05-20 14:30")
    return datetime.combine(_parse_day(m.group(1)), dt_time(int(m.group(2)), int(m.group(3))))


def _customer_confirmed(ctx: ToolContext, when: datetime, name: str, kind: str) -> bool:
    """Whether the customer has answered a proposal of exactly this booking: the assistant's last reply
    (an answered turn) proposed it, and a customer message came after that reply. A model that passes
    ``confirmed`` on its own, in the turn of the proposal or later, does not book."""
    with ctx.services.session() as session:
        reply = session.scalars(
            select(Message).where(Message.conversation_id == ctx.conversation_id, Message.direction == "outbound")
            .order_by(Message.created_at.desc(), Message.id.desc()).limit(1)
        ).first()
        turn = session.get(Turn, reply.turn_id) if reply is not None and reply.turn_id else None
        if turn is None or turn.status != "answered":
            return False
        proposal = next((c.arguments for c in reversed(reply.tool_calls)
                         if c.name == "schedule_appointment" and (c.result or "").startswith(PROPOSAL)), None)
        answered = session.scalar(select(func.count()).select_from(Message).where(
            Message.conversation_id == ctx.conversation_id, Message.direction == "inbound",
            Message.created_at > reply.created_at))
    if answered and _chose_slot(ctx, reply.id, when):  # a tap on this very time offered by the last reply
        return True
    if isinstance(proposal, str):  # logged as the model sent it
        proposal = json.loads(proposal)
    if not isinstance(proposal, dict) or not answered:
        return False
    try:
        proposed = _parse_start(str(proposal.get("start", "")))
    except ToolError:
        return False
    return (proposed, str(proposal.get("name", "")).strip()[:200].casefold(), proposal.get("kind") or "appointment") == (
        when, name.casefold(), kind)


def _chose_slot(ctx: ToolContext, reply_id: str, when: datetime) -> bool:
    """Whether the customer picked (tapped, or typed back) the option of time ``when`` that ``reply_id`` offered
    (``list_available_slots``' rows): as plain a yes to that exact time as answering a proposal."""
    with ctx.services.session() as session:
        return session.scalar(select(func.count()).select_from(ReplyOption).where(
            ReplyOption.message_id == reply_id, ReplyOption.chosen_at.is_not(None),
            ReplyOption.value == when.strftime("%Y-%m-%d %H:%M"))) > 0


def _parse_day(text: str) -> date:
    try:
        return parse_date(text)
    except InvalidValue as exc:
        raise ToolError(f"date: {exc.reason}") from None


def _times(slots: list[datetime]) -> str:
    shown = ", ".join(s.strftime("%H:%M") for s in slots[:MAX_LISTED_SLOTS])
    return shown + (f" (and {len(slots) - MAX_LISTED_SLOTS} more)" if len(slots) > MAX_LISTED_SLOTS else "")


def _next_free(session, ctx: ToolContext, day: date) -> datetime | None:
    scheduling = ctx.config.scheduling
    today = ctx.now.astimezone(ZoneInfo(scheduling.timezone)).date()
    candidate = max(day, today - timedelta(days=1))
    for _ in range(NEXT_FREE_SEARCH_DAYS):
        candidate += timedelta(days=1)
        if (candidate - today).days > scheduling.horizon_days:
            return None
        if slots := available_slots(session, ctx.assistant.id, scheduling, candidate, ctx.now):
            return slots[0]
    return None


BUILTIN_TOOLS = {
    "search_knowledge_base": search_knowledge_base, "transfer_to_human": transfer_to_human,
    "collect_data": collect_data, "list_available_slots": list_available_slots,
    "schedule_appointment": schedule_appointment, "offer_options": offer_options, "send_file": send_file,
    "schedule_followup": schedule_followup,
}
