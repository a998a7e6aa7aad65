"""runtime.audio on real files made by PyAV: OGG/Opus round trip, the length bound with and without a declared
length (a WebM recorded as a stream, as browsers record voice, declares none), bytes that are not audio."""
from __future__ import annotations

import io

import av
import numpy as np
import pytest

from runtime.audio import AudioError, AudioTooLongError, decode_speech, encode_ogg_opus


def tone(seconds: float, rate: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


class _Pipe(io.RawIOBase):
    """A write-only, unseekable sink: the muxer cannot go back to write the length."""

    def __init__(self) -> None:
        self.data = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:  # type: ignore[override]
        self.data += b
        return len(b)


def streamed_webm_opus(samples: np.ndarray, rate: int) -> bytes:
    sink = _Pipe()
    with av.open(sink, mode="w", format="webm") as container:
        stream = container.add_stream("libopus", rate=48000)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="flt", layout="mono")
        frame.sample_rate = rate
        resampler = av.AudioResampler(format="s16", layout="mono", rate=48000)
        for resampled in [*resampler.resample(frame), *resampler.resample(None)]:
            container.mux(stream.encode(resampled))
        container.mux(stream.encode(None))
    return bytes(sink.data)


def test_ogg_opus_round_trip_keeps_length_and_signal() -> None:
    samples = tone(2.5)
    data = encode_ogg_opus(samples, 16000)
    assert data[:4] == b"OggS" and b"OpusHead" in data[:100]
    decoded = decode_speech(data)
    assert decoded.rate == 16000
    assert abs(decoded.duration_s - 2.5) < 0.01
    assert 0.15 < float(np.sqrt(np.mean(decoded.samples ** 2))) < 0.3  # a 0.3 sine's RMS is 0.21


def test_other_rates_are_resampled_to_16k() -> None:
    decoded = decode_speech(encode_ogg_opus(tone(1.0, 22050), 22050))
    assert abs(len(decoded.samples) - 16000) < 160


def test_declared_length_over_the_limit_is_refused_before_decoding() -> None:
    with pytest.raises(AudioTooLongError) as caught:
        decode_speech(encode_ogg_opus(tone(12), 16000), max_duration_s=10)
    assert caught.value.duration_s == pytest.approx(12, abs=0.1)


def test_undeclared_length_is_bounded_while_decoding() -> None:
    data = streamed_webm_opus(tone(25), 16000)
    with av.open(io.BytesIO(data)) as container:
        assert container.duration is None  # the case under test: nothing to refuse up front
    assert abs(decode_speech(data).duration_s - 25) < 0.1
    with pytest.raises(AudioTooLongError) as caught:
        decode_speech(data, max_duration_s=10)
    assert 10 < caught.value.duration_s < 12  # stopped soon after the limit, not at the end


@pytest.mark.parametrize("data", [b"", b"hello", b"OggS" + bytes(200), bytes(1000)])
def test_not_audio_is_an_audio_error(data) -> None:
    with pytest.raises(AudioError):
        decode_speech(data)


def test_a_file_without_an_audio_stream_is_an_audio_error() -> None:
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="matroska") as container:
        stream = container.add_stream("mpeg4", rate=5)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for _ in range(3):
            frame = av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    with pytest.raises(AudioError, match="no audio stream"):
        decode_speech(buf.getvalue())
