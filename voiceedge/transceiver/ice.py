# -*- test-case-name: tests.test_ice -*-
"""ICE-lite (RFC 8445 §2.5) for one session: answer checks, select a path, track consent."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from voiceedge.wire import stun
from voiceedge.wire.errors import WireError

Address = tuple[str, int]

# A lite agent is always controlled (RFC 8445 §6.1.1), so a peer that says it is
# controlled too has a role conflict we cannot resolve by switching.
ROLE_CONFLICT = 487


class CheckResult(enum.Enum):
    """What became of one incoming STUN packet."""

    ANSWERED = "answered"
    IGNORED = "ignored"  # not a binding request: indications, responses
    BAD_INTEGRITY = "bad_integrity"
    BAD_FINGERPRINT = "bad_fingerprint"
    BAD_USERNAME = "bad_username"
    MALFORMED = "malformed"
    ROLE_CONFLICT = "role_conflict"


@dataclass(slots=True)
class CheckOutcome:
    """The result of :meth:`IceLiteAgent.receive`: what to send back, and to whom."""

    result: CheckResult
    response: bytes | None = None
    newly_valid: bool = False
    nominated: bool = False


class IceLiteAgent:
    """The server side of ICE-lite for one session, with no I/O.

    It answers binding requests whose USERNAME is ``<local ufrag>:<remote
    ufrag>`` and whose MESSAGE-INTEGRITY checks out under the local password;
    anything else is dropped without a reply, so an attacker learns nothing
    and cannot use us to reflect traffic. A source becomes *valid* with its
    first good check; the client's ``USE-CANDIDATE`` selects the path media
    goes out on. Each good check on the selected path refreshes consent
    (RFC 7675).
    """

    def __init__(
        self, local_ufrag: str, local_pwd: str, remote_ufrag: str, consent_timeout: float = 30.0
    ) -> None:
        self.local_ufrag = local_ufrag
        self._key = local_pwd.encode("ascii")
        self._username = f"{local_ufrag}:{remote_ufrag}".encode("ascii")
        self._consent_timeout = consent_timeout
        self._last_check: dict[Address, float] = {}
        self.selected: Address | None = None

    def is_valid(self, source: Address) -> bool:
        """Whether ``source`` has passed a check, so its DTLS and media may be taken."""
        return source in self._last_check

    @property
    def valid_sources(self) -> list[Address]:
        """Every source that has passed a check."""
        return list(self._last_check)

    def consent_expires_at(self) -> float | None:
        """When consent lapses; ``None`` before any valid check.

        Consent is the selected path's; before a nomination (media then goes
        to the latest valid source) it is the freshest check on any path, so
        a client that never nominates cannot keep a session alive forever.
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
        if message.method != stun.METHOD_BINDING or message.message_class != stun.StunClass.REQUEST:
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
        self._last_check[source] = now
        nominated = False
        if message.use_candidate and self.selected != source:
            self.selected = source
            nominated = True
        response = stun.binding_success(message, source, self._key)
        return CheckOutcome(CheckResult.ANSWERED, response, newly_valid, nominated)
