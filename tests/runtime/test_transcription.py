"""The OpenAI-compatible transcription engine over real HTTP to a local stand-in of the endpoint, and the choice of
engine by settings."""
from __future__ import annotations

import pytest

from core.settings import Settings
from runtime.transcription import OpenAICompatibleTranscriber, TranscriptionError, make_transcriber
from tests.conftest import TEST_SECRETS
from tests.transcription_standin import TranscriptionStandIn

AUDIO = b"OggS\x00\x02" + bytes(range(200))


@pytest.fixture
def speech():
    with TranscriptionStandIn() as server:
        yield server


def test_verbose_json_gives_text_language_and_duration(speech):
    speech.add(AUDIO, "¿Tienen envío a Madrid?", "spanish")
    engine = OpenAICompatibleTranscriber(speech.base_url, "whisper-x", "k-123")
    transcript = engine.transcribe(AUDIO, mime_type="audio/ogg; codecs=opus")
    assert (transcript.text, transcript.language, transcript.duration_s) == ("¿Tienen envío a Madrid?", "es", 2.5)
    assert transcript.engine == "openai-compatible:whisper-x"
    request = speech.requests[0]
    assert request["content_type"] == "audio/ogg" and request["file"] == AUDIO
    assert request["fields"] == {"model": "whisper-x", "response_format": "verbose_json"}
    engine.close()


def test_a_language_hint_is_sent_and_kept_when_the_server_names_none(speech):
    speech.add(AUDIO, "hello", "")
    transcript = OpenAICompatibleTranscriber(speech.base_url, "m").transcribe(AUDIO, language="en")
    assert transcript.language == "en" and speech.requests[0]["fields"]["language"] == "en"
    assert "Authorization" not in speech.requests[0]["headers"]  # no key, no header


@pytest.mark.parametrize("status, retryable", [(503, True), (429, True), (500, True), (400, False), (401, False)])
def test_failures_say_whether_to_retry(speech, status, retryable):
    speech.add(AUDIO, "x")
    speech.fail_next(status)
    with pytest.raises(TranscriptionError) as caught:
        OpenAICompatibleTranscriber(speech.base_url, "m").transcribe(AUDIO)
    assert caught.value.retryable is retryable and str(status) in str(caught.value)


def test_an_unreachable_endpoint_is_retryable():
    with pytest.raises(TranscriptionError) as caught:
        OpenAICompatibleTranscriber("http://127.0.0.1:9/v1", "m", timeout_s=2).transcribe(AUDIO)
    assert caught.value.retryable


def test_make_transcriber_picks_the_endpoint_when_configured(tmp_path, speech):
    settings = Settings(home=tmp_path, transcription_url=speech.base_url, transcription_model="w",
                        **TEST_SECRETS)
    engine = make_transcriber(settings)
    assert isinstance(engine, OpenAICompatibleTranscriber) and engine.url == speech.base_url + "/audio/transcriptions"
