# -*- test-case-name: tests.test_media_port -*-
"""The transceiver's media socket reader: every datagram, whole, once, under either backend."""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet import reactor
from twisted.internet.protocol import DatagramProtocol
from twisted.trial import unittest

from voiceedge.relay.protocol import BATCH_COUNT, _batchio, batch_backend
from voiceedge.transceiver.media_port import MediaPort, MediaServer

from tests.relay_support import FdClock


class Recorder(DatagramProtocol):
    """Keeps what it is handed; raises for a datagram equal to ``poison``."""

    def __init__(self, poison: bytes | None = None) -> None:
        self.got: list[tuple[bytes, Any]] = []
        self.poison = poison

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:  # noqa: N802 - Twisted's name
        if datagram == self.poison:
            raise ZeroDivisionError("a bug in the protocol")
        self.got.append((datagram, addr))


class _Backend:
    """The tests, for one backend; the port is read by calling doRead (the reactor never runs)."""

    backend = "python"

    def listen(self, protocol: DatagramProtocol, interface: str = "127.0.0.1") -> MediaPort:
        if self.backend == "recvmmsg" and _batchio is None:
            raise unittest.SkipTest("voiceedge.relay._batchio is not built")
        port = MediaPort(0, protocol, interface=interface, maxPacketSize=65536, reactor=reactor)
        port.backend = self.backend
        port.startListening()
        self.addCleanup(lambda: port.stopListening() if port.connected else None)  # type: ignore[attr-defined]
        return port

    def sender(self, family: int = socket.AF_INET) -> socket.socket:
        s = socket.socket(family, socket.SOCK_DGRAM)
        self.addCleanup(s.close)  # type: ignore[attr-defined]
        s.bind(("::1" if family == socket.AF_INET6 else "127.0.0.1", 0))
        return s

    def test_every_datagram_whole_in_order(self) -> None:
        """More than one batch of datagrams, of every size up to the largest, arrive whole, in order, with their source."""
        protocol = Recorder()
        port = self.listen(protocol)
        s = self.sender()
        sizes = [1, 20, 172, 1200, 1408, 9000, 65507] + [160] * (2 * BATCH_COUNT + 3)
        sent = [bytes([i % 251]) * n for i, n in enumerate(sizes)]
        for data in sent:
            s.sendto(data, ("127.0.0.1", port.getHost().port))
        port.doRead()
        self.assertEqual([d for d, _ in protocol.got], sent)  # type: ignore[attr-defined]
        self.assertEqual({a for _, a in protocol.got}, {s.getsockname()})  # type: ignore[attr-defined]

    def test_nothing_waiting(self) -> None:
        """A read with nothing waiting hands nothing on and raises nothing."""
        protocol = Recorder()
        port = self.listen(protocol)
        port.doRead()
        self.assertEqual(protocol.got, [])  # type: ignore[attr-defined]

    def test_at_most_batch_per_wake_up(self) -> None:
        """A flood is read ``batch`` datagrams per wake-up, the rest at the next."""
        protocol = Recorder()
        port = self.listen(protocol)
        port.batch = BATCH_COUNT
        s = self.sender()
        for i in range(BATCH_COUNT + 5):
            s.sendto(i.to_bytes(2, "big"), ("127.0.0.1", port.getHost().port))
        port.doRead()
        self.assertEqual(len(protocol.got), BATCH_COUNT)  # type: ignore[attr-defined]
        port.doRead()
        self.assertEqual(len(protocol.got), BATCH_COUNT + 5)  # type: ignore[attr-defined]

    def test_a_failing_datagram_spares_the_rest(self) -> None:
        """The protocol raising for one datagram is logged; the others still arrive and the socket stays open."""
        protocol = Recorder(poison=b"bad")
        port = self.listen(protocol)
        s = self.sender()
        for data in (b"one", b"bad", b"two"):
            s.sendto(data, ("127.0.0.1", port.getHost().port))
        port.doRead()
        self.assertEqual([d for d, _ in protocol.got], [b"one", b"two"])  # type: ignore[attr-defined]
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)  # type: ignore[attr-defined]
        self.assertTrue(port.connected)  # type: ignore[attr-defined]

    def test_ipv6_source_is_host_and_port(self) -> None:
        """From IPv6 the source is (host, port), as from IPv4."""
        if not socket.has_ipv6:
            raise unittest.SkipTest("no IPv6")
        try:
            s = self.sender(socket.AF_INET6)
        except OSError as e:
            raise unittest.SkipTest(f"no IPv6 loopback: {e}")
        protocol = Recorder()
        port = self.listen(protocol, interface="::1")
        s.sendto(b"hello", ("::1", port.getHost().port))
        port.doRead()
        self.assertEqual(protocol.got, [(b"hello", s.getsockname()[:2])])  # type: ignore[attr-defined]


    def test_write_list_sends_each_in_order_and_counts_failures(self) -> None:
        """write_list sends every datagram in order; one the kernel refuses (too long) is counted, the rest go."""
        port = self.listen(Recorder())
        receiver = self.sender()
        receiver.setblocking(False)
        to = receiver.getsockname()
        datagrams = [(bytes([i]) * (100 + i % 3), to) for i in range(2 * BATCH_COUNT + 1)]
        datagrams.insert(5, (b"x" * 70000, to))
        sent, sent_bytes, failed = port.write_list(datagrams)
        self.assertEqual((sent, failed), (2 * BATCH_COUNT + 1, 1))  # type: ignore[attr-defined]
        got = []
        while True:
            try:
                got.append(receiver.recv(65536))
            except BlockingIOError:
                break
        expected = [d for d, _ in datagrams if len(d) < 70000]
        self.assertEqual(got, expected)  # type: ignore[attr-defined]
        self.assertEqual(sent_bytes, sum(map(len, expected)))  # type: ignore[attr-defined]


class Rounds(Recorder):
    """A Recorder that also notes the read rounds around its datagrams."""

    def __init__(self) -> None:
        super().__init__()
        self.rounds: list[tuple[str, Any]] = []

    def readStarted(self, polled: bool) -> None:  # noqa: N802 - MediaPort's name
        self.rounds.append(("started", polled))

    def readEnded(self) -> None:  # noqa: N802 - MediaPort's name
        self.rounds.append(("ended", len(self.got)))


class PollingTests(unittest.SynchronousTestCase):
    """Under load the port reads on a timer, and waits for the socket again once it is quiet."""

    def setUp(self) -> None:
        self.clock = FdClock()
        self.protocol = Rounds()
        self.port = MediaPort(0, self.protocol, interface="127.0.0.1", maxPacketSize=65536, reactor=self.clock)
        self.port.backend = batch_backend()
        self.port.poll_interval = 0.002
        self.port.startListening()
        self.addCleanup(self._close)
        self.sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(self.sender.close)
        self.sender.bind(("127.0.0.1", 0))

    def _close(self) -> None:
        if self.port.connected:
            self.port.stopListening()
            self.clock.advance(0)

    def send(self, *datagrams: bytes) -> None:
        for data in datagrams:
            self.sender.sendto(data, ("127.0.0.1", self.port.getHost().port))

    def test_wake_ups_far_apart_never_poll(self) -> None:
        """A datagram per wake-up, each more than the interval after the last: the port keeps waiting on the socket."""
        for i in range(3):
            self.send(b"%d" % i)
            self.port.doRead()
            self.clock.advance(0.005)
        self.assertIn(self.port, self.clock.readers)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual([r for r in self.protocol.rounds if r[0] == "started"], [("started", False)] * 3)

    def test_a_quick_second_wake_up_polls_until_a_poll_finds_nothing(self) -> None:
        """Two wake-ups within the interval: the port stops waiting on the socket and polls; what came meanwhile
        is read by the poll, every round is framed by readStarted/readEnded, and an empty poll goes back to waiting."""
        self.send(b"a")
        self.port.doRead()
        self.clock.advance(0.001)
        self.send(b"b")
        self.port.doRead()
        self.assertNotIn(self.port, self.clock.readers)
        self.send(b"c", b"d")
        self.clock.advance(0.002)
        self.assertEqual([d for d, _ in self.protocol.got], [b"a", b"b", b"c", b"d"])
        self.assertNotIn(self.port, self.clock.readers)
        self.clock.advance(0.002)  # nothing came: back to the socket
        self.assertIn(self.port, self.clock.readers)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(
            self.protocol.rounds,
            [("started", False), ("ended", 1), ("started", False), ("ended", 2),
             ("started", True), ("ended", 4), ("started", True), ("ended", 4)],
        )

    def test_a_flood_goes_back_to_reading_as_fast_as_the_loop_goes(self) -> None:
        """A poll that reads a whole batch waits on the socket again (its readiness, not the timer, paces a flood)."""
        self.port.batch = BATCH_COUNT
        self.send(b"a")
        self.port.doRead()
        self.send(b"b")
        self.port.doRead()
        self.send(*[b"x"] * (BATCH_COUNT + 1))
        self.clock.advance(0.002)
        self.assertIn(self.port, self.clock.readers)
        self.assertEqual(len(self.protocol.got), 2 + BATCH_COUNT)

    def test_a_wake_up_that_reads_a_whole_batch_does_not_begin_polling(self) -> None:
        """Two quick wake-ups of which the second reads a whole batch (a flood): the port stays on the socket's
        readiness, which reads faster than a poll per interval could (a batch per interval would overflow the socket)."""
        self.port.batch = BATCH_COUNT
        self.send(b"a")
        self.port.doRead()
        self.send(*[b"x"] * BATCH_COUNT)
        self.port.doRead()
        self.assertIn(self.port, self.clock.readers)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(len(self.protocol.got), 1 + BATCH_COUNT)

    def test_closing_while_polling_leaves_no_timer(self) -> None:
        """Stopping the port cancels its next poll."""
        self.send(b"a")
        self.port.doRead()
        self.port.doRead()
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.port.stopListening()
        self.clock.advance(0)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertFalse(self.port.connected)

    def test_a_failing_round_hook_is_logged_and_polling_goes_on(self) -> None:
        """readEnded raising (a bug) is logged; the datagrams were handed on and the polls go on."""

        def broken() -> None:
            raise ZeroDivisionError("a bug in readEnded")

        self.port._read_ended = broken  # type: ignore[method-assign]
        self.send(b"a")
        self.port.doRead()
        self.port.doRead()
        self.send(b"b")
        self.clock.advance(0.002)
        self.assertEqual([d for d, _ in self.protocol.got], [b"a", b"b"])
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 3)

    def test_a_second_reader_does_not_start_a_second_poll(self) -> None:
        """Readable while a poll is pending (something started reading again): still one poll."""
        self.send(b"a")
        self.port.doRead()
        self.port.doRead()
        self.port.startReading()
        self.port.doRead()
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)

    def test_no_interval_never_polls(self) -> None:
        """poll_interval 0 (media_poll_ms = 0): every wake-up reads, none polls."""
        self.port.poll_interval = 0.0
        for _ in range(3):
            self.send(b"a")
            self.port.doRead()
        self.assertIn(self.port, self.clock.readers)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class PythonBackendTests(_Backend, unittest.TestCase):
    """``recvfrom`` per datagram (no compiled helper)."""

    backend = "python"


class RecvmmsgBackendTests(_Backend, unittest.TestCase):
    """``recvmmsg`` into the helper's slots."""

    backend = "recvmmsg"

    def test_closing_releases_the_slots(self) -> Any:
        """Once the port stops listening its batch and mapping are gone."""
        port = self.listen(Recorder())
        self.assertIsNotNone(port._batch)

        def stopped(_: object) -> None:
            self.assertIsNone(port._batch)
            self.assertIsNone(port._slots)

        return port.stopListening().addCallback(stopped)


class MediaServerTests(unittest.SynchronousTestCase):
    """The service picks the port for the reactor it runs on."""

    def test_reactor_without_descriptors_listens_as_udpserver_does(self) -> None:
        """A reactor without file descriptors (a test's fake) gets its own ``listenUDP``."""
        calls: list[tuple[Any, ...]] = []

        class FakeUDP:
            def listenUDP(self, *args: Any, **kwargs: Any) -> str:  # noqa: N802 - Twisted's name
                calls.append((args, kwargs))
                return "port"

        protocol = Recorder()
        server = MediaServer(0, protocol, interface="127.0.0.1", maxPacketSize=65536, reactor=FakeUDP())
        server.privilegedStartService()
        self.assertEqual(calls, [((0, protocol), {"interface": "127.0.0.1", "maxPacketSize": 65536})])

    def test_real_reactor_gets_a_media_port(self) -> None:
        """On the real reactor the service listens with a :class:`MediaPort` of the relay's backend (VOICEEDGE_RELAY_BATCH_IO)."""
        server = MediaServer(0, Recorder(), interface="127.0.0.1", maxPacketSize=65536, reactor=reactor)
        server.privilegedStartService()
        try:
            self.assertIsInstance(server._port, MediaPort)
            self.assertEqual(server._port.backend, batch_backend())
        finally:
            server._port.stopListening()
