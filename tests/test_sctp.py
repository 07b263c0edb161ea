"""Tests for the SCTP chunk codec and the sans-I/O SCTP association, on simulated time."""

from __future__ import annotations

import heapq
import random
import struct
from collections.abc import Callable
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from tests.cases import case, rel
from voiceedge.transceiver.sctp import (
    Closed,
    DataReceived,
    Established,
    SctpAssociation,
    SctpConfig,
    SctpState,
    StreamsReset,
)
from voiceedge.wire import sctp_chunks as sc
from voiceedge.wire.sctp_chunks import (
    AbortChunk,
    CookieAckChunk,
    CookieEchoChunk,
    DataChunk,
    ErrorChunk,
    ForwardTsnChunk,
    HeartbeatAckChunk,
    HeartbeatChunk,
    IncomingResetRequest,
    InitAckChunk,
    InitChunk,
    OutgoingResetRequest,
    ReconfigChunk,
    ReconfigResponse,
    SackChunk,
    SctpError,
    ShutdownAckChunk,
    ShutdownChunk,
    ShutdownCompleteChunk,
    UnknownChunk,
    build_packet,
    crc32c,
    crc32c_table,
    parse_packet,
)


class LossyLink:
    """Two associations joined by an in-memory link with seeded loss, jitter (reordering) and duplication.

    Time advances in steps of at most ``step`` seconds, to the next delivery or timer when sooner.
    ``drain`` turns each side's pending events into a list (the association's own by default).
    """

    def __init__(
        self,
        a: SctpAssociation,
        b: SctpAssociation,
        *,
        loss: float = 0.0,
        duplicate: float = 0.0,
        delay: float = 0.02,
        jitter: float = 0.0,
        seed: int = 1,
        step: float = 0.01,
        drain_a: Callable[[], list[Any]] | None = None,
        drain_b: Callable[[], list[Any]] | None = None,
    ) -> None:
        self.a, self.b = a, b
        self.loss, self.duplicate, self.delay, self.jitter = loss, duplicate, delay, jitter
        self.rng = random.Random(seed)
        self.step_size = step
        self.now = 0.0
        self.up = True
        self.drop: Callable[[SctpAssociation, bytes], bool] | None = None
        self._queue: list[tuple[float, int, int, bytes]] = []
        self._seq = 0
        self.events_a: list[Any] = []
        self.events_b: list[Any] = []
        self.sent: list[tuple[int, bytes]] = []
        self._drain = (drain_a or a.take_events, drain_b or b.take_events)

    def _enqueue(self, target: int, packet: bytes) -> None:
        self.sent.append((target, packet))
        source = self.b if target == 0 else self.a
        if not self.up or (self.drop is not None and self.drop(source, packet)):
            return
        copies = 2 if self.rng.random() < self.duplicate else 1
        for _ in range(copies):
            if self.rng.random() < self.loss:
                continue
            at = self.now + self.delay + self.rng.random() * self.jitter
            self._seq += 1
            heapq.heappush(self._queue, (at, self._seq, target, packet))

    def pump(self) -> None:
        """Move what each side wants to send onto the wire, and collect events."""
        for packet in self.a.take_outgoing():
            self._enqueue(1, packet)
        for packet in self.b.take_outgoing():
            self._enqueue(0, packet)
        self.events_a.extend(self._drain[0]())
        self.events_b.extend(self._drain[1]())

    def step(self) -> None:
        """Advance time by one step, delivering packets and firing timers that fall due."""
        self.pump()
        target_time = self.now + self.step_size
        candidates = [target_time]
        if self._queue:
            candidates.append(self._queue[0][0])
        for side in (self.a, self.b):
            d = side.deadline()
            if d is not None:
                candidates.append(d)
        self.now = max(self.now, min(candidates))
        while self._queue and self._queue[0][0] <= self.now:
            _, _, target, packet = heapq.heappop(self._queue)
            (self.a if target == 0 else self.b).receive(packet, self.now)
            self.pump()
        for side in (self.a, self.b):
            d = side.deadline()
            if d is not None and d <= self.now:
                side.handle_timeout(self.now)
        self.pump()

    def run_until(self, condition: Callable[[], bool], max_time: float = 120.0, max_steps: int = 200_000) -> bool:
        """Step until ``condition`` holds; False if ``max_time`` simulated seconds or ``max_steps`` pass first."""
        end = self.now + max_time
        for _ in range(max_steps):
            if condition():
                return True
            if self.now >= end:
                return False
            self.step()
        return condition()

    def run_for(self, seconds: float) -> None:
        """Step for ``seconds`` of simulated time."""
        end = self.now + seconds
        self.run_until(lambda: self.now >= end, max_time=seconds + 1)


def make_pair(
    seed: int = 7, config_a: SctpConfig | None = None, config_b: SctpConfig | None = None, **link: Any
) -> tuple[SctpAssociation, SctpAssociation, LossyLink]:
    """A client and a server association on a link; nothing sent yet."""
    client = SctpAssociation(config_a, rng=random.Random(seed))
    server = SctpAssociation(config_b, rng=random.Random(seed + 1000))
    return client, server, LossyLink(client, server, seed=seed, **link)


def established_pair(seed: int = 7, **link: Any) -> tuple[SctpAssociation, SctpAssociation, LossyLink]:
    """A pair after the handshake (the client sent INIT)."""
    client, server, net = make_pair(seed, **link)
    client.connect(0.0)
    assert net.run_until(
        lambda: client.state is SctpState.ESTABLISHED and server.state is SctpState.ESTABLISHED, max_time=60
    )
    return client, server, net


def received(events: list[Any], stream_id: int | None = None) -> list[bytes]:
    """Payloads of DataReceived events (optionally on one stream)."""
    return [e.data for e in events if isinstance(e, DataReceived) and (stream_id is None or e.stream_id == stream_id)]


def chunks_of(packet: bytes) -> tuple[Any, ...]:
    """Parse a packet we produced."""
    return parse_packet(packet).chunks


u32 = st.integers(0, 0xFFFFFFFF)
u16 = st.integers(0, 0xFFFF)
params_st = st.lists(st.tuples(u16, st.binary(max_size=40)), max_size=4).map(tuple)

chunk_st = st.one_of(
    st.builds(
        DataChunk, u32, u16, u16, u32, st.binary(min_size=1, max_size=200), st.booleans(), st.booleans(), st.booleans()
    ),
    st.builds(InitChunk, u32, u32, u16, u16, u32, params_st),
    st.builds(InitAckChunk, u32, u32, u16, u16, u32, params_st),
    st.builds(
        SackChunk,
        u32,
        u32,
        st.lists(st.tuples(u16, u16), max_size=8).map(tuple),
        st.lists(u32, max_size=8).map(tuple),
    ),
    st.builds(HeartbeatChunk, st.binary(max_size=48)),
    st.builds(HeartbeatAckChunk, st.binary(max_size=48)),
    st.builds(AbortChunk, params_st, st.booleans()),
    st.builds(ErrorChunk, params_st),
    st.builds(ShutdownChunk, u32),
    st.just(ShutdownAckChunk()),
    st.builds(ShutdownCompleteChunk, st.booleans()),
    st.builds(CookieEchoChunk, st.binary(max_size=64)),
    st.just(CookieAckChunk()),
    st.builds(
        ReconfigChunk,
        st.lists(
            st.one_of(
                st.builds(OutgoingResetRequest, u32, u32, u32, st.lists(u16, max_size=6).map(tuple)),
                st.builds(IncomingResetRequest, u32, st.lists(u16, max_size=6).map(tuple)),
                st.builds(ReconfigResponse, u32, u32),
                st.builds(ReconfigResponse, u32, u32, u32, u32),
                st.builds(sc.AddStreamsRequest, st.sampled_from([17, 18]), u32, u16),
            ),
            min_size=1,
            max_size=2,
        ).map(tuple),
    ),
    st.builds(ForwardTsnChunk, u32, st.lists(st.tuples(u16, u16), max_size=4).map(tuple)),
    st.builds(UnknownChunk, st.sampled_from([0x40, 0x81, 0xC1, 0x3F]), st.integers(0, 255), st.binary(max_size=30)),
)


def _with_checksum(data: bytes) -> bytes:
    if len(data) < 12:
        return data
    body = data[:8] + b"\x00" * 4 + data[12:]
    return data[:8] + struct.pack("<I", crc32c(body)) + data[12:]


def _handshake_until_cookie_echo() -> tuple[SctpAssociation, SctpAssociation, bytes]:
    client = SctpAssociation(rng=random.Random(1))
    server = SctpAssociation(rng=random.Random(2))
    client.connect(0.0)
    (init,) = client.take_outgoing()
    server.receive(init, 0.01)
    (init_ack,) = server.take_outgoing()
    assert server.state is SctpState.CLOSED  # no state kept before COOKIE-ECHO
    client.receive(init_ack, 0.02)
    (echo,) = client.take_outgoing()
    return client, server, echo


SIZES = [1, 1024, 65536, 262144]


def _one_per_packet(assoc: SctpAssociation) -> list[bytes]:
    """Split the DATA an association just bundled into one packet per chunk (for tests)."""
    out = []
    for packet in assoc.take_outgoing():
        pkt = parse_packet(packet)
        for chunk in pkt.chunks:
            if isinstance(chunk, DataChunk):
                out.append(build_packet(5000, 5000, pkt.verification_tag, [chunk.encode()]))
    return out


class CodecTests(SynchronousTestCase):
    """CRC32c and the chunk codec: vectors, round trips, and only SctpError for hostile bytes."""

    def test_crc32c_known_vectors(self) -> None:
        """CRC32c matches RFC 3720 B.4 style test vectors."""
        self.assertEqual(crc32c_table(b"123456789"), 0xE3069283)
        self.assertEqual(crc32c_table(b"\x00" * 32), 0x8A9136AA)
        self.assertEqual(crc32c_table(b"\xff" * 32), 0x62A8AB43)
        self.assertEqual(crc32c_table(bytes(range(32))), 0x46DD794E)
        self.assertEqual(crc32c(b"123456789"), 0xE3069283)

    @given(st.binary(max_size=2000))
    def test_crc32c_fast_path_equals_table(self, data: bytes) -> None:
        """The accelerated CRC32c (if any) equals the table implementation."""
        self.assertEqual(crc32c(data), crc32c_table(data))

    @given(u16, u16, u32, st.lists(chunk_st, min_size=1, max_size=5))
    def test_packet_roundtrip(self, src: int, dst: int, tag: int, chunks: list[Any]) -> None:
        """parse(build(x)) == x for every chunk type."""
        packet = build_packet(src, dst, tag, [c.encode() for c in chunks])
        parsed = parse_packet(packet)
        self.assertEqual((parsed.source_port, parsed.destination_port, parsed.verification_tag), (src, dst, tag))
        self.assertEqual(list(parsed.chunks), chunks)

    @given(st.binary(max_size=400))
    def test_parse_random_bytes_raises_only_sctp_error(self, data: bytes) -> None:
        """Random bytes, checksummed or not, raise only SctpError."""
        for candidate in (data, _with_checksum(data)):
            for verify in (True, False):
                try:
                    parse_packet(candidate, verify_checksum=verify)
                except SctpError:
                    pass

    @given(st.lists(chunk_st, min_size=1, max_size=3), st.data())
    def test_parse_mutated_packets_raises_only_sctp_error(self, chunks: list[Any], data: st.DataObject) -> None:
        """Valid packets with bytes flipped or cut raise only SctpError."""
        raw = bytearray(build_packet(5000, 5000, 1, [c.encode() for c in chunks]))
        pos = data.draw(st.integers(12, len(raw) - 1))
        raw[pos] ^= data.draw(st.integers(1, 255))
        cut = data.draw(st.integers(12, len(raw)))
        for candidate in (bytes(raw), bytes(raw[:cut])):
            try:
                parse_packet(_with_checksum(candidate))
            except SctpError:
                pass

    def test_bad_checksum_rejected_by_parser(self) -> None:
        """A flipped bit anywhere fails the CRC32c check."""
        packet = bytearray(build_packet(5000, 5000, 9, [CookieAckChunk().encode()]))
        parse_packet(bytes(packet))
        packet[-1] ^= 0x10
        with self.assertRaises(SctpError) as caught:
            parse_packet(bytes(packet))
        self.assertRegex(str(caught.exception), "checksum")

    def test_data_chunk_rejects_empty_payload(self) -> None:
        """DATA must carry user data, both ways."""
        with self.assertRaises(SctpError):
            DataChunk(1, 0, 0, 51, b"").encode()
        header = struct.pack("!BBH", 0, 3, 16) + struct.pack("!IHHI", 1, 0, 0, 51)
        with self.assertRaises(SctpError):
            parse_packet(build_packet(5000, 5000, 1, [header]))


class HandshakeTests(SynchronousTestCase):
    """The four-way handshake (RFC 4960 §5), its timers, and cookies or packets that must be dropped."""

    def test_handshake(self) -> None:
        """INIT, INIT-ACK, COOKIE-ECHO, COOKIE-ACK: both sides report Established once."""
        client, server, net = make_pair()
        client.connect(0.0)
        first = client.take_outgoing()
        self.assertEqual(len(first), 1)
        pkt = parse_packet(first[0])
        self.assertEqual(pkt.verification_tag, 0)
        self.assertIsInstance(pkt.chunks[0], InitChunk)
        self.assertEqual((pkt.source_port, pkt.destination_port), (5000, 5000))
        net._enqueue(1, first[0])
        self.assertTrue(
            net.run_until(lambda: client.state is SctpState.ESTABLISHED and server.state is SctpState.ESTABLISHED),
        )
        self.assertEqual([type(e) for e in net.events_a], [Established])
        self.assertEqual([type(e) for e in net.events_b], [Established])
        kinds = [type(chunks_of(p)[0]) for _, p in net.sent]
        self.assertEqual(kinds[:4], [InitChunk, InitAckChunk, CookieEchoChunk, CookieAckChunk])
        self.assertLess(net.now, 0.2)

    def test_handshake_with_loss_retransmits_init(self) -> None:
        """Lost INIT / COOKIE-ECHO are retransmitted by T1."""
        client, server, net = make_pair(seed=3, loss=0.5)
        client.connect(0.0)
        self.assertTrue(
            net.run_until(
                lambda: client.state is SctpState.ESTABLISHED and server.state is SctpState.ESTABLISHED, max_time=120
            ),
        )

    def test_init_collision(self) -> None:
        """Both sides send INIT at once (as WebRTC peers do); both establish and data flows."""
        client, server, net = make_pair()
        client.connect(0.0)
        server.connect(0.0)
        self.assertTrue(
            net.run_until(lambda: client.state is SctpState.ESTABLISHED and server.state is SctpState.ESTABLISHED),
        )
        client.send(1, 53, b"hello")
        server.send(2, 53, b"world")
        self.assertTrue(
            net.run_until(lambda: received(net.events_b) == [b"hello"] and received(net.events_a) == [b"world"]),
        )
        self.assertEqual(sum(isinstance(e, Established) for e in net.events_a), 1)
        self.assertEqual(sum(isinstance(e, Established) for e in net.events_b), 1)

    def test_handshake_timeout(self) -> None:
        """INIT to nowhere: Closed after Max.Init.Retransmits."""
        client, server, net = make_pair()
        net.up = False
        client.connect(0.0)
        self.assertTrue(net.run_until(lambda: any(isinstance(e, Closed) for e in net.events_a), max_time=600))
        self.assertEqual(net.events_a[-1], Closed("handshake timed out"))
        self.assertIsNone(client.deadline())

    def test_forged_cookie_echo_dropped(self) -> None:
        """A COOKIE-ECHO with a made-up or tampered cookie is dropped without an answer."""
        client, server, echo = _handshake_until_cookie_echo()
        pkt = parse_packet(echo)
        cookie = pkt.chunks[0].cookie
        forged = bytes(random.Random(5).randbytes(len(cookie)))
        tampered = bytearray(cookie)
        tampered[10] ^= 1
        for bad in (forged, bytes(tampered), cookie[:-1], b""):
            packet = build_packet(5000, 5000, pkt.verification_tag, [CookieEchoChunk(bad).encode()])
            server.receive(packet, 0.03)
            self.assertEqual(server.take_outgoing(), [])
            self.assertIs(server.state, SctpState.CLOSED)
        self.assertEqual(server.dropped_packets, 4)
        self.assertEqual(server.take_events(), [])
        server.receive(echo, 0.03)
        self.assertIs(server.state, SctpState.ESTABLISHED)

    def test_cookie_from_another_association_dropped(self) -> None:
        """A cookie signed by another association's secret does not verify."""
        client, server, echo = _handshake_until_cookie_echo()
        other = SctpAssociation(rng=random.Random(2))  # the same tag as the server, by seed
        other._secret = b"x" * 32  # but its own secret
        other.receive(echo, 0.03)
        self.assertIs(other.state, SctpState.CLOSED)
        self.assertEqual(other.dropped_packets, 1)

    def test_stale_cookie_rejected(self) -> None:
        """A COOKIE-ECHO after the cookie lifetime gets a Stale Cookie error, and the client gives up."""
        client, server, echo = _handshake_until_cookie_echo()
        server.receive(echo, 0.02 + 61.0)
        self.assertIs(server.state, SctpState.CLOSED)
        (error,) = server.take_outgoing()
        chunk = chunks_of(error)[0]
        self.assertIsInstance(chunk, ErrorChunk)
        self.assertEqual(chunk.causes[0][0], sc.CAUSE_STALE_COOKIE)
        client.receive(error, 61.1)
        self.assertEqual(client.take_events(), [Closed("stale cookie")])

    def test_bad_checksum_and_bad_tag_dropped(self) -> None:
        """The association counts and drops corrupt packets and packets with a wrong verification tag."""
        client, server, net = established_pair()
        client.send(1, 53, b"x")
        (packet,) = client.take_outgoing()
        corrupt = bytearray(packet)
        corrupt[-5] ^= 0xFF
        server.receive(bytes(corrupt), net.now)
        self.assertEqual(server.dropped_packets, 1)
        wrong_tag = build_packet(5000, 5000, server.local_tag ^ 1, [DataChunk(1, 1, 0, 53, b"y").encode()])
        server.receive(wrong_tag, net.now)
        self.assertEqual(server.dropped_packets, 2)
        self.assertEqual(server.take_events(), [])
        server.receive(packet, net.now)
        self.assertEqual(received(server.take_events()), [b"x"])

    @settings(max_examples=150, deadline=None)
    @given(st.lists(chunk_st, min_size=1, max_size=4))
    def test_hostile_chunks_never_raise(self, chunks: list[Any]) -> None:
        """Any well-formed chunks with a valid tag, fed to an established association, never raise."""
        client, server, net = established_pair()
        server.receive(build_packet(5000, 5000, server.local_tag, [c.encode() for c in chunks]), net.now + 0.01)
        server.handle_timeout(net.now + 5)
        server.take_outgoing()
        server.take_events()


class DataTransferTests(SynchronousTestCase):
    """Messages arrive whole, ordered per stream or not, within window and MTU, SACKed as RFC 4960 §6 says."""

    def test_messages_arrive_whole_and_in_order(self) -> None:
        """1 B, 1 KiB, 64 KiB and 256 KiB messages arrive whole and in order under loss, reordering, duplication."""
        for loss in [0.0, 0.1, 0.3]:
            with case(f"loss {loss:.0%}"):
                client, server, net = established_pair(seed=11, loss=0.0, jitter=0.03)
                net.loss, net.duplicate = loss, 0.05
                rng = random.Random(42)
                messages = [rng.randbytes(n) for n in SIZES for _ in range(2)]
                replies = [rng.randbytes(n) for n in reversed(SIZES)]
                for m in messages:
                    client.send(1, 53, m)
                for m in replies:
                    server.send(2, 53, m)
                self.assertTrue(
                    net.run_until(
                        lambda: len(received(net.events_b)) == len(messages)
                        and len(received(net.events_a)) == len(replies),
                        max_time=900,
                    ),
                )
                self.assertEqual(received(net.events_b, 1), messages)
                self.assertEqual(received(net.events_a, 2), replies)
                if loss:
                    self.assertGreater(client.retransmissions, 0)
                self.assertIs(client.state, SctpState.ESTABLISHED)
                self.assertIs(server.state, SctpState.ESTABLISHED)

    def test_interleaved_streams_ordered_per_stream(self) -> None:
        """Ordered delivery is per stream; several streams share the association."""
        client, server, net = established_pair(seed=5, loss=0.1, jitter=0.03)
        expected: dict[int, list[bytes]] = {1: [], 3: [], 5: []}
        for i in range(60):
            sid = (1, 3, 5)[i % 3]
            msg = b"%d:" % i + bytes(i * 97 % 3000 + 1)
            expected[sid].append(msg)
            client.send(sid, 53, msg)
        self.assertTrue(net.run_until(lambda: len(received(net.events_b)) == 60, max_time=300))
        for sid, msgs in expected.items():
            self.assertEqual(received(net.events_b, sid), msgs)

    def test_unordered_delivery(self) -> None:
        """Unordered messages all arrive whole, not necessarily in order; a late one does not block others."""
        client, server, net = established_pair(seed=9, jitter=0.05)
        msgs = [b"m%03d" % i for i in range(50)] + [bytes(range(256)) * 40]
        for m in msgs:
            client.send(4, 53, m, ordered=False)
        self.assertTrue(net.run_until(lambda: len(received(net.events_b)) == len(msgs), max_time=60))
        got = received(net.events_b, 4)
        self.assertEqual(sorted(got), sorted(msgs))
        self.assertNotEqual(got, msgs)  # the jitter reordered some

    def test_unordered_not_blocked_by_lost_ordered(self) -> None:
        """An unordered message is delivered while an earlier ordered one on the stream is still missing."""
        client, server, net = established_pair()
        client.send(1, 53, b"ordered")
        (lost,) = client.take_outgoing()
        client.send(1, 53, b"unordered", ordered=False)
        for packet in client.take_outgoing():
            server.receive(packet, net.now)
        self.assertEqual(received(server.take_events()), [b"unordered"])

    def test_tsn_wraparound(self) -> None:
        """Transfers across the 2**32 TSN boundary work."""
        cfg = SctpConfig(initial_tsn=0xFFFFFFF0)
        client, server, net = make_pair(seed=2, config_a=cfg, config_b=SctpConfig(initial_tsn=0xFFFFFFFA), loss=0.1)
        client.connect(0.0)
        msgs = [bytes([i]) * 5000 for i in range(10)]
        for m in msgs:
            client.send(0, 53, m)
            server.send(0, 53, m)
        self.assertTrue(
            net.run_until(
                lambda: len(received(net.events_b)) == 10 and len(received(net.events_a)) == 10, max_time=300
            )
        )
        self.assertEqual(received(net.events_b), msgs)
        self.assertEqual(received(net.events_a), msgs)

    def test_congestion_window_limits_first_burst(self) -> None:
        """A 256 KiB message is not blasted at once: the first flight fits the initial cwnd."""
        client, server, net = established_pair()
        client.send(1, 53, bytes(262144))
        burst = client.take_outgoing()
        self.assertTrue(1 <= len(burst) <= 4)
        self.assertTrue(all(len(p) <= 1188 for p in burst))
        self.assertEqual(client.buffered_amount, 262144)

    def test_packets_fit_the_mtu(self) -> None:
        """Every packet produced during a large lossy transfer fits a 1200-byte DTLS datagram."""
        client, server, net = established_pair(loss=0.1, jitter=0.02)
        client.send(1, 53, bytes(100_000))
        server.send(1, 53, bytes(100_000))
        self.assertTrue(
            net.run_until(lambda: len(received(net.events_b)) == 1 and len(received(net.events_a)) == 1, max_time=300),
        )
        self.assertLessEqual(max(len(p) for _, p in net.sent), 1188)

    def test_delayed_sack(self) -> None:
        """One DATA packet is acknowledged after the delay; the second packet is acknowledged at once."""
        client, server, net = established_pair()
        t = net.now
        client.send(1, 53, b"a", now=t)
        server.receive(client.take_outgoing()[0], t)
        self.assertEqual(server.take_outgoing(), [])
        self.assertApproximates(server.deadline(), t + 0.2, rel(t + 0.2))
        client.send(1, 53, b"b", now=t)
        for p in client.take_outgoing():
            server.receive(p, t + 0.01)
        (sack,) = server.take_outgoing()
        self.assertIsInstance(chunks_of(sack)[0], SackChunk)
        client.send(1, 53, b"c", now=t + 0.02)
        server.receive(client.take_outgoing()[0], t + 0.02)
        self.assertEqual(server.take_outgoing(), [])
        self.assertApproximates(server.deadline(), t + 0.22, rel(t + 0.22))
        server.handle_timeout(t + 0.221)
        (sack,) = server.take_outgoing()
        chunk = chunks_of(sack)[0]
        self.assertIsInstance(chunk, SackChunk)
        self.assertEqual(chunk.gaps, ())

    def test_out_of_order_reports_gaps_and_duplicates(self) -> None:
        """A gap is SACKed at once with a gap block; a duplicate TSN is reported."""
        client, server, net = established_pair()
        t = net.now
        for payload in (b"1", b"2", b"3"):
            client.send(1, 53, payload, now=t)
        first, second, third = _one_per_packet(client)
        server.receive(first, t)
        server.take_outgoing()
        server.receive(third, t)
        (sack,) = server.take_outgoing()
        chunk = chunks_of(sack)[0]
        self.assertIsInstance(chunk, SackChunk)
        self.assertEqual(chunk.gaps, ((2, 2),))
        server.receive(third, t)
        (sack,) = server.take_outgoing()
        chunk = chunks_of(sack)[0]
        self.assertIsInstance(chunk, SackChunk)
        self.assertEqual(len(chunk.duplicates), 1)
        server.receive(second, t)
        self.assertEqual(received(server.take_events()), [b"1", b"2", b"3"])

    def test_send_validates_arguments(self) -> None:
        """send() refuses empty and oversized messages and unknown streams."""
        client = SctpAssociation()
        with self.assertRaises(ValueError):
            client.send(1, 53, b"")
        with self.assertRaises(ValueError):
            client.send(1, 53, bytes(262145))
        with self.assertRaises(ValueError):
            client.send(70000, 53, b"x")

    def test_data_queued_before_established_is_sent_after(self) -> None:
        """Messages sent during the handshake go out once it completes."""
        client, server, net = make_pair()
        client.send(1, 53, b"early")
        client.connect(0.0)
        self.assertTrue(net.run_until(lambda: received(net.events_b) == [b"early"]))

    def test_receive_window_bounds_buffering(self) -> None:
        """DATA beyond the advertised window is refused, so a hostile peer cannot grow our buffers."""
        cfg = SctpConfig(receive_window=10_000)
        client, server, net = make_pair(config_b=cfg)
        client.connect(0.0)
        self.assertTrue(net.run_until(lambda: server.state is SctpState.ESTABLISHED))
        base = server._peer_cum
        # Fragments of a message never completed (no E bit), sent blindly past the window.
        for i in range(2, 40):
            chunk = DataChunk((base + i) & 0xFFFFFFFF, 1, 0, 53, bytes(1000), begin=(i == 2), end=False)
            server.receive(build_packet(5000, 5000, server.local_tag, [chunk.encode()]), net.now)
        self.assertLessEqual(server._buffered, 10_000)
        sacks = [c for p in server.take_outgoing() for c in chunks_of(p) if isinstance(c, SackChunk)]
        self.assertEqual(sacks[-1].a_rwnd, 0)


class RetransmissionTests(SynchronousTestCase):
    """Fast retransmit, the T3 timer, heartbeats and giving up on a dead link."""

    def test_fast_retransmit_before_rto(self) -> None:
        """A single lost DATA chunk is resent after three miss reports, well before T3 fires."""
        client, server, net = established_pair(delay=0.01)
        lost: list[int] = []

        def drop_first_data(source: SctpAssociation, packet: bytes) -> bool:
            if source is client and not lost:
                for chunk in chunks_of(packet):
                    if isinstance(chunk, DataChunk):
                        lost.append(chunk.tsn)
                        return True
            return False

        net.drop = drop_first_data
        for i in range(12):
            client.send(1, 53, bytes([i]) * 1100)
        start = net.now
        self.assertTrue(net.run_until(lambda: len(received(net.events_b)) == 12, max_time=30))
        self.assertTrue(net.now - start < 0.5 < client.config.rto_initial)
        self.assertEqual(client.retransmissions, 1)

    def test_retransmission_timeout_backs_off_and_recovers(self) -> None:
        """T3 fires when every packet is lost for a while; RTO doubles; transfer resumes when the link returns."""
        client, server, net = established_pair()
        net.up = False
        client.send(1, 53, b"payload")
        rto0 = client.rto
        net.run_for(rto0 + 0.05)
        self.assertEqual(client.retransmissions, 1)
        self.assertApproximates(client.rto, min(2 * rto0, 60), rel(min(2 * rto0, 60)))
        net.up = True
        self.assertTrue(net.run_until(lambda: received(net.events_b) == [b"payload"], max_time=30))

    def test_abort_after_max_retransmissions(self) -> None:
        """On a dead link the association fails after Association.Max.Retrans and says so."""
        client, server, net = established_pair()
        net.up = False
        client.send(1, 53, b"never")
        self.assertTrue(net.run_until(lambda: any(isinstance(e, Closed) for e in net.events_a), max_time=3600))
        self.assertEqual(net.events_a[-1], Closed("too many retransmissions"))
        self.assertEqual(client.retransmissions, client.config.max_retransmissions)
        self.assertIsNone(client.deadline())
        with self.assertRaises(ValueError):
            client.send(1, 53, b"late")

    def test_heartbeat_on_idle(self) -> None:
        """An idle association sends HEARTBEAT after the interval; the ACK measures RTT."""
        client, server, net = established_pair(delay=0.05)
        net.sent.clear()
        net.run_for(31.5)
        hb = [p for _, p in net.sent if any(isinstance(c, HeartbeatChunk) for c in chunks_of(p))]
        acks = [p for _, p in net.sent if any(isinstance(c, HeartbeatAckChunk) for c in chunks_of(p))]
        self.assertEqual(len(hb), 2)
        self.assertEqual(len(acks), 2)  # one each way
        # First sample R: SRTT = R, RTTVAR = R/2, RTO = SRTT + 4 RTTVAR (§6.3.1 C2).
        self.assertApproximates(client._srtt, 0.1, rel(0.1))
        self.assertApproximates(client.rto, 0.3, rel(0.3))

    def test_heartbeat_failure_closes_idle_dead_association(self) -> None:
        """Unanswered heartbeats on an idle dead link end the association."""
        client, server, net = established_pair()
        net.up = False
        self.assertTrue(
            net.run_until(lambda: any(isinstance(e, Closed) for e in net.events_a), max_time=3600, max_steps=10**6),
        )
        self.assertEqual(net.events_a[-1], Closed("peer unreachable (heartbeat)"))


class TeardownTests(SynchronousTestCase):
    """Stream reset (RFC 6525), graceful shutdown, abort, and chunks an established association ignores."""

    def test_stream_reset(self) -> None:
        """Outgoing SSN reset: the peer sees StreamsReset after all earlier data; SSNs restart at 0."""
        client, server, net = established_pair(loss=0.1, jitter=0.02)
        for i in range(5):
            client.send(3, 51, b"before %d" % i)
        client.reset_streams([3])
        with self.assertRaises(ValueError):
            client.send(3, 51, b"during")
        self.assertTrue(
            net.run_until(
                lambda: any(isinstance(e, StreamsReset) for e in net.events_a)
                and any(isinstance(e, StreamsReset) for e in net.events_b),
                max_time=120,
            ),
        )
        self.assertIn(StreamsReset((3,), incoming=False), net.events_a)
        resets = [i for i, e in enumerate(net.events_b) if isinstance(e, StreamsReset)]
        data = [i for i, e in enumerate(net.events_b) if isinstance(e, DataReceived)]
        self.assertEqual(net.events_b[resets[0]], StreamsReset((3,), incoming=True))
        self.assertEqual(len(data), 5)
        self.assertLess(max(data), resets[0])
        client.send(3, 51, b"after")
        self.assertTrue(net.run_until(lambda: b"after" in received(net.events_b), max_time=60))
        ssns = [
            c.ssn for _, p in net.sent for c in chunks_of(p) if isinstance(c, DataChunk) and c.user_data == b"after"
        ]
        self.assertEqual(set(ssns), {0})

    def test_stream_reset_in_progress_when_data_missing(self) -> None:
        """A reset request that arrives before the data it covers is answered In progress, then performed."""
        client, server, net = established_pair()
        t = net.now
        client.send(2, 53, b"data", now=t)
        (data_packet,) = client.take_outgoing()
        client.reset_streams([2], now=t)
        (reset_packet,) = client.take_outgoing()
        server.receive(reset_packet, t)
        (answer,) = server.take_outgoing()
        response = chunks_of(answer)[0].params[0]
        self.assertIsInstance(response, ReconfigResponse)
        self.assertEqual(response.result, 6)
        server.receive(data_packet, t)
        events = server.take_events()
        self.assertEqual(events, [DataReceived(2, 53, b"data"), StreamsReset((2,), incoming=True)])
        performed = [
            p
            for pkt in server.take_outgoing()
            for c in chunks_of(pkt)
            if isinstance(c, ReconfigChunk)
            for p in c.params
        ]
        self.assertEqual(performed, [ReconfigResponse(response.response_seq, 1)])

    def test_graceful_shutdown(self) -> None:
        """close() drains queued data, then SHUTDOWN / SHUTDOWN-ACK / SHUTDOWN-COMPLETE; both see Closed."""
        client, server, net = established_pair(loss=0.1)
        client.send(1, 53, bytes(20000))
        client.close()
        with self.assertRaises(ValueError):
            client.send(1, 53, b"late")
        self.assertTrue(
            net.run_until(
                lambda: any(isinstance(e, Closed) for e in net.events_a)
                and any(isinstance(e, Closed) for e in net.events_b),
                max_time=300,
            ),
        )
        self.assertEqual(received(net.events_b), [bytes(20000)])
        self.assertEqual(net.events_a[-1], Closed("shutdown"))
        self.assertEqual(net.events_b[-1], Closed("shutdown"))

    def test_abort(self) -> None:
        """abort() sends ABORT; the peer reports Closed at once."""
        client, server, net = established_pair()
        client.abort("bye")
        self.assertTrue(net.run_until(lambda: any(isinstance(e, Closed) for e in net.events_b)))
        self.assertEqual(net.events_a[-1], Closed("bye"))
        self.assertEqual(net.events_b[-1], Closed("aborted by peer"))

    def test_abort_with_wrong_tag_ignored(self) -> None:
        """An ABORT must carry our tag (or the peer's with the T bit); otherwise it is ignored."""
        client, server, net = established_pair()
        server.receive(build_packet(5000, 5000, 12345, [AbortChunk().encode()]), net.now)
        self.assertIs(server.state, SctpState.ESTABLISHED)
        server.receive(build_packet(5000, 5000, client.local_tag, [AbortChunk(t_bit=True).encode()]), net.now)
        self.assertEqual(server.take_events(), [Closed("aborted by peer")])

    def test_unknown_chunk_action_bits(self) -> None:
        """Unknown chunk types: high bits 00 stop processing the packet, 10 skip the chunk (§3.2)."""
        client, server, net = established_pair()
        tag = server.local_tag
        stop = UnknownChunk(0x3F, 0, b"abcd").encode()
        skip = UnknownChunk(0xBF, 0, b"abcd").encode()
        tsn = client._next_tsn & 0xFFFFFFFF
        server.receive(build_packet(5000, 5000, tag, [stop, DataChunk(tsn, 1, 0, 53, b"no").encode()]), net.now)
        self.assertEqual(server.take_events(), [])
        server.receive(build_packet(5000, 5000, tag, [skip, DataChunk(tsn, 1, 0, 53, b"yes").encode()]), net.now)
        self.assertEqual(received(server.take_events()), [b"yes"])

    def test_init_on_established_association_ignored(self) -> None:
        """A new INIT does not disturb an established association (restarts are not supported)."""
        client, server, net = established_pair()
        init = InitChunk(1234, 65536, 10, 10, 1).encode()
        server.receive(build_packet(5000, 5000, 0, [init]), net.now)
        self.assertEqual(server.take_outgoing(), [])
        self.assertIs(server.state, SctpState.ESTABLISHED)
        self.assertEqual(server.dropped_packets, 1)
