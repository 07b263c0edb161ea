"""A network impairment for tests: loss, delay, jitter, reordering, duplication, a rate cap and blackouts.

The kernel here has no netem, so tests put this between a client and a relay (or between
network namespaces). :class:`ImpairedPath` is the sans-I/O core, one direction: datagrams and
the time in, datagrams due out and the next deadline; deterministic given its seed.
:class:`ImpairmentShim` is the thin UDP part: it listens on one address and forwards each
client's datagrams through its own socket to an upstream address (so upstream sees one source
per client, as behind a NAT), and the replies back, each direction through its own path.

Run one on its own (for example inside a network namespace)::

    python -m tests.impair --listen 127.0.0.1:4000 --upstream 127.0.0.1:3478 \\
        --loss 0.05 --delay-ms 20 --jitter-ms 40 --seed 1
"""

from __future__ import annotations

import argparse
import heapq
import random
from dataclasses import dataclass, field, replace
from typing import Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime, IReactorUDP
from twisted.internet.protocol import DatagramProtocol

Address = tuple[str, int]


@dataclass(frozen=True)
class Impairment:
    """What a path does to each datagram.

    ``loss`` and ``duplicate`` are probabilities; every datagram is delayed by
    ``delay`` plus a uniform ``[0, jitter)`` (so jitter larger than the packet
    spacing reorders, as netem does); ``reorder`` is the probability of a
    further ``reorder_delay``. ``rate`` caps bytes per second (``None``: no
    cap) with at most ``queue`` seconds of backlog, past which datagrams drop.
    """

    loss: float = 0.0
    delay: float = 0.0
    jitter: float = 0.0
    reorder: float = 0.0
    reorder_delay: float = 0.05
    duplicate: float = 0.0
    rate: float | None = None
    queue: float = 0.2


@dataclass
class PathCounters:
    """What a path did."""

    submitted: int = 0
    lost: int = 0
    blacked_out: int = 0
    queue_dropped: int = 0
    duplicated: int = 0
    delivered: int = 0


@dataclass
class ImpairedPath:
    """One direction of an impaired link, sans-I/O: :meth:`submit`, then :meth:`take_due` at :meth:`deadline`."""

    impairment: Impairment = field(default_factory=Impairment)
    seed: int = 0
    counters: PathCounters = field(default_factory=PathCounters)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._queue: list[tuple[float, int, bytes, Any]] = []
        self._order = 0
        self._link_free_at = 0.0
        self._blackouts: list[tuple[float, float]] = []

    def blackout(self, start: float, end: float) -> None:
        """Drop everything submitted in ``[start, end)``."""
        self._blackouts.append((start, end))

    def submit(self, datagram: bytes, now: float, meta: Any = None) -> None:
        """A datagram enters the path at ``now``; ``meta`` travels with it (e.g. its destination)."""
        imp = self.impairment
        rng = self._rng
        self.counters.submitted += 1
        if any(start <= now < end for start, end in self._blackouts):
            self.counters.blacked_out += 1
            return
        if imp.loss and rng.random() < imp.loss:
            self.counters.lost += 1
            return
        copies = 2 if imp.duplicate and rng.random() < imp.duplicate else 1
        self.counters.duplicated += copies - 1
        depart = now
        if imp.rate:
            start = max(now, self._link_free_at)
            if start - now > imp.queue:
                self.counters.queue_dropped += 1
                return
            self._link_free_at = start + len(datagram) / imp.rate
            depart = self._link_free_at
        for _ in range(copies):
            due = depart + imp.delay + (rng.random() * imp.jitter if imp.jitter else 0.0)
            if imp.reorder and rng.random() < imp.reorder:
                due += imp.reorder_delay
            self._order += 1
            heapq.heappush(self._queue, (due, self._order, datagram, meta))

    def deadline(self) -> float | None:
        """When the next datagram is due, or ``None``."""
        return self._queue[0][0] if self._queue else None

    def take_due(self, now: float) -> list[tuple[bytes, Any]]:
        """Datagrams (with their ``meta``) due by ``now``, in the order they arrive."""
        out = []
        while self._queue and self._queue[0][0] <= now:
            _, _, datagram, meta = heapq.heappop(self._queue)
            out.append((datagram, meta))
        self.counters.delivered += len(out)
        return out


class _Timed:
    """Runs a path's deliveries on a reactor clock."""

    def __init__(self, clock: IReactorTime, path: ImpairedPath, send: Any) -> None:
        self.clock = clock
        self.path = path
        self.send = send
        self._call: IDelayedCall | None = None

    def submit(self, datagram: bytes, meta: Any) -> None:
        self.path.submit(datagram, self.clock.seconds(), meta)
        self._arm()

    def _arm(self) -> None:
        deadline = self.path.deadline()
        if deadline is None:
            return
        if self._call is not None and self._call.active():
            if self._call.getTime() <= deadline:
                return
            self._call.cancel()
        self._call = self.clock.callLater(max(0.0, deadline - self.clock.seconds()), self._fire)

    def _fire(self) -> None:
        self._call = None
        for datagram, meta in self.path.take_due(self.clock.seconds()):
            self.send(datagram, meta)
        self._arm()

    def stop(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None


class _Upstream(DatagramProtocol):
    """One client's socket towards upstream: replies go back through the down path."""

    def __init__(self, shim: ImpairmentShim, client: Address) -> None:
        self.shim = shim
        self.client = client

    def datagramReceived(self, datagram: bytes, addr: Address) -> None:  # noqa: N802 - Twisted's name
        self.shim.down.submit(datagram, self.client)


class ImpairmentShim(DatagramProtocol):
    """Listens where clients send; forwards to ``upstream`` through ``up``, replies through ``down``.

    ``up`` and ``down`` are the two :class:`ImpairedPath` objects; a test may
    change their ``impairment`` or add blackouts while traffic flows.
    """

    def __init__(
        self,
        reactor: Any,
        upstream: Address,
        up: Impairment = Impairment(),
        down: Impairment = Impairment(),
        seed: int = 0,
    ) -> None:
        self.reactor = reactor
        self.upstream = upstream
        self.up_path = ImpairedPath(up, seed)
        self.down_path = ImpairedPath(down, seed + 1)
        self.up = _Timed(reactor, self.up_path, self._to_upstream)
        self.down = _Timed(reactor, self.down_path, self._to_client)
        self._clients: dict[Address, Any] = {}

    def blackout(self, seconds: float) -> None:
        """Drop everything both ways for ``seconds`` from now."""
        now = self.reactor.seconds()
        self.up_path.blackout(now, now + seconds)
        self.down_path.blackout(now, now + seconds)

    def set_impairment(self, up: Impairment, down: Impairment | None = None) -> None:
        """Change what both directions do from now on."""
        self.up_path.impairment = up
        self.down_path.impairment = down if down is not None else replace(up)

    def datagramReceived(self, datagram: bytes, addr: Address) -> None:  # noqa: N802 - Twisted's name
        if addr not in self._clients:
            reactor: IReactorUDP = self.reactor
            # Any local address of the upstream's family: the shim may run on another host
            # (a network namespace) than the upstream, where its address is not local.
            interface = "::" if ":" in self.upstream[0] else "0.0.0.0"
            self._clients[addr] = reactor.listenUDP(0, _Upstream(self, addr), interface=interface)
        self.up.submit(datagram, addr)

    def _to_upstream(self, datagram: bytes, client: Address) -> None:
        port = self._clients.get(client)
        if port is not None:
            port.write(datagram, self.upstream)

    def _to_client(self, datagram: bytes, client: Address) -> None:
        if self.transport is not None:
            self.transport.write(datagram, client)

    def stopProtocol(self) -> None:  # noqa: N802 - Twisted's name
        """Stop the timers and close every per-client socket."""
        self.up.stop()
        self.down.stop()
        for port in self._clients.values():
            port.stopListening()
        self._clients.clear()


def _address(text: str) -> Address:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def main() -> None:
    """Run a shim until interrupted."""
    parser = argparse.ArgumentParser(description="a UDP impairment shim")
    parser.add_argument("--listen", type=_address, required=True)
    parser.add_argument("--upstream", type=_address, required=True)
    parser.add_argument("--loss", type=float, default=0.0)
    parser.add_argument("--delay-ms", type=float, default=0.0)
    parser.add_argument("--jitter-ms", type=float, default=0.0)
    parser.add_argument("--reorder", type=float, default=0.0)
    parser.add_argument("--duplicate", type=float, default=0.0)
    parser.add_argument("--rate-kbps", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--blackout-seconds", type=float, default=3.0, help="what SIGUSR1 starts")
    args = parser.parse_args()
    import json
    import signal

    from twisted.internet import reactor

    impairment = Impairment(
        loss=args.loss, delay=args.delay_ms / 1000, jitter=args.jitter_ms / 1000, reorder=args.reorder,
        duplicate=args.duplicate, rate=args.rate_kbps * 125 if args.rate_kbps else None,
    )
    shim = ImpairmentShim(reactor, args.upstream, impairment, impairment, args.seed)
    reactor.listenUDP(args.listen[1], shim, interface=args.listen[0])  # type: ignore[attr-defined]
    signal.signal(
        signal.SIGUSR1,
        lambda *_: reactor.callFromThread(shim.blackout, args.blackout_seconds),  # type: ignore[attr-defined]
    )
    print("listening", flush=True)
    reactor.run()  # type: ignore[attr-defined]
    print(json.dumps({"up": vars(shim.up_path.counters), "down": vars(shim.down_path.counters)}), flush=True)


if __name__ == "__main__":
    main()
