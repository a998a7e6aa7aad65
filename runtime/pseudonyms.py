"""Masking before the model (``AssistantConfig.mask_personal_data``): the chat model never sees a customer's CPF,
CNPJ, e-mail address or phone number, only placeholders (``[CPF_1]``, ``[EMAIL_1]``...), and what it writes back is
turned into the real values before anything uses it — the reply the customer gets, the arguments a tool runs with.

A :class:`Vault` holds one turn's values and their placeholders (the same value always gets the same one);
:class:`PseudonymousModel` wraps the turn's chat model: every message it is given (the system prompt with the
conversation's variables, the history, the customer's text, tool results) is masked, and its answer's text and
tool-call arguments are unmasked. Personal data is found as the exports mask it (``runtime.masking``).
"""
from __future__ import annotations

import json
import re
import threading
from dataclasses import replace

from runtime.masking import Found, replace_personal
from runtime.types import ChatMessage, ChatModel, ChatResponse, ToolSchema

_PLACEHOLDER = re.compile(r"\[?\b(CPF|CNPJ|EMAIL|PHONE)_(\d{1,4})\b\]?")


class Vault:
    """One turn's personal values and their placeholders, both ways."""

    def __init__(self) -> None:
        self._placeholders: dict[str, str] = {}  # value -> placeholder
        self._values: dict[str, str] = {}  # placeholder -> value
        self._lock = threading.Lock()

    def _placeholder(self, found: Found, value: str) -> str:
        with self._lock:
            if value not in self._placeholders:
                kind = found.kind.upper()
                n = sum(p.startswith(f"[{kind}_") for p in self._values) + 1
                placeholder = f"[{kind}_{n}]"
                self._placeholders[value], self._values[placeholder] = placeholder, value
            return self._placeholders[value]

    def hide(self, text: str) -> str:
        """``text`` with its personal data replaced by placeholders."""
        return replace_personal(text, self._placeholder) if text else text

    def reveal(self, text: str) -> str:
        """``text`` with the placeholders of this vault (with or without their brackets) turned back into the
        values; an unknown one is left as it is."""
        if not text or not self._values:
            return text
        return _PLACEHOLDER.sub(lambda m: self._values.get(f"[{m.group(1)}_{m.group(2)}]", m.group(0)), text)

    def reveal_json(self, value):
        """Every string in a JSON value revealed, at any depth."""
        if isinstance(value, str):
            return self.reveal(value)
        if isinstance(value, dict):
            return {k: self.reveal_json(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.reveal_json(v) for v in value]
        return value

    def __len__(self) -> int:
        return len(self._values)


class PseudonymousModel:
    """A chat model that is shown placeholders instead of personal data (see the module's docstring)."""

    def __init__(self, model: ChatModel, vault: Vault | None = None) -> None:
        self.model, self.vault = model, vault or Vault()
        self.name = model.name

    def complete(self, messages: list[ChatMessage], tools: list[ToolSchema] | None = None, **kwargs) -> ChatResponse:
        """The wrapped model's answer to ``messages`` masked, with its text and tool arguments unmasked."""
        response = self.model.complete([self._hidden(m) for m in messages], tools, **kwargs)
        return replace(response, content=self.vault.reveal(response.content),
                       tool_calls=[replace(c, arguments=self.vault.reveal_json(c.arguments))
                                   for c in response.tool_calls])

    def _hidden(self, message: ChatMessage) -> ChatMessage:
        hidden: ChatMessage = {**message, "content": self.vault.hide(message.get("content") or "")}
        if "tool_calls" in message:
            hidden["tool_calls"] = [{**call, "function": {**call["function"], "arguments": json.dumps(
                _hide_json(self.vault, json.loads(call["function"]["arguments"] or "{}")), ensure_ascii=False)}}
                for call in message["tool_calls"]]
        return hidden


def _hide_json(vault: Vault, value):
    if isinstance(value, str):
        return vault.hide(value)
    if isinstance(value, dict):
        return {k: _hide_json(vault, v) for k, v in value.items()}
    if isinstance(value, list):
        return [_hide_json(vault, v) for v in value]
    return value
