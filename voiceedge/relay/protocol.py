# -*- test-case-name: tests.test_relay_protocol -*-
"""The relay's two UDP sockets: the public one clients talk to, the internal one for transceivers.

The protocols only move bytes into :class:`~voiceedge.relay.core.Relay` and
bind its ``send_to_*`` callables to the sockets' own ``sendto`` (skipping
``udp.Port.write``'s per-call address checks). :class:`ClientPort` replaces
``udp.Port.doRead`` for the public socket. With the compiled helper
(:mod:`voiceedge.relay._batchio`, the ``recvmmsg`` backend) it receives up to
:data:`BATCH_COUNT` datagrams per system call into preallocated slots behind
header room, and the relay sends what it forwards in one ``sendmmsg``;
without it (the ``python`` backend) it loops on ``recvfrom_into`` into the
relay's buffer. Either way a forwarded packet is never copied into a new
``bytes`` (bench/relay.py measures both).
"""

from __future__ import annotations

import errno
import mmap
import os
import socket
from typing import Any, Callable, cast

from twisted.internet import udp
from twisted.internet.interfaces import IDelayedCall, IReactorTime, IReactorUDP
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from voiceedge.relay.core import OFFSET, BatchIO, Relay, not_started
from voiceedge.relay.flows import Address
from voiceedge.sockets import enlarge_buffers
from voiceedge.workers import enable_reuse_port

try:
    from voiceedge.relay import _batchio
except ImportError:  # not built (no compiler at install time): the python backend
    _batchio = None  # type: ignore[assignment]
# A helper built from an older _batchio.c (an editable install not reinstalled since) lacks the
# return path's recv_routed: the relay says so and takes the python backend rather than fail per read.
_stale = _batchio is not None and not hasattr(_batchio.Batch, "recv_returns")
if _stale:
    _batchio = None  # type: ignore[assignment]

__all__ = [
    "BATCH_COUNT",
    "BatchReadPort",
    "batch_backend",
    "ClientPort",
    "ClientProtocol",
    "PeerPort",
    "PeerProtocol",
    "TransceiverPort",
    "TransceiverProtocol",
    "listen_client",
    "listen_peer",
    "listen_transceiver",
]

log = Logger()

# Errors that mean "nothing more to read now" or a stale ICMP report.
_READ_DONE = frozenset((errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR))
_READ_IGNORE = frozenset((errno.ECONNREFUSED, errno.ENETUNREACH, errno.EHOSTUNREACH))

# Datagrams per recvmmsg/sendmmsg. Each slot holds any UDP payload behind the
# header room, so nothing is truncated: 64 slots are about 4 MB of address
# space per process, in an anonymous mapping of which only the pages datagrams
# were written to become resident.
BATCH_COUNT = 64
_SLOT_PAYLOAD = 65536
# VOICEEDGE_RELAY_BATCH_IO=python makes the relay read one datagram per call
# even where the helper is built (the tests run both backends with it); any
# other value, or none, means the helper where it is built.
_FORCE_ENV = "VOICEEDGE_RELAY_BATCH_IO"
# VOICEEDGE_RELAY_GSO=off sends every datagram as its own message; by default a run of equal
# datagrams to one destination in a batch leaves as one UDP_SEGMENT (GSO) message (docs/relay.md).
_SEGMENT_ENV = "VOICEEDGE_RELAY_GSO"
_told = False


def batch_backend() -> str:
    """``recvmmsg`` where the compiled helper is built (and not turned off), else ``python``."""
    if _batchio is None or os.environ.get(_FORCE_ENV, "") == "python":
        return "python"
    return "recvmmsg"


def _sendto(transport: Any) -> Any:
    """The transport's socket ``sendto`` when it has one, else its ``write``."""
    sock = getattr(transport, "socket", None)
    if isinstance(sock, socket.socket):
        return sock.sendto
    return transport.write


class ClientProtocol(DatagramProtocol):
    """The public socket: client datagrams in, transceiver payloads out."""

    noisy = False

    def __init__(self, relay: Relay) -> None:
        self.relay = relay

    def startProtocol(self) -> None:
        """Bind the relay's send-to-client (and its batch sends) to this socket."""
        self.relay.send_to_client = _sendto(self.transport)
        sock = getattr(self.transport, "socket", None)
        self.relay.client_fd = sock.fileno() if isinstance(sock, socket.socket) else -1

    def stopProtocol(self) -> None:
        """Sending to clients fails (counted) once the socket is gone."""
        self.relay.send_to_client = not_started
        self.relay.client_fd = -1

    def datagramReceived(self, datagram: bytes, addr: Address) -> None:
        """A client datagram (only used where ClientPort's doRead is not)."""
        self.relay.client_datagram(datagram, addr[:2])


class TransceiverProtocol(DatagramProtocol):
    """The internal socket: encapsulated datagrams from and to transceivers."""

    noisy = False

    def __init__(self, relay: Relay) -> None:
        self.relay = relay

    def startProtocol(self) -> None:
        """Bind the relay's send-to-transceiver (and its batch sends) to this socket."""
        self.relay.send_to_transceiver = _sendto(self.transport)
        sock = getattr(self.transport, "socket", None)
        self.relay.transceiver_fd = sock.fileno() if isinstance(sock, socket.socket) else -1

    def stopProtocol(self) -> None:
        """Sending to transceivers fails (counted) once the socket is gone."""
        self.relay.send_to_transceiver = not_started
        self.relay.transceiver_fd = -1

    def datagramReceived(self, datagram: bytes, addr: Address) -> None:
        """A datagram from a transceiver (or anyone who reached the internal port)."""
        self.relay.transceiver_datagram(datagram, addr[:2])


class PeerProtocol(DatagramProtocol):
    """The global-hop socket: client datagrams from other clusters' relays in, their answers out."""

    noisy = False

    def __init__(self, relay: Relay) -> None:
        self.relay = relay

    def startProtocol(self) -> None:
        """Bind the relay's send-to-peer to this socket (answers leave from the address peers send to)."""
        self.relay.send_to_peer = _sendto(self.transport)

    def stopProtocol(self) -> None:
        """Sending to peers fails (counted) once the socket is gone."""
        self.relay.send_to_peer = not_started

    def datagramReceived(self, datagram: bytes, addr: Address) -> None:
        """A datagram from another relay (or anyone who reached the port)."""
        self.relay.peer_datagram(datagram, addr[:2])


class BatchReadPort(udp.Port):
    """A udp.Port that reads up to ``batch`` datagrams per wake-up with its own loop (the relay's ports, the transceiver's media port).

    Each wake-up is a read round (:meth:`_round`, the subclass's). Under load
    the port reads on a timer instead, as a network card coalesces interrupts
    and Linux's NAPI polls a busy one: at 100 calls datagrams come every
    0.2 ms, and each wake-up of the event loop costs more than the datagram
    it delivers. ``poll_interval`` (seconds; 0: never): when the socket wakes
    the loop again sooner than this, the port stops waiting for it and reads
    it every ``poll_interval`` instead, until a poll finds nothing (quiet
    again) or a whole ``batch`` (a flood: read as fast as the loop goes, and
    a wake-up that reads a whole batch does not begin polling). A datagram
    then waits at most ``poll_interval`` before it is read.
    """

    batch = 512
    poll_interval = 0.0
    _fd = -1  # the socket's descriptor, for the helper's system calls
    _poll: IDelayedCall | None = None
    _last_wake = float("-inf")

    def doRead(self) -> None:  # noqa: N802 - Twisted's name
        """The socket is readable: a read round; poll instead if it was readable a moment ago."""
        got = self._round(False)
        interval = self.poll_interval
        if interval:
            clock = cast(IReactorTime, self.reactor)
            now = clock.seconds()
            # A whole batch read is a flood: waiting for a poll would cap it at a batch per
            # interval and let the socket's buffer overflow; its readiness paces it instead.
            if got < self.batch and now - self._last_wake < interval and self.connected and self._poll is None:
                # Datagrams come faster than polls would: fewer wake-ups, each reading more.
                self.stopReading()
                self._poll = clock.callLater(interval, self._polled)
            self._last_wake = now

    def _polled(self) -> None:
        self._poll = None
        if not self.connected:
            return
        got = self._round(True)
        if got == 0 or got >= self.batch:
            self.startReading()
        else:
            self._poll = cast(IReactorTime, self.reactor).callLater(self.poll_interval, self._polled)

    def _round(self, polled: bool) -> int:
        """Read up to ``batch`` waiting datagrams and hand them on; how many (``polled``: on the timer)."""
        raise NotImplementedError

    def connectionLost(self, reason: Any = None) -> None:  # noqa: N802 - Twisted's name
        """Closed: no more polls, then close as udp.Port does."""
        if self._poll is not None and self._poll.active():
            self._poll.cancel()
        self._poll = None
        super().connectionLost(reason)

    def _read_error(self, e: OSError) -> bool:
        """True to keep reading after ``e``, False to stop this round."""
        if e.errno in _READ_DONE:
            return False
        if e.errno in _READ_IGNORE:
            return True
        log.error("socket {port} read failed: {e}", port=self.getHost(), e=e)
        return False

    def _read_each(self, received: Callable[[bytes, Address], None], what: str) -> int:
        """``recvfrom`` up to ``self.batch`` datagrams, each handed to ``received``; how many.

        ``what`` names them in a failure's log.
        """
        recv = self.socket.recvfrom
        size = self.maxPacketSize
        v6 = self.addressFamily == socket.AF_INET6
        got = 0
        for _ in range(self.batch):
            try:
                data, addr = recv(size)
            except OSError as e:
                if self._read_error(e):
                    continue
                return got
            got += 1
            if v6:
                addr = addr[:2]
            try:
                received(data, addr)
            except Exception:
                # A bug, not traffic: keep the port alive rather than let Twisted close it.
                log.failure("{what} from {addr} failed", what=what, addr=addr)
        return got

    def _new_batch(self, headroom: int) -> tuple[BatchIO, mmap.mmap]:
        """``BATCH_COUNT`` full-size slots (an anonymous mapping, resident as used) and their Batch."""
        assert _batchio is not None
        stride = OFFSET + _SLOT_PAYLOAD
        buffer = mmap.mmap(-1, BATCH_COUNT * stride)
        batch = _batchio.Batch(buffer, BATCH_COUNT, stride, headroom)
        if os.environ.get(_SEGMENT_ENV, "") == "off":
            batch.segment = 0
        return batch, buffer

    def _read_batches(
        self, batch: BatchIO, recv: Callable[[int], list[Any]], handle: Callable[[list[Any]], None]
    ) -> int:
        """``recv`` rounds (a batch's ``recvmmsg`` into its slots), each handed to ``handle``, up to ``self.batch`` datagrams; how many.

        ``recv`` queues what the helper forwards itself and returns the rest;
        ``handle`` takes the rest and sends the queue.
        """
        fd = self._fd
        got = 0
        for _ in range(self.batch // BATCH_COUNT):
            try:
                rest = recv(fd)
            except OSError as e:
                if self._read_error(e):
                    continue
                return got
            received = batch.received
            if not received:
                return got
            got += received
            handle(rest)
            if received < BATCH_COUNT:
                return got  # the socket is (nearly) drained: no recvmmsg just to hear EAGAIN
        return got


class ClientPort(BatchReadPort):
    """The public port: ``recvmmsg`` into the relay's batch slots, or ``recvfrom_into`` its buffer.

    ``backend`` is ``recvmmsg`` (the compiled helper) or ``python`` (one
    datagram per call); :func:`batch_backend` picks it. With ``reuse_port``
    it binds with ``SO_REUSEPORT``: worker processes share the one public
    address, the kernel choosing a worker per client address.
    """

    reuse_port = False
    backend = "python"

    def startListening(self) -> None:  # noqa: N802 - Twisted's name
        """Bind, then give the relay its batch slots if the backend is ``recvmmsg``."""
        super().startListening()
        self._fd = self.socket.fileno()
        if self.backend == "recvmmsg":
            self.protocol.relay.use_batch(*self._new_batch(OFFSET))

    def createInternetSocket(self) -> socket.socket:  # noqa: N802 - Twisted's name
        """The socket, shareable with other workers when ``reuse_port``."""
        sock: socket.socket = super().createInternetSocket()
        if self.reuse_port:
            enable_reuse_port(sock)
        return sock

    def _round(self, polled: bool) -> int:
        """Receive datagrams straight into the relay's buffers, up to ``batch``; how many."""
        relay: Relay = self.protocol.relay
        relay.read_rounds["client", polled] += 1
        batch = relay.batch
        if batch is not None:
            return self._read_batches(batch, relay.read_client_batch, relay.client_batch)
        recv_into = self.socket.recvfrom_into
        view = relay.rx_payload
        received = relay.client_received
        v6 = self.addressFamily == socket.AF_INET6
        got = 0
        for _ in range(self.batch):
            try:
                n, addr = recv_into(view)
            except OSError as e:
                if self._read_error(e):
                    continue
                return got
            got += 1
            if v6:
                addr = addr[:2]
            try:
                received(n, addr)
            except Exception:
                # A bug, not traffic: keep the port alive rather than let
                # Twisted close it.
                log.failure("relay: client datagram from {addr} failed", addr=addr)
        return got


class TransceiverPort(BatchReadPort):
    """The internal port: ``recvmmsg`` into the relay's return slots, or a plain ``recvfrom`` loop.

    ``backend`` as for :class:`ClientPort`; without the helper, the loop has
    none of udp.Port's per-datagram extras.
    """

    backend = "python"

    def startListening(self) -> None:  # noqa: N802 - Twisted's name
        """Bind, then give the relay its return slots if the backend is ``recvmmsg``."""
        super().startListening()
        self._fd = self.socket.fileno()
        if self.backend == "recvmmsg":
            self.protocol.relay.use_return_batch(*self._new_batch(0))

    def received(self, relay: Relay) -> Any:
        """Where each datagram goes."""
        return relay.transceiver_datagram

    #: Which of the relay's ports this is, in ``Relay.read_rounds``.
    name = "transceiver"

    def _round(self, polled: bool) -> int:
        """Receive datagrams and hand them to the relay, up to ``batch``; how many."""
        relay: Relay = self.protocol.relay
        relay.read_rounds[self.name, polled] += 1
        batch = relay.return_batch
        if batch is not None and self.backend == "recvmmsg":
            return self._read_batches(batch, relay.read_return_batch, relay.transceiver_batch)
        return self._read_each(self.received(relay), "relay: internal datagram")


class PeerPort(TransceiverPort):
    """The global-hop port: the same batch loop, into :meth:`Relay.peer_datagram`."""

    name = "peer"

    def received(self, relay: Relay) -> Any:
        """Where each datagram goes."""
        return relay.peer_datagram


def _listen(
    port_class: type[udp.Port],
    protocol: DatagramProtocol,
    address: Address,
    reactor: IReactorUDP,
    reuse_port: bool = False,
) -> udp.Port:
    host, port_number = address
    port = port_class(port_number, protocol, interface=host, maxPacketSize=65536, reactor=reactor)
    if reuse_port:
        port.reuse_port = True  # type: ignore[attr-defined]
    port.startListening()
    enlarge_buffers(port.socket)
    return port


def listen_client(
    relay: Relay,
    address: Address,
    reactor: IReactorUDP,
    reuse_port: bool = False,
    backend: str | None = None,
    poll_interval: float = 0.0,
) -> udp.Port:
    """Open the public UDP port on ``address`` for ``relay`` (shared by workers with ``reuse_port``).

    ``backend`` (``recvmmsg`` or ``python``; default :func:`batch_backend`)
    says how it reads; the first port of a process logs which.
    ``poll_interval``: :attr:`BatchReadPort.poll_interval`.
    """
    global _told
    chosen = backend or batch_backend()
    if chosen not in ("recvmmsg", "python"):
        raise ValueError(f"unknown relay batch I/O backend {chosen!r}")
    if chosen == "recvmmsg" and _batchio is None:
        raise ValueError("the recvmmsg backend needs voiceedge.relay._batchio, which is not built")
    if not _told:
        _told = True
        if chosen == "recvmmsg":
            log.info("relay: batched datagram I/O (recvmmsg/sendmmsg, {count} per call)", count=BATCH_COUNT)
        elif _stale:
            log.warn(
                "relay: voiceedge.relay._batchio is older than its source (reinstall: pip install -e .):"
                " reading one datagram per call (backend python)"
            )
        elif _batchio is None:
            log.warn(
                "relay: voiceedge.relay._batchio is not built (no C compiler or Python headers at install):"
                " reading one datagram per call (backend python)"
            )
        else:
            log.info("relay: one datagram per call (backend python, {env}=python)", env=_FORCE_ENV)
    port = ClientPort(address[1], ClientProtocol(relay), interface=address[0], maxPacketSize=65536, reactor=reactor)
    port.reuse_port = reuse_port
    port.backend = chosen
    port.poll_interval = poll_interval
    port.startListening()
    enlarge_buffers(port.socket)
    return port


def listen_transceiver(
    relay: Relay, address: Address, reactor: IReactorUDP, backend: str | None = None, poll_interval: float = 0.0
) -> udp.Port:
    """Open the internal UDP port on ``address`` (port 0: any free one) for ``relay``.

    ``backend`` and ``poll_interval`` as for :func:`listen_client` (default :func:`batch_backend`).
    """
    chosen = backend or batch_backend()
    if chosen not in ("recvmmsg", "python"):
        raise ValueError(f"unknown relay batch I/O backend {chosen!r}")
    if chosen == "recvmmsg" and _batchio is None:
        raise ValueError("the recvmmsg backend needs voiceedge.relay._batchio, which is not built")
    port = TransceiverPort(address[1], TransceiverProtocol(relay), interface=address[0], maxPacketSize=65536, reactor=reactor)
    port.backend = chosen
    port.poll_interval = poll_interval
    port.startListening()
    enlarge_buffers(port.socket)
    return port


def listen_peer(relay: Relay, address: Address, reactor: IReactorUDP) -> udp.Port:
    """Open the global-hop UDP port on ``address``, where other clusters' relays send."""
    return _listen(PeerPort, PeerProtocol(relay), address, reactor)
