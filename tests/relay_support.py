"""Helpers for the relay's tests: which public-port backend can run here, and a recording batch."""

from __future__ import annotations

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

    def __init__(self, sent: Sent) -> None:
        from voiceedge.relay._batchio import Batch

        self.sent = sent
        self.stride = OFFSET + 65536
        self.headroom = OFFSET
        self.buffer = bytearray(self.count * self.stride)
        self.batch = Batch(self.buffer, self.count, self.stride, self.headroom)
        self.queue = self.batch.queue
        self.fail = 0  # how many of the next datagrams fail, as a full socket buffer would

    @property
    def queued(self) -> int:
        """Datagrams waiting."""
        return self.batch.queued

    def send(self, fd: int) -> tuple[int, int, int]:
        """Record the queue as sent (less the first ``fail``): (sent, payload bytes, failed)."""
        taken = self.batch.take()
        failed = min(self.fail, len(taken))
        self.fail -= failed
        sent = taken[failed:]
        self.sent.extend(sent)
        return len(sent), sum(len(d) - encap.peek_client(d)[2] for d, _ in sent), failed
