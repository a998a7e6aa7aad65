"""Speech to text for customers' voice notes: what a transcriber gives back and the interface every engine has.

Two engines implement :class:`Transcriber`: the local Whisper model (``runtime.whisper``, faster-whisper on
CTranslate2, weights assembled from the package index by ``scripts/setup_whisper.sh``; voice notes never leave the
server) and any OpenAI-compatible ``/audio/transcriptions`` endpoint when one is configured. Engines raise
:class:`TranscriptionError` for audio they cannot read or an engine that is not available, never return an empty
success for a failure.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


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
