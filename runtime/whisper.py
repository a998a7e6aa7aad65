"""Voice notes transcribed on this machine: OpenAI's multilingual Whisper base model on faster-whisper (CTranslate2,
CPU, int8), the model directory assembled by ``scripts/setup_whisper.sh`` (``make whisper``). faster-whisper's one
home in the project.

The model is loaded once per process, at the first voice note (about 2 s; ~150 MB of memory), and shared by every
thread: CTranslate2 queues concurrent calls on its own workers. Audio is decoded in memory (runtime.audio) and
refused before decoding when it declares a length over the limit. Measured figures (word error rate per language,
real-time factor on 2 cores, the VAD and beam-size choices): ``python -m benchmarks.voice_notes``. Measured
2026-12-01 on espeak-ng notes (53, pt/es/en), each config in turn on the same note: int8 beam 5 takes ~0.7-0.9 s
per second of audio on 2 shared cores (short notes pay a whole 30-s window); float32 is 1.2-1.4x slower for the
same WER; greedy decoding doubles the English WER (0.34 -> 0.58); Silero VAD changes neither WER nor time on these
notes (off by default); a language hint halves the time (no detection pass) and lowers the Spanish WER 0.52 ->
0.38; faster-whisper's temperature fallback gives the same WER for more time (off by default).
"""
from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runtime.audio import AudioError, AudioTooLongError, decode_speech
from runtime.transcription import Transcript, TranscriptionError

if TYPE_CHECKING:
    from core.settings import Settings

log = logging.getLogger(__name__)

MODEL_NAME = "whisper-base"
MODEL_FILES = ("model.bin", "config.json", "tokenizer.json", "vocabulary.json")
FALLBACK_TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)  # faster-whisper's default schedule
# Tokens one segment (at most 30 s) may produce: speech carries at most ~4 words a second, under 10 tokens, so a
# segment that goes on is the model repeating itself ("hibai dame todo hibai dame todo ..." on a note it cannot
# make out, seen in the benchmark), which costs time and gives nothing; Whisper's own cap is 448 with the prompt.
TOKENS_PER_S = 10
MAX_SEGMENT_TOKENS = 440
SETUP_HINT = "run `make whisper` (scripts/setup_whisper.sh) to assemble it"


def default_whisper_model_dir(cache_dir: Path | None = None) -> Path:
    """Where ``scripts/setup_whisper.sh`` puts the model: ``<models dir>/whisper-base``, the models dir being
    ``cache_dir``, else ``$ATENDE_MODEL_DIR``, else ``$XDG_CACHE_HOME/atende/models`` (``~/.cache/atende/models``),
    as for the chat model (runtime.local_llm.default_model_path)."""
    from runtime.local_llm import models_dir

    return (cache_dir or models_dir()) / MODEL_NAME


class WhisperTranscriber:
    """A :class:`runtime.transcription.Transcriber` running Whisper locally with faster-whisper.

    ``threads``: CPU threads of one transcription; ``compute_type``: CTranslate2's weights type (``int8`` measured
    the fastest on CPU, ``float32`` the reference); ``max_audio_s``: longer audio is refused; ``beam_size`` and
    ``vad_filter``: decoding options (faster-whisper's default beam 5; Silero VAD skips silences);
    ``temperature_fallback``: decode a segment again at rising temperatures (0.2 ... 1.0, 5 samples each) when its
    text looks repetitive or improbable, as faster-whisper does by default. Off by default: on speech the model
    cannot make out it multiplies the time by up to ~6 for no better text (benchmarks.voice_notes).
    """

    def __init__(self, model_dir: Path | None = None, *, threads: int = 2, compute_type: str = "int8",
                 max_audio_s: float = 600.0, beam_size: int = 5, vad_filter: bool = False,
                 temperature_fallback: bool = False) -> None:
        self.model_dir = Path(model_dir) if model_dir is not None else default_whisper_model_dir()
        self.threads = threads
        self.compute_type = compute_type
        self.max_audio_s = max_audio_s
        self.beam_size = beam_size
        self.vad_filter = vad_filter
        self.temperature_fallback = temperature_fallback
        self.engine = f"faster-whisper/{self.model_dir.name}/{compute_type}"
        self._model: Any = None
        self._lock = threading.Lock()

    def load(self) -> Any:
        """The faster-whisper model, loaded at the first call (once per instance, whichever thread comes first).
        A missing or unloadable model raises TranscriptionError saying how to set it up."""
        if self._model is not None:
            return self._model
        with self._lock:
            if self._model is None:
                missing = [name for name in MODEL_FILES if not (self.model_dir / name).is_file()]
                if missing:
                    raise TranscriptionError(
                        f"the local Whisper model is not in {self.model_dir} (missing {', '.join(missing)}): "
                        f"{SETUP_HINT}")
                try:
                    from faster_whisper import WhisperModel  # type: ignore[import-untyped]
                except ImportError as exc:
                    raise TranscriptionError(f"faster-whisper is not installed ({exc}): run `make install`") from exc
                try:
                    self._model = WhisperModel(str(self.model_dir), device="cpu", compute_type=self.compute_type,
                                               cpu_threads=self.threads, num_workers=1)
                except (RuntimeError, ValueError, OSError) as exc:
                    raise TranscriptionError(
                        f"the local Whisper model in {self.model_dir} does not load ({exc}): {SETUP_HINT}") from exc
                log.info("whisper model loaded from %s (%s, %d threads)", self.model_dir, self.compute_type,
                         self.threads)
        return self._model

    def transcribe(self, audio: bytes, *, mime_type: str | None = None, language: str | None = None) -> Transcript:
        """The voice note's text and language. ``language`` (ISO 639-1) skips detection when Whisper knows it;
        an unknown code is ignored and the language detected. Unreadable or over-long audio, or a model that is
        not set up, raise TranscriptionError (not retryable). Audio with no speech gives an empty text."""
        try:  # decoded first: unreadable or over-long audio is refused without loading the model
            decoded = decode_speech(audio, max_duration_s=self.max_audio_s)
        except AudioTooLongError as exc:
            raise TranscriptionError(f"voice note too long to transcribe: {exc}") from exc
        except AudioError as exc:
            raise TranscriptionError(f"cannot read the audio ({mime_type or 'unknown type'}): {exc}") from exc
        model = self.load()
        hint = language.lower() if language and language.lower() in model.supported_languages else None
        try:
            segments, info = model.transcribe(
                decoded.samples, language=hint, beam_size=self.beam_size, vad_filter=self.vad_filter,
                temperature=FALLBACK_TEMPERATURES if self.temperature_fallback else 0.0,
                max_new_tokens=min(MAX_SEGMENT_TOKENS, 16 + int(TOKENS_PER_S * min(decoded.duration_s, 30.0))),
                # short notes: a segment misheard is not fed to the next as context, which is how Whisper
                # falls into repeating itself
                condition_on_previous_text=False)
            text = " ".join(segment.text.strip() for segment in segments).strip()
        except (RuntimeError, ValueError) as exc:
            raise TranscriptionError(f"the local Whisper model failed: {exc}") from exc
        return Transcript(text=text, language=info.language, duration_s=decoded.duration_s, engine=self.engine)


def make_local_transcriber(settings: Settings) -> WhisperTranscriber:
    """The local engine configured by ``settings`` (``whisper_*`` and ``transcription_*`` fields); the model
    loads at its first voice note."""
    return WhisperTranscriber(settings.whisper_model_dir, threads=settings.transcription_threads,
                              compute_type=settings.whisper_compute_type,
                              max_audio_s=settings.transcription_max_audio_s,
                              beam_size=settings.whisper_beam_size, vad_filter=settings.whisper_vad_filter,
                              temperature_fallback=settings.whisper_temperature_fallback)
