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

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

__all__ = ["RegionMap", "choose_transceiver", "client_address"]


def client_address(peer: str, forwarded_for: Sequence[bytes], trusted: Collection[Network]) -> IPAddress | None:
    """The client's IP address: ``peer``, or further left in ``X-Forwarded-For`` while each hop is trusted.

    ``forwarded_for`` holds every ``X-Forwarded-For`` header value in order.
    Walking from the right, an address is believed only when the hop that
    wrote it (the one to its right) is a trusted proxy, so a client cannot
    choose its own region by writing the header itself. An entry that does
    not parse stops the walk at the hop that wrote it. ``None`` when
    ``peer`` itself is not an IP address (a UNIX socket).
    """
    try:
        current: IPAddress = ipaddress.ip_address(peer)
    except ValueError:
        return None
    chain: list[str] = []
    for value in forwarded_for:
        chain.extend(part.strip() for part in value.decode("latin-1").split(","))
    while chain and _trusted(current, trusted):
        entry = chain.pop()
        try:
            current = _unmapped(ipaddress.ip_address(entry))
        except ValueError:
            break
    return current


def _trusted(address: IPAddress, trusted: Collection[Network]) -> bool:
    return any(address.version == net.version and address in net for net in trusted)


def _unmapped(address: IPAddress) -> IPAddress:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


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


def choose_transceiver(
    records: Iterable[TransceiverRecord],
    region: str,
    *,
    spill: bool = True,
    max_cpu: float = 0.9,
    exclude: Collection[str] = (),
    rng: random.Random | None = None,
) -> TransceiverRecord | None:
    """The least-loaded transceiver that is serving, has room and is not overloaded, in ``region``.

    With ``spill``, a region with none falls back to the least-loaded such
    transceiver anywhere (the client's first packet then crosses to its
    region through the global relay hop). Load is sessions over capacity,
    then CPU; ties are broken at random so front doors do not all pick the
    same one.
    """
    usable = [
        r for r in records
        if r.serving and r.sessions < r.capacity and r.cpu <= max_cpu and r.id not in exclude
    ]
    local = [r for r in usable if r.region == region]
    pool = local or (usable if spill else [])
    if not pool:
        return None
    best = min((r.load, round(r.cpu, 1)) for r in pool)
    tied = [r for r in pool if (r.load, round(r.cpu, 1)) == best]
    return (rng or random).choice(tied)
