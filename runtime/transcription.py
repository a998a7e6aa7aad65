"""Speech to text for customers' voice notes: what a transcriber gives back and the interface every engine has.

Two engines implement :class:`Transcriber`: the local Whisper model (``runtime.whisper``, faster-whisper on
CTranslate2, weights assembled from the package index by ``scripts/setup_whisper.sh``; voice notes never leave the
server) and any OpenAI-compatible ``/audio/transcriptions`` endpoint when one is configured. Engines raise
:class:`TranscriptionError` for audio they cannot read or an engine that is not available, never return an empty
success for a failure.
"""
from __future__ import annotations

import mimetypes
from dataclasses import dataclass
from typing import Protocol

import httpx


@dataclass(frozen=True)
class Transcript:
    """A voice note as text. ``language``: the ISO 639-1 code the engine detected (or was told), None if it
    says none; ``duration_s``: the audio's length; ``engine``: which engine and model made it (for the log)."""

    text: str
    language: str | None
    duration_s: float
    engine: str


class TranscriptionError(Exception):
    """The audio could not be transcribed (unreadable, too long, engine missing or failing); ``retryable`` when
    trying again later may succeed (an endpoint down, a timeout)."""

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


class Transcriber(Protocol):
    """An engine: ``transcribe`` takes the audio file's bytes (OGG/Opus as WhatsApp sends voice notes, or any
    format the engine decodes), its MIME type when known and a language hint (ISO 639-1) or None to detect it."""

    def transcribe(self, audio: bytes, *, mime_type: str | None = None, language: str | None = None) -> Transcript:
        ...


class OpenAICompatibleTranscriber:
    """Any OpenAI-compatible ``POST {base_url}/audio/transcriptions`` (OpenAI, a vLLM, a faster-whisper server...):
    the audio as multipart, ``response_format=verbose_json`` so the language comes back when the server gives it
    (a server answering plain ``{"text"}`` still works). Connection failures, timeouts, HTTP 429 and 5xx are
    ``retryable``; any other refusal is final. The API key goes only in the ``Authorization`` header."""

    def __init__(self, base_url: str, model: str, api_key: str = "", timeout_s: float = 120.0) -> None:
        self.url = base_url.rstrip("/") + "/audio/transcriptions"
        self.model = model
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 5.0)), trust_env=False)

    def transcribe(self, audio: bytes, *, mime_type: str | None = None, language: str | None = None) -> Transcript:
        mime = (mime_type or "audio/ogg").split(";")[0].strip()
        extension = mimetypes.guess_extension(mime) or ".ogg"
        data = {"model": self.model, "response_format": "verbose_json"}
        if language:
            data["language"] = language
        try:
            response = self._http.post(self.url, data=data, headers=self._headers,
                                       files={"file": (f"voice{extension}", audio, mime)})
        except httpx.TransportError as exc:
            raise TranscriptionError(f"transcription endpoint unreachable: {type(exc).__name__}",
                                     retryable=True) from None
        if response.status_code != 200:
            raise TranscriptionError(f"transcription endpoint answered HTTP {response.status_code}: "
                                     f"{response.text[:200]}", retryable=response.status_code in (408, 429)
                                     or response.status_code >= 500)
        try:
            answer = response.json()
        except ValueError:
            raise TranscriptionError("transcription endpoint answered no JSON", retryable=True) from None
        if not isinstance(answer, dict) or not isinstance(answer.get("text"), str):
            raise TranscriptionError("transcription endpoint answered no text")
        duration = answer.get("duration")
        return Transcript(text=answer["text"].strip(), language=_iso_language(answer.get("language")) or language,
                          duration_s=float(duration) if isinstance(duration, (int, float)) else 0.0,
                          engine=f"openai-compatible:{self.model}")

    def close(self) -> None:
        self._http.close()


def make_transcriber(settings) -> Transcriber:
    """The engine the settings pick: the endpoint at ``transcription_url`` when set (with ``transcription_model``
    and ``transcription_api_key``), else the local Whisper engine (``runtime.whisper``)."""
    if settings.transcription_url:
        return OpenAICompatibleTranscriber(settings.transcription_url, settings.transcription_model,
                                           settings.transcription_api_key, settings.transcription_timeout_s)
    from runtime.whisper import make_local_transcriber  # faster-whisper loads only when it is the engine

    return make_local_transcriber(settings)


# OpenAI's verbose_json names the language in English ("portuguese"); other servers give the ISO code
_LANGUAGE_NAMES = {"portuguese": "pt", "spanish": "es", "english": "en", "french": "fr", "german": "de",
                   "italian": "it", "dutch": "nl", "japanese": "ja", "chinese": "zh", "russian": "ru",
                   "arabic": "ar", "hindi": "hi", "korean": "ko", "turkish": "tr", "polish": "pl"}


def _iso_language(value) -> str | None:
    if not isinstance(value, str) or not value.strip():
        return None
    value = value.strip().lower()
    return value if len(value) == 2 else _LANGUAGE_NAMES.get(value)
