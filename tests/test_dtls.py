"""Tests for voiceedge.transceiver.dtls: handshake, keys, retransmission, failures, interop."""

from __future__ import annotations

import asyncio
import datetime
import random
import re
from collections.abc import Callable, Sequence

from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from tests.cases import case
from voiceedge.transceiver.dtls import (
    AEAD_AES_128_GCM,
    AEAD_AES_256_GCM,
    AES_CM_128_HMAC_SHA1_80,
    DtlsCertificate,
    DtlsError,
    DtlsRole,
    DtlsState,
    DtlsTransport,
    SrtpProfile,
    certificate_fingerprint,
)
from voiceedge.transceiver.srtp import SrtpSession

SERVER_CERT = DtlsCertificate.generate()
CLIENT_CERT = DtlsCertificate.generate()
OTHER_CERT = DtlsCertificate.generate()

RTP = bytes.fromhex("800000010000000112345678") + b"voice" * 8

Filter = Callable[[DtlsTransport, bytes], bool]


def make_pair(
    client_profiles: Sequence[SrtpProfile] = (AEAD_AES_128_GCM, AES_CM_128_HMAC_SHA1_80),
    server_profiles: Sequence[SrtpProfile] = (AEAD_AES_128_GCM, AES_CM_128_HMAC_SHA1_80),
    server_expects: str | None = None,
    client_expects: str | None = None,
    **options: float,
) -> tuple[DtlsTransport, DtlsTransport]:
    """Return (server, client) expecting each other's fingerprints unless told otherwise."""
    server = DtlsTransport(
        SERVER_CERT,
        DtlsRole.SERVER,
        [("sha-256", server_expects or CLIENT_CERT.fingerprint)],
        server_profiles,
        **options,  # type: ignore[arg-type]
    )
    client = DtlsTransport(
        CLIENT_CERT,
        DtlsRole.CLIENT,
        [("sha-256", client_expects or SERVER_CERT.fingerprint)],
        client_profiles,
        **options,  # type: ignore[arg-type]
    )
    return server, client


def peer_of(transport: DtlsTransport, server: DtlsTransport, client: DtlsTransport) -> DtlsTransport:
    """The other end of the pair."""
    return client if transport is server else server


def pump(
    server: DtlsTransport,
    client: DtlsTransport,
    sender: DtlsTransport,
    datagrams: list[bytes],
    now: float,
    keep: Filter = lambda sender, datagram: True,
) -> list[bytes]:
    """Deliver datagrams back and forth until quiet; return application data seen."""
    application_data: list[bytes] = []
    queue = [(sender, d) for d in datagrams]
    for _ in range(100):
        if not queue:
            return application_data
        source, datagram = queue.pop(0)
        if not keep(source, datagram):
            continue
        target = peer_of(source, server, client)
        output = target.receive(datagram, now)
        application_data.extend(output.application_data)
        queue.extend((target, d) for d in output.datagrams)
    raise AssertionError("datagrams kept flowing")


def unnumbered(datagrams: list[bytes]) -> list[bytes]:
    """Datagrams with epoch 0 record sequence numbers zeroed (retransmissions renumber them)."""
    result = []
    for datagram in datagrams:
        buffer = bytearray(datagram)
        position = 0
        while position + 13 <= len(buffer):
            if buffer[position + 3 : position + 5] == b"\0\0":
                buffer[position + 5 : position + 11] = bytes(6)
            position += 13 + int.from_bytes(buffer[position + 11 : position + 13], "big")
        result.append(bytes(buffer))
    return result


def run_network(
    server: DtlsTransport,
    client: DtlsTransport,
    order: Callable[[list[bytes]], list[bytes]],
    limit: float = 200.0,
) -> float:
    """Drive both ends with ``order`` applied to every batch, firing timers; return the end time."""
    now = 0.0
    server.start(now)
    batches = [(client, client.start(now))]
    while now < limit:
        while batches:
            source, datagrams = batches.pop(0)
            target = peer_of(source, server, client)
            reply: list[bytes] = []
            for datagram in order(datagrams):
                reply += target.receive(datagram, now).datagrams
            if reply:
                batches.append((target, reply))
        if server.state is not DtlsState.CONNECTING and client.state is not DtlsState.CONNECTING:
            return now
        deadlines = [d for d in (server.deadline(), client.deadline()) if d is not None]
        if not deadlines:
            return now
        now = min(deadlines)
        for transport in (server, client):
            resent = transport.handle_timeout(now)
            if resent:
                batches.append((transport, resent))
    return now


def connect(server: DtlsTransport, client: DtlsTransport, now: float = 0.0) -> None:
    """Run a lossless handshake."""
    assert server.start(now) == []
    pump(server, client, client, client.start(now), now)


def waiting_server() -> DtlsTransport:
    """A server that has started and waits for a ClientHello."""
    server, _ = make_pair()
    server.start(0.0)
    return server


def waiting_client() -> DtlsTransport:
    """A client that has sent its ClientHello."""
    _, client = make_pair()
    client.start(0.0)
    return client


def connected_server() -> DtlsTransport:
    """A server after a complete handshake."""
    server, client = make_pair()
    connect(server, client)
    return server


@st.composite
def framed_records(draw: st.DrawFn) -> bytes:
    """One to three well-framed DTLS records with random headers and bodies."""
    datagram = b""
    for _ in range(draw(st.integers(1, 3))):
        body = draw(st.binary(max_size=200))
        header = (
            bytes([draw(st.integers(20, 25)), 0xFE, draw(st.sampled_from([0xFD, 0xFF]))])
            + draw(st.integers(0, 2)).to_bytes(2, "big")
            + draw(st.integers(0, 2**48 - 1)).to_bytes(6, "big")
            + len(body).to_bytes(2, "big")
        )
        datagram += header + body
    return datagram


class HandshakeTests(SynchronousTestCase):
    """The handshake connects, picks an SRTP profile and checks fingerprints (RFC 5763, RFC 5764, RFC 8122)."""

    def test_handshake_connects_with_gcm_and_cross_matching_keys(self) -> None:
        """Both sides connect, AEAD_AES_128_GCM is chosen, and the key halves cross-match."""
        server, client = make_pair()
        self.assertIs(server.state, DtlsState.NEW)
        connect(server, client)
        self.assertIs(server.state, DtlsState.CONNECTED)
        self.assertIs(client.state, DtlsState.CONNECTED)
        self.assertEqual(server.selected_profile, client.selected_profile)
        self.assertEqual(client.selected_profile, "SRTP_AEAD_AES_128_GCM")
        self.assertIsNotNone(server.srtp_keys)
        self.assertIsNotNone(client.srtp_keys)
        self.assertEqual(server.srtp_keys.profile, client.srtp_keys.profile)
        self.assertEqual(client.srtp_keys.profile, AEAD_AES_128_GCM.libsrtp_profile)
        self.assertEqual(server.srtp_keys.local_key, client.srtp_keys.remote_key)
        self.assertEqual(server.srtp_keys.remote_key, client.srtp_keys.local_key)
        self.assertNotEqual(server.srtp_keys.local_key, server.srtp_keys.remote_key)
        self.assertEqual(len(server.srtp_keys.local_key), 16 + 12)
        self.assertIsNone(server.deadline())
        self.assertIsNone(client.deadline())
        self.assertIsNone(server.failure_reason)
        self.assertIsNone(client.failure_reason)

    def test_aes_cm_when_client_only_offers_it(self) -> None:
        """A client offering only AES_CM_128_HMAC_SHA1_80 gets it, with 16+14 byte keys."""
        server, client = make_pair(client_profiles=(AES_CM_128_HMAC_SHA1_80,))
        connect(server, client)
        self.assertEqual(server.selected_profile, client.selected_profile)
        self.assertEqual(client.selected_profile, "SRTP_AES128_CM_SHA1_80")
        self.assertIsNotNone(server.srtp_keys)
        self.assertIsNotNone(client.srtp_keys)
        self.assertEqual(server.srtp_keys.profile, AES_CM_128_HMAC_SHA1_80.libsrtp_profile)
        self.assertEqual(len(client.srtp_keys.local_key), 16 + 14)
        self.assertEqual(server.srtp_keys.local_key, client.srtp_keys.remote_key)

    def test_server_preference_wins(self) -> None:
        """A client preferring AES_CM still gets GCM: the server's order decides."""
        server, client = make_pair(client_profiles=(AES_CM_128_HMAC_SHA1_80, AEAD_AES_256_GCM, AEAD_AES_128_GCM))
        connect(server, client)
        self.assertEqual(server.selected_profile, "SRTP_AEAD_AES_128_GCM")

    def test_no_common_srtp_profile_fails(self) -> None:
        """Without a shared SRTP profile the handshake yields no keys."""
        server, client = make_pair(client_profiles=(AEAD_AES_256_GCM,))
        connect(server, client)
        self.assertIs(server.state, DtlsState.FAILED)
        self.assertIs(client.state, DtlsState.FAILED)
        self.assertEqual(server.failure_reason, "no SRTP profile negotiated")
        self.assertIsNone(server.srtp_keys)
        self.assertIsNone(client.srtp_keys)

    def test_application_data_both_ways(self) -> None:
        """Application records flow in both directions after the handshake."""
        server, client = make_pair()
        connect(server, client)
        received = pump(server, client, client, client.send_application_data(b"from client"), 1.0)
        self.assertEqual(received, [b"from client"])
        datagrams = server.send_application_data(b"one") + server.send_application_data(b"two")
        self.assertEqual(pump(server, client, server, datagrams, 1.0), [b"one", b"two"])
        # Two records in one datagram are both delivered.
        self.assertEqual(
            client.receive(b"".join(server.send_application_data(b"x") + server.send_application_data(b"y")), 1.0).application_data,
            [b"x", b"y"],
        )

    def test_idle_connections_release_their_record_buffers(self) -> None:
        """Every context frees a connection's read and write buffers while empty; data still flows both ways."""
        from OpenSSL import SSL

        certificate = DtlsCertificate.generate()
        for role in DtlsRole:
            context = certificate.ssl_context(role, (AEAD_AES_128_GCM,))
            # SSL_CTX_set_mode ORs in its argument and returns the mode: 0 reads it.
            self.assertTrue(context.set_mode(0) & SSL.MODE_RELEASE_BUFFERS, role)
        server, client = make_pair()
        connect(server, client)
        for _ in range(3):
            self.assertEqual(pump(server, client, client, client.send_application_data(b"ping"), 1.0), [b"ping"])
            self.assertEqual(pump(server, client, server, server.send_application_data(b"pong"), 1.0), [b"pong"])

    def test_fingerprint_mismatch_fails_without_keys(self) -> None:
        """A peer certificate not matching the SDP fingerprint fails the handshake; no keys."""
        for wrong_side in ["server", "client"]:
            with case(f"wrong fingerprint expected by the {wrong_side}"):
                if wrong_side == "server":
                    server, client = make_pair(server_expects=OTHER_CERT.fingerprint)
                    checker, other = server, client
                else:
                    server, client = make_pair(client_expects=OTHER_CERT.fingerprint)
                    checker, other = client, server
                connect(server, client)
                self.assertIs(checker.state, DtlsState.FAILED)
                self.assertEqual(checker.failure_reason, "fingerprint mismatch")
                self.assertIsNone(checker.srtp_keys)
                self.assertIsNone(other.srtp_keys)
                # The peer hears a fatal alert instead of hanging.
                self.assertIs(other.state, DtlsState.FAILED)
                self.assertTrue(other.failure_reason)
                self.assertIsNone(checker.deadline())
                self.assertIsNone(other.deadline())

    def test_fingerprint_strongest_algorithm_decides(self) -> None:
        """RFC 8122 §5: a right sha-256 does not excuse a wrong sha-512; sha-384 alone works."""
        right_256 = ("sha-256", CLIENT_CERT.fingerprint)
        wrong_512 = ("sha-512", certificate_fingerprint(OTHER_CERT.certificate, "sha-512"))
        server = DtlsTransport(SERVER_CERT, DtlsRole.SERVER, [right_256, wrong_512])
        client = DtlsTransport(CLIENT_CERT, DtlsRole.CLIENT, [("sha-256", SERVER_CERT.fingerprint)])
        connect(server, client)
        self.assertEqual(server.failure_reason, "fingerprint mismatch")

        lower_384 = certificate_fingerprint(CLIENT_CERT.certificate, "sha-384").lower()
        server = DtlsTransport(SERVER_CERT, DtlsRole.SERVER, [("SHA-384", lower_384), ("md5", "00")])
        client = DtlsTransport(CLIENT_CERT, DtlsRole.CLIENT, [("sha-256", SERVER_CERT.fingerprint)])
        connect(server, client)
        self.assertIs(server.state, DtlsState.CONNECTED)

    def test_keys_work_in_srtp(self) -> None:
        """Keys from the handshake protect on one side and unprotect on the other."""
        server, client = make_pair()
        connect(server, client)
        self.assertIsNotNone(server.srtp_keys)
        self.assertIsNotNone(client.srtp_keys)
        protected = SrtpSession(server.srtp_keys).protect_rtp(RTP)
        self.assertEqual(SrtpSession(client.srtp_keys).unprotect_rtp(protected), RTP)

    def test_certificate_and_context_reuse(self) -> None:
        """ECDSA P-256, fingerprint format, validity window; SSL contexts built once per role."""
        cert = DtlsCertificate.generate()
        self.assertIsInstance(cert.private_key.curve, ec.SECP256R1)
        self.assertTrue(re.fullmatch(r"([0-9A-F]{2}:){31}[0-9A-F]{2}", cert.fingerprint))
        self.assertNotEqual(cert.fingerprint, SERVER_CERT.fingerprint)
        now = datetime.datetime.now(datetime.timezone.utc)
        self.assertLess(cert.certificate.not_valid_before_utc, now - datetime.timedelta(hours=23))
        self.assertGreater(cert.certificate.not_valid_after_utc, now + datetime.timedelta(days=28))
        self.assertEqual(cert.certificate.subject, cert.certificate.issuer)
        profiles = (AEAD_AES_128_GCM, AES_CM_128_HMAC_SHA1_80)
        context = cert.ssl_context(DtlsRole.SERVER, profiles)
        self.assertIs(cert.ssl_context(DtlsRole.SERVER, profiles), context)
        self.assertIsNot(cert.ssl_context(DtlsRole.CLIENT, profiles), context)


class RetransmissionTests(SynchronousTestCase):
    """Lost, duplicated and reordered flights are recovered by our timers (RFC 6347 §4.2.4), within a budget."""

    def test_lost_server_flight_client_timer_resends(self) -> None:
        """Losing the server's first flight: the client resends at its deadline and it completes."""
        server, client = make_pair()
        server.start(0.0)
        hello = client.start(0.0)
        self.assertEqual(client.deadline(), 1.0)
        lost = server.receive(hello[0], 0.0).datagrams
        self.assertTrue(lost)
        self.assertEqual(server.deadline(), 1.0)
        self.assertEqual(client.handle_timeout(0.999), [])
        resent = client.handle_timeout(1.0)
        self.assertEqual(unnumbered(resent), unnumbered(hello))
        self.assertNotEqual(resent, hello)
        self.assertEqual(client.deadline(), 3.0)
        # The server sees the retransmitted ClientHello and resends its own flight.
        again = server.receive(resent[0], 1.0).datagrams
        self.assertEqual(unnumbered(again), unnumbered(lost))
        pump(server, client, server, again, 1.0)
        self.assertIs(server.state, DtlsState.CONNECTED)
        self.assertIs(client.state, DtlsState.CONNECTED)
        self.assertIsNotNone(server.srtp_keys)
        self.assertIsNotNone(client.srtp_keys)
        self.assertEqual(server.srtp_keys.local_key, client.srtp_keys.remote_key)

    def test_lost_server_flight_server_timer_resends(self) -> None:
        """The server's own timer resends its lost flight even if the client stays silent."""
        server, client = make_pair()
        server.start(0.0)
        lost = server.receive(client.start(0.0)[0], 0.0).datagrams
        resent = server.handle_timeout(1.0)
        self.assertEqual(unnumbered(resent), unnumbered(lost))
        self.assertEqual(server.deadline(), 3.0)
        pump(server, client, server, resent, 1.0)
        self.assertIs(server.state, DtlsState.CONNECTED)
        self.assertIs(client.state, DtlsState.CONNECTED)

    def test_lost_final_server_flight(self) -> None:
        """Losing the server's CCS+Finished: the client's retransmission makes the server resend it."""
        server, client = make_pair()
        server.start(0.0)
        flight4 = server.receive(client.start(0.0)[0], 0.0).datagrams
        flight5: list[bytes] = []
        for datagram in flight4:
            flight5 += client.receive(datagram, 0.0).datagrams
        flight6: list[bytes] = []
        for datagram in flight5:
            flight6 += server.receive(datagram, 0.0).datagrams
        self.assertTrue(flight6)
        self.assertIs(server.state, DtlsState.CONNECTED)
        self.assertIsNone(server.deadline())
        self.assertIs(client.state, DtlsState.CONNECTING)
        self.assertEqual(client.deadline(), 1.0)
        resent5 = client.handle_timeout(1.0)
        self.assertEqual(unnumbered(resent5), unnumbered(flight5))
        again6: list[bytes] = []
        for datagram in resent5:
            again6 += server.receive(datagram, 1.0).datagrams
        self.assertEqual(unnumbered(again6), unnumbered(flight6))
        pump(server, client, server, again6, 1.0)
        self.assertIs(client.state, DtlsState.CONNECTED)
        self.assertIsNone(client.deadline())
        # A late duplicate of the final flight does not start a ping-pong.
        self.assertTrue(all(client.receive(d, 2.0).datagrams == [] for d in flight6))

    def test_deadlines_double_up_to_cap_then_fail(self) -> None:
        """Unanswered: 1, 2, 4, ... capped at 60 s, then FAILED after the last retransmission."""
        _, client = make_pair(max_retransmits=8)
        now = 0.0
        client.start(now)
        gaps = []
        for _ in range(8):
            deadline = client.deadline()
            self.assertIsNotNone(deadline)
            gaps.append(deadline - now)
            now = deadline
            self.assertEqual(len(client.handle_timeout(now)), 1)
        self.assertEqual(gaps, [1, 2, 4, 8, 16, 32, 60, 60])
        deadline = client.deadline()
        self.assertEqual(deadline, now + 60)
        self.assertEqual(client.handle_timeout(deadline), [])
        self.assertIs(client.state, DtlsState.FAILED)
        self.assertEqual(client.failure_reason, "handshake timeout")
        self.assertIsNone(client.deadline())

    def test_default_retransmission_budget(self) -> None:
        """With defaults an unanswered client gives up after 6 retransmissions (at 123 s)."""
        _, client = make_pair()
        client.start(0.0)
        sent = 0
        while (deadline := client.deadline()) is not None:
            sent += len(client.handle_timeout(deadline))
            last = deadline
        self.assertEqual(sent, 6)
        self.assertEqual(last, 123.0)
        self.assertIs(client.state, DtlsState.FAILED)

    def test_server_has_no_deadline_until_it_sends(self) -> None:
        """A server waiting for a ClientHello has nothing to retransmit."""
        server, _ = make_pair()
        self.assertIsNone(server.deadline())
        server.start(0.0)
        self.assertIsNone(server.deadline())
        self.assertEqual(server.handle_timeout(100.0), [])
        self.assertIs(server.state, DtlsState.CONNECTING)

    def test_client_hello_retransmitted_twice(self) -> None:
        """Three copies of the ClientHello: the server answers, resending at most once per copy."""
        server, client = make_pair()
        server.start(0.0)
        hello = client.start(0.0)[0]
        first = server.receive(hello, 0.0).datagrams
        # An immediate duplicate is not answered (rate limit), later ones are.
        self.assertEqual(server.receive(hello, 0.0).datagrams, [])
        self.assertEqual(unnumbered(server.receive(hello, 1.0).datagrams), unnumbered(first))
        pump(server, client, server, first, 1.0)
        self.assertIs(server.state, DtlsState.CONNECTED)
        self.assertIs(client.state, DtlsState.CONNECTED)

    def test_duplicated_flights(self) -> None:
        """Every datagram delivered twice: completes with no timer; datagrams respect the MTU."""
        for mtu in [300, 1200]:
            with case(f"MTU {mtu}"):
                server, client = make_pair(mtu=mtu)
                sizes: list[int] = []

                def twice(datagrams: list[bytes]) -> list[bytes]:
                    sizes.extend(len(d) for d in datagrams)
                    return [d for d in datagrams for _ in range(2)]

                self.assertEqual(run_network(server, client, twice), 0.0)
                self.assertIs(server.state, DtlsState.CONNECTED)
                self.assertIs(client.state, DtlsState.CONNECTED)
                self.assertLessEqual(max(sizes), mtu)
                self.assertIsNotNone(server.srtp_keys)
                self.assertIsNotNone(client.srtp_keys)
                self.assertEqual(server.srtp_keys.local_key, client.srtp_keys.remote_key)

    def test_reordered_flights(self) -> None:
        """Multi-datagram flights delivered reversed (and twice) still complete.

        Reversal puts ChangeCipherSpec before the messages it follows, which
        OpenSSL drops after marking its record number seen; only a retransmission
        with a fresh record number recovers, within the first timer.
        """
        server, client = make_pair(mtu=300)
        flights: list[int] = []

        def reversed_twice(datagrams: list[bytes]) -> list[bytes]:
            flights.append(len(datagrams))
            return list(reversed(datagrams)) * 2

        self.assertLessEqual(run_network(server, client, reversed_twice), 1.0)
        self.assertGreater(max(flights), 1)
        self.assertIs(server.state, DtlsState.CONNECTED)
        self.assertIs(client.state, DtlsState.CONNECTED)
        self.assertIsNotNone(server.srtp_keys)
        self.assertIsNotNone(client.srtp_keys)
        self.assertEqual(server.srtp_keys.local_key, client.srtp_keys.remote_key)

    def test_lossy_network_completes(self) -> None:
        """With 20% random loss and shuffling, the handshake completes via our timers."""
        for seed in range(20):
            with case(f"seed {seed}"):
                rng = random.Random(seed)
                server, client = make_pair(mtu=300)

                def lossy(datagrams: list[bytes]) -> list[bytes]:
                    kept = [d for d in datagrams if rng.random() > 0.2]
                    rng.shuffle(kept)
                    return kept

                run_network(server, client, lossy)
                self.assertIs(server.state, DtlsState.CONNECTED)
                self.assertIs(client.state, DtlsState.CONNECTED)


class CloseAndFailureTests(SynchronousTestCase):
    """close_notify, fatal alerts, bad records and misuse end a transport cleanly with a reason."""

    def test_close_notify(self) -> None:
        """close() sends close_notify; the peer goes CLOSED; later input is ignored."""
        for closer in ["server", "client"]:
            with case(f"the {closer} closes"):
                server, client = make_pair()
                connect(server, client)
                closing, other = (server, client) if closer == "server" else (client, server)
                datagrams = closing.close()
                self.assertIs(closing.state, DtlsState.CLOSED)
                self.assertTrue(datagrams)
                for datagram in datagrams:
                    self.assertEqual(other.receive(datagram, 1.0).datagrams, [])
                self.assertIs(other.state, DtlsState.CLOSED)
                self.assertIsNone(other.failure_reason)
                self.assertEqual(other.receive(datagrams[0], 2.0).datagrams, [])
                self.assertEqual(other.close(), [])

    def test_close_before_connected_sends_nothing(self) -> None:
        """Closing mid-handshake stops retransmission and sends nothing."""
        _, client = make_pair()
        client.start(0.0)
        self.assertEqual(client.close(), [])
        self.assertIs(client.state, DtlsState.CLOSED)
        self.assertIsNone(client.deadline())

    def test_fatal_alert_fails(self) -> None:
        """A fatal alert from the peer fails the transport with a reason."""
        server, _ = make_pair()
        server.start(0.0)
        alert = bytes.fromhex("15fefd0000000000000000000202" + "28")  # fatal handshake_failure
        self.assertEqual(server.receive(alert, 0.0).datagrams, [])
        self.assertIs(server.state, DtlsState.FAILED)
        self.assertTrue(server.failure_reason)
        self.assertIn("handshake failure", server.failure_reason)

    def test_bad_handshake_record_fails_with_reason(self) -> None:
        """A well-framed but nonsensical ClientHello fails the server, without raising."""
        server, _ = make_pair()
        server.start(0.0)
        body = bytes.fromhex("01000010" "0000" "000000" "000010") + b"\xff" * 16
        record = bytes.fromhex("16fefd" "0000" "000000000000") + len(body).to_bytes(2, "big") + body
        output = server.receive(record, 0.0)
        self.assertIs(server.state, DtlsState.FAILED)
        self.assertTrue(server.failure_reason)
        self.assertEqual(output.application_data, [])

    def test_misuse_raises_dtls_error(self) -> None:
        """Calling out of order, or configuring nonsense, raises DtlsError."""
        server, client = make_pair()
        with self.assertRaises(DtlsError):
            server.receive(b"\x16\xfe\xfd", 0.0)
        with self.assertRaises(DtlsError):
            client.send_application_data(b"early")
        client.start(0.0)
        with self.assertRaises(DtlsError):
            client.start(0.0)
        with self.assertRaises(DtlsError):
            DtlsTransport(SERVER_CERT, DtlsRole.SERVER, [])
        with self.assertRaises(DtlsError):
            DtlsTransport(SERVER_CERT, DtlsRole.SERVER, [("md5", "AA")])
        with self.assertRaises(DtlsError):
            DtlsTransport(SERVER_CERT, DtlsRole.SERVER, [("sha-256", "AA")], srtp_profiles=())


class HostileInputTests(SynchronousTestCase):
    """Random, framed and forged records never raise out of receive() and never break a connection."""

    @settings(max_examples=300, deadline=None)
    @given(
        factory=st.sampled_from([waiting_server, waiting_client, connected_server]),
        prefix=st.sampled_from([b"", b"\x16\xfe\xfd", b"\x17\xfe\xfd\x00\x01", b"\x15\xfe\xff", b"\x14"]),
        garbage=st.binary(max_size=300),
    )
    def test_garbage_never_raises(self, factory: Callable[[], DtlsTransport], prefix: bytes, garbage: bytes) -> None:
        """Random bytes (raw or behind a record-ish prefix) never raise out of receive()."""
        transport = factory()
        before = transport.state
        output = transport.receive(prefix + garbage, 0.5)
        self.assertIsInstance(output.datagrams, list)
        if transport.state is DtlsState.FAILED:
            self.assertTrue(transport.failure_reason)
            self.assertIsNone(transport.srtp_keys)
        else:
            self.assertIs(transport.state, before)
        transport.handle_timeout(10.0)

    @settings(max_examples=300, deadline=None)
    @given(
        factory=st.sampled_from([waiting_server, waiting_client, connected_server]),
        datagram=framed_records(),
    )
    def test_framed_garbage_never_raises(self, factory: Callable[[], DtlsTransport], datagram: bytes) -> None:
        """Well-framed records with random contents reach OpenSSL and never raise out."""
        transport = factory()
        transport.receive(datagram, 0.5)
        if transport.state is DtlsState.FAILED:
            self.assertTrue(transport.failure_reason)
            self.assertIsNone(transport.srtp_keys)
        transport.handle_timeout(10.0)
        transport.close()

    def test_unframed_garbage_is_discarded_silently(self) -> None:
        """RFC 6347 §4.1.2.7: bytes that do not frame as records leave a connection intact."""
        server, client = make_pair()
        connect(server, client)
        for junk in (b"", b"\x00" * 40, b"\x17\xfe\xfd" + b"\x00" * 8 + b"\xff\xff"):
            self.assertEqual(server.receive(junk, 1.0), server.receive(junk, 1.0))
        self.assertIs(server.state, DtlsState.CONNECTED)
        self.assertEqual(server.discarded, 6)
        self.assertEqual(pump(server, client, client, client.send_application_data(b"still"), 1.0), [b"still"])

    def test_forged_application_record_is_dropped(self) -> None:
        """A well-framed record that fails decryption is dropped; the association survives."""
        server, client = make_pair()
        connect(server, client)
        record = bytearray(client.send_application_data(b"genuine")[0])
        record[-1] ^= 1
        self.assertEqual(server.receive(bytes(record), 1.0).application_data, [])
        self.assertIs(server.state, DtlsState.CONNECTED)


class AiortcInteropTests(SynchronousTestCase):
    """Our DtlsTransport against aiortc's RTCDtlsTransport over an in-memory ICE stand-in."""

    def test_interop_with_aiortc_as_server(self) -> None:
        """Handshake, SRTP both ways, data and close, aiortc being the DTLS client."""
        self.interop_with_aiortc(DtlsRole.SERVER)

    def test_interop_with_aiortc_as_client(self) -> None:
        """Handshake, SRTP both ways, data and close, aiortc being the DTLS server."""
        self.interop_with_aiortc(DtlsRole.CLIENT)

    def interop_with_aiortc(self, our_role: DtlsRole) -> None:
        """Handshake, SRTP both ways, data and close against aiortc's RTCDtlsTransport in memory."""
        from aiortc.rtcdtlstransport import (
            RTCCertificate,
            RTCDtlsFingerprint,
            RTCDtlsParameters,
            RTCDtlsTransport,
        )

        their_cert = RTCCertificate.generateCertificate()
        their_fingerprints = [(f.algorithm, f.value) for f in their_cert.getFingerprints()]
        ours = DtlsTransport(SERVER_CERT, our_role, their_fingerprints)
        ours_received: list[bytes] = []
        theirs_received: list[bytes] = []

        async def run() -> None:
            loop = asyncio.get_running_loop()
            inbox: asyncio.Queue[bytes] = asyncio.Queue()

            class MemoryIce:
                """Stands in for aiortc's RTCIceTransport: ours is the other end."""

                role = "controlled" if our_role is DtlsRole.SERVER else "controlling"

                async def _send(self, data: bytes) -> None:
                    output = ours.receive(data, loop.time())
                    ours_received.extend(output.application_data)
                    for datagram in output.datagrams:
                        inbox.put_nowait(datagram)

                async def _recv(self) -> bytes:
                    return await inbox.get()

            class Receiver:
                """aiortc's data-channel hook."""

                async def _handle_data(self, data: bytes) -> None:
                    theirs_received.append(data)

            theirs = RTCDtlsTransport(MemoryIce(), [their_cert])  # type: ignore[arg-type]
            theirs._register_data_receiver(Receiver())
            for datagram in ours.start(loop.time()):
                inbox.put_nowait(datagram)
            parameters = RTCDtlsParameters(
                fingerprints=[RTCDtlsFingerprint("sha-256", SERVER_CERT.fingerprint)]
            )
            await asyncio.wait_for(theirs.start(parameters), 5)
            self.assertEqual(theirs.state, "connected")
            self.assertIs(ours.state, DtlsState.CONNECTED)
            self.assertEqual(ours.selected_profile, "SRTP_AEAD_AES_128_GCM")
            self.assertIsNotNone(ours.srtp_keys)
            session = SrtpSession(ours.srtp_keys)
            self.assertEqual(session.unprotect_rtp(theirs._tx_srtp.protect(RTP)), RTP)
            self.assertEqual(theirs._rx_srtp.unprotect(session.protect_rtp(RTP)), RTP)

            await theirs._send_data(b"to ours")
            self.assertEqual(ours_received, [b"to ours"])
            for datagram in ours.send_application_data(b"to theirs"):
                inbox.put_nowait(datagram)
            for datagram in ours.close():
                inbox.put_nowait(datagram)
            for _ in range(50):
                if theirs.state == "closed":
                    break
                await asyncio.sleep(0.001)
            self.assertEqual(theirs_received, [b"to theirs"])
            self.assertEqual(theirs.state, "closed")
            await theirs.stop()

        asyncio.run(run())
