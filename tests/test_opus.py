# -*- test-case-name: tests.test_opus -*-
"""Tests for voiceedge.media.opus: Opus decode/encode, concealment, errors."""

from __future__ import annotations

import array
import math
from fractions import Fraction

from av import AudioFrame, CodecContext
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from tests.cases import case, rel

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


class EncodeDecodeTests(SynchronousTestCase):
    """OpusEncoder and OpusDecoder together: level, frequency, frame sizes, stereo input, packet sizes."""

    def test_round_trip_keeps_energy_and_frequency(self) -> None:
        """decode(encode(sine)) has the input's level and dominant frequency, at every rate."""
        for rate in RATES:
            for frequency in (440.0, 1000.0):
                with case(f"{rate} Hz rate, {frequency} Hz tone"):
                    source = sine(rate, frequency, 1.0)
                    decoded = round_trip(rate, source)
                    self.assertEqual(len(decoded), len(source))
                    # Skip the codec's start-up (lookahead and the encoder settling).
                    skip = rate // 10
                    want = samples_of(source)[skip:]
                    got = samples_of(decoded)[skip:]
                    level = 20 * math.log10(rms(got) / rms(want))
                    self.assertLess(abs(level), 1.5, level)
                    self.assertApproximates(zero_crossing_frequency(got, rate), frequency, rel(frequency, 0.01))
                    self.assertGreater(goertzel_fraction(got, rate, frequency), 0.9)

    def test_every_call_returns_one_frame(self) -> None:
        """Each 20 ms payload decodes to exactly rate/50 samples, from the first on, at every supported rate."""
        for rate in SUPPORTED_RATES:
            with case(f"{rate} Hz"):
                encoder = OpusEncoder(rate)
                decoder = OpusDecoder(rate)
                pcm = sine(rate, 300.0, 0.2)
                size = encoder.frame_samples * 2
                for i in range(0, len(pcm), size):
                    self.assertEqual(len(decoder.decode(encoder.encode(pcm[i : i + size]))), rate // 50 * 2)

    def test_payloads_are_20ms_on_the_48khz_rtp_clock(self) -> None:
        """Every payload holds one 20 ms frame: 960 ticks of the RTP clock."""
        for rate in RATES:
            with case(f"{rate} Hz"):
                encoder = OpusEncoder(rate)
                payload = encoder.encode(bytes(encoder.frame_samples * 2))
                self.assertEqual(payload[0] & 0x03, 0)  # one frame in the packet
                self.assertEqual(frame_ms_of(payload), 20)
        self.assertEqual(RTP_TIMESTAMP_STEP, RTP_CLOCK_RATE * 20 // 1000)
        self.assertEqual(RTP_CLOCK_RATE * 20 // 1000, 960)

    def test_stereo_payload_is_downmixed(self) -> None:
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
                self.assertTrue(bytes(packet)[0] & 0x04)  # the stereo flag
                pcm = decoder.decode(bytes(packet))
                self.assertEqual(len(pcm), 640)
                out.append(pcm)
        got = samples_of(b"".join(out))[1600:]
        self.assertApproximates(zero_crossing_frequency(got, 16000), 440.0, rel(440.0, 0.01))
        self.assertLess(abs(20 * math.log10(rms(got) / rms(mono))), 1.5)

    def test_bitrate_and_fec_change_packet_size(self) -> None:
        """A higher bitrate and in-band FEC both make payloads larger."""
        pcm = sine(16000, 440.0, 0.5)

        def mean_size(bitrate: int, complexity: int | None = None, loss: int = 0) -> float:
            encoder = OpusEncoder(16000, bitrate, complexity, packet_loss_percent=loss)
            sizes = [len(encoder.encode(pcm[i : i + 640])) for i in range(0, len(pcm), 640)]
            return sum(sizes[5:]) / len(sizes[5:])

        low = mean_size(bitrate=12000)
        high = mean_size(bitrate=64000)
        self.assertGreater(high, 2 * low)
        self.assertGreater(mean_size(bitrate=32000, loss=20), mean_size(bitrate=32000))
        self.assertGreater(mean_size(bitrate=32000, complexity=0), 0)


class ConcealmentTests(SynchronousTestCase):
    """Packet loss concealment and the FEC fallback."""

    def test_conceal_length_and_continuity(self) -> None:
        """PLC gives one frame by default, any 10 ms multiple on request, and is not silent."""
        for rate in RATES:
            with case(f"{rate} Hz"):
                decoder = OpusDecoder(rate)
                encoder = OpusEncoder(rate)
                pcm = sine(rate, 440.0, 0.2)
                size = encoder.frame_samples * 2
                for i in range(0, len(pcm), size):
                    decoder.decode(encoder.encode(pcm[i : i + size]))
                concealed = decoder.conceal()
                self.assertEqual(len(concealed), rate // 50 * 2)
                # libopus extrapolates the tone rather than going silent at once.
                self.assertGreater(rms(samples_of(concealed)), 0.05 * rms(samples_of(pcm)))
                self.assertEqual(len(decoder.conceal(rate // 100)), rate // 100 * 2)
                self.assertEqual(len(decoder.conceal(rate // 100 * 3)), rate // 100 * 3 * 2)
                # The stream goes on after concealment.
                self.assertEqual(len(decoder.decode(encoder.encode(pcm[:size]))), size)

    def test_conceal_before_any_packet(self) -> None:
        """Concealment before the first packet is a frame of (near) silence."""
        decoder = OpusDecoder(16000)
        self.assertEqual(decoder.conceal(), bytes(640))

    def test_conceal_rejects_odd_lengths(self) -> None:
        """Concealment lengths are positive multiples of 10 ms up to 120 ms."""
        for samples in (0, -320, 100, 2000, 16000):
            with case(f"{samples} samples"), self.assertRaises(CodecError):
                OpusDecoder(16000).conceal(samples)

    def test_decode_fec_falls_back_to_concealment(self) -> None:
        """PyAV cannot reach in-band FEC; decode_fec still returns one frame."""
        encoder = OpusEncoder(24000, packet_loss_percent=20)
        decoder = OpusDecoder(24000)
        self.assertIs(OpusDecoder.supports_fec, False)
        first = encoder.encode(sine(24000, 440.0, 0.02))
        decoder.decode(first)
        encoder.encode(sine(24000, 440.0, 0.02))  # the lost one
        third = encoder.encode(sine(24000, 440.0, 0.02))
        self.assertEqual(len(decoder.decode_fec(third)), 960)
        self.assertEqual(len(decoder.decode(third)), 960)


class CodecErrorTests(SynchronousTestCase):
    """Hostile payloads and bad settings raise CodecError, nothing else."""

    def test_corrupt_payload_raises_codec_error(self) -> None:
        """Empty or malformed packets raise CodecError and leave the decoder usable."""
        self.assertTrue(issubclass(CodecError, WireError))
        for payload in (b"", b"\xff\xff\xff\xff\x00", b"\x03\xff"):
            with case(f"payload {payload!r}"):
                decoder = OpusDecoder(16000)
                with self.assertRaises(CodecError):
                    decoder.decode(payload)
                encoder = OpusEncoder(16000)
                self.assertEqual(len(decoder.decode(encoder.encode(bytes(640)))), 640)

    @settings(max_examples=300, deadline=None)
    @given(st.binary(min_size=0, max_size=200))
    def test_random_payload_decodes_or_raises_codec_error(self, payload: bytes) -> None:
        """Hostile payloads give audio of a legal Opus length or CodecError, nothing else."""
        decoder = OpusDecoder(16000)
        try:
            pcm = decoder.decode(payload)
        except CodecError:
            return
        # 2.5 ms (40 samples at 16 kHz) to 120 ms per packet.
        samples = len(pcm) // 2
        self.assertEqual(len(pcm) % 2, 0)
        self.assertEqual(samples % 40, 0)
        self.assertLessEqual(40, samples)
        self.assertLessEqual(samples, 1920)

    def test_encode_rejects_wrong_frame_size(self) -> None:
        """encode() takes exactly one 20 ms frame."""
        for size in (0, 638, 642, 1280):
            with case(f"{size} bytes"), self.assertRaises(CodecError):
                OpusEncoder(16000).encode(bytes(size))

    def test_encoder_rejects_bad_settings(self) -> None:
        """Out-of-range encoder settings raise CodecError."""
        bad: list[dict[str, object]] = [
            {"sample_rate": 44100},
            {"sample_rate": 16000, "bitrate": 1000},
            {"sample_rate": 16000, "complexity": 11},
            {"sample_rate": 16000, "packet_loss_percent": 101},
            {"sample_rate": 16000, "application": "music"},
        ]
        for kwargs in bad:
            with case(repr(kwargs)), self.assertRaises(CodecError):
                OpusEncoder(**kwargs)  # type: ignore[arg-type]

    def test_decoder_rejects_bad_rate(self) -> None:
        """Only Opus's native rates are accepted."""
        with self.assertRaises(CodecError):
            OpusDecoder(22050)


class ThreadTests(SynchronousTestCase):
    """Encoders (and decoders below 48 kHz) run FFmpeg filter graphs, which start no thread pools here."""

    def test_codecs_start_no_threads(self) -> None:
        """With FFmpeg's automatic thread count forced to 1, opening and using codecs adds no thread.

        Without it each graph starts a pool (two threads per encoder on two cores):
        threads and their memory for every call, again for every fresh encoder.
        """
        import os

        from twisted.trial.unittest import SkipTest

        from voiceedge.media import opus

        task = "/proc/self/task"
        if not os.path.isdir(task):
            raise SkipTest("needs Linux's /proc to count threads")
        self.assertTrue(opus._SINGLE_THREADED)
        before = len(os.listdir(task))
        codecs: list[object] = []
        for rate in RATES:
            encoder, decoder = OpusEncoder(rate, complexity=5), OpusDecoder(rate)
            decoder.decode(encoder.encode(sine(rate, 440, 0.02)))
            codecs += [encoder, decoder]
        self.assertEqual(len(os.listdir(task)), before)
