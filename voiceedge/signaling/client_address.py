# -*- test-case-name: tests.test_steering -*-
"""The caller's IP address: the TCP peer, or further left in ``X-Forwarded-For`` while each hop is a trusted proxy."""

from __future__ import annotations

import ipaddress
from typing import Collection, Sequence

__all__ = ["IPAddress", "Network", "client_address", "is_trusted"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


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
        current: IPAddress = _unmapped(ipaddress.ip_address(peer))
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


def is_trusted(peer: str, trusted: Collection[Network]) -> bool:
    """Whether ``peer`` (an IP address as text) is one of the ``trusted`` proxies."""
    try:
        address = _unmapped(ipaddress.ip_address(peer.partition("%")[0]))
    except ValueError:
        return False
    return _trusted(address, trusted)


def _unmapped(address: IPAddress) -> IPAddress:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address
