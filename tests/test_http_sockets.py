# -*- test-case-name: tests.test_http_sockets -*-
"""Signaling on real loopback sockets: slow clients cut off at the deadline, a huge body refused unread, HTTPS.

The in-memory tests (tests/test_http_security.py) show the logic on a
Clock; these run a real ``twistd voiceedge`` and plain client sockets, so
the test process itself needs no reactor (and runs under trial and pytest
alike).
"""

from __future__ import annotations

import datetime
import http.client
import ipaddress
import re
import selectors
import socket
import ssl
import time
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.trial.unittest import SynchronousTestCase

from tests.support import free_tcp_port, free_udp_port, running_service, scrape_metrics, write_allinone_config

REPO = Path(__file__).resolve().parent.parent

# Slow clients: how many, how slowly they send, and for how long at most.
SLOW_CLIENTS = 50
DRIP_INTERVAL = 0.25
DRIP_FOR = 15.0
REQUEST_TIMEOUT = 1


def dribble(port: int, clients: int) -> list[dict[str, Any]]:
    """Open ``clients`` connections that send one byte of a POST every DRIP_INTERVAL.

    Each stops when the server hangs up, or after DRIP_FOR seconds (then the
    server never did). Returns, per client, how long it was held, how many
    bytes it sent and what it received.
    """
    request = (
        b"POST /v1/realtime/calls HTTP/1.1\r\nHost: x\r\nContent-Type: application/sdp\r\n"
        b"Content-Length: 100000\r\n\r\n" + b"v" * 100000
    )
    selector = selectors.DefaultSelector()
    states = []
    for _ in range(clients):
        conn = socket.create_connection(("127.0.0.1", port), timeout=5)
        conn.setblocking(False)
        state = {"conn": conn, "started": time.monotonic(), "sent": 0, "received": b"", "held": None}
        selector.register(conn, selectors.EVENT_READ, state)
        states.append(state)
    try:
        next_drip = time.monotonic()
        while any(s["held"] is None for s in states):
            now = time.monotonic()
            if now >= next_drip:
                for state in states:
                    if state["held"] is not None:
                        continue
                    if now - state["started"] > DRIP_FOR:
                        state["held"] = now - state["started"]  # never cut off: the test fails
                        continue
                    try:
                        state["conn"].send(request[state["sent"] : state["sent"] + 1])
                        state["sent"] += 1
                    except OSError:
                        pass  # the server closed; the read side reports it
                next_drip = now + DRIP_INTERVAL
            for key, _ in selector.select(timeout=max(0.0, next_drip - time.monotonic())):
                state = key.data
                try:
                    chunk = state["conn"].recv(65536)
                except OSError:
                    chunk = b""
                state["received"] += chunk
                if not chunk:
                    state["held"] = time.monotonic() - state["started"]
                    selector.unregister(state["conn"])
    finally:
        for state in states:
            state["conn"].close()
        selector.close()
    return [{k: v for k, v in s.items() if k != "conn"} for s in states]


def _self_signed(directory: Path) -> tuple[Path, Path]:
    """A P-256 key and a certificate for 127.0.0.1, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "voiceedge test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .sign(key, hashes.SHA256())
    )
    key_path, cert_path = directory / "key.pem", directory / "cert.pem"
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


class RealSocketTests(SynchronousTestCase):
    """A real ``twistd voiceedge`` on loopback TCP, driven by plain sockets."""

    def service(self, health: str | None = None, **signaling: object) -> Any:
        """The all-in-one with ``signaling`` keys: (its HTTP port, a context that runs it until healthy)."""
        directory = Path(self.mktemp()).resolve()
        directory.mkdir()
        http_port, media_port = free_tcp_port(), free_udp_port()
        settings: dict[str, object] = {
            "request_timeout": REQUEST_TIMEOUT,
            "max_connections_per_address": 0,
            **signaling,
        }
        settings.setdefault("listen", f"tcp:{http_port}:interface=127.0.0.1")
        ini = write_allinone_config(directory, http_port, media_port, signaling=settings)
        health = health or f"http://127.0.0.1:{http_port}/healthz"
        return http_port, running_service(["voiceedge", "--config", str(ini)], health, log_dir=directory)

    def test_slow_clients_are_cut_off_at_the_deadline(self) -> None:
        """Finding 5: clients sending a byte every 0.25 s are answered 408 and closed at the 1 s deadline, not held."""
        port, running = self.service()
        with running:
            outcomes = dribble(port, SLOW_CLIENTS)
            metrics = scrape_metrics(f"http://127.0.0.1:{port}")
        held = sorted(o["held"] for o in outcomes)
        for outcome in outcomes:
            self.assertTrue(outcome["received"].startswith(b"HTTP/1.1 408 "), outcome["received"][:40])
            # Cut off by the server while still sending, long before the client would stop.
            self.assertLess(outcome["held"], DRIP_FOR)
        refusals = metrics["voiceedge_signaling_refusals_total"]
        self.assertEqual(refusals["reason=request_timeout"], SLOW_CLIENTS)
        print(
            f"\n{SLOW_CLIENTS} slow clients (1 byte / {DRIP_INTERVAL} s), request_timeout {REQUEST_TIMEOUT} s:"
            f" held {held[0]:.2f}-{held[-1]:.2f} s (median {held[len(held) // 2]:.2f} s), all answered 408"
        )

    def test_a_huge_declared_body_is_refused_before_it_is_sent(self) -> None:
        """Finding 5: a 1 GB Content-Length gets 413 and a close while the client has sent only headers."""
        port, running = self.service()
        with running, socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            conn.sendall(
                b"POST /v1/realtime/calls HTTP/1.1\r\nHost: x\r\nContent-Type: application/sdp\r\n"
                b"Content-Length: 1000000000\r\n\r\n"
            )
            answer = b""
            while True:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                answer += chunk
        self.assertTrue(answer.startswith(b"HTTP/1.1 413 "), answer[:40])
        self.assertIn(b"Connection: close", answer)

    def test_https_through_the_example_ssl_endpoint(self) -> None:
        """The ssl: listen line of etc/voiceedge-internet.ini serves HTTPS, and Server names no version."""
        directory = Path(self.mktemp()).resolve()
        directory.mkdir()
        key_path, cert_path = _self_signed(directory)
        text = (REPO / "etc" / "voiceedge-internet.ini").read_text("utf-8")
        listen = re.search(r"^listen = (ssl:.*)$", text, re.M)
        assert listen is not None
        tls_port = free_tcp_port()
        description = (
            listen.group(1)
            .replace("ssl:443:", f"ssl:{tls_port}:")
            .replace("interface=0.0.0.0", "interface=127.0.0.1")
            .replace("/etc/voiceedge/tls/key.pem", str(key_path))
            .replace("/etc/voiceedge/tls/fullchain.pem", str(cert_path))
        )
        # Readiness is polled over plain HTTP: on metrics_listen, which also
        # shows /metrics moved off the public listener.
        metrics_port = free_tcp_port()
        context = ssl.create_default_context(cafile=str(cert_path))
        _, running = self.service(
            f"http://127.0.0.1:{metrics_port}/metrics",
            listen=description,
            metrics_listen=f"tcp:{metrics_port}:interface=127.0.0.1",
        )
        with running:
            conn = http.client.HTTPSConnection("127.0.0.1", tls_port, context=context, timeout=10)
            try:
                conn.request("GET", "/healthz")
                response = conn.getresponse()
                status, server_header, body = response.status, response.getheader("Server"), response.read()
                conn.request("GET", "/metrics")
                moved = conn.getresponse()
                moved.read()
            finally:
                conn.close()
        self.assertEqual((status, server_header, body), (200, "voiceedge", b"ok sessions=0\n"))
        self.assertEqual(moved.status, 404)

    def test_keys_client_secrets_and_owners_through_the_real_service(self) -> None:
        """Issue 9 end to end: keys from the INI's keys file, 401, an ek_ secret opening a call, 404 for another key."""
        import json
        import urllib.error
        import urllib.request

        from voiceedge.signaling import keys

        directory = Path(self.mktemp()).resolve()
        directory.mkdir()
        web, other = keys.new_api_key(), keys.new_api_key()
        keys_file = directory / "api-keys"
        keys_file.write_text(keys.hash_line("web", web) + "\n" + keys.hash_line("other", other) + "\n")
        port, running = self.service(api_keys_file=str(keys_file), demo_page=False)
        base = f"http://127.0.0.1:{port}"
        offer = (REPO / "tests" / "fixtures" / "sdp" / "chrome-offer.sdp").read_bytes()

        def ask(method: str, path: str, key: str | None = None, body: bytes | None = None, kind: str = "application/sdp") -> tuple[int, Any, bytes]:
            request = urllib.request.Request(base + path, data=body, method=method)
            if body is not None:
                request.add_header("Content-Type", kind)
            if key is not None:
                request.add_header("Authorization", f"Bearer {key}")
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    return response.status, response.headers, response.read()
            except urllib.error.HTTPError as e:
                return e.code, e.headers, e.read()

        with running:
            status, headers, _ = ask("POST", "/v1/realtime/calls", body=offer)
            self.assertEqual((status, headers["WWW-Authenticate"]), (401, 'Bearer realm="voiceedge"'))
            self.assertEqual(ask("GET", "/metrics")[0], 401)
            status, _, body = ask(
                "POST", "/v1/realtime/client_secrets", web, json.dumps({"session": {"instructions": "hi"}}).encode(), "application/json"
            )
            self.assertEqual(status, 200)
            secret = json.loads(body)["value"]
            status, headers, answer = ask("POST", "/v1/realtime/calls", secret, offer)
            self.assertEqual(status, 201, answer)
            location = headers["Location"]
            self.assertEqual(ask("GET", location, other)[0], 404)
            self.assertEqual(ask("DELETE", location, other)[0], 404)
            self.assertEqual(ask("GET", location, secret)[0], 200)
            self.assertEqual(ask("POST", "/v1/realtime/calls", secret, offer)[0], 401)
            self.assertEqual(ask("DELETE", location, secret)[0], 204)
            status, _, text = ask("GET", "/metrics", other)
            self.assertEqual(status, 200)
            self.assertIn(b"voiceedge_client_secrets_spent_total 1.0", text)
