"""Fitting a turn's prompt into the chat model's context window, before every model call.

The messages and tool schemas are measured against ``context - max_tokens - MARGIN_TOKENS``. When they do not
fit, the oldest history goes first (a customer message with the replies that followed it), then the
lowest-ranked source (shortened to its part about the question, then dropped), then the longest tool result,
and last the customer's message is cut. The system message always stays. What was trimmed becomes the turn's
note, and the sources left are exactly those the model was shown.

Counting: the embedded llama.cpp server counts with the model's own tokenizer, plus the chat template's
overhead per message and for tool schemas, measured once per model with four 1-token completions. Any other
model is estimated at one token per ``BYTES_PER_TOKEN`` bytes against the configured context size.
"""
from __future__ import annotations

import json
import math
import threading
import time
import weakref
from dataclasses import replace
from typing import NamedTuple

from kb.types import Source
from runtime.llm import ChatModelError
from runtime.local_llm import SupervisedLocalModel
from runtime.prompt import excerpt, turn_message
from runtime.types import ChatMessage, ToolSchema

# room left for what counting per text cannot see: tokens merging where the template joins texts (measured:
# the count is within 3 tokens of the server's own)
MARGIN_TOKENS = 32
# BPE tokenizers take ~4 bytes per token of English and ~3.5 of Portuguese: 3 over-counts Latin text
BYTES_PER_TOKEN = 3
# the reply's opening (ChatML: 3 tokens), role markers of a message (ChatML: 5), the instructions a template
# wraps tool schemas in (Qwen 2.5's: 79, measured), the tags around a tool call and its result (Qwen 2.5's: 11)
ESTIMATED_OVERHEADS = (8, 8, 300, 24)
MIN_SOURCE_TOKENS = 40  # a source cut shorter than this is dropped instead: too little left to answer from
MIN_CUT_CHARS = 80  # tool results and the customer's message are never cut shorter
CUT_MARK = " …"
_COUNT_CACHE = 2048  # texts whose counts are kept (system prompts and history repeat across turns)
_PROBE: list[ChatMessage] = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Hello"}]
_PROBE_LONGER: list[ChatMessage] = _PROBE + [{"role": "assistant", "content": "Hi!"}, {"role": "user", "content": "Thanks"}]
_PROBE_ROUND: list[ChatMessage] = [
    {"role": "assistant", "content": "", "tool_calls": [
        {"id": "call_0", "type": "function", "function": {"name": "probe", "arguments": "{}"}}]},
    {"role": "tool", "tool_call_id": "call_0", "content": "Done."},
]
_PROBE_TOOL: ToolSchema = {"type": "function", "function": {"name": "probe", "description": "A probe.",
                                                "parameters": {"type": "object", "properties": {}}}}


class ContextTooSmall(ChatModelError):
    """Even with every trim the prompt does not fit the model's context (the system prompt or tools are too long)."""


class Overheads(NamedTuple):
    """Tokens a chat template adds around the texts."""

    per_prompt: int  # the reply's opening, a BOS token
    per_message: int  # role markers
    per_tools: int  # the instructions around the tool schemas, when tools are offered
    per_tool_call: int  # the tags around a tool call and around its result


class TokenCounter:
    """Counts a prompt's tokens for one model: ``context`` (its window), ``text_tokens`` and the template's
    ``overheads``; messages and tool schemas are counted from these."""

    context: int

    def text_tokens(self, text: str, timeout: float) -> int:
        raise NotImplementedError

    def overheads(self, timeout: float) -> Overheads:
        raise NotImplementedError

    def message_tokens(self, message: ChatMessage, timeout: float) -> int:
        """Tokens of one OpenAI-style message: its text, its tool calls and the template's markers."""
        overheads = self.overheads(timeout)
        calls = [json.dumps(c.get("function", c), ensure_ascii=False, default=str) for c in message.get("tool_calls") or ()]
        return (overheads.per_message + self.text_tokens(str(message.get("content") or ""), timeout)
                + sum(overheads.per_tool_call + self.text_tokens(call, timeout) for call in calls))

    def tools_tokens(self, tools: list[ToolSchema] | None, timeout: float) -> int:
        """Tokens the offered tool schemas add to the prompt (0 without tools)."""
        if not tools:
            return 0
        return self.overheads(timeout).per_tools + sum(_tool_tokens(self, t, timeout) for t in tools)

    def prompt_tokens(self, messages: list[ChatMessage], tools: list[ToolSchema] | None, timeout: float) -> int:
        """Tokens of the whole prompt."""
        return (self.overheads(timeout).per_prompt + self.tools_tokens(tools, timeout)
                + sum(self.message_tokens(m, timeout) for m in messages))


class EstimatedTokenCounter(TokenCounter):
    """A conservative estimate for models whose tokenizer is out of reach (OpenAI-compatible endpoints)."""

    def __init__(self, context: int) -> None:
        self.context = context

    def text_tokens(self, text: str, timeout: float) -> int:
        return math.ceil(len(text.encode()) / BYTES_PER_TOKEN)

    def overheads(self, timeout: float) -> Overheads:
        return Overheads(*ESTIMATED_OVERHEADS)


class ServerTokenCounter(TokenCounter):
    """The embedded server's tokenizer (:meth:`SupervisedLocalModel.count_tokens`), with the chat template's
    overheads measured once from the prompt tokens the server reports for four tiny prompts."""

    def __init__(self, model: SupervisedLocalModel) -> None:
        self.model = model
        self._counts: dict[str, int] = {}
        self._overheads: Overheads | None = None
        self._lock = threading.Lock()

    @property
    def context(self) -> int:
        return self.model.context_tokens

    def text_tokens(self, text: str, timeout: float) -> int:
        count = self._counts.get(text)
        if count is None:
            count = self.model.count_tokens(text, timeout) if text else 0
            if len(self._counts) >= _COUNT_CACHE:
                self._counts.clear()
            self._counts[text] = count
        return count

    def overheads(self, timeout: float) -> Overheads:
        with self._lock:
            if self._overheads is None:
                self._overheads = self._measure(timeout)
            return self._overheads

    def _measure(self, timeout: float) -> Overheads:
        deadline = time.perf_counter() + timeout

        def served(messages: list[ChatMessage], tools: list[ToolSchema] | None = None) -> int:  # the server's own count
            left = max(deadline - time.perf_counter(), 0.1)
            return self.model.complete(messages, tools, temperature=0, max_tokens=1, timeout=left).usage.prompt_tokens

        def texts(messages: list[ChatMessage]) -> int:
            return sum(self.text_tokens(m["content"], timeout) for m in messages)

        short, longer = served(_PROBE), served(_PROBE_LONGER)
        with_round, with_tool = served(_PROBE + _PROBE_ROUND), served(_PROBE, [_PROBE_TOOL])
        added = len(_PROBE_LONGER) - len(_PROBE)
        per_message = math.ceil(max(longer - short - (texts(_PROBE_LONGER) - texts(_PROBE)), 0) / added)
        per_prompt = max(short - texts(_PROBE) - len(_PROBE) * per_message, 0)
        per_tools = max(with_tool - short - _tool_tokens(self, _PROBE_TOOL, timeout), 0)
        call = json.dumps(_PROBE_ROUND[0]["tool_calls"][0]["function"])
        per_tool_call = max(with_round - short - texts(_PROBE_ROUND) - self.text_tokens(call, timeout)
                            - len(_PROBE_ROUND) * per_message, 0)
        return Overheads(per_prompt, per_message, per_tools, per_tool_call)


def _tool_tokens(counter: TokenCounter, tool: ToolSchema, timeout: float) -> int:
    """A tool schema as llama-cpp-python's templates show it (its ``tojson``: ``json.dumps``, UTF-8 kept)."""
    return counter.text_tokens(json.dumps(tool, ensure_ascii=False), timeout)


_server_counters: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_server_counters_guard = threading.Lock()


def token_counter(model: object, context: int) -> TokenCounter:
    """The counter for ``model``: the embedded server's own tokenizer and window (one counter per model, so
    the template is measured once), else the estimate against ``context`` tokens."""
    if not isinstance(model, SupervisedLocalModel):
        return EstimatedTokenCounter(context)
    with _server_counters_guard:
        if model not in _server_counters:
            _server_counters[model] = ServerTokenCounter(model)
        return _server_counters[model]


class ContextBudget:
    """One turn's prompt, kept within the model's context by :meth:`fit` (see the module docstring).

    ``messages`` is the turn's list, trimmed in place: the system message, ``history`` earlier messages of
    the conversation, the turn message (``sources`` and ``user_text``), then what tool rounds add.
    """

    def __init__(self, messages: list[ChatMessage], *, history: int, sources: list[Source], user_text: str) -> None:
        self.messages = messages
        self.history = history
        self.sources = list(sources)  # what the turn message shows, as it is to be logged
        self.user_text = user_text
        self.context: int | None = None
        self.dropped_history = 0
        self.shortened: list[int] = []  # ranks of sources shown shortened
        self.dropped: list[int] = []  # ranks of sources left out
        self.cut_tool_results: set[str] = set()  # tool_call_ids
        self.cut_customer = False

    def fit(self, counter: TokenCounter, tools: list[ToolSchema] | None, *, max_tokens: int, timeout: float) -> None:
        """Trim the messages until they and ``tools`` leave ``max_tokens`` (plus a margin) of the context;
        raises :class:`ContextTooSmall` when nothing is left to trim."""
        deadline = time.perf_counter() + timeout
        self.context = counter.context
        limit = self.context - max_tokens - MARGIN_TOKENS
        while True:
            left = max(deadline - time.perf_counter(), 0.1)
            size = counter.prompt_tokens(self.messages, tools, left)
            if size <= limit:
                return
            if not self._trim(counter, size - limit, left):
                raise ContextTooSmall(
                    f"the prompt takes {size} tokens with nothing left to trim: the model's context of {self.context} "
                    f"tokens minus max_tokens {max_tokens} leaves {limit} (shorten the system prompt or the tools)")

    @property
    def note(self) -> str | None:
        """What was trimmed, for the turn's log, e.g. "context 1024 tokens: dropped 6 history messages,
        dropped source 3"; None when nothing was."""
        shortened = [r for r in self.shortened if r not in self.dropped]
        parts = [
            f"dropped {self.dropped_history} history messages" if self.dropped_history else "",
            "shortened source " + ", ".join(map(str, shortened)) if shortened else "",
            "dropped source " + ", ".join(map(str, self.dropped)) if self.dropped else "",
            f"cut {len(self.cut_tool_results)} tool results" if self.cut_tool_results else "",
            f"cut the customer's message to {len(self.user_text)} characters" if self.cut_customer else "",
        ]
        parts = [p for p in parts if p]
        return f"context {self.context} tokens: " + ", ".join(parts) if parts else None

    def _trim(self, counter: TokenCounter, excess: int, timeout: float) -> bool:
        """One trim, the cheapest loss first; False when nothing is left to trim."""
        if self.history:
            self._drop_oldest_exchange()
        elif self.sources:
            self._shorten_or_drop_source(counter, excess, timeout)
        elif tool := self._longest_tool_result():
            tool["content"] = _cut(tool["content"], counter.text_tokens(tool["content"], timeout), excess)
            self.cut_tool_results.add(tool.get("tool_call_id", ""))
        elif len(self.user_text) > MIN_CUT_CHARS + len(CUT_MARK):
            self.user_text = _cut(self.user_text, counter.text_tokens(self.user_text, timeout), excess)
            self.cut_customer = True
            self._rebuild()
        else:
            return False
        return True

    def _drop_oldest_exchange(self) -> None:
        """The oldest history message and the replies that followed it, so history starts with the customer."""
        del self.messages[1]
        self.history -= 1
        self.dropped_history += 1
        while self.history and self.messages[1]["role"] != "user":
            del self.messages[1]
            self.history -= 1
            self.dropped_history += 1

    def _shorten_or_drop_source(self, counter: TokenCounter, excess: int, timeout: float) -> None:
        source = self.sources[-1]
        text = source.text
        tokens = counter.text_tokens(text, timeout)
        keep = tokens - excess
        limit = min(len(text) * keep // max(tokens, 1), len(text) - 5)  # excerpt's "… " marks take up to 4 characters
        shorter = excerpt(text, self.user_text, limit) if keep >= MIN_SOURCE_TOKENS else text
        if len(shorter) < len(text):
            self.sources[-1] = replace(source, text=shorter)
            if source.rank not in self.shortened:
                self.shortened.append(source.rank)
        else:
            self.sources.pop()
            self.dropped.insert(0, source.rank)
        self._rebuild()

    def _longest_tool_result(self) -> ChatMessage | None:
        tools = [m for m in self.messages[2 + self.history:]
                 if m.get("role") == "tool" and len(str(m.get("content") or "")) > MIN_CUT_CHARS + len(CUT_MARK)]
        return max(tools, key=lambda m: len(m["content"]), default=None)

    def _rebuild(self) -> None:
        self.messages[1 + self.history] = turn_message(self.sources, self.user_text)


def _cut(text: str, tokens: int, excess: int) -> str:
    """``text`` without about ``excess`` of its ``tokens`` from its end (never below ``MIN_CUT_CHARS``), cut at
    a word boundary and marked."""
    chars = max(MIN_CUT_CHARS, min(len(text) * (tokens - excess) // max(tokens, 1), len(text) - 2 * len(CUT_MARK)))
    head = text[:chars]
    return (head.rsplit(" ", 1)[0] if " " in head[chars // 2:] else head).rstrip() + CUT_MARK
