# -*- test-case-name: tests.test_sctp_parts -*-
"""The retransmission timeout of an SCTP association: RTT samples in, RTO out (RFC 9260 §6.3)."""

from __future__ import annotations

__all__ = ["RtoEstimator"]


class RtoEstimator:
    """RTO from the smoothed RTT and its variation (§6.3.1), doubled on each expiry (§6.3.3 E2).

    :attr:`rto` is what every timer of the association waits; :attr:`base` is the RTO before
    back-off, which :meth:`clear_back_off` restores once data gets through again.
    """

    def __init__(self, initial: float, minimum: float, maximum: float) -> None:
        self.rto = initial
        self.base = initial
        self.srtt: float | None = None
        self.rttvar = 0.0
        self._minimum = minimum
        self._maximum = maximum

    def measure(self, rtt: float) -> None:
        """Take one RTT sample (seconds); a negative one (a clock that went back) is ignored."""
        if rtt < 0:
            return
        if self.srtt is None:
            self.srtt = rtt
            self.rttvar = rtt / 2
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - rtt)
            self.srtt = 0.875 * self.srtt + 0.125 * rtt
        self.rto = self.base = min(max(self.srtt + 4 * self.rttvar, self._minimum), self._maximum)

    def back_off(self) -> None:
        """Double the RTO after a timer expired, up to the maximum."""
        self.rto = min(self.rto * 2, self._maximum)

    def clear_back_off(self) -> None:
        """Return to the RTO before back-off: the path works again."""
        self.rto = self.base
