"""Unit tests of the parts an SCTP association is made of: TSN arithmetic, RTO, State Cookie,
the receiving and sending halves, and stream reconfiguration, each on its own."""

from __future__ import annotations

import hashlib
import hmac

from twisted.trial.unittest import SynchronousTestCase

from voiceedge.transceiver.sctp_cookie import COOKIE_SIZE, StateCookie
from voiceedge.transceiver.sctp_events import DataReceived, StreamsReset
from voiceedge.transceiver.sctp_reconfig import (
    RESULT_BAD_SEQUENCE,
    RESULT_DENIED,
    RESULT_IN_PROGRESS,
    RESULT_PERFORMED,
    StreamReconfiguration,
)
from voiceedge.transceiver.sctp_receiver import SctpReceiver
from voiceedge.transceiver.sctp_rto import RtoEstimator
from voiceedge.transceiver.sctp_sender import SctpSender
from voiceedge.transceiver.sctp_tsn import unwrap_tsn
from voiceedge.wire import sctp_chunks as sc
from voiceedge.wire.sctp_chunks import (
    AddStreamsRequest,
    Chunk,
    DataChunk,
    IncomingResetRequest,
    OutgoingResetRequest,
    ReconfigChunk,
    ReconfigResponse,
    SackChunk,
    build_packet,
    parse_packet,
)

MTU = 1188
# What one full DATA chunk carries at the default packet size.
FRAGMENT = (MTU - sc.COMMON_HEADER_SIZE - sc.DATA_HEADER_SIZE) & ~3


def parse_chunk(encoded: bytes) -> Chunk:
    """Decode one encoded chunk (through a packet, as the codec reads them)."""
    chunks = parse_packet(build_packet(5000, 5000, 1, [encoded])).chunks
    assert len(chunks) == 1
    return chunks[0]


def parse_sack(encoded: bytes) -> SackChunk:
    """Decode one SACK chunk."""
    chunk = parse_chunk(encoded)
    assert isinstance(chunk, SackChunk)
    return chunk


def reconfig_params(chunks: list[bytes]) -> list[sc.ReconfigParam]:
    """The parameters of RE-CONFIG chunks, in order."""
    params: list[sc.ReconfigParam] = []
    for encoded in chunks:
        chunk = parse_chunk(encoded)
        assert isinstance(chunk, ReconfigChunk)
        params.extend(chunk.params)
    return params


class UnwrapTsnTests(SynchronousTestCase):
    """32-bit TSNs map to the unbounded integer nearest a reference."""

    def test_near_reference(self) -> None:
        """A TSN just above or below the reference keeps its distance."""
        reference = (5 << 32) + 1000
        self.assertEqual(unwrap_tsn(1003, reference), reference + 3)
        self.assertEqual(unwrap_tsn(990, reference), reference - 10)

    def test_across_the_wrap(self) -> None:
        """Past 2**32 - 1 the next TSN is 0, one higher; and back."""
        reference = (1 << 32) + 0xFFFFFFFE
        self.assertEqual(unwrap_tsn(1, reference), reference + 3)
        self.assertEqual(unwrap_tsn(0xFFFFFFFE, (2 << 32) + 1), reference)

    def test_half_range_boundary(self) -> None:
        """A distance of exactly 2**31 counts as behind (RFC 1982 leaves it undefined)."""
        self.assertEqual(unwrap_tsn(1 << 31, 1 << 32), (1 << 32) - (1 << 31))


class RtoEstimatorTests(SynchronousTestCase):
    """RFC 9260 §6.3.1 computation and back-off."""

    def test_first_sample(self) -> None:
        """SRTT = R, RTTVAR = R/2, RTO = SRTT + 4 RTTVAR, clamped to the minimum."""
        rto = RtoEstimator(1.0, 0.2, 60.0)
        rto.measure(0.1)
        self.assertEqual(rto.srtt, 0.1)
        self.assertAlmostEqual(rto.rttvar, 0.05)
        self.assertAlmostEqual(rto.rto, 0.3)
        small = RtoEstimator(1.0, 0.2, 60.0)
        small.measure(0.01)
        self.assertEqual(small.rto, 0.2)

    def test_later_sample(self) -> None:
        """Later samples are smoothed with alpha 1/8 and beta 1/4."""
        rto = RtoEstimator(1.0, 0.2, 60.0)
        rto.measure(0.1)
        rto.measure(0.5)
        self.assertAlmostEqual(rto.rttvar, 0.75 * 0.05 + 0.25 * 0.4)
        self.assertAlmostEqual(rto.srtt or 0.0, 0.875 * 0.1 + 0.125 * 0.5)
        self.assertAlmostEqual(rto.rto, (rto.srtt or 0.0) + 4 * rto.rttvar)

    def test_negative_sample_ignored(self) -> None:
        """A negative RTT (a clock that went back) changes nothing."""
        rto = RtoEstimator(1.0, 0.2, 60.0)
        rto.measure(-0.5)
        self.assertIsNone(rto.srtt)
        self.assertEqual(rto.rto, 1.0)

    def test_back_off_and_clear(self) -> None:
        """Back-off doubles up to the maximum; clearing it returns to the last computed RTO."""
        rto = RtoEstimator(1.0, 0.2, 3.0)
        rto.measure(0.1)
        rto.back_off()
        self.assertAlmostEqual(rto.rto, 0.6)
        for _ in range(5):
            rto.back_off()
        self.assertEqual(rto.rto, 3.0)
        rto.clear_back_off()
        self.assertAlmostEqual(rto.rto, 0.3)


class StateCookieTests(SynchronousTestCase):
    """The State Cookie opens only with its secret, intact."""

    cookie = StateCookie(12.5, 0x11111111, 0x22222222, 0xFFFFFFF0, 65536, 1024, 2048, True)

    def test_round_trip(self) -> None:
        """What is sealed opens to the same fields."""
        sealed = self.cookie.seal(b"s" * 32)
        self.assertEqual(len(sealed), COOKIE_SIZE)
        self.assertEqual(StateCookie.open(b"s" * 32, sealed), self.cookie)
        plain = StateCookie(0.0, 1, 2, 3, 4, 5, 6, False)
        self.assertEqual(StateCookie.open(b"k", plain.seal(b"k")), plain)

    def test_tampered_or_foreign(self) -> None:
        """A changed byte, another secret or another size: None."""
        sealed = self.cookie.seal(b"s" * 32)
        for i in (0, 9, len(sealed) - 1):
            tampered = sealed[:i] + bytes([sealed[i] ^ 1]) + sealed[i + 1 :]
            self.assertIsNone(StateCookie.open(b"s" * 32, tampered), i)
        self.assertIsNone(StateCookie.open(b"t" * 32, sealed))
        self.assertIsNone(StateCookie.open(b"s" * 32, sealed + b"\0"))
        self.assertIsNone(StateCookie.open(b"s" * 32, b""))

    def test_other_version(self) -> None:
        """A correctly signed cookie of another layout version is refused."""
        body = b"\x02" + self.cookie.seal(b"s")[1 : COOKIE_SIZE - 16]
        mac = hmac.new(b"s", body, hashlib.sha256).digest()[:16]
        self.assertIsNone(StateCookie.open(b"s", body + mac))


def data(tsn: int, payload: bytes = b"x", *, sid: int = 1, ssn: int = 0, unordered: bool = False,
         begin: bool = True, end: bool = True) -> DataChunk:
    """A DATA chunk with PPID 51."""
    return DataChunk(tsn & 0xFFFFFFFF, sid, ssn, 51, payload, unordered, begin, end)


class SctpReceiverTests(SynchronousTestCase):
    """Inbound DATA: cumulative TSN, gaps, reassembly, ordered delivery, window and SACK timing."""

    def receiver(self, initial_tsn: int = 100, window: int = 10_000) -> SctpReceiver:
        """A receiver expecting TSN ``initial_tsn`` first."""
        receiver = SctpReceiver(window, 0.2)
        receiver.start(initial_tsn)
        return receiver

    def test_in_order(self) -> None:
        """Whole messages are delivered at once; the SACK acks them with the window back."""
        rx = self.receiver()
        self.assertEqual(rx.on_data(data(100, b"a")), [DataReceived(1, 51, b"a")])
        self.assertEqual(rx.on_data(data(101, b"b", ssn=1)), [DataReceived(1, 51, b"b")])
        self.assertFalse(rx.sack_due(sending_data=False))
        sack = parse_sack(rx.build_sack())
        self.assertEqual((sack.cumulative_tsn, sack.a_rwnd, sack.gaps, sack.duplicates), (101, 10_000, (), ()))

    def test_gap_reported_at_once(self) -> None:
        """Out-of-order DATA makes a SACK due now, with gap blocks relative to the cumulative TSN."""
        rx = self.receiver()
        rx.on_data(data(100, ssn=0))
        rx.on_data(data(102, ssn=2, sid=2, unordered=True))
        rx.on_data(data(103, ssn=3, sid=2, unordered=True))
        rx.on_data(data(106, sid=3))
        self.assertTrue(rx.sack_due(sending_data=False))
        sack = parse_sack(rx.build_sack())
        self.assertEqual(sack.cumulative_tsn, 100)
        self.assertEqual(sack.gaps, ((2, 3), (6, 6)))
        self.assertFalse(rx.sack_due(sending_data=False))

    def test_duplicates(self) -> None:
        """A TSN seen before is reported once in the next SACK and makes it due."""
        rx = self.receiver()
        rx.on_data(data(100))
        rx.build_sack()
        self.assertEqual(rx.on_data(data(100)), [])
        self.assertTrue(rx.sack_due(sending_data=False))
        self.assertEqual(parse_sack(rx.build_sack()).duplicates, (100,))
        self.assertEqual(parse_sack(rx.build_sack()).duplicates, ())

    def test_ordered_waits_for_earlier_ssn(self) -> None:
        """A later SSN is held until the earlier one completes; then both go, in order."""
        rx = self.receiver()
        self.assertEqual(rx.on_data(data(101, b"second", ssn=1)), [])
        self.assertEqual(rx.buffered, 6)
        delivered = rx.on_data(data(100, b"first", ssn=0))
        self.assertEqual([d.data for d in delivered], [b"first", b"second"])
        self.assertEqual(rx.buffered, 0)

    def test_unordered_overtakes(self) -> None:
        """An unordered message is delivered even while an ordered one waits."""
        rx = self.receiver()
        rx.on_data(data(101, b"later", ssn=1))
        self.assertEqual(rx.on_data(data(102, b"now", unordered=True)), [DataReceived(1, 51, b"now")])

    def test_fragments_reassembled(self) -> None:
        """B, middle, E fragments of one SSN arriving in any order make one message."""
        rx = self.receiver()
        self.assertEqual(rx.on_data(data(102, b"C", end=True, begin=False)), [])
        self.assertEqual(rx.on_data(data(100, b"A", begin=True, end=False)), [])
        self.assertEqual(rx.on_data(data(101, b"B", begin=False, end=False)), [DataReceived(1, 51, b"ABC")])
        unordered = [data(103 + i, bytes([65 + i]), unordered=True, begin=i == 0, end=i == 2) for i in range(3)]
        self.assertEqual(rx.on_data(unordered[2]), [])
        self.assertEqual(rx.on_data(unordered[0]), [])
        self.assertEqual(rx.on_data(unordered[1]), [DataReceived(1, 51, b"ABC")])
        self.assertEqual(rx.buffered, 0)

    def test_window_full(self) -> None:
        """New DATA beyond the window is dropped unacknowledged, and a SACK tells the window."""
        rx = self.receiver(window=100)
        rx.on_data(data(100, b"x" * 80, ssn=1))  # held: SSN 0 missing
        rx.build_sack()
        self.assertEqual(rx.on_data(data(101, b"y" * 30, ssn=2)), [])
        self.assertTrue(rx.sack_due(sending_data=False))
        sack = parse_sack(rx.build_sack())
        self.assertEqual((sack.cumulative_tsn, sack.a_rwnd, sack.gaps), (100, 20, ()))

    def test_far_ahead_refused(self) -> None:
        """DATA more than 65535 TSNs ahead is not accepted (a gap block could not name it)."""
        rx = self.receiver()
        rx.on_data(data(99 + 0x10000 + 1))
        self.assertEqual(parse_sack(rx.build_sack()).gaps, ())

    def test_delayed_sack(self) -> None:
        """One packet of DATA arms the delayed SACK; the second makes it due; the timer does too."""
        rx = self.receiver()
        rx.on_data(data(100))
        rx.on_packet_with_data(5.0)
        self.assertEqual(rx.deadline, 5.2)
        self.assertFalse(rx.sack_due(sending_data=False))
        self.assertTrue(rx.sack_due(sending_data=True))  # bundled with outgoing DATA
        rx.on_timeout(5.1)
        self.assertFalse(rx.sack_due(sending_data=False))
        rx.on_timeout(5.2)
        self.assertTrue(rx.sack_due(sending_data=False))
        rx.build_sack()
        self.assertIsNone(rx.deadline)
        rx.on_packet_with_data(6.0)
        rx.on_packet_with_data(6.01)
        self.assertTrue(rx.sack_due(sending_data=False))

    def test_wrap_around(self) -> None:
        """TSNs run on through 2**32 - 1 to 0."""
        rx = self.receiver(initial_tsn=0xFFFFFFFE)
        for i, tsn in enumerate((0xFFFFFFFE, 0xFFFFFFFF, 0, 1)):
            self.assertEqual(rx.on_data(data(tsn, ssn=i)), [DataReceived(1, 51, b"x")])
        self.assertEqual(parse_sack(rx.build_sack()).cumulative_tsn, 1)

    def test_reset_streams(self) -> None:
        """Resetting a stream forgets what it holds and restarts its SSNs; empty means all streams."""
        rx = self.receiver()
        rx.on_data(data(100, b"held", sid=1, ssn=1))
        rx.on_data(data(101, b"part", sid=2, begin=True, end=False))
        self.assertEqual(rx.buffered, 8)
        self.assertEqual(rx.reset_streams((1,)), (1,))
        self.assertEqual(rx.buffered, 4)
        self.assertEqual(rx.on_data(data(102, b"new", sid=1, ssn=0)), [DataReceived(1, 51, b"new")])
        self.assertEqual(set(rx.reset_streams(())), {1, 2})
        self.assertEqual(rx.buffered, 0)


class SctpSenderTests(SynchronousTestCase):
    """Outbound DATA: fragmentation, windows, acks, fast retransmit and T3."""

    def sender(self, initial_tsn: int = 1000, max_burst: int = 4) -> tuple[SctpSender, RtoEstimator]:
        """A sender after the handshake, with a large peer window."""
        rto = RtoEstimator(1.0, 0.2, 60.0)
        tx = SctpSender(initial_tsn, MTU, 1 << 20, 3, max_burst, rto)
        tx.start(1 << 20)
        return tx, rto

    def sent(self, chunks: list[bytes]) -> list[DataChunk]:
        """Decode the DATA chunks picked to send."""
        decoded = [parse_chunk(c) for c in chunks]
        assert all(isinstance(c, DataChunk) for c in decoded)
        return decoded  # type: ignore[return-value]

    def test_fragmentation_and_ssn(self) -> None:
        """A message larger than a chunk is cut with B and E flags under one SSN; SSNs count per stream."""
        tx, _ = self.sender()
        tx.enqueue(3, 51, b"a" * (FRAGMENT + 1), ordered=True)
        tx.enqueue(3, 51, b"b", ordered=True)
        tx.enqueue(4, 51, b"c", ordered=True)
        tx.enqueue(3, 51, b"d", ordered=False)
        chunks = self.sent(tx.chunks_to_send(0.0))
        self.assertEqual([c.tsn for c in chunks], [1000, 1001, 1002, 1003, 1004])
        self.assertEqual([(c.begin, c.end) for c in chunks],
                         [(True, False), (False, True), (True, True), (True, True), (True, True)])
        self.assertEqual([len(c.user_data) for c in chunks[:2]], [FRAGMENT, 1])
        self.assertEqual([(c.stream_id, c.ssn, c.unordered) for c in chunks],
                         [(3, 0, False), (3, 0, False), (3, 1, False), (4, 0, False), (3, 0, True)])
        self.assertEqual(tx.last_tsn, 1004)

    def test_initial_window(self) -> None:
        """The first flight is limited by the initial cwnd (RFC 9260 §7.2.1) and Max.Burst."""
        tx, _ = self.sender()
        for _ in range(10):
            tx.enqueue(0, 51, b"x" * FRAGMENT, ordered=True)
        first = tx.chunks_to_send(0.0)
        self.assertEqual(tx.cwnd, 4380)
        self.assertEqual(len(first), 4)  # the fourth starts below cwnd and may end above it
        self.assertGreaterEqual(tx.flight_size, tx.cwnd)
        self.assertEqual(tx.chunks_to_send(0.0), [])
        self.assertEqual(tx.buffered_amount, 10 * FRAGMENT)
        narrow, _ = self.sender(max_burst=1)
        for _ in range(3):
            narrow.enqueue(0, 51, b"x" * 500, ordered=True)
        self.assertEqual(len(narrow.chunks_to_send(0.0)), 3)  # 3 chunks make one packet's worth
        self.assertEqual(narrow.t3_at, 1.0)

    def test_cumulative_ack(self) -> None:
        """An ack frees the flight, samples the RTT, stops T3 when all is acked; stale or future acks do nothing."""
        tx, rto = self.sender()
        tx.enqueue(0, 51, b"x" * 100, ordered=True)
        tx.enqueue(0, 51, b"y" * 50, ordered=True)
        tx.chunks_to_send(0.0)
        self.assertEqual(tx.t3_at, 1.0)
        self.assertIsNone(tx.on_ack(1002, (), 1 << 20, 0.1))  # never sent
        self.assertEqual(tx.on_ack(1000, (), 1 << 20, 0.1), 100)
        self.assertEqual(rto.srtt, 0.1)
        self.assertEqual(tx.flight_size, 50)
        self.assertIsNone(tx.on_ack(998, (), 1 << 20, 0.2))  # older than what was acked
        self.assertEqual(tx.on_ack(1001, (), 1 << 20, 0.2), 50)
        self.assertFalse(tx.has_outstanding)
        self.assertIsNone(tx.t3_at)
        self.assertEqual(tx.buffered_amount, 0)

    def test_fast_retransmit(self) -> None:
        """Three SACKs reporting a hole retransmit it once, halve cwnd, and give no RTT sample for it."""
        tx, rto = self.sender()
        for _ in range(4):
            tx.enqueue(0, 51, b"x" * 1000, ordered=True)
        tx.chunks_to_send(0.0)
        cwnd = tx.cwnd
        for gap_end in (1, 2, 3):
            self.assertEqual(tx.on_ack(999, ((2, 1 + gap_end),), 1 << 20, 0.1), 1000)
        self.assertEqual(tx.ssthresh, max(cwnd // 2, 4 * MTU))
        self.assertEqual(tx.cwnd, tx.ssthresh)
        again = self.sent(tx.chunks_to_send(0.1))
        self.assertEqual([c.tsn for c in again], [1000])
        self.assertEqual(tx.retransmissions, 1)
        srtt = rto.srtt
        self.assertEqual(tx.on_ack(1003, (), 1 << 20, 0.5), 1000)
        self.assertEqual(rto.srtt, srtt)  # Karn: the retransmitted chunk gives no sample
        self.assertEqual(tx.chunks_to_send(0.5), [])

    def test_t3_expiry(self) -> None:
        """T3 collapses cwnd to one packet and resends the oldest unacked DATA first."""
        tx, rto = self.sender()
        for _ in range(3):
            tx.enqueue(0, 51, b"x" * 1000, ordered=True)
        tx.chunks_to_send(0.0)
        tx.on_ack(999, ((2, 2),), 1 << 20, 0.1)  # 1001 gap-acked
        rto.back_off()
        tx.on_t3_expired(1.0)
        self.assertEqual(tx.cwnd, MTU)
        self.assertEqual(tx.flight_size, 0)
        self.assertEqual(tx.t3_at, 1.0 + rto.rto)
        again = self.sent(tx.chunks_to_send(1.0))
        self.assertEqual([c.tsn for c in again], [1000, 1002])  # each starts with the flight below cwnd (one packet)
        self.assertEqual(tx.retransmissions, 2)

    def test_zero_window_probe(self) -> None:
        """With the peer's window closed, one chunk goes when nothing is in flight, no more."""
        tx, _ = self.sender()
        tx.start(0)
        tx.enqueue(0, 51, b"x" * 100, ordered=True)
        tx.enqueue(0, 51, b"y" * 100, ordered=True)
        self.assertEqual(len(tx.chunks_to_send(0.0)), 1)
        self.assertEqual(tx.chunks_to_send(0.0), [])

    def test_forget_stream(self) -> None:
        """After our reset of a stream completes its SSNs start at 0 again."""
        tx, _ = self.sender()
        tx.enqueue(5, 51, b"a", ordered=True)
        tx.forget_stream(5)
        tx.enqueue(5, 51, b"b", ordered=True)
        self.assertEqual([c.ssn for c in self.sent(tx.chunks_to_send(0.0))], [0, 0])

    def test_stop(self) -> None:
        """Stopping drops everything queued and unacknowledged."""
        tx, _ = self.sender()
        tx.enqueue(0, 51, b"x" * 5000, ordered=True)
        tx.chunks_to_send(0.0)
        tx.stop()
        self.assertEqual((tx.buffered_amount, tx.has_outstanding, tx.t3_at), (0, False, None))


class StreamReconfigurationTests(SynchronousTestCase):
    """RFC 6525: our Outgoing SSN Reset Requests and answers to the peer's requests."""

    def setUp(self) -> None:
        self.receiver = SctpReceiver(10_000, 0.2)
        self.receiver.start(500)
        self.reconfig = StreamReconfiguration(self.receiver, request_seq=7000, incoming_streams=16)
        self.reconfig.start(peer_request_seq=500, incoming_streams=16)

    def test_our_request_completes(self) -> None:
        """One request is outstanding at a time; its response completes it, then the next goes."""
        rc = self.reconfig
        rc.queue([1, 2])
        rc.send_request(last_tsn=41, now=1.0, rto=0.5)
        rc.queue([3, 2])  # 2 is already queued
        rc.send_request(last_tsn=42, now=1.0, rto=0.5)
        self.assertTrue(rc.is_resetting(3))
        self.assertEqual(reconfig_params(rc.take_chunks()), [OutgoingResetRequest(7000, 499, 41, (1, 2))])
        self.assertEqual(rc.deadline, 1.5)
        self.assertIsNone(rc.on_param(ReconfigResponse(6999, RESULT_PERFORMED), 1.1, 0.5))  # not ours
        completed = rc.on_param(ReconfigResponse(7000, RESULT_PERFORMED), 1.2, 0.5)
        self.assertEqual(completed, OutgoingResetRequest(7000, 499, 41, (1, 2)))
        self.assertEqual(rc.take_events(), [StreamsReset((1, 2), incoming=False)])
        self.assertFalse(rc.is_resetting(1))
        self.assertIsNone(rc.deadline)
        rc.send_request(last_tsn=43, now=1.2, rto=0.5)
        self.assertEqual(reconfig_params(rc.take_chunks()), [OutgoingResetRequest(7001, 499, 43, (3,))])

    def test_in_progress_and_timer(self) -> None:
        """'In progress' re-arms the timer; the timer resends the same request; 'denied' completes it quietly."""
        rc = self.reconfig
        rc.queue([4])
        rc.send_request(last_tsn=10, now=0.0, rto=1.0)
        request = reconfig_params(rc.take_chunks())
        self.assertIsNone(rc.on_param(ReconfigResponse(7000, RESULT_IN_PROGRESS), 0.5, 1.0))
        self.assertEqual(rc.deadline, 1.5)
        rc.on_timer(1.5, 2.0)
        self.assertEqual(reconfig_params(rc.take_chunks()), request)
        self.assertEqual(rc.deadline, 3.5)
        self.assertIsNotNone(rc.on_param(ReconfigResponse(7000, RESULT_DENIED), 2.0, 1.0))
        self.assertEqual(rc.take_events(), [])
        rc.on_timer(5.0, 1.0)
        self.assertEqual((rc.take_chunks(), rc.deadline), ([], None))

    def test_peer_reset_waits_for_its_data(self) -> None:
        """The peer's reset is performed only once every TSN it names arrived (§5.2.2)."""
        rc, rx = self.reconfig, self.receiver
        rx.on_data(data(500, b"held", sid=1, ssn=1))
        rc.on_param(OutgoingResetRequest(500, 0, 501, (1,)), 0.0, 1.0)
        self.assertEqual(reconfig_params(rc.take_chunks()), [ReconfigResponse(500, RESULT_IN_PROGRESS)])
        self.assertTrue(rc.has_deferred_reset)
        rc.on_param(OutgoingResetRequest(500, 0, 501, (1,)), 0.1, 1.0)  # retransmitted meanwhile
        self.assertEqual(reconfig_params(rc.take_chunks()), [ReconfigResponse(500, RESULT_IN_PROGRESS)])
        self.assertFalse(rc.perform_deferred_reset())
        rx.on_data(data(501, b"more", sid=1, ssn=2))
        self.assertTrue(rc.perform_deferred_reset())
        self.assertEqual(reconfig_params(rc.take_chunks()), [ReconfigResponse(500, RESULT_PERFORMED)])
        self.assertEqual(rc.take_events(), [StreamsReset((1,), incoming=True)])
        self.assertEqual(rx.buffered, 0)
        rc.on_param(OutgoingResetRequest(500, 0, 501, (1,)), 0.2, 1.0)  # retransmitted once more
        self.assertEqual(reconfig_params(rc.take_chunks()), [ReconfigResponse(500, RESULT_PERFORMED)])

    def test_peer_reset_at_once(self) -> None:
        """A reset whose data all arrived is performed at once; another out of sequence is refused."""
        rc = self.reconfig
        rc.on_param(OutgoingResetRequest(500, 0, 499, ()), 0.0, 1.0)
        rc.on_param(OutgoingResetRequest(502, 0, 499, (1,)), 0.0, 1.0)
        self.assertEqual(reconfig_params(rc.take_chunks()),
                         [ReconfigResponse(500, RESULT_PERFORMED), ReconfigResponse(502, RESULT_BAD_SEQUENCE)])
        self.assertEqual(rc.take_events(), [StreamsReset((), incoming=True)])

    def test_other_requests(self) -> None:
        """Add Outgoing Streams is granted (more streams the peer may use); Incoming Reset is denied."""
        rc = self.reconfig
        rc.on_param(AddStreamsRequest(sc.PARAM_ADD_OUTGOING_STREAMS, 500, 8), 0.0, 1.0)
        rc.on_param(IncomingResetRequest(501, (1,)), 0.0, 1.0)
        rc.on_param(AddStreamsRequest(sc.PARAM_ADD_INCOMING_STREAMS, 502, 8), 0.0, 1.0)
        self.assertEqual(reconfig_params(rc.take_chunks()), [
            ReconfigResponse(500, RESULT_PERFORMED),
            ReconfigResponse(501, RESULT_DENIED),
            ReconfigResponse(502, RESULT_DENIED),
        ])
        self.assertEqual(rc.incoming_streams, 24)
        self.assertEqual(rc.take_events(), [])

