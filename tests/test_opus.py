"""Tests for voiceedge.media.opus: Opus decode/encode, concealment, errors."""

from __future__ import annotations

import array
import math
from fractions import Fraction

import pytest
from av import AudioFrame, CodecContext
from hypothesis import given, settings
from hypothesis import strategies as st

from voiceedge.media.opus import (
    RTP_CLOCK_RATE,
    RTP_TIMESTAMP_STEP,
    SUPPORTED_RATES,
    CodecError,
    OpusDecoder,
    OpusEncoder,
)
from voiceedge.wire.errors import WireError

RATES = (16000, 24000, 48000)


def sine(rate: int, frequency: float, seconds: float, amplitude: float = 0.3) -> bytes:
    """PCM16 little-endian mono sine wave."""
    n = int(rate * seconds)
    step = 2 * math.pi * frequency / rate
    samples = array.array("h", (int(amplitude * 32767 * math.sin(step * i)) for i in range(n)))
    return samples.tobytes()


def samples_of(pcm: bytes) -> array.array[int]:
    """PCM16 little-endian bytes as an array of ints."""
    return array.array("h", pcm)


def rms(samples: array.array[int]) -> float:
    """Root mean square of ``samples``."""
    return math.sqrt(sum(s * s for s in samples) / len(samples))


def zero_crossing_frequency(samples: array.array[int], rate: int) -> float:
    """Frequency of a pure tone estimated from its upward zero crossings."""
    ups = [i for i in range(1, len(samples)) if samples[i - 1] < 0 <= samples[i]]
    return (len(ups) - 1) * rate / (ups[-1] - ups[0])


def goertzel_fraction(samples: array.array[int], rate: int, frequency: float) -> float:
    """Share of the signal's energy at ``frequency`` (Goertzel, one DFT bin)."""
    n = len(samples)
    k = round(n * frequency / rate)
    coefficient = 2 * math.cos(2 * math.pi * k / n)
    s1 = s2 = 0.0
    for x in samples:
        s1, s2 = x + coefficient * s1 - s2, s1
    power = s1 * s1 + s2 * s2 - coefficient * s1 * s2
    # Parseval: a bin and its mirror hold 2 * power / n of the n * mean-square energy.
    return 2 * power / n / sum(x * x for x in samples)


def round_trip(rate: int, pcm: bytes) -> bytes:
    """Encode ``pcm`` frame by frame, decode every payload, return the PCM."""
    encoder = OpusEncoder(rate)
    decoder = OpusDecoder(rate)
    size = encoder.frame_samples * 2
    return b"".join(
        decoder.decode(encoder.encode(pcm[i : i + size])) for i in range(0, len(pcm), size)
    )


def frame_ms_of(payload: bytes) -> float:
    """Duration of one frame of an Opus packet from its TOC (RFC 6716 §3.1)."""
    config = payload[0] >> 3
    if config < 12:
        return (10, 20, 40, 60)[config % 4]
    if config < 16:
        return (10, 20)[config % 2]
    return (2.5, 5, 10, 20)[config % 4]


@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("frequency", [440.0, 1000.0])
def test_round_trip_keeps_energy_and_frequency(rate: int, frequency: float) -> None:
    """decode(encode(sine)) has the input's level and dominant frequency."""
    source = sine(rate, frequency, 1.0)
    decoded = round_trip(rate, source)
    assert len(decoded) == len(source)
    # Skip the codec's start-up (lookahead and the encoder settling).
    skip = rate // 10
    want = samples_of(source)[skip:]
    got = samples_of(decoded)[skip:]
    level = 20 * math.log10(rms(got) / rms(want))
    assert abs(level) < 1.5, level
    assert zero_crossing_frequency(got, rate) == pytest.approx(frequency, rel=0.01)
    assert goertzel_fraction(got, rate, frequency) > 0.9


@pytest.mark.parametrize("rate", SUPPORTED_RATES)
def test_every_call_returns_one_frame(rate: int) -> None:
    """Each 20 ms payload decodes to exactly rate/50 samples, from the first on."""
    encoder = OpusEncoder(rate)
    decoder = OpusDecoder(rate)
    pcm = sine(rate, 300.0, 0.2)
    size = encoder.frame_samples * 2
    for i in range(0, len(pcm), size):
        assert len(decoder.decode(encoder.encode(pcm[i : i + size]))) == rate // 50 * 2


@pytest.mark.parametrize("rate", RATES)
def test_payloads_are_20ms_on_the_48khz_rtp_clock(rate: int) -> None:
    """Every payload holds one 20 ms frame: 960 ticks of the RTP clock."""
    encoder = OpusEncoder(rate)
    payload = encoder.encode(bytes(encoder.frame_samples * 2))
    assert payload[0] & 0x03 == 0  # one frame in the packet
    assert frame_ms_of(payload) == 20
    assert RTP_TIMESTAMP_STEP == RTP_CLOCK_RATE * 20 // 1000 == 960


@pytest.mark.parametrize("rate", RATES)
def test_conceal_length_and_continuity(rate: int) -> None:
    """PLC gives one frame by default, any 10 ms multiple on request, and is not silent."""
    decoder = OpusDecoder(rate)
    encoder = OpusEncoder(rate)
    pcm = sine(rate, 440.0, 0.2)
    size = encoder.frame_samples * 2
    for i in range(0, len(pcm), size):
        decoder.decode(encoder.encode(pcm[i : i + size]))
    concealed = decoder.conceal()
    assert len(concealed) == rate // 50 * 2
    # libopus extrapolates the tone rather than going silent at once.
    assert rms(samples_of(concealed)) > 0.05 * rms(samples_of(pcm))
    assert len(decoder.conceal(rate // 100)) == rate // 100 * 2
    assert len(decoder.conceal(rate // 100 * 3)) == rate // 100 * 3 * 2
    # The stream goes on after concealment.
    assert len(decoder.decode(encoder.encode(pcm[:size]))) == size


def test_conceal_before_any_packet() -> None:
    """Concealment before the first packet is a frame of (near) silence."""
    decoder = OpusDecoder(16000)
    assert decoder.conceal() == bytes(640)


@pytest.mark.parametrize("samples", [0, -320, 100, 2000, 16000])
def test_conceal_rejects_odd_lengths(samples: int) -> None:
    """Concealment lengths are positive multiples of 10 ms up to 120 ms."""
    with pytest.raises(CodecError):
        OpusDecoder(16000).conceal(samples)


def test_decode_fec_falls_back_to_concealment() -> None:
    """PyAV cannot reach in-band FEC; decode_fec still returns one frame."""
    encoder = OpusEncoder(24000, packet_loss_percent=20)
    decoder = OpusDecoder(24000)
    assert OpusDecoder.supports_fec is False
    first = encoder.encode(sine(24000, 440.0, 0.02))
    decoder.decode(first)
    encoder.encode(sine(24000, 440.0, 0.02))  # the lost one
    third = encoder.encode(sine(24000, 440.0, 0.02))
    assert len(decoder.decode_fec(third)) == 960
    assert len(decoder.decode(third)) == 960


@pytest.mark.parametrize("payload", [b"", b"\xff\xff\xff\xff\x00", b"\x03\xff"])
def test_corrupt_payload_raises_codec_error(payload: bytes) -> None:
    """Empty or malformed packets raise CodecError and leave the decoder usable."""
    decoder = OpusDecoder(16000)
    with pytest.raises(CodecError):
        decoder.decode(payload)
    assert issubclass(CodecError, WireError)
    encoder = OpusEncoder(16000)
    assert len(decoder.decode(encoder.encode(bytes(640)))) == 640


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=0, max_size=200))
def test_random_payload_decodes_or_raises_codec_error(payload: bytes) -> None:
    """Hostile payloads give audio of a legal Opus length or CodecError, nothing else."""
    decoder = OpusDecoder(16000)
    try:
        pcm = decoder.decode(payload)
    except CodecError:
        return
    # 2.5 ms (40 samples at 16 kHz) to 120 ms per packet.
    samples = len(pcm) // 2
    assert len(pcm) % 2 == 0
    assert samples % 40 == 0 and 40 <= samples <= 1920


def test_stereo_payload_is_downmixed() -> None:
    """A stereo Opus stream (as browsers may send) decodes to mono PCM."""
    encoder = CodecContext.create("libopus", "w")
    encoder.sample_rate = 48000
    encoder.layout = "stereo"
    encoder.format = "s16"
    encoder.bit_rate = 64000
    encoder.time_base = Fraction(1, 48000)
    encoder.options = {"application": "audio", "frame_duration": "20"}
    mono = samples_of(sine(48000, 440.0, 0.5))
    stereo = array.array("h", (s for s in mono for _ in (0, 1)))
    decoder = OpusDecoder(16000)
    out = []
    for i in range(25):
        frame = AudioFrame(format="s16", layout="stereo", samples=960)
        frame.sample_rate = 48000
        frame.pts = i * 960
        frame.planes[0].update(stereo[i * 1920 : (i + 1) * 1920].tobytes())
        for packet in encoder.encode(frame):
            assert bytes(packet)[0] & 0x04  # the stereo flag
            pcm = decoder.decode(bytes(packet))
            assert len(pcm) == 640
            out.append(pcm)
    got = samples_of(b"".join(out))[1600:]
    assert zero_crossing_frequency(got, 16000) == pytest.approx(440.0, rel=0.01)
    assert abs(20 * math.log10(rms(got) / rms(mono))) < 1.5


@pytest.mark.parametrize("size", [0, 638, 642, 1280])
def test_encode_rejects_wrong_frame_size(size: int) -> None:
    """encode() takes exactly one 20 ms frame."""
    with pytest.raises(CodecError):
        OpusEncoder(16000).encode(bytes(size))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"sample_rate": 44100},
        {"sample_rate": 16000, "bitrate": 1000},
        {"sample_rate": 16000, "complexity": 11},
        {"sample_rate": 16000, "packet_loss_percent": 101},
        {"sample_rate": 16000, "application": "music"},
    ],
)
def test_encoder_rejects_bad_settings(kwargs: dict[str, object]) -> None:
    """Out-of-range encoder settings raise CodecError."""
    with pytest.raises(CodecError):
        OpusEncoder(**kwargs)  # type: ignore[arg-type]


def test_decoder_rejects_bad_rate() -> None:
    """Only Opus's native rates are accepted."""
    with pytest.raises(CodecError):
        OpusDecoder(22050)


def test_bitrate_and_fec_change_packet_size() -> None:
    """A higher bitrate and in-band FEC both make payloads larger."""
    pcm = sine(16000, 440.0, 0.5)

    def mean_size(bitrate: int, complexity: int | None = None, loss: int = 0) -> float:
        encoder = OpusEncoder(16000, bitrate, complexity, packet_loss_percent=loss)
        sizes = [len(encoder.encode(pcm[i : i + 640])) for i in range(0, len(pcm), 640)]
        return sum(sizes[5:]) / len(sizes[5:])

    low = mean_size(bitrate=12000)
    high = mean_size(bitrate=64000)
    assert high > 2 * low
    assert mean_size(bitrate=32000, loss=20) > mean_size(bitrate=32000)
    assert mean_size(bitrate=32000, complexity=0) > 0
