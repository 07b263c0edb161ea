# -*- test-case-name: tests.test_relay_router -*-
"""Where a new flow goes: this cluster's transceiver, or another cluster's relay (the global hop).

The relay asks two questions of a packet. The flow table
(:mod:`voiceedge.relay.flows`) says *whether* it may go: pending,
confirmed, bounds, expiry. The :class:`Router` says *where* a new flow
goes, from the route token's cluster and transceiver: a token for this
relay's cluster goes to the transceiver it names (if that address is inside
``transceiver_networks``); a token for another cluster goes to a relay of
that cluster, found in the relay's configuration or in Redis
(:class:`~voiceedge.relay.directory.RelayDirectory`). The hot path never
asks: only a new flow (or a check that would move one) does.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

from zope.interface import Interface, implementer

from voiceedge.relay.flows import Address
from voiceedge.wire.route_token import Route

__all__ = ["IRouter", "NextHop", "Router"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_CACHE_MAX = 4096


@dataclass(frozen=True, slots=True)
class NextHop:
    """Where a flow goes: a transceiver of this cluster, or (``via_relay``) another cluster's relay."""

    address: Address
    via_relay: bool = False
    #: The token's cluster (written with the flow to the cache), when known.
    cluster: int | None = None


class IRouter(Interface):
    """Decides where a new flow goes; never asked on the hot path."""

    def route(route: Route) -> NextHop | str:
        """The next hop for a verified token's route, or the drop reason (a ``DROP_REASONS`` name)."""

    def may_restore(cluster: int, hop: Address) -> bool:
        """Whether a flow found in the cache, for ``cluster`` through ``hop``, may be installed."""

    def is_peer(host: str) -> bool:
        """Whether ``host`` is a relay of the fleet allowed to talk to this one."""


def _family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


@implementer(IRouter)
class Router:
    """Routes by cluster: this one's transceivers inside the networks, other clusters through their relays.

    ``relay_for(cluster)`` gives the address of a relay of another cluster
    (its global-hop socket), or ``None`` when none is known: configured
    peers first, then the Redis directory. ``peer_networks`` are where
    other relays may send from.
    """

    def __init__(
        self,
        cluster: int,
        transceiver_networks: Sequence[Network],
        internal_family: int,
        relay_for: Callable[[int], Address | None] = lambda cluster: None,
        peer_networks: Sequence[Network] = (),
    ) -> None:
        self.cluster = cluster
        self.networks = tuple(transceiver_networks)
        self.internal_family = internal_family
        self.relay_for = relay_for
        self.peer_networks = tuple(peer_networks)
        self._hops: dict[Address, bool] = {}
        self._peers: dict[str, bool] = {}

    def route(self, route: Route) -> NextHop | str:
        """A transceiver here, a relay of the token's cluster, or why not."""
        if route.cluster == self.cluster:
            hop = route.transceiver
            if not self.transceiver_allowed(hop):
                return "route_outside_networks"
            return NextHop(hop, cluster=route.cluster)
        relay = self.relay_for(route.cluster)
        if relay is None:
            return "wrong_cluster"
        if _family(relay[0]) != self.internal_family:
            return "route_outside_networks"
        return NextHop(relay, via_relay=True, cluster=route.cluster)

    def may_restore(self, cluster: int, hop: Address) -> bool:
        """This cluster's transceiver inside the networks, or the relay other clusters go through now."""
        if cluster == self.cluster:
            return self.transceiver_allowed(hop)
        return self.relay_for(cluster) == hop

    def transceiver_allowed(self, hop: Address) -> bool:
        """Whether the relay may forward to ``hop``: right family, inside the networks (cached)."""
        allowed = self._hops.get(hop)
        if allowed is None:
            allowed = _family(hop[0]) == self.internal_family and _inside(hop[0], self.networks)
            if len(self._hops) >= _CACHE_MAX:
                self._hops.clear()
            self._hops[hop] = allowed
        return allowed

    def is_peer(self, host: str) -> bool:
        """Whether ``host`` is inside ``peer_networks`` (cached)."""
        allowed = self._peers.get(host)
        if allowed is None:
            allowed = _inside(host, self.peer_networks)
            if len(self._peers) >= _CACHE_MAX:
                self._peers.clear()
            self._peers[host] = allowed
        return allowed


def _inside(host: str, networks: Sequence[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return any(ip.version == net.version and ip in net for net in networks)


def static_relays(peers: Mapping[int, Address]) -> Callable[[int], Address | None]:
    """``relay_for`` from a fixed table of cluster to relay address."""
    table = dict(peers)
    return table.get
