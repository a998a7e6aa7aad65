"""Chat model clients: any OpenAI-compatible endpoint through the ``openai`` package, a scripted fake for
tests, and the parser for tool calls that small local models write as text.

This is the only module that imports ``openai``.
"""
from __future__ import annotations

import copy
import json
import re
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import openai

from runtime.types import ChatMessage, ChatResponse, ChatToolCall, ToolCall, ToolSchema, Usage

ScriptedReply = (ChatResponse | str | list[ToolCall]
                 | Callable[[list[ChatMessage], list[ToolSchema] | None], ChatResponse | str | list[ToolCall]])

_HERMES = re.compile(r"<tool_call>(.*?)(?:</tool_call>|(?=<tool_call>)|\Z)", re.DOTALL)
_FENCE = re.compile(r"```[ \t]*(?:json)?[ \t]*\n?(.*?)```", re.DOTALL | re.IGNORECASE)
_JSON_START = re.compile(r"[\[{]")
_BODY_EXCERPT = 300
_RETRY_STATUS = {408, 409, 429}  # and every 5xx: what the openai client itself would retry
_BACKOFF_S = 0.5
_MIN_ATTEMPT_S = 1.0  # a retry needs at least this much of the deadline left


class ChatModelError(Exception):
    """The chat model endpoint could not be reached or answered with an error."""


# --- tool calls written as text -------------------------------------------------------------------


def text_tool_calls(content: str, tool_names: set[str]) -> tuple[str, list[ToolCall]]:
    """Find tool calls a model wrote as text in ``content``; return the remaining text and the calls.

    Recognised forms: Qwen/Hermes ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` (one or
    several, closing tag optional at the end), a fenced ```json block, and a bare JSON object or list of
    objects with ``name`` and ``arguments`` (or ``parameters``), also in OpenAI's ``{"function": {...}}``
    shape and wrapped in the doubled braces Qwen copies from its template. A JSON value is taken only if
    every call in it names one of ``tool_names``; anything else (unknown names, malformed JSON, prose)
    stays in the text. Calls get ids ``call_0``, ``call_1``... in the order they appear.
    """
    if not content or not tool_names:
        return content, []
    spans: list[tuple[int, int, list[tuple[str, dict]]]] = []

    def taken(start: int, end: int) -> bool:
        return any(start < e and s < end for s, e, _ in spans)

    for m in _HERMES.finditer(content):
        calls = _parse_calls(_unfence(m.group(1)), tool_names, need_arguments=False)
        if calls is not None:
            spans.append((m.start(), m.end(), calls))
    for m in _FENCE.finditer(content):
        calls = None if taken(m.start(), m.end()) else _parse_calls(m.group(1), tool_names)
        if calls is not None:
            spans.append((m.start(), m.end(), calls))
    spans.extend(_bare_json_calls(content, tool_names, taken))
    if not spans:
        return content, []

    spans.sort(key=lambda s: s[0])
    pieces, calls, pos = [], [], 0
    for start, end, found in spans:
        pieces.append(content[pos:start])
        calls.extend(found)
        pos = end
    pieces.append(content[pos:])
    text = re.sub(r"\n{3,}", "\n\n", "".join(pieces)).strip()
    return text, [ToolCall(id=f"call_{i}", name=name, arguments=args) for i, (name, args) in enumerate(calls)]


def _bare_json_calls(content: str, tool_names: set[str], taken: Callable[[int, int], bool]):
    """Spans of JSON values outside earlier matches that are tool calls (brace doubling included)."""
    decoder = json.JSONDecoder()
    found, i = [], 0
    while (m := _JSON_START.search(content, i)) is not None:
        start = m.start()
        try:
            value, end = decoder.raw_decode(content, start)
        except ValueError:
            i = start + 1
            continue
        calls = None if taken(start, end) else _parse_calls(value, tool_names)
        if calls is not None:
            start, end = _widen_doubled_braces(content, start, end)
            found.append((start, end, calls))
        i = end
    return found


def _widen_doubled_braces(content: str, start: int, end: int) -> tuple[int, int]:
    # Qwen's template shows the call format as {{"name": ...}} and the model sometimes copies it.
    before = content[:start].rstrip()
    after = content[end:]
    stripped_after = after.lstrip()
    if before.endswith("{") and stripped_after.startswith("}"):
        return len(before) - 1, end + (len(after) - len(stripped_after)) + 1
    return start, end


def _unfence(text: str) -> str:
    m = _FENCE.search(text)
    return m.group(1) if m else text


def _parse_calls(value: object, tool_names: set[str], *, need_arguments: bool = True):
    """``[(name, arguments), ...]`` if ``value`` (JSON text or decoded) is one or more offered tool calls."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("{{") and text.endswith("}}"):
            text = text[1:-1]
        try:
            value = json.loads(text)
        except ValueError:
            return None
    if isinstance(value, dict) and isinstance(value.get("tool_calls"), list):
        value = value["tool_calls"]
    items = value if isinstance(value, list) else [value]
    calls = [_as_call(item, tool_names, need_arguments) for item in items]
    if not calls or any(c is None for c in calls):
        return None
    return calls


def _as_call(item: object, tool_names: set[str], need_arguments: bool) -> tuple[str, dict] | None:
    if not isinstance(item, dict):
        return None
    if isinstance(item.get("function"), dict):
        item = item["function"]
    name = item.get("name")
    if not isinstance(name, str) or name not in tool_names:
        return None
    if "arguments" in item:
        return name, decode_arguments(item["arguments"])
    if "parameters" in item:
        return name, decode_arguments(item["parameters"])
    return None if need_arguments else (name, {})


def decode_arguments(arguments: object) -> dict:
    """Tool-call arguments as a dict; text that is not a JSON object comes back as ``{"_raw": text}``."""
    if arguments is None or arguments == "":
        return {}
    if isinstance(arguments, dict):
        return arguments
    if isinstance(arguments, str):
        try:
            decoded = json.loads(arguments)
        except ValueError:
            return {"_raw": arguments}
        return decoded if isinstance(decoded, dict) else {"_raw": arguments}
    return {"_raw": json.dumps(arguments)}


def tool_names_of(tools: Iterable[ToolSchema] | None) -> set[str]:
    """Function names in OpenAI-style tool schemas (``{"type": "function", "function": {"name": ...}}``)."""
    names = set()
    for tool in tools or ():
        name = (tool.get("function") or tool).get("name")
        if isinstance(name, str):
            names.add(name)
    return names


# --- OpenAI-compatible endpoints -----------------------------------------------------------------


def sanitize_messages(messages: list[ChatMessage]) -> list[ChatMessage]:
    """Copies of ``messages`` that every OpenAI-compatible server accepts.

    Also mends what hand-written messages may hold beyond :class:`ChatMessage`: assistant ``content: None``
    becomes ``""`` (llama.cpp's server answers 500 on null); tool calls may be given as :class:`ToolCall` or
    with dict arguments and are sent in OpenAI's format (arguments as a JSON string); tool message content
    that is not text is sent as JSON.
    """
    cleaned: list[ChatMessage] = []
    for original in messages:
        message = original.copy()
        role = message.get("role")
        if role == "assistant":
            if message.get("content") is None:
                message["content"] = ""
            if message.get("tool_calls"):
                message["tool_calls"] = [_openai_tool_call(tc) for tc in message["tool_calls"]]
            else:
                message.pop("tool_calls", None)
        elif role == "tool" and not isinstance(message.get("content"), str):
            message["content"] = json.dumps(message.get("content"), ensure_ascii=False)
        cleaned.append(message)
    return cleaned


def _openai_tool_call(call: ToolCall | Mapping[str, Any]) -> ChatToolCall:
    if isinstance(call, ToolCall):
        call = {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}
    function = dict(call.get("function") or {})
    if not isinstance(function.get("arguments"), str):
        function["arguments"] = json.dumps(function.get("arguments") or {}, ensure_ascii=False)
    return cast(ChatToolCall, {**call, "type": call.get("type", "function"), "function": function})


class OpenAICompatibleChatModel:
    """A :class:`~runtime.types.ChatModel` on any OpenAI-compatible chat completions endpoint."""

    def __init__(
        self, base_url: str | None, api_key: str, model: str, name: str | None = None, max_retries: int = 2
    ) -> None:
        self.base_url = base_url
        self.model = model
        self.name = name or model
        self.max_retries = max_retries
        # retries are ours, inside the caller's deadline: the client's own would restart the full timeout
        self._client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0)

    def complete(
        self, messages: list[ChatMessage], tools: list[ToolSchema] | None = None, *, temperature: float = 0.2,
        max_tokens: int = 256, timeout: float = 120.0,
    ) -> ChatResponse:
        """Send one chat completion request; tool calls come back parsed, whether structured or as text.

        ``timeout`` bounds the whole call: a refused connection, 408/409/429 or 5xx answer is retried
        (up to ``max_retries`` times, with backoff) only while at least a second of it is left, and a
        timed-out request is never retried. Raises :class:`ChatModelError` when the endpoint is
        unreachable, times out or answers an error.
        """
        request: dict = {
            "model": self.model, "messages": sanitize_messages(messages),
            "temperature": temperature, "max_tokens": max_tokens,
        }
        if tools:
            request["tools"] = tools
        deadline = time.monotonic() + timeout
        for attempt in range(self.max_retries + 1):
            try:
                completion = self._client.chat.completions.create(
                    **request, timeout=max(deadline - time.monotonic(), 0.01)
                )
                break
            except openai.APIError as exc:
                backoff = _BACKOFF_S * 2**attempt
                if (attempt == self.max_retries or not _retryable(exc)
                        or deadline - time.monotonic() - backoff < _MIN_ATTEMPT_S):
                    raise self._error(exc, timeout) from exc
                time.sleep(backoff)
        if not completion.choices:
            raise ChatModelError(f"{self.name}: the response at {self.base_url} has no choices")
        return self._response(completion, tools)

    def _response(self, completion, tools: list[ToolSchema] | None) -> ChatResponse:
        message = completion.choices[0].message
        content = message.content or ""
        calls = [
            ToolCall(id=tc.id or f"call_{i}", name=tc.function.name, arguments=decode_arguments(tc.function.arguments))
            for i, tc in enumerate(message.tool_calls or [])
            if getattr(tc, "function", None) is not None
        ]
        if not calls and tools:
            content, calls = text_tool_calls(content, tool_names_of(tools))
        usage = completion.usage
        return ChatResponse(
            content=content,
            tool_calls=calls,
            usage=Usage(usage.prompt_tokens or 0, usage.completion_tokens or 0) if usage else Usage(),
            model=completion.model or self.model,
        )

    def _error(self, exc: openai.APIError, timeout: float) -> ChatModelError:
        where = f"{self.name} at {self.base_url or 'api.openai.com'}"
        if isinstance(exc, openai.APITimeoutError):
            return ChatModelError(f"{where}: no answer within {timeout:g} s (timed out)")
        if isinstance(exc, openai.APIConnectionError):
            cause = exc.__cause__ or exc
            return ChatModelError(f"{where}: connection failed ({cause})")
        if isinstance(exc, openai.APIStatusError):
            body = exc.response.text.strip()
            excerpt = body[:_BODY_EXCERPT] + ("..." if len(body) > _BODY_EXCERPT else "")
            return ChatModelError(f"{where}: HTTP {exc.status_code}: {excerpt}")
        return ChatModelError(f"{where}: {exc}")


def _retryable(exc: openai.APIError) -> bool:
    if isinstance(exc, openai.APITimeoutError):
        return False
    if isinstance(exc, openai.APIConnectionError):
        return True
    return isinstance(exc, openai.APIStatusError) and (exc.status_code in _RETRY_STATUS or exc.status_code >= 500)


# --- scripted fake --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScriptedRequest:
    """One call to :meth:`ScriptedChatModel.complete`, as received."""

    messages: list[ChatMessage]
    tools: list[ToolSchema] | None
    kwargs: dict = field(default_factory=dict)


class ScriptedChatModel:
    """A fake :class:`~runtime.types.ChatModel` that replies from a script, for tests.

    ``enqueue`` replies: a :class:`ChatResponse`, a ``str`` (plain reply), a list of :class:`ToolCall`, or a
    callable ``(messages, tools) -> reply`` for replies that depend on the prompt. Each ``complete`` pops
    the next reply and records the request in ``requests``. Usage is a rough word count, so cost code
    sees numbers.
    """

    def __init__(self, name: str = "scripted") -> None:
        self.name = name
        self.requests: list[ScriptedRequest] = []
        self._script: deque[ScriptedReply] = deque()

    def enqueue(self, *responses: ScriptedReply) -> ScriptedChatModel:
        """Append replies to the script; returns the model, for chaining."""
        for response in responses:
            if isinstance(response, list) and not all(isinstance(c, ToolCall) for c in response):
                raise TypeError("a scripted list must hold ToolCall objects")
            if not (isinstance(response, (ChatResponse, str, list)) or callable(response)):
                raise TypeError(f"cannot script a reply of type {type(response).__name__}")
            self._script.append(response)
        return self

    @property
    def remaining(self) -> int:
        """Replies still in the script."""
        return len(self._script)

    def complete(
        self, messages: list[ChatMessage], tools: list[ToolSchema] | None = None, *, temperature: float = 0.2,
        max_tokens: int = 256, timeout: float = 120.0,
    ) -> ChatResponse:
        """Record the request and return the next scripted reply."""
        kwargs = {"temperature": temperature, "max_tokens": max_tokens, "timeout": timeout}
        self.requests.append(ScriptedRequest(copy.deepcopy(messages), copy.deepcopy(tools), kwargs))
        if not self._script:
            last = next((m.get("content") for m in reversed(messages) if m.get("role") == "user"), None)
            raise AssertionError(
                f"ScriptedChatModel {self.name!r}: script exhausted after {len(self.requests) - 1} replies; "
                f"unexpected request #{len(self.requests)} (last user message: {last!r})"
            )
        reply = self._script.popleft()
        if not isinstance(reply, (ChatResponse, str, list)):
            reply = reply(messages, tools)
        return self._response(reply, messages)

    def _response(self, reply: object, messages: list[ChatMessage]) -> ChatResponse:
        if isinstance(reply, str):
            reply = ChatResponse(content=reply)
        elif isinstance(reply, list):
            reply = ChatResponse(content="", tool_calls=list(reply))
        elif not isinstance(reply, ChatResponse):
            raise TypeError(f"scripted callable returned {type(reply).__name__}, not a reply")
        usage = reply.usage
        if usage == Usage():
            calls_text = " ".join(f"{c.name} {json.dumps(c.arguments)}" for c in reply.tool_calls)
            usage = Usage(_word_count(messages), len(f"{reply.content} {calls_text}".split()))
        return ChatResponse(reply.content, list(reply.tool_calls), usage, reply.model or self.name)


def _word_count(messages: list[ChatMessage]) -> int:
    words = 0
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):  # content parts
            content = " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
        words += len(str(content or "").split())
        for call in message.get("tool_calls") or ():
            words += len(json.dumps(call, default=str).split())
    return words
