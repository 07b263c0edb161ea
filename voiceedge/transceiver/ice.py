# -*- test-case-name: tests.test_ice -*-
"""ICE-lite (RFC 8445 §2.5) for one session: answer checks, verify paths, send consent checks, restart."""

from __future__ import annotations

import collections
import enum
import os
import random
from dataclasses import dataclass, field

from voiceedge.wire import stun
from voiceedge.wire.errors import WireError

#: The consent checks' timing jitter, unless a test injects its own: one generator for every
#: session (a ``random.Random`` holds 2.5 kB of state; bench/memory.py counts them per call).
_SHARED_RNG = random.Random()

Address = tuple[str, int]

# A lite agent is always controlled (RFC 8445 §6.1.1), so a peer that says it is
# controlled too has a role conflict we cannot resolve by switching.
ROLE_CONFLICT = 487
# RFC 7675 §5.2: a 403 answer to a consent check revokes consent at once.
FORBIDDEN = 403
# Sources of one session that may pass checks at once (a client has a few
# candidates; more is someone spraying spoofed checks with stolen credentials).
MAX_SOURCES = 8
# Return checks to sources not yet shown to receive our packets: at most one
# per source this often, kept this long, this many outstanding.
PROBE_INTERVAL = 0.5
PROBE_LIFETIME = 5.0
MAX_PROBES = 16
# What our requests say about us (RFC 8445 §7.1.1); the value matters little.
PROBE_PRIORITY = 1853824767
# RFC 7675 §5.1: a consent check every 5 s, randomised by ±20 %, each
# retransmitted from an RTO of 500 ms, doubling, until the next one is due.
CONSENT_INTERVAL = 5.0
CONSENT_JITTER = 0.2
CONSENT_RTO = 0.5
# Media leaves a selected path that has been silent this long for a verified
# source that the client is using instead (NAT rebinding, a network change
# without a new nomination).
PATH_QUIET = 1.0


class CheckResult(enum.Enum):
    """What became of one incoming STUN packet."""

    ANSWERED = "answered"
    VERIFIED = "verified"  # a response to our request: the source receives our packets
    IGNORED = "ignored"  # indications, responses we did not ask for
    BAD_INTEGRITY = "bad_integrity"
    BAD_FINGERPRINT = "bad_fingerprint"
    BAD_USERNAME = "bad_username"
    MALFORMED = "malformed"
    ROLE_CONFLICT = "role_conflict"
    CONSENT_REVOKED = "consent_revoked"  # a 403 to our consent check on the media path


@dataclass(slots=True)
class CheckOutcome:
    """The result of :meth:`IceLiteAgent.receive`: what to send back, and what changed."""

    result: CheckResult
    response: bytes | None = None
    newly_valid: bool = False
    probe: bytes | None = None  # a binding request to send to the source
    evicted: list[Address] = field(default_factory=list)  # sources no longer valid
    retired_ufrag: str | None = None  # a local ufrag no longer accepted (after a restart)
    nominated: bool = False  # the check carried USE-CANDIDATE
    consent: bool = False  # VERIFIED by the answer to a consent check, not a return check


class _Request:
    """One binding request of ours: where it went, when, under which key, its bytes."""

    __slots__ = ("source", "sent_at", "key", "data", "consent")

    def __init__(self, source: Address, sent_at: float, key: bytes, data: bytes, consent: bool) -> None:
        self.source = source
        self.sent_at = sent_at
        self.key = key
        self.data = data
        self.consent = consent


class IceLiteAgent:
    """The server side of ICE-lite for one session, with no I/O.

    It answers binding requests whose USERNAME is ``<local ufrag>:<remote
    ufrag>`` and whose MESSAGE-INTEGRITY checks out under the local password;
    anything else is dropped without a reply, so an attacker learns nothing.
    A source becomes *valid* with its first good check: its media is taken
    (the session holds its DTLS until it is verified, below), and it gets a
    binding request of ours at once (a *return check*), so the path is
    verified one round trip after the first check and a controlling client
    that nominates on a triggered check (Pion, libnice) nominates at once.

    Media goes to the client's nominated path (``USE-CANDIDATE``) only once
    that address is *verified*, i.e. shown to receive our packets: it is
    where the DTLS handshake completed, or it answered a binding request of
    ours whose transaction id only a real receiver can know. Integrity alone
    does not prove that: a caller holding its own session's password could
    spoof checks from a victim's address and have its media streamed there.
    A verified source the client sends authenticated traffic from, while the
    selected path has been silent for :data:`PATH_QUIET`, takes over the
    media (a NAT rebinding, which no client nominates).

    Consent (RFC 7675 §5) is ours to check, since we send the media: a
    binding request to the media destination every 5 s ±20 %, retransmitted
    while unanswered; consent lapses ``consent_timeout`` after the last
    answer. The client's own checks and authenticated media are *liveness*
    (:meth:`heard`), not consent.

    :meth:`restart` rolls the credentials over (ICE restart): the previous
    ones are still accepted until the client's first check with the new ones.
    """

    def __init__(
        self,
        local_ufrag: str,
        local_pwd: str,
        remote_ufrag: str,
        consent_timeout: float = 30.0,
        remote_pwd: str = "",
        rng: random.Random | None = None,
        consent_counts: collections.Counter[str] | None = None,
    ) -> None:
        self.local_ufrag = local_ufrag
        self._key = local_pwd.encode("ascii")
        self._remote_key = remote_pwd.encode("ascii")
        self._username = f"{local_ufrag}:{remote_ufrag}".encode("ascii")
        self._probe_username = f"{remote_ufrag}:{local_ufrag}".encode("ascii")
        # (username, key, ufrag) of the credentials before the last restart.
        self._previous: tuple[bytes, bytes, str] | None = None
        self._tie_breaker = int.from_bytes(os.urandom(8), "big")
        self._consent_timeout = consent_timeout
        self._rng = rng or _SHARED_RNG
        # Valid sources, least recently checked first.
        self._last_check: collections.OrderedDict[Address, float] = collections.OrderedDict()
        self._verified: set[Address] = set()
        self._consent_at: dict[Address, float] = {}
        self._heard: dict[Address, float] = {}
        self._requests: dict[bytes, _Request] = {}
        self._probed_at: dict[Address, float] = {}
        self._consent_next: float | None = None
        self._consent_request: _Request | None = None
        self._retransmit_at: float | None = None
        self._rto = CONSENT_RTO
        self.consent_revoked = False
        self.nominated: Address | None = None
        self.selected: Address | None = None
        self.consent_checks_sent = 0
        self.consent_checks_answered = 0
        # Over every session, for operators: sent, retransmitted, answered.
        self.consent_counts: collections.Counter[str] = (
            collections.Counter() if consent_counts is None else consent_counts
        )

    # -- views ----------------------------------------------------------------

    def is_valid(self, source: Address) -> bool:
        """Whether ``source`` has passed a check, so its DTLS and media may be taken."""
        return source in self._last_check

    def is_verified(self, source: Address) -> bool:
        """Whether ``source`` has shown it receives our packets."""
        return source in self._verified

    @property
    def valid_sources(self) -> list[Address]:
        """Every source that has passed a check, least recently checked first."""
        return list(self._last_check)

    @property
    def local_ufrags(self) -> list[str]:
        """The local ufrags checks are accepted under: the current one, and the previous until retired."""
        if self._previous is None:
            return [self.local_ufrag]
        return [self.local_ufrag, self._previous[2]]

    def media_destination(self) -> Address | None:
        """Where media goes: the selected path, else the freshest verified source."""
        if self.selected is not None:
            return self.selected
        for source in reversed(self._last_check):
            if source in self._verified:
                return source
        return None

    def consent_expires_at(self) -> float | None:
        """When consent to send lapses; ``None`` before any valid check.

        It is the media destination's last answer to our checks (or its
        verification) plus the consent timeout. With no verified path yet it
        is the freshest check on any path plus the timeout, so a client that
        never lets itself be verified cannot keep a session alive forever.
        """
        if self.consent_revoked:
            return float("-inf")
        destination = self.media_destination()
        if destination is not None:
            return self._consent_at[destination] + self._consent_timeout
        if not self._last_check:
            return None
        return max(self._last_check.values()) + self._consent_timeout

    def last_heard(self, source: Address) -> float | None:
        """When ``source`` last sent something authenticated."""
        return self._heard.get(source)

    # -- inputs ---------------------------------------------------------------

    def verify(self, source: Address, now: float) -> bool:
        """``source`` has shown it receives our packets (it completed DTLS, or answered us).

        Returns ``True`` if the media destination changed.
        """
        if source not in self._last_check:
            return False
        before = self.media_destination()
        self._verified.add(source)
        if self._consent_at.get(source, float("-inf")) < now:
            self._consent_at[source] = now
        if self.nominated == source:
            self.selected = source
        else:
            self._follow(source, now)
        if self._consent_next is None:
            self._consent_next = now + self._interval()
        return self.media_destination() != before

    def heard(self, source: Address, now: float) -> bool:
        """Authenticated traffic (SRTP, SRTCP, DTLS) came from ``source``: it is alive.

        Returns ``True`` if the media destination moved to it (the client
        moved there while its selected path went silent).
        """
        self._heard[source] = now
        selected = self.selected
        if selected is None or source == selected or source not in self._verified:
            return False
        return self._follow(source, now)

    def _follow(self, source: Address, now: float) -> bool:
        """Move media to verified ``source`` if the selected path has gone quiet."""
        selected = self.selected
        if selected is None or selected == source:
            return False
        if now - self._heard.get(selected, float("-inf")) < PATH_QUIET:
            return False
        if now - self._heard.get(source, float("-inf")) >= PATH_QUIET:
            return False
        self.selected = source
        return True

    def probe(self, source: Address, now: float) -> bytes | None:
        """A return check to valid, unverified ``source``, at most one per :data:`PROBE_INTERVAL`.

        For a source whose DTLS waits for it to be verified, when the answer
        to the return check of its first check was lost: the client may
        check no more for a while, but DTLS waits on it.
        """
        if source not in self._last_check or source in self._verified:
            return None
        return self._probe(source, now)

    def probe_due(self, source: Address) -> float:
        """When :meth:`probe` may next send a return check to ``source``."""
        return self._probed_at.get(source, float("-inf")) + PROBE_INTERVAL

    def restart(self, local_ufrag: str, local_pwd: str, remote_ufrag: str, remote_pwd: str) -> list[str]:
        """Roll the credentials over (ICE restart); the local ufrags no longer accepted.

        Valid and verified paths, the media destination and consent carry
        on: DTLS and SRTP do not restart. Checks under the previous
        credentials are answered until the first check under the new ones;
        our own requests use the new ones at once.
        """
        retired = [] if self._previous is None else [self._previous[2]]
        self._previous = (self._username, self._key, self.local_ufrag)
        self.local_ufrag = local_ufrag
        self._key = local_pwd.encode("ascii")
        self._remote_key = remote_pwd.encode("ascii")
        self._username = f"{local_ufrag}:{remote_ufrag}".encode("ascii")
        self._probe_username = f"{remote_ufrag}:{local_ufrag}".encode("ascii")
        # New paths are probed at once, whatever was probed under the old ones.
        self._probed_at.clear()
        return retired

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
            return self._answered(message, data, source, now)
        if message.message_class == stun.StunClass.ERROR:
            return self._refused(message, data, source)
        if message.message_class != stun.StunClass.REQUEST:
            return CheckOutcome(CheckResult.IGNORED)
        if message.get(stun.Attr.FINGERPRINT) is not None and not stun.verify_fingerprint(data):
            return CheckOutcome(CheckResult.BAD_FINGERPRINT)
        username = message.username()
        previous = self._previous
        if username == self._username:
            key = self._key
        elif previous is not None and username == previous[0]:
            key = previous[1]
        else:
            return CheckOutcome(CheckResult.BAD_USERNAME)
        if not stun.verify_integrity(data, key):
            return CheckOutcome(CheckResult.BAD_INTEGRITY)
        if message.ice_controlled() is not None:
            return CheckOutcome(
                CheckResult.ROLE_CONFLICT,
                stun.binding_error(message, ROLE_CONFLICT, "Role Conflict", key),
            )

        outcome = CheckOutcome(CheckResult.ANSWERED, stun.binding_success(message, source, key))
        if previous is not None and key is self._key:
            # The client has the new credentials: the old ones are done.
            self._previous = None
            outcome.retired_ufrag = previous[2]
        outcome.newly_valid = source not in self._last_check
        outcome.evicted = self._mark_checked(source, now)
        self._heard[source] = now
        if message.use_candidate:
            outcome.nominated = True
            self.nominated = source
            if source in self._verified:
                self.selected = source
        if source not in self._verified:
            # The return check: it verifies the path, and it is the triggered
            # check a controlling agent may be waiting for to nominate.
            outcome.probe = self._probe(source, now)
        return outcome

    def refusal_after_end(self, data: bytes) -> bytes | None:
        """The session has ended: a check with its credentials gets a signed 403, anything else nothing.

        It is RFC 7675 §5.2's revocation of consent. Browsers drop the
        candidate pair at once on it, so a
        caller whose call we hung up sees ICE fail in about a second instead of
        waiting out its consent checks (Chromium: 5 s to "disconnected"; the
        OpenAI SDK waits 5 s more). Only a check that proves the credentials is
        answered, with a response no larger than it.
        """
        try:
            message = stun.parse_message(data)
        except WireError:
            return None
        if message.method != stun.METHOD_BINDING or message.message_class != stun.StunClass.REQUEST:
            return None
        username = message.username()
        previous = self._previous
        if username == self._username:
            key = self._key
        elif previous is not None and username == previous[0]:
            key = previous[1]
        else:
            return None
        if not stun.verify_integrity(data, key):
            return None
        return stun.binding_error(message, FORBIDDEN, "Forbidden", key)

    def _mark_checked(self, source: Address, now: float) -> list[Address]:
        self._last_check[source] = now
        self._last_check.move_to_end(source)
        evicted: list[Address] = []
        while len(self._last_check) > MAX_SOURCES:
            oldest = next(s for s in self._last_check if s not in (self.selected, source))
            del self._last_check[oldest]
            self._verified.discard(oldest)
            self._probed_at.pop(oldest, None)
            self._consent_at.pop(oldest, None)
            self._heard.pop(oldest, None)
            if self.nominated == oldest:
                self.nominated = None
            evicted.append(oldest)
        return evicted

    # -- our requests ---------------------------------------------------------

    def _request(self, source: Address, now: float, consent: bool) -> _Request:
        transaction_id = os.urandom(12)
        data = stun.build_message(
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
        request = _Request(source, now, self._remote_key, data, consent)
        self._requests[transaction_id] = request
        return request

    def _probe(self, source: Address, now: float) -> bytes | None:
        """A return check to ``source``; paced by the client's own check retransmissions."""
        if not self._remote_key or now - self._probed_at.get(source, -PROBE_INTERVAL) < PROBE_INTERVAL:
            return None
        self._forget_old_requests(now)
        if sum(1 for r in self._requests.values() if not r.consent) >= MAX_PROBES:
            return None
        self._probed_at[source] = now
        return self._request(source, now, consent=False).data

    def _forget_old_requests(self, now: float) -> None:
        # An answer to a consent check sent within the consent timeout still
        # counts (RFC 7675 §5.1); a probe's answer is useful for a few seconds.
        for tid, request in list(self._requests.items()):
            lifetime = self._consent_timeout if request.consent else PROBE_LIFETIME
            if now - request.sent_at > lifetime:
                del self._requests[tid]

    def _interval(self) -> float:
        return CONSENT_INTERVAL * self._rng.uniform(1 - CONSENT_JITTER, 1 + CONSENT_JITTER)

    def deadline(self) -> float | None:
        """When :meth:`handle_timeout` is next due: a consent check or its retransmission."""
        due = self._consent_next
        retransmit = self._retransmit_at
        if retransmit is not None and (due is None or retransmit < due):
            return retransmit
        return due

    def handle_timeout(self, now: float) -> list[tuple[bytes, Address]]:
        """The consent checks due at ``now``, with their destinations."""
        out: list[tuple[bytes, Address]] = []
        destination = self.media_destination()
        current = self._consent_request
        if self._retransmit_at is not None and now >= self._retransmit_at:
            self._retransmit_at = None
            if current is not None and current.source == destination and current.key == self._remote_key:
                out.append((current.data, destination))
                self.consent_counts["retransmitted"] += 1
                self._rto *= 2
                self._retransmit_at = now + self._rto
        if self._consent_next is not None and now >= self._consent_next:
            self._consent_next = now + self._interval()
            if destination is not None and self._remote_key:
                self._forget_old_requests(now)
                request = self._request(destination, now, consent=True)
                self._consent_request = request
                self.consent_checks_sent += 1
                self.consent_counts["sent"] += 1
                out.append((request.data, destination))
                self._rto = CONSENT_RTO
                self._retransmit_at = now + CONSENT_RTO
        if self._retransmit_at is not None and self._consent_next is not None:
            if self._retransmit_at >= self._consent_next:
                self._retransmit_at = None  # the next check takes over
        return out

    def _answered(self, message: stun.StunMessage, data: bytes, source: Address, now: float) -> CheckOutcome:
        request = self._requests.get(message.transaction_id)
        if request is None or request.source != source:
            return CheckOutcome(CheckResult.IGNORED)
        if not stun.verify_integrity(data, request.key):
            return CheckOutcome(CheckResult.BAD_INTEGRITY)
        del self._requests[message.transaction_id]
        if request.consent:
            self.consent_checks_answered += 1
            self.consent_counts["answered"] += 1
        if request is self._consent_request:
            self._consent_request = None
            self._retransmit_at = None
        self._heard[source] = now
        self.verify(source, now)
        return CheckOutcome(CheckResult.VERIFIED, consent=request.consent)

    def _refused(self, message: stun.StunMessage, data: bytes, source: Address) -> CheckOutcome:
        request = self._requests.get(message.transaction_id)
        if request is None or request.source != source:
            return CheckOutcome(CheckResult.IGNORED)
        if not stun.verify_integrity(data, request.key):
            return CheckOutcome(CheckResult.BAD_INTEGRITY)
        del self._requests[message.transaction_id]
        code = message.error_code()
        if code is not None and code[0] == FORBIDDEN and source == self.media_destination():
            self.consent_revoked = True
            self.consent_counts["revoked"] += 1
            return CheckOutcome(CheckResult.CONSENT_REVOKED)
        return CheckOutcome(CheckResult.IGNORED)
