# -*- test-case-name: tests.test_relay_router -*-
"""Which relay takes the global hop for each cluster: from the configuration, or from Redis.

Each relay with a global-hop socket can write a :class:`RelayRecord` (its
cluster and the address of that socket) to Redis with a TTL, with the same
heartbeat as the transceiver registry, and read everyone else's. Keys
(docs/relay.md)::

    voiceedge:relay:<id>  ->  {"v":1,"id":..., "cluster": 2, "peer": "10.2.0.4:3479"}, PX ttl
    voiceedge:relays      ->  SET of ids
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from typing import Mapping

from voiceedge import config as c
from voiceedge.config import Address
from voiceedge.fleet.registry import RegistryView, transceiver_id

__all__ = ["RELAY_INDEX_KEY", "RELAY_KEY_PREFIX", "RelayDirectory", "RelayRecord"]

RELAY_KEY_PREFIX = "voiceedge:relay:"
RELAY_INDEX_KEY = "voiceedge:relays"


@dataclass(frozen=True, slots=True)
class RelayRecord:
    """A relay's entry in the directory: its cluster and its global-hop address."""

    id: str
    cluster: int
    peer: Address

    def to_json(self) -> str:
        """The stored value."""
        return json.dumps({"v": 1, "id": self.id, "cluster": self.cluster, "peer": c.format_address(self.peer)})

    @classmethod
    def from_json(cls, value: str | bytes) -> RelayRecord:
        """Parse a stored value; ValueError for anything malformed."""
        if len(value) > 1024:
            raise ValueError("record too large")
        try:
            d = json.loads(value)
        except (ValueError, UnicodeDecodeError):
            raise ValueError("not JSON") from None
        if not isinstance(d, dict) or d.get("v") != 1:
            raise ValueError("not a version 1 relay record")
        cluster, peer, record_id = d.get("cluster"), d.get("peer"), d.get("id")
        if not isinstance(cluster, int) or isinstance(cluster, bool) or not 0 <= cluster <= 0xFFFF:
            raise ValueError("bad cluster")
        if not isinstance(peer, str) or not isinstance(record_id, str):
            raise ValueError("bad peer or id")
        return cls(transceiver_id(record_id), cluster, c.address(peer))


class RelayDirectory:
    """``relay_for(cluster)``: a configured relay first, else one the Redis directory knows.

    Among several relays of a cluster in Redis, the choice is stable (by a
    hash of the asking relay's id), so one relay's flows do not flap between
    them, and different relays spread over them.
    """

    def __init__(
        self,
        configured: Mapping[int, Address],
        view: RegistryView[RelayRecord] | None = None,
        own_id: str = "",
    ) -> None:
        self.configured = dict(configured)
        self.view = view
        self._salt = zlib.crc32(own_id.encode())

    def relay_for(self, cluster: int) -> Address | None:
        """The global-hop address of a relay of ``cluster``, or None."""
        configured = self.configured.get(cluster)
        if configured is not None or self.view is None:
            return configured
        peers = sorted(r.peer for r in self.view.records.values() if r.cluster == cluster)
        if not peers:
            return None
        return peers[self._salt % len(peers)]
