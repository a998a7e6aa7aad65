"""The WhatsApp webhook end to end on the real app: every pywa fixture payload signed and posted, the
signature and number-ownership checks, redeliveries, out-of-order statuses, the 24-hour window,
template states, and the senders/templates admin API (which never returns secrets)."""
from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from core.db import new_id, utcnow
from kb import registry
from runtime.models import Conversation, Message, MessagePart, Turn
from runtime.queue import InlineQueue, WorkQueue
from runtime.store import find_or_create_conversation
import runtime.whatsapp.inbound as inbound
from runtime.whatsapp.inbound import SignatureError, accept_post, advances, process_post
from runtime.whatsapp.models import WebhookPost, WhatsAppSender, WhatsAppTemplate
from runtime.handoff import BUSINESS_APP_REPLY, changes
from runtime.whatsapp.standin import echo_body
from runtime.whatsapp.webhook import (
    MAX_DEPTH, BusinessEcho, InboundMessage, StatusUpdate, Unhandled, parse_payload, phone_number_ids, sign,
    verify_signature,
)
from tests.conftest import SHARED_DATA

PYWA = SHARED_DATA / "webhooks" / "pywa"
SPLIT = sorted((PYWA / "split").glob("*.json")) if (PYWA / "split").is_dir() else []
ORIGINAL = sorted((PYWA / "original").glob("*.json")) if (PYWA / "original").is_dir() else []
requires_pywa = pytest.mark.skipif(not SPLIT or not ORIGINAL, reason=f"pywa webhook fixtures not found under {PYWA}")

SECRET_A, SECRET_B = "app-secret-a-7f3c", "app-secret-b-91d2"
ACCESS_TOKEN, VERIFY_TOKEN = "EAAG-access-token-c0ffee", "verify-me-5150"

# what each split fixture must become: kind, stored status, a fragment of the stored text, media id
EXPECTED = {
    "callback_button__button": ("button_reply", "received", "title", None),
    "callback_button__quick_reply": ("button", "received", "title", None),
    "callback_button__quick_reply_without_context": ("button", "received", "title", None),
    "callback_selection__callback": ("list_reply", "received", "title", None),
    "callback_selection__description": ("list_reply", "received", "description", None),
    "deleted_message__revoke": ("revoke", "logged", "deleted a message", None),
    "edited_message__image": ("edit", "logged", "edited an earlier message", None),
    "message__animated_sticker": ("sticker", "received", "sticker", "1234567890987654321"),
    "message__audio": ("audio", "received", "audio", "1234567890987654321"),
    "message__chosen_location": ("location", "received", "Facebook HQ, 1 Hacker Way, Menlo Park, CA 94025", None),
    "message__contacts": ("contacts", "received", "Chandler Bing (+1 555-555-5555)", None),
    "message__current_location": ("location", "received", "12.25089, 43.90539", None),
    "message__document": ("document", "received", "filename.pdf", "1234567890987654321"),
    "message__forwarded": ("text", "received", "forwarded text", None),
    "message__forwarded_many_times": ("text", "received", "text forwarded many times", None),
    "message__image": ("image", "received", "an image", "65463453"),
    "message__interactive_message_with_err": ("interactive", "logged", "not readable", None),
    "message__media_with_url": ("image", "received", "an image", "65463453"),
    "message__order": ("order", "received", "3 x HAMBURGER at 30 ILS", None),
    "message__reaction": ("reaction", "logged", "\U0001f62e", None),
    "message__referral": ("text", "received", "BODY", None),
    "message__reply": ("text", "received", "replied text", None),
    "message__static_sticker": ("sticker", "received", "sticker", "1234567890987654321"),
    "message__text": ("text", "received", "Body Text", None),
    "message__unreaction_empty": ("reaction", "logged", "removed a reaction", None),
    "message__unreaction_no_emoji": ("reaction", "logged", "removed a reaction", None),
    "message__unsupported": ("unsupported", "logged", "131051 Message type unknown", None),
    "message__unsupported_with_type": ("unsupported", "logged", "pool", None),
    "message__video": ("video", "received", "caption", "765756756"),
    "message__voice": ("voice", "received", "voice message", "1234567890987654321"),
    "system__identity_change": ("system", "logged", "User identity changed", None),
    "system__phone_number_change": ("system", "logged", "changed from", None),
    "user_marketing_preferences__resume": ("marketing_preference", "logged", "resume", None),
    "user_marketing_preferences__signup": ("marketing_preference", "logged", "signup", None),
}
STATUS_FILES = {
    "message_status__delivered": "delivered", "message_status__failed": "failed", "message_status__group": "read",
    "message_status__played": "played", "message_status__read": "read", "message_status__sent": "sent",
    "message_status__with_tracker": "sent",
}


# --------------------------------------------------------------------------------------------- helpers



class TurnsRecorded:
    """A ``WorkQueue`` that records the turns scheduled on it, without running them; other work goes to ``queue``."""

    def __init__(self, queue: WorkQueue, scheduled: list[tuple[str, float]]):
        self.queue, self.scheduled = queue, scheduled

    def enqueue_job(self, job_id: str) -> None:
        self.queue.enqueue_job(job_id)

    def enqueue_webhook(self, post_id: str) -> None:
        self.queue.enqueue_webhook(post_id)

    def schedule_turn(self, conversation_id: str, delay_s: float) -> None:
        self.scheduled.append((conversation_id, delay_s))

    def deliver_events(self, event_ids: list[str], delay_s: float = 0.0) -> None:
        self.queue.deliver_events(event_ids, delay_s)

    def schedule_followup(self, followup_id: str, delay_s: float) -> None:
        self.queue.schedule_followup(followup_id, delay_s)

    def enqueue_media(self, media_id: str, delay_s: float) -> None:
        self.queue.enqueue_media(media_id, delay_s)


@pytest.fixture
def wa(client):
    """The real app, processing webhook posts inline (so rows can be read at once); the turns it would start
    are recorded in ``client.scheduled``, not run."""
    client.scheduled = []
    services_of(client).queue = TurnsRecorded(InlineQueue(services_of(client)), client.scheduled)
    return client


@pytest.fixture
def queued(client):
    """The real app with its queue: posts are processed by the embedded consumer; turns are recorded, not run."""
    scheduled = []
    services_of(client).queue = TurnsRecorded(services_of(client).queue, scheduled)
    return client, scheduled


@pytest.fixture
def public(wa):
    """A client without the admin token, as Meta calls the webhook."""
    return TestClient(wa.app)


def services_of(client):
    return client.app.state.services


def new_assistant(client, name="shop") -> str:
    r = client.post("/api/assistants", json={"name": name})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def add_sender(client, assistant: str, phone_number_id: str, app_secret: str = SECRET_A, **extra) -> dict:
    body = dict(assistant_id=assistant, phone_number_id=phone_number_id, display_phone_number="+351 210 000 000",
                waba_id="waba-1", access_token=ACCESS_TOKEN, app_secret=app_secret, verify_token=VERIFY_TOKEN) | extra
    r = client.post("/api/whatsapp/senders", json=body)
    assert r.status_code == 201, r.text
    return r.json()


def post_signed(public, body, secret: str = SECRET_A, raw: bytes | None = None):
    raw = raw if raw is not None else json.dumps(body).encode()
    return public.post("/webhooks/whatsapp", content=raw,
                       headers={"Content-Type": "application/json", "X-Hub-Signature-256": sign(raw, secret)})


def counts(services) -> tuple[int, int, int]:
    with services.session() as s:
        return tuple(s.scalar(select(func.count()).select_from(t)) for t in (WebhookPost, Message, Conversation))


def add_outbound(services, assistant_id: str, phone_number_id: str, customer_id: str, wamid: str,
                 status: str = "pending") -> str:
    with services.session() as s:
        conv = find_or_create_conversation(s, assistant_id=assistant_id, channel="whatsapp", sender=phone_number_id,
                                           customer_id=customer_id)
        msg = Message(id=new_id(), conversation_id=conv.id, direction="outbound", text="Hello!", status=status,
                      channel_message_id=wamid, created_at=utcnow())
        msg.parts = [MessagePart(id=new_id(), position=0, text="Hello!", status=status, channel_message_id=wamid,
                                 created_at=utcnow())]  # as outbound.send_reply stores a one-part send
        s.add(msg)
        s.commit()
        return msg.id


def message_by_wamid(services, wamid: str, direction: str = "inbound") -> list[Message]:
    with services.session() as s:
        return list(s.scalars(select(Message).where(Message.channel_message_id == wamid, Message.direction == direction)))


def text_payload(phone_number_id: str, wamid: str = "wamid.T1", body: str = "Do you open on Sundays?",
                 wa_id: str = "351910000001", ts: int = 1_700_000_000) -> dict:
    return {"object": "whatsapp_business_account", "entry": [{"id": "waba-1", "changes": [{"field": "messages", "value": {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "351210000000", "phone_number_id": phone_number_id},
        "contacts": [{"profile": {"name": "Ana"}, "wa_id": wa_id}],
        "messages": [{"from": wa_id, "id": wamid, "timestamp": str(ts), "type": "text", "text": {"body": body}}],
    }}]}]}


def status_payload(phone_number_id: str, wamid: str, status: str, ts: int = 1_700_000_100, error: dict | None = None,
                   recipient: str = "351910000001") -> dict:
    item = {"id": wamid, "status": status, "timestamp": str(ts), "recipient_id": recipient}
    if error:
        item["errors"] = [error]
    if status in ("sent", "delivered", "read"):
        item["pricing"] = {"billable": True, "pricing_model": "PMP", "category": "utility"}
    return {"object": "whatsapp_business_account", "entry": [{"id": "waba-1", "changes": [{"field": "messages", "value": {
        "messaging_product": "whatsapp", "metadata": {"display_phone_number": "351210000000", "phone_number_id": phone_number_id},
        "statuses": [item],
    }}]}]}


def combined(original: dict) -> dict:
    """All entries of an original pywa file (a dict of named payloads) in one post."""
    return {"object": "whatsapp_business_account",
            "entry": [entry for payload in original.values() for entry in payload["entry"]]}


# --------------------------------------------------------------------------- every fixture payload


@requires_pywa
def test_every_fixture_type_is_covered():
    stems = {p.stem for p in SPLIT}
    assert len(SPLIT) == 41 and len(ORIGINAL) == 8
    assert stems == set(EXPECTED) | set(STATUS_FILES)


@requires_pywa
@pytest.mark.parametrize("path", SPLIT, ids=[p.stem for p in SPLIT])
def test_split_payload(wa, public, path: Path):
    """A fresh app per file (fixtures reuse wamids): refused unsigned, then handled as its type says."""
    services = services_of(wa)
    raw = path.read_bytes()
    body = json.loads(raw)
    assistant = new_assistant(wa)
    for number in phone_number_ids(body):
        add_sender(wa, assistant, number)
    status = STATUS_FILES.get(path.stem)
    if status:
        for e in parse_payload(body):
            add_outbound(services, assistant, e.phone_number_id, e.recipient_id, e.wamid)

    before = counts(services)
    headers = {"Content-Type": "application/json"}
    assert public.post("/webhooks/whatsapp", content=raw, headers=headers).status_code == 401
    for bad in ("sha256=" + "0" * 64, sign(raw, SECRET_B), sign(raw + b" ", SECRET_A), "sha1=abc", "sha256=zz"):
        r = public.post("/webhooks/whatsapp", content=raw, headers={**headers, "X-Hub-Signature-256": bad})
        assert r.status_code == 403, (bad, r.text)
    assert counts(services) == before, "a refused post stored something"

    r = post_signed(public, None, raw=raw)
    assert r.status_code == 200 and r.json() == {"status": "ok"}
    with services.session() as s:
        post = s.scalars(select(WebhookPost)).one()
        assert post.processed and post.error is None and post.body == body
        assert s.scalar(select(func.count()).select_from(Turn)) == 0

    if status:
        event = next(e for e in parse_payload(body) if isinstance(e, StatusUpdate))
        (msg,) = message_by_wamid(services, event.wamid, "outbound")
        assert msg.status == status
        if status == "failed":
            assert (msg.error_code, msg.error_title) == (130472, "User's number is part of an experiment")
        pricing = body["entry"][0]["changes"][0]["value"]["statuses"][0].get("pricing")
        assert (msg.billable, msg.pricing_category) == ((True, "service") if pricing else (None, None))
        assert counts(services)[1] == before[1], "a status must not create messages"
        return

    kind, stored_status, fragment, media_id = EXPECTED[path.stem]
    event = next(e for e in parse_payload(body) if isinstance(e, InboundMessage))
    (msg,) = message_by_wamid(services, event.wamid)
    assert (msg.kind, msg.status) == (kind, stored_status)
    assert fragment in msg.text
    assert msg.received_at == event.timestamp and msg.received_at.tzinfo is not None
    with services.session() as s:
        conv = s.get(Conversation, msg.conversation_id)
        assert (conv.channel, conv.sender, conv.customer_id, conv.assistant_id) == (
            "whatsapp", event.phone_number_id, event.customer_id, assistant)
        opens_window = kind not in ("system", "revoke", "edit", "marketing_preference")
        assert (conv.last_inbound_at == event.timestamp) is opens_window
    if kind != "marketing_preference":
        assert msg.payload == next(m for m in body["entry"][0]["changes"][0]["value"]["messages"])
    if media_id:
        key = "audio" if kind == "voice" else kind
        assert msg.payload[key]["id"] == media_id


@requires_pywa
@pytest.mark.parametrize("path", ORIGINAL, ids=[p.stem for p in ORIGINAL])
def test_original_file(wa, public, path: Path):
    """The file as-is (not a Meta payload) is acknowledged and ignored; all its entries in one post are
    each handled, duplicated wamids once."""
    services = services_of(wa)
    original = json.loads(path.read_bytes())
    body = combined(original)
    assistant = new_assistant(wa)
    for number in phone_number_ids(body):
        add_sender(wa, assistant, number)
    events = parse_payload(body)
    for e in {(e.phone_number_id, e.recipient_id, e.wamid) for e in events if isinstance(e, StatusUpdate)}:
        add_outbound(services, assistant, *e)
    _, messages_before, _ = counts(services)

    assert post_signed(public, None, raw=path.read_bytes()).status_code == 200
    assert counts(services)[1] == messages_before

    r = post_signed(public, body)
    assert r.status_code == 200
    inbound = {(e.phone_number_id, e.customer_id, e.wamid) for e in events if isinstance(e, InboundMessage)}
    with services.session() as s:
        assert all(p.processed and p.error is None for p in s.scalars(select(WebhookPost)))
        rows = s.execute(select(Conversation.sender, Conversation.customer_id, Message.channel_message_id)
                         .join(Message, Message.conversation_id == Conversation.id)
                         .where(Message.direction == "inbound")).all()
        assert sorted(rows) == sorted(inbound)
        if path.stem == "message_status":
            statuses = dict(s.execute(select(Message.channel_message_id, Message.status)
                                      .where(Message.direction == "outbound")).all())
            # sent, delivered, read, played, failed, sent again: played stays; the group message was read
            assert statuses == {"wamid.xyzxyz": "played", "<WHATSAPP_MESSAGE_ID>": "read"}


# ------------------------------------------------------------------------------- refusals


def test_cross_app_number_is_refused(wa, public):
    services = services_of(wa)
    assistant = new_assistant(wa)
    add_sender(wa, assistant, "111", SECRET_A)
    add_sender(wa, assistant, "222", SECRET_B)
    before = counts(services)
    assert post_signed(public, text_payload("222"), SECRET_A).status_code == 403
    assert post_signed(public, text_payload("999"), SECRET_A).status_code == 403  # a number nobody owns
    both = text_payload("111")
    both["entry"] += text_payload("222", wamid="wamid.T2")["entry"]
    assert post_signed(public, both, SECRET_A).status_code == 403
    assert counts(services) == before
    assert post_signed(public, text_payload("222"), SECRET_B).status_code == 200
    assert counts(services)[1] == before[1] + 1


def test_invalid_json_is_refused_after_the_signature(wa, public):
    services = services_of(wa)
    add_sender(wa, new_assistant(wa), "111")
    for raw in (b"{not json", b"[1, 2]", b"\xff\xfe"):
        assert post_signed(public, None, raw=raw).status_code == 400
        assert post_signed(public, None, SECRET_B, raw=raw).status_code == 403
    assert counts(services) == (0, 0, 0)


def test_a_post_that_fails_to_process_is_still_acknowledged(wa, public, monkeypatch):
    """The body is stored before the answer; a processing error is kept on the post for a retry."""
    import runtime.whatsapp.inbound as inbound

    services = services_of(wa)
    add_sender(wa, new_assistant(wa), "111")
    monkeypatch.setattr(inbound, "_apply", lambda run, event: 1 / 0)
    assert post_signed(public, text_payload("111")).status_code == 200
    with services.session() as s:
        post = s.scalars(select(WebhookPost)).one()
        assert (post.processed, post.error) == (False, "ZeroDivisionError: division by zero")


def test_no_sender_means_every_post_is_refused(wa, public):
    assert post_signed(public, text_payload("111")).status_code == 403
    assert counts(services_of(wa)) == (0, 0, 0)


def test_verify_signature_unit():
    raw = b'{"a":1}'
    assert verify_signature(raw, sign(raw, SECRET_B), [SECRET_A, SECRET_B]) == SECRET_B
    assert verify_signature(raw, sign(raw, SECRET_B).upper().replace("SHA256=", "sha256="), [SECRET_B]) == SECRET_B
    for header in (None, "", "sha256=", sign(raw, "other"), sign(raw, SECRET_A)[:-2], "md5=" + "0" * 64):
        assert verify_signature(raw, header, [SECRET_A, SECRET_B]) is None
    assert verify_signature(raw, sign(raw, SECRET_A), []) is None


def test_parse_never_raises_on_malformed_input():
    bodies = [
        {}, [], "x", {"object": "whatsapp_business_account"},
        {"object": "whatsapp_business_account", "entry": [None, {"changes": None}, {"changes": [None, {"value": 3}]}]},
        {"object": "whatsapp_business_account", "entry": [{"changes": [
            {"field": "messages", "value": {"metadata": {"phone_number_id": "1"}, "messages": [None, {"id": "w"}, {
                "id": "w2", "from": "9", "type": "location", "location": "?"}], "statuses": [{"id": "s"}, 7]}},
            {"field": "messages", "value": {"messages": [{"id": "w3"}]}},
            {"field": "account_update", "value": {}},
            {"field": "message_template_status_update", "value": {"event": "APPROVED"}},
            {"field": "smb_message_echoes", "value": {"metadata": {"phone_number_id": "1"}, "message_echoes": [
                None, {"id": "e1"}, {"id": "e2", "to": {"x": 1}}, {"to": "5511"},
                {"id": "e3", "to": "5511", "type": 4}]}},
            {"field": "smb_message_echoes", "value": {"message_echoes": [{"id": "e4", "to": "5511"}]}},
        ]}]},
    ]
    for body in bodies:
        events = parse_payload(body)
        assert events and all(isinstance(e, (InboundMessage, StatusUpdate, BusinessEcho, Unhandled)) for e in events)


def test_odd_values_in_a_status_cost_no_other_entry_of_the_post(wa, public):
    """Found by tests/runtime/whatsapp/test_fuzz_whatsapp.py: an error code of 1e999 (infinity once decoded) raised OverflowError
    out of the parser, and an object where Meta sends a string failed the post's transaction; either way the
    customer's message in the same post was lost."""
    services = services_of(wa)
    assistant = new_assistant(wa)
    add_sender(wa, assistant, "111")
    add_outbound(services, assistant, "111", "351910000001", "wamid.OUT1", status="sent")
    odd_values = [({"code": float("inf"), "title": "Rate limit hit"}, "utility"),
                  ({"code": 131026, "title": {"text": "Receiver is incapable"}}, ["utility"])]
    for n, (error, category) in enumerate(odd_values):
        body = text_payload("111", wamid=f"wamid.IN{n}")
        status = status_payload("111", "wamid.OUT1", "failed", error=error)
        status["entry"][0]["changes"][0]["value"]["statuses"][0]["pricing"] = {"billable": False, "category": category}
        body["entry"] += status["entry"]
        assert post_signed(public, body).status_code == 200
        assert len(message_by_wamid(services, f"wamid.IN{n}")) == 1
    with services.session() as s:
        assert [post.error for post in s.scalars(select(WebhookPost))] == [None, None]
    [out] = message_by_wamid(services, "wamid.OUT1", direction="outbound")
    assert (out.status, out.error_code, out.error_title, out.pricing_category) == ("failed", 131026, None, "utility")


# ------------------------------------------------------------------------------- redelivery


def test_duplicate_delivery_stores_one_message(wa, public):
    """Meta redelivers a message in posts that differ (batched, re-serialised): three posts, one message."""
    services = services_of(wa)
    add_sender(wa, new_assistant(wa), "111")
    for spaces in range(3):
        raw = json.dumps(text_payload("111")).encode() + b" " * spaces
        assert post_signed(public, None, raw=raw).status_code == 200
    assert len(message_by_wamid(services, "wamid.T1")) == 1
    with services.session() as s:
        assert s.scalar(select(func.count()).select_from(WebhookPost)) == 3


def test_queued_processing_schedules_turns(queued):
    """Through the real queue: the post is acknowledged at once, processed in the background, and each
    conversation with a new turn-worthy message gets its turn scheduled (a reaction gets none)."""
    client, scheduled = queued
    services = services_of(client)
    public = TestClient(client.app)
    add_sender(client, new_assistant(client), "111")
    reaction = text_payload("111", wamid="wamid.R1")
    reaction["entry"][0]["changes"][0]["value"]["messages"][0].update(
        type="reaction", reaction={"message_id": "wamid.T1", "emoji": "👍"})
    redelivery = json.dumps(text_payload("111")).encode() + b" "  # the same message in another post
    for body, raw in ((text_payload("111"), None), (None, redelivery), (reaction, None)):
        assert post_signed(public, body, raw=raw).status_code == 200
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with services.session() as s:
            done = s.scalar(select(func.count()).select_from(WebhookPost).where(WebhookPost.processed.is_(True)))
        if done == 3 and scheduled:
            break
        time.sleep(0.05)
    else:
        raise AssertionError("webhook posts were not processed by the queue")
    (msg,) = message_by_wamid(services, "wamid.T1")
    assert len(message_by_wamid(services, "wamid.R1")) == 1
    assert scheduled == [(msg.conversation_id, services.settings.whatsapp_debounce_s)]


def test_inline_processing_schedules_turns_like_the_queue(wa, public):
    """Without a webhook queue the post is processed before the answer, and its conversations' turns are
    scheduled just as the queued path schedules them (a reaction, a redelivery: none)."""
    services = services_of(wa)
    add_sender(wa, new_assistant(wa), "111")
    reaction = text_payload("111", wamid="wamid.R1")
    reaction["entry"][0]["changes"][0]["value"]["messages"][0].update(
        type="reaction", reaction={"message_id": "wamid.T1", "emoji": "👍"})
    redelivery = json.dumps(text_payload("111")).encode() + b" "
    for body, raw in ((text_payload("111"), None), (None, redelivery), (reaction, None)):
        assert post_signed(public, body, raw=raw).status_code == 200
    (msg,) = message_by_wamid(services, "wamid.T1")
    assert wa.scheduled == [(msg.conversation_id, services.settings.whatsapp_debounce_s)]


def test_process_post_returns_turn_conversations_once(services):
    """On SQLite and PostgreSQL: new turn-worthy messages name their conversation, redeliveries do not."""
    assistant = _assistant(services)
    _sender(services, assistant, "111")
    raw = json.dumps(text_payload("111")).encode()
    first = accept_post(services, raw, sign(raw, SECRET_A))
    second = accept_post(services, raw, sign(raw, SECRET_A))
    (conv_id,) = process_post(services, first.id)
    assert process_post(services, first.id) == []  # already processed
    assert process_post(services, second.id) == []
    reaction = text_payload("111", wamid="wamid.R1")
    reaction["entry"][0]["changes"][0]["value"]["messages"][0].update(
        type="reaction", reaction={"message_id": "wamid.T1", "emoji": "👍"})
    raw = json.dumps(reaction).encode()
    assert process_post(services, accept_post(services, raw, sign(raw, SECRET_A)).id) == []
    with services.session() as s:
        rows = list(s.scalars(select(Message).where(Message.conversation_id == conv_id).order_by(Message.received_at)))
        assert [(m.kind, m.status) for m in rows] == [("text", "received"), ("reaction", "logged")]


def test_a_post_is_stored_when_the_servers_connections_were_dropped(services, caplog):
    """On PostgreSQL the intake takes connections without pinging them first (one round trip less per post): when
    the server dropped them (a restart), the insert fails on a dead one, the pool is replaced and the post is
    stored on a new connection, once; the sender of the post never sees the loss."""
    import sqlalchemy as sa

    if services.engine.dialect.name != "postgresql":
        pytest.skip("SQLite has no server to drop connections")
    assert services.intake is not services.engine and not services.intake.pool._pre_ping
    assistant = _assistant(services)
    _sender(services, assistant, "111")
    raw = json.dumps(text_payload("111", wamid="wamid.C1")).encode()
    before = accept_post(services, raw, sign(raw, SECRET_A))  # a pooled intake connection now exists
    with services.engine.connect() as conn:  # the server ends every other session of this database
        dropped = conn.execute(sa.text("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                                       "WHERE datname = current_database() AND pid <> pg_backend_pid()")).scalar()
    assert dropped >= 1
    raw = json.dumps(text_payload("111", wamid="wamid.C2")).encode()
    with caplog.at_level("WARNING", logger="runtime.whatsapp.inbound"):
        after = accept_post(services, raw, sign(raw, SECRET_A))
    assert "connection was lost" in caplog.text  # the retry, not a lucky fresh connection, stored it
    assert not after.again and after.id != before.id
    with services.session() as s:
        assert s.scalar(select(func.count()).select_from(WebhookPost)) == 2


def test_concurrent_duplicate_posts_store_one_message(services):
    """Two workers processing two deliveries of the same message at once: one row, one turn."""
    assistant = _assistant(services)
    _sender(services, assistant, "111")
    first = json.dumps(text_payload("111", wamid="wamid.T0")).encode()
    process_post(services, accept_post(services, first, sign(first, SECRET_A)).id)  # the conversation exists
    bodies = [json.dumps(text_payload("111")).encode() + b" " * spaces for spaces in range(4)]  # four posts
    posts = [accept_post(services, raw, sign(raw, SECRET_A)).id for raw in bodies]
    results, errors, barrier = [], [], threading.Barrier(len(posts))

    def work(post_id):
        try:
            barrier.wait()
            results.append(process_post(services, post_id))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(p,)) for p in posts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(message_by_wamid(services, "wamid.T1")) == 1
    assert sum(len(r) for r in results) == 1


def test_unique_constraint_catches_a_missed_duplicate(services, monkeypatch):
    """When the look-up misses a duplicate (a race), the savepoint drops just that row: the rest of the
    post is still stored, in the same transaction."""
    import runtime.whatsapp.inbound as inbound

    _sender(services, _assistant(services), "111")
    raw = json.dumps(text_payload("111")).encode()
    (conv_id,) = process_post(services, accept_post(services, raw, sign(raw, SECRET_A)).id)
    monkeypatch.setattr(inbound, "_inbound_exists", lambda *args: False)
    body = text_payload("111")
    body["entry"] += text_payload("111", wamid="wamid.T2", body="And on holidays?")["entry"]
    raw = json.dumps(body).encode()
    post = accept_post(services, raw, sign(raw, SECRET_A))
    assert process_post(services, post.id) == [conv_id]
    assert len(message_by_wamid(services, "wamid.T1")) == 1
    assert [m.text for m in message_by_wamid(services, "wamid.T2")] == ["And on holidays?"]
    with services.session() as s:
        assert s.get(WebhookPost, post.id).processed


def test_a_failing_post_is_rolled_back_and_can_be_retried(services, monkeypatch):
    import runtime.whatsapp.inbound as inbound

    _sender(services, _assistant(services), "111")
    body = text_payload("111")
    body["entry"] += text_payload("111", wamid="wamid.T2", body="And on holidays?")["entry"]
    raw = json.dumps(body).encode()
    post = accept_post(services, raw, sign(raw, SECRET_A))
    store, calls = inbound._store_inbound, []

    def flaky(run, event):
        calls.append(event.wamid)
        if len(calls) == 2:
            raise RuntimeError("database hiccup")
        store(run, event)

    monkeypatch.setattr(inbound, "_store_inbound", flaky)
    with pytest.raises(RuntimeError):
        process_post(services, post.id)
    with services.session() as s:
        row = s.get(WebhookPost, post.id)
        assert (row.processed, row.error) == (False, "RuntimeError: database hiccup")
    assert counts(services) == (1, 0, 0)  # nothing half-written
    monkeypatch.setattr(inbound, "_store_inbound", store)
    assert len(process_post(services, post.id)) == 1
    assert counts(services) == (1, 2, 1)


def test_accept_post_errors(services):
    _sender(services, _assistant(services), "111")
    raw = json.dumps(text_payload("111")).encode()
    for header, code in ((None, 401), ("", 401), ("sha256=" + "1" * 64, 403), (sign(raw, SECRET_B), 403)):
        with pytest.raises(SignatureError) as info:
            accept_post(services, raw, header)
        assert info.value.status_code == code
    assert counts(services) == (0, 0, 0)


def test_apps_added_elsewhere_are_known_at_their_first_post(services):
    """The acknowledgement checks posts against the keys this process keeps; a sender added by another process
    (straight into the database here) is read before its first post is refused: a new app, and a new number of a
    known app. A sender deleted elsewhere is forgotten once the keys are older than their time to live."""
    assistant = _assistant(services)
    _sender(services, assistant, "111")
    raw = json.dumps(text_payload("111", wamid="wamid.K1")).encode()
    accept_post(services, raw, sign(raw, SECRET_A))  # the keys are kept from here
    _sender(services, assistant, "222", app_secret=SECRET_B)
    _sender(services, assistant, "333")
    for number, secret in (("222", SECRET_B), ("333", SECRET_A)):
        raw = json.dumps(text_payload(number, wamid=f"wamid.K{number}")).encode()
        assert not accept_post(services, raw, sign(raw, secret)).again
    with services.session() as s:
        s.delete(s.scalars(select(WhatsAppSender).where(WhatsAppSender.phone_number_id == "222")).one())
        s.commit()
    raw = json.dumps(text_payload("222", wamid="wamid.K4")).encode()
    accept_post(services, raw, sign(raw, SECRET_B))  # within the keys' time to live
    services.whatsapp_apps.ttl_s = 0
    raw = json.dumps(text_payload("222", wamid="wamid.K5")).encode()
    with pytest.raises(SignatureError):
        accept_post(services, raw, sign(raw, SECRET_B))


def test_a_sender_deleted_through_the_api_is_refused_at_once(wa, public):
    sender = add_sender(wa, new_assistant(wa), "444", SECRET_B)
    assert post_signed(public, text_payload("444", wamid="wamid.D1"), SECRET_B).status_code == 200
    assert wa.delete(f"/api/whatsapp/senders/{sender['id']}").status_code == 204
    assert post_signed(public, text_payload("444", wamid="wamid.D2"), SECRET_B).status_code == 403


# ------------------------------------------------------------------------------- statuses and window


def test_out_of_order_and_repeated_statuses_end_in_read(wa, public):
    services = services_of(wa)
    assistant = new_assistant(wa)
    add_sender(wa, assistant, "111")
    msg_id = add_outbound(services, assistant, "111", "351910000001", "wamid.O1")
    for status in ("read", "sent", "delivered", "delivered"):
        assert post_signed(public, status_payload("111", "wamid.O1", status)).status_code == 200
    with services.session() as s:
        msg = s.get(Message, msg_id)
        assert (msg.status, msg.billable, msg.pricing_category) == ("read", True, "utility")
        assert msg.sent_at is not None


def test_failure_is_terminal_unless_delivery_is_proven(wa, public):
    services = services_of(wa)
    assistant = new_assistant(wa)
    add_sender(wa, assistant, "111")
    error = {"code": 131026, "title": "Message undeliverable"}
    first = add_outbound(services, assistant, "111", "351910000001", "wamid.F1")
    second = add_outbound(services, assistant, "111", "351910000001", "wamid.F2")
    for wamid, status in (("wamid.F1", "sent"), ("wamid.F1", "failed"), ("wamid.F1", "sent"),
                          ("wamid.F2", "failed"), ("wamid.F2", "delivered")):
        post_signed(public, status_payload("111", wamid, status, error=error if status == "failed" else None))
    with services.session() as s:
        one, two = s.get(Message, first), s.get(Message, second)
        assert (one.status, one.error_code, one.error_title) == ("failed", 131026, "Message undeliverable")
        assert (two.status, two.error_code) == ("delivered", 131026)


def test_statuses_only_touch_the_signing_apps_messages(wa, public):
    services = services_of(wa)
    assistant = new_assistant(wa)
    add_sender(wa, assistant, "111", SECRET_A)
    add_sender(wa, assistant, "222", SECRET_B)
    other = add_outbound(services, assistant, "222", "351910000001", "wamid.B1")
    assert post_signed(public, status_payload("111", "wamid.B1", "read"), SECRET_A).status_code == 200
    with services.session() as s:
        assert s.get(Message, other).status == "pending"


def test_advances_unit():
    assert advances("pending", "sent") and advances("unknown", "delivered") and advances("sent", "failed")
    assert not advances("read", "delivered") and not advances("read", "read") and not advances("read", "failed")
    assert not advances("failed", "sent") and advances("failed", "read") and not advances("sent", "deleted")


def test_outside_window_error_closes_the_window(wa, public):
    services = services_of(wa)
    assistant = new_assistant(wa)
    add_sender(wa, assistant, "111")
    assert post_signed(public, text_payload("111", ts=1_700_000_000)).status_code == 200
    msg_id = add_outbound(services, assistant, "111", "351910000001", "wamid.W1")
    error = {"code": 131047, "title": "Re-engagement message", "message": "More than 24 hours have passed"}
    failed_at = 1_700_000_000 + 25 * 3600
    assert post_signed(public, status_payload("111", "wamid.W1", "failed", ts=failed_at, error=error)).status_code == 200
    with services.session() as s:
        msg = s.get(Message, msg_id)
        conv = s.get(Conversation, msg.conversation_id)
        assert (msg.status, msg.error_code) == ("failed", 131047)
        assert conv.window_closed_at == datetime.fromtimestamp(failed_at, tz=UTC)
        assert conv.window_closed_at > conv.last_inbound_at
    # the customer writes again: the window re-opens (last inbound after the closing)
    assert post_signed(public, text_payload("111", wamid="wamid.T9", ts=failed_at + 60)).status_code == 200
    with services.session() as s:
        conv = s.get(Conversation, msg.conversation_id)
        assert conv.last_inbound_at - conv.window_closed_at == timedelta(seconds=60)


def test_template_status_updates(wa, public):
    services = services_of(wa)
    assistant = new_assistant(wa)
    sender = add_sender(wa, assistant, "111")
    base = dict(sender_id=sender["id"], language="en_US", category="UTILITY", body="Hi {{1}}, your order {{2}} shipped.")
    by_id = wa.post("/api/whatsapp/templates", json={**base, "name": "order_shipped", "meta_template_id": "5551"}).json()
    by_name = wa.post("/api/whatsapp/templates", json={**base, "name": "welcome_back"}).json()

    def update(event, **value):
        return {"object": "whatsapp_business_account", "entry": [{"id": "waba-1", "time": 1_700_000_000, "changes": [
            {"field": "message_template_status_update", "value": {"event": event, **value}}]}]}

    assert post_signed(public, update("APPROVED", message_template_id=5551, message_template_name="order_shipped",
                                      message_template_language="en_US")).status_code == 200
    assert post_signed(public, update("REJECTED", message_template_id=7777, message_template_name="welcome_back",
                                      message_template_language="en_US", reason="INVALID_FORMAT")).status_code == 200
    with services.session() as s:
        assert s.get(WhatsAppTemplate, by_id["id"]).status == "APPROVED"
        t = s.get(WhatsAppTemplate, by_name["id"])
        assert (t.status, t.meta_template_id) == ("REJECTED", "7777")
    listed = {t["name"]: t["status"] for t in wa.get("/api/whatsapp/templates", params={"sender_id": sender["id"]}).json()}
    assert listed == {"order_shipped": "APPROVED", "welcome_back": "REJECTED"}


# ------------------------------------------------------------------------------- verification


def test_verification_handshake(wa, public):
    params = {"hub.mode": "subscribe", "hub.verify_token": VERIFY_TOKEN, "hub.challenge": "1158201444"}
    assert public.get("/webhooks/whatsapp", params=params).status_code == 403  # no sender yet
    add_sender(wa, new_assistant(wa), "111")
    r = public.get("/webhooks/whatsapp", params=params)
    assert (r.status_code, r.text) == (200, "1158201444") and r.headers["content-type"].startswith("text/plain")
    for wrong in ({"hub.verify_token": "nope"}, {"hub.mode": "unsubscribe"}, {"hub.challenge": None}):
        query = {k: v for k, v in {**params, **wrong}.items() if v is not None}
        assert public.get("/webhooks/whatsapp", params=query).status_code == 403


# ------------------------------------------------------------------------------- admin API


def test_senders_api_never_returns_secrets(wa, caplog):
    caplog.set_level("DEBUG")
    secrets = (ACCESS_TOKEN, SECRET_A, VERIFY_TOKEN)
    assistant = new_assistant(wa, "clinic")
    created = add_sender(wa, "clinic", "111")  # by name
    assert created["assistant_id"] == assistant
    assert (created["has_access_token"], created["has_app_secret"], created["has_verify_token"]) == (True, True, True)
    responses = [
        wa.post("/api/whatsapp/senders", json={"assistant_id": assistant, "phone_number_id": "111",
                                               "access_token": ACCESS_TOKEN, "app_secret": SECRET_A,
                                               "verify_token": VERIFY_TOKEN}),
        wa.post("/api/whatsapp/senders", json={"assistant_id": "nobody", "phone_number_id": "112",
                                               "access_token": ACCESS_TOKEN, "app_secret": SECRET_A,
                                               "verify_token": VERIFY_TOKEN}),
        wa.post("/api/whatsapp/senders", json={"assistant_id": assistant, "access_token": ACCESS_TOKEN,
                                               "app_secret": SECRET_A, "verify_token": VERIFY_TOKEN}),
        wa.post("/api/whatsapp/senders", json={"assistant_id": assistant, "phone_number_id": "113", "app_secret": SECRET_A,
                                               "access_token": ACCESS_TOKEN, "verify_token": VERIFY_TOKEN,
                                               "graph_version": "latest"}),
        wa.get("/api/whatsapp/senders"),
        wa.get("/api/whatsapp/senders", params={"assistant_id": "clinic"}),
    ]
    assert [r.status_code for r in responses] == [409, 404, 422, 422, 200, 200]
    assert [s["id"] for s in responses[-1].json()] == [created["id"]]
    for r in responses:
        assert not any(secret in r.text for secret in secrets), r.text
    assert not any(secret in json.dumps(created) for secret in secrets)
    assert not any(secret in caplog.text for secret in secrets)
    assert TestClient(wa.app).get("/api/whatsapp/senders").status_code == 401

    assert wa.delete(f"/api/whatsapp/senders/{created['id']}").status_code == 204
    assert wa.delete(f"/api/whatsapp/senders/{created['id']}").status_code == 404
    assert wa.get("/api/whatsapp/senders").json() == []


def test_templates_api(wa):
    sender = add_sender(wa, new_assistant(wa), "111")
    body = dict(sender_id=sender["id"], name="appointment_reminder", language="pt_BR", category="UTILITY",
                body="Olá {{1}}, a sua consulta é amanhã às {{2}}.", buttons=[{"type": "QUICK_REPLY", "text": "Confirmar"}])
    r = wa.post("/api/whatsapp/templates", json=body)
    assert r.status_code == 201, r.text
    assert (r.json()["status"], r.json()["parameters"], r.json()["buttons"]) == ("PENDING", 2, body["buttons"])
    assert wa.post("/api/whatsapp/templates", json=body).status_code == 409
    assert wa.post("/api/whatsapp/templates", json={**body, "sender_id": "nope"}).status_code == 404
    assert wa.post("/api/whatsapp/templates", json={**body, "name": "x", "body": "Hi {{2}}"}).status_code == 422
    assert wa.post("/api/whatsapp/templates", json={**body, "name": "Bad Name"}).status_code == 422
    assert wa.post("/api/whatsapp/templates", json={**body, "name": "y", "category": "OTHER"}).status_code == 422
    assert [t["name"] for t in wa.get("/api/whatsapp/templates").json()] == ["appointment_reminder"]
    assert wa.delete(f"/api/whatsapp/senders/{sender['id']}").status_code == 204
    assert wa.get("/api/whatsapp/templates").json() == []


# ------------------------------------------------------------------------------- hostile inputs


def template_event(waba_id: str, event: str, at: int = 1_700_000_000, **value) -> dict:
    return {"object": "whatsapp_business_account", "entry": [{"id": waba_id, "time": at, "changes": [
        {"field": "message_template_status_update", "value": {"event": event, **value}}]}]}


def template_statuses(services) -> dict[str, str]:
    with services.session() as s:
        return {t.name: t.status for t in s.scalars(select(WhatsAppTemplate))}


def test_deeply_nested_json_is_a_400_and_is_not_stored(wa, public):
    """Signed bodies nested 100,000 deep (json.loads: RecursionError) or just past MAX_DEPTH (json.loads
    parses it): 400, nothing stored. Brackets inside strings do not count."""
    services = services_of(wa)
    add_sender(wa, new_assistant(wa), "111")
    nested = text_payload("111")
    inner = nested["entry"][0]["changes"][0]["value"]["messages"][0]  # 8 levels down
    for _ in range(MAX_DEPTH):
        inner = inner.setdefault("x", {})
    for raw in (b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
                json.dumps(nested).encode()):
        r = post_signed(public, None, raw=raw)
        assert (r.status_code, r.json()["detail"]) == (400, f"JSON nested deeper than {MAX_DEPTH} levels")
    assert counts(services) == (0, 0, 0)
    brackets = "[{" * 200 + " is this ok?"
    assert post_signed(public, text_payload("111", body=brackets)).status_code == 200
    assert [m.text for m in message_by_wamid(services, "wamid.T1")] == [brackets]


def test_template_status_applies_only_to_the_signing_apps_business_account(wa, public):
    """App A cannot change app B's templates: not by B's template id under A's account (acknowledged, no
    effect), not by naming B's account or none (403, not stored)."""
    services = services_of(wa)
    assistant = new_assistant(wa)
    mine = add_sender(wa, assistant, "111", SECRET_A, waba_id="waba-A")
    theirs = add_sender(wa, assistant, "222", SECRET_B, waba_id="waba-B")
    base = dict(language="en_US", category="UTILITY", body="Hi {{1}}", status="APPROVED")
    for sender, name, template_id in ((mine, "own_receipt", "1001"), (theirs, "their_receipt", "9001"),
                                      (theirs, "their_promo", None)):
        r = wa.post("/api/whatsapp/templates", json={**base, "sender_id": sender["id"], "name": name,
                                                      "meta_template_id": template_id})
        assert r.status_code == 201, r.text
    assert post_signed(public, template_event("waba-A", "DISABLED", message_template_id=9001), SECRET_A).status_code == 200
    before = counts(services)
    for waba_id in ("waba-B", ""):
        by_name = template_event(waba_id, "REJECTED", message_template_name="their_promo", message_template_language="en_US")
        assert post_signed(public, by_name, SECRET_A).status_code == 403
    assert counts(services) == before
    assert template_statuses(services) == {"own_receipt": "APPROVED", "their_receipt": "APPROVED", "their_promo": "APPROVED"}
    assert post_signed(public, template_event("waba-A", "PAUSED", message_template_id=1001), SECRET_A).status_code == 200
    assert post_signed(public, template_event("waba-B", "DISABLED", message_template_id=9001), SECRET_B).status_code == 200
    assert template_statuses(services) == {"own_receipt": "PAUSED", "their_receipt": "DISABLED", "their_promo": "APPROVED"}


def test_a_late_template_event_does_not_move_the_status_back(wa, public):
    """Meta's entry time orders template events: one older than the status it would replace is ignored."""
    services = services_of(wa)
    sender = add_sender(wa, new_assistant(wa), "111")
    r = wa.post("/api/whatsapp/templates", json=dict(sender_id=sender["id"], name="order_shipped", language="en_US",
                                                     category="UTILITY", body="Shipped: {{1}}", meta_template_id="5551"))
    assert r.status_code == 201, r.text
    seen = []
    for event, at in (("PAUSED", 1_700_000_300), ("APPROVED", 1_700_000_200), ("APPROVED", 1_700_000_400),
                      ("REJECTED", 1_700_000_100)):
        assert post_signed(public, template_event("waba-1", event, at, message_template_id=5551)).status_code == 200
        seen.append(template_statuses(services)["order_shipped"])
    assert seen == ["PAUSED", "PAUSED", "APPROVED", "APPROVED"]
    with services.session() as s:
        assert s.scalars(select(WhatsAppTemplate)).one().status_at == datetime.fromtimestamp(1_700_000_400, tz=UTC)


def test_a_replayed_signed_body_is_stored_once(wa, public, monkeypatch):
    """The same signed bytes again (Meta's redelivery, or anyone replaying a captured post): acknowledged,
    not stored twice; a replay of a post that failed to process retries it."""
    services = services_of(wa)
    add_sender(wa, new_assistant(wa), "111")
    raw = json.dumps(text_payload("111")).encode()
    apply = inbound._apply
    monkeypatch.setattr(inbound, "_apply", lambda run, event: 1 / 0)
    assert post_signed(public, None, raw=raw).status_code == 200
    monkeypatch.setattr(inbound, "_apply", apply)
    for _ in range(3):
        assert post_signed(public, None, raw=raw).status_code == 200
    with services.session() as s:
        post = s.scalars(select(WebhookPost)).one()
        assert (post.processed, post.error) == (True, None)
    assert len(message_by_wamid(services, "wamid.T1")) == 1


def test_concurrent_replays_store_one_post(services):
    """On SQLite and PostgreSQL: four requests with the same body at once store one post (the unique hash)."""
    _sender(services, _assistant(services), "111")
    raw = json.dumps(text_payload("111")).encode()
    ids, errors, barrier = [], [], threading.Barrier(4)

    def accept():
        try:
            barrier.wait()
            ids.append(accept_post(services, raw, sign(raw, SECRET_A)).id)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=accept) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(ids) == 4 and len(set(ids)) == 1
    assert counts(services) == (1, 0, 0)


def test_webhook_hardening_migration_goes_up_and_down(database_url):
    """0008: the body hash (unique) and the template's status time exist at head, match the models, and go
    away going down to 0007."""
    import sqlalchemy as sa
    from alembic import command
    from alembic.autogenerate import compare_metadata
    from alembic.config import Config
    from alembic.migration import MigrationContext

    from atende.migrate import MIGRATIONS_DIR, migrate
    from core.db import Base, make_engine

    def columns(table):
        return {c["name"] for c in sa.inspect(engine).get_columns(table)}

    engine = make_engine(database_url)
    migrate(engine)
    indexes = {i["name"]: i["unique"] for i in sa.inspect(engine).get_indexes("whatsapp_webhook_posts")}
    assert indexes.get("uq_whatsapp_webhook_posts_body_sha256")
    with engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert [d for d in diffs if "whatsapp_webhook_posts" in str(d) or "whatsapp_templates" in str(d)] == []
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0007")
    assert "body_sha256" not in columns("whatsapp_webhook_posts") and "status_at" not in columns("whatsapp_templates")
    migrate(engine)
    assert "body_sha256" in columns("whatsapp_webhook_posts") and "status_at" in columns("whatsapp_templates")
    engine.dispose()


# ------------------------------------------------------------------------------- services-level helpers


def _assistant(services) -> str:
    with services.session() as s:
        a = registry.create_assistant(s, name="shop", embedding_model="all-minilm-l6-v2", chunk_size=256, chunk_overlap=32)
        s.commit()
        return a.id


def _sender(services, assistant_id: str, phone_number_id: str, app_secret: str = SECRET_A) -> str:
    with services.session() as s:
        sender = WhatsAppSender(id=new_id(), assistant_id=assistant_id, phone_number_id=phone_number_id,
                                access_token=ACCESS_TOKEN, app_secret=app_secret, verify_token=VERIFY_TOKEN)
        s.add(sender)
        s.commit()
        return sender.id


# ------------------------------------------------------------------- echoes from the WhatsApp Business app


def test_echoes_are_parsed_as_metas_reference_gives_them():
    """The payload of Meta's smb_message_echoes webhook reference: a text, and an image with a caption; ``to`` as a
    written phone number becomes the wa_id-like digits our conversations key customers by."""
    body = echo_body("106540352242922", "+1 650-555-1234", "wamid.E1", "Here's the info you requested!",
                     timestamp=1739321024, display_phone_number="15550783881")
    body["entry"][0]["changes"][0]["value"]["message_echoes"].append({
        "from": "15550783881", "to": "16505551234", "id": "wamid.E2", "timestamp": "1739321030", "type": "image",
        "image": {"id": "media-1", "caption": "Our price list"}})
    first, second = parse_payload(body)
    assert first == BusinessEcho(phone_number_id="106540352242922", wamid="wamid.E1", customer_id="16505551234",
                                 timestamp=datetime.fromtimestamp(1739321024, tz=UTC), kind="text",
                                 text="Here's the info you requested!", payload={})
    assert (second.customer_id, second.kind, second.text) == (
        "16505551234", "image", "[an image sent from the WhatsApp Business app: Our price list]")
    assert phone_number_ids(body) == {"106540352242922"}  # the ownership check covers echoes too


def test_an_echo_is_an_operator_message_that_takes_the_conversation_once(wa, public):
    """Stored as the operator's (no part: never sent by us), the conversation with_human and the change logged;
    no turn, the window untouched. The same echo in another post, and a status for its wamid, add nothing; an
    echo of a message we sent through the API is not stored again."""
    services = services_of(wa)
    assistant = new_assistant(wa)
    add_sender(wa, assistant, "111")
    assert post_signed(public, text_payload("111", wa_id="351910000001")).status_code == 200
    wa.scheduled.clear()
    body = echo_body("111", "+351 910 000 001", "wamid.ECHO1", "Olá, aqui é a Maria da loja.")
    for spaces in range(2):  # redelivered in a post that differs
        assert post_signed(public, None, raw=json.dumps(body).encode() + b" " * spaces).status_code == 200
    assert post_signed(public, status_payload("111", "wamid.ECHO1", "read")).status_code == 200
    (echo,) = message_by_wamid(services, "wamid.ECHO1", direction="outbound")
    assert (echo.kind, echo.status, echo.text) == ("operator", "sent", "Olá, aqui é a Maria da loja.")
    assert echo.payload["source"] == "whatsapp_business_app" and echo.turn_id is None
    with services.session() as s:
        assert s.scalar(select(func.count()).select_from(MessagePart).where(MessagePart.message_id == echo.id)) == 0
        conv = s.get(Conversation, echo.conversation_id)
        assert conv.customer_id == "351910000001" and conv.handoff_state == "with_human"
        assert conv.last_inbound_at == datetime.fromtimestamp(1_700_000_000, tz=UTC)  # the customer's, not the echo's
        log = [(c.from_state, c.to_state, c.actor, c.reason) for c in changes(s, [conv.id])[conv.id]]
        assert s.scalar(select(func.count()).select_from(Message).where(Message.conversation_id == conv.id)) == 2
    assert log == [("ai", "with_human", "operator", BUSINESS_APP_REPLY)]
    assert wa.scheduled == []

    sent = add_outbound(services, assistant, "111", "351910000001", "wamid.OURS", status="sent")
    assert post_signed(public, echo_body("111", "351910000001", "wamid.OURS", "Hello!")).status_code == 200
    assert [m.id for m in message_by_wamid(services, "wamid.OURS", direction="outbound")] == [sent]
