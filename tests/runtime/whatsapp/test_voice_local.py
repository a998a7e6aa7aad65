"""A voice note end to end with the local Whisper engine (no endpoint configured): spoken here by espeak-ng, posted
as Meta does, fetched from the Graph stand-in, transcribed on this machine, answered from the knowledge base with
its sources, the reply sent to the stand-in."""
from __future__ import annotations

import shutil

import pytest
from sqlalchemy import select

from benchmarks.voice_notes import synthesize_voice_note
from runtime.models import Message, MessageSource
from runtime.whatsapp.models import MessageMedia, WhatsAppSender
from runtime.whatsapp.standin import GraphStandIn
from tests.conftest import make_services
from tests.factories import add_assistant, use_scripted_model
from tests.runtime.whatsapp.test_media import PHONE_ID, SECRET, deliver, last_user_text, media_body

HOURS = ("Opening hours\n\nWe are open Monday to Friday from 8 am to 6 pm. On Saturdays we open from 9 am to 1 pm. "
         "On Sundays the shop is closed.")


def test_a_spoken_question_is_transcribed_locally_and_answered_with_its_sources(tmp_path, embedders):
    if shutil.which("espeak-ng") is None:
        pytest.fail("espeak-ng is not installed: run `make speech`")
    with GraphStandIn() as graph:
        services = make_services(tmp_path / "home", embedders, whatsapp_graph_url=graph.base_url,
                                 media_retry_delay_s=0)
        assert services.settings.transcription_url is None  # the local engine
        model = use_scripted_model(services)
        aid = add_assistant(services, "shop", embedding_model="all-minilm-l6-v2", documents=[("hours.txt", HOURS)],
                            config={"focused_answers": False})
        with services.session() as session:
            session.add(WhatsAppSender(assistant_id=aid, phone_number_id=PHONE_ID, access_token="token-voice",
                                       app_secret=SECRET, verify_token="v"))
            session.commit()
        note = synthesize_voice_note("What time do you open on Saturday?", "en-us")
        graph.media.add("m-spoken", note, "audio/ogg; codecs=opus")
        model.enqueue("On Saturdays we open from 9 am to 1 pm.")
        deliver(services, media_body("wamid.spoken", "audio", "m-spoken", mime="audio/ogg; codecs=opus", voice=True))
        with services.session() as session:
            row = session.scalars(select(MessageMedia)).one()
            assert row.status == "stored" and row.transcript_engine.startswith("faster-whisper")
            assert row.transcript_language == "en" and "saturday" in row.transcript_text.lower()
            reply = session.scalars(select(Message).where(Message.direction == "outbound")).one()
            sources = session.scalars(select(MessageSource).where(MessageSource.message_id == reply.id)).all()
            assert sources and sources[0].filename == "hours.txt"
        assert "saturday" in last_user_text(model).lower()
        assert graph.sent[-1]["json"]["text"]["body"].startswith("On Saturdays we open from 9 am to 1 pm.")
        services.close()
        services.engine.dispose()
