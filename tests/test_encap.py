"""Tests for voiceedge.wire.encap: the relay <-> transceiver encapsulation header."""

from __future__ import annotations

import socket

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from tests.cases import case
from voiceedge.wire import encap
from voiceedge.wire.encap import (
    FIRST_BYTE,
    FIRST_BYTE_MIN,
    MAX_HEADER_SIZE,
    MAX_HOPS,
    EncapError,
    Envelope,
    decode,
    encode,
    header_length,
    hops,
    is_encapsulated,
    pack_header_into,
    peek_addresses,
    peek_client,
)
from voiceedge.wire.errors import WireError

V4_CLIENT = ("203.0.113.7", 51234)
V6_CLIENT = ("2001:db8::7", 61000)
V4_INGRESS = ("198.51.100.1", 3478)
V6_INGRESS = ("2001:db8:1::1", 3478)
STUN = bytes.fromhex("000100002112a442") + b"\x00" * 12
DTLS = bytes([22, 0xFE, 0xFD]) + b"\x00" * 10
RTP = bytes([0x80, 111]) + b"\x00" * 10


def packed(host: str) -> bytes:
    """The network form of an IPv4 or IPv6 host."""
    return socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)


PAYLOADS = {"stun": STUN, "dtls": DTLS, "rtp": RTP, "empty": b""}

FAMILY_MIXES = [
    (V4_CLIENT, V4_INGRESS, 14),
    (V6_CLIENT, V4_INGRESS, 26),
    (V4_CLIENT, V6_INGRESS, 26),
    (V6_CLIENT, V6_INGRESS, 38),
]


UNENCODABLE = [
    Envelope(("10.0.0.1", 65536), V4_INGRESS),
    Envelope(("10.0.0.1", -1), V4_INGRESS),
    Envelope(("example.com", 1), V4_INGRESS),
    Envelope(V4_CLIENT, ("fe80::1%eth0", 1)),
    Envelope(V4_CLIENT, ("10.0.0.1",)),  # type: ignore[arg-type]
]


addresses = st.tuples(
    st.one_of(
        st.binary(min_size=4, max_size=4).map(lambda b: socket.inet_ntop(socket.AF_INET, b)),
        st.binary(min_size=16, max_size=16).map(lambda b: socket.inet_ntop(socket.AF_INET6, b)),
    ),
    st.integers(0, 0xFFFF),
)


class LayoutTests(SynchronousTestCase):
    """encode, decode and the relay's allocation-free writer and peekers agree on the header layout."""

    def test_round_trip(self) -> None:
        """decode(encode(e, p)) == (e, p) for every mix of families; header sizes are fixed."""
        for name, payload in PAYLOADS.items():
            for client, ingress, size in FAMILY_MIXES:
                with case(f"{name} payload, client {client}, ingress {ingress}"):
                    envelope = Envelope(client, ingress)
                    data = encode(envelope, payload)
                    self.assertEqual(len(data), size + len(payload))
                    self.assertEqual(data[0], FIRST_BYTE)
                    self.assertEqual(FIRST_BYTE, 0xF1)
                    self.assertEqual(data[size:], payload)
                    self.assertEqual(header_length(data), size)
                    self.assertEqual(decode(data), (envelope, payload))

    def test_layout_bytes(self) -> None:
        """The v4/v4 header is exactly the documented bytes."""
        data = encode(Envelope(("1.2.3.4", 0x0506), ("7.8.9.10", 0x0B0C)), b"P")
        self.assertEqual(data, bytes([0xF1, 0x00, 5, 6, 11, 12, 1, 2, 3, 4, 7, 8, 9, 10]) + b"P")
        data = encode(Envelope(("::1", 1), ("7.8.9.10", 2)), b"")
        self.assertEqual(data[1], encap.FLAG_CLIENT_V6)
        data = encode(Envelope(("1.2.3.4", 1), ("::2", 2)), b"")
        self.assertEqual(data[1], encap.FLAG_INGRESS_V6)

    def test_pack_header_into_matches_encode(self) -> None:
        """The relay's allocation-free writer produces the same bytes as encode."""
        for ingress in [V4_INGRESS, V6_INGRESS]:
            for client in [V4_CLIENT, V6_CLIENT]:
                with case(f"client {client}, ingress {ingress}"):
                    buffer = bytearray(2048)
                    n = pack_header_into(buffer, packed(client[0]), client[1], packed(ingress[0]), ingress[1])
                    buffer[n : n + len(RTP)] = RTP
                    self.assertEqual(bytes(buffer[: n + len(RTP)]), encode(Envelope(client, ingress), RTP))

    def test_peek(self) -> None:
        """peek_client and peek_addresses return packed addresses and the payload offset."""
        for ingress in [V4_INGRESS, V6_INGRESS]:
            for client in [V4_CLIENT, V6_CLIENT]:
                with case(f"client {client}, ingress {ingress}"):
                    data = encode(Envelope(client, ingress), DTLS)
                    ip, port, n = peek_client(data)
                    self.assertEqual((ip, port), (packed(client[0]), client[1]))
                    self.assertEqual(data[n:], DTLS)
                    self.assertEqual(
                        peek_addresses(data), (packed(client[0]), client[1], packed(ingress[0]), ingress[1], n)
                    )

    def test_decode_canonicalises_and_interns(self) -> None:
        """Hosts come back in inet_ntop form; repeated headers give the same Envelope object."""
        data = encode(Envelope(("0:0:0:0:0:0:0:1", 1), ("10.0.0.1", 2)), RTP)
        envelope, _ = decode(data)
        self.assertEqual(envelope, Envelope(("::1", 1), ("10.0.0.1", 2)))
        self.assertIs(decode(data + b"more")[0], envelope)

    def test_max_header_size(self) -> None:
        """MAX_HEADER_SIZE is what a relay must reserve in front of a payload (with a hop count)."""
        self.assertEqual(MAX_HEADER_SIZE, 39)

    def test_hop_count(self) -> None:
        """Relay to relay the header carries a hop count after the addresses; decoding ignores it."""
        buffer = bytearray(64)
        for client, ingress in ((V4_CLIENT, V4_INGRESS), (V6_CLIENT, V4_INGRESS), (V6_CLIENT, V6_INGRESS)):
            family_c = socket.AF_INET6 if ":" in client[0] else socket.AF_INET
            family_i = socket.AF_INET6 if ":" in ingress[0] else socket.AF_INET
            packed_c, packed_i = socket.inet_pton(family_c, client[0]), socket.inet_pton(family_i, ingress[0])
            plain = pack_header_into(buffer, packed_c, client[1], packed_i, ingress[1])
            n = pack_header_into(buffer, packed_c, client[1], packed_i, ingress[1], hop_count=3)
            self.assertEqual(n, plain + 1)
            data = bytes(buffer[:n]) + RTP
            self.assertEqual(header_length(data), n)
            self.assertEqual(hops(data), 3)
            self.assertIsNone(hops(encode(Envelope(client, ingress), RTP)))
            self.assertEqual(decode(data), (Envelope(client, ingress), RTP))
            self.assertEqual(peek_client(data), (packed_c, client[1], n))
            self.assertEqual(peek_addresses(data)[:4], (packed_c, client[1], packed_i, ingress[1]))
        over = bytearray(data)
        over[n - 1] = MAX_HOPS + 1
        with self.assertRaises(EncapError) as caught:
            header_length(bytes(over))
        self.assertRegex(str(caught.exception), "hop count")
        with self.assertRaises(EncapError) as caught:
            pack_header_into(buffer, packed_c, 1, packed_i, 1, hop_count=MAX_HOPS + 1)
        self.assertRegex(str(caught.exception), "hop count")

    @given(addresses, addresses, st.binary(max_size=64))
    def test_hypothesis_round_trip(self, client: tuple[str, int], ingress: tuple[str, int], payload: bytes) -> None:
        """decode(encode(e, p)) == (e, p) for any addresses and payload."""
        envelope = Envelope(client, ingress)
        self.assertEqual(decode(encode(envelope, payload)), (envelope, payload))


class RejectionTests(SynchronousTestCase):
    """Malformed headers and unencodable addresses raise EncapError (a WireError), nothing else."""

    def test_pack_header_into_rejects(self) -> None:
        """Bad packed lengths, ports out of range and a short buffer raise EncapError."""
        v4 = packed("10.0.0.1")
        with self.assertRaises(EncapError):
            pack_header_into(bytearray(64), b"\x00" * 5, 1, v4, 1)
        with self.assertRaises(EncapError):
            pack_header_into(bytearray(64), v4, 65536, v4, 1)
        with self.assertRaises(EncapError):
            pack_header_into(bytearray(64), v4, 1, v4, -1)
        with self.assertRaises(EncapError):
            pack_header_into(bytearray(13), v4, 1, v4, 1)

    def test_truncated_headers(self) -> None:
        """Every prefix shorter than the header is rejected by every parser."""
        for ingress in [V4_INGRESS, V6_INGRESS]:
            for client in [V4_CLIENT, V6_CLIENT]:
                with case(f"client {client}, ingress {ingress}"):
                    data = encode(Envelope(client, ingress), b"")
                    for n in range(len(data)):
                        for parse in (decode, header_length, peek_client, peek_addresses):
                            with self.assertRaises(EncapError):
                                parse(data[:n])

    def test_wrong_version_and_flags(self) -> None:
        """Another version in 0xF0..0xFF, reserved flags, or a non-encap first byte are rejected."""
        data = bytearray(encode(Envelope(V4_CLIENT, V4_INGRESS), RTP))
        for first in range(0xF0, 0x100):
            if first == FIRST_BYTE:
                continue
            data[0] = first
            with self.assertRaises(EncapError) as caught:
                decode(bytes(data))
            self.assertRegex(str(caught.exception), "version")
        data[0] = FIRST_BYTE
        for flags in range(8, 256):
            data[1] = flags
            with self.assertRaises(EncapError) as caught:
                decode(bytes(data))
            self.assertRegex(str(caught.exception), "flags")
        for direct in (STUN, DTLS, RTP):
            with self.assertRaises(EncapError) as caught:
                decode(direct)
            self.assertRegex(str(caught.exception), "not an encapsulation")

    def test_encode_rejects(self) -> None:
        """encode raises EncapError for addresses that cannot be encoded."""
        for envelope in UNENCODABLE:
            with case(str(envelope)):
                with self.assertRaises(EncapError):
                    encode(envelope, b"")

    def test_encap_error_is_wire_error(self) -> None:
        """EncapError is caught by the one type packet paths catch."""
        self.assertTrue(issubclass(EncapError, WireError))

    @given(st.one_of(st.binary(max_size=64), st.binary(max_size=40).map(lambda b: bytes([0xF1]) + b)))
    def test_hypothesis_random_bytes_raise_only_encap_error(self, data: bytes) -> None:
        """Random bytes either parse consistently or raise EncapError, in every parser."""
        try:
            envelope, payload = decode(data)
        except EncapError:
            pass
        else:
            if hops(data) is None:
                self.assertEqual(encode(envelope, payload), data)
            else:
                self.assertEqual(payload, data[header_length(data):])
        for parse in (header_length, peek_client, peek_addresses):
            try:
                parse(data)
            except EncapError:
                pass


class FirstByteTests(SynchronousTestCase):
    """Encapsulated datagrams are told apart from direct ones by their first byte."""

    def test_first_byte_classification(self) -> None:
        """Our first bytes (240..255) collide with none of RFC 7983's assigned ranges."""
        ours = set(range(FIRST_BYTE_MIN, 256))
        stun = set(range(0, 4))
        zrtp = set(range(16, 20))
        dtls = set(range(20, 64))
        turn_channel = set(range(64, 80))
        rtp_rtcp = set(range(128, 192))
        for assigned in (stun, zrtp, dtls, turn_channel, rtp_rtcp):
            self.assertFalse(ours & assigned)
        for first in range(256):
            self.assertEqual(is_encapsulated(bytes([first])), first in ours)
        self.assertFalse(is_encapsulated(b""))
        for direct in (STUN, DTLS, RTP):
            self.assertFalse(is_encapsulated(direct))
        self.assertTrue(is_encapsulated(encode(Envelope(V6_CLIENT, V6_INGRESS), RTP)))
