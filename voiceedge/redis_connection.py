# -*- test-case-name: tests.test_redis_connection -*-
"""``[redis]``: where a service finds Redis (one server, or a master named by Sentinels), and the connection to it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from voiceedge import config as c
from voiceedge.config import Address, SettingError, setting

if TYPE_CHECKING:
    from twisted.internet import defer

__all__ = ["MAX_RECONNECT_DELAY", "RedisClient", "RedisConnectionSettings", "describe_redis"]

#: The longest wait between two attempts to reconnect to Redis, in seconds.
MAX_RECONNECT_DELAY = 1.0


@dataclass(frozen=True, slots=True)
class RedisConnectionSettings:
    """How to reach Redis: ``address``, or the master ``sentinel_master`` that ``sentinels`` name."""

    address: Address = setting(c.host_address, "127.0.0.1:6379", "Redis host:port (unused with sentinels)")
    sentinels: tuple[Address, ...] = setting(
        c.host_addresses, "", "Redis Sentinels host:port, ...; when set, the master comes from them"
    )
    sentinel_master: str = setting(c.nonempty, "voiceedge", "the master's name in Sentinel")
    timeout: float = setting(c.seconds(0.05, 30), "1", "seconds before an operation counts as failed")

    def __post_init__(self) -> None:
        if len(set(self.sentinels)) != len(self.sentinels):
            raise SettingError("sentinels", "an address appears twice")


def describe_redis(settings: RedisConnectionSettings) -> str:
    """A label for logs: ``redis 10.0.0.1:6379`` or ``redis master 'voiceedge' via 3 sentinels``."""
    if settings.sentinels:
        return f"redis master {settings.sentinel_master!r} via {len(settings.sentinels)} sentinels"
    return f"redis {c.format_address(settings.address)}"


class RedisClient:
    """A txredisapi connection, opened on first use, that reconnects by itself.

    With ``sentinels``, every (re)connection first asks the Sentinels for the
    current master, so after a failover the next connection goes to the
    promoted replica. Building one opens nothing.
    """

    def __init__(self, settings: RedisConnectionSettings) -> None:
        self.settings = settings
        self.label = describe_redis(settings)
        self._connection: Any = None
        self._sentinel: Any = None

    @property
    def connection(self) -> Any:
        """The txredisapi connection handler (commands return Deferreds)."""
        if self._connection is None:
            import txredisapi  # only services that use Redis need it

            settings = self.settings
            if settings.sentinels:
                self._sentinel = txredisapi.Sentinel(
                    list(settings.sentinels),
                    connectTimeout=settings.timeout,
                    replyTimeout=settings.timeout,
                )
                # A Sentinel answers within milliseconds or not at all; the
                # library's 10 s would hold every reconnection that long.
                self._sentinel.discovery_timeout = max(settings.timeout, 0.5)
                self._connection = self._sentinel.master_for(
                    settings.sentinel_master, replyTimeout=settings.timeout
                )
            else:
                host, port = settings.address
                self._connection = txredisapi.lazyConnection(
                    host, port, reconnect=True,
                    connectTimeout=settings.timeout, replyTimeout=settings.timeout,
                )
            # txredisapi backs off up to 10 s between reconnections: after a
            # failover that is up to 10 s more without Redis. Soft state is
            # worth a retry a second.
            factory = getattr(self._connection, "_factory", None)
            if factory is not None:
                factory.maxDelay = MAX_RECONNECT_DELAY
        return self._connection

    def ping(self) -> "defer.Deferred[Any]":
        """PING; fails at once while the first connection is open and none is live.

        A txredisapi command issued with no live connection waits on the
        pool's ``PeekableQueue.peek``, a Deferred without a canceller: a
        caller's timeout cancels it but leaves it in the queue's ``peekers``
        until a reconnect, so probing a dead Redis every 2 s would pile them
        up. txredisapi reconnects by itself; the probe only has to notice.
        """
        from twisted.internet import defer

        if self._connection is not None:
            factory: Any = getattr(self._connection, "_factory", None)
            queue: Any = getattr(factory, "connectionQueue", None)
            peekers = getattr(queue, "peekers", None)
            if peekers:  # drop the ones already cancelled by a timeout
                queue.peekers = [d for d in peekers if not d.called]
            if factory is not None and not getattr(factory, "size", 1):
                return defer.fail(ConnectionError("not connected"))
        return defer.maybeDeferred(lambda: self.connection.ping())

    def connected(self) -> bool:
        """Whether a connection is live now, so a command sent now does not wait for a reconnection.

        Opens the connection on first use (and says False until it is up).
        """
        factory: Any = getattr(self.connection, "_factory", None)
        return factory is None or bool(getattr(factory, "size", 1))

    def close(self) -> "defer.Deferred[Any]":
        """Disconnect for good, Sentinels included."""
        from twisted.internet import defer

        closing = []
        if self._connection is not None:
            closing.append(defer.maybeDeferred(self._connection.disconnect))
        if self._sentinel is not None:
            closing.append(defer.maybeDeferred(self._sentinel.disconnect))
        self._connection = self._sentinel = None
        return defer.gatherResults(closing, consumeErrors=True).addCallback(lambda _: None)
