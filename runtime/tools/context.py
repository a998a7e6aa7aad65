"""What a tool receives during a turn, and the error it raises when it cannot do what was asked."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime

from core.db import utcnow
from kb.models import Assistant
from kb.types import Source
from runtime.config import AssistantConfig
from runtime.services import Services


@dataclass
class ToolContext:
    """What a tool may touch during one turn; tools append the passages and events they create.

    ``deadline`` is the turn's end on the ``time.perf_counter()`` clock; unset, the turn's whole
    ``turn_deadline_s`` from the context's creation. Tools that wait on the network stop by then."""

    services: Services
    assistant: Assistant
    config: AssistantConfig
    conversation_id: str
    sources: list[Source] = field(default_factory=list)
    now: datetime = field(default_factory=utcnow)
    events: list[str] = field(default_factory=list)
    deadline: float | None = None
    options: list = field(default_factory=list)  # runtime.options.Choice: offered with the reply (the last offer)
    options_prompt: str | None = None
    files: list[dict] = field(default_factory=list)  # knowledge-base files to send with the reply (send_file)

    def offer(self, choices: list, prompt: str | None = None) -> None:
        """Offer ``choices`` (``runtime.options.Choice``) with the turn's reply, in place of any earlier offer."""
        self.options, self.options_prompt = list(choices), (prompt or None)

    def __post_init__(self) -> None:
        if self.deadline is None:
            self.deadline = time.perf_counter() + self.config.turn_deadline_s

    def remaining_s(self) -> float:
        """Seconds left before the turn's deadline (negative once past)."""
        return self.deadline - time.perf_counter()


class ToolError(Exception):
    """A tool could not do what was asked; the message is written for the model."""
