"""Audio files in memory, through PyAV (FFmpeg's libraries, bundled in its wheel with libopus): decoding a voice
note to the 16 kHz mono samples a speech model takes, bounded in length while it decodes, and encoding samples to
OGG/Opus as WhatsApp sends voice notes. PyAV's one home in the project.
"""
from __future__ import annotations

import io
from dataclasses import dataclass

import av
import numpy as np

SPEECH_RATE = 16000  # Whisper's (and most speech models') input rate
OPUS_RATE = 48000  # the one rate libopus encodes
VOICE_NOTE_BITRATE = 32000  # WhatsApp's voice notes: mono Opus in OGG at ~16-32 kbit/s


class AudioError(Exception):
    """The bytes are not audio PyAV can decode (or hold no audio stream)."""


class AudioTooLongError(AudioError):
    """The audio lasts longer than the limit the caller set; ``duration_s`` is at least the limit, the
    container's declared length when it declares one."""

    def __init__(self, duration_s: float, limit_s: float) -> None:
        super().__init__(f"the audio lasts {duration_s:.0f} s or more, over the {limit_s:.0f} s limit")
        self.duration_s = duration_s
        self.limit_s = limit_s


@dataclass(frozen=True)
class DecodedAudio:
    """Mono float32 samples in [-1, 1] at ``rate`` Hz."""

    samples: np.ndarray
    rate: int

    @property
    def duration_s(self) -> float:
        return len(self.samples) / self.rate


def decode_speech(data: bytes, *, max_duration_s: float | None = None, rate: int = SPEECH_RATE) -> DecodedAudio:
    """Decode an audio file's bytes (OGG/Opus, MP3, AAC, WAV... anything FFmpeg reads) to mono samples at ``rate``.

    Longer than ``max_duration_s`` raises :class:`AudioTooLongError`: at once when the container declares its
    length, else as soon as the decoded samples pass the limit (so a long file is never decoded whole). Bytes
    that are not audio raise :class:`AudioError`."""
    if not data:
        raise AudioError("no bytes")
    limit = None if max_duration_s is None else int(max_duration_s * rate)
    chunks: list[np.ndarray] = []
    count = 0
    try:
        with av.open(io.BytesIO(data), mode="r", metadata_errors="ignore") as container:
            if not container.streams.audio:
                raise AudioError("the file has no audio stream")
            declared = container.duration / av.time_base if container.duration else None
            if max_duration_s is not None and declared is not None and declared > max_duration_s:
                raise AudioTooLongError(declared, max_duration_s)
            resampler = av.AudioResampler(format="s16", layout="mono", rate=rate)
            for frame in container.decode(audio=0):
                for out in resampler.resample(frame):
                    chunk = out.to_ndarray().reshape(-1)
                    chunks.append(chunk)
                    count += len(chunk)
                if limit is not None and count > limit:
                    raise AudioTooLongError(count / rate, max_duration_s or 0.0)
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().reshape(-1))
    except AudioError:
        raise
    except (av.FFmpegError, ValueError, IndexError) as exc:  # what PyAV raises for bytes that are not audio
        raise AudioError(f"unreadable audio: {exc}") from exc
    samples = np.concatenate(chunks).astype(np.float32) / 32768.0 if chunks else np.zeros(0, np.float32)
    if not len(samples):
        raise AudioError("the audio stream holds no samples")
    if limit is not None and len(samples) > limit:
        raise AudioTooLongError(len(samples) / rate, max_duration_s or 0.0)
    return DecodedAudio(samples, rate)


def encode_ogg_opus(samples: np.ndarray, rate: int, *, bitrate: int = VOICE_NOTE_BITRATE) -> bytes:
    """Encode mono float32 samples (any rate; resampled to Opus's 48 kHz) as an OGG/Opus file, like a voice note."""
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="ogg") as container:
        stream = container.add_stream("libopus", rate=OPUS_RATE)
        stream.layout = "mono"
        stream.bit_rate = bitrate
        frame = av.AudioFrame.from_ndarray(np.asarray(samples, np.float32).reshape(1, -1), format="flt", layout="mono")
        frame.sample_rate = rate
        resampler = av.AudioResampler(format="s16", layout="mono", rate=OPUS_RATE)
        for resampled in [*resampler.resample(frame), *resampler.resample(None)]:
            container.mux(stream.encode(resampled))
        container.mux(stream.encode(None))
    return buf.getvalue()
