# -*- test-case-name: tests.test_http_security -*-
"""Signaling open to the internet (issue 9): who may call, who may hang up, limits per caller, CORS, headers.

Each test runs the real site on raw HTTP bytes over an in-memory transport
and a Clock. The tests named after a finding fail on the code before it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from zope.interface.verify import verifyObject

from tests.http_support import OFFER, Connection, FakeHost, LaterLedger, LaterSecrets, Response, request_bytes
from voiceedge import config as c
from voiceedge.signaling import keys
from voiceedge.signaling.auth import ClientSecrets, Credentials, IClientSecretStore
from voiceedge.signaling.cors import CorsPolicy, parse_origin
from voiceedge.signaling.interfaces import SessionRefused
from voiceedge.signaling.ownership import ISessionLedger, SessionLedger
from voiceedge.signaling.resource import build_site
from voiceedge.signaling.settings import SignalingSettings, listens_on_loopback
from voiceedge.signaling.site import SignalingSite, redact_uri

KEY = "sk_" + "w" * 43
OTHER = "sk_" + "o" * 43
NO_LIMITS = {"calls_per_minute_per_address": 0, "calls_per_minute_per_key": 0, "max_calls_per_key": 0}


class _Text(Resource):
    isLeaf = True

    def render_GET(self, request: Any) -> bytes:
        return b"metrics here\n"


def make_site(
    host: FakeHost, clock: Clock, *, open_service: bool = False, secrets: Any = None, ledger: Any = None,
    **settings: Any,
) -> SignalingSite:
    """The signaling site with keys ``web`` and ``other`` (or none), on ``clock``; no limits unless given.

    ``secrets`` and ``ledger`` replace the in-memory stores (with ones that answer later).
    """
    api_keys = None if open_service else keys.parse_keys(
        keys.hash_line("web", KEY) + "\n" + keys.hash_line("other", OTHER)
    )
    checker = Credentials(api_keys, secrets or ClientSecrets(clock, default_ttl=60, max_ttl=600))
    return build_site(
        host,
        SignalingSettings(**{**NO_LIMITS, **settings}),
        checker=checker,
        ledger=ledger,
        reactor=clock,
        admin={b"metrics": _Text()},
    )


def call(site: SignalingSite, method: str, path: str, body: bytes = b"", *, peer: str = "127.0.0.1", **headers: str) -> Response:
    """One request on a fresh connection; header names use ``_`` for ``-``."""
    conn = Connection(site, peer)
    conn.send(request_bytes(method, path, body, {k.replace("_", "-"): v for k, v in headers.items()}))
    return conn.response()


def auth(key: str) -> dict[str, str]:
    """The Authorization header for ``key``."""
    return {"Authorization": f"Bearer {key}"}


def post_offer(site: SignalingSite, key: str | None, path: str = "/v1/realtime/calls", **headers: str) -> Response:
    """POST the test offer, with ``key`` as Bearer when given."""
    if key is not None:
        headers.update(auth(key))
    return call(site, "POST", path, OFFER.encode(), Content_Type="application/sdp", **headers)


def mint(site: SignalingSite, key: str | None, body: dict[str, Any] | None = None) -> Response:
    """POST /v1/realtime/client_secrets."""
    headers = auth(key) if key is not None else {}
    data = json.dumps(body).encode() if body is not None else b""
    return call(site, "POST", "/v1/realtime/client_secrets", data, Content_Type="application/json", **headers)


def mint_from(site: SignalingSite, key: str, client: str, proxy: str) -> Response:
    """POST /v1/realtime/client_secrets for ``client`` through the proxy at ``proxy``."""
    return call(site, "POST", "/v1/realtime/client_secrets", b"", peer=proxy, X_Forwarded_For=client, **auth(key))


class WhoMayCallTests(SynchronousTestCase):
    """Finding 1: calls need an API key or a client secret; without one, 401 and nothing allocated."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.host = FakeHost()
        self.site = make_site(self.host, self.clock)

    def test_no_credential_401_nothing_allocated(self) -> None:
        """Both spellings refuse an offer without Authorization, with a Bearer challenge."""
        for path in ("/v1/realtime/calls", "/v1/whip"):
            resp = post_offer(self.site, None, path)
            self.assertEqual(resp.status, 401)
            self.assertEqual(resp.header("www-authenticate"), 'Bearer realm="voiceedge"')
        self.assertEqual(self.host.offers, [])

    def test_bad_key_401_nothing_allocated(self) -> None:
        """A wrong key gets 401 with error="invalid_token"."""
        resp = post_offer(self.site, "sk_wrong")
        self.assertEqual(resp.status, 401)
        self.assertIn('error="invalid_token"', resp.header("www-authenticate") or "")
        self.assertEqual(self.host.offers, [])

    def test_api_key_opens_a_call(self) -> None:
        """With a key the offer is answered 201 with a Location."""
        resp = post_offer(self.site, KEY)
        self.assertEqual(resp.status, 201)
        self.assertEqual(resp.header("location"), "/v1/realtime/calls/s1")

    def test_whip_takes_the_same_keys(self) -> None:
        """WHIP is the same endpoint under another name."""
        self.assertEqual(post_offer(self.site, KEY, "/v1/whip").status, 201)

    def test_client_secret_shape_and_use(self) -> None:
        """An API key mints ``{"value": "ek_...", "expires_at": ...}``; the secret opens one call with its settings."""
        settings = {"type": "realtime", "instructions": "Be brief.", "voiceedge": {"agent": "parrot"}}
        resp = mint(self.site, KEY, {"expires_after": {"anchor": "created_at", "seconds": 120}, "session": settings})
        self.assertEqual(resp.status, 200)
        self.assertEqual(resp.header("cache-control"), "no-store")
        document = json.loads(resp.body)
        self.assertTrue(document["value"].startswith("ek_"))
        self.assertEqual(document["expires_at"], 1_700_000_000 + 120)
        self.assertEqual(document["session"], settings)
        self.assertEqual(post_offer(self.site, document["value"]).status, 201)
        self.assertEqual(self.host.settings, [settings])
        again = post_offer(self.site, document["value"])
        self.assertEqual(again.status, 401)
        self.assertEqual(len(self.host.offers), 1)

    def test_client_secret_expires(self) -> None:
        """Past expires_at the secret is refused."""
        value = json.loads(mint(self.site, KEY).body)["value"]
        self.clock.advance(61)
        self.assertEqual(post_offer(self.site, value).status, 401)

    def test_a_refused_offer_does_not_spend_the_secret(self) -> None:
        """A 503 from the host gives the secret back for the next try."""
        from voiceedge.signaling.interfaces import SessionRefused

        value = json.loads(mint(self.site, KEY).body)["value"]
        self.host.refusal = SessionRefused(503, "full")
        self.assertEqual(post_offer(self.site, value).status, 503)
        self.host.refusal = None
        self.assertEqual(post_offer(self.site, value).status, 201)

    def test_minting_needs_an_api_key(self) -> None:
        """No key: 401 in OpenAI's JSON error shape; a client secret cannot mint another."""
        resp = mint(self.site, None)
        self.assertEqual(resp.status, 401)
        self.assertEqual(json.loads(resp.body)["error"]["type"], "invalid_request_error")
        value = json.loads(mint(self.site, KEY).body)["value"]
        resp = mint(self.site, value)
        self.assertEqual(resp.status, 401)
        self.assertIn("insufficient_scope", resp.header("www-authenticate") or "")

    def test_mint_body_is_checked(self) -> None:
        """Bad TTLs, a non-object session and over-large settings are 4xx."""
        for body, status in [
            ({"expires_after": {"seconds": 5}}, 400),
            ({"expires_after": {"seconds": 10_000}}, 400),
            ({"expires_after": {"anchor": "now", "seconds": 60}}, 400),
            ({"session": "realtime"}, 400),
            ({"session": {"type": "transcription"}}, 400),
            ({"session": {"instructions": "x" * 10_000}}, 413),
            ([1, 2], 400),
        ]:
            resp = mint(self.site, KEY, body)  # type: ignore[arg-type]
            self.assertEqual(resp.status, status, body)
        resp = call(self.site, "POST", "/v1/realtime/client_secrets", b"{" * 5000, Content_Type="application/json", **auth(KEY))
        self.assertEqual(resp.status, 400)

    def test_metrics_need_an_api_key(self) -> None:
        """Finding 7: /metrics is not open to anyone; a client secret will not do either."""
        self.assertEqual(call(self.site, "GET", "/metrics").status, 401)
        value = json.loads(mint(self.site, KEY).body)["value"]
        self.assertEqual(call(self.site, "GET", "/metrics", **auth(value)).status, 401)
        resp = call(self.site, "GET", "/metrics", **auth(OTHER))
        self.assertEqual((resp.status, resp.body), (200, b"metrics here\n"))

    def test_refusals_and_secrets_are_counted(self) -> None:
        """Operators see 401s and client secrets on /metrics."""
        post_offer(self.site, None)
        value = json.loads(mint(self.site, KEY).body)["value"]
        mint(self.site, KEY)
        post_offer(self.site, value)
        samples = {(name, tuple(sorted(labels.items()))): v for _, name, _, labels, v in self.site.metrics()}
        self.assertEqual(samples[("voiceedge_signaling_refusals", (("reason", "unauthorized"),))], 1)
        self.assertEqual(samples[("voiceedge_client_secrets_issued", ())], 2)
        self.assertEqual(samples[("voiceedge_client_secrets_spent", ())], 1)
        self.assertEqual(samples[("voiceedge_client_secrets_unspent", ())], 1)

    def test_open_service_needs_nothing(self) -> None:
        """Without keys (loopback default) calls, secrets and metrics are open."""
        site = make_site(self.host, self.clock, open_service=True)
        self.assertEqual(post_offer(site, None).status, 201)
        value = json.loads(mint(site, None, {"session": {"instructions": "x"}}).body)["value"]
        self.assertEqual(post_offer(site, value).status, 201)
        self.assertEqual(self.host.settings[-1], {"instructions": "x"})
        self.assertEqual(call(site, "GET", "/metrics").status, 200)


class WhoMayHangUpTests(SynchronousTestCase):
    """Finding 2: a session is read or ended only with the credential that opened it; 404 for anyone else."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.host = FakeHost()
        self.site = make_site(self.host, self.clock)

    def test_another_callers_session_is_404(self) -> None:
        """Another key gets 404 for GET and DELETE, and the session lives on."""
        location = post_offer(self.site, KEY).header("location")
        assert location is not None
        self.assertEqual(call(self.site, "GET", location, **auth(OTHER)).status, 404)
        self.assertEqual(call(self.site, "DELETE", location, **auth(OTHER)).status, 404)
        self.assertEqual(self.host.closed, [])
        self.assertEqual(call(self.site, "GET", location, **auth(KEY)).status, 200)
        self.assertEqual(call(self.site, "DELETE", location, **auth(KEY)).status, 204)

    def test_every_session_method_needs_the_owner(self) -> None:
        """Whatever methods a session answers (PATCH for ICE restart too), another key gets 404 and none 401."""
        from voiceedge.signaling.resource import SessionResource

        location = post_offer(self.site, KEY).header("location")
        assert location is not None
        for method in SessionResource.methods:
            name = method.decode("ascii")
            body = OFFER.encode() if name == "PATCH" else b""
            headers = {"Content_Type": "application/trickle-ice-sdpfrag"} if name == "PATCH" else {}
            self.assertEqual(call(self.site, name, location, body, **headers).status, 401, name)
            self.assertEqual(call(self.site, name, location, body, **headers, **auth(OTHER)).status, 404, name)
        self.assertEqual(self.host.closed, [])

    def test_no_credential_is_401(self) -> None:
        """Without a credential the answer is 401, whether the session exists or not."""
        location = post_offer(self.site, KEY).header("location")
        assert location is not None
        for path in (location, "/v1/realtime/calls/nothing"):
            for method in ("GET", "DELETE"):
                self.assertEqual(call(self.site, method, path).status, 401)
        self.assertEqual(self.host.closed, [])

    def test_unknown_and_foreign_look_the_same(self) -> None:
        """A caller cannot tell another's session from none at all."""
        location = post_offer(self.site, KEY).header("location")
        assert location is not None
        foreign = call(self.site, "DELETE", location, **auth(OTHER))
        unknown = call(self.site, "DELETE", "/v1/realtime/calls/zzzzzzzzzzzzzzzzzzzzzz", **auth(OTHER))
        self.assertEqual((foreign.status, foreign.body), (unknown.status, unknown.body))

    def test_client_secret_holder_and_its_issuer_may_manage(self) -> None:
        """The browser's secret (spent or not) and the key that issued it manage the call; another key does not."""
        value = json.loads(mint(self.site, KEY).body)["value"]
        location = post_offer(self.site, value).header("location")
        assert location is not None
        self.assertEqual(call(self.site, "GET", location, **auth(value)).status, 200)
        self.assertEqual(call(self.site, "GET", location, **auth(OTHER)).status, 404)
        self.assertEqual(call(self.site, "GET", location, **auth(KEY)).status, 200)
        other_value = json.loads(mint(self.site, KEY).body)["value"]
        self.assertEqual(call(self.site, "GET", location, **auth(other_value)).status, 404)
        self.assertEqual(call(self.site, "DELETE", location, **auth(value)).status, 204)

    def test_a_session_that_ended_on_its_own_is_forgotten(self) -> None:
        """The ledger hears every end, not only DELETEs."""
        location = post_offer(self.site, KEY).header("location")
        assert location is not None
        self.host.end("s1")
        self.assertEqual(call(self.site, "GET", location, **auth(KEY)).status, 404)
        self.assertEqual(len(self.site.gate.ledger), 0)


class LimitsPerCallerTests(SynchronousTestCase):
    """Finding 1: rates per address and per key, and concurrent calls per key, answered 429 with Retry-After."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.host = FakeHost()

    def test_rate_per_address(self) -> None:
        """Past the burst one address gets 429 and Retry-After; another address does not; time refills."""
        site = make_site(self.host, self.clock, calls_per_minute_per_address=6, call_burst_per_address=2)
        self.assertEqual([post_offer(site, KEY).status for _ in range(2)], [201, 201])
        refused = post_offer(site, KEY)
        self.assertEqual(refused.status, 429)
        self.assertEqual(refused.header("retry-after"), "10")
        self.assertEqual(post_offer(site, KEY, peer="192.0.2.1").status, 201)
        self.clock.advance(10)
        self.assertEqual(post_offer(site, KEY).status, 201)
        self.assertEqual(len(self.host.offers), 4)

    def test_rate_per_address_counts_unauthenticated_attempts(self) -> None:
        """Guessing keys from one address is slowed down like calling."""
        site = make_site(self.host, self.clock, calls_per_minute_per_address=60, call_burst_per_address=3)
        self.assertEqual([post_offer(site, "sk_guess").status for _ in range(4)], [401, 401, 401, 429])

    def test_ipv6_addresses_of_one_64_share_a_bucket(self) -> None:
        """A /64 is one subscriber."""
        site = make_site(self.host, self.clock, calls_per_minute_per_address=60, call_burst_per_address=1)
        self.assertEqual(post_offer(site, KEY, peer="2001:db8::1").status, 201)
        self.assertEqual(post_offer(site, KEY, peer="2001:db8::2").status, 429)

    def test_rate_per_address_behind_a_trusted_proxy(self) -> None:
        """Behind a load balancer each client has its own bucket (X-Forwarded-For); the balancer has none of its own."""
        site = make_site(
            self.host, self.clock, calls_per_minute_per_address=6, call_burst_per_address=1,
            trusted_proxies=c.networks("10.0.0.0/8"),
        )
        via_lb = {"peer": "10.1.2.3"}
        self.assertEqual(post_offer(site, KEY, X_Forwarded_For="198.51.100.1", **via_lb).status, 201)
        self.assertEqual(post_offer(site, KEY, X_Forwarded_For="198.51.100.2", **via_lb).status, 201)
        self.assertEqual(post_offer(site, KEY, X_Forwarded_For="198.51.100.1", **via_lb).status, 429)
        # The same caller straight to the front door shares its bucket.
        self.assertEqual(post_offer(site, KEY, peer="198.51.100.1").status, 429)
        # Minting a client secret counts against the caller, not the balancer.
        self.assertEqual(mint_from(site, KEY, "198.51.100.2", "10.1.2.3").status, 429)
        self.assertEqual(mint_from(site, KEY, "198.51.100.3", "10.1.2.3").status, 200)

    def test_forwarded_for_from_an_untrusted_peer_is_ignored(self) -> None:
        """A client that writes X-Forwarded-For itself is still limited by its own address."""
        site = make_site(
            self.host, self.clock, calls_per_minute_per_address=6, call_burst_per_address=1,
            trusted_proxies=c.networks("10.0.0.0/8"),
        )
        self.assertEqual(post_offer(site, KEY, peer="192.0.2.7", X_Forwarded_For="198.51.100.1").status, 201)
        self.assertEqual(post_offer(site, KEY, peer="192.0.2.7", X_Forwarded_For="198.51.100.2").status, 429)

    def test_rate_per_key(self) -> None:
        """One key's burst is shared by all addresses; client secrets count against their issuer."""
        site = make_site(self.host, self.clock, calls_per_minute_per_key=60, call_burst_per_key=2)
        value = json.loads(mint(site, KEY).body)["value"]
        self.assertEqual(post_offer(site, KEY, peer="192.0.2.1").status, 201)
        self.assertEqual(post_offer(site, value, peer="192.0.2.2").status, 201)
        refused = post_offer(site, KEY, peer="192.0.2.3")
        self.assertEqual((refused.status, refused.header("retry-after")), (429, "1"))
        self.assertEqual(post_offer(site, OTHER, peer="192.0.2.3").status, 201)

    def test_concurrent_calls_per_key(self) -> None:
        """At the cap a key gets 429 until one of its calls ends; secrets it issued count too and are not spent."""
        site = make_site(self.host, self.clock, max_calls_per_key=2)
        first = post_offer(site, KEY).header("location")
        value = json.loads(mint(site, KEY).body)["value"]
        self.assertEqual(post_offer(site, value).status, 201)
        spare = json.loads(mint(site, KEY).body)["value"]
        refused = post_offer(site, spare)
        self.assertEqual(refused.status, 429)
        self.assertEqual(refused.header("retry-after"), "5")
        self.assertEqual(post_offer(site, OTHER).status, 201)
        assert first is not None
        self.assertEqual(call(site, "DELETE", first, **auth(KEY)).status, 204)
        self.assertEqual(post_offer(site, spare).status, 201)
        self.host.end("s2")
        self.assertEqual(post_offer(site, KEY).status, 201)

    def test_failed_calls_free_their_place(self) -> None:
        """Refused, crashed, malformed and abandoned calls do not hold a place under the cap."""
        from voiceedge.signaling.interfaces import SessionRefused

        site = make_site(self.host, self.clock, max_calls_per_key=1)
        self.host.refusal = SessionRefused(400, "bad")
        self.assertEqual(post_offer(site, KEY).status, 400)
        self.host.refusal = None
        self.host.crash = RuntimeError("boom")
        self.assertEqual(post_offer(site, KEY).status, 500)
        self.flushLoggedErrors(RuntimeError)
        self.host.crash = None
        resp = call(site, "POST", "/v1/realtime/calls", OFFER.encode(), Content_Type="text/plain", **auth(KEY))
        self.assertEqual(resp.status, 415)
        self.host.asynchronous = True
        conn = Connection(site)
        conn.send(request_bytes("POST", "/v1/realtime/calls", OFFER.encode(), {"Content-Type": "application/sdp", **auth(KEY)}))
        conn.drop()
        self.host.waiting[0].callback(None)
        self.host.asynchronous = False
        self.assertEqual(post_offer(site, KEY).status, 201)


class SharedStoresTests(SynchronousTestCase):
    """The same rules when the ledger and the client secrets answer later (a store front doors share)."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.host = FakeHost()
        self.ledger = LaterLedger(self.clock, max_calls_per_key=1)
        self.secrets = LaterSecrets(self.clock)
        self.site = make_site(self.host, self.clock, secrets=self.secrets, ledger=self.ledger)

    def send(self, method: str, path: str, body: bytes = b"", **headers: str) -> Connection:
        """Send one request on a fresh connection; the answer comes once the clock moves."""
        conn = Connection(self.site)
        conn.send(request_bytes(method, path, body, {k.replace("_", "-"): v for k, v in headers.items()}))
        return conn

    def answer(self, conn: Connection) -> Response:
        """Nothing is answered before the stores are; then the response."""
        self.assertEqual(conn.transport.value(), b"")
        self.settle()
        return conn.response()

    def settle(self) -> None:
        """Let every store answer (each waits its delay after the one before)."""
        self.clock.pump([0.01] * 100)

    def offer(self, key: str) -> Connection:
        return self.send("POST", "/v1/realtime/calls", OFFER.encode(), Content_Type="application/sdp", **auth(key))

    def test_stores_provide_the_interfaces(self) -> None:
        """The in-memory stores and these fakes are the same interfaces."""
        verifyObject(ISessionLedger, SessionLedger(1))
        verifyObject(ISessionLedger, self.ledger)
        verifyObject(IClientSecretStore, ClientSecrets(self.clock))
        verifyObject(IClientSecretStore, self.secrets)

    def test_the_owner_manages_and_the_cap_holds_until_the_end(self) -> None:
        """201 once the owner is recorded; others get 404; the key's second call 429 until its first ends."""
        opened = self.answer(self.offer(KEY))
        self.assertEqual(opened.status, 201)
        location = opened.header("location")
        assert location is not None
        self.assertEqual(self.answer(self.send("GET", location, **auth(KEY))).status, 200)
        self.assertEqual(self.answer(self.send("GET", location, **auth(OTHER))).status, 404)
        refused = self.answer(self.offer(KEY))
        self.assertEqual((refused.status, refused.header("retry-after")), (429, "5"))
        self.assertEqual(self.answer(self.offer(OTHER)).status, 201)
        self.host.end("s1")  # the call ends on its own: the ledger hears it, later
        self.settle()
        self.assertEqual(self.answer(self.offer(KEY)).status, 201)
        self.assertEqual(self.answer(self.send("DELETE", location, **auth(KEY))).status, 404)

    def test_client_secret_spent_once_and_given_back_when_refused(self) -> None:
        """A secret minted through the store opens one call; a refused offer does not use it up."""
        minted = self.answer(self.send("POST", "/v1/realtime/client_secrets", b"", **auth(KEY)))
        self.assertEqual(minted.status, 200)
        value = json.loads(minted.body)["value"]
        self.host.refusal = SessionRefused(406, "no Opus")
        self.assertEqual(self.answer(self.offer(value)).status, 406)
        self.host.refusal = None
        self.settle()  # the refund lands
        opened = self.answer(self.offer(value))
        self.assertEqual(opened.status, 201)
        self.assertEqual(self.answer(self.offer(value)).status, 401)
        location = opened.header("location")
        assert location is not None
        self.assertEqual(self.answer(self.send("DELETE", location, **auth(value))).status, 204)

    def test_a_store_that_fails_is_503_and_nothing_is_allocated(self) -> None:
        """Neither a call nor a secret nor a session's owner can be checked: 503 with Retry-After."""
        self.ledger.down = True
        refused = self.answer(self.offer(KEY))
        self.assertEqual((refused.status, refused.header("retry-after")), (503, "2"))
        self.assertEqual(self.host.offers, [])
        self.assertEqual(self.answer(self.send("GET", "/v1/realtime/calls/s1", **auth(KEY))).status, 503)
        self.secrets.down = True
        self.assertEqual(self.answer(self.send("POST", "/v1/realtime/client_secrets", b"", **auth(KEY))).status, 503)
        self.assertEqual(self.site.refusals["store_unavailable"], 3)
        self.flushLoggedErrors(ConnectionError)

    def test_an_owner_that_cannot_be_recorded_ends_the_call(self) -> None:
        """The host opened it, the ledger could not record it: the call is closed, its place freed, 503."""
        self.ledger.failing.add("opened")
        refused = self.answer(self.offer(KEY))
        self.assertEqual(refused.status, 503)
        self.assertEqual(self.host.closed, [("s1", "its owner could not be recorded")])
        self.ledger.failing.clear()
        self.settle()
        self.assertEqual(self.answer(self.offer(KEY)).status, 201)

    def test_a_full_secret_store_is_429_not_503(self) -> None:
        """A store with no room says so (429), as the one in memory does; it is no failure."""
        self.secrets.inner.max_secrets = 1
        self.assertEqual(self.answer(self.send("POST", "/v1/realtime/client_secrets", b"", **auth(KEY))).status, 200)
        full = self.answer(self.send("POST", "/v1/realtime/client_secrets", b"", **auth(KEY)))
        self.assertEqual((full.status, full.header("retry-after")), (429, "10"))
        self.assertEqual(self.site.refusals["client_secrets_full"], 1)

    def test_a_client_that_leaves_while_checked_allocates_nothing(self) -> None:
        """The credential was being checked when the client went: no offer reaches the host, no place is held."""
        conn = self.offer(KEY)
        conn.drop()
        self.settle()
        self.assertEqual(self.host.offers, [])
        self.assertEqual(self.answer(self.offer(KEY)).status, 201)
        for method in ("GET", "PATCH", "DELETE"):  # nor one that leaves while its session's owner is checked
            self.send(method, "/v1/realtime/calls/s1", b"x", Content_Type="application/sdp", **auth(KEY)).drop()
        self.settle()
        self.assertEqual((self.host.closed, self.host.patches), ([], []))
        self.assertEqual(self.flushLoggedErrors(), [])


class RequestDeadlineTests(SynchronousTestCase):
    """Finding 5: a whole request must arrive within request_timeout; bytes do not restart the clock."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.host = FakeHost()
        self.site = make_site(self.host, self.clock, request_timeout=10.0)

    def test_a_dribbling_client_is_cut_off_at_the_deadline(self) -> None:
        """One byte every 5 s does not keep the connection: 408 and close at 10 s."""
        conn = Connection(self.site)
        request = request_bytes("POST", "/v1/realtime/calls", OFFER.encode(), {"Content-Type": "application/sdp", **auth(KEY)})
        for byte in request[:2]:
            conn.send(bytes([byte]))
            self.clock.advance(5)
        self.assertEqual(conn.response().status, 408)
        self.assertTrue(conn.transport.disconnecting)
        self.assertEqual(self.host.offers, [])
        self.assertEqual(self.site.refusals["request_timeout"], 1)

    def test_a_slow_body_counts_too(self) -> None:
        """Headers in time, body dribbled: still 408 at the deadline."""
        conn = Connection(self.site)
        request = request_bytes("POST", "/v1/realtime/calls", OFFER.encode(), {"Content-Type": "application/sdp", **auth(KEY)})
        head, _, body = request.partition(b"\r\n\r\n")
        conn.send(head + b"\r\n\r\n")
        for n in range(9):
            conn.send(body[n : n + 1])
            self.clock.advance(1.2)
        self.assertEqual(conn.response().status, 408)

    def test_an_idle_connection_is_closed_without_a_response(self) -> None:
        """A connection that sends nothing is closed quietly at the deadline."""
        conn = Connection(self.site)
        self.clock.advance(9.9)
        self.assertFalse(conn.transport.disconnecting)
        self.clock.advance(0.1)
        self.assertTrue(conn.transport.disconnecting)
        self.assertEqual(conn.transport.value(), b"")

    def test_keep_alive_restarts_the_clock_after_each_response(self) -> None:
        """Each request on a persistent connection gets the whole deadline, from the previous answer."""
        conn = Connection(self.site)
        for _ in range(3):
            self.clock.advance(8)
            conn.send(request_bytes("GET", "/healthz"))
        self.assertFalse(conn.transport.disconnecting)
        self.assertEqual(conn.transport.value().count(b"HTTP/1.1 200 "), 3)
        self.clock.advance(10)
        self.assertTrue(conn.transport.disconnecting)

    def test_no_deadline_while_the_host_answers(self) -> None:
        """A slow host is not the client's fault: the request's clock stops once it is in."""
        self.host.asynchronous = True
        conn = Connection(self.site)
        conn.send(request_bytes("POST", "/v1/realtime/calls", OFFER.encode(), {"Content-Type": "application/sdp", **auth(KEY)}))
        self.clock.advance(30)
        self.host.waiting[0].callback(None)
        self.assertEqual(conn.response().status, 201)

    def test_a_huge_declared_length_is_refused_unread(self) -> None:
        """A 1 GB Content-Length gets 413 and a close right after the headers."""
        conn = Connection(self.site)
        conn.send(
            b"POST /v1/realtime/calls HTTP/1.1\r\nHost: x\r\nContent-Type: application/sdp\r\n"
            b"Authorization: Bearer " + KEY.encode() + b"\r\nContent-Length: 1000000000\r\n\r\n"
        )
        resp = conn.response()
        self.assertEqual(resp.status, 413)
        self.assertEqual(resp.header("connection"), "close")
        self.assertTrue(conn.transport.disconnecting)
        conn.send(b"x" * 65536)
        self.assertEqual(conn.transport.value(), resp.raw)
        self.assertEqual(self.host.offers, [])


    def test_no_100_continue_for_a_body_that_will_be_refused(self) -> None:
        """A client that asks first (Expect: 100-continue) is told 413, never invited to send."""
        conn = Connection(self.site)
        conn.send(
            b"POST /v1/realtime/calls HTTP/1.1\r\nHost: x\r\nContent-Type: application/sdp\r\n"
            b"Expect: 100-continue\r\nContent-Length: 1000000000\r\n\r\n"
        )
        self.assertTrue(conn.transport.value().startswith(b"HTTP/1.1 413 "))
        self.assertNotIn(b"100 Continue", conn.transport.value())


class ConnectionsPerAddressTests(SynchronousTestCase):
    """Finding 5: a cap on open connections per address (IPv6: per /64)."""

    def test_cap_and_release(self) -> None:
        """The third connection from one address is refused; a closed one frees its place."""
        site = make_site(FakeHost(), Clock(), max_connections_per_address=2)
        first, _second = Connection(site), Connection(site)
        self.assertIsNone(site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40001)))
        Connection(site, "192.0.2.9")
        first.drop()
        Connection(site)
        self.assertEqual(site.refusals["connections_per_address"], 1)
        self.assertEqual(site.connections.total(), 3)

    def test_trusted_proxies_are_not_capped(self) -> None:
        """A load balancer carries many clients: its connections are counted but not capped; others still are."""
        site = make_site(FakeHost(), Clock(), max_connections_per_address=1, trusted_proxies=c.networks("10.0.0.0/8"))
        balancer = [Connection(site, "10.1.2.3") for _ in range(5)]
        Connection(site, "192.0.2.9")
        self.assertIsNone(site.buildProtocol(IPv4Address("TCP", "192.0.2.9", 40001)))
        self.assertEqual(site.refusals["connections_per_address"], 1)
        open_now = [value for _, name, _, _, value in site.metrics() if name == "voiceedge_signaling_connections"]
        self.assertEqual(open_now, [6])
        for conn in balancer:
            conn.drop()
        self.assertEqual(site.proxy_connections, 0)

    def test_ipv6_counts_per_64(self) -> None:
        """Two addresses of one /64 share the cap."""
        site = make_site(FakeHost(), Clock(), max_connections_per_address=1)
        Connection(site, "2001:db8::1")
        self.assertIsNone(site.buildProtocol(IPv6Address("TCP", "2001:db8::2", 40001)))
        Connection(site, "2001:db8:0:1::1")


class HeadersTests(SynchronousTestCase):
    """Finding 7: no version in Server; no full session id in the access log."""

    def test_server_header_names_no_version(self) -> None:
        """Every answer, error or not, says only ``voiceedge``."""
        site = make_site(FakeHost(), Clock())
        for resp in (call(site, "GET", "/healthz"), call(site, "GET", "/nothing"), post_offer(site, None)):
            self.assertEqual(resp.headers["server"], ["voiceedge"])

    def test_access_log_shortens_session_ids(self) -> None:
        """The path of a session is logged with a prefix of its id only."""
        session_id = "AbCdEfGhIjKlMnOpQrStUv"
        self.assertEqual(redact_uri(b"/v1/realtime/calls/" + session_id.encode()), b"/v1/realtime/calls/AbCdEf...")
        self.assertEqual(redact_uri(b"/v1/whip/" + session_id.encode() + b"?x=1"), b"/v1/whip/AbCdEf...?x=1")
        self.assertEqual(redact_uri(b"/healthz"), b"/healthz")


class CorsTests(SynchronousTestCase):
    """Issue 11 and finding 7: configured origins only, never ``null``, the headers the SDK sends."""

    def setUp(self) -> None:
        self.host = FakeHost()

    def preflight(self, site: SignalingSite, origin: str, headers: str = "authorization,content-type,x-openai-agents-sdk") -> Response:
        """The preflight Chromium sends before the SDK's POST."""
        return call(
            site,
            "OPTIONS",
            "/v1/realtime/calls",
            Origin=origin,
            Access_Control_Request_Method="POST",
            Access_Control_Request_Headers=headers,
        )

    def test_sdk_preflight_for_a_listed_origin(self) -> None:
        """The SDK's headers are allowed, and whatever else the preflight asks for."""
        site = make_site(self.host, Clock(), cors_origins=["https://app.example"])
        resp = self.preflight(site, "https://app.example", "authorization,content-type,x-openai-agents-sdk,x-extra")
        self.assertEqual(resp.status, 204)
        self.assertEqual(resp.header("access-control-allow-origin"), "https://app.example")
        allowed = {h.strip() for h in (resp.header("access-control-allow-headers") or "").split(",")}
        self.assertLessEqual({"authorization", "content-type", "x-openai-agents-sdk", "x-extra"}, allowed)
        self.assertIsNone(resp.header("access-control-allow-credentials"))
        self.assertEqual(self.host.offers, [])

    def test_preflight_needs_no_credential(self) -> None:
        """Browsers send no Authorization in a preflight; it must still pass."""
        site = make_site(self.host, Clock(), cors_origins=["https://app.example"])
        self.assertEqual(self.preflight(site, "https://app.example").status, 204)

    def test_post_exposes_location(self) -> None:
        """The SDK reads the call id from Location."""
        site = make_site(self.host, Clock(), cors_origins=["https://app.example"])
        resp = post_offer(site, KEY, Origin="https://app.example")
        self.assertEqual(resp.header("access-control-allow-origin"), "https://app.example")
        self.assertIn("Location", resp.header("access-control-expose-headers") or "")

    def test_null_and_unlisted_origins_get_nothing(self) -> None:
        """Finding 7: ``null`` is never reflected, even under ``*``; an unlisted origin gets no CORS header."""
        listed = make_site(self.host, Clock(), cors_origins=["https://app.example"])
        star = make_site(self.host, Clock(), cors_origins=["*"])
        for site in (listed, star):
            resp = self.preflight(site, "null")
            self.assertIsNone(resp.header("access-control-allow-origin"))
            self.assertIsNone(resp.header("access-control-allow-headers"))
            self.assertIsNone(post_offer(site, KEY, Origin="null").header("access-control-allow-origin"))
        resp = self.preflight(listed, "https://evil.example")
        self.assertIsNone(resp.header("access-control-allow-origin"))

    def test_star_is_said_not_reflected(self) -> None:
        """``*`` answers ``*``, never the caller's origin, and never allows credentials."""
        site = make_site(self.host, Clock(), cors_origins=["*"])
        resp = self.preflight(site, "https://any.example")
        self.assertEqual(resp.header("access-control-allow-origin"), "*")
        self.assertIsNone(resp.header("access-control-allow-credentials"))

    def test_listed_origins_match_case_insensitively(self) -> None:
        """Origins are compared as browsers serialise them: scheme and host lower-case, default port dropped."""
        policy = CorsPolicy(["HTTPS://App.Example:443"])
        self.assertEqual(policy.origins, frozenset({b"https://app.example"}))

    def test_origin_syntax(self) -> None:
        """A configured origin is scheme://host[:port]; ``null`` and paths are refused."""
        self.assertEqual(parse_origin("http://localhost:3000"), "http://localhost:3000")
        for bad in ("null", "NULL", "app.example", "https://app.example/path", "ftp://x", "https://u@x"):
            self.assertRaises(ValueError, parse_origin, bad)


@dataclass(frozen=True)
class _SignalingOnly:
    """A service of one [signaling] section, for the loader."""

    signaling: SignalingSettings = c.section(SignalingSettings)


class StartUpTests(SynchronousTestCase):
    """A service beyond loopback refuses to start open, unless told ``auth = none``."""

    def settings(self, **values: str) -> SignalingSettings:
        """The [signaling] section of an INI file with ``values``, loaded as a service would."""
        text = "[signaling]\n" + "".join(f"{k} = {v}\n" for k, v in values.items())
        return c.load_settings(_SignalingOnly, text=text)[0].signaling

    def keys_file(self) -> str:
        """A keys file with one key."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(keys.hash_line("web", KEY) + "\n")
        return path

    def test_refuses_to_start_open_beyond_loopback(self) -> None:
        """Every address, or a public one, without keys: a ConfigError that says what to do."""
        for listen in ("tcp:8443", "tcp:8443:interface=0.0.0.0", "tcp6:8443:interface=\\:\\:", "ssl:443:privateKey=k.pem"):
            error = self.assertRaises(c.ConfigError, self.settings, listen=listen)
            self.assertIn("[signaling] listen", str(error))
            self.assertIn("api_keys_file", str(error))
            self.assertIn("auth = none", str(error))

    def test_twistd_refuses_to_start(self) -> None:
        """``twistd voiceedge`` and ``voiceedge-transceiver`` stop at option parsing, naming the fix."""
        from twisted.python.usage import UsageError

        from voiceedge import tap
        from voiceedge.transceiver import tap as transceiver_tap

        path = self.mktemp()
        with open(path, "w") as f:
            f.write("[signaling]\nlisten = tcp:8443:interface=0.0.0.0\n")
        for options in (tap.Options(), transceiver_tap.Options()):
            error = self.assertRaises(UsageError, options.parseOptions, ["--config", path])
            self.assertIn("api_keys_file", str(error))
        with open(path, "a") as f:
            f.write("auth = none\n")
        tap.Options().parseOptions(["--config", path])

    def test_loopback_may_run_open(self) -> None:
        """The all-in-one default stays open."""
        self.assertTrue(self.settings().open)
        self.assertTrue(self.settings(listen="tcp6:8080:interface=\\:\\:1").open)

    def test_auth_none_is_explicit(self) -> None:
        """``auth = none`` runs open anywhere."""
        self.assertTrue(self.settings(listen="tcp:8443", auth="none").open)

    def test_keys_close_the_service(self) -> None:
        """With a keys file the service requires keys, wherever it listens."""
        settings = self.settings(listen="tcp:8443", api_keys_file=self.keys_file())
        self.assertFalse(settings.open)
        api_keys = settings.api_keys()
        assert api_keys is not None
        self.assertEqual(api_keys.name_of(KEY), "web")

    def test_inconsistent_choices_are_errors(self) -> None:
        """auth = keys without a file, auth = none with one, an empty or bad file."""
        self.assertRaises(c.ConfigError, self.settings, auth="keys")
        self.assertRaises(c.ConfigError, self.settings, auth="none", api_keys_file=self.keys_file())
        empty = self.mktemp()
        open(empty, "w").close()
        self.assertRaises(c.ConfigError, self.settings, api_keys_file=empty)
        self.assertRaises(c.ConfigError, self.settings, api_keys_file="/nonexistent")
        self.assertRaises(c.ConfigError, self.settings, cors_origins="null")

    def test_the_internet_example_loads(self) -> None:
        """etc/voiceedge-internet.ini is a valid all-in-one configuration once its keys file exists, and not without."""
        from pathlib import Path

        from voiceedge.tap import AllInOneSettings

        text = (Path(__file__).resolve().parent.parent / "etc" / "voiceedge-internet.ini").read_text("utf-8")
        self.assertRaises(c.ConfigError, c.load_settings, AllInOneSettings, text=text)
        settings, _ = c.load_settings(AllInOneSettings, text=text.replace("/etc/voiceedge/api-keys", self.keys_file()))
        self.assertFalse(settings.signaling.open)
        self.assertTrue(settings.signaling.listen.startswith("ssl:443:"))
        self.assertEqual(settings.signaling.cors_origins, ("https://app.example.com",))
        self.assertEqual(settings.relay.ingress, ("203.0.113.10", 3478))

    def test_listens_on_loopback(self) -> None:
        """Endpoint strings, escapes included."""
        cases = {
            "tcp:8080:interface=127.0.0.1": True,
            "tcp:8080:interface=127.1.2.3": True,
            "tcp6:8080:interface=\\:\\:1": True,
            "tcp:8080:interface=localhost": True,
            "unix:/run/voiceedge.sock": True,
            "ssl:8443:interface=127.0.0.1:privateKey=k.pem": True,
            "tcp:8080": False,
            "tcp:8080:interface=0.0.0.0": False,
            "tcp:8080:interface=10.0.0.5": False,
            "tcp6:8080:interface=\\:\\:": False,
            "systemd:domain=INET:index=0": False,
        }
        for endpoint, loopback in cases.items():
            self.assertEqual(listens_on_loopback(endpoint), loopback, endpoint)
