# -*- test-case-name: tests.test_audio -*-
"""The caller's audio on a timeline of its own: RTP timestamps, anchored to the least-delayed arrival.

Why not arrival times: when the event loop stalls and then reads a backlog of
packets at once, the frames all "arrive" at the same moment, and a speech
detector fed arrival times sees the stall as silence and ends the caller's
turn mid-sentence. The RTP timestamp says where each frame really sits in the
caller's audio, so a backlog of contiguous frames stays contiguous, while a
real gap in the timestamps (DTX, loss) stays a gap.

:class:`MediaTimeline` places each frame at ``anchor + rtp_seconds``, where
``anchor`` is the minimum of ``arrival - rtp_seconds`` seen so far: the time
the frame would have arrived without queueing. A frame that comes later than
that has a *lag* (``arrival - time``, 0 on a clean network); the lag of the
latest frame turns "now" on the transceiver's clock into "now" on the
timeline (:meth:`MediaTimeline.media_time`), and a deadline back
(:meth:`MediaTimeline.clock_time`).

A timestamp jump that is no caller's audio (a new SSRC, a restarted sender: the
timestamps go backwards, or fall behind the clock by more than
:data:`MAX_LAG`) re-anchors: the frame is placed at its arrival, a gap after
what came before. A jump forwards needs nothing: the minimum follows it.

Sans-I/O: every call takes the time; nothing reads a clock.
"""

from __future__ import annotations

__all__ = ["MAX_LAG", "MediaTimeline"]

#: A frame this much later than the timeline puts it is no stall of ours to
#: absorb but a sender that restarted its timestamps: the timeline re-anchors.
#: A stall's backlog is at most seconds (the receiver passes at most 1 s of
#: audio faster than real time); clock drift adds well under 1 s an hour.
MAX_LAG = 5.0
_MOD = 1 << 32
_HALF = 1 << 31
# How far a frame may land before the end of the previous one (rounding, a
# sender's jittery timestamps) before it counts as the timestamps going back.
_OVERLAP = 0.005


class MediaTimeline:
    """RTP timestamps (32-bit, wrapping) in; each frame's start on the caller's audio timeline out.

    ``clock_rate`` is the RTP clock (48 kHz for Opus). Times are seconds on
    the clock of the ``arrival`` values given.
    """

    __slots__ = ("clock_rate", "_anchor", "_last_timestamp", "_extended", "_lag", "_end", "reanchors")

    def __init__(self, clock_rate: int = 48000) -> None:
        self.clock_rate = clock_rate
        self._anchor: float | None = None
        self._last_timestamp = 0
        self._extended = 0  # the last timestamp unwrapped
        self._lag = 0.0
        self._end: float | None = None  # where the last frame placed ends
        #: How many times a timestamp jump re-anchored the timeline.
        self.reanchors = 0

    @property
    def lag(self) -> float:
        """How much later than the timeline says the latest frame arrived (seconds, >= 0)."""
        return self._lag

    def place(self, timestamp: int, arrival: float, duration: float = 0.02) -> float:
        """Where the frame with RTP ``timestamp``, taken from the wire at ``arrival``, starts."""
        timestamp &= _MOD - 1
        if self._anchor is not None:
            self._extended += (timestamp - self._last_timestamp + _HALF) % _MOD - _HALF
        # else: counted from the first frame (small numbers keep a float's precision).
        self._last_timestamp = timestamp
        offset = self._extended / self.clock_rate
        earliest = arrival - offset
        anchor = self._anchor
        if anchor is None or earliest <= anchor:
            # The least-delayed frame yet (or a jump forward): it is placed at its arrival.
            anchor = earliest
            start = arrival
        else:
            start = anchor + offset
            if arrival - start > MAX_LAG or (self._end is not None and start < self._end - _OVERLAP):
                # Not the caller's audio going on but a new stream: it starts now.
                self.reanchors += 1
                anchor = earliest
                start = arrival
        self._anchor = anchor
        self._lag = arrival - start
        self._end = start + duration
        return start

    def media_time(self, now: float) -> float:
        """``now`` on the transceiver's clock, on the timeline (as late as the latest frame)."""
        return now - self._lag

    def clock_time(self, media: float) -> float:
        """A time on the timeline (a detector's deadline), on the transceiver's clock."""
        return media + self._lag
