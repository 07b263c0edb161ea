# -*- test-case-name: tests.test_http_security -*-
"""``[signaling]``: the HTTP listener of a signaling site and who may use it, typed and frozen.

The access rule (issue 9): a service whose signaling listens only on
loopback (or a UNIX socket) may run without keys; one that listens on any
other address refuses to start without an ``api_keys_file``, unless the
section says ``auth = none`` in so many words.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Callable

from twisted.internet.interfaces import IReactorTime

from voiceedge import config as c
from voiceedge.config import SettingError, setting
from voiceedge.signaling.auth import ClientSecrets, Credentials
from voiceedge.signaling.cors import parse_origin
from voiceedge.signaling.keys import ApiKeys, KeysFileError, load_keys_file
from voiceedge.signaling.limits import CallLimits, RateLimit
from voiceedge.signaling.site import HttpLimits

__all__ = ["SignalingSettings", "listens_on_loopback"]


def _one_of(*allowed: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text.lower() not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}")
        return text.lower()

    return parse


def _origins(text: str) -> tuple[str, ...]:
    return tuple(parse_origin(o) for o in c.words(text))

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class SignalingSettings:
    """``[signaling]``: where the HTTP API listens, what it accepts, and from whom."""

    listen: str = setting(c.nonempty, "tcp:8080:interface=127.0.0.1", "Twisted endpoint for HTTP signaling")
    demo_page: bool = setting(c.boolean, "no", "serve the demo page at /")
    max_body_bytes: int = setting(c.integer(1024, 1 << 20), "65536", "largest SDP offer accepted")
    cors_origins: tuple[str, ...] = setting(
        _origins, "", "origins allowed to call the API from a browser (or *)"
    )
    trusted_proxies: tuple[Network, ...] = setting(
        c.networks, "", "proxies (CIDR list) whose X-Forwarded-For is believed for the caller's address"
    )
    auth: str = setting(
        _one_of("auto", "keys", "none"),
        "auto",
        "keys: API keys required; none: open to anyone; auto: keys when api_keys_file is set,"
        " open on loopback, else refuse to start",
    )
    api_keys_file: str = setting(
        c.text, "", "file of API key hashes (python -m voiceedge.signaling.keys new NAME)"
    )
    client_secret_ttl: float = setting(c.seconds(10, 7200), "60", "lifetime of a client secret by default")
    client_secret_max_ttl: float = setting(
        c.seconds(10, 7200), "600", "longest lifetime a client secret may ask for"
    )
    calls_per_minute_per_address: float = setting(
        c.number(0, 1e6), "60", "new calls a minute from one address, IPv6 /64 (0: no limit)"
    )
    call_burst_per_address: float = setting(c.number(1, 1e6), "20", "new calls one address may make at once")
    calls_per_minute_per_key: float = setting(
        c.number(0, 1e7), "600", "new calls a minute per API key (0: no limit)"
    )
    call_burst_per_key: float = setting(c.number(1, 1e7), "100", "new calls one API key may make at once")
    max_calls_per_key: int = setting(
        c.integer(0, 1_000_000), "100", "calls one API key holds open at once (0: no cap)"
    )
    max_connections_per_address: int = setting(
        c.integer(0, 100_000), "32", "open HTTP connections from one address, IPv6 /64 (0: no cap)"
    )
    request_timeout: float = setting(c.seconds(1, 300), "10", "seconds for a whole HTTP request to arrive")
    metrics_listen: str = setting(
        c.text, "", "endpoint for /metrics alone (empty: /metrics on listen, behind an API key when auth is on)"
    )

    def __post_init__(self) -> None:
        if self.auth == "none" and self.api_keys_file:
            raise SettingError("auth", "none, but api_keys_file is set: choose one")
        if self.auth == "keys" and not self.api_keys_file:
            raise SettingError("auth", "keys needs api_keys_file")
        if self.api_keys_file:
            # Read now so a bad file stops start-up; build_site reads it again.
            self.api_keys()
        elif self.auth == "auto" and not listens_on_loopback(self.listen):
            raise SettingError(
                "listen",
                f"{self.listen} is reachable beyond this machine and no api_keys_file is set:"
                " refusing to start open to anyone. Set api_keys_file"
                " (python -m voiceedge.signaling.keys new NAME), or auth = none to run open on purpose",
            )
        if self.client_secret_ttl > self.client_secret_max_ttl:
            raise SettingError("client_secret_ttl", "is over client_secret_max_ttl")

    @property
    def open(self) -> bool:
        """Whether callers need no credential."""
        return not self.api_keys_file

    def api_keys(self) -> ApiKeys | None:
        """The keys in ``api_keys_file`` (read now), or ``None`` for an open service."""
        if not self.api_keys_file:
            return None
        try:
            keys = load_keys_file(self.api_keys_file)
        except KeysFileError as e:
            raise SettingError("api_keys_file", str(e)) from None
        if not len(keys):
            raise SettingError("api_keys_file", f"{self.api_keys_file} holds no key")
        return keys

    def checker(self, clock: IReactorTime) -> Credentials:
        """The credential checker these settings describe, on ``clock``."""
        return Credentials(
            self.api_keys(),
            ClientSecrets(clock, default_ttl=self.client_secret_ttl, max_ttl=self.client_secret_max_ttl),
        )

    @property
    def http_limits(self) -> HttpLimits:
        """Bounds on each HTTP client."""
        return HttpLimits(self.max_body_bytes, self.request_timeout, self.max_connections_per_address)

    @property
    def call_limits(self) -> CallLimits:
        """Bounds on how many calls each caller opens."""
        return CallLimits(
            per_address=RateLimit(self.calls_per_minute_per_address, self.call_burst_per_address),
            per_key=RateLimit(self.calls_per_minute_per_key, self.call_burst_per_key),
            max_calls_per_key=self.max_calls_per_key,
        )


def _endpoint_fields(description: str) -> tuple[str, list[str], dict[str, str]]:
    """Split a Twisted endpoint string into its type, positional and keyword parts (``\\:`` escapes)."""
    parts: list[str] = []
    current = ""
    escaped = False
    for char in description:
        if escaped:
            current += char
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ":":
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    kind, args, kwargs = parts[0].lower(), [], {}
    for part in parts[1:]:
        key, sep, value = part.partition("=")
        if sep:
            kwargs[key] = value
        else:
            args.append(part)
    return kind, args, kwargs


def listens_on_loopback(endpoint: str) -> bool:
    """Whether a server endpoint string accepts only local clients (loopback or a UNIX socket)."""
    kind, _, kwargs = _endpoint_fields(endpoint)
    if kind == "unix":
        return True
    if kind not in ("tcp", "tcp6", "ssl"):
        return False  # systemd, onion, plugins: cannot tell, so not loopback
    interface = kwargs.get("interface", "")
    if interface == "localhost":
        return True
    try:
        return ipaddress.ip_address(interface.strip("[]")).is_loopback
    except ValueError:
        return False  # empty: every address
