"""The compiled SRTP I/O helper against the Python path: the same packets, fields, errors and counts."""

from __future__ import annotations

import gc
import os
import struct
import weakref
from typing import Any, Callable

from hypothesis import given, settings
from hypothesis import strategies as st
from pylibsrtp import Policy
from twisted.trial.unittest import SynchronousTestCase

from tests.cases import case
from tests.srtp_paths import require_compiled_srtp_io
from voiceedge.transceiver import srtp as srtp_module
from voiceedge.transceiver.dtls import SrtpKeys
from voiceedge.transceiver.rtp_sender import RtpSender, mid_extension
from voiceedge.transceiver.srtp import (
    SrtpAuthError,
    SrtpError,
    SrtpReplayError,
    SrtpSession,
    srtp_io_backend,
)
from voiceedge.wire.rtp import RtpError, RtpPacket

# Every profile this project can negotiate or configure, with its master key + salt length.
PROFILES = {
    "AES_CM_128_HMAC_SHA1_80": (Policy.SRTP_PROFILE_AES128_CM_SHA1_80, 30),
    "AES_CM_128_HMAC_SHA1_32": (Policy.SRTP_PROFILE_AES128_CM_SHA1_32, 30),
    "AEAD_AES_128_GCM": (Policy.SRTP_PROFILE_AEAD_AES_128_GCM, 28),
    "AEAD_AES_256_GCM": (Policy.SRTP_PROFILE_AEAD_AES_256_GCM, 44),
}
SSRC = 0x11223344
MID = mid_extension(4, "0")
# A 20 ms CELT frame's TOC byte, then some payload.
OPUS = bytes([0xFC]) + b"\x55" * 80


def session(name: str, io: str, sender: bool = True, **kwargs: Any) -> SrtpSession:
    """A session of profile ``name`` on path ``io``; senders and receivers have mirrored keys."""
    profile, length = PROFILES[name]
    a, b = bytes(range(length)), bytes(range(100, 100 + length))
    keys = SrtpKeys(profile, a, b) if sender else SrtpKeys(profile, b, a)
    return SrtpSession(keys, io=io, **kwargs)


def outcome(read: Callable[[bytes], Any], packet: bytes) -> tuple[Any, ...]:
    """What ``read`` made of ``packet``: its fields, or the error's type, reason and message."""
    try:
        return ("ok", read(packet))
    except SrtpError as exc:
        return (type(exc).__name__, exc.reason, str(exc))
    except RtpError as exc:
        return ("RtpError", str(exc))


def counts(session: SrtpSession) -> tuple[int, int, int, int]:
    return (session.replayed, session.auth_failed, session.malformed, session.ssrc_refused)


class CompiledAgainstPythonTests(SynchronousTestCase):
    """Both paths, for every profile: the same bytes out, the same fields in, each reads the other's."""

    def setUp(self) -> None:
        require_compiled_srtp_io()

    def test_write_rtp_is_byte_identical(self) -> None:
        """write_rtp on both paths gives the same SRTP packets: plain header, marker, the MID
        extension, an empty payload, the longest payload that fits; and it is protect_rtp of the
        header RtpPacket would build."""
        headers = [
            (111, 1, 960, b"", OPUS),
            (0x80 | 111, 2, 1920, b"", OPUS),
            (111, 3, 2880, MID, OPUS),
            (0x80 | 111, 4, 3840, MID, OPUS),
            (111, 5, 0xFFFFFFFF, b"", b""),
            (111, 0xFFFF, 4800, MID, b"\x01" * (1500 - 144 - 12 - len(MID))),
        ]
        for name in PROFILES:
            with case(name):
                compiled, python, reference = (session(name, io) for io in ("compiled", "python", "python"))
                for second, sequence, timestamp, extension, payload in headers:
                    packet = compiled.write_rtp(second, sequence, timestamp, SSRC, extension, payload)
                    self.assertEqual(packet, python.write_rtp(second, sequence, timestamp, SSRC, extension, payload))
                    plain = RtpPacket(
                        second & 0x7F, sequence, timestamp, SSRC, payload, marker=second > 0x7F,
                        extension_profile=0xBEDE if extension else None, extension=extension[4:],
                    ).serialize()
                    self.assertEqual(packet, reference.protect_rtp(plain))
                self.assertEqual(counts(compiled), (0, 0, 0, 0))

    def test_each_path_reads_the_others_packets(self) -> None:
        """Every header shape protected by either path reads the same on both: fields and payload."""
        shapes = [
            RtpPacket(111, 1, 960, SSRC, OPUS),
            RtpPacket(111, 2, 1920, SSRC, OPUS, marker=True),
            RtpPacket(111, 3, 2880, SSRC, OPUS, csrcs=(1, 2, 3)),
            RtpPacket(111, 4, 3840, SSRC, OPUS, extension_profile=0xBEDE, extension=b"\x10\x30\x00\x00"),
            RtpPacket(111, 5, 4800, SSRC, OPUS, padding_size=7),
            RtpPacket(96, 6, 5760, SSRC, b"", csrcs=(9,), extension_profile=0x1000, extension=b"\x00" * 8,
                      padding_size=1),
        ]
        for name in PROFILES:
            for writer in ("compiled", "python"):
                with case(f"{name} written by {writer}"):
                    tx = session(name, writer)
                    readers = [session(name, io, sender=False) for io in ("compiled", "python")]
                    for shape in shapes:
                        packet = tx.protect_rtp(shape.serialize())
                        expected = (shape.payload_type, shape.sequence_number, shape.timestamp, SSRC, shape.payload)
                        for reader in readers:
                            self.assertEqual(reader.read_rtp(packet), expected)
                    written = tx.write_rtp(111, 7, 6720, SSRC, MID, OPUS)
                    for reader in readers:
                        self.assertEqual(reader.read_rtp(written), (111, 7, 6720, SSRC, OPUS))
                        self.assertEqual(counts(reader), (0, 0, 0, 0))
                        self.assertEqual(reader.inbound_ssrcs, {SSRC})

    def test_replay_auth_and_ssrc_refusals_are_classified_and_counted_alike(self) -> None:
        """A replay, a forged tag, an SSRC beyond the learned bound, a forged first packet of a
        new SSRC: the same error, reason, message and counters on both paths."""
        for name in PROFILES:
            with case(name):
                tx = session(name, "python")
                good = [tx.write_rtp(111, n, n * 960, SSRC, b"", OPUS) for n in range(1, 4)]
                forged = bytearray(tx.write_rtp(111, 9, 9 * 960, SSRC, b"", OPUS))
                forged[-1] ^= 1
                other = tx.write_rtp(111, 1, 0, 0xABCDEF01, b"", OPUS)
                forged_other = bytearray(tx.write_rtp(111, 2, 0, 0xABCDEF02, b"", OPUS))
                forged_other[20] ^= 1
                inputs = [good[0], good[0], good[2], good[1], bytes(forged), bytes(forged_other), other, other]
                results = []
                for io in ("compiled", "python"):
                    reader = session(name, io, sender=False, max_learned=2)
                    results.append(([outcome(reader.read_rtp, p) for p in inputs], counts(reader),
                                    reader.inbound_ssrcs))
                self.assertEqual(results[0], results[1])
                outcomes, counted, ssrcs = results[0]
                self.assertEqual(outcomes[1][0], SrtpReplayError.__name__)
                self.assertEqual(outcomes[4][0], SrtpAuthError.__name__)
                self.assertEqual(outcomes[5][0], SrtpAuthError.__name__)
                self.assertEqual(outcomes[6][0], "ok")
                self.assertEqual(outcomes[7][0], SrtpReplayError.__name__)
                self.assertEqual(counted, (2, 2, 0, 0))
                self.assertEqual(ssrcs, {SSRC, 0xABCDEF01})
                # The bound reached (two learned), a third SSRC is refused alike.
                third = tx.write_rtp(111, 1, 0, 0x55555555, b"", OPUS)
                refused = []
                for io in ("compiled", "python"):
                    reader = session(name, io, sender=False, max_learned=2)
                    refused.append([outcome(reader.read_rtp, p) for p in (good[0], other, third)] + [counts(reader)])
                self.assertEqual(refused[0], refused[1])
                self.assertEqual(refused[0][2][1], "ssrc")

    def test_hostile_inputs_give_the_same_errors(self) -> None:
        """Short, wrong version, a CSRC count past the end, a truncated extension, padding larger
        than the packet (authenticated, so only the parse can refuse it), over-long: the same
        error and the same counts on both paths, and nothing else raised."""
        for name in PROFILES:
            with case(name):
                tx = session(name, "python")
                good = tx.write_rtp(111, 1, 960, SSRC, b"", OPUS)
                header = struct.pack("!BBHII", 0x80, 111, 2, 1920, SSRC)
                hostile = [
                    b"",
                    b"\x80",
                    good[:12],
                    good[:20],
                    b"\x40" + good[1:],
                    b"\xc0" + good[1:],
                    b"\x8f" + good[1:],  # CSRC count past the end (of what is authenticated)
                    b"\x90" + good[1:],  # an extension header that is not there
                    b"\xa0" + good[1:],  # padding the tag does not cover
                    good + b"\x00" * 1600,  # over-long
                    b"\x80" * 1501,
                    os.urandom(200),
                ]
                # Authenticated packets that do not parse: padding larger than the packet,
                # a padding count of zero, an extension longer than the packet.
                for plain in (
                    b"\xa0" + header[1:] + OPUS + b"\xff",
                    b"\xa0" + header[1:] + OPUS + b"\x00",
                    b"\x8f" + header[1:] + OPUS,
                    b"\x90" + header[1:] + b"\xbe\xde\x00\x40" + OPUS,
                ):
                    try:
                        hostile.append(tx.protect_rtp(plain))
                    except SrtpError:
                        pass  # libsrtp refuses to protect it: nothing to read
                results = []
                for io in ("compiled", "python"):
                    reader = session(name, io, sender=False)
                    results.append(([outcome(reader.read_rtp, p) for p in hostile], counts(reader)))
                self.assertEqual(results[0], results[1])
                outcomes = results[0][0]
                self.assertIn(("RtpError", "RTP padding count is invalid"), outcomes)
                self.assertIn(("SrtpError", "malformed", "malformed: packet is too long"), outcomes)
                self.assertIn(("SrtpError", "malformed", "malformed: too short for SRTP"), outcomes)

    @settings(max_examples=200, deadline=None)
    @given(
        name=st.sampled_from(sorted(PROFILES)),
        flips=st.lists(st.tuples(st.integers(0, 120), st.integers(1, 255)), max_size=3),
        cut=st.integers(0, 140),
        noise=st.binary(max_size=1600),
    )
    def test_mutated_and_random_packets_give_the_same_outcome(
        self, name: str, flips: list[tuple[int, int]], cut: int, noise: bytes
    ) -> None:
        """A real packet with bytes flipped and cut short, and random bytes: the same outcome."""
        tx = session(name, "python")
        packet = bytearray(tx.write_rtp(111, 1, 960, SSRC, MID, OPUS))
        for position, mask in flips:
            if position < len(packet):
                packet[position] ^= mask
        inputs = [bytes(packet[: len(packet) - cut]), noise, bytes(packet)]
        results = []
        for io in ("compiled", "python"):
            reader = session(name, io, sender=False)
            results.append(([outcome(reader.read_rtp, p) for p in inputs], counts(reader)))
        self.assertEqual(results[0], results[1])

    def test_write_errors_are_counted_alike(self) -> None:
        """A packet that would not fit with its trailer, and an index protected twice: the same error and count."""
        for name in PROFILES:
            with case(name):
                results = []
                for io in ("compiled", "python"):
                    tx = session(name, io)
                    found = []
                    for payload in (b"\x01" * (1500 - 144 - 11), b"\x01" * 70000):
                        found.append(outcome(lambda p: tx.write_rtp(111, 1, 0, SSRC, b"", p), payload))
                    tx.write_rtp(111, 2, 0, SSRC, b"", OPUS)
                    found.append(outcome(lambda p: tx.write_rtp(111, 2, 0, SSRC, b"", p), OPUS))
                    results.append((found, counts(tx)))
                self.assertEqual(results[0], results[1])
                self.assertEqual(results[0][0][0], ("SrtpError", "malformed", "malformed: packet is too long"))
                self.assertEqual(results[0][0][2][1], "replay")

    def test_senders_packets_are_byte_identical(self) -> None:
        """An RtpSender with write_rtp on either path sends what protect_rtp of its plain packets is."""
        for name in PROFILES:
            with case(name):
                sent = []
                for io in ("compiled", "python", None):
                    tx = session(name, io or "python")
                    source = FrameQueue([OPUS] * 5 + [b""] + [OPUS] * 3)
                    sender = RtpSender(
                        111, SSRC, source, 0.0, header_extension=MID, sequence_number=65533, timestamp_base=5,
                        write_rtp=tx.write_rtp if io else None,
                    )
                    packets = [p for n in range(10) for p in sender.poll(n * 0.02)]
                    sent.append(packets if io else [tx.protect_rtp(p) for p in packets])
                self.assertEqual(len(sent[0]), 8)
                self.assertEqual(sent[0], sent[1])
                self.assertEqual(sent[0], sent[2])


class FrameQueue:
    """An AudioSource of ready frames."""

    def __init__(self, frames: list[bytes]) -> None:
        self.frames = list(frames)

    def pop(self) -> bytes | None:
        return self.frames.pop(0) if self.frames else None

    def __bool__(self) -> bool:
        return bool(self.frames)

    def cut(self, ending: bool) -> tuple[int, list[bytes]]:
        dropped = 20 * len(self.frames)
        self.frames.clear()
        return dropped, []

    def restart(self) -> None:
        pass

    def queued_ms(self) -> int:
        return 20 * len(self.frames)


class LifetimeTests(SynchronousTestCase):
    """The helper keeps libsrtp's contexts alive for as long as it can be called."""

    def setUp(self) -> None:
        require_compiled_srtp_io()

    def test_contexts_outlive_every_other_reference(self) -> None:
        """Only the bound read_rtp and write_rtp kept, the sessions collected: they still work,
        and a failure is still an SrtpError (the session that would count it is gone)."""
        for name in PROFILES:
            with case(name):
                tx = session(name, "compiled")
                rx = session(name, "compiled", sender=False, offered_ssrcs=[SSRC])
                write, read = tx.write_rtp, rx.read_rtp
                gone = weakref.ref(tx), weakref.ref(rx)
                del tx, rx
                gc.collect()
                self.assertEqual([r() for r in gone], [None, None])
                # Allocate and free libsrtp contexts meanwhile: freed memory would be reused.
                for _ in range(20):
                    session(name, "compiled").write_rtp(111, 1, 0, SSRC, b"", OPUS)
                gc.collect()
                packet = write(111, 1, 960, SSRC, MID, OPUS)
                self.assertEqual(read(packet), (111, 1, 960, SSRC, OPUS))
                with self.assertRaises(SrtpError):
                    read(packet)  # a replay, reported without the session
                with self.assertRaises(SrtpError):
                    write(111, 1, 960, SSRC, MID, OPUS)

    def test_a_session_is_freed_without_the_cycle_collector(self) -> None:
        """The helper refers to its session weakly: the session goes when its last reference does."""
        gc.disable()
        self.addCleanup(gc.enable)
        rx = session("AEAD_AES_128_GCM", "compiled", sender=False)
        gone = weakref.ref(rx)
        del rx
        self.assertIsNone(gone())

    def test_bad_construction_is_refused(self) -> None:
        """A NULL address or a bound outside the buffer is a clear error, before any use."""
        from voiceedge.transceiver import _srtpio

        def noop(code: int, packet: bytes | None) -> None:
            return None

        with self.assertRaises(ValueError):
            _srtpio.RtpIo(0, 0, 0, 0, (), noop, 16, 1356)
        with self.assertRaises(ValueError):
            _srtpio.RtpIo(1, 1, 1, 1, (), noop, 16, 1501)
        with self.assertRaises(TypeError):
            _srtpio.RtpIo(1, 1, 1, 1, (), None, 16, 1356)
        with self.assertRaises(RuntimeError):
            _srtpio.RtpIo.__new__(_srtpio.RtpIo).read_rtp(b"\x80" * 40)


class BackendChoiceTests(SynchronousTestCase):
    """Which path a session takes, and how an operator turns the helper off."""

    def test_environment_turns_the_helper_off(self) -> None:
        previous = os.environ.get("VOICEEDGE_SRTP_IO")
        self.addCleanup(
            lambda: os.environ.pop("VOICEEDGE_SRTP_IO", None)
            if previous is None
            else os.environ.__setitem__("VOICEEDGE_SRTP_IO", previous)
        )
        os.environ["VOICEEDGE_SRTP_IO"] = "python"
        self.assertEqual(srtp_io_backend(), "python")
        self.assertEqual(session("AEAD_AES_128_GCM", None).io, "python")  # type: ignore[arg-type]
        del os.environ["VOICEEDGE_SRTP_IO"]
        expected = "python" if srtp_module._srtpio is None else "compiled"
        self.assertEqual(srtp_io_backend(), expected)
        self.assertEqual(session("AEAD_AES_128_GCM", None).io, expected)  # type: ignore[arg-type]

    def test_the_compiled_path_is_one_call(self) -> None:
        """On the compiled path the session's read_rtp and write_rtp are the helper's own methods."""
        require_compiled_srtp_io()
        compiled = session("AEAD_AES_128_GCM", "compiled")
        self.assertEqual(compiled.io, "compiled")
        self.assertIs(type(compiled.read_rtp.__self__), srtp_module._srtpio.RtpIo)  # type: ignore[attr-defined]
        self.assertIs(type(compiled.write_rtp.__self__), srtp_module._srtpio.RtpIo)  # type: ignore[attr-defined]
        python = session("AEAD_AES_128_GCM", "python")
        self.assertIsInstance(python.read_rtp.__self__, SrtpSession)  # type: ignore[attr-defined]

    def test_without_the_helper_the_python_path_and_a_warning(self) -> None:
        """Where the helper is not built: sessions take the Python path, the log warns, and asking
        for the compiled path is a clear error."""
        from twisted.logger import Logger, LogLevel

        self.patch(srtp_module, "_srtpio", None)
        self.assertEqual(srtp_io_backend(), "python")
        self.assertEqual(session("AEAD_AES_128_GCM", None).io, "python")  # type: ignore[arg-type]
        with self.assertRaises(ValueError):
            session("AEAD_AES_128_GCM", "compiled")
        events: list[dict[str, Any]] = []
        self.assertEqual(srtp_module.log_srtp_io_backend(Logger(observer=events.append)), "python")
        self.assertEqual([e["log_level"] for e in events], [LogLevel.warn])
        self.assertIn("not built", events[0]["log_format"])

    def test_unknown_path_is_refused(self) -> None:
        with self.assertRaises(ValueError):
            session("AEAD_AES_128_GCM", "fast")


class OperatorTests(SynchronousTestCase):
    """An operator sees which path runs: a line in the log at start, a gauge in /metrics."""

    def test_start_logs_and_metrics_show_the_path(self) -> None:
        from twisted.logger import globalLogPublisher

        from tests.test_host import make_transceiver, started_clock

        for forced in (None, "python"):
            with case(f"VOICEEDGE_SRTP_IO={forced}"):
                previous = os.environ.pop("VOICEEDGE_SRTP_IO", None)
                self.addCleanup(
                    lambda previous=previous: os.environ.pop("VOICEEDGE_SRTP_IO", None)
                    if previous is None
                    else os.environ.__setitem__("VOICEEDGE_SRTP_IO", previous)
                )
                if forced is not None:
                    os.environ["VOICEEDGE_SRTP_IO"] = forced
                expected = srtp_io_backend()
                lines: list[str] = []

                def observe(event: dict[str, Any]) -> None:
                    fmt = event.get("log_format") or ""
                    if "SRTP and RTP headers" in fmt:
                        lines.append(fmt)

                globalLogPublisher.addObserver(observe)
                try:
                    transceiver, _ = make_transceiver(started_clock())
                finally:
                    globalLogPublisher.removeObserver(observe)
                self.addCleanup(transceiver.stop)
                self.assertEqual(len(lines), 1)
                self.assertIn("compiled" if expected == "compiled" else "in Python", lines[0])
                gauges = [
                    (labels, value)
                    for _, name, _, labels, value in transceiver.metrics()
                    if name == "voiceedge_transceiver_srtp_io"
                ]
                self.assertEqual(gauges, [({"backend": expected}, 1)])
