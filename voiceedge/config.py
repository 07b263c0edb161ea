# -*- test-case-name: tests.test_config -*-
"""INI configuration: typed, frozen settings per section, validated at start-up.

A service's settings are a frozen dataclass of sections (:func:`section`),
each section a frozen dataclass of keys (:func:`setting`). The key's parser,
its default (as INI text) and what it means live on the field, so adding a
key is one line in its section class, plus its documented default in the
``etc/`` files (a test keeps those equal to the classes).
:func:`load_settings` reads an INI file once, refuses an unknown section or
key and a value that does not parse, and returns the typed object that the
taps hand to constructors. Cross-key rules live in a section's (or the
service's) ``__post_init__``, raising :class:`SettingError`; the loader turns
that into a :class:`ConfigError` naming file, section and key.
"""

from __future__ import annotations

import binascii
import configparser
import dataclasses
import ipaddress
import os
import re
import types
from dataclasses import dataclass
from typing import Any, Callable, Mapping, TypeVar

Address = tuple[str, int]
T = TypeVar("T")

_KEY = "voiceedge.key"
_SECTION = "voiceedge.section"
_FAMILY = "voiceedge.family"


class ConfigError(Exception):
    """A configuration file is unusable; the message names file, section and key."""


class SettingError(ValueError):
    """A rule across keys failed: raised by a settings class's ``__post_init__``.

    ``key`` is the key to name in the message; ``section`` is set when the
    rule belongs to a whole service rather than one section.
    """

    def __init__(self, key: str, message: str, section: str | None = None) -> None:
        super().__init__(message)
        self.key = key
        self.message = message
        self.section = section


@dataclass(frozen=True, slots=True)
class Key:
    """One allowed key: how to parse its text, and its default."""

    parse: Callable[[str], Any]
    default: str
    help: str = ""
    secret: bool = False


Schema = Mapping[str, Mapping[str, Key]]


class Config:
    """Parsed, validated values: ``config["section"]["key"]`` (read-only)."""

    def __init__(self, source: str, values: dict[str, dict[str, Any]]) -> None:
        self.source = source
        self._values = {name: types.MappingProxyType(keys) for name, keys in values.items()}

    def __getitem__(self, section: str) -> Mapping[str, Any]:
        return self._values[section]

    def sections(self) -> list[str]:
        """The schema's sections, in order."""
        return list(self._values)


_ENVIRONMENT = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _expand(raw: str, environ: Mapping[str, str]) -> str:
    """``${NAME}`` replaced by the environment variable NAME; KeyError naming it when unset."""

    def value(match: re.Match[str]) -> str:
        return environ[match.group(1)]

    return _ENVIRONMENT.sub(value, raw)


def load_config(
    schema: Schema,
    path: str | None = None,
    text: str | None = None,
    families: Schema = {},
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Read ``path`` (or ``text``) against ``schema``; defaults fill what is absent.

    Unknown sections or keys and values that do not parse raise
    :class:`ConfigError` naming the file, section and key. With neither
    ``path`` nor ``text`` every key takes its default. ``families`` maps a
    prefix ending in ``.`` to the keys of every section named
    ``<prefix><name>`` (``[region.eu]``); those sections are optional and
    appear in the result only when written. A written value may name
    environment variables as ``${NAME}`` (a Kubernetes pod's IP, a secret
    from a Secret): an unset one is an error naming the key.
    """
    source = path if path is not None else "<embedded defaults>"
    environ = os.environ if environ is None else environ
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

    sections: dict[str, Mapping[str, Key]] = dict(schema)
    for section in parser.sections():
        if section in schema:
            continue
        prefix = next((p for p in families if section.startswith(p) and len(section) > len(p)), None)
        if prefix is None:
            allowed = ", ".join(sorted(list(schema) + [p + "<name>" for p in families]))
            raise ConfigError(f"{source}: unknown section [{section}] (allowed: {allowed})")
        sections[section] = families[prefix]
    for section in parser.sections():
        for written in parser[section]:
            if written not in sections[section]:
                allowed = ", ".join(sorted(sections[section]))
                raise ConfigError(
                    f"{source}: [{section}] unknown key {written!r} (allowed: {allowed})"
                )

    values: dict[str, dict[str, Any]] = {}
    for section, keys in sections.items():
        values[section] = {}
        for name, key in keys.items():
            raw = key.default
            if parser.has_option(section, name):
                raw = parser.get(section, name)
                try:
                    raw = _expand(raw, environ)
                except KeyError as e:
                    raise ConfigError(
                        f"{source}: [{section}] {name}: environment variable {e.args[0]} is not set"
                    ) from None
            try:
                values[section][name] = key.parse(raw.strip())
            except ValueError as e:
                shown = "(secret)" if key.secret else repr(raw)
                raise ConfigError(f"{source}: [{section}] {name} = {shown}: {e}") from e
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


_HOSTNAME = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")


def host_address(value: str) -> Address:
    """``host:port`` where host is an IP address or a DNS name (a Kubernetes Service, say)."""
    try:
        return address(value)
    except ValueError:
        pass
    host, sep, port_text = value.rpartition(":")
    if not sep or not host or not _HOSTNAME.match(host):
        raise ValueError("expected host:port with an IP address or a DNS name")
    return host, integer(1, 65535)(port_text)


def host_addresses(value: str) -> tuple[Address, ...]:
    """A comma-separated list of :func:`host_address` (empty: none)."""
    return tuple(host_address(item.strip()) for item in value.split(",") if item.strip())


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


def token_keys(value: str) -> Mapping[int, bytes]:
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
    return types.MappingProxyType(keys)


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


# -- typed settings --------------------------------------------------------------


def word(*allowed: str) -> Callable[[str], str]:
    """A parser for one of a few words."""

    def parse(text: str) -> str:
        value = text.strip()
        if value not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}")
        return value

    return parse


def setting(parse: Callable[[str], T], default: str, help: str, *, secret: bool = False) -> T:
    """One key of a settings section: how its INI text parses, its default text, what it means.

    Use as a dataclass field: ``max_flows: int = setting(integer(1, 10**7), "100000", "...")``.
    The default is parsed once, here, so a bad default fails at import. A
    ``secret`` key is left out of the settings object's ``repr`` (and so of logs).
    """
    value = parse(default)
    return dataclasses.field(
        default_factory=lambda: value, repr=not secret, metadata={_KEY: Key(parse, default, help, secret)}
    )


def section(cls: type[T], *, name: str | None = None, **defaults: str) -> T:
    """One section of a service's settings: ``[name]`` (default: the field name) parsed into ``cls``.

    ``defaults`` override the section's default texts for this service (the
    all-in-one's media socket takes any free port, say).
    """
    keys = keys_of(cls)
    unknown = set(defaults) - set(keys)
    if unknown:
        raise TypeError(f"{cls.__name__} has no key {', '.join(sorted(unknown))}")
    values = {k: keys[k].parse(text) for k, text in defaults.items()}
    return dataclasses.field(
        default_factory=lambda: cls(**values),
        metadata={_SECTION: (cls, name, dict(defaults))},
    )


def keys_of(cls: type, overrides: Mapping[str, str] = {}) -> dict[str, Key]:
    """The keys of a settings section class, in order, defaults overridden."""
    keys: dict[str, Key] = {}
    for f in dataclasses.fields(cls):
        key = f.metadata.get(_KEY)
        if key is None:
            raise TypeError(f"{cls.__name__}.{f.name} is not a setting()")
        if f.name in overrides:
            key = Key(key.parse, overrides[f.name], key.help, key.secret)
        keys[f.name] = key
    return keys


def family(cls: type[T], prefix: str) -> Mapping[str, T]:
    """Any number of sections ``[<prefix>.<name>]``, each parsed into ``cls``: ``{name: settings}``."""
    keys_of(cls)  # a class that is not all setting()s fails here, at import
    return dataclasses.field(
        default_factory=lambda: types.MappingProxyType({}),
        metadata={_FAMILY: (cls, prefix + ".")},
    )


def sections_of(service: type) -> dict[str, tuple[str, type, dict[str, Key]]]:
    """A service settings class's sections: ``{field: (INI section name, class, keys)}``."""
    result = {}
    for f in dataclasses.fields(service):
        if _FAMILY in f.metadata:
            continue
        spec = f.metadata.get(_SECTION)
        if spec is None:
            raise TypeError(f"{service.__name__}.{f.name} is not a section() or family()")
        cls, name, overrides = spec
        result[f.name] = (name or f.name, cls, keys_of(cls, overrides))
    return result


def families_of(service: type) -> dict[str, tuple[str, type, dict[str, Key]]]:
    """A service settings class's section families: ``{field: (prefix with its dot, class, keys)}``."""
    result = {}
    for f in dataclasses.fields(service):
        spec = f.metadata.get(_FAMILY)
        if spec is not None:
            cls, prefix = spec
            result[f.name] = (prefix, cls, keys_of(cls))
    return result


def schema_of(service: type) -> dict[str, dict[str, Key]]:
    """The INI schema of a service settings class: section name to keys (families not included)."""
    return {name: keys for name, _, keys in sections_of(service).values()}


def load_settings(
    service: type[T],
    path: str | None = None,
    text: str | None = None,
    extra: Schema = {},
    environ: Mapping[str, str] | None = None,
) -> tuple[T, Config]:
    """Read ``path`` (or ``text``, or nothing: all defaults) into a ``service`` settings object.

    ``extra`` adds sections whose keys are known only at run time (an
    agent's ``[agent.<name>]``); their values come back in the
    :class:`Config`, beside the typed object. Every error is a
    :class:`ConfigError` naming file, section and key.
    """
    parts = sections_of(service)
    groups = families_of(service)
    schema: dict[str, Mapping[str, Key]] = {name: keys for name, _, keys in parts.values()}
    schema.update(extra)
    conf = load_config(
        schema, path, text, families={p: keys for p, _, keys in groups.values()}, environ=environ
    )
    built: dict[str, Any] = {}

    def build(cls: type, name: str) -> Any:
        try:
            return cls(**conf[name])
        except SettingError as e:
            raise ConfigError(f"{conf.source}: [{e.section or name}] {e.key}: {e.message}") from None

    for field_name, (name, cls, _) in parts.items():
        built[field_name] = build(cls, name)
    for field_name, (prefix, cls, _) in groups.items():
        members = {
            name[len(prefix):]: build(cls, name) for name in conf.sections() if name.startswith(prefix)
        }
        built[field_name] = types.MappingProxyType(members)
    try:
        return service(**built), conf
    except SettingError as e:
        raise ConfigError(f"{conf.source}: [{e.section}] {e.key}: {e.message}") from None


def format_address(address: Address | None) -> str:
    """``host:port`` or ``[v6]:port`` as an INI file spells it; empty for nothing."""
    if address is None:
        return ""
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
