"""Media sockets ask the kernel for buffers that ride out a busy moment."""

from __future__ import annotations

import socket

from twisted.trial.unittest import SynchronousTestCase

from voiceedge.sockets import MEDIA_SOCKET_BUFFER, enlarge_buffers


class EnlargeBuffersTests(SynchronousTestCase):
    def test_buffers_grow_up_to_what_the_kernel_allows(self) -> None:
        """Both buffers end up larger than a fresh socket's (Linux doubles the value it grants)."""
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as fresh, socket.socket(
            socket.AF_INET, socket.SOCK_DGRAM
        ) as media:
            default = fresh.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
            received, sent = enlarge_buffers(media)
            self.assertGreater(received, default)
            self.assertGreater(sent, 0)
            self.assertLessEqual(received, 2 * MEDIA_SOCKET_BUFFER)
