"""Media customers send on WhatsApp, over real HTTP: the Graph API stand-in serves the files, the transcription
stand-in transcribes voice notes; real SQLite and PostgreSQL, the real blob store, the real turn engine."""
from __future__ import annotations

import hashlib
import json
import logging
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy import select

from atende.migrate import MIGRATIONS_DIR, migrate
from core.db import make_engine
from runtime.models import Message
from runtime.recovery import owed_work, recover
from runtime.whatsapp.inbound import accept_post
from runtime.whatsapp.media import awaited, cap_text, process_media
from runtime.whatsapp.models import MessageMedia, WhatsAppSender
from runtime.whatsapp.standin import GraphStandIn, sign
from tests.conftest import make_services, requires_shared, shared_doc
from tests.factories import add_assistant, use_scripted_model
from tests.transcription_standin import TranscriptionStandIn

SECRET, PHONE_ID, CUSTOMER = "app-secret-media", "106540352242999", "5511987650000"
# an Ogg page header with an Opus head: what WhatsApp's voice notes start with (the stand-in does not decode it)
VOICE = b"OggS\x00\x02" + b"\x00" * 20 + b"\x01\x13OpusHead\x01\x01" + bytes(range(256)) * 8
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + bytes(200)


@pytest.fixture
def media_wa(tmp_path, embedders, database_url):
    """(services, graph stand-in, transcription stand-in, scripted model) on the inline queue."""
    with GraphStandIn() as graph, TranscriptionStandIn() as speech:
        services = make_services(tmp_path / "home", embedders, database_url, whatsapp_graph_url=graph.base_url,
                                 media_retry_delay_s=0, transcription_url=speech.base_url,
                                 transcription_model="whisper-test", transcription_api_key="speech-key")
        model = use_scripted_model(services)
        aid = add_assistant(services, "loja", embedding_model="all-minilm-l6-v2")
        with services.session() as session:
            session.add(WhatsAppSender(assistant_id=aid, phone_number_id=PHONE_ID, access_token="token-media",
                                       app_secret=SECRET, verify_token="v"))
            session.commit()
        yield services, graph, speech, model
        services.close()
        services.engine.dispose()


def media_body(wamid: str, kind: str, media_id: str, *, mime: str, voice: bool = False, caption: str | None = None,
               filename: str | None = None) -> dict:
    obj: dict = {"id": media_id, "mime_type": mime}
    if voice:
        obj["voice"] = True
    if caption:
        obj["caption"] = caption
    if filename:
        obj["filename"] = filename
    message = {"from": CUSTOMER, "id": wamid, "timestamp": str(int(datetime.now(UTC).timestamp())), "type": kind,
               kind: obj}
    return _envelope(message)


def text_body(wamid: str, text: str) -> dict:
    return _envelope({"from": CUSTOMER, "id": wamid, "timestamp": str(int(datetime.now(UTC).timestamp())),
                      "type": "text", "text": {"body": text}})


def _envelope(message: dict) -> dict:
    value = {"messaging_product": "whatsapp",
             "metadata": {"display_phone_number": "15550001111", "phone_number_id": PHONE_ID},
             "contacts": [{"profile": {"name": "Ana"}, "wa_id": CUSTOMER}], "messages": [message]}
    return {"object": "whatsapp_business_account", "entry": [{"id": "0", "changes": [{"value": value,
                                                                                       "field": "messages"}]}]}


def deliver(services, body: dict) -> None:
    """Meta's post, accepted as the webhook route does and processed by the services' queue."""
    raw = json.dumps(body).encode()
    post = accept_post(services, raw, sign(SECRET, raw))
    services.queue.enqueue_webhook(post.id)


def media_rows(services) -> list[MessageMedia]:
    with services.session() as session:
        return list(session.scalars(select(MessageMedia).order_by(MessageMedia.created_at)))


def info_requests(graph, media_id: str) -> list:
    return [path for path, _ in graph.media.requests if path.endswith(f"/{media_id}")]


def last_user_text(model) -> str:
    return [m for m in model.requests[-1].messages if m["role"] == "user"][-1]["content"]


def test_a_voice_note_is_fetched_stored_transcribed_and_answered(media_wa):
    services, graph, speech, model = media_wa
    graph.media.add("m-voice", VOICE, "audio/ogg; codecs=opus")
    speech.add(VOICE, "Qual é o horário de funcionamento no sábado?")
    model.enqueue("Abrimos às 9h no sábado.")
    deliver(services, media_body("wamid.v1", "audio", "m-voice", mime="audio/ogg; codecs=opus", voice=True))
    [row] = media_rows(services)
    assert (row.status, row.kind, row.attempts, row.mime_type) == ("stored", "voice", 1, "audio/ogg")
    assert row.sha256 == hashlib.sha256(VOICE).hexdigest() and row.size == len(VOICE)
    assert services.blobs.get(row.sha256) == VOICE
    assert row.transcript_text == "Qual é o horário de funcionamento no sábado?"
    assert (row.transcript_language, row.transcript_engine) == ("pt", "openai-compatible:whisper-test")
    # the Graph API was asked with the sender's token, on both endpoints
    assert [h["Authorization"] for _, h in graph.media.requests] == ["Bearer token-media"] * 2
    request = speech.requests[0]
    assert request["fields"] == {"model": "whisper-test", "response_format": "verbose_json"}
    assert request["file"] == VOICE and request["headers"]["Authorization"] == "Bearer speech-key"
    assert "horário de funcionamento no sábado" in last_user_text(model)
    assert graph.sent[0]["json"]["text"]["body"] == "Abrimos às 9h no sábado."
    with services.session() as session:
        inbound = session.scalars(select(Message).where(Message.direction == "inbound")).one()
        assert inbound.text == row.transcript_text and inbound.status == "answered"


def test_a_download_failing_twice_then_succeeding_asks_for_a_fresh_url_each_time(media_wa):
    services, graph, speech, model = media_wa
    graph.media.add("m-img", PNG, "image/png", fail_info=[500], fail_download=[503])
    model.enqueue("Recebi a sua imagem.")
    deliver(services, media_body("wamid.i1", "image", "m-img", mime="image/png", caption="meu pedido"))
    [row] = media_rows(services)
    assert (row.status, row.attempts, row.mime_type) == ("stored", 3, "image/png")
    assert len(info_requests(graph, "m-img")) == 3  # a new URL for every attempt (they expire)
    downloads = [p for p, _ in graph.media.requests if p.startswith("/media-download/")]
    assert len(downloads) == 2 and len(set(downloads)) == 2
    assert "meu pedido" in last_user_text(model)  # the caption is the text


def test_a_download_failing_always_leaves_the_turn_answering_the_description(media_wa, caplog):
    services, graph, speech, model = media_wa
    graph.media.add("m-down", VOICE, "audio/ogg", fail_info=[500] * 10)
    model.enqueue("Não consegui ouvir o seu áudio, pode escrever?")
    with caplog.at_level(logging.WARNING, logger="runtime.whatsapp.media"):
        deliver(services, media_body("wamid.d1", "audio", "m-down", mime="audio/ogg", voice=True))
    [row] = media_rows(services)
    attempts = services.settings.media_attempts
    assert (row.status, row.attempts) == ("failed", attempts) and "HTTP 500" in row.last_error
    assert len(info_requests(graph, "m-down")) == attempts and speech.requests == []
    assert "voice message" in last_user_text(model)
    assert graph.sent and "turn goes on with its description" in caplog.text and "m-down" in caplog.text
    assert "token-media" not in caplog.text + row.last_error


@pytest.mark.parametrize("setup, status, error", [
    (dict(data=VOICE * 2000, mime_type="audio/ogg"), "too_large", "over"),  # truthful, over a 64 KB cap
    (dict(data=VOICE * 2000, mime_type="audio/ogg", declared_size=100, chunked=True), "too_large", "over"),  # lying
    (dict(data=b"<html><script>alert(1)</script></html>", mime_type="image/png"), "rejected", "HTML"),
    (dict(data=b"%PDF-1.4 not a voice", mime_type="audio/ogg"), "rejected", "application/pdf"),
    (dict(data=VOICE, mime_type="audio/ogg", sha256="0" * 64), "failed", "sha256"),
])
def test_too_large_wrong_content_and_corrupt_files_are_never_stored(tmp_path, embedders, setup, status, error):
    with GraphStandIn() as graph:
        services = make_services(tmp_path / "home", embedders, whatsapp_graph_url=graph.base_url,
                                 media_retry_delay_s=0, transcription_url="http://127.0.0.1:9/v1",
                                 media_max_mb={"audio": 0.0625, "voice": 0.0625, "image": 5})
        use_scripted_model(services).enqueue("ok")
        aid = add_assistant(services, "loja", embedding_model="all-minilm-l6-v2")
        with services.session() as session:
            session.add(WhatsAppSender(assistant_id=aid, phone_number_id=PHONE_ID, access_token="t",
                                       app_secret=SECRET, verify_token="v"))
            session.commit()
        data = setup.pop("data")
        graph.media.add("m-bad", data, **setup)
        kind = "image" if setup["mime_type"].startswith("image") else "audio"
        deliver(services, media_body("wamid.b1", kind, "m-bad", mime=setup["mime_type"]))
        [row] = media_rows(services)
        assert row.status == status and error in row.last_error and row.sha256 is None
        assert not (services.settings.home / "blobs").exists() or not any(
            p.is_file() and p.read_bytes() == data for p in (services.settings.home).rglob("*"))
        services.close()
        services.engine.dispose()


def test_a_redelivered_webhook_does_not_download_twice(media_wa):
    services, graph, speech, model = media_wa
    graph.media.add("m-once", PNG, "image/png")
    model.enqueue("Recebido.")
    body = media_body("wamid.o1", "image", "m-once", mime="image/png")
    deliver(services, body)
    body["entry"][0]["changes"][0]["value"]["contacts"][0]["profile"]["name"] = "Ana B."  # another post, same wamid
    deliver(services, body)
    assert len(media_rows(services)) == 1 and len(info_requests(graph, "m-once")) == 1


def test_transcription_retried_when_retryable_and_recorded_when_final(media_wa):
    services, graph, speech, model = media_wa
    graph.media.add("m-v2", VOICE, "audio/ogg")
    speech.add(VOICE, "Quero remarcar", "pt")
    speech.fail_next(503)
    model.enqueue("Claro.", "Pode escrever?")
    deliver(services, media_body("wamid.t1", "audio", "m-v2", mime="audio/ogg", voice=True))
    [row] = media_rows(services)
    assert row.transcript_text == "Quero remarcar" and row.transcript_attempts == 2
    other = VOICE + b"unknown"
    graph.media.add("m-v3", other, "audio/ogg")  # the stand-in cannot decode it: HTTP 400, final
    deliver(services, media_body("wamid.t2", "audio", "m-v3", mime="audio/ogg", voice=True))
    row = media_rows(services)[1]
    assert row.status == "stored" and row.transcribed_at is None and row.transcript_attempts == 1
    assert "HTTP 400" in row.transcript_error and "voice message" in last_user_text(model)


def test_recovery_queues_a_download_a_dead_worker_left(media_wa):
    services, graph, speech, model = media_wa
    graph.media.add("m-rec", PNG, "image/png")
    model.enqueue("Recebido.")
    deliver(services, media_body("wamid.r1", "image", "m-rec", mime="image/png"))
    with services.session() as session:  # as if a worker took it, then died
        row = session.scalars(select(MessageMedia)).one()
        row.status, row.sha256, row.claimed_until = "pending", None, datetime.now(UTC) + timedelta(minutes=5)
        row.created_at = datetime.now(UTC) - timedelta(minutes=10)
        session.commit()
        assert awaited(session, [row.message_id])
    assert owed_work(services).media == []  # its claim is live
    assert process_media(services, row.id) is None
    services.clock = lambda: datetime.now(UTC) + timedelta(minutes=6)
    assert recover(services).media == [row.id]
    assert media_rows(services)[0].status == "stored" and media_rows(services)[0].attempts == 2


def test_cap_text_cuts_at_a_paragraph_then_a_sentence():
    text = "First paragraph here.\n\nSecond one, longer. It goes on and on."
    assert cap_text(text, 1000) == text
    assert cap_text(text, 30) == "First paragraph here."
    assert cap_text("One sentence. Two sentence. Three", 30) == "One sentence. Two sentence."


def test_migration_0020_goes_up_and_down(database_url):
    engine = make_engine(database_url)
    migrate(engine)
    assert "message_media" in sa.inspect(engine).get_table_names()
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from core.db import Base
    with engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert [d for d in diffs if "message_media" in str(d)] == []
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0019_audit_log")
    assert "message_media" not in sa.inspect(engine).get_table_names()
    assert "messages" in sa.inspect(engine).get_table_names()
    migrate(engine)
    assert "message_media" in sa.inspect(engine).get_table_names()
    engine.dispose()


@pytest.fixture
def app_wa(tmp_path, embedders, database_url):
    """The real app on its huey queue (SQLite file; the database SQLite or PostgreSQL), with the Graph and
    transcription stand-ins."""
    from fastapi.testclient import TestClient

    from atende.app import create_app
    from tests.conftest import ADMIN_TOKEN

    with GraphStandIn() as graph, TranscriptionStandIn() as speech:
        services = make_services(tmp_path / "home", embedders, database_url, whatsapp_graph_url=graph.base_url,
                                 whatsapp_debounce_s=0.4, media_poll_s=0.2, media_wait_max_s=60.0, workers=2,
                                 media_retry_delay_s=0, transcription_url=speech.base_url)
        model = use_scripted_model(services)
        with TestClient(create_app(services=services)) as client:
            client.headers["Authorization"] = f"Bearer {ADMIN_TOKEN}"
            client.post("/api/assistants", json={"name": "loja"}).raise_for_status()
            client.post("/api/whatsapp/senders", json={
                "assistant_id": "loja", "phone_number_id": PHONE_ID, "display_phone_number": "15550001111",
                "access_token": "token-app", "app_secret": SECRET, "verify_token": "verify-me"}).raise_for_status()
            yield client, services, graph, speech, model
        services.engine.dispose()


def post_webhook(client, body: dict) -> None:
    raw = json.dumps(body).encode()
    r = client.post("/webhooks/whatsapp", content=raw, headers={"X-Hub-Signature-256": sign(SECRET, raw),
                                                                "Content-Type": "application/json"})
    assert r.status_code == 200, r.text


def test_a_voice_note_and_a_text_in_one_burst_get_one_turn_answering_both(app_wa):
    """The transcription is still running when the text's debounce is over: the turn waits for it."""
    import time

    from tests.factories import wait_until

    client, services, graph, speech, model = app_wa
    graph.media.add("m-burst", VOICE, "audio/ogg")
    speech.add(VOICE, "Vocês entregam em Campinas?")
    speech.hold()
    model.enqueue("Sim, entregamos em Campinas, e o frete é grátis acima de R$ 100.")
    post_webhook(client, media_body("wamid.b1", "audio", "m-burst", mime="audio/ogg", voice=True))
    post_webhook(client, text_body("wamid.b2", "e qual o valor do frete?"))
    wait_until(lambda: speech.waiting, what="the transcription to start")
    time.sleep(1.0)  # well past the 0.4 s debounce: a turn not waiting for the voice note would have run
    assert graph.sent == [] and model.requests == []
    speech.release()
    wait_until(lambda: graph.sent, what="the reply")
    time.sleep(0.8)  # time for a second (wrong) turn
    assert len(graph.sent) == 1 and len(model.requests) == 1
    asked = last_user_text(model)
    assert "Vocês entregam em Campinas?" in asked and "e qual o valor do frete?" in asked
    with services.session() as session:
        statuses = set(session.scalars(select(Message.status).where(Message.direction == "inbound")))
    assert statuses == {"answered"}


def test_a_stuck_transcription_does_not_leave_the_customer_unanswered(app_wa):
    """The transcription holds one worker; the other answers after ``media_wait_max_s`` with the description."""
    from tests.factories import wait_until

    client, services, graph, speech, model = app_wa
    services.settings.media_wait_max_s = 2.0
    graph.media.add("m-stuck", VOICE, "audio/ogg")
    speech.add(VOICE, "Olá")
    speech.hold()
    model.enqueue("Não consegui ouvir o seu áudio; pode escrever?")
    post_webhook(client, media_body("wamid.s1", "audio", "m-stuck", mime="audio/ogg", voice=True))
    wait_until(lambda: graph.sent, timeout=20, what="the reply after media_wait_max_s")
    assert "voice message" in last_user_text(model)
    speech.release()
    wait_until(lambda: media_rows(services)[0].transcribed_at, what="the late transcript")
    with services.session() as session:  # the answered message keeps what its turn saw
        assert "voice message" in session.scalars(select(Message.text).where(Message.direction == "inbound")).one()


def test_the_media_route_serves_safely_and_only_to_admins(media_wa):
    from fastapi.testclient import TestClient

    from api.app import build_app
    from tests.conftest import ADMIN_TOKEN

    services, graph, speech, model = media_wa
    graph.media.add("m-pic", PNG, "image/png")
    graph.media.add("m-note", VOICE, "audio/ogg")
    graph.media.add("m-doc", b"<html><script>alert(1)</script></html>", "text/html")
    graph.media.add("m-lie", b"<svg onload=alert(1)>", "image/png")
    speech.add(VOICE, "Bom dia, quero saber o preço")
    model.enqueue("a", "b", "c", "d")
    deliver(services, media_body("wamid.p1", "image", "m-pic", mime="image/png"))
    deliver(services, media_body("wamid.p2", "audio", "m-note", mime="audio/ogg", voice=True))
    deliver(services, media_body("wamid.p3", "document", "m-doc", mime="text/html", filename='x"; evil.html'))
    deliver(services, media_body("wamid.p4", "image", "m-lie", mime="image/png"))
    rows = {r.media_id: r for r in media_rows(services)}
    client = TestClient(build_app(services, "test"))
    url = "/api/messages/{}/media".format
    assert client.get(url(rows["m-pic"].message_id)).status_code == 401
    client.headers["Authorization"] = f"Bearer {ADMIN_TOKEN}"
    pic = client.get(url(rows["m-pic"].message_id))
    assert pic.status_code == 200 and pic.content == PNG and pic.headers["content-type"] == "image/png"
    assert pic.headers["x-content-type-options"] == "nosniff" and pic.headers["content-disposition"].startswith("inline")
    note = client.get(url(rows["m-note"].message_id))
    assert note.headers["content-type"] == "audio/ogg" and note.headers["content-disposition"].startswith("inline")
    doc = client.get(url(rows["m-doc"].message_id))
    assert doc.status_code == 200 and doc.headers["content-type"] == "application/octet-stream"
    assert doc.headers["content-disposition"] == 'attachment; filename="x_ evil.html"'
    assert "sandbox" in doc.headers["content-security-policy"]
    assert rows["m-lie"].status == "rejected" and client.get(url(rows["m-lie"].message_id)).status_code == 404
    assert client.get(url("no-such-message")).status_code == 404
    conv = client.get(f"/api/conversations/{rows['m-note'].conversation_id}").json()
    by_kind = {m["kind"]: m["media"] for m in conv["messages"] if m["direction"] == "inbound"}
    assert by_kind["voice"]["transcript"] == "Bom dia, quero saber o preço" and by_kind["voice"]["status"] == "stored"
    assert by_kind["document"]["transcript_error"]  # HTML is not read as the customer's document
    browser = TestClient(build_app(services, "test"))
    assert browser.post("/dashboard/login", data={"token": ADMIN_TOKEN}, follow_redirects=False).status_code == 303
    assert browser.get(url(rows["m-pic"].message_id)).status_code == 200  # the page's <img> with the cookie
    page = browser.get(f"/dashboard/conversations/{rows['m-note'].conversation_id}")
    assert page.status_code == 200
    assert f'<audio controls preload="none" src="{url(rows["m-note"].message_id)}">' in page.text
    assert "Bom dia, quero saber o preço" in page.text and 'data-media-status="rejected"' in page.text
    from runtime.review.export import export_conversations
    from runtime.review.filters import ConversationFilters
    import io
    out = io.StringIO()
    export_conversations(services, out, "jsonl", ConversationFilters())
    exported = [json.loads(line) for line in out.getvalue().splitlines()]
    voice = [r for r in exported if r["kind"] == "voice"][0]
    assert voice["media"]["transcript"] == "Bom dia, quero saber o preço" and voice["media"]["sha256"]


@requires_shared
def test_a_customers_pdf_is_parsed_in_the_sandbox_and_given_to_the_turn_capped(media_wa):
    services, graph, speech, model = media_wa
    services.settings.media_document_chars = 600
    pdf = shared_doc("pdf/layout-parser-paper-with-table.pdf").read_bytes()
    graph.media.add("m-pdf", pdf, "application/pdf")
    model.enqueue("Recebi o seu documento.")
    deliver(services, media_body("wamid.pdf1", "document", "m-pdf", mime="application/pdf",
                                 filename="paper.pdf", caption="o que acham?"))
    [row] = media_rows(services)
    assert row.status == "stored" and row.transcript_engine == "ingest.parse" and row.transcript_error is None
    text = row.transcript_text
    assert text.startswith('[The customer\'s document "paper.pdf", cut short:]') and "LayoutParser" in text
    body = text.split("\n", 1)[1].rsplit("\n", 1)[0]
    from ingest.sandbox import ParseLimits, parse_isolated
    full = "\n\n".join(e.text.strip() for e in parse_isolated(pdf, "pdf", ParseLimits.from_settings(services.settings))
                       if e.text.strip())
    assert 300 <= len(body) <= 600 and full.startswith(body)
    assert full[len(body):].startswith("\n\n")  # cut where a paragraph ends
    asked = last_user_text(model)
    assert "o que acham?" in asked and "LayoutParser" in asked


def test_an_image_hands_off_when_the_assistant_says_so(media_wa):
    from kb.models import Assistant
    from runtime.config import DEFAULT_HANDOFF, merge_config
    from runtime.models import Conversation

    services, graph, speech, model = media_wa
    with services.session() as session:
        assistant = session.scalars(select(Assistant)).one()
        assistant.config = merge_config(assistant.config or {}, {"handoff": {"on_image": True}})
        session.commit()
    graph.media.add("m-dmg", PNG, "image/png")
    deliver(services, media_body("wamid.h1", "image", "m-dmg", mime="image/png", caption="o produto chegou quebrado, o que eu faço?"))
    assert model.requests == [] and graph.sent[0]["json"]["text"]["body"] == DEFAULT_HANDOFF["pt"]
    with services.session() as session:
        conv = session.scalars(select(Conversation)).one()
        assert conv.handoff_state == "waiting_for_human" and conv.handoff["reason"] == "the customer sent an image"
    assert media_rows(services)[0].status == "stored"


def test_on_the_huey_queue_a_failing_download_is_retried_later_and_the_turn_waits_for_it(app_wa):
    from tests.factories import wait_until

    client, services, graph, speech, model = app_wa
    services.settings.media_retry_delay_s = 0.3  # scheduled retries: 0.3 s, then 0.6 s
    graph.media.add("m-late", VOICE, "audio/ogg", fail_info=[503, 500])
    speech.add(VOICE, "Posso pagar com Pix?")
    model.enqueue("Sim, aceitamos Pix.")
    post_webhook(client, media_body("wamid.l1", "audio", "m-late", mime="audio/ogg", voice=True))
    wait_until(lambda: graph.sent, what="the reply")
    row = media_rows(services)[0]
    assert (row.status, row.attempts, row.transcript_text) == ("stored", 3, "Posso pagar com Pix?")
    assert "Posso pagar com Pix?" in last_user_text(model) and len(model.requests) == 1


def test_a_lone_worker_starting_takes_back_the_files_a_stopped_process_held(media_wa):
    from atende.jobs import requeue_interrupted

    services, graph, speech, model = media_wa
    graph.media.add("m-start", VOICE, "audio/ogg")
    speech.add(VOICE, "Oi, tudo bem?")
    model.enqueue("Tudo bem!")
    deliver(services, media_body("wamid.st1", "audio", "m-start", mime="audio/ogg", voice=True))
    with services.session() as session:  # stopped mid-transcription: stored, its claim still on, no transcript
        row = session.scalars(select(MessageMedia)).one()
        row.transcribed_at = row.transcript_text = None
        row.claimed_until = datetime.now(UTC) + timedelta(minutes=5)
        session.commit()
    assert requeue_interrupted(services, jobs=False, posts=False, sends=False) >= 1
    row = media_rows(services)[0]
    assert row.transcript_text == "Oi, tudo bem?" and row.claimed_until is None and len(speech.requests) == 2
