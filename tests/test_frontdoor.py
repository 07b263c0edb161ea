# -*- test-case-name: tests.test_frontdoor -*-
"""The front door's session host on a Clock with a fake internal API: placement, retries, 503, routing to owners."""

from __future__ import annotations

import ipaddress
import json
from typing import Any, Mapping

from twisted.internet import defer
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from tests.fleet_fakes import MemoryRegistryStore
from tests.test_registry import record
from voiceedge.fleet.frontdoor import FleetSessionHost, split_session_id
from voiceedge.fleet.internal_api import SESSIONS_PATH, OpenRequest
from voiceedge.fleet.internal_client import IInternalApi, InternalResponse
from voiceedge.fleet.registry import DRAINING, RegistryView
from voiceedge.fleet.settings import FleetSettings, RegionSettings
from voiceedge.fleet.steering import RegionMap
from voiceedge.signaling.interfaces import ISessionHost, OpenedSession, SessionRefused

RELAY_EU = ("192.0.2.1", 3478)
RELAY_US = ("192.0.2.2", 3478)


@implementer(IInternalApi)
class FakeApi:
    """Transceivers' internal APIs, by API address: each answers as the test says."""

    def __init__(self) -> None:
        self.requests: list[tuple[Any, bytes, str, bytes | None, Mapping[bytes, bytes]]] = []
        self.broken: set[Any] = set()
        self.full: set[Any] = set()
        self.sessions: dict[tuple[Any, str], str] = {}

    def request(
        self, api: Any, method: bytes, path: str, body: bytes | None = None,
        content_type: bytes | None = None, headers: Mapping[bytes, bytes] = {},
    ) -> "defer.Deferred[InternalResponse]":
        self.requests.append((api, method, path, body, headers))
        if api in self.broken:
            return defer.fail(ConnectionRefusedError())
        local = path.rpartition("/")[2]
        if method == b"POST":
            if api in self.full:
                return defer.succeed(InternalResponse(503, b"full\n"))
            opening = OpenRequest.from_json(body or b"")
            if "bad" in opening.offer:
                return defer.succeed(InternalResponse(406, b"no Opus\n"))
            assert opening.session_id is not None
            self.sessions[(api, opening.session_id)] = opening.offer
            answer = f"answer via {opening.candidate}".encode()
            return defer.succeed(InternalResponse(201, answer, b"application/sdp", b"/x", b'"e1"'))
        if (api, local) not in self.sessions:
            return defer.succeed(InternalResponse(404, b"no such session\n"))
        if method == b"DELETE":
            del self.sessions[(api, local)]
            return defer.succeed(InternalResponse(204, b""))
        if method == b"GET":
            return defer.succeed(InternalResponse(200, b'{"state": "connected"}', b"application/json"))
        if method == b"PATCH":
            return defer.succeed(InternalResponse(200, b"a=ice-ufrag:x\r\n", b"application/trickle-ice-sdpfrag",
                                                  None, b'"e2"'))
        raise AssertionError(method)


class FrontDoorTests(SynchronousTestCase):
    """FleetSessionHost over a registry of four transceivers in two regions."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.store = MemoryRegistryStore(self.clock)
        self.records = {
            "eu-1": record("eu-1", region="eu", api=("10.1.0.1", 8081), sessions=5),
            "eu-2": record("eu-2", region="eu", api=("10.1.0.2", 8081), sessions=3),
            "us-1": record("us-1", region="us", api=("10.2.0.1", 8081), sessions=0),
            "us-2": record("us-2", region="us", api=("10.2.0.2", 8081), sessions=9, state=DRAINING),
        }
        self.publish()
        self.view: RegistryView[Any] = RegistryView(self.store, self.clock)
        self.view.refresh()
        self.api = FakeApi()
        regions = RegionMap(
            {
                "eu": RegionSettings(RELAY_EU, (ipaddress.ip_network("203.0.113.0/24"),)),
                "us": RegionSettings(RELAY_US, (ipaddress.ip_network("198.51.100.0/24"),)),
                "edge": RegionSettings(RELAY_US, (ipaddress.ip_network("192.0.2.0/24"),), ("eu",)),
            },
            default="us",
        )
        self.host = FleetSessionHost(
            self.view, self.api, regions, self.clock, FleetSettings(secret="s" * 40, retry_after=3)
        )

    def publish(self) -> None:
        for r in self.records.values():
            self.store.put(r.id, r.to_json(), 60)

    def open(self, client: str | None = "203.0.113.7", offer: str = "v=0 offer") -> Any:
        return self.successResultOf(self.host.open_session(offer, client=client))

    def test_interface(self) -> None:
        verifyObject(ISessionHost, self.host)
        verifyObject(IInternalApi, self.api)

    def test_places_in_the_clients_region_on_the_least_loaded_with_its_relay(self) -> None:
        opened = self.open()
        self.assertIsInstance(opened, OpenedSession)
        owner, local = split_session_id(opened.session_id)  # type: ignore[misc]
        self.assertEqual(owner, "eu-2")
        self.assertGreaterEqual(len(local), 22)  # 128 random bits
        self.assertEqual(opened.answer_sdp, f"answer via {RELAY_EU}")
        self.assertEqual(opened.etag, '"e1"')
        # Local counting spreads a burst before the next registry read: eu-2 catches up, then they alternate.
        for _ in range(5):
            self.open()
        loads = sorted(r.sessions for r in self.view.candidates() if r.region == "eu")
        self.assertEqual(loads, [7, 7])
        # Draining transceivers are never chosen; the US client gets us-1 and the US relay.
        opened = self.open("198.51.100.9")
        self.assertTrue(opened.session_id.startswith("us-1."))
        self.assertEqual(opened.answer_sdp, f"answer via {RELAY_US}")
        # Unknown networks go to the default region.
        self.assertTrue(self.open("8.8.8.8").session_id.startswith("us-1."))

    def test_fallback_region_keeps_the_clients_relay(self) -> None:
        """An edge region with a relay and no transceivers: eu places the call, the answer names the edge relay."""
        opened = self.open("192.0.2.50")
        self.assertTrue(opened.session_id.startswith("eu-"))
        self.assertEqual(opened.answer_sdp, f"answer via {RELAY_US}")
        self.assertEqual(dict(self.host.placed), {("edge", "eu"): 1})

    def test_a_failing_transceiver_is_retried_once_elsewhere_and_cleaned_up(self) -> None:
        self.api.broken.add(("10.1.0.2", 8081))
        opened = self.open()
        self.assertTrue(opened.session_id.startswith("eu-1."))
        posts = [r for r in self.api.requests if r[1] == b"POST"]
        self.assertEqual([r[0] for r in posts], [("10.1.0.2", 8081), ("10.1.0.1", 8081)])
        # The id tried at the failing one is deleted there, in case it was allocated.
        first_id = OpenRequest.from_json(posts[0][3] or b"").session_id
        self.assertIn((("10.1.0.2", 8081), b"DELETE", f"{SESSIONS_PATH}/{first_id}"),
                      [(r[0], r[1], r[2]) for r in self.api.requests])
        # And it is avoided for a while.
        self.assertTrue(self.open().session_id.startswith("eu-1."))
        self.clock.advance(11)
        self.api.broken.clear()
        self.view.refresh()
        self.assertTrue(self.open().session_id.startswith("eu-2."))

    def test_only_one_retry(self) -> None:
        self.api.broken.update({("10.1.0.1", 8081), ("10.1.0.2", 8081)})
        failure = self.failureResultOf(self.host.open_session("v=0", client="203.0.113.7"), SessionRefused)
        self.assertEqual((failure.value.status, failure.value.retry_after), (503, 3))
        self.assertEqual(len([r for r in self.api.requests if r[1] == b"POST"]), 2)

    def test_full_transceivers_and_none_at_all(self) -> None:
        self.api.full.add(("10.1.0.2", 8081))
        self.assertTrue(self.open().session_id.startswith("eu-1."))
        self.records = {k: v for k, v in self.records.items() if k == "us-2"}  # draining only
        self.store.records.clear()
        self.publish()
        self.view.refresh()
        failure = self.failureResultOf(self.host.open_session("v=0", client="203.0.113.7"), SessionRefused)
        self.assertEqual((failure.value.status, failure.value.retry_after), (503, 3))
        self.assertEqual(self.host.outcomes["no_transceiver"], 1)

    def test_the_offers_own_fault_is_not_retried(self) -> None:
        failure = self.failureResultOf(self.host.open_session("bad offer", client="203.0.113.7"), SessionRefused)
        self.assertEqual(failure.value.status, 406)
        self.assertEqual(len(self.api.requests), 1)

    def test_later_requests_go_to_the_owner(self) -> None:
        opened = self.open()
        ended: list[str] = []
        self.host.add_end_listener(ended.append)
        stats = self.successResultOf(self.host.session_stats(opened.session_id))
        self.assertEqual(stats, {"state": "connected", "transceiver": "eu-2", "region": "eu"})
        patched = self.successResultOf(
            self.host.patch_session(opened.session_id, "application/trickle-ice-sdpfrag", "a=x", '"e1"')
        )
        self.assertEqual((patched.status, patched.etag), (200, '"e2"'))
        self.assertEqual(self.api.requests[-1][4], {b"if-match": b'"e1"'})
        self.assertTrue(self.successResultOf(self.host.close_session(opened.session_id, "bye")))
        self.assertEqual(ended, [opened.session_id])
        self.assertFalse(self.successResultOf(self.host.close_session(opened.session_id, "bye")))
        self.assertIsNone(self.successResultOf(self.host.session_stats(opened.session_id)))
        for unknown in ("nodot", "ghost.abc", ".x", "eu-2."):
            self.assertFalse(self.successResultOf(self.host.close_session(unknown, "bye")))
            self.failureResultOf(self.host.patch_session(unknown, "application/sdp", "", None), SessionRefused)

    def test_metrics(self) -> None:
        self.open()
        names = {(name, tuple(sorted(labels.items()))) for _, name, _, labels, _ in self.host.metrics()}
        self.assertIn(("voiceedge_frontdoor_offers", (("outcome", "opened"),)), names)
        self.assertEqual(self.host.session_count(), 17)
        self.assertEqual(json.loads(json.dumps(dict(self.host.outcomes))), {"opened": 1})


class FrontDoorServiceTests(SynchronousTestCase):
    """``twistd voiceedge-signaling``'s service, built from an INI file on a fake reactor (nothing connects)."""

    def build(self, **signaling: str) -> Any:
        from pathlib import Path

        from twisted.internet.testing import MemoryReactorClock

        from voiceedge.signaling import keys
        from voiceedge.signaling import tap

        tmp = Path(self.mktemp()).resolve()
        tmp.mkdir(parents=True)
        (tmp / "keys").write_text(keys.hash_line("web", "sk_" + "w" * 43) + "\n")
        lines = [f"{k} = {v}" for k, v in {"api_keys_file": str(tmp / "keys"), **signaling}.items()]
        ini = tmp / "signaling.ini"
        ini.write_text("[signaling]\n" + "\n".join(lines) + "\n[fleet]\nsecret = " + "s" * 40
                       + "\n[region.default]\nrelay = 127.0.0.1:3478\n")
        options = tap.Options()
        options.parseOptions(["--config", str(ini)])
        return tap.makeService(options, MemoryReactorClock())

    def test_shared_stores_and_session_ends(self) -> None:
        """The front door keeps owners, caps and secrets in Redis and runs the session-ends service."""
        from voiceedge.fleet.session_ends import SessionEnds
        from voiceedge.fleet.shared_ledger import RedisSessionLedger
        from voiceedge.fleet.shared_secrets import RedisClientSecrets

        top = self.build()
        ends = [s for s in top if isinstance(s, SessionEnds)]
        self.assertEqual(len(ends), 1)
        site = [s.factory for s in top if hasattr(getattr(s, "factory", None), "gate")][0]
        self.assertIsInstance(site.gate.ledger, RedisSessionLedger)
        self.assertIsInstance(site.gate.checker.client_secrets, RedisClientSecrets)
        self.assertEqual(ends[0].reconcile_interval, 15)

    def test_metrics_need_a_key_or_their_own_listener(self) -> None:
        """/metrics on the API port is behind the keys; with metrics_listen it is only there."""
        from voiceedge.signaling.resource import AdminResource

        top = self.build()
        site = [s.factory for s in top if hasattr(getattr(s, "factory", None), "gate")][0]
        self.assertIsInstance(site.resource.children[b"metrics"], AdminResource)
        top = self.build(metrics_listen="tcp:0:interface=127.0.0.1")
        sites = [s.factory for s in top if getattr(s, "factory", None) is not None]
        self.assertNotIn(b"metrics", [k for s in sites if hasattr(s, "gate") for k in s.resource.children])
        self.assertEqual(len(sites), 2)
