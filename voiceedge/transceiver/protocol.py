# -*- test-case-name: tests.test_host -*-
"""The one UDP socket a transceiver's sessions share."""

from __future__ import annotations

import socket

from twisted.internet.protocol import DatagramProtocol

from voiceedge.sockets import enlarge_buffers
from voiceedge.transceiver.host import Address, Transceiver

#: Larger than any UDP payload, so the socket never truncates a datagram: an
#: encapsulated client datagram is up to 65,468 + 39 bytes on the internal hop.
MAX_DATAGRAM = 65536


class SharedSocketProtocol(DatagramProtocol):
    """Moves datagrams between the socket and the :class:`Transceiver`; nothing more."""

    def __init__(self, transceiver: Transceiver) -> None:
        self.transceiver = transceiver

    def startProtocol(self) -> None:
        """Give the transceiver the socket's ``sendto``, bound once.

        Not ``udp.Port.write``: it checks the address is an IP literal two or
        three times per datagram, and ours always are (they came from
        ``recvfrom`` or a relay's header). Its errors are ``OSError`` too,
        which the transceiver counts.
        """
        assert self.transport is not None
        sock = getattr(self.transport, "socket", None)
        if isinstance(sock, socket.socket):
            enlarge_buffers(sock)
            # mypy cannot pick this one of sendto's overloads.
            self.transceiver.write = sock.sendto  # type: ignore[assignment]
        else:
            self.transceiver.write = self.transport.write
        # A MediaPort sends a read round's or a tick's datagrams in one call.
        self.transceiver.write_many = getattr(self.transport, "write_list", None)
        # The port calls protocol.datagramReceived for every datagram: the
        # transceiver's own method, bound once, saves a call per packet.
        self.datagramReceived = self.transceiver.datagram_received  # type: ignore[method-assign, assignment]

    def readStarted(self, polled: bool) -> None:  # noqa: N802 - MediaPort's name, after Twisted's
        """A read round begins: the transceiver holds what it sends until :meth:`readEnded`."""
        self.transceiver.read_started(polled)

    def readEnded(self) -> None:  # noqa: N802 - MediaPort's name, after Twisted's
        """The read round is over: what it made leaves in one call."""
        self.transceiver.read_ended()

    def local_address(self) -> Address:
        """The address the socket is bound to."""
        assert self.transport is not None
        host = self.transport.getHost()
        return host.host, host.port

    def datagramReceived(self, datagram: bytes, addr: Address) -> None:
        """Hand every datagram to the transceiver."""
        self.transceiver.datagram_received(datagram, addr)
