# -*- test-case-name: tests.test_sockets -*-
"""Socket options the media sockets share: kernel buffers that ride out a busy moment."""

from __future__ import annotations

import socket

__all__ = ["MEDIA_SOCKET_BUFFER", "enlarge_buffers"]

#: Bytes of kernel buffer asked for each way on every media socket. At the
#: default (about 208 KiB) a process busy for a few hundred ms with a hundred
#: calls (2,000 datagrams a second each way through a relay) loses datagrams
#: in the kernel; 4 MiB holds about two seconds of them. Linux caps the request
#: at ``net.core.rmem_max`` / ``wmem_max``: raise those for the full size.
MEDIA_SOCKET_BUFFER = 4 << 20


def enlarge_buffers(sock: socket.socket, size: int = MEDIA_SOCKET_BUFFER) -> tuple[int, int]:
    """Ask for ``size`` bytes of receive and send buffer; what the kernel granted, (receive, send)."""
    for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, size)
        except OSError:
            pass  # the default stays; the sizes returned say so
    return (
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF),
    )
