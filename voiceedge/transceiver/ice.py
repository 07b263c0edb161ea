# -*- test-case-name: tests.test_ice -*-
"""ICE-lite (RFC 8445 §2.5) for one session: answer checks, select a path, track consent."""

from __future__ import annotations

import collections
import enum
import os
from dataclasses import dataclass, field

from voiceedge.wire import stun
from voiceedge.wire.errors import WireError

Address = tuple[str, int]

# A lite agent is always controlled (RFC 8445 §6.1.1), so a peer that says it is
# controlled too has a role conflict we cannot resolve by switching.
ROLE_CONFLICT = 487
# Sources of one session that may pass checks at once (a client has a few
# candidates; more is someone spraying spoofed checks with stolen credentials).
MAX_SOURCES = 8
# Return-routability probes: at most one per source this often, kept this long.
PROBE_INTERVAL = 0.5
PROBE_LIFETIME = 5.0
MAX_PROBES = 16
# What our probes say about us (RFC 8445 §7.1.1); the value matters little.
PROBE_PRIORITY = 1853824767


class CheckResult(enum.Enum):
    """What became of one incoming STUN packet."""

    ANSWERED = "answered"
    VERIFIED = "verified"  # a response to our probe: the source receives our packets
    IGNORED = "ignored"  # indications, responses we did not ask for
    BAD_INTEGRITY = "bad_integrity"
    BAD_FINGERPRINT = "bad_fingerprint"
    BAD_USERNAME = "bad_username"
    MALFORMED = "malformed"
    ROLE_CONFLICT = "role_conflict"


@dataclass(slots=True)
class CheckOutcome:
    """The result of :meth:`IceLiteAgent.receive`: what to send back, and what changed."""

    result: CheckResult
    response: bytes | None = None
    newly_valid: bool = False
    probe: bytes | None = None  # a binding request to send to the source
    evicted: list[Address] = field(default_factory=list)  # sources no longer valid


class IceLiteAgent:
    """The server side of ICE-lite for one session, with no I/O.

    It answers binding requests whose USERNAME is ``<local ufrag>:<remote
    ufrag>`` and whose MESSAGE-INTEGRITY checks out under the local password;
    anything else is dropped without a reply, so an attacker learns nothing.
    A source becomes *valid* with its first good check: its DTLS and media
    are taken.

    Media goes to the client's nominated path (``USE-CANDIDATE``) only once
    that address is *verified*, i.e. shown to receive our packets: it is
    where the DTLS handshake completed, or it answered a binding request of
    ours whose transaction id only a real receiver can know. Integrity alone
    does not prove that: a caller holding its own session's password could
    spoof checks from a victim's address and have its media streamed there.
    Each good check on the selected path refreshes consent (RFC 7675).
    """

    def __init__(
        self,
        local_ufrag: str,
        local_pwd: str,
        remote_ufrag: str,
        consent_timeout: float = 30.0,
        remote_pwd: str = "",
    ) -> None:
        self.local_ufrag = local_ufrag
        self._key = local_pwd.encode("ascii")
        self._remote_key = remote_pwd.encode("ascii")
        self._username = f"{local_ufrag}:{remote_ufrag}".encode("ascii")
        self._probe_username = f"{remote_ufrag}:{local_ufrag}".encode("ascii")
        self._tie_breaker = int.from_bytes(os.urandom(8), "big")
        self._consent_timeout = consent_timeout
        # Valid sources, least recently checked first.
        self._last_check: collections.OrderedDict[Address, float] = collections.OrderedDict()
        self._verified: set[Address] = set()
        self._probes: dict[bytes, tuple[Address, float]] = {}
        self._probed_at: dict[Address, float] = {}
        self.nominated: Address | None = None
        self.selected: Address | None = None

    def is_valid(self, source: Address) -> bool:
        """Whether ``source`` has passed a check, so its DTLS and media may be taken."""
        return source in self._last_check

    @property
    def valid_sources(self) -> list[Address]:
        """Every source that has passed a check, least recently checked first."""
        return list(self._last_check)

    def media_destination(self) -> Address | None:
        """Where media goes: the selected path, else the freshest verified source."""
        if self.selected is not None:
            return self.selected
        for source in reversed(self._last_check):
            if source in self._verified:
                return source
        return None

    def verify(self, source: Address) -> None:
        """``source`` has shown it receives our packets (e.g. it completed DTLS)."""
        if source not in self._last_check:
            return
        self._verified.add(source)
        if self.nominated == source:
            self.selected = source

    def consent_expires_at(self) -> float | None:
        """When consent lapses; ``None`` before any valid check.

        Consent is the selected path's; before a selection it is the freshest
        check on any path, so a client that never nominates (or nominates an
        address that never verifies) cannot keep a session alive forever.
        """
        if self.selected is not None:
            return self._last_check[self.selected] + self._consent_timeout
        if not self._last_check:
            return None
        return max(self._last_check.values()) + self._consent_timeout

    def receive(self, data: bytes, source: Address, now: float) -> CheckOutcome:
        """Handle one STUN datagram from ``source``.

        ``source`` is the client's public address as the edge saw it (the
        datagram's source, or what a relay's header says); it goes back in
        XOR-MAPPED-ADDRESS.
        """
        try:
            message = stun.parse_message(data)
        except WireError:
            return CheckOutcome(CheckResult.MALFORMED)
        if message.method != stun.METHOD_BINDING:
            return CheckOutcome(CheckResult.IGNORED)
        if message.message_class == stun.StunClass.SUCCESS:
            return self._probe_answered(message, data, source)
        if message.message_class != stun.StunClass.REQUEST:
            return CheckOutcome(CheckResult.IGNORED)
        if message.get(stun.Attr.FINGERPRINT) is not None and not stun.verify_fingerprint(data):
            return CheckOutcome(CheckResult.BAD_FINGERPRINT)
        if message.username() != self._username:
            return CheckOutcome(CheckResult.BAD_USERNAME)
        if not stun.verify_integrity(data, self._key):
            return CheckOutcome(CheckResult.BAD_INTEGRITY)
        if message.ice_controlled() is not None:
            return CheckOutcome(
                CheckResult.ROLE_CONFLICT,
                stun.binding_error(message, ROLE_CONFLICT, "Role Conflict", self._key),
            )

        newly_valid = source not in self._last_check
        evicted = self._mark_checked(source, now)
        outcome = CheckOutcome(
            CheckResult.ANSWERED, stun.binding_success(message, source, self._key), newly_valid
        )
        outcome.evicted = evicted
        if message.use_candidate:
            self.nominated = source
            if source in self._verified:
                self.selected = source
            elif source != self.selected:
                outcome.probe = self._probe(source, now)
        return outcome

    def _mark_checked(self, source: Address, now: float) -> list[Address]:
        self._last_check[source] = now
        self._last_check.move_to_end(source)
        evicted: list[Address] = []
        while len(self._last_check) > MAX_SOURCES:
            oldest = next(s for s in self._last_check if s not in (self.selected, source))
            del self._last_check[oldest]
            self._verified.discard(oldest)
            self._probed_at.pop(oldest, None)
            if self.nominated == oldest:
                self.nominated = None
            evicted.append(oldest)
        return evicted

    def _probe(self, source: Address, now: float) -> bytes | None:
        """A binding request to ``source``; paced by the client's own check retransmissions."""
        if not self._remote_key or now - self._probed_at.get(source, -PROBE_INTERVAL) < PROBE_INTERVAL:
            return None
        for tid, (_, sent_at) in list(self._probes.items()):
            if now - sent_at > PROBE_LIFETIME:
                del self._probes[tid]
        if len(self._probes) >= MAX_PROBES:
            return None
        transaction_id = os.urandom(12)
        self._probes[transaction_id] = (source, now)
        self._probed_at[source] = now
        return stun.build_message(
            stun.METHOD_BINDING,
            stun.StunClass.REQUEST,
            transaction_id,
            [
                (stun.Attr.USERNAME, self._probe_username),
                (stun.Attr.PRIORITY, stun.encode_priority(PROBE_PRIORITY)),
                (stun.Attr.ICE_CONTROLLED, stun.encode_tie_breaker(self._tie_breaker)),
            ],
            integrity_key=self._remote_key,
        )

    def _probe_answered(self, message: stun.StunMessage, data: bytes, source: Address) -> CheckOutcome:
        probe = self._probes.get(message.transaction_id)
        if probe is None or probe[0] != source:
            return CheckOutcome(CheckResult.IGNORED)
        if not stun.verify_integrity(data, self._remote_key):
            return CheckOutcome(CheckResult.BAD_INTEGRITY)
        del self._probes[message.transaction_id]
        self.verify(source)
        return CheckOutcome(CheckResult.VERIFIED)
