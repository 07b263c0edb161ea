# -*- test-case-name: tests.test_relay_tap -*-
"""The relay's settings: ``[relay]``, ``[token]``, ``[redis]`` and ``[http]``, typed and frozen."""

from __future__ import annotations

import ipaddress
import types
from dataclasses import dataclass
from typing import Mapping

from voiceedge import config as c
from voiceedge.wire.encap import MAX_CLIENT_PAYLOAD, MAX_HOPS
from voiceedge.config import Address, SettingError, section, setting
from voiceedge.redis_connection import RedisConnectionSettings
from voiceedge.workers import AUTO, ProcessSettings

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

__all__ = [
    "GlobalHopSettings",
    "HttpSettings",
    "RelayServiceSettings",
    "RelaySettings",
    "RedisSettings",
    "TokenSettings",
    "transceiver_networks",
]


def transceiver_networks(value: str) -> tuple[Network, ...]:
    """A non-empty comma-separated list of CIDR networks."""
    nets = c.networks(value)
    if not nets:
        raise ValueError("at least one network is required")
    return nets


@dataclass(frozen=True, slots=True)
class RelaySettings:
    """``[relay]``: the public and internal sockets and the flow table."""

    public_listen: Address = setting(c.address, "127.0.0.1:3478", "the public UDP address clients send to")
    ingress_address: Address | None = setting(
        c.optional_address, "", "public address put in headers (default: public_listen)"
    )
    internal_listen: Address = setting(
        c.address, "127.0.0.1:0", "UDP address for transceiver traffic (port 0: any free)"
    )
    transceiver_networks: tuple[Network, ...] = setting(
        transceiver_networks, "127.0.0.0/8", "networks transceivers live in (CIDR list)"
    )
    cluster: int = setting(c.integer(0, 65535), "0", "this relay's cluster id")
    max_flows: int = setting(c.integer(1, 10_000_000), "100000", "bound of the flow table")
    flow_idle_timeout: float = setting(c.seconds(10, 3600), "40", "a confirmed flow idle this long ends")
    pending_timeout: float = setting(c.seconds(1, 300), "10", "an unconfirmed flow lives this long")
    poll_ms: float = setting(
        c.number(0, 20),
        "2",
        "under load, read the public and internal sockets every this many ms rather than at each datagram "
        "(a datagram waits at most this long); 0: at each datagram",
    )
    max_payload: int = setting(
        c.integer(576, MAX_CLIENT_PAYLOAD),
        str(MAX_CLIENT_PAYLOAD),
        "larger client datagrams are dropped (default: any a client can send that one internal datagram holds)",
    )

    def __post_init__(self) -> None:
        if self.ingress_address is not None and (":" in self.ingress_address[0]) != (
            ":" in self.public_listen[0]
        ):
            raise SettingError("ingress_address", "must be the same family as public_listen")

    @property
    def ingress(self) -> Address:
        """The public address clients see: ``ingress_address``, else ``public_listen``."""
        return self.ingress_address or self.public_listen


@dataclass(frozen=True, slots=True)
class TokenSettings:
    """``[token]``: the fleet's route-token keys."""

    keys: Mapping[int, bytes] = setting(
        c.token_keys, "", "fleet route-token keys: <id>:<base64 secret>, ...", secret=True
    )
    issuing_key: int | None = setting(
        c.optional_integer(0, 255), "", "ignored by relays (transceivers issue)"
    )

    def __post_init__(self) -> None:
        if self.issuing_key is not None and self.keys and self.issuing_key not in self.keys:
            raise SettingError("issuing_key", f"{self.issuing_key} is not among the keys")


@dataclass(frozen=True, slots=True)
class RedisSettings(RedisConnectionSettings):
    """``[redis]`` of a relay: where Redis is (see RedisConnectionSettings), and the flow cache in it."""

    enabled: bool = setting(c.boolean, "yes", "cache confirmed flows in Redis")
    ttl: int = setting(c.integer(10, 86400), "120", "seconds a stored flow lives without refresh")
    lookup_rate: int = setting(c.integer(1, 100_000), "200", "lookups per second at most")
    negative_ttl: float = setting(c.seconds(0, 300), "5", "seconds a miss is remembered")


@dataclass(frozen=True, slots=True)
class HttpSettings:
    """``[http]``: the relay's small HTTP listener."""

    listen: str = setting(c.nonempty, "tcp:9090:interface=127.0.0.1", "Twisted endpoint for /metrics")


def cluster_relays(value: str) -> Mapping[int, Address]:
    """``<cluster>=<host:port>, ...``: the global-hop address of a relay of each other cluster."""
    relays: dict[int, Address] = {}
    for item in value.split(","):
        item = item.strip()
        if not item:
            continue
        cluster_text, sep, address_text = item.partition("=")
        if not sep:
            raise ValueError(f"expected <cluster>=<host:port>, got {item!r}")
        cluster = c.integer(0, 65535)(cluster_text.strip())
        if cluster in relays:
            raise ValueError(f"cluster {cluster} appears twice")
        relays[cluster] = c.address(address_text.strip())
    return types.MappingProxyType(relays)


@dataclass(frozen=True, slots=True)
class GlobalHopSettings:
    """``[global]``: the global relay hop between clusters (docs/relay.md)."""

    listen: Address | None = setting(
        c.optional_address, "", "UDP address other clusters' relays send to (empty: no global hop)"
    )
    address: Address | None = setting(
        c.optional_address, "", "that socket's address as other relays reach it (default: listen)"
    )
    networks: tuple[Network, ...] = setting(c.networks, "", "where other relays are (CIDR list)")
    relays: Mapping[int, Address] = setting(
        cluster_relays, "", "a relay for each other cluster: <cluster>=<host:port>, ..."
    )
    directory: bool = setting(c.boolean, "no", "publish this relay's global-hop address in Redis, and read others'")
    relay_id: str = setting(c.text, "", "this relay's id in the directory (default: <hostname>-<pid>)")
    max_hops: int = setting(c.integer(1, MAX_HOPS), "2", "relay-to-relay hops a new flow may take")

    def __post_init__(self) -> None:
        for cluster, relay in self.relays.items():
            if not any(ipaddress.ip_address(relay[0]) in net for net in self.networks
                       if ipaddress.ip_address(relay[0]).version == net.version):
                raise SettingError("relays", f"cluster {cluster}'s relay {relay[0]} is outside networks")
        if self.directory and self.listen is None:
            raise SettingError("directory", "needs listen (the address to publish)")

    @property
    def advertised(self) -> Address | None:
        """Where other relays send: ``address``, else ``listen``."""
        return self.address or self.listen


@dataclass(frozen=True, slots=True)
class RelayServiceSettings:
    """Everything ``twistd voiceedge-relay`` reads from its INI file."""

    relay: RelaySettings = section(RelaySettings)
    token: TokenSettings = section(TokenSettings)
    redis: RedisSettings = section(RedisSettings)
    http: HttpSettings = section(HttpSettings)
    global_hop: GlobalHopSettings = section(GlobalHopSettings, name="global")
    process: ProcessSettings = section(ProcessSettings)

    def __post_init__(self) -> None:
        if not self.token.keys:
            raise SettingError("keys", "at least one key is required", section="token")
        if self.relay.cluster in self.global_hop.relays:
            raise SettingError("relays", "names this relay's own cluster", section="global")
        if self.global_hop.directory and not self.redis.enabled:
            raise SettingError("directory", "needs [redis] enabled", section="global")
        if self.global_hop.listen is not None and self.process.workers not in (AUTO, 1):
            raise SettingError("workers", "the global hop runs in one process: 1 or auto", section="process")

    @property
    def process_count(self) -> int:
        """How many relay processes run: ``[process] workers`` (auto: one per core; one with the global hop)."""
        if self.global_hop.listen is not None:
            return 1
        return self.process.count
