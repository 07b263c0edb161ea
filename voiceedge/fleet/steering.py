# -*- test-case-name: tests.test_steering -*-
"""Where a new call goes: the client's region from its network, then the least-loaded transceiver serving there.

Pure functions and small classes, no I/O: the front door gives them the
client's address (after :func:`client_address` has honoured the trusted
proxies) and the registry's records.
"""

from __future__ import annotations

import ipaddress
import random
from typing import Collection, Iterable, Mapping, Sequence

from voiceedge.config import Address, SettingError
from voiceedge.fleet.registry import TransceiverRecord
from voiceedge.fleet.settings import RegionSettings
from voiceedge.signaling.client_address import IPAddress

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

__all__ = ["RegionMap", "choose_transceiver"]


class RegionMap:
    """Client address to region, by longest matching prefix, with a default region."""

    def __init__(self, regions: Mapping[str, RegionSettings], default: str) -> None:
        if default not in regions:
            raise SettingError("default_region", f"no [region.{default}] section", section="fleet")
        self.regions = dict(regions)
        self.default = default
        table: list[tuple[int, Network, str]] = []
        for name, region in regions.items():
            for net in region.networks:
                table.append((net.prefixlen, net, name))
        table.sort(key=lambda item: -item[0])
        self._table = table

    def region_for(self, client: IPAddress | None) -> str:
        """The region whose networks hold ``client`` most specifically; the default otherwise."""
        if client is not None:
            for _, net, name in self._table:
                if client.version == net.version and client in net:
                    return name
        return self.default

    def relay_for(self, region: str) -> Address:
        """The relay address a region's clients are given."""
        return self.regions[region].relay

    def fallback_for(self, region: str) -> tuple[str, ...]:
        """The regions to try, in order, when ``region`` has no room."""
        return self.regions[region].fallback


def choose_transceiver(
    records: Iterable[TransceiverRecord],
    region: str,
    *,
    spill: bool = True,
    max_cpu: float = 0.9,
    exclude: Collection[str] = (),
    rng: random.Random | None = None,
    fallback: Sequence[str] = (),
) -> TransceiverRecord | None:
    """The least-loaded transceiver that is serving, admitting, has room and is not overloaded, in ``region``.

    A region with none tries the ``fallback`` regions in order; then, with
    ``spill``, the least-loaded such transceiver anywhere (the client's first packet then crosses to its
    region through the global relay hop). Load is whichever is nearer its
    limit, sessions over capacity or CPU over ``max_cpu`` (a few transcoding
    calls with Silero can fill a core that many passthrough calls would not),
    then sessions, then CPU; ties are broken at random so front doors do not
    all pick the same one.
    """
    usable = [
        r for r in records
        if r.serving and r.admitting and r.sessions < r.capacity and r.cpu <= max_cpu and r.id not in exclude
    ]
    pool = [r for r in usable if r.region == region]
    for other in fallback:
        if pool:
            break
        pool = [r for r in usable if r.region == other]
    if not pool and spill:
        pool = usable
    if not pool:
        return None
    def rank(r: TransceiverRecord) -> tuple[float, float, float]:
        # In tenths: an idle process's CPU wanders by a few hundredths, which
        # must not outweigh the sessions each already has.
        return (round(max(r.load, r.cpu / max_cpu), 1), r.load, round(r.cpu, 1))

    best = min(map(rank, pool))
    tied = [r for r in pool if rank(r) == best]
    return (rng or random).choice(tied)
