# -*- test-case-name: tests.test_relay_router -*-
"""The relay's router (where a new flow goes) and the global hop between clusters, on a Clock."""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from tests.fleet_fakes import MemoryRegistryStore
from tests.test_relay_protocol import binding_request, codec, srtp, token
from voiceedge.config import ConfigError, load_settings
from voiceedge.fleet.registry import RegistryView
from tests.test_relay_redis import FakeStore
from voiceedge.relay.core import MOVE_IDLE, Relay
from voiceedge.relay.flow_store import FlowCache, flow_key, format_value
from voiceedge.relay.directory import RelayDirectory, RelayRecord
from voiceedge.relay.router import IRouter, NextHop, Router, static_relays
from voiceedge.relay.settings import RedisSettings, RelayServiceSettings, RelaySettings
from voiceedge.wire import encap
from voiceedge.wire.encap import Envelope
from voiceedge.wire.route_token import Route

NETS = (ipaddress.ip_network("10.0.0.0/8"),)
PEERS = (ipaddress.ip_network("172.16.0.0/12"),)
# Region A: the client's relay (cluster 1). Region B: the owner's (cluster 2).
INGRESS_A = ("203.0.113.10", 3478)
INGRESS_B = ("198.51.100.20", 3478)
PEER_A = ("172.16.1.1", 3479)  # relay A's internal socket, where it sends from
PEER_B = ("172.16.2.1", 3479)  # relay B's global-hop socket
TRANSCEIVER_B = ("10.2.0.5", 4000)
CLIENT = ("192.0.2.77", 50000)

Sent = list[tuple[bytes, Any]]


class RouterTests(SynchronousTestCase):
    """Where a verified token's route goes."""

    def setUp(self) -> None:
        self.router = Router(1, NETS, socket.AF_INET, static_relays({2: PEER_B}), PEERS)

    def test_interface(self) -> None:
        verifyObject(IRouter, self.router)

    def test_this_cluster_goes_to_the_transceiver_inside_the_networks(self) -> None:
        self.assertEqual(self.router.route(Route(1, ("10.1.0.5", 4000))), NextHop(("10.1.0.5", 4000), cluster=1))
        self.assertEqual(self.router.route(Route(1, ("192.168.1.1", 4000))), "route_outside_networks")
        self.assertEqual(self.router.route(Route(1, ("fd00::1", 4000))), "route_outside_networks")

    def test_another_cluster_goes_to_its_relay(self) -> None:
        self.assertEqual(self.router.route(Route(2, TRANSCEIVER_B)), NextHop(PEER_B, via_relay=True, cluster=2))
        self.assertEqual(self.router.route(Route(3, TRANSCEIVER_B)), "wrong_cluster")

    def test_restore_and_peers(self) -> None:
        self.assertTrue(self.router.may_restore(1, ("10.1.0.5", 4000)))
        self.assertFalse(self.router.may_restore(1, ("192.168.1.1", 4000)))
        self.assertTrue(self.router.may_restore(2, PEER_B))
        self.assertFalse(self.router.may_restore(2, ("172.16.9.9", 1)))
        self.assertTrue(self.router.is_peer("172.16.2.1"))
        self.assertFalse(self.router.is_peer("10.1.0.5"))


class DirectoryTests(SynchronousTestCase):
    """Configured relays first, then Redis, a stable choice among several."""

    def test_relay_for(self) -> None:
        clock = Clock()
        store = MemoryRegistryStore(clock)
        view: RegistryView[RelayRecord] = RegistryView(store, clock, parse=RelayRecord.from_json)
        for record in (RelayRecord("b1", 2, ("172.16.2.1", 3479)), RelayRecord("b2", 2, ("172.16.2.2", 3479)),
                       RelayRecord("c1", 3, ("172.16.3.1", 3479))):
            store.put(record.id, record.to_json(), 6)
        view.refresh()
        directory = RelayDirectory({4: ("172.16.4.1", 1)}, view, own_id="a1")
        self.assertEqual(directory.relay_for(4), ("172.16.4.1", 1))
        self.assertEqual(directory.relay_for(3), ("172.16.3.1", 3479))
        self.assertIn(directory.relay_for(2), {("172.16.2.1", 3479), ("172.16.2.2", 3479)})
        self.assertEqual(directory.relay_for(2), directory.relay_for(2))
        self.assertIsNone(directory.relay_for(9))
        self.assertEqual(RelayRecord.from_json(RelayRecord("b1", 2, PEER_B).to_json()), RelayRecord("b1", 2, PEER_B))
        for bad in ("{}", '{"v":1,"id":"x","cluster":70000,"peer":"1.2.3.4:5"}', "nope"):
            with self.assertRaises(ValueError):
                RelayRecord.from_json(bad)

    def test_settings(self) -> None:
        def load(text: str) -> RelayServiceSettings:
            path = self.mktemp()
            with open(path, "w") as f:
                f.write(f"[token]\nkeys = 1:{'A' * 43}=\n[redis]\nenabled = no\n{text}")
            return load_settings(RelayServiceSettings, path)[0]

        settings = load("[relay]\ncluster = 1\n[global]\nlisten = 172.16.1.1:3479\nnetworks = 172.16.0.0/12\n"
                        "relays = 2=172.16.2.1:3479, 3=172.16.3.1:3479\nmax_hops = 3\n")
        self.assertEqual(dict(settings.global_hop.relays), {2: PEER_B, 3: ("172.16.3.1", 3479)})
        for text, message in (
            ("[global]\nrelays = 2=10.0.0.1:1\n", r"\[global\] relays: cluster 2's relay 10.0.0.1 is outside"),
            ("[global]\nnetworks = 10.0.0.0/8\nrelays = 0=10.0.0.1:1\n", r"\[global\] relays: names this relay's own"),
            ("[global]\nrelays = 2\n", r"\[global\] relays = '2'"),
            ("[global]\nmax_hops = 9\n", r"\[global\] max_hops"),
            ("[global]\ndirectory = yes\nlisten = 127.0.0.1:1\n", r"\[global\] directory: needs \[redis\]"),
        ):
            with self.assertRaisesRegex(ConfigError, message):
                load(text)


class Fleet:
    """Relay A (cluster 1, the client's) and relay B (cluster 2, the owner's), wired by their send functions.

    Every send is recorded as (socket, data, destination) and delivered
    when :meth:`deliver` is called, like a network that never loses.
    """

    def __init__(self, max_hops: int = 2) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        keys = codec()
        self.a = Relay(
            self.clock, keys,
            RelaySettings(public_listen=INGRESS_A, transceiver_networks=NETS, cluster=1),
            router=Router(1, NETS, socket.AF_INET, static_relays({2: PEER_B}), PEERS),
            max_hops=max_hops,
        )
        self.b = Relay(
            self.clock, keys,
            RelaySettings(public_listen=INGRESS_B, transceiver_networks=NETS, cluster=2),
            router=Router(2, NETS, socket.AF_INET, static_relays({1: ("172.16.1.9", 3479)}), PEERS),
            max_hops=max_hops,
        )
        self.queue: list[tuple[str, bytes, Any]] = []
        self.to_client: Sent = []
        self.to_transceiver: Sent = []
        self.a.send_to_client = lambda d, dest: self.to_client.append((bytes(d), dest))
        self.a.send_to_transceiver = lambda d, dest: self.queue.append(("a_internal", bytes(d), dest))
        self.a.send_to_peer = lambda d, dest: self.queue.append(("a_peer", bytes(d), dest))
        self.b.send_to_client = lambda d, dest: self.queue.append(("b_public", bytes(d), dest))
        self.b.send_to_transceiver = lambda d, dest: self.queue.append(("b_internal", bytes(d), dest))
        self.b.send_to_peer = lambda d, dest: self.queue.append(("b_peer", bytes(d), dest))

    def deliver(self) -> None:
        """Carry every datagram in flight to its destination's socket."""
        while self.queue:
            source, data, dest = self.queue.pop(0)
            if source == "a_internal" and dest == PEER_B:
                self.b.peer_datagram(data, PEER_A)
            elif source == "b_peer" and dest == PEER_A:
                self.a.transceiver_datagram(data, PEER_B)
            elif source == "b_internal" and dest == TRANSCEIVER_B:
                self.to_transceiver.append((data, dest))
            else:
                raise AssertionError(f"nowhere to deliver {source} -> {dest}")

    def client_sends(self, data: bytes) -> None:
        self.a.client_datagram(data, CLIENT)
        self.deliver()

    def transceiver_answers(self, payload: bytes) -> None:
        """The owner answers the client, through relay B (where its packets came from)."""
        envelope = encap.decode(self.to_transceiver[-1][0])[0]
        self.b.transceiver_datagram(encap.encode(envelope, payload), TRANSCEIVER_B)
        self.deliver()


class GlobalHopTests(SynchronousTestCase):
    """Client -> relay A -> relay B -> transceiver, and back the same way; the client sees only A."""

    def test_a_call_through_the_global_hop(self) -> None:
        fleet = Fleet()
        check = binding_request(token(TRANSCEIVER_B, cluster=2))
        fleet.client_sends(check)
        data, dest = fleet.to_transceiver[-1]
        self.assertEqual(dest, TRANSCEIVER_B)
        envelope, payload = encap.decode(data)
        # The transceiver learns the client's real address and the address it talks to (A's).
        self.assertEqual((envelope, payload), (Envelope(CLIENT, INGRESS_A), check))
        self.assertEqual(encap.hops(data), 1)
        # The answer goes back through B and A; the client gets it from A, untouched.
        fleet.transceiver_answers(b"\x01\x01\x00\x00answer")
        self.assertEqual(fleet.to_client, [(b"\x01\x01\x00\x00answer", CLIENT)])
        self.assertTrue(fleet.a.flows.confirmed[CLIENT].next_hop == PEER_B)
        self.assertEqual(fleet.b.flows.confirmed[CLIENT].return_via, PEER_A)
        # Media both ways on the hot paths.
        for _ in range(3):
            fleet.client_sends(srtp())
            fleet.transceiver_answers(srtp())
        self.assertEqual(len(fleet.to_transceiver), 4)
        self.assertEqual(len(fleet.to_client), 4)
        self.assertEqual(fleet.b.from_peer_packets, 4)
        self.assertEqual(sum(fleet.a.drops.values()) + sum(fleet.b.drops.values()), 0)
        # Consent checks keep flowing through both.
        fleet.client_sends(check)
        self.assertEqual(encap.decode(fleet.to_transceiver[-1][0])[1], check)
        # And the client's answers to the transceiver's own consent checks (STUN responses).
        answer = b"\x01\x01\x00\x00" + bytes.fromhex("2112a442") + bytes(12)
        fleet.client_sends(answer)
        self.assertEqual(encap.decode(fleet.to_transceiver[-1][0])[1], answer)
        self.assertEqual(sum(fleet.b.drops.values()), 0)

    def test_media_before_confirmation_and_unknown_peers(self) -> None:
        fleet = Fleet()
        fleet.client_sends(srtp())  # no flow at A: dropped there
        self.assertEqual(fleet.a.drops["not_stun_unknown_source"], 1)
        fleet.client_sends(binding_request(token(TRANSCEIVER_B, cluster=2)))
        fleet.a.flows.pending[CLIENT]  # pending at A until B's answer
        fleet.b.peer_datagram(encap.encode(Envelope(CLIENT, INGRESS_A), srtp()), PEER_A)
        self.assertEqual(fleet.b.drops["pending_media"], 1)
        fleet.b.peer_datagram(encap.encode(Envelope(CLIENT, INGRESS_A), srtp()), ("10.9.9.9", 1))
        self.assertEqual(fleet.b.drops["outside_peer_networks"], 1)
        # Garbage from a peer is counted, never raised.
        fleet.b.peer_datagram(b"\xf1\x00", PEER_A)
        self.assertEqual(fleet.b.drops["bad_header"], 1)

    def test_hop_count_is_bounded(self) -> None:
        """B would send a cluster-3 token on to cluster 3's relay: once over max_hops it is dropped."""
        fleet = Fleet(max_hops=1)
        fleet.b.router = Router(2, NETS, socket.AF_INET, static_relays({3: ("172.16.3.1", 3479)}), PEERS)
        fleet.a.router = Router(1, NETS, socket.AF_INET, static_relays({3: PEER_B}), PEERS)
        fleet.client_sends(binding_request(token(("10.3.0.5", 4000), cluster=3)))
        self.assertEqual(fleet.b.drops["hop_limit"], 1)
        # With two hops allowed it goes on, counted twice.
        fleet = Fleet(max_hops=2)
        fleet.b.router = Router(2, NETS, socket.AF_INET, static_relays({3: ("172.16.3.1", 3479)}), PEERS)
        fleet.a.router = Router(1, NETS, socket.AF_INET, static_relays({3: PEER_B}), PEERS)
        fleet.a.client_datagram(binding_request(token(("10.3.0.5", 4000), cluster=3)), CLIENT)
        source, data, dest = fleet.queue.pop()
        fleet.b.peer_datagram(data, PEER_A)
        source, onward, dest = fleet.queue.pop()
        self.assertEqual((source, dest, encap.hops(onward)), ("b_internal", ("172.16.3.1", 3479), 2))
        self.assertEqual(encap.decode(onward)[0], Envelope(CLIENT, INGRESS_A))

    def test_a_live_flow_is_not_taken_over_from_another_relay(self) -> None:
        """A check spoofed through a peer for a client active here is dropped (flow_busy)."""
        fleet = Fleet()
        fleet.client_sends(binding_request(token(TRANSCEIVER_B, cluster=2)))
        fleet.transceiver_answers(b"\x01\x01\x00\x00ok")
        other_peer = ("172.16.7.7", 3479)
        spoofed = encap.encode(Envelope(CLIENT, INGRESS_A), binding_request(token(TRANSCEIVER_B, cluster=2)))
        fleet.b.peer_datagram(spoofed, other_peer)
        self.assertEqual(fleet.b.drops["flow_busy"], 1)
        self.assertEqual(fleet.b.flows.confirmed[CLIENT].return_via, PEER_A)
        fleet.clock.advance(MOVE_IDLE + 1)
        fleet.b.now = fleet.clock.seconds()
        fleet.b.peer_datagram(spoofed, other_peer)
        self.assertEqual(fleet.b.flows.get(CLIENT).return_via, other_peer)  # type: ignore[union-attr]
        fleet.queue.clear()

    def test_flows_in_the_cache(self) -> None:
        """A keeps its global-hop flow in Redis (restorable through B); B keeps none (its ingress is A's)."""
        fleet = Fleet()
        store_a, store_b = FakeStore(), FakeStore()
        for relay, store in ((fleet.a, store_a), (fleet.b, store_b)):
            relay.cache = FlowCache(store, fleet.clock, relay.ingress, RedisSettings(), cluster=relay.cluster)
            relay.cache.on_restore = relay.restore
            relay.sweep()
        fleet.client_sends(binding_request(token(TRANSCEIVER_B, cluster=2)))
        fleet.transceiver_answers(b"\x01\x01\x00\x00ok")
        self.assertEqual(store_a.data, {flow_key(INGRESS_A, CLIENT): format_value(2, PEER_B)})
        self.assertEqual(store_b.data, {})
        # A restarted relay A restores the flow through B from the cache.
        restarted = Fleet()
        restarted.a.cache = FlowCache(store_a, restarted.clock, INGRESS_A, RedisSettings(), cluster=1)
        restarted.a.cache.on_restore = restarted.a.restore
        restarted.a.sweep()
        restarted.a.client_datagram(srtp(), CLIENT)
        self.assertEqual(restarted.a.flows.confirmed[CLIENT].next_hop, PEER_B)
        self.assertEqual(restarted.a.drops["restore_rejected"], 0)
