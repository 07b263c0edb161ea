# -*- test-case-name: tests.test_dtls -*-
"""A sans-I/O DTLS 1.2 transport with DTLS-SRTP key export (RFC 6347, RFC 5764)."""

from __future__ import annotations

import binascii
import datetime
import enum
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from OpenSSL import SSL
from pylibsrtp import Policy

__all__ = [
    "AEAD_AES_128_GCM",
    "AEAD_AES_256_GCM",
    "AES_CM_128_HMAC_SHA1_80",
    "DEFAULT_SRTP_PROFILES",
    "DtlsCertificate",
    "DtlsError",
    "DtlsOutput",
    "DtlsRole",
    "DtlsState",
    "DtlsTransport",
    "SrtpKeys",
    "SrtpProfile",
    "certificate_fingerprint",
]


class DtlsError(Exception):
    """The caller used a :class:`DtlsTransport` wrongly (never raised for peer input)."""


@dataclass(frozen=True, slots=True)
class SrtpProfile:
    """A DTLS-SRTP protection profile: its OpenSSL/IANA name, libsrtp id and key sizes."""

    name: str
    libsrtp_profile: int
    key_length: int
    salt_length: int


#: RFC 7714 AEAD_AES_128_GCM (preferred).
AEAD_AES_128_GCM = SrtpProfile("SRTP_AEAD_AES_128_GCM", Policy.SRTP_PROFILE_AEAD_AES_128_GCM, 16, 12)
#: RFC 7714 AEAD_AES_256_GCM (not offered by default).
AEAD_AES_256_GCM = SrtpProfile("SRTP_AEAD_AES_256_GCM", Policy.SRTP_PROFILE_AEAD_AES_256_GCM, 32, 12)
#: RFC 5764 SRTP_AES128_CM_HMAC_SHA1_80, the profile every WebRTC endpoint has.
AES_CM_128_HMAC_SHA1_80 = SrtpProfile(
    "SRTP_AES128_CM_SHA1_80", Policy.SRTP_PROFILE_AES128_CM_SHA1_80, 16, 14
)

DEFAULT_SRTP_PROFILES: tuple[SrtpProfile, ...] = (AEAD_AES_128_GCM, AES_CM_128_HMAC_SHA1_80)

# Strongest first: RFC 8122 §5 says verify with the most preferred hash the peer offered.
_FINGERPRINT_ALGORITHMS: dict[str, hashes.HashAlgorithm] = {
    "sha-512": hashes.SHA512(),
    "sha-384": hashes.SHA384(),
    "sha-256": hashes.SHA256(),
}

_DTLS1_2_VERSION = 0xFEFD
# Our certificate is ECDSA, so as server we pick ECDSA suites; the RSA ones only
# let us act as client towards a peer with an RSA certificate.
_CIPHERS = (
    b"ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-CHACHA20-POLY1305:"
    b"ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA:"
    b"ECDHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-CHACHA20-POLY1305:ECDHE-RSA-AES256-GCM-SHA384"
)
_RECORD_HEADER_LENGTH = 13
_HANDSHAKE_HEADER_LENGTH = 12
_CONTENT_HANDSHAKE = 22
_MAX_PLAINTEXT = 16384
_MAX_SEEN_FRAGMENTS = 256


def certificate_fingerprint(certificate: x509.Certificate, algorithm: str = "sha-256") -> str:
    """Return the SDP ``a=fingerprint`` value: upper-case hex bytes joined by colons."""
    digest = certificate.fingerprint(_FINGERPRINT_ALGORITHMS[algorithm])
    return binascii.hexlify(digest, ":").decode("ascii").upper()


class DtlsRole(enum.Enum):
    """Which side of the DTLS handshake we play (``a=setup``: passive is SERVER)."""

    SERVER = "server"
    CLIENT = "client"


class DtlsState(enum.Enum):
    """The lifecycle of a :class:`DtlsTransport`."""

    NEW = "new"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    CLOSED = "closed"
    FAILED = "failed"


@dataclass(frozen=True)
class SrtpKeys:
    """SRTP master key + salt for each direction, split per RFC 5764 §4.2 by role."""

    profile: int
    local_key: bytes
    remote_key: bytes


@dataclass(slots=True)
class DtlsOutput:
    """What one received datagram produced: datagrams to send, decrypted application data."""

    datagrams: list[bytes] = field(default_factory=list)
    application_data: list[bytes] = field(default_factory=list)


class _PeerCheck:
    """Per-connection fingerprint expectation, reachable from the shared context's callback.

    Held as the connection's app data instead of the transport itself so no
    reference cycle ties thousands of transports to their SSL objects.
    """

    __slots__ = ("expected", "mismatch")

    def __init__(self, expected: dict[str, frozenset[str]]) -> None:
        self.expected = expected
        self.mismatch = False

    def matches(self, certificate: x509.Certificate) -> bool:
        """Whether ``certificate`` has one of the fingerprints of the strongest offered hash."""
        for algorithm in _FINGERPRINT_ALGORITHMS:
            values = self.expected.get(algorithm)
            if values:
                return certificate_fingerprint(certificate, algorithm) in values
        return False


def _verify_peer(
    connection: SSL.Connection, certificate: object, errno: int, depth: int, ok: int
) -> bool:
    """Accept the (self-signed) peer certificate exactly when its fingerprint is in the SDP."""
    if depth != 0:
        # Only the leaf is authenticated, by fingerprint; a chain adds nothing.
        return True
    try:
        check = connection.get_app_data()
        leaf = certificate.to_cryptography()  # type: ignore[attr-defined]
        if isinstance(check, _PeerCheck) and check.matches(leaf):
            return True
        if isinstance(check, _PeerCheck):
            check.mismatch = True
    except Exception:
        pass
    return False


class DtlsCertificate:
    """A self-signed ECDSA certificate and key, with SSL contexts built once and reused."""

    __slots__ = ("certificate", "private_key", "fingerprint", "_contexts")

    def __init__(self, private_key: ec.EllipticCurvePrivateKey, certificate: x509.Certificate) -> None:
        self.private_key = private_key
        self.certificate = certificate
        self.fingerprint: str = certificate_fingerprint(certificate, "sha-256")
        self._contexts: dict[tuple[DtlsRole, tuple[SrtpProfile, ...]], SSL.Context] = {}

    @classmethod
    def generate(cls) -> DtlsCertificate:
        """Make an ECDSA P-256 self-signed certificate, random CN, valid from a day ago for 30 days."""
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name(
            [x509.NameAttribute(x509.NameOID.COMMON_NAME, binascii.hexlify(os.urandom(16)).decode())]
        )
        # Wall time is right here: validity dates are checked against wall time by peers.
        now = datetime.datetime.now(tz=datetime.timezone.utc)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=29))
            .sign(key, hashes.SHA256())
        )
        return cls(key, certificate)

    def ssl_context(self, role: DtlsRole, profiles: tuple[SrtpProfile, ...]) -> SSL.Context:
        """Return the (cached) DTLS 1.2 context for this role and SRTP profile list."""
        cache_key = (role, profiles)
        context = self._contexts.get(cache_key)
        if context is None:
            context = SSL.Context(SSL.DTLS_METHOD)
            context.set_min_proto_version(_DTLS1_2_VERSION)
            context.set_max_proto_version(_DTLS1_2_VERSION)
            # NO_QUERY_MTU makes OpenSSL honour our MTU instead of asking the memory BIO.
            context.set_options(SSL.OP_NO_TICKET | SSL.OP_NO_QUERY_MTU | SSL.OP_NO_RENEGOTIATION)
            # One certificate serves thousands of sessions; resumption is never used.
            context.set_session_cache_mode(SSL.SESS_CACHE_OFF)
            # Free each connection's read and write buffers (about 9 kB a call measured,
            # of some 75 kB of OpenSSL state) while they are empty, which after the handshake
            # is nearly always: only the data channel goes through them. CPython's ssl does the same.
            context.set_mode(SSL.MODE_RELEASE_BUFFERS)
            context.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, _verify_peer)
            context.use_certificate(self.certificate)
            context.use_privatekey(self.private_key)
            context.set_cipher_list(_CIPHERS)
            context.set_tlsext_use_srtp(b":".join(p.name.encode("ascii") for p in profiles))
            self._contexts[cache_key] = context
        return context


def _split_records(data: bytes) -> list[tuple[int, int]] | None:
    """Return (start, end) of each DTLS record in ``data``, or None if it does not frame."""
    records: list[tuple[int, int]] = []
    position = 0
    size = len(data)
    while position < size:
        end = position + _RECORD_HEADER_LENGTH
        if end > size or not 20 <= data[position] <= 25 or data[position + 1] != 0xFE:
            return None
        end += int.from_bytes(data[position + 11 : end], "big")
        if end > size:
            return None
        records.append((position, end))
        position = end
    return records if records else None


def _pack_datagrams(data: bytes, mtu: int) -> list[bytes]:
    """Pack OpenSSL's concatenated output records into datagrams of at most ``mtu`` bytes."""
    records = _split_records(data)
    if records is None:
        return [data]
    datagrams: list[bytes] = []
    first, last = records[0][0], records[0][0]
    for start, end in records:
        if end - first > mtu and last > first:
            datagrams.append(data[first:last])
            first = start
        last = end
    datagrams.append(data[first:last])
    return datagrams


class _Epoch0Sequence:
    """Renumbers our cleartext (epoch 0) records from one counter of our own.

    A byte-identical retransmission would be discarded by the peer's replay
    window whenever the first copy was received but not used (OpenSSL drops a
    ChangeCipherSpec that arrives before the handshake messages preceding it,
    after marking its sequence number as seen). Epoch 0 records carry no MAC, so
    giving every copy a fresh number is safe; encrypted records keep theirs.
    """

    __slots__ = ("next",)

    def __init__(self) -> None:
        self.next = 0

    def stamp(self, datagram: bytes) -> bytes:
        """Return ``datagram`` with each epoch 0 record given the next sequence number."""
        records = _split_records(datagram)
        if records is None or all(datagram[s + 3] or datagram[s + 4] for s, _ in records):
            return datagram
        buffer = bytearray(datagram)
        for start, _ in records:
            if not (buffer[start + 3] or buffer[start + 4]):
                buffer[start + 5 : start + 11] = self.next.to_bytes(6, "big")
                self.next += 1
        return bytes(buffer)


def _tls_error_reason(exc: Exception) -> str:
    """Return a short human reason from a pyOpenSSL error."""
    details = exc.args[0] if exc.args else None
    if isinstance(details, list) and details:
        reasons = [str(item[-1]) for item in details if isinstance(item, tuple) and item]
        if reasons:
            return ", ".join(reasons)
    return str(exc) or type(exc).__name__


class DtlsTransport:
    """One DTLS 1.2 association over memory BIOs, with our own retransmission timer.

    Datagrams and ``now`` (seconds on the caller's clock) go in; datagrams to
    send, decrypted application data and :meth:`deadline` come out. OpenSSL's
    own DTLS timer runs on wall time, so we never ask it to retransmit: we keep
    the last flight we emitted and resend it ourselves when our deadline passes
    (RFC 6347 §4.2.4: 1 s, doubling, capped) or when the peer retransmits its
    previous flight (it lost ours).
    """

    __slots__ = (
        "_role",
        "_ssl",
        "_peer_check",
        "_profiles",
        "_mtu",
        "_initial_timeout",
        "_max_timeout",
        "_max_retransmits",
        "_min_resend_interval",
        "_state",
        "failure_reason",
        "srtp_keys",
        "selected_profile",
        "discarded",
        "_flight",
        "_flight_sent_at",
        "_timeout",
        "_deadline",
        "_retransmits",
        "_seen_fragments",
        "_epoch0",
    )

    def __init__(
        self,
        certificate: DtlsCertificate,
        role: DtlsRole,
        remote_fingerprints: Sequence[tuple[str, str]],
        srtp_profiles: Sequence[SrtpProfile] = DEFAULT_SRTP_PROFILES,
        *,
        mtu: int = 1200,
        initial_timeout: float = 1.0,
        max_timeout: float = 60.0,
        max_retransmits: int = 6,
        min_resend_interval: float = 0.1,
    ) -> None:
        expected: dict[str, set[str]] = {}
        for algorithm, value in remote_fingerprints:
            name = algorithm.strip().lower()
            if name in _FINGERPRINT_ALGORITHMS:
                expected.setdefault(name, set()).add(value.strip().upper())
        if not expected:
            raise DtlsError("no remote fingerprint with a supported algorithm (sha-256/384/512)")
        profiles = tuple(srtp_profiles)
        if not profiles:
            raise DtlsError("at least one SRTP profile is required")
        if mtu < 256:
            raise DtlsError("mtu too small for DTLS")
        self._role = role
        self._profiles = profiles
        self._peer_check = _PeerCheck({k: frozenset(v) for k, v in expected.items()})
        self._ssl = SSL.Connection(certificate.ssl_context(role, profiles), None)
        self._ssl.set_app_data(self._peer_check)
        self._ssl.set_ciphertext_mtu(mtu)
        if role is DtlsRole.SERVER:
            self._ssl.set_accept_state()
        else:
            self._ssl.set_connect_state()
        self._mtu = mtu
        self._initial_timeout = initial_timeout
        self._max_timeout = max_timeout
        self._max_retransmits = max_retransmits
        self._min_resend_interval = min_resend_interval
        self._state = DtlsState.NEW
        self.failure_reason: str | None = None
        self.srtp_keys: SrtpKeys | None = None
        self.selected_profile: str | None = None
        #: Datagrams dropped because they do not frame as DTLS records (RFC 6347 §4.1.2.7).
        self.discarded = 0
        self._flight: list[bytes] = []
        self._flight_sent_at = 0.0
        self._timeout = initial_timeout
        self._deadline: float | None = None
        self._retransmits = 0
        self._seen_fragments: set[tuple[int, int]] = set()
        self._epoch0 = _Epoch0Sequence()

    @property
    def state(self) -> DtlsState:
        """The current :class:`DtlsState`."""
        return self._state

    @property
    def role(self) -> DtlsRole:
        """Our :class:`DtlsRole`."""
        return self._role

    def deadline(self) -> float | None:
        """When :meth:`handle_timeout` must next be called, or None if nothing is pending."""
        return self._deadline

    def start(self, now: float) -> list[bytes]:
        """Begin the handshake: a client returns its ClientHello flight, a server nothing."""
        if self._state is not DtlsState.NEW:
            raise DtlsError(f"start() in state {self._state.name}")
        self._state = DtlsState.CONNECTING
        if self._role is DtlsRole.SERVER:
            return []
        try:
            self._ssl.do_handshake()
        except SSL.WantReadError:
            pass
        except Exception as exc:
            self._fail(_tls_error_reason(exc))
            return []
        datagrams = self._drain()
        self._new_flight(datagrams, now)
        return datagrams

    def receive(self, data: bytes, now: float) -> DtlsOutput:
        """Feed one datagram of DTLS records; never raises for anything the peer sends."""
        output = DtlsOutput()
        state = self._state
        if state is DtlsState.NEW:
            raise DtlsError("receive() before start()")
        if state is DtlsState.CLOSED or state is DtlsState.FAILED:
            return output
        records = _split_records(data)
        if records is None:
            self.discarded += 1
            return output
        retransmitted = (state is DtlsState.CONNECTING or bool(self._flight)) and (
            self._is_retransmission(data, records)
        )
        try:
            self._ssl.bio_write(data)
            if state is DtlsState.CONNECTING:
                self._handshake()
            if self._state is DtlsState.CONNECTED:
                self._read_application_data(output, len(records))
        except SSL.ZeroReturnError:
            self._peer_closed()
        except Exception as exc:
            self._fail(
                "fingerprint mismatch" if self._peer_check.mismatch else _tls_error_reason(exc)
            )
        datagrams = self._drain()
        if state is DtlsState.CONNECTING:
            if self._state is DtlsState.CONNECTING and datagrams:
                self._new_flight(datagrams, now)
            elif self._state is DtlsState.CONNECTED:
                self._deadline = None
                # Whoever sent the final flight keeps it to answer the peer's
                # retransmissions (RFC 6347 §4.2.4); the receiver of it drops its own.
                self._flight = datagrams
                self._flight_sent_at = now
                if not datagrams:
                    self._seen_fragments.clear()
        if (
            retransmitted
            and not datagrams
            and self._flight
            and self._state in (DtlsState.CONNECTING, DtlsState.CONNECTED)
            and now - self._flight_sent_at >= self._min_resend_interval
        ):
            datagrams = self._resend(now)
        output.datagrams = datagrams
        return output

    def handle_timeout(self, now: float) -> list[bytes]:
        """Resend the pending flight if the deadline has passed; fail after too many tries."""
        deadline = self._deadline
        if deadline is None or now < deadline:
            return []
        if self._retransmits >= self._max_retransmits:
            self._fail("handshake timeout")
            return []
        self._retransmits += 1
        self._timeout = min(self._timeout * 2, self._max_timeout)
        self._deadline = now + self._timeout
        return self._resend(now)

    def send_application_data(self, data: bytes) -> list[bytes]:
        """Encrypt ``data`` as one application-data record (for the SCTP data channel)."""
        if self._state is not DtlsState.CONNECTED:
            raise DtlsError(f"send_application_data() in state {self._state.name}")
        if not data or len(data) > _MAX_PLAINTEXT:
            raise DtlsError("application data must be 1 to 16384 bytes")
        try:
            self._ssl.send(data)
        except Exception as exc:
            self._fail(_tls_error_reason(exc))
        return self._drain()

    def close(self) -> list[bytes]:
        """Send close_notify if connected; the transport is CLOSED afterwards."""
        datagrams: list[bytes] = []
        if self._state is DtlsState.CONNECTED:
            try:
                self._ssl.shutdown()
            except Exception:
                pass
            datagrams = self._drain()
        if self._state is not DtlsState.FAILED:
            self._state = DtlsState.CLOSED
        self._forget_flight()
        return datagrams

    # Internals.

    def _handshake(self) -> None:
        """Advance the handshake; on completion check the fingerprint and export keys."""
        try:
            self._ssl.do_handshake()
        except SSL.WantReadError:
            return
        certificate = self._ssl.get_peer_certificate(as_cryptography=True)
        if certificate is None or not self._peer_check.matches(certificate):
            self._drain()  # never send our Finished to an unauthenticated peer
            self._fail("fingerprint mismatch")
            return
        name = self._ssl.get_selected_srtp_profile().decode("ascii", "replace")
        profile = next((p for p in self._profiles if p.name == name), None)
        if profile is None:
            self._fail("no SRTP profile negotiated")
            return
        key_length, salt_length = profile.key_length, profile.salt_length
        material = self._ssl.export_keying_material(
            b"EXTRACTOR-dtls_srtp", 2 * (key_length + salt_length)
        )
        salts = 2 * key_length
        client_key = material[:key_length] + material[salts : salts + salt_length]
        server_key = material[key_length:salts] + material[salts + salt_length :]
        if self._role is DtlsRole.CLIENT:
            local_key, remote_key = client_key, server_key
        else:
            local_key, remote_key = server_key, client_key
        self.srtp_keys = SrtpKeys(profile.libsrtp_profile, local_key, remote_key)
        self.selected_profile = profile.name
        self._state = DtlsState.CONNECTED

    def _read_application_data(self, output: DtlsOutput, limit: int) -> None:
        """Collect every application record OpenSSL decrypts from the datagram just written."""
        for _ in range(limit + 1):
            try:
                chunk = self._ssl.recv(_MAX_PLAINTEXT)
            except SSL.WantReadError:
                return
            if chunk:
                output.application_data.append(chunk)
                # The peer is sending data, so it has our final flight.
                self._forget_flight()

    def _drain(self) -> list[bytes]:
        """Read everything OpenSSL wrote and pack it into datagrams."""
        chunks: list[bytes] = []
        while True:
            try:
                chunk = self._ssl.bio_read(65536)
            except SSL.Error:
                break
            if not chunk:
                break
            chunks.append(chunk)
        if not chunks:
            return []
        stamp = self._epoch0.stamp
        return [stamp(d) for d in _pack_datagrams(b"".join(chunks), self._mtu)]

    def _resend(self, now: float) -> list[bytes]:
        """Return the stored flight again, its cleartext records freshly numbered."""
        self._flight_sent_at = now
        stamp = self._epoch0.stamp
        self._flight = [stamp(d) for d in self._flight]
        return list(self._flight)

    def _new_flight(self, datagrams: list[bytes], now: float) -> None:
        """Remember a flight just sent and arm the timer at its initial value."""
        if not datagrams:
            return
        self._flight = datagrams
        self._flight_sent_at = now
        self._timeout = self._initial_timeout
        self._retransmits = 0
        self._deadline = now + self._timeout

    def _is_retransmission(self, data: bytes, records: list[tuple[int, int]]) -> bool:
        """Whether every cleartext handshake fragment in ``data`` was seen before.

        Fragments are keyed by (message_seq, fragment_offset), so the second
        half of a fragmented message or a reordered flight counts as new.
        """
        seen = self._seen_fragments
        new = False
        any_fragment = False
        for start, end in records:
            # Epoch 0 only: later epochs are encrypted.
            if data[start] != _CONTENT_HANDSHAKE or data[start + 3] or data[start + 4]:
                continue
            position = start + _RECORD_HEADER_LENGTH
            while position + _HANDSHAKE_HEADER_LENGTH <= end:
                message_seq = int.from_bytes(data[position + 4 : position + 6], "big")
                offset = int.from_bytes(data[position + 6 : position + 9], "big")
                key = (message_seq, offset)
                any_fragment = True
                if key not in seen:
                    new = True
                    if len(seen) < _MAX_SEEN_FRAGMENTS:
                        seen.add(key)
                length = int.from_bytes(data[position + 9 : position + 12], "big")
                position += _HANDSHAKE_HEADER_LENGTH + length
        return any_fragment and not new

    def _peer_closed(self) -> None:
        """The peer sent close_notify."""
        self._state = DtlsState.CLOSED
        self._forget_flight()

    def _fail(self, reason: str) -> None:
        """Enter FAILED with ``reason``; keys are never exported after this."""
        self._state = DtlsState.FAILED
        self.failure_reason = reason
        self.srtp_keys = None
        self._forget_flight()

    def _forget_flight(self) -> None:
        """Drop the retransmission state."""
        self._flight = []
        self._deadline = None
        self._seen_fragments.clear()
