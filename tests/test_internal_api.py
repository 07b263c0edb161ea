# -*- test-case-name: tests.test_internal_api -*-
"""The transceiver's internal API, over real loopback HTTP, with the front door's client."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.task import Clock, deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from tests.test_host import CLIENT_CERT, SERVER, SERVER_CERT, offer_sdp, restart_fragment
from voiceedge.agents.echo import EchoAgentFactory
from voiceedge.fleet.drain import Drain
from voiceedge.fleet.interfaces import IFleetTransceiver
from voiceedge.fleet.internal_api import SESSIONS_PATH, OpenRequest, build_internal_site
from voiceedge.fleet.internal_client import IInternalApi, InternalApiClient
from voiceedge.fleet.settings import InternalApiSettings
from voiceedge.transceiver.host import Transceiver
from voiceedge.transceiver.settings import TransceiverSettings
from voiceedge.wire import sdp

SECRET = "s" * 40
JSON = b"application/json"
SDPFRAG = b"application/trickle-ice-sdpfrag"


class OpenRequestTests(SynchronousTestCase):
    """The JSON body of POST /internal/v1/sessions."""

    def test_round_trip(self) -> None:
        request = OpenRequest("v=0\r\n", "a" * 22, ("192.0.2.1", 3478), {"agent": "echo"})
        self.assertEqual(OpenRequest.from_json(request.to_json()), request)
        self.assertEqual(OpenRequest.from_json(OpenRequest("v=0").to_json()), OpenRequest("v=0"))

    def test_bad_bodies(self) -> None:
        for body in (b"", b"[]", b'{"offer": ""}', b'{"offer": 1}', b'{"offer": "x", "session_id": "short"}',
                     b'{"offer": "x", "candidate": "nowhere"}', b'{"offer": "x", "settings": []}',
                     b"[" * 100000):
            with self.assertRaises(ValueError):
                OpenRequest.from_json(body)

    def test_settings(self) -> None:
        self.assertIsNone(InternalApiSettings().reachable_at)
        self.assertEqual(
            InternalApiSettings(listen="tcp:8081:interface=10.0.0.5", secret=SECRET).reachable_at,
            ("10.0.0.5", 8081),
        )
        self.assertIsNone(InternalApiSettings(listen="tcp:8081:interface=0.0.0.0", secret=SECRET).reachable_at)
        self.assertEqual(
            InternalApiSettings(listen="tcp:8081", address=("10.0.0.6", 80), secret=SECRET).reachable_at,
            ("10.0.0.6", 80),
        )


class InternalApiTests(TestCase):
    """A transceiver's internal API on a loopback port, called as a front door does."""

    timeout = 30

    def setUp(self) -> None:
        self.clock = Clock()
        self.transceiver = Transceiver(
            self.clock, SERVER_CERT, EchoAgentFactory(), TransceiverSettings(advertised_address=SERVER, max_sessions=2)
        )
        self.transceiver.write = lambda data, dest: None
        self.exited: list[bool] = []
        self.drain = Drain(
            self.clock, 60, self.transceiver.session_count,
            lambda: setattr(self.transceiver, "accepting", False),
            self.transceiver.stop, lambda: self.exited.append(True),
        )
        site = build_internal_site(self.transceiver, SECRET, self.drain)
        self.port = reactor.listenTCP(0, site, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(self.port.stopListening)
        self.api = ("127.0.0.1", self.port.getHost().port)
        self.client = InternalApiClient(reactor, SECRET, timeout=5)
        self.addCleanup(self.client.close)

    def open(self, **changes: Any) -> "defer.Deferred[Any]":
        request = OpenRequest(offer_sdp(CLIENT_CERT.fingerprint), **changes)
        return self.client.request(self.api, b"POST", SESSIONS_PATH, request.to_json(), JSON)

    def test_interfaces(self) -> None:
        verifyObject(IFleetTransceiver, self.transceiver)
        verifyObject(IInternalApi, self.client)

    @defer.inlineCallbacks
    def test_open_read_end(self) -> Any:
        """The front door's id and candidate are used; GET and DELETE reach the session."""
        response = yield self.open(session_id="front-door-chose-this", candidate=("198.51.100.9", 3478))
        self.assertEqual(response.status, 201)
        self.assertEqual(response.location, b"/internal/v1/sessions/front-door-chose-this")
        answer = sdp.parse_sdp(response.body.decode())
        self.assertIn("198.51.100.9 3478", response.body.decode())
        self.assertEqual(len(answer.media), 2)
        self.assertIsNotNone(self.transceiver.session("front-door-chose-this"))
        path = f"{SESSIONS_PATH}/front-door-chose-this"
        stats = yield self.client.request(self.api, b"GET", path)
        self.assertEqual(stats.status, 200)
        self.assertIsInstance(json.loads(stats.body), dict)
        listed = yield self.client.request(self.api, b"GET", SESSIONS_PATH)
        self.assertEqual((listed.status, json.loads(listed.body)), (200, {"sessions": ["front-door-chose-this"]}))
        ended = yield self.client.request(self.api, b"DELETE", path)
        self.assertEqual(ended.status, 204)
        listed = yield self.client.request(self.api, b"GET", SESSIONS_PATH)
        self.assertEqual(json.loads(listed.body), {"sessions": []})
        again = yield self.client.request(self.api, b"DELETE", path)
        self.assertEqual(again.status, 404)
        self.assertEqual(self.transceiver.session_count(), 0)

    @defer.inlineCallbacks
    def test_patch_restarts_ice(self) -> Any:
        """A client's PATCH, passed on by the front door, restarts ICE; ETag and If-Match carry through."""
        opened = yield self.open(session_id="patched-session-id-1")
        self.assertTrue(opened.etag)
        path = f"{SESSIONS_PATH}/patched-session-id-1"
        stale = yield self.client.request(
            self.api, b"PATCH", path, restart_fragment().encode(), SDPFRAG, {b"if-match": b'"stale"'}
        )
        self.assertEqual(stale.status, 412)
        patched = yield self.client.request(
            self.api, b"PATCH", path, restart_fragment().encode(), SDPFRAG, {b"if-match": opened.etag}
        )
        self.assertEqual(patched.status, 200)
        self.assertEqual(patched.content_type, SDPFRAG)
        self.assertIn(b"a=ice-ufrag:", patched.body)
        self.assertNotEqual(patched.etag, opened.etag)
        missing = yield self.client.request(self.api, b"PATCH", f"{SESSIONS_PATH}/nobody-here-at-all", b"", SDPFRAG)
        self.assertEqual(missing.status, 404)

    @defer.inlineCallbacks
    def test_refusals(self) -> Any:
        """Duplicate ids are 409, a full transceiver 503, a bad offer 400; nothing is left open."""
        first = yield self.open(session_id="a" * 20)
        self.assertEqual(first.status, 201)
        duplicate = yield self.open(session_id="a" * 20)
        self.assertEqual(duplicate.status, 409)
        second = yield self.open()
        self.assertEqual(second.status, 201)
        full = yield self.open()
        self.assertEqual(full.status, 503)
        bad = yield self.client.request(
            self.api, b"POST", SESSIONS_PATH, OpenRequest("v=0\r\nnonsense").to_json(), JSON
        )
        self.assertIn(bad.status, (400, 503))
        not_json = yield self.client.request(self.api, b"POST", SESSIONS_PATH, b"v=0", b"application/sdp")
        self.assertEqual(not_json.status, 415)
        self.assertEqual(self.transceiver.session_count(), 2)

    @defer.inlineCallbacks
    def test_the_secret_is_required(self) -> Any:
        """Without the fleet secret every API request is 401; the probes need none."""
        stranger = InternalApiClient(reactor, "x" * 40, timeout=5)
        self.addCleanup(stranger.close)
        for method, path in ((b"POST", SESSIONS_PATH), (b"GET", SESSIONS_PATH), (b"GET", f"{SESSIONS_PATH}/abc"),
                             (b"DELETE", f"{SESSIONS_PATH}/abc"), (b"POST", "/internal/v1/drain")):
            response = yield stranger.request(self.api, method, path, b"{}", JSON)
            self.assertEqual(response.status, 401, (method, path))
        self.assertFalse(self.drain.draining)
        for path in ("/healthz", "/readyz", "/metrics"):
            response = yield stranger.request(self.api, b"GET", path)
            self.assertEqual(response.status, 200, path)

    @defer.inlineCallbacks
    def test_the_prestop_drain_client(self) -> Any:
        """python -m voiceedge.fleet.drain_request: starts the drain, waits until no call is left."""
        from twisted.internet.threads import deferToThread

        from voiceedge.fleet.drain_request import drain

        url = f"http://127.0.0.1:{self.api[1]}"
        opened = yield self.open(session_id="prestop-session-id-1")
        self.assertEqual(opened.status, 201)
        waiting = deferToThread(drain, url, SECRET, True, 0.05)
        yield deferLater(reactor, 0.3, lambda: None)
        self.assertTrue(self.drain.draining)
        self.assertFalse(waiting.called)  # a call is still up
        self.transceiver.close_session("prestop-session-id-1", "done")
        status = yield waiting
        self.assertEqual(status, 0)
        wrong = yield deferToThread(drain, url, "w" * 40, False)
        self.assertEqual(wrong, 1)

    @defer.inlineCallbacks
    def test_drain_fails_readiness_and_refuses_new_calls(self) -> Any:
        """POST /internal/v1/drain: /readyz 503, new offers 503, live sessions go on, /healthz stays 200."""
        opened = yield self.open()
        self.assertEqual(opened.status, 201)
        started = yield self.client.request(self.api, b"POST", "/internal/v1/drain")
        self.assertEqual(started.status, 202)
        self.assertEqual(json.loads(started.body)["state"], "draining")
        ready = yield self.client.request(self.api, b"GET", "/readyz")
        self.assertEqual((ready.status, ready.body), (503, b"draining sessions=1\n"))
        alive = yield self.client.request(self.api, b"GET", "/healthz")
        self.assertEqual(alive.status, 200)
        refused = yield self.open()
        self.assertEqual(refused.status, 503)
        self.assertEqual(self.transceiver.session_count(), 1)
        self.assertEqual(self.exited, [])
