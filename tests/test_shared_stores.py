# -*- test-case-name: tests.test_shared_stores -*-
"""The front doors' ledger and client secrets in a real redis-server, shared by two front doors.

Each front door is its own RedisClient (its own connection), as two replicas
would be; their clocks are task.Clock, which is all the stores read (Redis's
own expiry is checked by the TTL it was given, not by waiting).
"""

from __future__ import annotations

import json
import time
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.task import Clock, deferLater
from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from tests.http_support import OFFER, Connection, FakeHost, Response, request_bytes
from tests.redis_support import start_redis
from voiceedge.fleet.shared_ledger import RedisSessionLedger
from voiceedge.fleet.shared_secrets import RedisClientSecrets
from voiceedge.redis_connection import RedisClient, RedisConnectionSettings
from voiceedge.signaling import keys
from voiceedge.signaling.auth import (
    ANONYMOUS,
    Caller,
    CredentialKind,
    Credentials,
    IClientSecretStore,
    Purpose,
    TooManySecrets,
    Unauthorized,
)
from voiceedge.signaling.ownership import ISessionLedger, Reservation
from voiceedge.signaling.resource import build_site
from voiceedge.signaling.settings import SignalingSettings
from voiceedge.signaling.site import SignalingSite

KEY = "sk_" + "w" * 43
OTHER = "sk_" + "o" * 43
WEB = Caller("key:web", CredentialKind.API_KEY, "web", frozenset({"key:web"}), frozenset({"key:web"}))
OTHER_CALLER = Caller("key:other", CredentialKind.API_KEY, "other", frozenset({"key:other"}), frozenset({"key:other"}))


class _Redis(TestCase):
    """A redis-server for the test, and clients to it that are closed at the end."""

    timeout = 30

    def setUp(self) -> None:
        self.redis = start_redis(self)
        self.clock = Clock()
        self.clock.advance(1_700_000_000)

    def client(self) -> RedisClient:
        """A new connection, as another front door replica has."""
        client = RedisClient(RedisConnectionSettings(address=self.redis.address, timeout=1))
        self.addCleanup(client.close)
        return client

    @defer.inlineCallbacks
    def connected(self, *clients: RedisClient) -> Any:
        """Wait (bounded) until every client's connection is up."""
        deadline = time.monotonic() + 10
        while not all(c.connected() for c in clients):
            self.assertLess(time.monotonic(), deadline, "no connection to redis-server")
            yield deferLater(reactor, 0.02, lambda: None)

    def everything_stored(self) -> bytes:
        """Every key and value in Redis, raw, to look for credentials in."""
        out = b""
        for line in self.redis.command("KEYS", "*").split(b"\r\n"):
            if line.startswith(b"voiceedge:"):
                kind = self.redis.command("TYPE", line.decode())
                if b"string" in kind:
                    out += line + self.redis.command("GET", line.decode())
                elif b"zset" in kind:
                    out += line + self.redis.command("ZRANGE", line.decode(), "0", "-1", "WITHSCORES")
                else:
                    out += line + self.redis.command("SMEMBERS", line.decode())
        return out


class SharedLedgerTests(_Redis):
    """RedisSessionLedger: owners and per-key caps shared by two front doors."""

    @defer.inlineCallbacks
    def setUp(self) -> Any:  # type: ignore[override]
        super().setUp()
        self.a = RedisSessionLedger(self.client(), self.clock, max_calls_per_key=2, reservation_hold=30)
        self.b = RedisSessionLedger(self.client(), self.clock, max_calls_per_key=2, reservation_hold=30)
        yield self.connected(self.a.client, self.b.client)

    def test_interface(self) -> None:
        verifyObject(ISessionLedger, self.a)

    @defer.inlineCallbacks
    def test_owner_recorded_by_one_is_known_to_the_other(self) -> Any:
        """A call opened through A: B lets its owner manage it, nobody else; the end frees it everywhere."""
        held = yield self.a.reserve(WEB)
        self.assertIsInstance(held, Reservation)
        yield self.a.opened("tx-a.s1", held)
        self.assertTrue((yield self.b.may_manage("tx-a.s1", WEB)))
        self.assertFalse((yield self.b.may_manage("tx-a.s1", OTHER_CALLER)))
        self.assertFalse((yield self.b.may_manage("tx-a.s2", WEB)))
        self.assertEqual((yield self.b.transceivers()), {"tx-a"})
        self.assertEqual(list((yield self.b.sessions_on("tx-a"))), ["tx-a.s1"])
        self.assertEqual((yield self.b.sessions_on("tx-a"))["tx-a.s1"], self.clock.seconds())
        self.assertTrue((yield self.b.ended("tx-a.s1")))
        self.assertFalse((yield self.a.ended("tx-a.s1")), "a second end is nothing")
        self.assertFalse((yield self.a.may_manage("tx-a.s1", WEB)))
        self.assertEqual((yield self.a.transceivers()), set())
        self.assertEqual((yield self.a.calls_of("web")), 0)
        self.assertEqual(self.redis.command("KEYS", "voiceedge:*"), b"*0\r\n")

    @defer.inlineCallbacks
    def test_the_cap_holds_across_front_doors(self) -> Any:
        """Two places for a key: one through each front door, then none through either, until one ends."""
        first = yield self.a.reserve(WEB)
        second = yield self.b.reserve(WEB)
        self.assertIsNone((yield self.a.reserve(WEB)))
        self.assertIsNone((yield self.b.reserve(WEB)))
        self.assertIsNotNone((yield self.b.reserve(OTHER_CALLER)))
        yield self.a.opened("tx-a.s1", first)
        yield self.b.cancel(second)
        self.assertEqual((yield self.a.calls_of("web")), 1)
        third = yield self.b.reserve(WEB)
        yield self.b.opened("tx-b.s2", third)
        self.assertIsNone((yield self.a.reserve(WEB)))
        yield self.b.ended("tx-a.s1")
        self.assertIsNotNone((yield self.a.reserve(WEB)))

    @defer.inlineCallbacks
    def test_a_reservation_whose_front_door_died_expires(self) -> Any:
        """A front door that reserved and vanished holds the place only ``reservation_hold`` seconds."""
        yield self.a.reserve(WEB)
        yield self.a.reserve(WEB)
        self.assertIsNone((yield self.b.reserve(WEB)))
        self.clock.advance(31)
        self.assertIsNotNone((yield self.b.reserve(WEB)))

    @defer.inlineCallbacks
    def test_no_cap_asks_nothing(self) -> Any:
        """Without a cap (or a key) a reservation is free; the owner is still shared."""
        free = RedisSessionLedger(self.a.client, self.clock, max_calls_per_key=0)
        held = yield free.reserve(WEB)
        self.assertEqual(held.token, "")
        self.assertEqual(self.redis.command("KEYS", "voiceedge:*"), b"*0\r\n")
        anonymous = yield free.reserve(ANONYMOUS)
        yield free.opened("tx-a.s9", anonymous)
        self.assertTrue((yield self.b.may_manage("tx-a.s9", ANONYMOUS)))

    @defer.inlineCallbacks
    def test_redis_away_fails_at_once(self) -> Any:
        """No connection: every method fails now (the gate answers 503), none waits for a reconnection."""
        self.redis.kill()
        yield deferLater(reactor, 0.2, lambda: None)
        for call in (lambda: self.a.reserve(WEB), lambda: self.a.may_manage("tx-a.s1", WEB),
                     lambda: self.a.ended("tx-a.s1")):
            started = time.monotonic()
            yield self.assertFailure(call(), ConnectionError)
            self.assertLess(time.monotonic() - started, 0.5)


class SharedSecretsTests(_Redis):
    """RedisClientSecrets: issued through one front door, spent once through any."""

    @defer.inlineCallbacks
    def setUp(self) -> Any:  # type: ignore[override]
        super().setUp()
        self.a = RedisClientSecrets(self.client(), self.clock, default_ttl=60, max_ttl=600, max_secrets=3)
        self.b = RedisClientSecrets(self.client(), self.clock, default_ttl=60, max_ttl=600, max_secrets=3)
        api_keys = keys.parse_keys(keys.hash_line("web", KEY))
        self.checker_a = Credentials(api_keys, self.a)
        self.checker_b = Credentials(api_keys, self.b)
        yield self.connected(self.a.client, self.b.client)

    def test_interface(self) -> None:
        verifyObject(IClientSecretStore, self.a)

    @defer.inlineCallbacks
    def test_issued_by_one_spent_once_through_the_other(self) -> Any:
        """B spends what A issued, with its settings and issuer; a second spend anywhere is 401."""
        issued = yield self.checker_a.issue_secret(WEB, None, {"type": "realtime", "instructions": "hi"})
        caller = yield self.checker_b.caller_for(b"Bearer " + issued.value.encode(), Purpose.NEW_CALL)
        self.assertEqual((caller.kind, caller.key_name), (CredentialKind.CLIENT_SECRET, "web"))
        self.assertEqual(caller.settings, {"type": "realtime", "instructions": "hi"})
        self.assertEqual(caller.managers, frozenset({caller.principal, "key:web"}))
        for checker in (self.checker_a, self.checker_b):
            yield self.assertFailure(
                checker.caller_for(b"Bearer " + issued.value.encode(), Purpose.NEW_CALL), Unauthorized
            )
        self.assertEqual((self.a.issued, self.b.spent), (1, 1))

    @defer.inlineCallbacks
    def test_racing_spends_one_wins(self) -> Any:
        """Both front doors spend the same secret at once: exactly one gets it."""
        issued = yield self.a.issue(WEB, None, None)
        results = yield defer.gatherResults([self.a.spend(issued.value), self.b.spend(issued.value)])
        self.assertEqual(sorted(r is None for r in results), [False, True])

    @defer.inlineCallbacks
    def test_refund_through_the_other_front_door(self) -> Any:
        """A secret spent on a call that did not open comes back, usable through either."""
        issued = yield self.a.issue(WEB, None, None)
        caller = yield self.checker_b.caller_for(b"Bearer " + issued.value.encode(), Purpose.NEW_CALL)
        yield self.checker_b.refund(caller)
        self.assertEqual(self.b.spent, 0)
        self.assertIsNotNone((yield self.a.spend(issued.value)))

    @defer.inlineCallbacks
    def test_expiry_bounds_and_only_digests(self) -> Any:
        """Redis expires a secret with its lifetime; past expires_at it is refused; the store is bounded; no secret is stored."""
        issued = yield self.a.issue(WEB, 30, None)
        key = [k for k in self.redis.command("KEYS", "voiceedge:client-secret:*").split(b"\r\n") if b":" in k][0]
        ttl_ms = int(self.redis.command("PTTL", key.decode())[1:].strip())
        self.assertTrue(29_000 < ttl_ms <= 30_000, ttl_ms)
        stored = self.everything_stored()
        self.assertNotIn(issued.value.encode(), stored)
        self.assertNotIn(issued.value[3:].encode(), stored)
        self.assertNotIn(KEY.encode(), stored)
        yield self.b.issue(WEB, None, None)
        yield self.b.issue(WEB, None, None)
        yield self.assertFailure(self.a.issue(WEB, None, None), TooManySecrets)
        self.assertEqual(self.a.unspent(), 3)
        self.clock.advance(31)  # the first is past its expires_at: swept from the bound, refused if met
        self.assertIsNone((yield self.b.spend(issued.value)))
        yield self.a.issue(WEB, None, None)

    @defer.inlineCallbacks
    def test_put_back_after_expiry_does_nothing(self) -> Any:
        """A refund after the secret's lifetime does not revive it."""
        issued = yield self.a.issue(WEB, 30, None)
        record = yield self.a.spend(issued.value)
        self.clock.advance(31)
        yield self.a.put_back(record)
        self.assertEqual(self.redis.command("KEYS", "voiceedge:client-secret:*"), b"*0\r\n")


class TwoFrontDoorSitesTests(_Redis):
    """Two signaling sites (two front door replicas) over one transceiver pool, sharing Redis."""

    @defer.inlineCallbacks
    def setUp(self) -> Any:  # type: ignore[override]
        super().setUp()
        self.host = FakeHost()  # the transceivers both front doors place calls on
        api_keys = keys.parse_keys(keys.hash_line("web", KEY) + "\n" + keys.hash_line("other", OTHER))
        settings = SignalingSettings(calls_per_minute_per_address=0, calls_per_minute_per_key=0, max_calls_per_key=1)
        self.sites: list[SignalingSite] = []
        clients = []
        for _ in range(2):
            client = self.client()
            clients.append(client)
            self.sites.append(build_site(
                self.host, settings,
                checker=Credentials(api_keys, RedisClientSecrets(client, reactor)),
                ledger=RedisSessionLedger(client, reactor, settings.max_calls_per_key),
                reactor=reactor,
            ))
        yield self.connected(*clients)

    @defer.inlineCallbacks
    def request(self, site: SignalingSite, method: str, path: str, body: bytes = b"", **headers: str) -> Any:
        """One request; its response once the stores have answered (bounded)."""
        conn = Connection(site)
        self.addCleanup(conn.drop)
        conn.send(request_bytes(method, path, body, {k.replace("_", "-"): v for k, v in headers.items()}))
        deadline = time.monotonic() + 5
        while b"\r\n\r\n" not in conn.transport.value():
            self.assertLess(time.monotonic(), deadline, f"no answer to {method} {path}")
            yield deferLater(reactor, 0.01, lambda: None)
        response: Response = conn.response()
        return response

    def offer(self, site: SignalingSite, token: str) -> Any:
        return self.request(site, "POST", "/v1/realtime/calls", OFFER.encode(), Content_Type="application/sdp",
                            Authorization=f"Bearer {token}")

    @defer.inlineCallbacks
    def test_a_secret_from_one_opens_a_call_the_other_ends(self) -> Any:
        """ek_ minted through A opens a call through B; A reads and ends it; the key's one place is freed."""
        a, b = self.sites
        minted = yield self.request(a, "POST", "/v1/realtime/client_secrets", b"", Authorization=f"Bearer {KEY}")
        value = json.loads(minted.body)["value"]
        opened = yield self.offer(b, value)
        self.assertEqual(opened.status, 201)
        location = opened.header("location")
        self.assertEqual((yield self.request(a, "GET", location, Authorization=f"Bearer {value}")).status, 200)
        self.assertEqual((yield self.request(a, "GET", location, Authorization=f"Bearer {OTHER}")).status, 404)
        self.assertEqual((yield self.offer(a, KEY)).status, 429, "the key's one place is taken, seen from A")
        self.assertEqual((yield self.request(a, "DELETE", location, Authorization=f"Bearer {KEY}")).status, 204)
        self.assertEqual(self.redis.command("ZCARD", "voiceedge:calls-of-key:web"), b":0\r\n")
        self.assertEqual((yield self.offer(b, KEY)).status, 201)
