"""Roles, and who is asking (``Principal``): what a request may do and which assistants it may see.

Roles are ranked, each holding what the one below holds:

- ``viewer``: reads what the assistants they see hold (conversations, documents, metrics...), changes nothing;
- ``operator``: also works the conversations -- replies, pauses and resumes the AI, hands back, closes, sends
  templates, marks follow-ups done (the waiting queue);
- ``supervisor``: also the assistants' settings, knowledge bases, the test console, reviews (ratings, approved
  answers, regression checks) and exports;
- ``admin``: everything, on every assistant: users, the audit trail, customers' data (LGPD), WhatsApp numbers.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from core.errors import Forbidden

ROLES = ("viewer", "operator", "supervisor", "admin")
VIEWER, OPERATOR, SUPERVISOR, ADMIN = ROLES
_RANK = {role: rank for rank, role in enumerate(ROLES)}


@dataclass(frozen=True)
class Principal:
    """The user a request acts as. ``assistant_ids`` None: every assistant. ``via``: how they proved it
    (``session``, ``token`` or ``admin token``)."""

    user_id: str
    email: str
    role: str
    assistant_ids: frozenset[str] | None
    via: str

    def can(self, role: str) -> bool:
        """Whether this user's role holds ``role``'s rights."""
        return _RANK[self.role] >= _RANK[role]

    def sees(self, assistant_id: str) -> bool:
        return self.assistant_ids is None or assistant_id in self.assistant_ids

    def require(self, role: str) -> None:
        """Raise ``Forbidden`` unless the role holds ``role``'s rights."""
        if not self.can(role):
            raise Forbidden(f"{self.email} is {self.role}: this needs {role}")

    def require_assistant(self, assistant_id: str) -> None:
        """Raise ``Forbidden`` unless the user sees ``assistant_id``."""
        if not self.sees(assistant_id):
            raise Forbidden(f"{self.email} has no access to assistant {assistant_id!r}")

    def visible(self, items: Iterable, key: str = "assistant_id") -> list:
        """The items (objects or dicts with an assistant id at ``key``) of assistants this user sees."""
        def assistant_of(item) -> str:
            return item[key] if isinstance(item, dict) else getattr(item, key)

        return [i for i in items if self.sees(assistant_of(i))]
