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
