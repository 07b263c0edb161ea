# -*- test-case-name: tests.test_relay_protocol -*-
"""The relay's two UDP sockets: the public one clients talk to, the internal one for transceivers.

The protocols only move bytes into :class:`~voiceedge.relay.core.Relay` and
bind its ``send_to_*`` callables to the sockets' own ``sendto`` (skipping
``udp.Port.write``'s per-call address checks). :class:`ClientPort` replaces
``udp.Port.doRead`` for the public socket: it receives with ``recvfrom_into``
straight into the relay's buffer behind the header slot, so a forwarded
packet is never copied into a new ``bytes`` (bench/relay.py measures it).
"""

from __future__ import annotations

import errno
import socket
from typing import Any

from twisted.internet import udp
from twisted.internet.interfaces import IReactorUDP
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from voiceedge.relay.core import Relay, not_started
from voiceedge.relay.flows import Address
from voiceedge.sockets import enlarge_buffers
from voiceedge.workers import enable_reuse_port

__all__ = [
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
        """Bind the relay's send-to-client to this socket."""
        self.relay.send_to_client = _sendto(self.transport)

    def stopProtocol(self) -> None:
        """Sending to clients fails (counted) once the socket is gone."""
        self.relay.send_to_client = not_started

    def datagramReceived(self, datagram: bytes, addr: Address) -> None:
        """A client datagram (only used where ClientPort's doRead is not)."""
        self.relay.client_datagram(datagram, addr[:2])


class TransceiverProtocol(DatagramProtocol):
    """The internal socket: encapsulated datagrams from and to transceivers."""

    noisy = False

    def __init__(self, relay: Relay) -> None:
        self.relay = relay

    def startProtocol(self) -> None:
        """Bind the relay's send-to-transceiver to this socket."""
        self.relay.send_to_transceiver = _sendto(self.transport)

    def stopProtocol(self) -> None:
        """Sending to transceivers fails (counted) once the socket is gone."""
        self.relay.send_to_transceiver = not_started

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


class _BatchPort(udp.Port):
    """A udp.Port that reads up to ``batch`` datagrams per wake-up with its own loop."""

    batch = 512

    def _read_error(self, e: OSError) -> bool:
        """True to keep reading after ``e``, False to stop this round."""
        if e.errno in _READ_DONE:
            return False
        if e.errno in _READ_IGNORE:
            return True
        log.error("relay socket {port} read failed: {e}", port=self.getHost(), e=e)
        return False


class ClientPort(_BatchPort):
    """The public port: ``recvfrom_into`` the relay's buffer, no bytes object per packet.

    With ``reuse_port`` it binds with ``SO_REUSEPORT``: worker processes
    share the one public address, the kernel choosing a worker per client
    address.
    """

    reuse_port = False

    def createInternetSocket(self) -> socket.socket:  # noqa: N802 - Twisted's name
        """The socket, shareable with other workers when ``reuse_port``."""
        sock: socket.socket = super().createInternetSocket()
        if self.reuse_port:
            enable_reuse_port(sock)
        return sock

    def doRead(self) -> None:
        """Receive a batch straight into the relay's receive buffer."""
        relay: Relay = self.protocol.relay
        recv_into = self.socket.recvfrom_into
        view = relay.rx_payload
        received = relay.client_received
        v6 = self.addressFamily == socket.AF_INET6
        for _ in range(self.batch):
            try:
                n, addr = recv_into(view)
            except OSError as e:
                if self._read_error(e):
                    continue
                return
            if v6:
                addr = addr[:2]
            try:
                received(n, addr)
            except Exception:
                # A bug, not traffic: keep the port alive rather than let
                # Twisted close it.
                log.failure("relay: client datagram from {addr} failed", addr=addr)


class TransceiverPort(_BatchPort):
    """The internal port: a plain ``recvfrom`` loop without udp.Port's per-datagram extras."""

    def received(self, relay: Relay) -> Any:
        """Where each datagram goes."""
        return relay.transceiver_datagram

    def doRead(self) -> None:
        """Receive a batch and hand each datagram to the relay."""
        relay: Relay = self.protocol.relay
        recv = self.socket.recvfrom
        size = self.maxPacketSize
        received = self.received(relay)
        v6 = self.addressFamily == socket.AF_INET6
        for _ in range(self.batch):
            try:
                data, addr = recv(size)
            except OSError as e:
                if self._read_error(e):
                    continue
                return
            if v6:
                addr = addr[:2]
            try:
                received(data, addr)
            except Exception:
                log.failure("relay: internal datagram from {addr} failed", addr=addr)


class PeerPort(TransceiverPort):
    """The global-hop port: the same batch loop, into :meth:`Relay.peer_datagram`."""

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


def listen_client(relay: Relay, address: Address, reactor: IReactorUDP, reuse_port: bool = False) -> udp.Port:
    """Open the public UDP port on ``address`` for ``relay`` (shared by workers with ``reuse_port``)."""
    return _listen(ClientPort, ClientProtocol(relay), address, reactor, reuse_port)


def listen_transceiver(relay: Relay, address: Address, reactor: IReactorUDP) -> udp.Port:
    """Open the internal UDP port on ``address`` (port 0: any free one) for ``relay``."""
    return _listen(TransceiverPort, TransceiverProtocol(relay), address, reactor)


def listen_peer(relay: Relay, address: Address, reactor: IReactorUDP) -> udp.Port:
    """Open the global-hop UDP port on ``address``, where other clusters' relays send."""
    return _listen(PeerPort, PeerProtocol(relay), address, reactor)
