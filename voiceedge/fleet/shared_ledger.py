# -*- test-case-name: tests.test_shared_stores -*-
"""The front doors' session ledger in Redis: who may manage each call, and the live calls of each API key.

Every front door replica reads and writes the same records, so a call
opened through one may be read, restarted or ended through another, and
one key's cap on live calls holds across all of them. Each change is one
Lua script, so it is atomic however many replicas race. Only principals
are stored (``key:<name>``, ``ek:<digest>``), never a usable credential.
Key layout (docs/fleet.md)::

    voiceedge:call:<public id>            -> JSON {"v", "managers", "key", "opened"}
    voiceedge:calls-on:<transceiver id>   -> ZSET public id -> opened at (for reconciling)
    voiceedge:transceivers-with-calls     -> SET of transceiver ids (an index of the above)
    voiceedge:calls-of-key:<key name>     -> ZSET "s:<public id>" (+inf), "r:<token>" (expiry)

A reservation (``r:``) holds a place while a call is being placed and
expires on its own (``reservation_hold``) if its front door dies
mid-request; a call (``s:``) holds it until :meth:`RedisSessionLedger.ended`.
"""

from __future__ import annotations

import json
import secrets
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from voiceedge.fleet.frontdoor import split_session_id
from voiceedge.redis_connection import RedisClient
from voiceedge.signaling.auth import Caller
from voiceedge.signaling.ownership import ILedgerIndex, ISessionLedger, Reservation

__all__ = ["CALL_PREFIX", "KEY_CALLS_PREFIX", "RedisSessionLedger", "TRANSCEIVER_CALLS_PREFIX", "TRANSCEIVERS_KEY"]

CALL_PREFIX = "voiceedge:call:"
TRANSCEIVER_CALLS_PREFIX = "voiceedge:calls-on:"
TRANSCEIVERS_KEY = "voiceedge:transceivers-with-calls"
KEY_CALLS_PREFIX = "voiceedge:calls-of-key:"
_VERSION = 1

# KEYS: calls of the key. ARGV: now, hold, limit, token.
_RESERVE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local limit = tonumber(ARGV[3])
if limit > 0 and redis.call('ZCARD', KEYS[1]) >= limit then return 0 end
redis.call('ZADD', KEYS[1], tonumber(ARGV[1]) + tonumber(ARGV[2]), 'r:' .. ARGV[4])
return 1
"""

# KEYS: the call, calls on its transceiver, the index, calls of its key.
# ARGV: entry, public id, transceiver id ('' when none), opened at, reservation token, '1' with a key.
_OPENED = """
redis.call('SET', KEYS[1], ARGV[1])
if ARGV[3] ~= '' then
  redis.call('ZADD', KEYS[2], ARGV[4], ARGV[2])
  redis.call('SADD', KEYS[3], ARGV[3])
end
if ARGV[6] == '1' then
  redis.call('ZREM', KEYS[4], 'r:' .. ARGV[5])
  redis.call('ZADD', KEYS[4], '+inf', 's:' .. ARGV[2])
end
return 1
"""

# KEYS: the call, calls on its transceiver, the index. ARGV: public id, transceiver id, the key calls prefix.
_ENDED = """
if ARGV[2] ~= '' then
  redis.call('ZREM', KEYS[2], ARGV[1])
  if redis.call('ZCARD', KEYS[2]) == 0 then redis.call('SREM', KEYS[3], ARGV[2]) end
end
local entry = redis.call('GET', KEYS[1])
if not entry then return 0 end
redis.call('DEL', KEYS[1])
local ok, decoded = pcall(cjson.decode, entry)
if ok and type(decoded) == 'table' and type(decoded['key']) == 'string' then
  redis.call('ZREM', ARGV[3] .. decoded['key'], 's:' .. ARGV[1])
end
return 1
"""


@implementer(ISessionLedger, ILedgerIndex)
class RedisSessionLedger:
    """:class:`ISessionLedger` in Redis, shared by every front door; every answer is a Deferred.

    Commands fail at once while there is no connection (the gate answers
    503) rather than queue behind a reconnection.
    """

    def __init__(
        self,
        client: RedisClient,
        clock: IReactorTime,
        max_calls_per_key: int,
        reservation_hold: float = 60.0,
    ) -> None:
        if max_calls_per_key < 0:
            raise ValueError("max_calls_per_key cannot be negative")
        self.client = client
        self.clock = clock
        self.max_calls_per_key = max_calls_per_key
        self.reservation_hold = reservation_hold

    def _redis(self) -> Any:
        if not self.client.connected():
            raise ConnectionError(f"no connection to {self.client.label}")
        return self.client.connection

    def reserve(self, caller: Caller) -> "defer.Deferred[Reservation | None]":
        """See :meth:`ISessionLedger.reserve`; with no cap, nothing is asked of Redis."""
        if caller.key_name is None or not self.max_calls_per_key:
            return defer.succeed(Reservation(caller))
        token = secrets.token_urlsafe(12)
        key = caller.key_name
        d = defer.maybeDeferred(
            lambda: self._redis().eval(
                _RESERVE,
                [KEY_CALLS_PREFIX + key],
                [repr(self.clock.seconds()), repr(self.reservation_hold), str(self.max_calls_per_key), token],
            )
        )
        return d.addCallback(lambda held: Reservation(caller, token) if held == 1 else None)

    def cancel(self, reservation: Reservation) -> "defer.Deferred[None]":
        """See :meth:`ISessionLedger.cancel`."""
        key = reservation.caller.key_name
        if key is None or not reservation.token:
            return defer.succeed(None)
        d = defer.maybeDeferred(lambda: self._redis().zrem(KEY_CALLS_PREFIX + key, "r:" + reservation.token))
        return d.addCallback(lambda _: None)

    def opened(self, session_id: str, reservation: Reservation) -> "defer.Deferred[None]":
        """See :meth:`ISessionLedger.opened`."""
        caller = reservation.caller
        now = self.clock.seconds()
        entry = json.dumps(
            {"v": _VERSION, "managers": sorted(caller.managers), "key": caller.key_name, "opened": now}
        )
        owner = _transceiver_of(session_id)
        key = caller.key_name
        d = defer.maybeDeferred(
            lambda: self._redis().eval(
                _OPENED,
                [CALL_PREFIX + session_id, TRANSCEIVER_CALLS_PREFIX + owner, TRANSCEIVERS_KEY,
                 KEY_CALLS_PREFIX + (key or "")],
                [entry, session_id, owner, repr(now), reservation.token, "1" if key is not None else "0"],
            )
        )
        return d.addCallback(lambda _: None)

    def ended(self, session_id: str) -> "defer.Deferred[bool]":
        """See :meth:`ISessionLedger.ended`; fires with whether the call was recorded (False the second time)."""
        owner = _transceiver_of(session_id)
        d = defer.maybeDeferred(
            lambda: self._redis().eval(
                _ENDED,
                [CALL_PREFIX + session_id, TRANSCEIVER_CALLS_PREFIX + owner, TRANSCEIVERS_KEY],
                [session_id, owner, KEY_CALLS_PREFIX],
            )
        )
        return d.addCallback(lambda removed: removed == 1)

    def may_manage(self, session_id: str, caller: Caller) -> "defer.Deferred[bool]":
        """See :meth:`ISessionLedger.may_manage`."""
        d = defer.maybeDeferred(lambda: self._redis().get(CALL_PREFIX + session_id))

        def decide(value: Any) -> bool:
            managers = _managers(value)
            return managers is not None and not managers.isdisjoint(caller.identities)

        return d.addCallback(decide)

    # -- for reconciling (voiceedge.fleet.session_ends) ---------------------------

    def transceivers(self) -> "defer.Deferred[set[str]]":
        """The transceivers that hold calls recorded here."""
        d = defer.maybeDeferred(lambda: self._redis().smembers(TRANSCEIVERS_KEY))
        return d.addCallback(lambda members: {_text(m) for m in members or ()})

    def sessions_on(self, transceiver_id: str) -> "defer.Deferred[dict[str, float]]":
        """The calls recorded on ``transceiver_id``: public id -> when it opened (this clock's seconds)."""
        d = defer.maybeDeferred(
            lambda: self._redis().zrange(TRANSCEIVER_CALLS_PREFIX + transceiver_id, 0, -1, withscores=True)
        )
        return d.addCallback(lambda pairs: {_text(member): float(score) for member, score in pairs or ()})

    def calls_of(self, key_name: str) -> "defer.Deferred[int]":
        """How many places ``key_name`` holds now: its calls and its unexpired reservations."""
        key = KEY_CALLS_PREFIX + key_name
        now = repr(self.clock.seconds())
        d = defer.maybeDeferred(lambda: self._redis().zcount(key, "(" + now, "+inf"))
        return d.addCallback(int)


def _transceiver_of(session_id: str) -> str:
    parts = split_session_id(session_id)
    return "" if parts is None else parts[0]


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _managers(value: Any) -> frozenset[str] | None:
    """The managers of a stored entry; None for no entry or one that does not parse."""
    if value is None:
        return None
    try:
        entry = json.loads(value)
    except (TypeError, ValueError, RecursionError):
        return None
    if not isinstance(entry, dict) or entry.get("v") != _VERSION:
        return None
    managers = entry.get("managers")
    if not isinstance(managers, list) or not all(isinstance(m, str) for m in managers):
        return None
    return frozenset(managers)
