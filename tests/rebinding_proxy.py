# -*- test-case-name: tests.test_long_calls -*-
"""A UDP proxy that stands in for a NAT whose mapping changes: a client's source port moves mid-call.

The client sends to :attr:`RebindingProxy.address`; the proxy sends on to the
upstream from a port of its own and brings the answers back. :meth:`rebind`
swaps that port for a new one, as a NAT rebinding (or Wi-Fi to cellular)
looks to a server: the same client, its datagrams suddenly from a new source,
and nothing sent to the old one arrives any more. The client notices nothing.

It runs in a thread of its own (plain sockets and ``select``), so a test can
use it beside aiortc's asyncio loop; :meth:`close` stops it.
"""

from __future__ import annotations

import select
import socket
import threading

__all__ = ["RebindingProxy"]

Address = tuple[str, int]
LOOPBACK = "127.0.0.1"


def _socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((LOOPBACK, 0))
    return sock


class RebindingProxy:
    """One client's UDP path to ``upstream`` through a port that :meth:`rebind` changes."""

    def __init__(self, upstream: Address) -> None:
        self.upstream = upstream
        self._listen = _socket()
        self._out = _socket()
        self._client: Address | None = None
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self.ports: list[int] = [self._out.getsockname()[1]]
        self.forwarded = 0
        self.returned = 0
        self._thread = threading.Thread(target=self._run, name="rebinding-proxy", daemon=True)
        self._thread.start()

    @property
    def address(self) -> Address:
        """Where the client sends."""
        host, port = self._listen.getsockname()
        return host, port

    def rebind(self) -> tuple[int, int]:
        """Send from a new port from now on; the old one is closed. ``(old port, new port)``."""
        new = _socket()
        with self._lock:
            old, self._out = self._out, new
        old.close()
        self.ports.append(new.getsockname()[1])
        return self.ports[-2], self.ports[-1]

    def _run(self) -> None:
        while not self._stopped.is_set():
            with self._lock:
                out = self._out
            try:
                ready, _, _ = select.select([self._listen, out], [], [], 0.05)
            except (OSError, ValueError):
                continue  # the out socket was swapped and closed under select
            for sock in ready:
                try:
                    data, source = sock.recvfrom(65536)
                except OSError:
                    continue
                if sock is self._listen:
                    self._client = source
                    try:
                        out.sendto(data, self.upstream)
                        self.forwarded += 1
                    except OSError:
                        pass
                elif self._client is not None and source == self.upstream:
                    self._listen.sendto(data, self._client)
                    self.returned += 1

    def close(self) -> None:
        """Stop the thread and close the sockets."""
        self._stopped.set()
        self._thread.join(timeout=5)
        with self._lock:
            self._out.close()
        self._listen.close()
