# -*- test-case-name: tests.test_encap -*-
"""The header a relay and a transceiver put in front of a client's datagram.

Layout (version 1); integers big-endian, addresses in network byte order::

    0        1        2                4                6
    +--------+--------+----------------+----------------+----------------+----------------+
    | 0xF1   | flags  | client port    | ingress port   | client ip      | ingress ip     |
    +--------+--------+----------------+----------------+ (4 or 16)      | (4 or 16)      |

``0xF0 | version`` as the first byte sits in 240..255, a range RFC 7983 leaves
unassigned, so a transceiver socket tells an encapsulated datagram from a
direct STUN/DTLS/RTP one by its first byte. ``flags`` bit 0 says the client
address is IPv6, bit 1 that the ingress address is, bit 2 that a one-byte
hop count follows the addresses (relay to relay); the other bits are zero.
The header is 14, 26 or 38 bytes (one more with the hop count); the
client's packet follows untouched.
Both directions use it: towards the transceiver ``client`` is where the
packet came from, towards the relay it is where to send it, and ``ingress``
is the relay address the client talks to. See docs/encapsulation.md.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

from voiceedge.wire.errors import WireError

__all__ = [
    "EncapError",
    "Envelope",
    "VERSION",
    "FIRST_BYTE",
    "FIRST_BYTE_MIN",
    "FIRST_BYTE_MAX",
    "FLAG_CLIENT_V6",
    "FLAG_INGRESS_V6",
    "FLAG_HOPS",
    "MAX_HEADER_SIZE",
    "MAX_HOPS",
    "MAX_CLIENT_PAYLOAD",
    "hops",
    "is_encapsulated",
    "header_length",
    "encode",
    "decode",
    "pack_header_into",
    "peek_client",
    "peek_addresses",
]

VERSION = 1
FIRST_BYTE_MIN = 0xF0
FIRST_BYTE_MAX = 0xFF
FIRST_BYTE = FIRST_BYTE_MIN | VERSION
FLAG_CLIENT_V6 = 0x01
FLAG_INGRESS_V6 = 0x02
#: A hop count follows the addresses: the datagram crosses from relay to relay
#: (the global hop, docs/relay.md), and each relay that forwards it on adds one.
FLAG_HOPS = 0x04
_KNOWN_FLAGS = FLAG_CLIENT_V6 | FLAG_INGRESS_V6 | FLAG_HOPS
#: The most relay-to-relay hops a datagram may have taken; a relay drops one
#: that would go further (a loop in the fleet's configuration, not a client's doing).
MAX_HOPS = 8

# One precompiled layout per flags value, so parsing is a single unpack.
_LAYOUTS: tuple[struct.Struct, ...] = (
    struct.Struct("!BBHH4s4s"),  # client v4, ingress v4: 14 bytes
    struct.Struct("!BBHH16s4s"),  # client v6, ingress v4: 26 bytes
    struct.Struct("!BBHH4s16s"),  # client v4, ingress v6: 26 bytes
    struct.Struct("!BBHH16s16s"),  # client v6, ingress v6: 38 bytes
    struct.Struct("!BBHH4s4sB"),  # the same four with a hop count: 15, 27, 27, 39 bytes
    struct.Struct("!BBHH16s4sB"),
    struct.Struct("!BBHH4s16sB"),
    struct.Struct("!BBHH16s16sB"),
)
_SIZES = tuple(s.size for s in _LAYOUTS)
MAX_HEADER_SIZE = max(_SIZES)
#: The largest client datagram one encapsulated datagram can carry over IPv4:
#: 65,507 bytes of UDP payload less the largest header. It is also about the
#: largest a client can send over IPv4 at all (65,507): whatever reaches the
#: relay fits, with a few bytes' margin lost only to IPv6 jumbo-sized sends.
MAX_CLIENT_PAYLOAD = 65507 - MAX_HEADER_SIZE
_CLIENT_IP_LEN = (4, 16, 4, 16) * 2
# flags byte from (len(client ip), len(ingress ip))
_FLAGS_BY_LENS = {(4, 4): 0, (16, 4): 1, (4, 16): 2, (16, 16): 3}
_FAMILY_BY_LEN = {4: socket.AF_INET, 16: socket.AF_INET6}

# Decoded envelopes interned by their header bytes: a session's header never
# changes, so the steady state is one slice and one dict lookup. Bounded
# because the sender, though internal, should not be able to grow memory.
_ENVELOPE_CACHE_MAX = 65536
_envelopes: dict[bytes, "Envelope"] = {}


class EncapError(WireError):
    """A datagram that is not a well-formed encapsulated packet."""


@dataclass(frozen=True, slots=True)
class Envelope:
    """The addresses carried in front of an encapsulated packet.

    ``client`` is the client's public ``(host, port)``; ``ingress`` the relay
    address it sent to (or is to be answered from). Hosts are IPv4 or IPv6
    text; :func:`decode` returns the canonical ``socket.inet_ntop`` spelling.
    """

    client: tuple[str, int]
    ingress: tuple[str, int]


def is_encapsulated(data: bytes) -> bool:
    """Whether a datagram's first byte says it carries our header (any version)."""
    return bool(data) and data[0] >= FIRST_BYTE_MIN


def _pack_address(address: tuple[str, int], what: str) -> tuple[bytes, int]:
    """Check ``(host, port)`` and return the packed host and the port."""
    try:
        host, port = address
    except (TypeError, ValueError):
        raise EncapError(f"{what} address must be (host, port)") from None
    if not isinstance(port, int) or not 0 <= port <= 0xFFFF:
        raise EncapError(f"{what} port must be 0..65535, not {port!r}")
    family = socket.AF_INET6 if isinstance(host, str) and ":" in host else socket.AF_INET
    try:
        return socket.inet_pton(family, host), port
    except (OSError, ValueError, TypeError):
        raise EncapError(f"{what} host is not an IPv4 or IPv6 address: {host!r}") from None


def pack_header_into(
    buffer: bytearray,
    client_ip_packed: bytes,
    client_port: int,
    ingress_ip_packed: bytes,
    ingress_port: int,
    hop_count: int | None = None,
) -> int:
    """Write a header at the start of ``buffer`` and return its length.

    The relay's hot path: addresses arrive already packed (4 or 16 bytes),
    nothing is allocated, and the caller copies the payload in at the
    returned offset (``buffer[n:n + len(p)] = p``) and sends a memoryview of
    ``buffer[:n + len(p)]``. ``hop_count`` (relay to relay only) adds the
    hop byte.
    """
    flags = _FLAGS_BY_LENS.get((len(client_ip_packed), len(ingress_ip_packed)))
    if flags is None:
        raise EncapError("packed addresses must be 4 or 16 bytes")
    try:
        if hop_count is None:
            layout = _LAYOUTS[flags]
            layout.pack_into(
                buffer, 0, FIRST_BYTE, flags, client_port, ingress_port,
                client_ip_packed, ingress_ip_packed,
            )
        else:
            if not 0 <= hop_count <= MAX_HOPS:
                raise EncapError(f"hop count must be 0..{MAX_HOPS}, not {hop_count}")
            flags |= FLAG_HOPS
            layout = _LAYOUTS[flags]
            layout.pack_into(
                buffer, 0, FIRST_BYTE, flags, client_port, ingress_port,
                client_ip_packed, ingress_ip_packed, hop_count,
            )
    except struct.error as e:
        raise EncapError(f"cannot pack header: {e}") from None
    return layout.size


def encode(envelope: Envelope, payload: bytes) -> bytes:
    """Return the header for ``envelope`` followed by ``payload``."""
    client_ip, client_port = _pack_address(envelope.client, "client")
    ingress_ip, ingress_port = _pack_address(envelope.ingress, "ingress")
    flags = _FLAGS_BY_LENS[(len(client_ip), len(ingress_ip))]
    header = _LAYOUTS[flags].pack(
        FIRST_BYTE, flags, client_port, ingress_port, client_ip, ingress_ip
    )
    return header + payload


def header_length(data: bytes) -> int:
    """Check the fixed part of a header and return the header's length.

    Raises EncapError unless ``data`` starts with a complete version 1 header.
    """
    if len(data) < 2:
        raise EncapError("datagram too short for an encapsulation header")
    first = data[0]
    if first != FIRST_BYTE:
        if first < FIRST_BYTE_MIN:
            raise EncapError(f"first byte {first:#04x} is not an encapsulation header")
        raise EncapError(f"unsupported encapsulation version {first & 0x0F}")
    flags = data[1]
    if flags & ~_KNOWN_FLAGS:
        raise EncapError(f"reserved encapsulation flags set: {flags:#04x}")
    size = _SIZES[flags]
    if len(data) < size:
        raise EncapError("truncated encapsulation header")
    if flags & FLAG_HOPS and data[size - 1] > MAX_HOPS:
        raise EncapError(f"hop count {data[size - 1]} is over {MAX_HOPS}")
    return size


def hops(data: bytes) -> int | None:
    """The hop count of a checked header (``None``: it came from no other relay)."""
    flags = data[1]
    return data[_SIZES[flags] - 1] if flags & FLAG_HOPS else None


def peek_client(data: bytes) -> tuple[bytes, int, int]:
    """Return ``(client ip packed, client port, header length)`` without decoding text.

    The relay's hot path for transceiver -> client packets: the packed IP
    and port go straight into ``sendto`` after ``socket.inet_ntop`` (or a
    lookup the caller caches), and the payload starts at the header length.
    """
    size = header_length(data)
    flags = data[1]
    ip_len = _CLIENT_IP_LEN[flags]
    return data[6 : 6 + ip_len], (data[2] << 8) | data[3], size


def peek_addresses(data: bytes) -> tuple[bytes, int, bytes, int, int]:
    """Return ``(client ip, client port, ingress ip, ingress port, header length)``, IPs packed.

    For a relay with several ingress addresses, which needs to know which
    one to answer from as well as where to.
    """
    size = header_length(data)
    _, _, client_port, ingress_port, client_ip, ingress_ip = _LAYOUTS[data[1] & 3].unpack_from(data)
    return client_ip, client_port, ingress_ip, ingress_port, size


def decode(data: bytes) -> tuple[Envelope, bytes]:
    """Split an encapsulated datagram into its Envelope and the client's packet.

    The payload is returned as ``bytes`` (one copy), because the DTLS and
    SRTP layers it goes to want bytes; use :func:`header_length` and a
    memoryview to avoid even that.
    """
    size = header_length(data)
    header = bytes(data[:size])
    envelope = _envelopes.get(header)
    if envelope is None:
        envelope = _intern(header)
    return envelope, bytes(data[size:])


def _intern(header: bytes) -> Envelope:
    """Build the Envelope for a checked header and remember it."""
    _, _, client_port, ingress_port, client_ip, ingress_ip = _LAYOUTS[header[1] & 3].unpack_from(header)
    envelope = Envelope(
        (socket.inet_ntop(_FAMILY_BY_LEN[len(client_ip)], client_ip), client_port),
        (socket.inet_ntop(_FAMILY_BY_LEN[len(ingress_ip)], ingress_ip), ingress_port),
    )
    if len(_envelopes) >= _ENVELOPE_CACHE_MAX:
        _envelopes.clear()
    _envelopes[header] = envelope
    return envelope
