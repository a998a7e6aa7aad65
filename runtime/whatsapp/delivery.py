"""Delivery of outbound messages, sent in one or more parts (``MessagePart``): how a part's status moves, and
the message's delivery fields summed up from its parts.

- A part's status only moves forward: pending = retrying < unknown < sent < delivered < read < played
  (``retrying``: a send failed and the outbox will try again, ``runtime.whatsapp.outbound``). ``failed``
  replaces pending/retrying/unknown/sent and then sticks, except that a delivered/read/played status proves
  the part arrived after all; the failure's error code and title are kept either way.
- A message is ``failed`` when one of its parts is, else ``retrying`` when one of its parts is, else as far
  as its least advanced part; its
  ``channel_message_id`` is the first part's, its ``sent_at`` the earliest, its error the first part's that
  has one, its channel cost the sum of its parts' (Meta charges every message sent).
"""
from __future__ import annotations

from runtime.models import Message

STATUS_RANK = {"pending": 0, "retrying": 0, "unknown": 1, "sent": 2, "delivered": 3, "read": 4, "played": 5}
PROOF_OF_DELIVERY = {"delivered", "read", "played"}


def advances(current: str, new: str) -> bool:
    """Whether an outbound part in status ``current`` moves to ``new`` (see the module docstring)."""
    if new == "failed":
        return current in ("pending", "retrying", "unknown", "sent")
    if new not in STATUS_RANK:
        return False  # deleted, warning...: recorded in the log only
    if current == "failed":
        return new in PROOF_OF_DELIVERY
    return STATUS_RANK[new] > STATUS_RANK.get(current, -1)


def settle(message: Message) -> float:
    """Set the message's status, channel id, ``sent_at``, error and pricing from its parts; returns by how
    much its channel cost changed (the conversation's changes as much). A message without parts is left as is."""
    parts = message.parts
    if not parts:
        return 0.0
    statuses = [p.status for p in parts]
    if "failed" in statuses or "retrying" in statuses:
        message.status = "failed" if "failed" in statuses else "retrying"
    else:
        message.status = min(statuses, key=lambda s: STATUS_RANK.get(s, -1))
    message.channel_message_id = parts[0].channel_message_id
    sent = [p.sent_at for p in parts if p.sent_at is not None]
    message.sent_at = min(sent) if sent else None
    erred = next((p for p in parts if p.error_code is not None or p.error_title), None)
    message.error_code, message.error_title = (erred.error_code, erred.error_title) if erred else (None, None)
    billable = [p.billable for p in parts if p.billable is not None]
    message.billable = any(billable) if billable else None
    message.pricing_category = next((p.pricing_category for p in parts if p.pricing_category), None)
    cost = sum(p.channel_cost or 0.0 for p in parts)
    change, message.channel_cost = cost - (message.channel_cost or 0.0), cost
    return change
