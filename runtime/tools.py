"""Tools the model can call: typed Python functions whose signature and docstring are the schema.

A tool function takes a ``ToolContext`` and annotated parameters
(``Annotated[str, "what it is"]``); ``function_tool`` turns it into an OpenAI function-calling
schema and an argument checker. ``build_toolset`` assembles the built-in tools an assistant has
enabled and its HTTP tools; ``Toolset.run`` never raises: a failure becomes a ``ToolResult``
with ``error`` set and a short message the model can read.
"""
from __future__ import annotations

import inspect
import json
import logging
import re
import time
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from datetime import time as dt_time
from typing import Annotated, Literal
from zoneinfo import ZoneInfo

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from core.db import new_id, utcnow
from core.errors import DomainError
from kb.models import Assistant, KnowledgeBase
from kb.search import search
from kb.types import SearchHit
from runtime.config import TOOL_NAMES, AssistantConfig, DataField, HttpTool
from runtime.http_tools import HttpToolError, call_http_tool
from runtime.models import CollectedData, Conversation, Message, OutboundEvent, Turn
from runtime.scheduling import SchedulingError, SlotTaken, available_slots, book, ensure_bookable, opening_hours
from runtime.services import Services
from runtime.types import ToolCall, ToolResult
from runtime.validators import InvalidValue, parse_date, validate_value

log = logging.getLogger(__name__)
MAX_ERROR_CHARS = 500
PROPOSAL = "Not booked yet."  # how schedule_appointment's proposals begin (and are found in the log)
MAX_LISTED_SLOTS = 24
NEXT_FREE_SEARCH_DAYS = 14


@dataclass
class ToolContext:
    """What a tool may touch during one turn; tools append the passages and events they create.

    ``deadline`` is the turn's end on the ``time.perf_counter()`` clock; unset, the turn's whole
    ``turn_deadline_s`` from the context's creation. Tools that wait on the network stop by then."""

    services: Services
    assistant: Assistant
    config: AssistantConfig
    conversation_id: str
    sources: list[SearchHit] = field(default_factory=list)
    now: datetime = field(default_factory=utcnow)
    events: list[str] = field(default_factory=list)
    deadline: float | None = None

    def __post_init__(self) -> None:
        if self.deadline is None:
            self.deadline = time.perf_counter() + self.config.turn_deadline_s

    def remaining_s(self) -> float:
        """Seconds left before the turn's deadline (negative once past)."""
        return self.deadline - time.perf_counter()


class ToolError(Exception):
    """A tool could not do what was asked; the message is written for the model."""


# errors whose message is already meant for the model
READABLE_ERRORS = (ToolError, InvalidValue, SchedulingError, HttpToolError, DomainError)


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: dict  # JSON schema of the arguments
    check: Callable[[dict], dict]  # raw arguments -> keyword arguments; raises ToolError
    call: Callable[..., str]  # call(ctx, **kwargs)

    def schema(self) -> dict:
        return {"type": "function", "function": {"name": self.name, "description": self.description, "parameters": self.parameters}}


# --------------------------------------------------------------------------- schema from signature


def function_tool(fn: Callable[..., str], name: str | None = None) -> Tool:
    """Build a tool from ``fn(ctx, ...)``: parameter annotations and docstring become the schema."""
    hints = typing.get_type_hints(fn, include_extras=True)
    properties, required, specs = {}, [], {}
    for param in list(inspect.signature(fn).parameters.values())[1:]:
        annotation, description = hints[param.name], ""
        if typing.get_origin(annotation) is Annotated:
            annotation, *meta = typing.get_args(annotation)
            description = next((m for m in meta if isinstance(m, str)), "")
        schema, optional = json_schema(annotation)
        properties[param.name] = schema | ({"description": description} if description else {})
        has_default = param.default is not inspect.Parameter.empty
        if optional and not has_default:
            raise TypeError(f"{fn.__name__}: optional parameter {param.name} needs a default")
        if not (has_default or optional):
            required.append(param.name)
        specs[param.name] = (annotation, has_default or optional)
    parameters = {"type": "object", "properties": properties, "required": required}
    doc = inspect.getdoc(fn) or ""
    description = " ".join(doc.split("\n\n", 1)[0].split())
    return Tool(name or fn.__name__, description, parameters, lambda args: _check_args(specs, args), fn)


def json_schema(annotation) -> tuple[dict, bool]:
    """JSON schema of a supported annotation, and whether it admits None."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        if len(rest) != 1 or len(args) != 2:
            raise TypeError(f"unsupported union {annotation}: use X | None")
        return json_schema(rest[0])[0], True
    if origin is Literal:
        return {"type": _JSON_TYPES[type(args[0])], "enum": list(args)}, False
    if origin is list:
        return {"type": "array", "items": json_schema(args[0])[0]}, False
    if annotation in _JSON_TYPES:
        return {"type": _JSON_TYPES[annotation]}, False
    raise TypeError(f"unsupported tool parameter type {annotation!r}")


_JSON_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean"}
_PY_TYPES = {v: k for k, v in _JSON_TYPES.items()}


def _check_args(specs: dict[str, tuple], args: dict) -> dict:
    extra = sorted(set(args) - set(specs))
    if extra:
        raise ToolError(f"unknown argument(s) {', '.join(extra)}; parameters are: {', '.join(specs) or 'none'}")
    missing = [n for n, (_, optional) in specs.items() if n not in args and not optional]
    if missing:
        raise ToolError(f"missing required argument(s): {', '.join(missing)}")
    # a null optional argument means "not given": the function's default applies
    return {n: coerce(specs[n][0], v, n) for n, v in args.items() if not (v is None and specs[n][1])}


def coerce(annotation, value, name: str):
    """Check ``value`` against ``annotation``, accepting lossless conversions small models need
    (a number where text is expected, "3" for 3); raises ToolError."""
    if annotation is None:  # untyped in an admin-written schema
        return value
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return None if value is None else coerce(next(a for a in args if a is not type(None)), value, name)
    if origin is Literal:
        if value not in args:
            raise ToolError(f"{name} must be one of: {', '.join(map(str, args))}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ToolError(f"{name} must be a list")
        return [coerce(args[0], v, name) for v in value]
    kind = _JSON_TYPES.get(annotation, "value")
    if annotation is str and isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value)
    if annotation is bool and isinstance(value, bool):
        return value
    if annotation in (int, float) and not isinstance(value, (bool, list, dict)) and value is not None:
        try:
            number = float(value)
        except (TypeError, ValueError):
            pass
        else:
            if annotation is float:
                return number
            if number.is_integer():
                return int(number)
    raise ToolError(f"{name} must be a{'n' if kind[0] in 'aeiou' else ''} {kind}, got {json.dumps(value)[:50]}")


def _json_arg_specs(schema: dict) -> dict[str, tuple]:
    """Argument specs from an admin-written JSON schema (top level only; untyped means anything)."""
    required = set(schema.get("required") or [])
    specs = {}
    for name, prop in (schema.get("properties") or {}).items():
        kind, items = prop.get("type"), prop.get("items") or {}
        if prop.get("enum"):
            annotation = Literal[tuple(prop["enum"])]
        elif kind == "array" and items.get("type") in _PY_TYPES:
            annotation = list[_PY_TYPES[items["type"]]]
        else:
            annotation = _PY_TYPES.get(kind) if isinstance(kind, str) else None
        specs[name] = (annotation, name not in required)
    return specs


def http_tool(tool: HttpTool) -> Tool:
    """An admin-defined HTTP lookup as a tool. Parameters named like the last part of a runtime-filled
    placeholder (``cpf`` for ``{{data.cpf}}``) are taken out of the schema: the model cannot supply them."""
    parameters = tool.parameters if tool.parameters.get("type") == "object" else {"type": "object", "properties": {}}
    hidden = {name.rsplit(".", 1)[1] for name in tool.bound_names}
    if hidden:
        properties = {k: v for k, v in (parameters.get("properties") or {}).items() if k not in hidden}
        required = [r for r in parameters.get("required") or [] if r not in hidden]
        parameters = parameters | {"properties": properties, "required": required}
    specs = _json_arg_specs(parameters)

    def call(ctx: ToolContext, **kwargs) -> str:
        seconds = min(tool.timeout_s, ctx.remaining_s())
        if seconds <= 0:
            raise ToolError("no time is left in this turn to call the service")
        return call_http_tool(tool, kwargs, ctx.services.settings, bound=_bound_values(ctx, tool.bound_names),
                              timeout_s=seconds)

    return Tool(tool.name, tool.description, parameters, lambda args: _check_args(specs, args), call)


def _bound_values(ctx: ToolContext, names: list[str]) -> dict[str, str]:
    """The conversation's own values for ``{{...}}`` placeholders: its customer id, the phone number
    WhatsApp vouches for, the variables its integrator set, the data ``collect_data`` validated."""
    if not names:
        return {}
    with ctx.services.session() as session:
        conversation = session.get(Conversation, ctx.conversation_id)
        if conversation is None:
            raise ToolError("this conversation no longer exists")
        collected = {row.field: row.value for row in session.scalars(
            select(CollectedData).where(CollectedData.conversation_id == conversation.id))}
    fields = {f.name: f for f in ctx.config.data_fields}
    values = {}
    for name in names:
        scope, key = name.split(".", 1)
        if name == "customer.id":
            value = conversation.customer_id
        elif name == "customer.phone":
            # WhatsApp's wa_id is the phone number; a hidden number comes as a business-scoped user id
            wa_id = conversation.customer_id
            value = f"+{wa_id}" if conversation.channel == "whatsapp" and wa_id.isdigit() else None
        elif scope == "variables":
            value = (conversation.variables or {}).get(key)
        else:  # checked again: the field's validator may have changed since the value was saved
            value = _validated(fields.get(key), collected.get(key))
        if value in (None, ""):
            raise ToolError(_UNBOUND.get(scope, "{name} is not known in this conversation").format(name=name, key=key))
        values[name] = str(value)
    return values


def _validated(data_field: DataField | None, value: str | None) -> str | None:
    if data_field is None or value is None:
        return None
    try:
        return validate_value(data_field, value)
    except InvalidValue:
        return None


_UNBOUND = {
    "customer": "this tool needs {name}, which this conversation does not have (only WhatsApp gives a verified "
                "phone number); do not ask the customer for it: offer a human agent instead",
    "data": "this tool needs the customer's {key}: ask for it and save it with collect_data first",
    "variables": "this tool needs the variable {key}, which this conversation was not started with; "
                 "offer a human agent instead",
}


# --------------------------------------------------------------------------- built-in tools


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


def cite_passages(sources: list[SearchHit], hits: list[SearchHit]) -> str:
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
        try:
            phone = validate_value(DataField(name="callback_phone", type="phone"), phone)
        except InvalidValue:
            pass  # a handoff must not fail on a badly typed number: the human can read it as given
    handoff = {"reason": reason, "callback_phone": phone, "callback_time": callback_time, "at": ctx.now.isoformat()}
    event_id = None
    with ctx.services.session() as session:
        conversation = session.get(Conversation, ctx.conversation_id)
        if conversation is None:
            raise ToolError("this conversation no longer exists")
        conversation.ai_enabled, conversation.handoff = False, handoff
        if ctx.config.handoff_url:
            event_id = new_id()
            payload = {
                "event": "handoff", "conversation_id": conversation.id, "assistant_id": ctx.assistant.id,
                "channel": conversation.channel, "customer_id": conversation.customer_id, **handoff,
            }
            session.add(OutboundEvent(id=event_id, conversation_id=conversation.id, kind="handoff", url=ctx.config.handoff_url, payload=payload))
        session.commit()
    if event_id:
        ctx.events.append(event_id)
    callback = f" A call back was requested{f' at {phone}' if phone else ''}{f' ({callback_time})' if callback_time else ''}." if phone or callback_time else ""
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
            if row is None:
                session.add(CollectedData(id=new_id(), conversation_id=ctx.conversation_id, field=field, value=normalized, source="ai"))
            else:
                row.value, row.source = normalized, "ai"
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
        if slots:
            return f"Free times on {day.isoformat()} ({day.strftime('%A')}, {scheduling.timezone}): {_times(slots)}"
        following = _next_free(session, ctx, day)
    why = "no free times" if opening_hours(scheduling, day) != "closed" else "closed"
    today = ctx.now.astimezone(ZoneInfo(scheduling.timezone)).date()
    if day < today:
        why = "that date is in the past"
    elif (day - today).days > scheduling.horizon_days:
        why = f"bookings are only open {scheduling.horizon_days} days ahead"
    nxt = f" Next free time: {following.strftime('%Y-%m-%d %H:%M')}." if following else ""
    return f"{day.isoformat()} ({day.strftime('%A')}): {why}.{nxt}"


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
    "schedule_appointment": schedule_appointment,
}

# --------------------------------------------------------------------------- the toolset


class Toolset:
    """The tools of one assistant: schemas for the model, and a runner that never raises."""

    def __init__(self, tools: list[Tool]):
        self._tools = {t.name: t for t in tools}

    @property
    def names(self) -> list[str]:
        return list(self._tools)

    def __contains__(self, name: str) -> bool:
        return name in self._tools

    def __len__(self) -> int:
        return len(self._tools)

    def schemas(self) -> list[dict]:
        return [t.schema() for t in self._tools.values()]

    def without(self, names: frozenset[str] | set[str]) -> Toolset:
        """The same tools but ``names``."""
        return Toolset([t for name, t in self._tools.items() if name not in names])

    def run(self, ctx: ToolContext, call: ToolCall) -> ToolResult:
        started = time.perf_counter()
        error = None
        try:
            content = self._run(ctx, call)
        except READABLE_ERRORS as exc:
            error = str(exc)[:MAX_ERROR_CHARS] or type(exc).__name__
            content = f"Error: {error}"
        except Exception as exc:
            log.exception("tool %s failed", call.name)
            error = f"{type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS]
            content = f"Error: the tool {call.name} failed unexpectedly ({type(exc).__name__}). Do not retry it; offer another way to help."
        duration_ms = round((time.perf_counter() - started) * 1000)
        return ToolResult(call_id=call.id, name=call.name, content=content, error=error, duration_ms=duration_ms)

    def _run(self, ctx: ToolContext, call: ToolCall) -> str:
        tool = self._tools.get(call.name)
        if tool is None:
            raise ToolError(f"unknown tool '{call.name}'; available tools: {', '.join(self._tools) or 'none'}")
        arguments = call.arguments
        if isinstance(arguments, str):  # a client that could not parse the model's JSON passes it raw
            try:
                arguments = json.loads(arguments or "{}")
            except ValueError:
                raise ToolError("arguments are not valid JSON") from None
        if not isinstance(arguments, dict):
            raise ToolError("arguments must be a JSON object")
        return str(tool.call(ctx, **tool.check(arguments)))


def build_toolset(config: AssistantConfig) -> Toolset:
    """The assistant's enabled built-in tools (in ``TOOL_NAMES`` order), then its HTTP tools.

    The search tool is offered only when retrieval runs as a tool: with ``every_turn`` the engine has
    already searched, and small models would spend rounds searching again.
    """
    tools = []
    for name in TOOL_NAMES:
        if name not in config.tools or (name == "search_knowledge_base" and config.retrieval.mode == "every_turn"):
            continue
        if name == "collect_data":
            if config.data_fields:  # without fields the tool can do nothing: spare the prompt
                tools.append(_collect_data_tool(config))
            continue
        tools.append(function_tool(BUILTIN_TOOLS[name]))
    tools += [http_tool(tool) for tool in config.http_tools]  # names are unique (AssistantConfig checks)
    return Toolset(tools)


def _collect_data_tool(config: AssistantConfig) -> Tool:
    """collect_data, with the assistant's fields listed so the model can pick one."""
    tool = function_tool(collect_data)
    fields = ", ".join(
        f"{f.name} ({'one of ' + '/'.join(f.options) if f.type == 'enum' else f.type})" for f in config.data_fields
    )
    props = dict(tool.parameters["properties"])
    props["field"] = props["field"] | {"enum": [f.name for f in config.data_fields]}
    return replace(tool, description=f"{tool.description} Fields: {fields}.", parameters=tool.parameters | {"properties": props})
