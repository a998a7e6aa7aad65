"""What the dashboard shows for the codes stored in the database (statuses, handoff states and reasons, feedback
reasons, channels, event, follow-up and website kinds): English words marked for translation with ``N_``
(``pybabel extract`` finds them; the pages translate them through the ``label`` filter). A code missing here is
shown as it is stored."""
from __future__ import annotations

from api import i18n
from runtime import handoff


def N_(message: str) -> str:  # noqa: N802 (gettext's name for "mark, translate later")
    """Mark ``message`` for extraction; it is translated where it is shown."""
    return message


CHANNELS = {"whatsapp": "WhatsApp", "widget": "Widget", "test": N_("Test"), "api": "API"}

STATUSES = {
    # turns and messages (runtime.models.Message / MessagePart)
    "answered": N_("answered"), "smalltalk": N_("small talk"), "fallback": N_("fallback"), "handoff": N_("handoff"),
    "paused": N_("paused"), "error": N_("error"), "received": N_("received"), "skipped": N_("skipped"),
    "logged": N_("logged"), "pending": N_("pending"), "retrying": N_("retrying"), "sent": N_("sent"),
    "delivered": N_("delivered"), "read": N_("read"), "played": N_("played"), "failed": N_("failed"),
    "not_sent": N_("not sent"), "unknown": N_("unknown"), "scheduled": N_("scheduled"), "cancelled": N_("cancelled"),
    # documents and their jobs (kb), regression runs, website syncs (kb.models.WebsiteSyncRun), follow-ups
    "queued": N_("queued"), "processing": N_("processing"), "ready": N_("ready"), "deleting": N_("deleting"),
    "running": N_("running"), "passed": N_("passed"), "open": N_("open"), "done": N_("done"), "all": N_("all"),
    "succeeded": N_("succeeded"), "partial": N_("partial"),
    # website sources' kinds (kb.websites.KINDS), as the knowledge page's form words them
    "crawl": N_("start page"), "sitemap": N_("sitemap"),
    # follow-up kinds (runtime.models.FollowUp.kind: the callback asked outside hours, runtime.followups.KINDS)
    "callback": N_("call back"), "message": N_("message"), "call": N_("call"),
    # handoff states (runtime.handoff) and who changed them
    "ai": N_("AI"), "waiting_for_human": N_("waiting for a human"), "with_human": N_("with a person"),
    "customer": N_("customer"), "assistant": N_("assistant"), "operator": N_("operator"), "system": N_("system"),
    # roles (runtime.accounts.roles)
    "viewer": N_("viewer"), "supervisor": N_("supervisor"), "admin": N_("admin"),
    # ratings
    "good": N_("good"), "bad": N_("bad"), "neutral": N_("neutral"),
}

# the handoff reasons runtime.handoff stores, as text (tests check this list against the module's constants)
HANDOFF_REASONS = {
    handoff.CUSTOMER_REQUEST: N_("the customer asked for a person"),
    handoff.IMAGE_SENT: N_("the customer sent an image"),
    handoff.OPERATOR_REPLY: N_("an operator replied"),
    handoff.BUSINESS_APP_REPLY: N_("an operator replied from the WhatsApp Business app"),
    handoff.CLOSED: N_("an operator closed the conversation"),
    "an operator paused the AI": N_("an operator paused the AI"),  # api.routes.conversations
    "an operator handed it back": N_("an operator handed it back"),
}

# runtime.events.EVENT_TYPES (and the legacy handoff URL's "handoff", a status above): the events page's kinds
EVENT_KINDS = {
    "conversation.started": N_("conversation started"), "message.received": N_("message received"),
    "reply.sent": N_("reply sent"), "delivery.failed": N_("delivery failed"),
    "handoff.requested": N_("handoff requested"), "data.collected": N_("data collected"),
    "appointment.booked": N_("appointment booked"), "feedback.given": N_("feedback given"),
    "automation.run_finished": N_("automation run finished"),
}

# runtime.handoff.REASON_CATEGORIES: the metrics page's rows
REASON_CATEGORIES = {
    "customer_request": N_("customer request"), "model_transfer": N_("model transfer"),
    "fallback_streak": N_("fallback streak"), "model_failure": N_("model failure"),
    "operator_takeover": N_("operator takeover"), "business_app": N_("business app"), "other": N_("other"),
}

# runtime.feedback.REASONS: the code's words and its explanation
FEEDBACK_REASONS = {
    "wrong": (N_("wrong"), N_("factually wrong, or answers another question")),
    "incomplete": (N_("incomplete"), N_("right as far as it goes, but leaves out part of the answer")),
    "not_grounded": (N_("not grounded"), N_("says things the cited sources do not support")),
    "wrong_language": (N_("wrong language"), N_("not in the customer's language")),
    "tone": (N_("tone"), N_("rude, cold, too long or otherwise off in tone")),
    "should_handoff": (N_("should hand off"), N_("should have passed the customer to a person")),
    "other": (N_("other"), N_("anything else (the comment says what)")),
}

LABELS: dict[str, str] = {**REASON_CATEGORIES, **{code: words for code, (words, _) in FEEDBACK_REASONS.items()},
                          **STATUSES, **HANDOFF_REASONS, **EVENT_KINDS}


def label(code: object) -> str:
    """What a page shows for a stored code, in the reader's language (the code itself when it has no label)."""
    words = LABELS.get(code) if isinstance(code, str) else None
    return i18n.gettext(words) if words else ("" if code is None else str(code))


def feedback_reason_text(code: str) -> str:
    """The explanation of a feedback reason, in the reader's language."""
    return i18n.gettext(FEEDBACK_REASONS[code][1]) if code in FEEDBACK_REASONS else code
