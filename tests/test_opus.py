# -*- test-case-name: tests.test_opus -*-
"""Tests for voiceedge.media.opus: Opus decode/encode, concealment, errors."""

from __future__ import annotations

import array
import gc
import math
import os
import subprocess
import sys
from fractions import Fraction

from av import AudioFrame, CodecContext
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tests.cases import case, rel
from tests.signals import speech_like

from voiceedge.media.opus import (
    RTP_CLOCK_RATE,
    RTP_TIMESTAMP_STEP,
    SUPPORTED_RATES,
    CodecError,
    OpusDecoder,
    OpusEncoder,
    OpusUnavailable,
    libopus_version,
    live_coders,
    load_libopus,
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


def snr(reference: bytes, signal: bytes) -> float:
    """Signal-to-noise ratio of ``signal`` against ``reference`` (PCM16), in dB."""
    ref, got = samples_of(reference), samples_of(signal)
    noise = sum((x - y) ** 2 for x, y in zip(ref, got)) or 1
    return 10 * math.log10(sum(x * x for x in ref) / noise)


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

    def test_reset_is_a_fresh_coder(self) -> None:
        """After reset() an encoder codes, and a decoder decodes and conceals, as freshly made ones do."""
        frames = speech_like(16000, 6)
        used, fresh = OpusEncoder(16000), OpusEncoder(16000)
        payloads = [used.encode(frame) for frame in frames]
        used.reset()
        self.assertEqual([used.encode(frame) for frame in frames[:3]], [fresh.encode(frame) for frame in frames[:3]])
        decoder = OpusDecoder(16000)
        for payload in payloads:
            decoder.decode(payload)
        decoder.reset()
        self.assertEqual(decoder.conceal(), bytes(640))
        self.assertEqual(decoder.decode(payloads[0]), OpusDecoder(16000).decode(payloads[0]))

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

    def test_decode_fec_recovers_a_lost_frame_better_than_concealment(self) -> None:
        """With in-band FEC on, the next packet's redundant copy of a lost frame is far closer to it than PLC.

        Measured against what the listener hears with no loss (the same payloads
        decoded without the gap), for voiced frames of a speech-like signal (a
        frame too quiet for the encoder to protect gets no redundancy: frames
        8 and 9 of this signal are concealed either way).
        """
        self.assertIs(OpusDecoder.supports_fec, True)
        for rate in RATES:
            frames = speech_like(rate, 18)
            encoder = OpusEncoder(rate, packet_loss_percent=20)
            payloads = [encoder.encode(frame) for frame in frames]
            clean = OpusDecoder(rate)
            heard = [clean.decode(payload) for payload in payloads]
            for lost in (6, 13):
                with case(f"{rate} Hz, frame {lost} lost"):
                    with_fec, with_plc = OpusDecoder(rate), OpusDecoder(rate)
                    for payload in payloads[:lost]:
                        with_fec.decode(payload)
                        with_plc.decode(payload)
                    recovered = with_fec.decode_fec(payloads[lost + 1])
                    concealed = with_plc.conceal()
                    self.assertEqual(len(recovered), len(heard[lost]))
                    fec_snr, plc_snr = snr(heard[lost], recovered), snr(heard[lost], concealed)
                    self.assertGreater(fec_snr, 12.0)
                    self.assertGreater(fec_snr, plc_snr + 8.0)
                    # The stream goes on: the next packet decodes as usual after its FEC.
                    self.assertEqual(len(with_fec.decode(payloads[lost + 1])), rate // 50 * 2)

    def test_decode_fec_without_fec_in_the_stream_conceals(self) -> None:
        """No redundancy in the next packet (the sender has FEC off): decode_fec is libopus's PLC."""
        frames = speech_like(16000, 12)
        encoder = OpusEncoder(16000)
        payloads = [encoder.encode(frame) for frame in frames]
        with_fec, with_plc = OpusDecoder(16000), OpusDecoder(16000)
        for payload in payloads[:10]:
            with_fec.decode(payload)
            with_plc.decode(payload)
        self.assertEqual(with_fec.decode_fec(payloads[11]), with_plc.conceal())

    def test_decoders_share_their_output_buffer_and_keep_their_own_audio(self) -> None:
        """Two streams decoded in turn through the one buffer per rate: each gets exactly what it would alone."""
        rate = 48000
        a = [OpusEncoder(rate).encode(frame) for frame in speech_like(rate, 5)]
        b = [OpusEncoder(rate).encode(sine(rate, 440.0, 0.02)) for _ in range(5)]
        alone_a, alone_b = OpusDecoder(rate), OpusDecoder(rate)
        expected = [(alone_a.decode(x), alone_b.decode(y)) for x, y in zip(a, b)]
        one, other = OpusDecoder(rate), OpusDecoder(rate)
        self.assertIs(one._view, other._view)
        got = [(one.decode(x), other.decode(y)) for x, y in zip(a, b)]
        self.assertEqual(got, expected)

    def test_carries_fec_tells_whether_a_packet_has_the_copy(self) -> None:
        """libopus 1.5+ (PyAV's) tells a packet with an LBRR copy from one without; older ones cannot (None)."""
        frames = speech_like(16000, 4)
        with_fec, without = OpusEncoder(16000, packet_loss_percent=20), OpusEncoder(16000)
        decoder = OpusDecoder(16000)
        if decoder._lib.packet_has_lbrr is None:
            self.assertIsNone(decoder.carries_fec(without.encode(frames[0])))
            raise SkipTest(f"{libopus_version()} cannot tell (libopus 1.5 and later can)")
        fec = [with_fec.encode(frame) for frame in frames]
        plain = [without.encode(frame) for frame in frames]
        # The first packet has no frame before it to carry.
        self.assertEqual([decoder.carries_fec(p) for p in fec[1:]], [True] * 3)
        self.assertEqual([decoder.carries_fec(p) for p in plain], [False] * 4)
        celt = OpusEncoder(48000, application="lowdelay", packet_loss_percent=20).encode(bytes(1920))
        for payload in (celt, b"", b"\x03\x00", b"\x0b\x03" + bytes(10)):
            self.assertIs(decoder.carries_fec(payload), False)

    def test_decode_fec_of_a_malformed_next_packet_conceals(self) -> None:
        """A malformed next payload is not this frame's problem: it is concealed, and decode() reports the payload."""
        for bad in (b"", b"\x03\x00", b"\x1b\x03" + bytes(10), b"\x0b\x03" + bytes(10)):
            with case(repr(bad)):
                decoder = OpusDecoder(24000)
                decoder.decode(OpusEncoder(24000).encode(sine(24000, 440.0, 0.02)))
                self.assertEqual(len(decoder.decode_fec(bad)), 960)
                with self.assertRaises(CodecError):
                    decoder.decode(bad)


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

    def test_packets_over_120_ms_are_refused_before_libopus(self) -> None:
        """Code 3 packets claiming more than 120 ms, or 63 frames, or none, raise CodecError; the decoder goes on."""
        twenty_silk, sixty_silk, two_and_half_celt = 1 << 3, 3 << 3, 16 << 3
        hostile = [
            bytes([sixty_silk | 3, 3]) + bytes(30),  # 3 x 60 ms = 180 ms
            bytes([twenty_silk | 3, 7]) + bytes(60),  # 7 x 20 ms = 140 ms
            bytes([two_and_half_celt | 3, 63]) + bytes(200),  # 63 frames: 157.5 ms
            bytes([twenty_silk | 3, 0x80 | 0x40 | 6]) + b"\xff" * 40,  # VBR, padded, 120 ms of nothing
            bytes([twenty_silk | 3, 0]),  # no frames
            bytes([twenty_silk | 3]),  # no frame count
            bytes([twenty_silk | 1]) + bytes(3),  # code 1 (two equal frames) of odd length
            bytes([twenty_silk | 2, 252]),  # code 2: a first frame longer than the packet
        ]
        encoder = OpusEncoder(16000)
        for payload in hostile:
            with case(payload[:4].hex()):
                decoder = OpusDecoder(16000)
                with self.assertRaises(CodecError):
                    decoder.decode(payload)
                self.assertEqual(len(decoder.decode(encoder.encode(bytes(640)))), 640)

    def test_packets_of_120_ms_decode(self) -> None:
        """The longest legal packet, 120 ms (code 3, 6 x 20 ms of DTX), decodes to 120 ms at every rate."""
        for rate in SUPPORTED_RATES:
            with case(f"{rate} Hz"):
                self.assertEqual(len(OpusDecoder(rate).decode(bytes([1 << 3 | 3, 6]))), rate * 120 // 1000 * 2)

    @settings(max_examples=300, deadline=None)
    @given(st.binary(min_size=0, max_size=200), st.sampled_from(RATES))
    def test_random_next_payload_gives_one_frame(self, payload: bytes, rate: int) -> None:
        """decode_fec on hostile bytes gives exactly one 20 ms frame, never an error, and the decoder goes on."""
        decoder = OpusDecoder(rate)
        self.assertEqual(len(decoder.decode_fec(payload)), rate // 50 * 2)
        try:
            decoder.decode(payload)
        except CodecError:
            pass
        self.assertEqual(len(decoder.conceal()), rate // 50 * 2)

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


class LibopusTests(SynchronousTestCase):
    """Which libopus is loaded, and that the media path does without PyAV and FFmpeg."""

    def test_no_ffmpeg_in_the_process(self) -> None:
        """Encoding and decoding import neither PyAV nor FFmpeg: the server process carries none of it."""
        code = (
            "import sys\n"
            "from voiceedge.media.opus import OpusDecoder, OpusEncoder, libopus_version\n"
            "OpusDecoder(16000).decode(OpusEncoder(16000).encode(bytes(640)))\n"
            "maps = open('/proc/self/maps').read() if sys.platform == 'linux' else ''\n"
            "print('av' in sys.modules, 'libavcodec' in maps, libopus_version())\n"
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        self.assertTrue(out.startswith("False False libopus "), out)

    def test_system_libopus_works_too(self) -> None:
        """Pointed at the system's libopus (Debian's libopus0, older), the coders and FEC work the same."""
        import ctypes.util

        from twisted.trial.unittest import SkipTest

        system = ctypes.util.find_library("opus")
        if system is None:
            raise SkipTest("no system libopus (Debian: apt-get install libopus0)")
        code = (
            "from voiceedge.media.opus import OpusDecoder, OpusEncoder, libopus_version\n"
            "e, d = OpusEncoder(16000, packet_loss_percent=10), OpusDecoder(16000)\n"
            "p = [e.encode(bytes(640)) for _ in range(3)]\n"
            "d.decode(p[0])\n"
            "print(len(d.decode_fec(p[2])), len(d.decode(p[2])), len(d.conceal()), d.carries_fec(p[2]) is not False,"
            " libopus_version())\n"
        )
        env = dict(os.environ, VOICEEDGE_LIBOPUS=system)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout
        # carries_fec: True from 1.5 (the packet has the copy), None before (cannot tell); never False here.
        self.assertTrue(out.startswith(f"640 640 640 True libopus "), out)
        self.assertIn(f"({system})", out)

    def test_no_libopus_is_a_clear_error(self) -> None:
        """With nowhere to load libopus from, OpusUnavailable names what to install and each place tried."""
        with self.assertRaises(OpusUnavailable) as raised:
            load_libopus([])
        self.assertIn("pip install av", str(raised.exception))
        with self.assertRaises(OpusUnavailable) as raised:
            load_libopus([self.mktemp()])
        self.assertIn("tried", str(raised.exception))

    def test_coders_are_freed(self) -> None:
        """10,000 encoders and decoders made and dropped: none stays alive, and RSS does not grow."""
        statm = "/proc/self/statm"

        def rss() -> int:
            if not os.path.exists(statm):
                return 0
            with open(statm) as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

        def churn(count: int) -> None:
            for i in range(count):
                rate = RATES[i % len(RATES)]
                encoder, decoder = OpusEncoder(rate, complexity=0), OpusDecoder(rate)
                if i % 100 == 0:
                    decoder.decode(encoder.encode(bytes(encoder.frame_samples * 2)))

        gc.collect()
        live = live_coders()
        churn(500)  # the allocator's arenas settle
        before = rss()
        churn(5000)
        gc.collect()
        self.assertEqual(live_coders(), live)
        # Leaked, 10,000 coders would hold about 200 MB (libopus states of 10-30 kB).
        self.assertLess(rss() - before, 4 << 20)
