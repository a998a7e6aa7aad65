"""The API channel (generate a reply), conversation inspection, operator replies and who answers: the AI or
a person (runtime.handoff). Reading needs the conversation's assistant; acting on it, an operator of it."""
from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import Field

from api import scopes
from api.deps import CurrentUser, ServicesDep, SessionDep, SignedIn, allow
from api.routes.feedback import FeedbackPublic
from api.schemas import (AIToggle, ChatRequest, ChatResult, ConversationPublic, Handback, HandoffChangePublic,
                         MessagePublic, OperatorMessage, OptionPublic)
from kb import registry
from runtime import feedback, handoff, store
from runtime.accounts.roles import OPERATOR, VIEWER
from runtime.models import Message
from runtime.options import options_by_message
from runtime.turn import handle_message
from runtime.whatsapp.media import media_of_messages, media_summary
from runtime.whatsapp.outbound import send_operator_message

router = APIRouter(tags=["conversations"], dependencies=[SignedIn])


class OfferedOption(OptionPublic):
    """A choice offered with a reply, and whether the customer took it."""

    chosen_at: datetime | None = Field(default=None, description="when the customer chose it (tap, number or text)")


class MessageDetail(MessagePublic):
    feedback: list[FeedbackPublic] = Field(default_factory=list, description="ratings of an AI reply, oldest first")
    media: dict | None = Field(default=None, description="a file the customer sent: kind, mime_type, file_name, size, "
                               "sha256, status (pending | stored | failed | rejected | too_large), error, transcript "
                               "and its language, engine and error; the file at /api/messages/{id}/media")
    options: list[OfferedOption] = Field(default_factory=list, description="choices offered with an AI reply (WhatsApp "
                                         "buttons or list rows, widget buttons, a numbered list), in order")


class ConversationDetail(ConversationPublic):
    messages: list[MessageDetail] = Field(default_factory=list)
    handoff_changes: list[HandoffChangePublic] = Field(default_factory=list, description="every change of "
                                                       "handoff_state, oldest first")


@router.post("/api/chat", response_model=ChatResult, responses={502: {"description": "the language model failed"}},
             dependencies=[allow(OPERATOR)])
def chat(body: ChatRequest, services: ServicesDep, session: SessionDep, principal: CurrentUser):
    """Generate the assistant's reply to a customer message (API channel), grounded and logged."""
    principal.require_assistant(registry.get_assistant(session, body.assistant_id).id)
    result = handle_message(
        services, assistant_ref=body.assistant_id, channel="api", sender="api", customer_id=body.customer_id,
        text=body.message, variables=body.variables,
    )
    out = ChatResult.from_turn(result)
    if result.status == "error":
        return JSONResponse(status_code=502, content={"detail": "the language model failed; the message is stored",
                                                      **out.model_dump(mode="json")})
    return out


@router.get("/api/conversations/{conversation_id}", response_model=ConversationDetail,
            dependencies=[allow(VIEWER, scopes.conversation)])
def get_conversation(conversation_id: str, session: SessionDep):
    """The conversation with every message; AI replies with their sources, tool calls and ratings."""
    conv = store.get_conversation(session, conversation_id)
    messages = session.query(Message).filter(Message.conversation_id == conv.id).order_by(Message.created_at, Message.id).all()
    ratings = feedback.feedback_by_message(session, [m.id for m in messages if feedback.is_ai_reply(m)])
    out = ConversationDetail.model_validate(conv)
    out.messages = [MessageDetail.from_message(m) for m in messages]
    files = media_of_messages(session, [m.id for m in messages if m.direction == "inbound"])
    offered = options_by_message(session, conv.id)
    for m in out.messages:
        m.feedback = [FeedbackPublic.model_validate(f) for f in ratings.get(m.id, [])]
        m.media = media_summary(files[m.id]) if m.id in files else None
        m.options = [OfferedOption(id=o.option_id, position=o.position, title=o.title, value=o.value,
                                   description=o.description, chosen_at=o.chosen_at) for o in offered.get(m.id, [])]
    out.handoff_changes = [HandoffChangePublic.model_validate(c) for c in handoff.changes(session, [conv.id])[conv.id]]
    return out


@router.post("/api/conversations/{conversation_id}/messages", status_code=201, response_model=MessagePublic,
             dependencies=[allow(OPERATOR, scopes.conversation)])
def operator_message(conversation_id: str, body: OperatorMessage, services: ServicesDep, session: SessionDep):
    """A human agent writes to the customer (WhatsApp: only inside the 24-hour window, else 409); the
    conversation becomes ``with_human`` and the AI stops answering until it is handed back."""
    msg = send_operator_message(services, conversation_id, body.text)
    return MessagePublic.from_message(session.get(Message, msg.id))


@router.post("/api/conversations/{conversation_id}/handback", response_model=ConversationPublic,
             dependencies=[allow(OPERATOR, scopes.conversation)])
def hand_back(conversation_id: str, services: ServicesDep, body: Handback | None = None):
    """Give the conversation back to the AI (``handoff_state`` ai); the customer is told, in their language."""
    conv = handoff.hand_back(services, conversation_id, actor="operator",
                             reason=(body.reason if body else "") or "an operator handed it back")
    return ConversationPublic.model_validate(conv)


@router.post("/api/conversations/{conversation_id}/close", response_model=ConversationPublic,
             dependencies=[allow(OPERATOR, scopes.conversation)])
def close_conversation(conversation_id: str, services: ServicesDep):
    """An operator is done: the conversation goes back to the AI (``handoff_state`` ai), logged; the customer is
    told the assistant's ``handoff.close_message`` only when it has one."""
    return ConversationPublic.model_validate(handoff.close(services, conversation_id))


@router.post("/api/conversations/{conversation_id}/ai", response_model=ConversationPublic,
             dependencies=[allow(OPERATOR, scopes.conversation)])
def set_ai(conversation_id: str, body: AIToggle, services: ServicesDep, session: SessionDep):
    """Resume the AI (as ``/handback``) or pause it by hand: an operator takes the conversation (``with_human``)."""
    if body.enabled:
        return hand_back(conversation_id, services, Handback(reason="an operator resumed the AI"))
    conv = store.get_conversation(session, conversation_id)
    handoff.set_state(session, conv, "with_human", actor="operator", reason="an operator paused the AI")
    session.commit()
    return ConversationPublic.model_validate(conv)
