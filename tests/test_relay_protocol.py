"""Tests for the relay's routing (voiceedge.relay.core) and its datagram protocols."""

from __future__ import annotations

import ipaddress
import os
import random
import socket
from typing import Any, Iterator

from prometheus_client import generate_latest
from twisted.internet import defer, reactor
from twisted.internet.task import Clock, deferLater
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from voiceedge.metrics import make_registry
from voiceedge.relay.core import MOVE_IDLE, Relay
from voiceedge.relay.flows import MAX_FLOWS_PER_UFRAG
from voiceedge.relay.settings import RelaySettings
from voiceedge.relay.protocol import (
    ClientProtocol,
    TransceiverProtocol,
    listen_client,
    listen_transceiver,
)
from tests.relay_support import FdClock, RecordingBatch, drain, require_backend
from voiceedge.wire import encap
from voiceedge.wire.encap import Envelope
from voiceedge.wire.route_token import Route, RouteTokenCodec
from voiceedge.wire.stun import Attr, StunClass, build_message

SECRET = bytes(range(32))
OTHER_SECRET = bytes(range(1, 33))
INGRESS = ("203.0.113.10", 3478)
HOP = ("10.1.0.5", 4000)
HOP2 = ("10.1.0.6", 4000)
CLIENT = ("198.51.100.7", 50000)
NETS = (ipaddress.ip_network("10.0.0.0/8"),)

Sent = list[tuple[bytes, tuple[str, int]]]


def codec(secret: bytes = SECRET) -> RouteTokenCodec:
    """A codec with key id 1."""
    return RouteTokenCodec({1: secret}, 1)


def token(hop: tuple[str, int] = HOP, cluster: int = 0, secret: bytes = SECRET) -> str:
    """A fresh ufrag routing to ``hop``."""
    return codec(secret).issue(Route(cluster, hop))


def binding_request(ufrag: str | bytes, client_ufrag: bytes = b"abcd") -> bytes:
    """A STUN Binding request with USERNAME ``<ufrag>:<client_ufrag>``."""
    if isinstance(ufrag, str):
        ufrag = ufrag.encode()
    return build_message(
        0x001,
        StunClass.REQUEST,
        os.urandom(12),
        [(Attr.USERNAME, ufrag + b":" + client_ufrag), (Attr.PRIORITY, b"\x6e\x00\x1e\xff")],
        integrity_key=b"k" * 22,
    )


def srtp(size: int = 160) -> bytes:
    """Something shaped like SRTP: first byte 0x80."""
    return b"\x80\x6f" + os.urandom(size - 2)


class Harness:
    """A Relay on a Clock with its two send functions recording into lists.

    With ``backend="recvmmsg"`` client datagrams take the batch path, through
    the compiled helper (:class:`RecordingBatch`).
    """

    def __init__(self, backend: str = "python", **kwargs: Any) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        kwargs.setdefault("transceiver_networks", NETS)
        self.relay = Relay(self.clock, codec(), RelaySettings(public_listen=INGRESS, **kwargs))
        self.to_transceiver: Sent = []
        self.to_client: Sent = []
        self.relay.send_to_transceiver = lambda d, a: self.to_transceiver.append((bytes(d), a))
        self.relay.send_to_client = lambda d, a: self.to_client.append((bytes(d), a))
        self.batch: RecordingBatch | None = None
        self.return_batch: RecordingBatch | None = None
        if backend == "recvmmsg":
            require_backend(backend)
            self.batch = RecordingBatch(self.to_transceiver)
            self.relay.use_batch(self.batch, self.batch.buffer)
            self.return_batch = RecordingBatch(self.to_client, headroom=0)
            self.relay.use_return_batch(self.return_batch, self.return_batch.buffer)

    def from_client(self, data: bytes, addr: tuple[str, int] = CLIENT) -> None:
        """A datagram arrives on the public socket."""
        self.relay.client_datagram(data, addr)

    def from_transceiver(
        self, payload: bytes, client: tuple[str, int] = CLIENT, source: tuple[str, int] = HOP
    ) -> None:
        """A transceiver sends ``payload`` for ``client`` to the internal socket (through this backend's path)."""
        datagram = encap.encode(Envelope(client, INGRESS), payload)
        if self.return_batch is None:
            self.relay.transceiver_datagram(datagram, source)
        else:
            at, n = self.return_batch.put(0, datagram)
            self.relay.transceiver_slot(at, n, source)

    def confirm(self, client: tuple[str, int] = CLIENT, hop: tuple[str, int] = HOP) -> None:
        """Route ``client`` by token to ``hop`` and have ``hop`` answer."""
        self.from_client(binding_request(token(hop)), client)
        self.from_transceiver(b"\x01\x01\x00\x00answer", client, hop)
        assert self.relay.flows.confirmed[client].next_hop == hop


class RoutingTests(SynchronousTestCase):
    """The relay on a Clock: a token routes a flow to its transceiver, which confirms it; media then goes both ways, untouched."""

    backend = "python"

    def test_valid_token_is_forwarded_with_header(self) -> None:
        """A Binding request with a valid token goes to its transceiver, encapsulated, untouched."""
        h = Harness(self.backend)
        request = binding_request(token())
        h.from_client(request)
        self.assertEqual(len(h.to_transceiver), 1)
        data, addr = h.to_transceiver[0]
        self.assertEqual(addr, HOP)
        envelope, payload = encap.decode(data)
        self.assertEqual(envelope, Envelope(CLIENT, INGRESS))
        self.assertEqual(payload, request)
        self.assertEqual(h.to_client, [])
        self.assertIn(CLIENT, h.relay.flows.pending)

    def test_reply_goes_back_untouched_and_confirms(self) -> None:
        """The transceiver's answer reaches the client byte for byte and confirms the flow."""
        h = Harness(self.backend)
        h.from_client(binding_request(token()))
        answer = b"\x01\x01" + os.urandom(98)
        h.from_transceiver(answer)
        self.assertEqual(h.to_client, [(answer, CLIENT)])
        flow = h.relay.flows.confirmed[CLIENT]
        self.assertTrue(flow.confirmed)
        self.assertNotIn(CLIENT, h.relay.flows.pending)
        self.assertEqual(h.relay.flows.confirmed_total, 1)

    def test_media_from_pending_flow_is_dropped(self) -> None:
        """DTLS or SRTP before the owner answered goes nowhere."""
        h = Harness(self.backend)
        h.from_client(binding_request(token()))
        h.to_transceiver.clear()
        h.from_client(b"\x16\xfe\xfd" + os.urandom(100))
        h.from_client(srtp())
        self.assertEqual(h.to_transceiver, [])
        self.assertEqual(h.to_client, [])
        self.assertEqual(h.relay.drops["pending_media"], 2)

    def test_repeated_checks_on_pending_flow_are_forwarded(self) -> None:
        """Retransmitted checks with the same token go to the same transceiver."""
        h = Harness(self.backend)
        t = token()
        for _ in range(3):
            h.from_client(binding_request(t))
        self.assertEqual([a for _, a in h.to_transceiver], [HOP] * 3)
        self.assertEqual(len(h.relay.flows), 1)

    def test_media_both_ways_after_confirmation(self) -> None:
        """Once confirmed, every client datagram goes to the owner and back, untouched."""
        h = Harness(self.backend)
        h.confirm()
        h.to_transceiver.clear()
        h.to_client.clear()
        up = [srtp(random.randrange(20, 1400)) for _ in range(50)]
        down = [srtp(random.randrange(20, 1400)) for _ in range(50)]
        for u, d in zip(up, down):
            h.from_client(u)
            h.from_transceiver(d)
        self.assertEqual([encap.decode(d) for d, _ in h.to_transceiver], [
            (Envelope(CLIENT, INGRESS), u) for u in up
        ])
        self.assertEqual({a for _, a in h.to_transceiver}, {HOP})
        self.assertEqual(h.to_client, [(d, CLIENT) for d in down])
        r = h.relay
        self.assertEqual(r.to_transceiver_packets, 51)
        self.assertEqual(r.to_client_packets, 51)
        self.assertEqual(r.to_transceiver_bytes, sum(map(len, up)) + len(binding_request(token())))

    def test_consent_checks_on_confirmed_flow(self) -> None:
        """STUN on a confirmed flow (consent checks) is forwarded to the owner."""
        h = Harness(self.backend)
        t = token()
        h.from_client(binding_request(t))
        h.from_transceiver(b"\x01\x01\x00\x00")
        h.to_transceiver.clear()
        h.from_client(binding_request(t))
        h.from_client(b"\x00\x01\x00")  # STUN range, malformed: still the client's own flow
        self.assertEqual([a for _, a in h.to_transceiver], [HOP, HOP])

    def test_oversized_and_empty_datagrams_are_dropped(self) -> None:
        """Nothing larger than max_payload is forwarded, even on a confirmed flow."""
        h = Harness(self.backend, max_payload=1400)
        h.confirm()
        h.to_transceiver.clear()
        h.from_client(srtp(1401))
        h.from_client(b"")
        self.assertEqual(h.to_transceiver, [])
        self.assertEqual(h.relay.drops["too_big"], 1)
        self.assertEqual(h.relay.drops["empty"], 1)

    def test_every_datagram_a_client_can_send_is_forwarded(self) -> None:
        """By default the relay takes any client datagram one internal datagram can carry: a
        1,408-byte DTLS flight with a post-quantum key share (Firefox ESR), and far larger, fits."""
        h = Harness(self.backend)
        self.assertTrue(h.relay.max_payload == encap.MAX_CLIENT_PAYLOAD == 65468)
        flight = b"\x16\xfe\xfd" + os.urandom(1405)
        h.from_client(binding_request(token()))
        h.from_transceiver(b"\x01\x01\x00\x00answer")
        h.to_transceiver.clear()
        for payload in (flight, srtp(9000), srtp(encap.MAX_CLIENT_PAYLOAD)):
            h.from_client(payload)
        self.assertEqual([encap.decode(d)[1] for d, _ in h.to_transceiver][0], flight)
        self.assertEqual([len(d) for d, _ in h.to_transceiver], [1408 + 14, 9000 + 14, 65468 + 14])
        h.from_client(srtp(encap.MAX_CLIENT_PAYLOAD + 1))
        self.assertEqual(h.relay.drops["too_big"], 1)

    def test_tokens_for_other_cluster_or_outside_networks_are_dropped(self) -> None:
        """A valid token is not enough: right cluster, and a hop inside transceiver_networks."""
        h = Harness(self.backend)
        h.from_client(binding_request(token(cluster=7)))
        h.from_client(binding_request(token(("192.168.1.1", 4000))))
        h.from_client(binding_request(token(("::1", 4000))))
        self.assertEqual(h.to_transceiver, [])
        self.assertEqual(len(h.relay.flows), 0)
        self.assertEqual(h.relay.drops["wrong_cluster"], 1)
        self.assertEqual(h.relay.drops["route_outside_networks"], 2)

    def test_internal_side_only_accepts_transceiver_networks(self) -> None:
        """A datagram on the internal socket from outside transceiver_networks is dropped."""
        h = Harness(self.backend)
        h.confirm()
        h.to_client.clear()
        h.from_transceiver(b"\x80spoofed", source=("192.168.7.7", 4000))
        h.from_transceiver(b"\x80spoofed", source=("127.0.0.1", 4000))
        self.assertEqual(h.to_client, [])
        self.assertEqual(h.relay.drops["outside_transceiver_networks"], 2)

    def test_transceiver_cannot_spray_or_confirm_foreign_flows(self) -> None:
        """No flow, or a flow owned by another transceiver: nothing goes out."""
        h = Harness(self.backend)
        h.from_transceiver(b"\x80x", client=("192.0.2.99", 9))
        h.from_client(binding_request(token()))
        h.from_transceiver(b"\x01\x01\x00\x00", source=HOP2)
        h.relay.transceiver_datagram(b"\x80not encapsulated", HOP)
        self.assertEqual(h.to_client, [])
        self.assertIn(CLIENT, h.relay.flows.pending)
        drops = h.relay.drops
        self.assertEqual(drops["no_flow"], 1)
        self.assertEqual(drops["wrong_transceiver"], 1)
        self.assertEqual(drops["bad_header"], 1)

    def test_metrics_text(self) -> None:
        """The snapshot renders as Prometheus text with the operator's counters."""
        h = Harness(self.backend)
        h.confirm()
        h.from_client(b"junk", ("192.0.2.1", 1))
        text = generate_latest(make_registry(h.relay.metrics)).decode()
        self.assertIn('voiceedge_relay_packets_total{direction="to_transceiver"} 1.0', text)
        self.assertIn('voiceedge_relay_flows{state="confirmed"} 1.0', text)
        self.assertIn('voiceedge_relay_drops_total{reason="not_stun_unknown_source"} 1.0', text)
        self.assertIn("voiceedge_relay_redis_enabled 0.0", text)


class MoveTests(SynchronousTestCase):
    """A confirmed flow moves to another transceiver only when idle and answered; a restart on its own transceiver is never busy."""

    backend = "python"

    def test_ice_restart_to_another_transceiver(self) -> None:
        """A new token naming another transceiver takes over an idle flow only when that one answers."""
        h = Harness(self.backend)
        h.confirm()
        h.to_transceiver.clear()
        h.clock.advance(MOVE_IDLE)
        new = token(HOP2)
        h.from_client(binding_request(new))
        self.assertEqual(h.to_transceiver[-1][1], HOP2)
        h.from_client(srtp())
        self.assertEqual(h.to_transceiver[-1][1], HOP)  # media still goes to the current owner
        h.from_client(binding_request(new))  # a retransmission: not a new move, not busy
        self.assertEqual(h.to_transceiver[-1][1], HOP2)
        self.assertEqual(h.relay.drops["flow_busy"], 0)
        h.from_transceiver(b"\x01\x01\x00\x00", source=HOP2)
        flow = h.relay.flows.confirmed[CLIENT]
        self.assertEqual(flow.next_hop, HOP2)
        self.assertIsNone(flow.pending_hop)
        self.assertEqual(flow.ufrag, new.encode())  # the move takes the new session's ufrag
        h.from_client(srtp())
        self.assertEqual(h.to_transceiver[-1][1], HOP2)
        h.from_client(binding_request(new))
        self.assertEqual(h.to_transceiver[-1][1], HOP2)
        h.from_transceiver(b"\x80late", source=HOP)
        self.assertEqual(h.relay.drops["wrong_transceiver"], 1)

    def test_spoofed_check_cannot_move_an_active_flow(self) -> None:
        """Attack: a check with the attacker's own token, spoofed from a live client, moves nothing.

        The attacker's transceiver would answer it (the attacker knows its own
        ICE password); before the idle rule that answer moved the victim's flow
        for good, since the victim's own checks did not move it back.
        """
        h = Harness(self.backend)
        h.confirm()
        victim_ufrag = h.relay.flows.confirmed[CLIENT].ufrag
        for _ in range(20):  # an active call: media every 20 ms
            h.clock.advance(0.02)
            h.from_client(srtp())
        h.to_transceiver.clear()
        h.from_client(binding_request(token(HOP2)), CLIENT)  # spoofed by the attacker
        self.assertEqual(h.to_transceiver, [])  # not even forwarded to the attacker's transceiver
        self.assertEqual(h.relay.drops["flow_busy"], 1)
        h.from_transceiver(b"\x01\x01\x00\x00answer", CLIENT, HOP2)
        flow = h.relay.flows.confirmed[CLIENT]
        self.assertEqual(flow.next_hop, HOP)
        self.assertIsNone(flow.pending_hop)
        self.assertEqual(flow.ufrag, victim_ufrag)
        self.assertEqual(h.to_client[-1][0], b"\x01\x01\x00\x00answer")  # the confirmation, nothing since
        self.assertEqual(h.relay.drops["wrong_transceiver"], 1)
        h.from_client(binding_request(victim_ufrag), CLIENT)
        h.from_client(srtp(), CLIENT)
        self.assertEqual([a for _, a in h.to_transceiver], [HOP, HOP])

    def test_busy_check_is_judged_before_it_counts(self) -> None:
        """Idleness is the time since the client's previous packet, not this one's."""
        h = Harness(self.backend)
        h.confirm()
        h.clock.advance(MOVE_IDLE - 0.5)
        h.from_client(binding_request(token(HOP2)))
        self.assertEqual(h.relay.drops["flow_busy"], 1)
        h.clock.advance(MOVE_IDLE)  # refused checks do not keep the flow busy
        h.from_client(binding_request(token(HOP2)))
        self.assertEqual(h.relay.flows.confirmed[CLIENT].pending_hop, HOP2)

    def test_stale_pending_hop_is_ignored(self) -> None:
        """Attack: an answer from the pending transceiver after pending_timeout moves nothing."""
        h = Harness(self.backend)
        h.confirm()
        h.clock.advance(MOVE_IDLE)
        h.from_client(binding_request(token(HOP2)))
        flow = h.relay.flows.confirmed[CLIENT]
        self.assertEqual(flow.pending_hop, HOP2)
        h.clock.advance(h.relay.flows.pending_timeout + 1)
        h.from_transceiver(b"\x01\x01\x00\x00late", source=HOP2)
        self.assertEqual(flow.next_hop, HOP)
        self.assertIsNone(flow.pending_hop)
        self.assertEqual(h.relay.drops["wrong_transceiver"], 1)
        h.from_transceiver(b"\x01\x01\x00\x00again", source=HOP2)
        self.assertEqual(flow.next_hop, HOP)
        self.assertEqual(h.relay.drops["wrong_transceiver"], 2)

    def test_ice_restart_on_the_same_transceiver_is_never_busy(self) -> None:
        """A live call's ICE restart (PATCH) gives it a new token for the same transceiver: from the
        same source the check goes through at once, media and all, and the flow takes the new ufrag;
        from a new source (a browser gathers new ports) it is a new flow like any other."""
        h = Harness(self.backend)
        h.confirm()
        h.from_client(srtp())  # the call is live: a move elsewhere would be flow_busy
        h.to_transceiver.clear()
        new = token(HOP)
        h.from_client(binding_request(new))
        h.from_client(srtp())
        self.assertEqual([a for _, a in h.to_transceiver], [HOP, HOP])
        self.assertEqual(h.relay.drops["flow_busy"], 0)
        self.assertEqual(h.relay.flows.confirmed[CLIENT].ufrag, new.encode())
        moved = ("198.51.100.9", 40999)
        h.from_client(binding_request(new), moved)
        self.assertEqual(h.to_transceiver[-1][1], HOP)
        self.assertIn(moved, h.relay.flows.pending)
        h.from_transceiver(b"\x01\x01\x00\x00answer", moved)
        self.assertIn(moved, h.relay.flows.confirmed)


class FloodTests(SynchronousTestCase):
    """Attacks on the flow table: replayed tokens, forged and random datagrams, a full table."""

    backend = "python"

    def test_one_session_cannot_fill_the_table(self) -> None:
        """Attack: one token and password replayed from many spoofed sources confirms at most 8 flows.

        Before the per-ufrag bound every such flow was confirmed by the
        attacker's own transceiver and the table was full for everyone else.
        """
        h = Harness(self.backend, max_flows=50)
        own = token(HOP)
        for i in range(50):
            source = (f"192.0.2.{i}", 40000)
            h.from_client(binding_request(own), source)
            h.from_transceiver(b"\x01\x01\x00\x00ok", source, HOP)
        flows = h.relay.flows
        self.assertTrue(len(flows) == MAX_FLOWS_PER_UFRAG == 8)
        self.assertEqual(flows.per_ufrag, {own.encode(): 8})
        self.assertEqual(h.relay.drops["too_many_sources"], 42)
        self.assertEqual(len(h.to_client), 8)  # the rest never reached the transceiver
        h.to_transceiver.clear()
        h.from_client(binding_request(token(HOP2)), CLIENT)  # a new legitimate session
        self.assertEqual(h.relay.drops["table_full"], 0)
        self.assertEqual(h.to_transceiver[-1][1], HOP2)
        # a pending flow cannot switch to the full ufrag either, nor a move take it
        h.from_client(binding_request(own), CLIENT)
        self.assertEqual(h.relay.drops["too_many_sources"], 43)
        self.assertEqual(flows.pending[CLIENT].next_hop, HOP2)
        h.from_transceiver(b"\x01\x01\x00\x00", CLIENT, HOP2)
        h.clock.advance(MOVE_IDLE)
        h.from_client(binding_request(own), CLIENT)
        self.assertEqual(h.relay.drops["too_many_sources"], 44)
        self.assertIsNone(flows.confirmed[CLIENT].pending_hop)

    def test_hostile_traffic_reaches_nobody_and_gets_nothing_back(self) -> None:
        """Thousands of forged, random and garbage datagrams: nothing forwarded, zero bytes back."""
        h = Harness(self.backend)
        rng = random.Random(7983)
        for i, data in enumerate(_hostile_datagrams(rng, 7000)):
            h.from_client(data, (f"192.0.2.{i % 200 + 1}", 1024 + i))
        self.assertEqual(h.to_transceiver, [])
        self.assertEqual(h.to_client, [])
        self.assertEqual(len(h.relay.flows), 0)
        drops = h.relay.drops
        self.assertGreater(drops["bad_token"], 2000)
        self.assertGreater(drops["not_stun_unknown_source"], 1500)

    def test_spoofed_flood_keeps_bound_and_confirmed_flows(self) -> None:
        """Valid-looking but never confirmed flows from spoofed sources cannot push out real ones."""
        h = Harness(self.backend, max_flows=100)
        real = [(f"198.51.100.{i + 1}", 40000 + i) for i in range(20)]
        for client in real:
            h.confirm(client)
        # Tokens anyone can copy from answers, each replayed from 8 sources (the
        # per-ufrag bound; one token from more sources is test_one_session_...).
        replayed = [binding_request(token()) for _ in range(625)]
        for i in range(5000):
            h.from_client(replayed[i // 8], (f"100.64.{i // 250}.{i % 250 + 1}", 2000 + i))
            self.assertLessEqual(len(h.relay.flows), 100)
        flows = h.relay.flows
        self.assertEqual(len(flows.confirmed), 20)
        self.assertEqual(len(flows.pending), 80)
        self.assertEqual(flows.evicted_pending, 5000 - 80)
        self.assertEqual(h.relay.drops["too_many_sources"], 0)
        h.from_client(replayed[-1], ("100.64.99.1", 9))  # a ninth source for the last token
        self.assertEqual(h.relay.drops["too_many_sources"], 1)
        h.to_transceiver.clear()
        for client in real:
            h.from_client(srtp(), client)
        self.assertEqual(len(h.to_transceiver), 20)
        self.assertEqual(h.to_client, [(b"\x01\x01\x00\x00answer", c) for c in real])

    def test_full_of_confirmed_refuses_new_sessions(self) -> None:
        """With every slot confirmed, a new session is refused and counted."""
        h = Harness(self.backend, max_flows=2)
        h.confirm(("198.51.100.1", 1))
        h.confirm(("198.51.100.2", 2))
        h.from_client(binding_request(token()), ("198.51.100.3", 3))
        self.assertEqual(h.relay.drops["table_full"], 1)
        self.assertEqual(len(h.relay.flows), 2)


def _hostile_datagrams(rng: random.Random, count: int) -> Iterator[bytes]:
    """STUN with random, forged and tampered tokens, and random non-STUN bytes."""
    good = token().encode()
    alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    for i in range(count):
        kind = i % 7
        if kind == 0:
            ufrag = bytes(rng.choice(alphabet) for _ in range(36))
        elif kind == 1:
            ufrag = token(secret=OTHER_SECRET).encode()
        elif kind == 2:
            pos = rng.randrange(len(good))
            ufrag = good[:pos] + bytes([rng.choice(alphabet)]) + good[pos + 1 :]
            if ufrag == good:
                continue
        elif kind == 3:
            ufrag = bytes(rng.choice(alphabet) for _ in range(rng.randrange(1, 80)))
        elif kind == 4:
            yield rng.randbytes(rng.randrange(0, 1500))
            continue
        elif kind == 5:
            # STUN-shaped garbage: right cookie, random rest.
            body = rng.randbytes(rng.randrange(0, 64) * 4)
            yield bytes([rng.randrange(4), rng.randrange(256)]) + len(body).to_bytes(
                2, "big"
            ) + b"\x21\x12\xa4\x42" + rng.randbytes(12) + body
            continue
        else:
            yield b"\x80" + rng.randbytes(rng.randrange(12, 1200))
            continue
        yield binding_request(ufrag)


class SweepTests(SynchronousTestCase):
    """The sweep timer on the injected clock expires pending and idle flows, not live ones."""

    backend = "python"

    def test_sweep_expires_pending_and_idle_flows(self) -> None:
        """The sweep timer (on the injected clock) removes pending flows then idle ones."""
        h = Harness(self.backend, pending_timeout=10, flow_idle_timeout=40)
        h.relay.start()
        h.confirm()
        h.from_client(binding_request(token()), ("198.51.100.99", 9))
        h.clock.pump([1.0] * 11)
        self.assertEqual(len(h.relay.flows.pending), 0)
        self.assertEqual(len(h.relay.flows.confirmed), 1)
        h.clock.pump([1.0] * 30)
        self.assertEqual(len(h.relay.flows), 0)
        h.relay.stop()

    def test_flow_kept_alive_by_client_traffic(self) -> None:
        """Client packets keep a confirmed flow past the idle timeout."""
        h = Harness(self.backend, flow_idle_timeout=40)
        h.relay.start()
        h.confirm()
        for _ in range(100):
            h.clock.advance(1)
            h.from_client(srtp())
        self.assertIn(CLIENT, h.relay.flows.confirmed)
        h.relay.stop()


class FakeDatagramTransport:
    """Records writes (copied: the relay reuses its buffer)."""

    def __init__(self) -> None:
        self.written: Sent = []

    def write(self, data: Any, addr: tuple[str, int]) -> None:
        """Record one datagram."""
        self.written.append((bytes(data), addr))


class ProtocolTests(SynchronousTestCase):
    """ClientProtocol and TransceiverProtocol bind the relay to fake datagram transports."""

    def test_protocols_move_bytes_through_fake_transports(self) -> None:
        """The protocols bind the relay to their transports and feed it datagrams."""
        clock = Clock()
        relay = Relay(clock, codec(), RelaySettings(public_listen=INGRESS, transceiver_networks=NETS))
        public, internal = FakeDatagramTransport(), FakeDatagramTransport()
        client_proto, transceiver_proto = ClientProtocol(relay), TransceiverProtocol(relay)
        client_proto.makeConnection(public)  # type: ignore[arg-type]
        transceiver_proto.makeConnection(internal)  # type: ignore[arg-type]
        request = binding_request(token())
        client_proto.datagramReceived(request, CLIENT)
        self.assertEqual(internal.written, [(encap.encode(Envelope(CLIENT, INGRESS), request), HOP)])
        transceiver_proto.datagramReceived(encap.encode(Envelope(CLIENT, INGRESS), b"\x01\x01ok"), HOP)
        self.assertEqual(public.written, [(b"\x01\x01ok", CLIENT)])
        client_proto.doStop()
        with self.assertRaises(OSError):
            relay.send_to_client(b"x", CLIENT)  # the socket is gone: sends fail (and are counted)


class LoopbackSocketTests(TestCase):
    """The relay's two protocols on real loopback sockets, on the reactor."""

    timeout = 30
    backend = "python"
    public_host = "127.0.0.1"  # the clients' side; transceivers stay on IPv4 loopback

    def setUp(self) -> None:
        """Skip where this backend cannot run."""
        require_backend(self.backend)

    @defer.inlineCallbacks
    def test_real_loopback_sockets(self) -> Iterator[Any]:
        """Client -> relay (public port, this backend) -> transceiver socket -> relay -> client, for real."""
        sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sink.bind(("127.0.0.1", 0))
        sink.setblocking(False)
        family = socket.AF_INET6 if ":" in self.public_host else socket.AF_INET
        try:
            client = socket.socket(family, socket.SOCK_DGRAM)
            client.bind((self.public_host, 0))
        except OSError as e:
            raise SkipTest(f"no {self.public_host}: {e}")
        client.setblocking(False)
        hop = sink.getsockname()
        relay = Relay(
            reactor, RouteTokenCodec({1: SECRET}, 1),
            RelaySettings(public_listen=(self.public_host, 0), transceiver_networks=(ipaddress.ip_network("127.0.0.0/8"),)),
        )
        public = listen_client(relay, (self.public_host, 0), reactor, backend=self.backend)  # type: ignore[arg-type]
        internal = listen_transceiver(relay, ("127.0.0.1", 0), reactor, backend=self.backend)  # type: ignore[arg-type]
        relay_addr = (self.public_host, public.getHost().port)
        self.assertEqual(relay.batch is not None, self.backend == "recvmmsg")
        self.assertEqual(relay.return_batch is not None, self.backend == "recvmmsg")

        def receive(sock: socket.socket) -> list[tuple[bytes, Any]]:
            got = []
            while True:
                try:
                    got.append(sock.recvfrom(65536))
                except BlockingIOError:
                    return got

        try:
            request = binding_request(token(hop))
            client.sendto(request, relay_addr)
            client.sendto(srtp(), relay_addr)  # before confirmation: dropped
            yield deferLater(reactor, 0.05, lambda: None)
            got = receive(sink)
            self.assertEqual(len(got), 1)
            envelope, payload = encap.decode(got[0][0])
            self.assertEqual(payload, request)
            self.assertEqual(envelope.client, client.getsockname()[:2])
            internal_addr = got[0][1]
            sink.sendto(encap.encode(envelope, b"\x01\x01answer"), internal_addr)
            yield deferLater(reactor, 0.05, lambda: None)
            self.assertEqual([(d, a[:2]) for d, a in receive(client)], [(b"\x01\x01answer", relay_addr)])
            media = [srtp(100 + i) for i in range(20)]
            for m in media:
                client.sendto(m, relay_addr)
                sink.sendto(encap.encode(envelope, m[::-1]), internal_addr)
            yield deferLater(reactor, 0.1, lambda: None)
            self.assertEqual([encap.decode(d)[1] for d, _ in receive(sink)], media)
            self.assertEqual([d for d, _ in receive(client)], [m[::-1] for m in media])
        finally:
            yield public.stopListening()
            yield internal.stopListening()
            sink.close()
            client.close()


class PollingTests(SynchronousTestCase):
    """Under load the relay's ports read on a timer (``[relay] poll_ms``): nothing is lost or reordered, rounds are counted.

    Real loopback sockets on a clock that records the ports' readers; the
    test calls ``doRead`` where the reactor would.
    """

    backend = "python"
    interval = 0.002

    def setUp(self) -> None:
        require_backend(self.backend)
        self.clock = FdClock()
        self.relay = Relay(
            self.clock, codec(),
            RelaySettings(public_listen=("127.0.0.1", 0), transceiver_networks=(ipaddress.ip_network("127.0.0.0/8"),)),
        )
        self.public = listen_client(
            self.relay, ("127.0.0.1", 0), self.clock, backend=self.backend, poll_interval=self.interval  # type: ignore[arg-type]
        )
        self.internal = listen_transceiver(
            self.relay, ("127.0.0.1", 0), self.clock, backend=self.backend, poll_interval=self.interval  # type: ignore[arg-type]
        )
        self.addCleanup(self._close)
        self.client = self._socket()
        self.transceiver = self._socket()
        self.relay_address = ("127.0.0.1", self.public.getHost().port)
        self.internal_address = ("127.0.0.1", self.internal.getHost().port)
        # Confirm the client's flow to the transceiver socket, one wake-up each way.
        self.client.sendto(binding_request(token(self.transceiver.getsockname())), self.relay_address)
        self.public.doRead()
        (request, _), = drain(self.transceiver)
        self.envelope, _ = encap.decode(request)
        self.transceiver.sendto(encap.encode(self.envelope, b"\x01\x01answer"), self.internal_address)
        self.internal.doRead()
        self.assertEqual(drain(self.client), [(b"\x01\x01answer", self.relay_address)])
        self.clock.advance(1)

    def _socket(self) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(sock.close)
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        return sock

    def _close(self) -> None:
        for port in (self.public, self.internal):
            if port.connected:
                port.stopListening()
        self.clock.advance(0)

    def test_a_quick_second_wake_up_polls_and_every_packet_goes_on_in_order(self) -> None:
        """Two wake-ups of the public port within poll_ms: it stops waiting on the socket; the next poll forwards
        what came meanwhile, in order; an empty poll goes back to waiting. The return direction does the same."""
        media = [srtp(100 + i) for i in range(6)]
        self.client.sendto(media[0], self.relay_address)
        self.public.doRead()
        self.clock.advance(0.001)
        self.client.sendto(media[1], self.relay_address)
        self.public.doRead()
        self.assertNotIn(self.public, self.clock.readers)
        for m in media[2:]:
            self.client.sendto(m, self.relay_address)
        self.clock.advance(self.interval)
        self.assertEqual([encap.decode(d)[1] for d, _ in drain(self.transceiver)], media)
        self.clock.advance(self.interval)
        self.assertIn(self.public, self.clock.readers)

        replies = [m[::-1] for m in media]
        self.transceiver.sendto(encap.encode(self.envelope, replies[0]), self.internal_address)
        self.internal.doRead()
        self.internal.doRead()
        self.assertNotIn(self.internal, self.clock.readers)
        for r in replies[1:]:
            self.transceiver.sendto(encap.encode(self.envelope, r), self.internal_address)
        self.clock.advance(self.interval)
        self.assertEqual([d for d, _ in drain(self.client)], replies)
        self.clock.advance(self.interval)
        self.assertIn(self.internal, self.clock.readers)
        self.assertEqual(self.clock.getDelayedCalls(), [])

        rounds = self.relay.read_rounds
        self.assertEqual((rounds["client", False], rounds["client", True]), (3, 2))
        self.assertEqual((rounds["transceiver", False], rounds["transceiver", True]), (3, 2))
        text = generate_latest(make_registry(self.relay.metrics)).decode()
        self.assertIn('voiceedge_relay_read_rounds_total{port="client",trigger="poll"} 2.0', text)
        self.assertIn('voiceedge_relay_read_rounds_total{port="transceiver",trigger="readable"} 3.0', text)

    def test_wake_ups_far_apart_never_poll(self) -> None:
        """A datagram per 20 ms (one call): every one is read the moment its wake-up comes, no timer."""
        for i in range(3):
            self.client.sendto(srtp(), self.relay_address)
            self.public.doRead()
            self.clock.advance(0.02)
        self.assertEqual(len(drain(self.transceiver)), 3)
        self.assertIn(self.public, self.clock.readers)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.relay.read_rounds["client", True], 0)

    def test_closing_while_polling_leaves_no_timer(self) -> None:
        """Stopping the relay's ports cancels their next polls."""
        for port in (self.public, self.internal):
            port.doRead()
            port.doRead()
        self.assertEqual(len(self.clock.getDelayedCalls()), 2)
        self._close()
        self.assertEqual(self.clock.getDelayedCalls(), [])


class PollingTestsRecvmmsg(PollingTests):
    """PollingTests through the batch backend (the compiled helper)."""

    backend = "recvmmsg"


class BatchPathTests(SynchronousTestCase):
    """What only the recvmmsg backend does: one send per batch, order kept, failures counted."""

    def setUp(self) -> None:
        """Skip where the helper is not built."""
        require_backend("recvmmsg")

    def test_batch_keeps_order_around_the_slow_path(self) -> None:
        """Media queued before a consent check leaves before it; media after it, after it."""
        h = Harness("recvmmsg")
        h.confirm()
        h.to_transceiver.clear()
        assert h.batch is not None
        packets, payload = h.relay.to_transceiver_packets, h.relay.to_transceiver_bytes
        datagrams = [srtp(100), srtp(101), binding_request(token()), srtp(102)]
        entries = []
        for i, data in enumerate(datagrams):
            at = i * h.batch.stride + h.batch.headroom
            h.batch.buffer[at : at + len(data)] = data
            entries.append((at, len(data), CLIENT))
        h.relay.client_batch(entries)
        self.assertEqual([encap.decode(d)[1] for d, _ in h.to_transceiver], datagrams)
        self.assertEqual({a for _, a in h.to_transceiver}, {HOP})
        self.assertEqual(h.relay.to_transceiver_packets - packets, len(datagrams))
        self.assertEqual(h.relay.to_transceiver_bytes - payload, sum(len(d) for d in datagrams))

    def test_failed_sends_are_counted_and_the_rest_go(self) -> None:
        """A datagram the kernel refuses is counted as send_failed; the others in its batch still go."""
        h = Harness("recvmmsg")
        h.confirm()
        h.to_transceiver.clear()
        assert h.batch is not None
        packets_before = h.relay.to_transceiver_packets
        datagrams = [srtp(100 + i) for i in range(3)]
        entries = []
        for i, data in enumerate(datagrams):
            at = i * h.batch.stride + h.batch.headroom
            h.batch.buffer[at : at + len(data)] = data
            entries.append((at, len(data), CLIENT))
        h.batch.fail = 1
        h.relay.client_batch(entries)
        self.assertEqual([encap.decode(d)[1] for d, _ in h.to_transceiver], datagrams[1:])
        self.assertEqual(h.relay.drops["send_failed"], 1)
        self.assertEqual(h.relay.to_transceiver_packets - packets_before, 2)

    def test_return_batch_sends_in_place_and_leaves_the_rest_to_the_checks(self) -> None:
        """Answers for a confirmed flow go out of their slots in one send; others take every check, in order."""
        h = Harness("recvmmsg")
        h.confirm()
        h.to_client.clear()
        one_by_one: Sent = []
        h.relay.send_to_client = lambda d, a: one_by_one.append((bytes(d), a))
        assert h.return_batch is not None
        packets, payload = h.relay.to_client_packets, h.relay.to_client_bytes
        drops = dict(h.relay.drops)
        other_client = ("198.51.100.8", 1)
        datagrams = [
            (encap.encode(Envelope(CLIENT, INGRESS), b"\x80one"), HOP),
            (encap.encode(Envelope(CLIENT, INGRESS), b"\x80two"), ("192.0.2.1", 4000)),  # outside the networks
            (b"\x80not encapsulated", HOP),
            (encap.encode(Envelope(other_client, INGRESS), b"\x80three"), HOP),  # no flow
            (encap.encode(Envelope(CLIENT, INGRESS), b"\x80four"), HOP2),  # not the owner
            (encap.encode(Envelope(CLIENT, INGRESS), b""), HOP),  # an empty payload goes, as on the other path
        ]
        batch = h.return_batch
        entries = [batch.route(*batch.put(i % 4, d), source) for i, (d, source) in enumerate(datagrams[:4])]
        h.relay.transceiver_batch(entries)
        entries = [batch.route(*batch.put(i, d), source) for i, (d, source) in enumerate(datagrams[4:])]
        h.relay.transceiver_batch(entries)
        self.assertEqual(h.to_client, [(b"\x80one", CLIENT), (b"", CLIENT)])
        self.assertEqual(one_by_one, [])  # all through the batch
        self.assertEqual((h.relay.to_client_packets - packets, h.relay.to_client_bytes - payload), (2, 4))
        grown = {k: v - drops[k] for k, v in h.relay.drops.items() if v != drops[k]}
        self.assertEqual(grown, {"outside_transceiver_networks": 1, "bad_header": 1, "no_flow": 1,
                                 "wrong_transceiver": 1})
        h.return_batch.fail = 1
        at, n = h.return_batch.put(0, datagrams[0][0])
        h.relay.transceiver_batch([h.return_batch.route(at, n, HOP)])
        self.assertEqual(h.relay.drops["send_failed"], 1)

    def test_metrics_say_which_backend(self) -> None:
        """/metrics carries voiceedge_relay_batch_io{backend=...}."""
        for backend in ("python", "recvmmsg"):
            text = generate_latest(make_registry(Harness(backend).relay.metrics)).decode()
            self.assertIn(f'voiceedge_relay_batch_io{{backend="{backend}"}} 1.0', text)


class RoutingTestsRecvmmsg(RoutingTests):
    """RoutingTests through the batch backend (the compiled helper)."""

    backend = "recvmmsg"


class MoveTestsRecvmmsg(MoveTests):
    """MoveTests through the batch backend."""

    backend = "recvmmsg"


class FloodTestsRecvmmsg(FloodTests):
    """FloodTests through the batch backend."""

    backend = "recvmmsg"


class SweepTestsRecvmmsg(SweepTests):
    """SweepTests through the batch backend."""

    backend = "recvmmsg"


class LoopbackSocketTestsRecvmmsg(LoopbackSocketTests):
    """The real loopback sockets with recvmmsg/sendmmsg."""

    backend = "recvmmsg"


class LoopbackSocketTestsIPv6(LoopbackSocketTests):
    """The real sockets with an IPv6 client on the python backend."""

    public_host = "::1"


class LoopbackSocketTestsRecvmmsgIPv6(LoopbackSocketTests):
    """The real sockets with an IPv6 client through recvmmsg/sendmmsg."""

    backend = "recvmmsg"
    public_host = "::1"
