"""Helpers for the relay's tests: which backend can run here, a recording batch, a clock for ports, draining a socket."""

from __future__ import annotations

import mmap
import socket
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SkipTest

from voiceedge.relay.core import OFFSET
from voiceedge.relay.protocol import batch_backend
from voiceedge.wire import encap

Sent = list[tuple[bytes, tuple[str, int]]]


def require_backend(backend: str) -> None:
    """Skip unless the relay can run ``backend`` here (``python`` always can)."""
    if backend == "recvmmsg" and batch_backend() != "recvmmsg":
        raise SkipTest(
            "voiceedge.relay._batchio is not built (or VOICEEDGE_RELAY_BATCH_IO=python):"
            " scripts/test builds it"
        )


class RecordingBatch:
    """The compiled :class:`Batch`, whose sends are recorded instead of made.

    The relay's fakes route to addresses no loopback socket reaches, so
    ``send`` takes the queue (what ``sendmmsg`` would have sent) into a list.
    Queueing, the slots and the address conversion are the helper's own.
    """

    count = 4

    def __init__(self, sent: Sent, headroom: int = OFFSET) -> None:
        """Client datagrams (header room, headers counted out of the payload); ``headroom=0``: the return path's."""
        from voiceedge.relay._batchio import Batch

        self.sent = sent
        self.stride = OFFSET + 65536
        self.headroom = headroom
        self.buffer = mmap.mmap(-1, self.count * self.stride)  # as the ports allocate theirs
        self.batch = Batch(self.buffer, self.count, self.stride, self.headroom)
        self.queue = self.batch.queue
        self.route_by = self.batch.route_by
        self.route = self.batch.route
        self.media = self.batch.media
        self.forward = self.batch.forward
        self.fail = 0  # how many of the next datagrams fail, as a full socket buffer would

    @property
    def queued(self) -> int:
        """Datagrams waiting."""
        return self.batch.queued

    @property
    def foreign(self) -> int:
        """Media the helper queued for flows marked foreign."""
        return self.batch.foreign

    @property
    def received(self) -> int:
        """Datagrams the last receive took (none: this batch's datagrams are put, not received)."""
        return self.batch.received

    def send(self, fd: int) -> tuple[int, int, int]:
        """Record the queue as sent (less the first ``fail``): (sent, payload bytes, failed)."""
        taken = self.batch.take()
        failed = min(self.fail, len(taken))
        self.fail -= failed
        sent = taken[failed:]
        self.sent.extend(sent)
        if self.headroom:  # to transceivers: the encapsulation header is not payload
            return len(sent), sum(len(d) - encap.peek_client(d)[2] for d, _ in sent), failed
        return len(sent), sum(len(d) for d, _ in sent), failed

    def put(self, slot: int, data: bytes) -> tuple[int, int]:
        """Write ``data`` where a recv() would have put datagram ``slot``: (offset, length)."""
        at = slot * self.stride + self.headroom
        self.buffer[at : at + len(data)] = data
        return at, len(data)


class FdClock(Clock):
    """A task.Clock that keeps the readers a port adds, as a reactor does (it never reads them)."""

    def __init__(self) -> None:
        super().__init__()
        self.readers: set[Any] = set()

    def addReader(self, reader: Any) -> None:  # noqa: N802 - Twisted's name
        self.readers.add(reader)

    def removeReader(self, reader: Any) -> None:  # noqa: N802 - Twisted's name
        self.readers.discard(reader)

    def removeWriter(self, writer: Any) -> None:  # noqa: N802 - Twisted's name
        """A port never writes through the reactor."""


def drain(sock: socket.socket) -> list[tuple[bytes, Any]]:
    """Everything waiting on the non-blocking ``sock``: ``(data, (host, port))`` each."""
    got = []
    while True:
        try:
            data, addr = sock.recvfrom(65536)
        except BlockingIOError:
            return got
        got.append((data, addr[:2]))
