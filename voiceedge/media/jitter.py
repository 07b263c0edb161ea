# -*- test-case-name: tests.test_jitter -*-
"""A sans-I/O jitter buffer for 20 ms Opus RTP frames that adds no delay on a clean network.

Policy
======

- **In order, no wait.**  A frame whose sequence number is the next one due is
  returned by the very next :meth:`JitterBuffer.pop`, whatever the time: on a clean
  network the buffer adds zero delay.
- **A gap is a loss only once something after it has arrived.**  While the next
  frame is missing and nothing later is buffered, :meth:`~JitterBuffer.pop` returns
  ``None``: the sender may simply be silent (DTX, mute), and nothing is invented.
- **Bounded, adaptive wait for reordering.**  When a later packet shows a hole, the
  hole is declared lost after ``wait`` seconds from the moment the hole became
  visible.  ``wait`` is 0 until reordering has been seen.  Every packet that fills a
  hole (or arrives just after its hole was declared lost) is a sample of how late
  reordered packets come; ``wait`` is 1.25 x the largest recent sample + 5 ms,
  capped at ``max_wait`` (60 ms by default).  The largest sample halves every
  ``half_life`` seconds (10 s), so the buffer returns to zero wait once the
  network is clean again.
- **Lost frames are returned, in order.**  A hole comes out as a :class:`Frame`
  with ``lost=True``, an estimated timestamp and, when the next packet is already
  here, ``next_payload`` so the decoder may use Opus in-band FEC.  Each missing
  frame of a run comes out as its own lost frame, so the audio timeline is kept.
- **Late and duplicate packets are dropped and counted** in :attr:`JitterBuffer.stats`:
  a packet for a slot already played is a ``duplicate``; one for a slot declared
  lost, skipped, or older than the first packet is ``late``.
- **Bounded size.**  Only sequence numbers in ``[next, next + capacity)`` are kept.
  A packet beyond that window moves the window forward: frames that fall out are
  dropped (``overflow``) and the missing frames jumped over are ``skipped``, not
  reported one by one.  A forward jump of the stream thus resynchronises at once.
  A packet more than ``MAX_MISORDER`` behind is dropped as late, but two such
  packets in sequence mean the sender restarted its sequence: the buffer resets.
- **Sequence numbers wrap** at 2**16: they are unwrapped to a growing integer
  relative to the next expected one.

Driving it
==========

Call :meth:`~JitterBuffer.push` for every RTP packet and :meth:`~JitterBuffer.pop`
until it returns ``None``: on every playout tick (every 20 ms), and, to forward
audio with no added latency, after every push as well.  :meth:`~JitterBuffer.deadline`
says when a waited-for hole will be declared lost, for a driver that would rather
schedule a wake-up than poll.  Time is whatever clock the caller passes as ``now``
(seconds); the buffer never reads a clock itself.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["MAX_MISORDER", "Frame", "JitterBuffer", "JitterStats"]

#: Packets further behind than this are not reordering but a possible restart (RFC 3550 A.1).
MAX_MISORDER = 100

_SEQ_MOD = 1 << 16
_HALF_SEQ = 1 << 15
_TS_MASK = 0xFFFFFFFF
_MARGIN = 0.005  # seconds added to the observed reorder delay
_FORGET = 0.0005  # an observed delay decayed below this counts as none


@dataclass(slots=True)
class Frame:
    """One 20 ms frame out of the buffer, or the mark of a lost one.

    ``sequence_number`` and ``timestamp`` are the RTP values (16 and 32 bits).  For a
    lost frame ``payload`` is empty, ``timestamp`` is estimated, and
    ``next_payload`` is the following packet's payload when it is already buffered.
    """

    sequence_number: int
    timestamp: int
    payload: bytes
    lost: bool = False
    next_payload: bytes | None = None


@dataclass(slots=True)
class JitterStats:
    """Counters of what the buffer did with the packets it was given."""

    pushed: int = 0  # packets given to push()
    played: int = 0  # frames returned with their payload
    lost: int = 0  # frames returned as lost
    reordered: int = 0  # packets that arrived out of order but in time
    late: int = 0  # packets for a slot already declared lost, or too old to place
    duplicates: int = 0  # packets already buffered or already played
    overflow: int = 0  # buffered frames dropped because the window moved past them
    skipped: int = 0  # missing frames jumped over by a window move, never reported
    resets: int = 0  # sequence restarts


class JitterBuffer:
    """Reorders 20 ms RTP frames by sequence number; see the module docstring for the policy.

    ``capacity`` is the window in frames (50 = 1 s); ``max_wait`` bounds the wait
    for a missing packet in seconds; ``timestamp_step`` is the RTP timestamp
    increment of one frame, used to estimate the timestamp of a lost frame (960 for
    20 ms of Opus on its 48 kHz clock); ``half_life`` is how fast, in seconds, the
    memory of observed reordering fades.
    """

    __slots__ = (
        "capacity",
        "max_wait",
        "timestamp_step",
        "half_life",
        "stats",
        "_slots",
        "_next",
        "_highest",
        "_holes",
        "_played",
        "_last_timestamp",
        "_peak",
        "_peak_at",
        "_suspect",
    )

    def __init__(
        self,
        capacity: int = 50,
        max_wait: float = 0.060,
        timestamp_step: int = 960,
        half_life: float = 10.0,
    ) -> None:
        if capacity < 2:
            raise ValueError(f"capacity must be at least 2 frames, not {capacity!r}")
        if max_wait < 0:
            raise ValueError(f"max_wait must not be negative, not {max_wait!r}")
        if half_life <= 0:
            raise ValueError(f"half_life must be positive, not {half_life!r}")
        self.capacity = capacity
        self.max_wait = max_wait
        self.timestamp_step = timestamp_step
        self.half_life = half_life
        self.stats = JitterStats()
        # Unwrapped sequence number -> (timestamp, payload).
        self._slots: dict[int, tuple[int, bytes]] = {}
        self._next: int | None = None
        self._highest = 0
        # Unwrapped sequence number of a hole -> when it became visible (a later
        # packet arrived).  Kept after the hole is declared lost, to measure how
        # late its packet turns up, until it leaves the window behind _next.
        self._holes: dict[int, float] = {}
        # Unwrapped sequence numbers played within the last window behind _next,
        # to tell a duplicate from a late packet.
        self._played: set[int] = set()
        self._last_timestamp: int | None = None
        # The largest recent reorder delay, and when it was observed.
        self._peak = 0.0
        self._peak_at = 0.0
        # The last packet far behind _next: a restart if the next one follows it.
        self._suspect: int | None = None

    def __len__(self) -> int:
        """Return the number of frames buffered."""
        return len(self._slots)

    def push(self, sequence_number: int, timestamp: int, payload: bytes, now: float) -> None:
        """Take one RTP packet's sequence number, timestamp and payload, arrived at ``now``."""
        self.stats.pushed += 1
        nxt = self._next
        if nxt is None:
            self._start(sequence_number, timestamp, payload)
            return
        # Unwrap to the integer nearest the next expected sequence number.
        delta = (sequence_number - nxt + _HALF_SEQ) % _SEQ_MOD - _HALF_SEQ
        seq = nxt + delta
        if delta < 0:
            self._behind(seq, sequence_number, timestamp, payload, now)
            return
        self._suspect = None
        slots = self._slots
        if seq in slots:
            self.stats.duplicates += 1
            return
        if delta >= self.capacity:
            nxt = self._advance_window(seq)
        slots[seq] = (timestamp, payload)
        highest = self._highest
        if seq == highest + 1:
            # The common packet: the one after the highest, no hole to mark.
            self._highest = seq
        elif seq > highest:
            holes = self._holes
            for missing in range(max(highest + 1, nxt), seq):
                holes[missing] = now
            self._highest = seq
        else:
            self.stats.reordered += 1
            since = self._holes.pop(seq, None)
            if since is not None:
                self._observe(now - since, now)

    def push_next(self, sequence_number: int, timestamp: int, payload: bytes, now: float) -> bool:
        """:meth:`push` then :meth:`pop` of the packet the buffer awaits when it holds nothing else.

        ``True`` if it was that packet: it went straight through (the caller plays
        ``payload``; a :meth:`pop` now would return ``None``). ``False``: nothing was
        done, :meth:`push` it. The in-order packet of a steady stream, once per frame:
        the same bookkeeping as the two calls, without the :class:`Frame`.
        """
        nxt = self._next
        if nxt is None or self._slots or sequence_number != nxt % _SEQ_MOD or self._highest != nxt - 1:
            return False
        self.stats.pushed += 1
        self._suspect = None
        self._highest = nxt
        self._play(nxt, timestamp)
        return True

    def pop(self, now: float) -> Frame | None:
        """Return the next frame in order, a lost-frame mark, or ``None`` if none is due."""
        nxt = self._next
        if nxt is None:
            return None
        slot = self._slots.pop(nxt, None)
        if slot is not None:
            self._play(nxt, slot[0])
            return Frame(nxt % _SEQ_MOD, slot[0], slot[1])
        if self._highest < nxt:
            return None  # nothing later has arrived: silence, not loss
        since = self._holes.get(nxt, now)
        if now < since + self._wait(since):
            return None
        following = self._slots.get(nxt + 1)
        timestamp = self._estimate_timestamp(nxt)
        self._step(nxt)
        self._last_timestamp = timestamp
        self.stats.lost += 1
        return Frame(
            nxt % _SEQ_MOD,
            timestamp,
            b"",
            lost=True,
            next_payload=None if following is None else following[1],
        )

    def deadline(self) -> float | None:
        """Return when :meth:`pop` will declare the awaited frame lost, if it is awaited.

        ``None`` when the next frame is ready or when nothing after it has arrived.
        """
        nxt = self._next
        if nxt is None or nxt in self._slots or self._highest < nxt:
            return None
        since = self._holes.get(nxt)
        if since is None:
            return None
        return since + self._wait(since)

    def wait(self, now: float) -> float:
        """Return how long, in seconds, a hole that appears at ``now`` will be waited for."""
        return self._wait(now)

    def _start(self, sequence_number: int, timestamp: int, payload: bytes) -> None:
        """Begin (or begin again) at ``sequence_number``."""
        seq = sequence_number % _SEQ_MOD
        self._slots = {seq: (timestamp, payload)}
        self._holes = {}
        self._played = set()
        self._next = seq
        self._highest = seq
        self._last_timestamp = None
        self._suspect = None

    def _behind(
        self, seq: int, sequence_number: int, timestamp: int, payload: bytes, now: float
    ) -> None:
        """Handle a packet for a slot already returned: late, duplicate, or a restart."""
        nxt = self._next
        assert nxt is not None
        if nxt - seq > MAX_MISORDER:
            suspect = self._suspect
            if suspect is not None and seq == suspect + 1:
                self.stats.resets += 1
                self.stats.overflow += len(self._slots)
                self._start(sequence_number, timestamp, payload)
                return
            self._suspect = seq
            self.stats.late += 1
            return
        self._suspect = None
        since = self._holes.pop(seq, None)
        if since is not None:
            # Its hole was declared lost: the wait was too short for this network.
            self._observe(now - since, now)
            self.stats.late += 1
        elif seq in self._played:
            self.stats.duplicates += 1
        else:
            self.stats.late += 1

    def _advance_window(self, seq: int) -> int:
        """Move the window so that ``seq`` is its last slot, skipping a missing front.

        Return the new next sequence number.
        """
        nxt = self._next
        assert nxt is not None
        start = seq - self.capacity + 1
        slots = self._slots
        stale = [s for s in slots if s < start]
        for s in stale:
            del slots[s]
        self.stats.overflow += len(stale)
        if start not in slots:
            # Frames older than the window edge are past saving: resume at the
            # first one we hold (or at seq itself after a jump).
            start = min(slots) if slots else seq
        self.stats.skipped += start - nxt - len(stale)
        self._next = start
        self._holes = {s: t for s, t in self._holes.items() if s >= start}
        self._played = {s for s in self._played if s >= start - self.capacity}
        self._last_timestamp = None
        return start

    def _play(self, nxt: int, timestamp: int) -> None:
        """The awaited frame ``nxt`` (RTP ``timestamp``) is played: step past it (:meth:`_step`,
        inline: once per frame) and count it."""
        self._next = nxt + 1
        gone = nxt - self.capacity
        holes = self._holes
        if holes:
            holes.pop(gone, None)
        played = self._played
        played.discard(gone)
        played.add(nxt)
        self._last_timestamp = timestamp
        self.stats.played += 1

    def _step(self, seq: int) -> None:
        """Move past ``seq`` and forget the hole that leaves the window behind."""
        self._next = seq + 1
        self._holes.pop(seq - self.capacity, None)
        self._played.discard(seq - self.capacity)

    def _estimate_timestamp(self, seq: int) -> int:
        """Guess the RTP timestamp of the lost frame ``seq`` from its neighbours."""
        if self._last_timestamp is not None:
            return (self._last_timestamp + self.timestamp_step) & _TS_MASK
        for later in range(seq + 1, self._highest + 1):
            slot = self._slots.get(later)
            if slot is not None:
                return (slot[0] - (later - seq) * self.timestamp_step) & _TS_MASK
        return 0

    def _observe(self, delay: float, now: float) -> None:
        """Remember a reorder delay if it is the largest recent one."""
        if delay >= self._decayed(now):
            self._peak = delay
            self._peak_at = now

    def _decayed(self, at: float) -> float:
        """Return the largest recent reorder delay, faded to time ``at``."""
        if self._peak <= 0.0:
            return 0.0
        age = max(0.0, at - self._peak_at)
        return float(self._peak * 0.5 ** (age / self.half_life))

    def _wait(self, at: float) -> float:
        """Return the wait for a hole that became visible at ``at``."""
        decayed = self._decayed(at)
        if decayed < _FORGET:
            return 0.0
        return min(self.max_wait, decayed * 1.25 + _MARGIN)
