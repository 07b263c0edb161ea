# -*- test-case-name: tests.test_media_port -*-
"""The transceiver's media socket: every datagram straight to the transceiver, read in batches.

``udp.Port.doRead`` reads with ``recvfrom`` until the socket says ``EAGAIN``,
so a wake-up for one datagram (most wake-ups, below saturation) costs a
second system call and a Python exception; it also counts bytes and calls
through the protocol. :class:`MediaPort` reads with ``recvmmsg`` through the
relay's compiled helper (:mod:`voiceedge.relay._batchio`): one system call
gives every datagram waiting, and a short batch means the socket is drained.
Without the helper it loops on ``recvfrom`` as Twisted does, minus the extras.
Under callgrind, 6 % fewer instructions per received packet for a live
transceiver with eight passthrough calls (bench/media_path.py measures the
rest of the path).
"""

from __future__ import annotations

import errno
import mmap
import socket
from typing import Any

from twisted.application import internet
from twisted.internet import udp
from twisted.internet.interfaces import IReactorFDSet
from twisted.logger import Logger

from voiceedge.relay.protocol import BATCH_COUNT, _batchio, batch_backend

__all__ = ["MediaPort", "MediaServer"]

log = Logger()

# Errors that end this round of reading, and stale ICMP reports to read past.
_READ_DONE = frozenset((errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR))
_READ_IGNORE = frozenset((errno.ECONNREFUSED, errno.ENETUNREACH, errno.EHOSTUNREACH))


class MediaPort(udp.Port):
    """A udp.Port whose reads hand each datagram to ``protocol.datagramReceived`` and nothing more.

    ``backend`` is ``recvmmsg`` (the compiled helper: :data:`BATCH_COUNT`
    datagrams per system call into one preallocated mapping) or ``python``
    (``recvfrom`` per datagram). At most ``batch`` datagrams per wake-up, so
    a flood cannot starve the timers that pace every call's audio.
    """

    backend = "python"
    batch = 512
    _fd = -1
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

    def connectionLost(self, reason: Any = None) -> None:  # noqa: N802 - Twisted's name
        """Closed: drop the batch and its mapping (freed with their last reference), then close as udp.Port does."""
        self._batch = None
        self._slots = None
        super().connectionLost(reason)

    def _keep_reading(self, e: OSError) -> bool:
        """True to read on after ``e``; False to end this wake-up (and log what is unexpected)."""
        if e.errno in _READ_IGNORE:
            return True
        if e.errno not in _READ_DONE:
            log.error("media socket {port} read failed: {e}", port=self.getHost(), e=e)
        return False

    def doRead(self) -> None:
        """Hand every waiting datagram to the protocol, up to ``batch`` of them."""
        received = self.protocol.datagramReceived
        batch = self._batch
        if batch is not None:
            slots: Any = self._slots
            fd = self._fd
            for _ in range(self.batch // BATCH_COUNT):
                try:
                    got = batch.recv(fd)
                except OSError as e:
                    if self._keep_reading(e):
                        continue
                    return
                for at, n, addr in got:
                    try:
                        received(slots[at : at + n], addr)
                    except Exception:
                        # A bug, not traffic: keep the socket open rather than let Twisted close it.
                        log.failure("media datagram from {addr} failed", addr=addr)
                if len(got) < BATCH_COUNT:
                    return  # drained: no system call just to hear EAGAIN
            return
        recv = self.socket.recvfrom
        size = self.maxPacketSize
        v6 = self.addressFamily == socket.AF_INET6
        for _ in range(self.batch):
            try:
                data, addr = recv(size)
            except OSError as e:
                if self._keep_reading(e):
                    continue
                return
            if v6:
                addr = addr[:2]
            try:
                received(data, addr)
            except Exception:
                log.failure("media datagram from {addr} failed", addr=addr)


class MediaServer(internet.UDPServer):
    """``internet.UDPServer`` that listens with a :class:`MediaPort` on a real reactor.

    On a reactor without file descriptors (a ``MemoryReactor`` in tests) it
    listens as ``UDPServer`` does.
    """

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
        port.startListening()
        return port
