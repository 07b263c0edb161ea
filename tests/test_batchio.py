# -*- test-case-name: tests.test_batchio -*-
"""The relay's compiled batch I/O helper (voiceedge.relay._batchio) on real loopback sockets."""

from __future__ import annotations

import errno
import socket
from typing import Any, Iterator

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from voiceedge.wire import encap

from tests.relay_support import drain

try:
    from voiceedge.relay._batchio import Batch
except ImportError:  # scripts/test builds it; a bare checkout may not have
    Batch = None  # type: ignore[assignment,misc]

HEADROOM = 39
STRIDE = HEADROOM + 65536


def udp(family: int = socket.AF_INET) -> socket.socket:
    """A non-blocking UDP socket on loopback, closed by the caller."""
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.bind(("::1" if family == socket.AF_INET6 else "127.0.0.1", 0))
    sock.setblocking(False)
    return sock


class BatchTests(SynchronousTestCase):
    """recvmmsg into slots, sendmmsg of a queue: addresses, errors, ownership."""

    def setUp(self) -> None:
        """Skip where the helper is not built."""
        if Batch is None:
            raise SkipTest("voiceedge.relay._batchio is not built: scripts/test builds it")

    def sockets(self, family: int = socket.AF_INET) -> tuple[socket.socket, socket.socket]:
        """(sender, receiver), closed at cleanup."""
        if family == socket.AF_INET6 and not socket.has_ipv6:
            raise SkipTest("no IPv6")
        try:
            pair = udp(family), udp(family)
        except OSError as e:
            raise SkipTest(f"no IPv6 loopback: {e}")
        for sock in pair:
            self.addCleanup(sock.close)
        return pair

    def batch(self, count: int = 8, stride: int = STRIDE) -> tuple[Any, bytearray]:
        """A Batch over a fresh buffer."""
        buffer = bytearray(count * stride)
        return Batch(buffer, count, stride, HEADROOM), buffer

    def check_receives(self, family: int) -> None:
        """Six datagrams through a batch of four: two calls, slots reused."""
        sender, receiver = self.sockets(family)
        batch, buffer = self.batch(count=4)
        datagrams = [bytes([i]) * (10 + i) for i in range(6)]
        for data in datagrams:
            sender.sendto(data, receiver.getsockname())
        got = batch.recv(receiver.fileno()) + batch.recv(receiver.fileno())
        self.assertEqual(batch.recv(receiver.fileno()), [])  # drained: EAGAIN is []
        self.assertEqual(len(got), 6)
        self.assertEqual({addr for _, _, addr in got}, {sender.getsockname()[:2]})
        offsets = [at for at, _, _ in got]
        self.assertEqual(offsets, [HEADROOM, STRIDE + HEADROOM, 2 * STRIDE + HEADROOM, 3 * STRIDE + HEADROOM,
                                   HEADROOM, STRIDE + HEADROOM])
        # The second call overwrote slots 0 and 1 with datagrams 4 and 5.
        self.assertEqual([bytes(buffer[at : at + n]) for at, n, _ in got[4:]], datagrams[4:])
        self.assertEqual([n for _, n, _ in got], [len(d) for d in datagrams])

    def test_receives_ipv4_with_sources(self) -> None:
        """Up to count datagrams per call, each in its slot behind the headroom, with its IPv4 source."""
        self.check_receives(socket.AF_INET)

    def test_receives_ipv6_with_sources(self) -> None:
        """The same over IPv6: the source as (host, port), like the relay's other path."""
        self.check_receives(socket.AF_INET6)

    def test_sources_are_right_for_many_clients_and_shared_per_client(self) -> None:
        """Forty sources, twice each: every datagram has its own source; one client's share one tuple."""
        _, receiver = self.sockets()
        senders = [udp() for _ in range(40)]
        for sock in senders:
            self.addCleanup(sock.close)
        batch, buffer = self.batch(count=64)
        for _ in range(2):
            for i, sock in enumerate(senders):
                sock.sendto(i.to_bytes(2, "big"), receiver.getsockname())
        by_sender: dict[int, list[Any]] = {}
        for _ in range(2):  # 64, then 16 (read each before the next recv reuses the slots)
            for at, n, addr in batch.recv(receiver.fileno()):
                i = int.from_bytes(buffer[at : at + n], "big")
                self.assertEqual(addr, senders[i].getsockname())
                by_sender.setdefault(i, []).append(addr)
        self.assertEqual(sum(len(v) for v in by_sender.values()), 80)
        self.assertEqual(len(by_sender), 40)
        # Most clients' two datagrams share one tuple (the cache is direct-mapped: a few collide).
        self.assertGreater(sum(first is second for first, second in by_sender.values()), 20)

    def test_sends_queue_from_the_buffer(self) -> None:
        """queue() takes ranges of the buffer; send() sends them all in order and counts payload bytes."""
        for family in (socket.AF_INET, socket.AF_INET6):
            sender, receiver = self.sockets(family)
            batch, buffer = self.batch(count=4)
            dest = receiver.getsockname()[:2]
            expected = []
            for i in range(4):
                at = i * STRIDE + HEADROOM
                buffer[at - 3 : at + 5] = b"hdr" + bytes([i]) * 5
                batch.queue(at - 3, at, at + 5, dest)
                expected.append(b"hdr" + bytes([i]) * 5)
            self.assertEqual(batch.queued, 4)
            self.assertEqual(batch.send(sender.fileno()), (4, 20, 0))
            self.assertEqual(batch.queued, 0)
            self.assertEqual([d for d, _ in drain(receiver)], expected)

    def test_one_refused_datagram_does_not_stop_the_rest(self) -> None:
        """EMSGSIZE for one datagram mid-batch: it is counted as failed, the ones after it still go."""
        sender, receiver = self.sockets()
        batch, buffer = self.batch(count=4)
        dest = receiver.getsockname()
        batch.queue(HEADROOM, HEADROOM, HEADROOM + 10, dest)
        batch.queue(STRIDE, STRIDE, STRIDE + 65530, dest)  # above IPv4's 65,507: EMSGSIZE
        batch.queue(2 * STRIDE, 2 * STRIDE, 2 * STRIDE + 11, dest)
        batch.queue(3 * STRIDE, 3 * STRIDE, 3 * STRIDE + 12, dest)
        self.assertEqual(batch.send(sender.fileno()), (3, 33, 1))
        self.assertEqual(batch.last_errno, errno.EMSGSIZE)
        self.assertEqual([len(d) for d, _ in drain(receiver)], [10, 11, 12])

    def queue_all(self, batch: Any, buffer: bytearray, datagrams: list[tuple[bytes, Any]]) -> None:
        """Queue each (payload, destination) from its own slot (behind a 3-byte header)."""
        for i, (data, dest) in enumerate(datagrams):
            at = i * STRIDE + HEADROOM
            buffer[at - 3 : at + len(data)] = b"hdr" + data
            batch.queue(at - 3, at, at + len(data), dest)

    def test_runs_to_one_destination_leave_as_udp_segment_sends(self) -> None:
        """Equal datagrams to one address go as one GSO message; they arrive as they were, in order.

        A shorter datagram ends a run (it may be the run's last), a longer one or another
        destination starts a new one; what arrives, and where, is the same as without GSO.
        """
        sender, first = self.sockets()
        _, second = self.sockets()
        a, b = first.getsockname(), second.getsockname()
        sizes_and_dests = [(20, a), (20, a), (20, a), (7, a), (20, a), (30, a), (20, b), (20, b), (20, a)]
        datagrams = [(bytes([i]) * size, dest) for i, (size, dest) in enumerate(sizes_and_dests)]
        for segment in (1, 0):
            batch, buffer = self.batch(count=len(datagrams))
            batch.segment = segment
            self.queue_all(batch, buffer, datagrams)
            self.assertEqual(batch.send(sender.fileno()), (9, 177, 0))
            # Runs: [20 20 20 7] [20] [30] [20 20 -> b] [20]: six datagrams inside GSO sends.
            self.assertEqual(batch.segmented, 6 if segment else 0)
            self.assertEqual([d for d, _ in drain(first)], [b"hdr" + d for d, dest in datagrams if dest == a])
            self.assertEqual([d for d, _ in drain(second)], [b"hdr" + d for d, dest in datagrams if dest == b])

    def test_a_run_the_kernel_refuses_goes_a_datagram_at_a_time(self) -> None:
        """A socket that cannot segment (UDP checksums off: EINVAL): each datagram still goes, none lost."""
        sender, receiver = self.sockets()
        sender.setsockopt(socket.SOL_SOCKET, 11, 1)  # SO_NO_CHECK: the kernel refuses UDP_SEGMENT
        batch, buffer = self.batch(count=4)
        datagrams = [(bytes([i]) * 16, receiver.getsockname()) for i in range(4)]
        self.queue_all(batch, buffer, datagrams)
        self.assertEqual(batch.send(sender.fileno()), (4, 64, 0))
        self.assertEqual(batch.segmented, 0)
        self.assertEqual([d for d, _ in drain(receiver)], [b"hdr" + d for d, _ in datagrams])

    def test_send_without_a_socket_fails_every_datagram(self) -> None:
        """fd -1 (the internal port not started): all counted as failed, the queue emptied."""
        batch, _ = self.batch(count=2)
        batch.queue(0, 0, 5, ("127.0.0.1", 9))
        batch.queue(STRIDE, STRIDE, STRIDE + 5, ("::1", 9))
        self.assertEqual(batch.send(-1), (0, 0, 2))
        self.assertEqual(batch.queued, 0)

    def test_queue_refuses_what_it_cannot_send(self) -> None:
        """Ranges outside the buffer, names instead of addresses, bad ports, a full queue: clear errors."""
        batch, buffer = self.batch(count=1)
        with self.assertRaises(ValueError):
            batch.queue(0, 0, len(buffer) + 1, ("127.0.0.1", 9))
        with self.assertRaises(ValueError):
            batch.queue(10, 5, 20, ("127.0.0.1", 9))
        with self.assertRaises(ValueError):
            batch.queue(0, 0, 5, ("localhost", 9))
        with self.assertRaises(TypeError):
            batch.queue(0, 0, 5, "127.0.0.1")
        with self.assertRaises(OverflowError):
            batch.queue(0, 0, 5, ("127.0.0.1", 70000))
        self.assertEqual(batch.queued, 0)
        batch.queue(0, 0, 5, ("127.0.0.1", 9))
        with self.assertRaises(BufferError):
            batch.queue(0, 0, 5, ("127.0.0.1", 9))
        self.assertEqual(batch.take(), [(b"\0" * 5, ("127.0.0.1", 9))])

    def test_datagrams_longer_than_a_slot_are_dropped_and_counted(self) -> None:
        """A datagram that does not fit its slot is not handed over truncated."""
        sender, receiver = self.sockets()
        batch, _ = self.batch(count=2, stride=HEADROOM + 100)
        sender.sendto(b"x" * 101, receiver.getsockname())
        sender.sendto(b"y" * 100, receiver.getsockname())
        got = batch.recv(receiver.fileno())
        self.assertEqual([n for _, n, _ in got], [100])
        self.assertEqual(batch.truncated, 1)

    def test_buffer_is_held_for_the_batch_life(self) -> None:
        """The bytearray cannot be resized under the batch (its slots would dangle); it can once the batch is gone."""
        batch, buffer = self.batch(count=1)
        with self.assertRaises(BufferError):
            buffer.extend(b"x")
        del batch
        buffer.extend(b"x")

    def test_bad_construction_and_errors_of_recv(self) -> None:
        """Sizes are checked; recv on something that is not a socket raises OSError."""
        with self.assertRaises(ValueError):
            Batch(bytearray(10), 1, 100, 39)
        with self.assertRaises(ValueError):
            Batch(bytearray(100), 1, 39, 39)
        with self.assertRaises(BufferError):
            Batch(b"read-only", 1, 5, 0)
        batch, _ = self.batch(count=1)
        with open("/dev/null", "rb") as f:
            with self.assertRaises(OSError):
                batch.recv(f.fileno())


class SendListTests(SynchronousTestCase):
    """send_list: bytes objects straight to sendmmsg, count at a time; what cannot go is counted."""

    def setUp(self) -> None:
        """Skip where the helper is not built."""
        if Batch is None:
            raise SkipTest("voiceedge.relay._batchio is not built: scripts/test builds it")
        self.sender, self.receiver = udp(), udp()
        self.addCleanup(self.sender.close)
        self.addCleanup(self.receiver.close)
        self.batch = Batch(bytearray(4 * 2048), 4, 2048, 0)

    def test_every_datagram_in_order_over_several_calls(self) -> None:
        """Eleven datagrams through a batch of four, equal runs among them (GSO): all arrive, in order, whole."""
        to = self.receiver.getsockname()
        datagrams = [(bytes([i]) * (100 if i < 6 else 50 + i), to) for i in range(11)]
        sent, sent_bytes, failed = self.batch.send_list(self.sender.fileno(), datagrams)
        self.assertEqual((sent, sent_bytes, failed), (11, sum(len(d) for d, _ in datagrams), 0))
        self.assertEqual([d for d, _ in drain(self.receiver)], [d for d, _ in datagrams])
        self.assertEqual(self.batch.queued, 0)

    def test_entries_that_are_not_datagrams_are_skipped_and_counted(self) -> None:
        """Not bytes, not a pair, a name rather than a numeric address: each failed with EINVAL; the rest go."""
        to = self.receiver.getsockname()
        datagrams: list[Any] = [(b"one", to), ("text", to), (b"x", ("localhost", to[1])), (b"y",), b"z", (b"two", to)]
        sent, _, failed = self.batch.send_list(self.sender.fileno(), datagrams)
        self.assertEqual((sent, failed, self.batch.last_errno), (2, 4, errno.EINVAL))
        self.assertEqual([d for d, _ in drain(self.receiver)], [b"one", b"two"])

    def test_a_refused_datagram_spares_the_rest(self) -> None:
        """A datagram too long for UDP fails alone (EMSGSIZE)."""
        to = self.receiver.getsockname()
        sent, _, failed = self.batch.send_list(self.sender.fileno(), [(b"a", to), (b"x" * 70000, to), (b"b", to)])
        self.assertEqual((sent, failed, self.batch.last_errno), (2, 1, errno.EMSGSIZE))
        self.assertEqual([d for d, _ in drain(self.receiver)], [b"a", b"b"])

    def test_misuse_raises(self) -> None:
        """Not a list, or datagrams already queued, is a programming error; a closed socket fails every datagram."""
        to = self.receiver.getsockname()
        self.assertRaises(TypeError, self.batch.send_list, self.sender.fileno(), ((b"a", to),))
        self.batch.queue(0, 0, 1, to)
        self.assertRaises(BufferError, self.batch.send_list, self.sender.fileno(), [(b"a", to)])
        self.batch.send(self.sender.fileno())
        self.assertEqual(self.batch.send_list(-1, [(b"a", to), (b"b", to)]), (0, 0, 2))


class DestinationCacheTests(SynchronousTestCase):
    """queue() converts a destination tuple once and reuses it: never the wrong address."""

    def setUp(self) -> None:
        """Skip where the helper is not built."""
        if Batch is None:
            raise SkipTest("voiceedge.relay._batchio is not built: scripts/test builds it")

    def test_many_destinations_each_get_their_own_address(self) -> None:
        """600 tuples (more than the cache holds, so entries collide), each queued twice: every datagram to its own."""
        batch = Batch(bytearray(64 * 16), 64, 16, 0)
        destinations = [(f"10.0.{i // 250}.{i % 250}", 1000 + i) for i in range(300)]
        destinations += [(f"2001:db8::{i + 1:x}", 2000 + i) for i in range(300)]
        order = destinations + destinations[::-1]
        got = []
        for start in range(0, len(order), 64):
            for addr in order[start : start + 64]:
                batch.queue(0, 0, 1, addr)
            got += [addr for _, addr in batch.take()]
        self.assertEqual(got, order)

    def test_a_refused_destination_is_not_remembered(self) -> None:
        """A tuple that failed to convert fails again (and a good one after it still goes)."""
        batch = Batch(bytearray(16), 1, 16, 0)
        bad = ("not an address", 9)
        for _ in range(2):
            with self.assertRaises(ValueError):
                batch.queue(0, 0, 1, bad)
        batch.queue(0, 0, 1, ("127.0.0.1", 9))
        self.assertEqual(batch.take(), [(b"\0", ("127.0.0.1", 9))])


def _headers() -> Iterator[tuple[str, bytes]]:
    """Well-formed headers of every layout, and one malformed datagram of each kind encap refuses."""
    for client, ingress in (
        (("198.51.100.7", 50000), ("203.0.113.1", 3478)),
        (("2001:db8::7", 50001), ("203.0.113.1", 3478)),
        (("198.51.100.7", 1), ("2001:db8::1", 3478)),
        (("2001:db8::7", 65535), ("2001:db8::1", 3478)),
    ):
        datagram = encap.encode(encap.Envelope(client, ingress), b"\x80payload")
        yield "good", datagram
        buffer = bytearray(encap.MAX_HEADER_SIZE)
        client_ip = socket.inet_pton(socket.AF_INET6 if ":" in client[0] else socket.AF_INET, client[0])
        ingress_ip = socket.inet_pton(socket.AF_INET6 if ":" in ingress[0] else socket.AF_INET, ingress[0])
        size = encap.pack_header_into(buffer, client_ip, client[1], ingress_ip, ingress[1], 3)
        yield "hops", bytes(buffer[:size]) + b"\x80payload"
        yield "truncated", datagram[: size - 2]
        yield "hop count too high", bytes(buffer[: size - 1]) + bytes([encap.MAX_HOPS + 1])
    yield "empty", b""
    yield "one byte", b"\xf1"
    yield "not encapsulated", b"\x80\x00" + bytes(40)
    yield "version 2", b"\xf2\x00" + bytes(40)
    yield "reserved flags", b"\xf1\x08" + bytes(40)


class HeaderParserTests(SynchronousTestCase):
    """The helper's header parser says what voiceedge.wire.encap says, and recv_routed() uses it."""

    def setUp(self) -> None:
        """Skip where the helper is not built."""
        if Batch is None:
            raise SkipTest("voiceedge.relay._batchio is not built: scripts/test builds it")

    def test_peek_client_agrees_with_encap(self) -> None:
        """Every layout reads the same; every malformed header fails with encap's message."""
        from voiceedge.relay._batchio import peek_client

        kinds = set()
        for kind, datagram in _headers():
            kinds.add(kind)
            try:
                expected: object = encap.peek_client(datagram)
            except encap.EncapError as e:
                expected = str(e)
                with self.assertRaises(ValueError) as raised:
                    peek_client(datagram)
                self.assertEqual(str(raised.exception), expected, kind)
                continue
            self.assertEqual(peek_client(datagram), expected, kind)
            self.assertEqual(peek_client(bytearray(datagram)), expected, kind)
        self.assertEqual(len(kinds), 9)

    def test_recv_routed_gives_payloads_of_known_clients_and_the_rest_whole(self) -> None:
        """A known client's datagram: its payload and its table entry; anything else whole, with None."""
        sender, receiver = udp(), udp()
        for sock in (sender, receiver):
            self.addCleanup(sock.close)
        buffer = bytearray(16 * 2048)
        batch = Batch(buffer, 16, 2048, 0)
        with self.assertRaises(TypeError):
            batch.recv_routed(receiver.fileno())  # no table yet
        known = ("198.51.100.7", 50000)
        table = {(socket.inet_pton(socket.AF_INET, known[0]), known[1]): "the flow"}
        batch.route_by(table)
        ingress = ("203.0.113.1", 3478)
        datagrams = [
            encap.encode(encap.Envelope(known, ingress), b"\x80one"),
            encap.encode(encap.Envelope(("198.51.100.8", 50000), ingress), b"\x80unknown"),
            encap.encode(encap.Envelope(known, ingress), b""),
            b"\x80not encapsulated",
            encap.encode(encap.Envelope(known, ingress), b"\x80two")[:10],  # truncated
        ] + [d for kind, d in _headers() if kind == "hops"]
        for data in datagrams:
            sender.sendto(data, receiver.getsockname())
        got = batch.recv_routed(receiver.fileno())
        self.assertEqual(len(got), len(datagrams))
        for i, ((at, end, source, flow), data) in enumerate(zip(got, datagrams)):
            self.assertEqual(source, sender.getsockname())
            self.assertEqual(end, i * 2048 + len(data))
            if i in (0, 2):
                self.assertEqual(flow, "the flow")
                self.assertEqual(bytes(buffer[at:end]), data[14:])
            else:
                self.assertIsNone(flow)
                self.assertEqual(bytes(buffer[at:end]), data)
        # route() reads a datagram already in the buffer the same way.
        self.assertEqual(batch.route(0, len(datagrams[0]), known), (14, len(datagrams[0]), known, "the flow"))
        with self.assertRaises(ValueError):
            batch.route(len(buffer) - 2, 3, known)
        with self.assertRaises(TypeError):
            batch.route_by([])


class ForwardingFastPathTests(SynchronousTestCase):
    """recv_media and recv_returns queue exactly what the relay's Python hot path would, and leave the rest in order."""

    def setUp(self) -> None:
        """Skip where the helper is not built; two loopback sockets."""
        if Batch is None:
            raise SkipTest("voiceedge.relay._batchio is not built: scripts/test builds it")
        self.sender, self.receiver = udp(), udp()
        for sock in (self.sender, self.receiver):
            self.addCleanup(sock.close)

    def flow(self, client: tuple[str, int], hop: tuple[str, int]) -> Any:
        """A confirmed Flow from ``client`` to ``hop``, with a 14-byte header."""
        from voiceedge.relay.flows import Flow

        packed = socket.inet_pton(socket.AF_INET, client[0])
        header = encap.encode(encap.Envelope(client, ("203.0.113.1", 3478)), b"")
        return Flow(client, packed, hop, 0.0, b"u", header, confirmed=True)

    def test_recv_media_queues_media_on_confirmed_flows_until_the_first_it_leaves(self) -> None:
        """Media from a confirmed client: header in front, queued for its hop, last_seen stamped; from a check on, all returned."""
        buffer = bytearray(8 * STRIDE)
        batch = Batch(buffer, 8, STRIDE, HEADROOM)
        source = self.sender.getsockname()
        hop = ("127.0.0.9", 4000)
        flow = self.flow(source, hop)
        table = {source: flow}
        datagrams = [b"\x80one", b"\x17two", b"\x00\x01check", b"\x80three"]
        for data in datagrams:
            self.sender.sendto(data, self.receiver.getsockname())
        rest = batch.recv_media(self.receiver.fileno(), table, 12.5, 1500)
        self.assertEqual(batch.received, 4)
        self.assertEqual([bytes(buffer[at : at + n]) for at, n, _ in rest], datagrams[2:])
        self.assertEqual([addr for _, _, addr in rest], [source, source])
        self.assertEqual(flow.last_seen, 12.5)
        self.assertEqual(batch.take(), [(flow.header + d, hop) for d in datagrams[:2]])

    def test_media_leaves_what_python_would_not_forward(self) -> None:
        """Unknown source, empty, STUN-range first byte, above max_payload: not queued, last_seen untouched."""
        buffer = bytearray(2 * STRIDE)
        batch = Batch(buffer, 2, STRIDE, HEADROOM)
        client = ("198.51.100.7", 5000)
        flow = self.flow(client, ("127.0.0.9", 4000))
        table = {client: flow}
        cases = [(b"\x80media", ("198.51.100.8", 5000), 1500), (b"", client, 1500), (b"\x03x", client, 1500),
                 (b"\x80" * 101, client, 100)]
        for data, source, max_payload in cases:
            buffer[HEADROOM : HEADROOM + len(data)] = data
            self.assertFalse(batch.media(HEADROOM, len(data), source, table, 9.0, max_payload), (data, source))
        self.assertEqual(batch.queued, 0)
        self.assertEqual(flow.last_seen, 0.0)
        self.assertTrue(batch.media(HEADROOM, 5, client, table, 9.0, 1500))
        self.assertEqual(flow.last_seen, 9.0)
        self.assertEqual(batch.foreign, 0)
        flow.foreign = True  # to another worker's transceiver: counted for cross_worker_packets
        self.assertTrue(batch.media(HEADROOM, 5, client, table, 9.5, 1500))
        self.assertEqual(batch.foreign, 1)
        with self.assertRaises(ValueError):
            batch.media(0, 5, client, table, 9.0, 1500)  # no header room in front

    def test_flows_of_any_type_are_read_as_getattr_reads_them(self) -> None:
        """The slots are read through Flow's descriptors; an object keeping them in its __dict__ works the same."""
        import types

        buffer = bytearray(2 * STRIDE)
        batch = Batch(buffer, 2, STRIDE, HEADROOM)
        client, hop = ("198.51.100.7", 5000), ("127.0.0.9", 4000)
        loose = types.SimpleNamespace(header=b"H" * 14, next_hop=hop, last_seen=0.0, foreign=False)
        slotted = self.flow(client, hop)
        for flow in (loose, slotted, loose):
            buffer[HEADROOM : HEADROOM + 5] = b"\x80abcd"
            self.assertTrue(batch.media(HEADROOM, 5, client, {client: flow}, 7.0, 1500))
            self.assertEqual(flow.last_seen, 7.0)
            self.assertEqual(batch.take(), [(flow.header + b"\x80abcd", hop)])
            flow.last_seen = 0.0
        del slotted.header  # an unset slot: left to Python (whose own read would raise), nothing queued
        self.assertFalse(batch.media(HEADROOM, 5, client, {client: slotted}, 7.0, 1500))
        self.assertEqual(batch.queued, 0)

    def test_recv_returns_queues_owned_answers_until_the_first_it_leaves(self) -> None:
        """An answer from a confirmed flow's own, allowed hop: its payload queued for the client; from another sender on, all returned."""
        buffer = bytearray(8 * 2048)
        batch = Batch(buffer, 8, 2048, 0)
        client = ("198.51.100.7", 50000)
        hop = self.sender.getsockname()
        flow = self.flow(client, hop)
        batch.route_by({flow.route_key: flow})
        ingress = ("203.0.113.1", 3478)
        datagrams = [encap.encode(encap.Envelope(client, ingress), b"\x80%d" % i) for i in range(4)]
        datagrams[2] = b"\x80not encapsulated"
        for data in datagrams:
            self.sender.sendto(data, self.receiver.getsockname())
        rest = batch.recv_returns(self.receiver.fileno(), {hop[0]: True})
        self.assertEqual(batch.received, 4)
        self.assertEqual(batch.take(), [(b"\x800", client), (b"\x801", client)])
        self.assertEqual([(bytes(buffer[at:end]), f) for at, end, _, f in rest],
                         [(datagrams[2], None), (b"\x803", flow)])

    def test_forward_leaves_what_python_would_not_forward(self) -> None:
        """Pending flow, another owner, a global-hop flow, a sender not allowed, a hop count: not queued."""
        buffer = bytearray(2 * 2048)
        batch = Batch(buffer, 2, 2048, 0)
        client, hop, ingress = ("198.51.100.7", 50000), ("127.0.0.9", 4000), ("203.0.113.1", 3478)
        flow = self.flow(client, hop)
        batch.route_by({flow.route_key: flow})
        allowed = {hop[0]: True, "127.0.0.10": True}
        data = encap.encode(encap.Envelope(client, ingress), b"\x80x")
        buffer[: len(data)] = data

        def forwarded(source: tuple[str, int] = hop, sources: dict[str, bool] = allowed) -> bool:
            return batch.forward(0, len(data), source, sources) is None

        self.assertTrue(forwarded())
        self.assertEqual(batch.take(), [(b"\x80x", client)])
        self.assertFalse(forwarded(("127.0.0.10", 4000)))  # not the owner
        self.assertFalse(forwarded(sources={}))  # the sender not (yet) judged
        self.assertFalse(forwarded(sources={hop[0]: False}))
        flow.return_via = ("192.0.2.5", 3479)
        self.assertFalse(forwarded())
        flow.return_via = None
        flow.confirmed = False
        self.assertFalse(forwarded())
        flow.confirmed = True
        header = bytearray(encap.MAX_HEADER_SIZE)
        size = encap.pack_header_into(header, flow.client_packed, client[1], socket.inet_pton(socket.AF_INET, ingress[0]),
                                      ingress[1], 1)
        hopped = bytes(header[:size]) + b"\x80x"
        buffer[: len(hopped)] = hopped
        self.assertIsNotNone(batch.forward(0, len(hopped), hop, allowed))
        self.assertEqual(batch.queued, 0)
