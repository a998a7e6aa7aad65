"""Which assistant a route's path is about (``api.deps.allow``'s ``scope``): one resolver per kind of id in a path,
each returning the assistant's id, or None when the path names nothing that exists (the route then answers 404)."""
from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from kb.models import Assistant, Document, IngestJob, KnowledgeBase
from runtime.approved import ApprovedAnswer
from runtime.models import Conversation, FollowUp, Message, MessageFeedback
from runtime.regression import RegressionCase, RegressionRun
from runtime.whatsapp.models import WhatsAppSender


def assistant(db: Session, path: dict[str, Any]) -> str | None:
    """``{assistant_id}``: an assistant's id or name."""
    ref = path["assistant_id"]
    return db.scalar(select(Assistant.id).where((Assistant.id == ref) | (Assistant.name == ref)).limit(1))


def _of_knowledge_base(db: Session, model, row_id: str) -> str | None:
    return db.scalar(select(KnowledgeBase.assistant_id).join(model, model.knowledge_base_id == KnowledgeBase.id)
                     .where(model.id == row_id))


def document(db: Session, path: dict[str, Any]) -> str | None:
    return _of_knowledge_base(db, Document, path["document_id"])


def job(db: Session, path: dict[str, Any]) -> str | None:
    return _of_knowledge_base(db, IngestJob, path["job_id"])


def conversation(db: Session, path: dict[str, Any]) -> str | None:
    return db.scalar(select(Conversation.assistant_id).where(Conversation.id == path["conversation_id"]))


def _of_conversation(db: Session, model, row_id: str) -> str | None:
    return db.scalar(select(Conversation.assistant_id).join(model, model.conversation_id == Conversation.id)
                     .where(model.id == row_id))


def message(db: Session, path: dict[str, Any]) -> str | None:
    return _of_conversation(db, Message, path["message_id"])


def feedback(db: Session, path: dict[str, Any]) -> str | None:
    return _of_conversation(db, MessageFeedback, path["feedback_id"])


def followup(db: Session, path: dict[str, Any]) -> str | None:
    return _of_conversation(db, FollowUp, path["followup_id"])


def approved_answer(db: Session, path: dict[str, Any]) -> str | None:
    return db.scalar(select(ApprovedAnswer.assistant_id).where(ApprovedAnswer.id == path["approved_id"]))


def regression_case(db: Session, path: dict[str, Any]) -> str | None:
    return db.scalar(select(RegressionCase.assistant_id).where(RegressionCase.id == path["case_id"]))


def regression_run(db: Session, path: dict[str, Any]) -> str | None:
    return db.scalar(select(RegressionRun.assistant_id).where(RegressionRun.id == path["run_id"]))


def sender(db: Session, path: dict[str, Any]) -> str | None:
    return db.scalar(select(WhatsAppSender.assistant_id).where(WhatsAppSender.id == path["sender_id"]))


def sender_assistant(db: Session, sender_id: str) -> str | None:
    """The assistant of a sender named in a request's body (``api.routes.whatsapp``)."""
    return sender(db, {"sender_id": sender_id})
