# -*- test-case-name: tests.test_media_port -*-
"""The transceiver's media socket: every datagram straight to the transceiver, read in batches.

``udp.Port.doRead`` reads with ``recvfrom`` until the socket says ``EAGAIN``,
so a wake-up for one datagram (most wake-ups, below saturation) costs a
second system call and a Python exception; it also counts bytes and calls
through the protocol. :class:`MediaPort` reads with ``recvmmsg`` through the
relay's compiled helper (:mod:`voiceedge.relay._batchio`), as the relay's
ports do: one system call gives every datagram waiting, and a short batch
means the socket is drained. Without the helper it loops on ``recvfrom`` as
Twisted does, minus the extras. Under callgrind, a live transceiver with
eight passthrough calls spends about 6 % fewer instructions per received
packet (README, "What the event loop costs per packet").

Under load it reads on a timer instead (``poll_interval``, from
:class:`~voiceedge.relay.protocol.BatchReadPort`, as the relay's ports can).
What a round makes the transceiver
send leaves in one ``sendmmsg`` per eight datagrams (:meth:`MediaPort.write_list`,
``HELD_MAX`` in :mod:`voiceedge.transceiver.host`).
"""

from __future__ import annotations

import mmap
from typing import Any, Callable

from twisted.application import internet
from twisted.internet import udp
from twisted.internet.interfaces import IReactorFDSet
from twisted.logger import Logger

from voiceedge.relay.protocol import BATCH_COUNT, BatchReadPort, _batchio, batch_backend

__all__ = ["MediaPort", "MediaServer"]

log = Logger()


class MediaPort(BatchReadPort):
    """A port whose reads hand each datagram to ``protocol.datagramReceived`` and nothing more.

    ``backend`` is ``recvmmsg`` (the compiled helper: :data:`BATCH_COUNT`
    datagrams per system call into one preallocated mapping) or ``python``
    (``recvfrom`` per datagram). At most ``batch`` datagrams per wake-up, so
    a flood cannot starve the timers that pace every call's audio.

    Under load it reads every ``poll_interval`` instead of at each wake-up
    (:class:`~voiceedge.relay.protocol.BatchReadPort`).

    A protocol may have ``readStarted(polled)`` and ``readEnded()``, called
    around every read round (the transceiver holds what it sends meanwhile and
    sends it with :meth:`write_list`).
    """

    backend = "python"
    _slots: mmap.mmap | None = None
    _batch: Any = None

    def startListening(self) -> None:  # noqa: N802 - Twisted's name
        """Bind, then make the receive slots if the backend is ``recvmmsg``."""
        super().startListening()
        self._fd = self.socket.fileno()
        if self.backend == "recvmmsg" and _batchio is not None:
            stride = self.maxPacketSize
            self._slots = mmap.mmap(-1, BATCH_COUNT * stride)
            self._batch = _batchio.Batch(self._slots, BATCH_COUNT, stride, 0)
        self._read_started: Callable[[bool], None] = getattr(self.protocol, "readStarted", _started)
        self._read_ended: Callable[[], None] = getattr(self.protocol, "readEnded", _ended)

    def connectionLost(self, reason: Any = None) -> None:  # noqa: N802 - Twisted's name
        """Closed: drop the batch and its mapping (freed with their last reference), then close as BatchReadPort does."""
        self._batch = None
        self._slots = None
        super().connectionLost(reason)

    def write_list(self, datagrams: list[tuple[bytes, Any]]) -> tuple[int, int, int]:
        """Send every ``(data, (host, port))`` in order; ``(sent, bytes sent, failed)``.

        With the helper, ``sendmmsg`` straight from the bytes (a datagram the
        kernel refuses is skipped and counted); else ``sendto`` each.
        """
        batch = self._batch
        if batch is not None:
            result: tuple[int, int, int] = batch.send_list(self._fd, datagrams)
            return result
        sendto = self.socket.sendto
        sent = sent_bytes = failed = 0
        for data, addr in datagrams:
            try:
                sendto(data, addr)
            except OSError:
                failed += 1
                continue
            sent += 1
            sent_bytes += len(data)
        return sent, sent_bytes, failed

    def _hand_on(self, got: list[tuple[int, int, Any]]) -> None:
        """Each datagram of a ``recvmmsg`` round, copied out of its slot, to the protocol."""
        received = self.protocol.datagramReceived
        slots: Any = self._slots
        for at, n, addr in got:
            try:
                received(slots[at : at + n], addr)
            except Exception:
                # A bug, not traffic: keep the socket open rather than let Twisted close it.
                log.failure("media datagram from {addr} failed", addr=addr)

    def _round(self, polled: bool) -> int:
        """Hand every waiting datagram to the protocol, up to ``batch`` of them; how many.

        A protocol's ``readStarted`` or ``readEnded`` raising is a bug, not
        traffic: it is logged, and the port goes on reading (uncaught, it
        would stop the polls, or make Twisted close the socket).
        """
        try:
            self._read_started(polled)
        except Exception:
            log.failure("media read round: readStarted failed")
        try:
            batch = self._batch
            if batch is not None:
                return self._read_batches(batch, batch.recv, self._hand_on)
            return self._read_each(self.protocol.datagramReceived, "media datagram")
        finally:
            try:
                self._read_ended()
            except Exception:
                log.failure("media read round: readEnded failed")


def _started(polled: bool) -> None:
    """A protocol without ``readStarted``."""


def _ended() -> None:
    """A protocol without ``readEnded``."""


class MediaServer(internet.UDPServer):
    """``internet.UDPServer`` that listens with a :class:`MediaPort` on a real reactor.

    On a reactor without file descriptors (a test's fake) it listens as
    ``UDPServer`` does.
    """

    #: MediaPort.poll_interval of the port (seconds; 0: never poll).
    poll_interval = 0.0

    def _getPort(self) -> udp.Port:  # noqa: N802 - Twisted's name
        reactor: Any = self.reactor
        if reactor is None:
            from twisted.internet import reactor as installed

            reactor = installed
        if not IReactorFDSet.providedBy(reactor):
            port: udp.Port = super()._getPort()
            return port
        port_number, protocol = self.args
        port = MediaPort(port_number, protocol, reactor=reactor, **self.kwargs)
        port.backend = batch_backend()
        port.poll_interval = self.poll_interval
        port.startListening()
        return port
