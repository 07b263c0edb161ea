# -*- test-case-name: tests.test_shared_stores -*-
"""Client secrets (``ek_``) in Redis, shared by every front door: issued by one, spent once through any.

Only the SHA-256 digest of a secret is a key; the value holds who issued it
and the session settings it carries. Issuing, spending and giving back are
each one Lua script, so a secret is spent once however many front doors
race for it. Key layout (docs/fleet.md)::

    voiceedge:client-secret:<sha256 hex>   -> JSON {"v", "issuer", "key", "expires_at", "settings"}, PX its lifetime
    voiceedge:client-secrets               -> ZSET sha256 hex -> expires at (bounds how many are unspent)
"""

from __future__ import annotations

import json
import secrets
from typing import Any, Mapping

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from voiceedge.redis_connection import RedisClient
from voiceedge.signaling.auth import (
    CLIENT_SECRET_PREFIX,
    Caller,
    IClientSecretStore,
    IssuedSecret,
    SecretRecord,
    TooManySecrets,
    secret_digest,
)

__all__ = ["INDEX_KEY", "SECRET_PREFIX", "RedisClientSecrets"]

SECRET_PREFIX = "voiceedge:client-secret:"
INDEX_KEY = "voiceedge:client-secrets"
_VERSION = 1

# KEYS: the secret, the index. ARGV: value, ttl ms, expires at, digest, now, max.
_ISSUE = """
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[5])
local n = redis.call('ZCARD', KEYS[2])
if n >= tonumber(ARGV[6]) then return -1 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[4])
return n + 1
"""

# KEYS: the secret, the index. ARGV: digest. Returns {value or nil, unspent}.
_SPEND = """
local value = redis.call('GET', KEYS[1])
if value then redis.call('DEL', KEYS[1]) end
redis.call('ZREM', KEYS[2], ARGV[1])
return {value, redis.call('ZCARD', KEYS[2])}
"""

# KEYS: the secret, the index. ARGV: value, ttl ms, expires at, digest.
_PUT_BACK = """
if redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2], 'NX') then
  redis.call('ZADD', KEYS[2], ARGV[3], ARGV[4])
  return 1
end
return 0
"""


@implementer(IClientSecretStore)
class RedisClientSecrets:
    """:class:`IClientSecretStore` in Redis; every answer but :meth:`unspent` is a Deferred.

    At most ``max_secrets`` unexpired secrets across the fleet (expired ones
    are swept first). Expiry is Redis's (``PX``) and the issuing front
    door's clock's (``expires_at``), whichever comes first.
    """

    def __init__(
        self,
        client: RedisClient,
        clock: IReactorTime,
        *,
        default_ttl: float = 60.0,
        max_ttl: float = 600.0,
        max_secrets: int = 65536,
    ) -> None:
        if not 0 < default_ttl <= max_ttl:
            raise ValueError("client secret TTLs must satisfy 0 < default_ttl <= max_ttl")
        self.client = client
        self.clock = clock
        self.default_ttl = default_ttl
        self.max_ttl = max_ttl
        self.max_secrets = max_secrets
        self.issued = 0
        self.spent = 0
        self._unspent = 0

    def _redis(self) -> Any:
        if not self.client.connected():
            raise ConnectionError(f"no connection to {self.client.label}")
        return self.client.connection

    def issue(
        self, issuer: Caller, ttl: float | None, settings: Mapping[str, Any] | None
    ) -> "defer.Deferred[IssuedSecret]":
        """A new secret for ``issuer`` valid ``ttl`` seconds; fails with :class:`TooManySecrets` when full."""
        lifetime = self.default_ttl if ttl is None else min(float(ttl), self.max_ttl)
        now = self.clock.seconds()
        expires_at = now + lifetime
        value = CLIENT_SECRET_PREFIX + secrets.token_urlsafe(32)
        digest = secret_digest(value).hex()
        stored = _stored(issuer.principal, issuer.key_name, expires_at, settings)
        d = defer.maybeDeferred(
            lambda: self._redis().eval(
                _ISSUE,
                [SECRET_PREFIX + digest, INDEX_KEY],
                [stored, str(max(1, int(lifetime * 1000))), repr(expires_at), digest, repr(now), str(self.max_secrets)],
            )
        )

        def done(count: Any) -> IssuedSecret:
            if count == -1:
                self._unspent = self.max_secrets
                raise TooManySecrets()
            self.issued += 1
            self._unspent = int(count)
            return IssuedSecret(value, expires_at, settings)

        return d.addCallback(done)

    def spend(self, value: str) -> "defer.Deferred[SecretRecord | None]":
        """Take the secret out of Redis (atomically: one caller gets it); None when unknown, spent or expired."""
        digest = secret_digest(value)
        d = defer.maybeDeferred(
            lambda: self._redis().eval(_SPEND, [SECRET_PREFIX + digest.hex(), INDEX_KEY], [digest.hex()])
        )

        def taken(reply: Any) -> SecretRecord | None:
            stored, unspent = (reply + [None, 0])[:2] if isinstance(reply, list) else (None, 0)
            self._unspent = int(unspent or 0)
            record = _record(digest, stored)
            if record is None or record.expires_at <= self.clock.seconds():
                return None
            self.spent += 1
            return record

        return d.addCallback(taken)

    def put_back(self, record: SecretRecord) -> "defer.Deferred[None]":
        """Return a spent secret whose call never opened, for what is left of its lifetime."""
        remaining = record.expires_at - self.clock.seconds()
        if remaining <= 0:
            return defer.succeed(None)
        digest = record.digest.hex()
        stored = _stored(record.issuer, record.key_name, record.expires_at, record.settings)
        d = defer.maybeDeferred(
            lambda: self._redis().eval(
                _PUT_BACK,
                [SECRET_PREFIX + digest, INDEX_KEY],
                [stored, str(max(1, int(remaining * 1000))), repr(record.expires_at), digest],
            )
        )

        def back(restored: Any) -> None:
            if restored == 1:
                self.spent -= 1

        return d.addCallback(back)

    def unspent(self) -> int:
        """Unexpired secrets fleet-wide, as Redis said at this front door's last issue or spend."""
        return self._unspent


def _stored(issuer: str, key_name: str | None, expires_at: float, settings: Mapping[str, Any] | None) -> str:
    return json.dumps(
        {
            "v": _VERSION,
            "issuer": issuer,
            "key": key_name,
            "expires_at": expires_at,
            "settings": dict(settings) if settings is not None else None,
        }
    )


def _record(digest: bytes, stored: Any) -> SecretRecord | None:
    """The record a stored value describes; None for none, or one this version cannot read."""
    if stored is None:
        return None
    try:
        document = json.loads(stored)
    except (TypeError, ValueError, RecursionError):
        return None
    if not isinstance(document, dict) or document.get("v") != _VERSION:
        return None
    issuer, key, expires_at, settings = (
        document.get("issuer"), document.get("key"), document.get("expires_at"), document.get("settings"),
    )
    if not isinstance(issuer, str) or not (key is None or isinstance(key, str)):
        return None
    if not isinstance(expires_at, (int, float)) or not (settings is None or isinstance(settings, dict)):
        return None
    return SecretRecord(digest, issuer, key, float(expires_at), settings)
