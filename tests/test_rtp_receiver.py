"""The RTP receiver: authentication, checks, statistics, then the sink."""

from __future__ import annotations

import collections

from twisted.trial.unittest import SynchronousTestCase

from tests.srtp_paths import PythonSrtpPath
from voiceedge.transceiver.dtls import AEAD_AES_128_GCM, SrtpKeys
from voiceedge.transceiver.rtp_receiver import RtpReceiver
from voiceedge.transceiver.srtp import SrtpSession
from voiceedge.wire.rtp import RtpPacket

KEY_A = bytes(range(28))
KEY_B = bytes(range(100, 128))
# A 20 ms CELT frame's TOC byte, then a few bytes of payload.
OPUS_20MS = bytes([0xFC, 0xFF, 0xFE])


class Sink:
    """An AudioSink that records what it is given."""

    def __init__(self) -> None:
        self.packets: list[tuple[int, int, bytes, float]] = []
        self.due: float | None = None
        self.drained: list[float] = []

    def packet_received(self, sequence_number: int, timestamp: int, payload: bytes, now: float) -> None:
        self.packets.append((sequence_number, timestamp, payload, now))

    def deadline(self) -> float | None:
        return self.due

    def drain(self, now: float) -> None:
        self.drained.append(now)
        self.due = None


def pair() -> tuple[SrtpSession, SrtpSession]:
    """The client's SRTP (protects) and ours (unprotects)."""
    profile = AEAD_AES_128_GCM.libsrtp_profile
    return SrtpSession(SrtpKeys(profile, KEY_A, KEY_B)), SrtpSession(SrtpKeys(profile, KEY_B, KEY_A))


class ReceiverTests(SynchronousTestCase):
    """What reaches the sink, and what is counted instead."""

    def setUp(self) -> None:
        self.client, ours = pair()
        self.sink = Sink()
        self.drops: collections.Counter[str] = collections.Counter()
        self.receiver = RtpReceiver(ours, 111, self.sink, 0.0, self.drops)

    def send(self, sequence: int, now: float, payload: bytes = OPUS_20MS, pt: int = 111, ssrc: int = 7) -> bool:
        packet = RtpPacket(pt, sequence, sequence * 960, ssrc, payload).serialize()
        return self.receiver.receive(self.client.protect_rtp(packet), now)

    def test_good_packets_reach_the_sink_with_statistics(self) -> None:
        for n in range(10):
            self.assertTrue(self.send(n + 1, n * 0.02))
        self.assertEqual([p[0] for p in self.sink.packets], list(range(1, 11)))
        self.assertEqual(self.receiver.stats.packets_received, 10)
        self.assertEqual(self.receiver.remote_ssrc, 7)
        self.assertEqual(self.receiver.first_packet_at, 0.0)

    def test_every_header_shape_reaches_the_sink_alike(self) -> None:
        """A plain header (the receiver's own fast path), a marker, CSRCs, a header extension
        (a browser's MID) and padding: the same fields reach the sink."""
        shapes = [
            RtpPacket(111, 1, 960, 7, OPUS_20MS),
            RtpPacket(111, 2, 1920, 7, OPUS_20MS, marker=True),
            RtpPacket(111, 3, 2880, 7, OPUS_20MS, csrcs=(1, 2)),
            RtpPacket(111, 4, 3840, 7, OPUS_20MS, extension_profile=0xBEDE, extension=b"\x10\x30\x00\x00"),
            RtpPacket(111, 5, 4800, 7, OPUS_20MS, padding_size=4),
        ]
        for n, packet in enumerate(shapes):
            self.assertTrue(self.receiver.receive(self.client.protect_rtp(packet.serialize()), n * 0.02))
        self.assertEqual(self.sink.packets, [(n + 1, (n + 1) * 960, OPUS_20MS, n * 0.02) for n in range(5)])
        self.assertEqual(self.drops, {})
        # Another payload type is dropped on either path.
        self.assertTrue(self.send(6, 0.1, pt=0))
        packet = RtpPacket(0, 7, 6720, 7, OPUS_20MS, csrcs=(1,)).serialize()
        self.assertTrue(self.receiver.receive(self.client.protect_rtp(packet), 0.12))
        self.assertEqual(self.drops, {"rtp_other_payload": 2})

    def test_forged_packets_are_not_liveness(self) -> None:
        forged = bytearray(self.client.protect_rtp(RtpPacket(111, 1, 0, 7, OPUS_20MS).serialize()))
        forged[-1] ^= 1
        self.assertFalse(self.receiver.receive(bytes(forged), 0.0))
        self.assertEqual(self.drops, {"srtp_auth": 1})
        self.assertEqual(self.sink.packets, [])

    def test_authentic_but_unusable_packets_count_as_liveness(self) -> None:
        """Another payload type or a malformed Opus packet is dropped, yet the peer is alive."""
        self.assertTrue(self.send(1, 0.0, pt=0))
        self.assertTrue(self.send(2, 0.0, payload=b""))
        self.assertTrue(self.send(3, 0.0, payload=bytes([3 << 3 | 1]) + b"\x00" * 40))  # 2 x 60 ms
        self.assertEqual(self.drops, {"rtp_other_payload": 1, "rtp_opus_malformed": 1, "rtp_opus_too_long": 1})
        self.assertEqual(self.sink.packets, [])

    def test_audio_beyond_real_time_is_dropped(self) -> None:
        for n in range(80):  # 1.6 s in one instant: 1 s of burst allowed
            self.send(n + 1, 0.0)
        self.assertEqual(self.drops["rtp_over_real_time"], 30)
        self.assertEqual(len(self.sink.packets), 50)

    def test_a_new_ssrc_starts_new_statistics(self) -> None:
        for n in range(5):
            self.send(n + 1, n * 0.02)
        for n in range(3):
            self.send(500 + n, 0.1 + n * 0.02, ssrc=9)
        self.assertEqual(self.receiver.remote_ssrc, 9)
        self.assertEqual(self.receiver.stats.packets_received, 3)

    def test_the_sink_deadline_is_the_receiver_deadline(self) -> None:
        self.assertIsNone(self.receiver.deadline())
        self.sink.due = 1.5
        self.assertEqual(self.receiver.deadline(), 1.5)
        self.receiver.handle_timeout(1.4)
        self.assertEqual(self.sink.drained, [])
        self.receiver.handle_timeout(1.5)
        self.assertEqual(self.sink.drained, [1.5])


# The same tests with every SrtpSession on the Python path (VOICEEDGE_SRTP_IO=python).


class PythonPathReceiverTests(PythonSrtpPath, ReceiverTests):
    """ReceiverTests with the SRTP I/O in Python."""
