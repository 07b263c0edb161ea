# -*- test-case-name: tests.test_config -*-
"""INI configuration: a schema of sections and keys, validated at start-up."""

from __future__ import annotations

import binascii
import configparser
import ipaddress
from dataclasses import dataclass
from typing import Any, Callable, Mapping

Address = tuple[str, int]


class ConfigError(Exception):
    """A configuration file is unusable; the message names file, section and key."""


@dataclass(frozen=True, slots=True)
class Key:
    """One allowed key: how to parse its text, and its default."""

    parse: Callable[[str], Any]
    default: str
    help: str = ""


Schema = Mapping[str, Mapping[str, Key]]


class Config:
    """Parsed, validated values: ``config["section"]["key"]``."""

    def __init__(self, source: str, values: dict[str, dict[str, Any]]) -> None:
        self.source = source
        self._values = values

    def __getitem__(self, section: str) -> dict[str, Any]:
        return self._values[section]

    def __setitem__(self, section: str, values: dict[str, Any]) -> None:
        """Set a whole section (for services that derive settings of their own)."""
        self._values[section] = values

    def sections(self) -> list[str]:
        """The schema's sections, in order."""
        return list(self._values)


def load_config(schema: Schema, path: str | None = None, text: str | None = None) -> Config:
    """Read ``path`` (or ``text``) against ``schema``; defaults fill what is absent.

    Unknown sections or keys and values that do not parse raise
    :class:`ConfigError` naming the file, section and key. With neither
    ``path`` nor ``text`` every key takes its default.
    """
    source = path if path is not None else "<embedded defaults>"
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    try:
        if path is not None:
            with open(path, encoding="utf-8") as f:
                parser.read_file(f, source=path)
        elif text is not None:
            parser.read_string(text, source=source)
    except OSError as e:
        raise ConfigError(f"{source}: cannot read: {e.strerror or e}") from e
    except (configparser.Error, UnicodeDecodeError) as e:
        raise ConfigError(f"{source}: {e}") from e

    for section in parser.sections():
        if section not in schema:
            allowed = ", ".join(sorted(schema))
            raise ConfigError(f"{source}: unknown section [{section}] (allowed: {allowed})")
        for written in parser[section]:
            if written not in schema[section]:
                allowed = ", ".join(sorted(schema[section]))
                raise ConfigError(
                    f"{source}: [{section}] unknown key {written!r} (allowed: {allowed})"
                )

    values: dict[str, dict[str, Any]] = {}
    for section, keys in schema.items():
        values[section] = {}
        for name, key in keys.items():
            raw = key.default
            if parser.has_option(section, name):
                raw = parser.get(section, name)
            try:
                values[section][name] = key.parse(raw.strip())
            except ValueError as e:
                raise ConfigError(f"{source}: [{section}] {name} = {raw!r}: {e}") from e
    return Config(source, values)


def integer(minimum: int, maximum: int) -> Callable[[str], int]:
    """A parser for a whole number in ``[minimum, maximum]``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise ValueError("not a whole number") from None
        if not minimum <= value <= maximum:
            raise ValueError(f"must be between {minimum} and {maximum}")
        return value

    return parse


def seconds(minimum: float, maximum: float) -> Callable[[str], float]:
    """A parser for a duration in seconds in ``[minimum, maximum]``."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise ValueError("not a number of seconds") from None
        if not minimum <= value <= maximum:
            raise ValueError(f"must be between {minimum} and {maximum} seconds")
        return value

    return parse


def number(minimum: float, maximum: float) -> Callable[[str], float]:
    """A parser for a number in ``[minimum, maximum]``."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise ValueError("not a number") from None
        if not minimum <= value <= maximum:
            raise ValueError(f"must be between {minimum} and {maximum}")
        return value

    return parse


def boolean(text: str) -> bool:
    """yes/no, true/false, on/off, 1/0."""
    lowered = text.lower()
    if lowered in ("yes", "true", "on", "1"):
        return True
    if lowered in ("no", "false", "off", "0"):
        return False
    raise ValueError("must be yes or no")


def text(value: str) -> str:
    """Any text, kept as written."""
    return value


def nonempty(value: str) -> str:
    """Text that must not be empty."""
    if not value:
        raise ValueError("must not be empty")
    return value


def address(value: str) -> Address:
    """``host:port`` or ``[v6]:port`` with a literal IP address."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not host:
        raise ValueError("expected host:port")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{host!r} is not an IP address") from None
    port = integer(0, 65535)(port_text)
    return host, port


def optional_address(value: str) -> Address | None:
    """An :func:`address`, or nothing when empty."""
    return address(value) if value else None


def networks(value: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """A comma-separated list of CIDR networks."""
    result = []
    for item in value.split(","):
        item = item.strip()
        if item:
            result.append(ipaddress.ip_network(item, strict=False))
    return tuple(result)


def words(value: str) -> tuple[str, ...]:
    """A comma-separated list of words."""
    return tuple(w.strip() for w in value.split(",") if w.strip())


def token_keys(value: str) -> dict[int, bytes]:
    """Route-token keys: ``<id>:<base64 secret>`` pairs separated by commas.

    Ids are 0..255 and unique; each secret is standard base64 of at least 16
    bytes (32 random bytes recommended). Empty text means no keys.
    """
    from voiceedge.wire.route_token import MIN_KEY_SIZE

    keys: dict[int, bytes] = {}
    for item in value.split(","):
        item = item.strip()
        if not item:
            continue
        id_text, sep, secret_text = item.partition(":")
        if not sep:
            raise ValueError(f"expected <id>:<base64 secret>, got {item[:8]!r}...")
        key_id = integer(0, 255)(id_text.strip())
        if key_id in keys:
            raise ValueError(f"key id {key_id} appears twice")
        try:
            secret = binascii.a2b_base64(secret_text.strip(), strict_mode=True)
        except (binascii.Error, ValueError):
            raise ValueError(f"key {key_id}: secret is not base64") from None
        if len(secret) < MIN_KEY_SIZE:
            raise ValueError(f"key {key_id}: secret must be at least {MIN_KEY_SIZE} bytes")
        keys[key_id] = secret
    return keys


def optional_integer(minimum: int, maximum: int) -> Callable[[str], int | None]:
    """An :func:`integer`, or nothing when empty."""
    parse = integer(minimum, maximum)

    def parse_optional(text: str) -> int | None:
        return parse(text) if text else None

    return parse_optional


def choice(*allowed: int) -> Callable[[str], int]:
    """A parser for one of a few whole numbers."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise ValueError("not a whole number") from None
        if value not in allowed:
            raise ValueError(f"must be one of {', '.join(map(str, allowed))}")
        return value

    return parse
