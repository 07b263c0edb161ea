# -*- test-case-name: tests.test_fleet_settings -*-
"""The fleet's settings: ``[internal]``, ``[registry]`` and ``[drain]`` of a transceiver; ``[fleet]`` and ``[region.*]`` of the front door."""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from dataclasses import dataclass

from voiceedge import config as c
from voiceedge.config import Address, SettingError, setting

__all__ = [
    "DrainSettings",
    "FleetSettings",
    "InternalApiSettings",
    "RegionSettings",
    "RegistrySettings",
    "fleet_secret",
    "optional_transceiver_id",
    "session_id",
]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_SESSION_ID = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def fleet_secret(value: str) -> str:
    """The secret the front door and transceivers share: empty (no internal API), or 32+ characters."""
    if value and len(value) < 32:
        raise ValueError("must be at least 32 characters (python -c 'import secrets; print(secrets.token_urlsafe(32))')")
    if any(ch.isspace() for ch in value):
        raise ValueError("must not contain spaces")
    return value


def session_id(value: str) -> str:
    """A session id a front door may choose: 16-64 URL-safe characters."""
    if not _SESSION_ID.match(value):
        raise ValueError("must be 16-64 characters of A-Z, a-z, 0-9, _ and -")
    return value


@dataclass(frozen=True, slots=True)
class InternalApiSettings:
    """``[internal]``: the internal API the front door calls."""

    listen: str = setting(c.text, "", "Twisted endpoint of the internal API (empty: none)")
    address: Address | None = setting(
        c.optional_address, "", "where front doors reach it, for the registry (default: from listen)"
    )
    secret: str = setting(fleet_secret, "", "the fleet secret front doors send as a Bearer token", secret=True)

    def __post_init__(self) -> None:
        if self.listen and not self.secret:
            raise SettingError("secret", "required when listen is set")

    @property
    def reachable_at(self) -> Address | None:
        """``address``, else the host and port of a ``tcp:PORT:interface=HOST`` listen."""
        if self.address is not None:
            return self.address
        match = re.match(r"^tcp:(\d+):interface=([0-9A-Fa-f.:]+)$", self.listen.replace("\\:", ":"))
        if match is None:
            return None
        host = match.group(2)
        if host in ("0.0.0.0", "::"):
            return None
        return (host, int(match.group(1)))


def optional_transceiver_id(value: str) -> str:
    """Empty (``<hostname>-<pid>``), or 1-64 of ``A-Z a-z 0-9 _ -``."""
    if value and not _ID.match(value):
        raise ValueError("must be 1-64 characters of A-Z, a-z, 0-9, _ and -")
    return value


@dataclass(frozen=True, slots=True)
class RegistrySettings:
    """``[registry]``: this transceiver's record in the Redis registry (docs/fleet.md)."""

    enabled: bool = setting(c.boolean, "no", "write this transceiver's record to the registry in [redis]")
    id: str = setting(optional_transceiver_id, "", "this transceiver's id (default: <hostname>-<pid>)")
    region: str = setting(c.nonempty, "default", "the region front doors see it in")
    heartbeat: float = setting(c.seconds(0.1, 60), "2", "seconds between writes of the record")
    ttl: float = setting(c.seconds(0.5, 600), "6", "seconds the record lives without a heartbeat")

    def __post_init__(self) -> None:
        if self.heartbeat >= self.ttl:
            raise SettingError("ttl", "must be longer than the heartbeat")

    @property
    def resolved_id(self) -> str:
        """``id``, or ``<hostname>-<pid>`` made of allowed characters."""
        if self.id:
            return self.id
        host = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname().split(".")[0]) or "transceiver"
        return f"{host[:50]}-{os.getpid()}"


@dataclass(frozen=True, slots=True)
class DrainSettings:
    """``[drain]``: how a transceiver leaves (SIGTERM, or POST /internal/v1/drain)."""

    grace_period: float = setting(
        c.seconds(0, 86400), "3600", "seconds live calls may go on while draining; then they are ended"
    )


@dataclass(frozen=True, slots=True)
class FleetSettings:
    """``[fleet]`` of the front door: how it reaches and chooses transceivers."""

    secret: str = setting(fleet_secret, "", "the fleet secret of the transceivers' internal APIs", secret=True)
    default_region: str = setting(c.nonempty, "default", "the region of clients no [region.*] network holds")
    spill: bool = setting(c.boolean, "yes", "when a region has no room, use the least-loaded transceiver elsewhere")
    max_cpu: float = setting(c.number(0.01, 1000), "0.9", "transceivers using more CPU (cores) are not chosen")
    request_timeout: float = setting(c.seconds(0.1, 60), "5", "seconds for a transceiver to answer")
    retry_after: int = setting(c.integer(1, 3600), "2", "Retry-After of a 503 when no transceiver has room")
    avoid_failed: float = setting(c.seconds(0, 3600), "10", "seconds a transceiver that failed a request is not chosen")
    refresh_interval: float = setting(c.seconds(0.1, 60), "1", "seconds between reads of the registry")
    max_stale: float = setting(c.seconds(1, 3600), "30", "how long the last registry copy is used while Redis is away")
    reconcile_interval: float = setting(
        c.seconds(1, 3600), "15",
        "seconds between comparisons of the calls recorded in Redis with each transceiver's open sessions",
    )


@dataclass(frozen=True, slots=True)
class RegionSettings:
    """``[region.<name>]``: a region's clients, and the relay address they are given."""

    relay: Address = setting(c.address, "127.0.0.1:3478", "the relay VIP put in answers for this region's clients")
    networks: tuple[Network, ...] = setting(c.networks, "", "client networks (CIDR list) that belong to this region")
    fallback: tuple[str, ...] = setting(
        c.words, "", "regions to try in order when this one has no room (then any, with [fleet] spill)"
    )
