# -*- test-case-name: tests.test_host -*-
"""The one UDP socket a transceiver's sessions share."""

from __future__ import annotations

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
        """Give the transceiver the socket's write, bound once."""
        assert self.transport is not None
        self.transceiver.write = self.transport.write
        sock = getattr(self.transport, "socket", None)
        if sock is not None:
            enlarge_buffers(sock)

    def local_address(self) -> Address:
        """The address the socket is bound to."""
        assert self.transport is not None
        host = self.transport.getHost()
        return host.host, host.port

    def datagramReceived(self, datagram: bytes, addr: Address) -> None:
        """Hand every datagram to the transceiver."""
        self.transceiver.datagram_received(datagram, addr)
