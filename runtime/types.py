"""Core value types of the conversation runtime: chat messages in and out of a model, tool calls, turns."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal, NotRequired, Protocol, TypedDict

from kb.types import Source

Role = Literal["system", "user", "assistant", "tool"]
ToolSchema = dict[str, Any]
"""An OpenAI-style tool schema: ``{"type": "function", "function": {"name", "description", "parameters"}}``."""


class ChatFunction(TypedDict):
    name: str
    arguments: str  # JSON text, as OpenAI-compatible servers take it


class ChatToolCall(TypedDict):
    """A tool call in an assistant :class:`ChatMessage`, as it is sent (a :class:`ToolCall` in OpenAI's format)."""

    id: str
    type: Literal["function"]
    function: ChatFunction


class ChatMessage(TypedDict):
    """One message given to a chat model, in OpenAI's chat format: a dict, sent as JSON as it is.

    ``tool_calls`` only on an assistant message that calls tools, ``tool_call_id`` only on the ``tool``
    message that answers one of them.
    """

    role: Role
    content: str
    tool_calls: NotRequired[list[ChatToolCall]]
    tool_call_id: NotRequired[str]


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: dict


@dataclass(frozen=True)
class ToolResult:
    call_id: str
    name: str
    content: str  # what the model reads back (the error text when ``error`` is set)
    error: str | None = None
    duration_ms: int = 0


@dataclass(frozen=True)
class ToolRun:
    """A tool call a turn ran in round ``round`` (0: values the customer typed, captured without the model),
    with its result."""

    round: int
    call: ToolCall
    result: ToolResult

    @property
    def name(self) -> str:
        return self.result.name

    @property
    def arguments(self) -> dict:
        return self.call.arguments

    def logged(self) -> dict[str, Any]:
        """What the log keeps of the run, in its order (the columns of ``runtime.models.ToolCallRecord``, and
        an entry of :attr:`TurnResult.function_calls`): the result's text, or its error."""
        res = self.result
        return {"name": self.name, "arguments": self.arguments, "result": None if res.error else res.content,
                "error": res.error, "round": self.round, "duration_ms": res.duration_ms}


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(self.prompt_tokens + other.prompt_tokens, self.completion_tokens + other.completion_tokens)


@dataclass(frozen=True)
class ChatResponse:
    """One model reply: text and/or tool calls, with token usage."""

    content: str
    tool_calls: list[ToolCall] = field(default_factory=list)
    usage: Usage = Usage()
    model: str = ""


class ChatModel(Protocol):
    """OpenAI-style messages and tool schemas in, a ChatResponse out."""

    name: str

    def complete(
        self, messages: list[ChatMessage], tools: list[ToolSchema] | None = None, *, temperature: float = 0.2,
        max_tokens: int = 256, timeout: float = 120.0,
    ) -> ChatResponse: ...


@dataclass
class TurnResult:
    """What a turn produced: the reply with its sources and tool calls, usage, cost and timings."""

    conversation_id: str
    reply: str | None
    status: str  # answered | smalltalk | fallback | handoff | paused | error
    sources: list[Source] = field(default_factory=list)  # as the model saw them, numbered as it saw them
    function_calls: list[dict] = field(default_factory=list)  # ToolRun.logged() of each, as the log keeps them
    ai_enabled: bool = True
    usage: Usage = Usage()
    cost: float = 0.0
    timings: dict = field(default_factory=dict)
    message_id: str | None = None
    error: str | None = None  # why an ``error`` turn failed, for operators (never shown to customers)
    # choices offered with the reply (runtime.options): ``Choice``s until logged, then ``Offered.to_dict()``s
    options: list = field(default_factory=list)
    options_prompt: str | None = None
    # files from the knowledge base sent with the reply (runtime.tools.builtin.send_file), each {"kind", "sha256",
    # "mime_type", "filename", "caption"}
    files: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {**asdict(self), "sources": [s.to_dict() for s in self.sources]}
