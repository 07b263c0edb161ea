# -*- test-case-name: tests.test_auth -*-
"""Who is calling: Bearer API keys and short-lived client secrets (``ek_``), behind one checker interface.

The shape is OpenAI's Realtime API: a server holds an API key, asks
``POST /v1/realtime/client_secrets`` for a client secret, and hands that to
a browser, which puts it in ``Authorization: Bearer ek_...`` when it POSTs
its offer. Both kinds open calls; a client secret opens one call and is
spent. The credential that opened a call (and the API key that issued the
client secret it used) may later read, restart or end that call.

Signaling asks an :class:`ICredentialChecker` for a :class:`Caller`, so a
front door and a transceiver can share one. Unspent client secrets live in
an :class:`IClientSecretStore`: :class:`ClientSecrets` in this process's
memory (a transceiver, the all-in-one), or a store every front door shares
(:class:`voiceedge.fleet.shared_secrets.RedisClientSecrets`), whose answers
come later, as Deferreds.
"""

from __future__ import annotations

import enum
import hashlib
import heapq
import secrets
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, TypeVar, Union

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from zope.interface import Attribute, Interface, implementer

from voiceedge.metrics import Sample
from voiceedge.signaling.keys import ApiKeys

__all__ = [
    "ANONYMOUS",
    "CLIENT_SECRET_PREFIX",
    "Caller",
    "ClientSecrets",
    "CredentialKind",
    "Credentials",
    "IClientSecretStore",
    "ICredentialChecker",
    "IssuedSecret",
    "Purpose",
    "SecretRecord",
    "TooManySecrets",
    "Unauthorized",
    "bearer_token",
]

CLIENT_SECRET_PREFIX = "ek_"

T = TypeVar("T")
#: A value now, or a Deferred of it from a store in another process.
Maybe = Union[T, "defer.Deferred[T]"]


class CredentialKind(enum.Enum):
    """What kind of credential a caller showed."""

    API_KEY = "api_key"
    CLIENT_SECRET = "client_secret"
    ANONYMOUS = "anonymous"


class Purpose(enum.Enum):
    """What a credential is being shown for; each accepts different kinds."""

    #: ``POST`` an offer: an API key, or an unspent client secret (which this spends).
    NEW_CALL = "new_call"
    #: ``GET``/``PATCH``/``DELETE`` a session: any credential; the ledger decides whose it is.
    SESSION = "session"
    #: ``POST /v1/realtime/client_secrets``: an API key only.
    MINT_SECRET = "mint_secret"
    #: ``/metrics`` and other operator endpoints: an API key only.
    ADMIN = "admin"


@dataclass(frozen=True, slots=True)
class Caller:
    """An authenticated caller.

    ``principal`` names the credential (``key:<name>``, ``ek:<digest>``,
    ``anonymous``) without containing it; ``identities`` are every principal
    the caller may act as (on an open service, ``anonymous`` too).
    ``key_name`` is the API key answerable for the caller, for per-key
    limits: the key itself, or the one that issued the client secret.
    ``managers`` are the principals allowed to manage sessions this caller
    opens. ``settings`` is the session configuration a client secret carried.
    """

    principal: str
    kind: CredentialKind
    key_name: str | None = None
    managers: frozenset[str] = frozenset()
    identities: frozenset[str] = frozenset()
    settings: Mapping[str, Any] | None = field(default=None, compare=False)
    # The unspent secret this caller redeemed, to put back if no call opens.
    _secret: SecretRecord | None = field(default=None, compare=False, repr=False)


ANONYMOUS = Caller(
    "anonymous", CredentialKind.ANONYMOUS, None, frozenset({"anonymous"}), frozenset({"anonymous"})
)


class Unauthorized(Exception):
    """No usable credential: answered ``401`` with ``WWW-Authenticate``.

    ``error`` is RFC 6750's code: ``None`` when no credential was shown,
    ``invalid_token`` for a bad one, ``insufficient_scope`` for a client
    secret where only an API key will do.
    """

    def __init__(self, reason: str, error: str | None = "invalid_token") -> None:
        super().__init__(reason)
        self.reason = reason
        self.error = error

    def challenge(self, realm: str = "voiceedge") -> bytes:
        """The ``WWW-Authenticate`` value."""
        value = f'Bearer realm="{realm}"'
        if self.error is not None:
            value += f', error="{self.error}"'
        return value.encode("ascii")


class TooManySecrets(Exception):
    """The client-secret store is full of unexpired secrets (answered ``429``)."""


class ICredentialChecker(Interface):
    """Turns an ``Authorization`` header into a :class:`Caller`, or refuses it.

    Every method may answer with a Deferred (a client secret kept in
    another process); signaling waits for it.
    """

    open = Attribute("True when no credential is needed (auth = none, or loopback without keys).")

    def caller_for(authorization: bytes | None, purpose: Purpose) -> Maybe[Caller]:
        """The caller behind ``authorization`` for ``purpose``; raise (or fail with) :class:`Unauthorized`.

        For :attr:`Purpose.NEW_CALL` a client secret is spent; hand the caller
        to :meth:`refund` if no call comes of it.
        """

    def refund(caller: Caller) -> Maybe[None]:
        """Give back a client secret spent on a call that did not open (bad offer, full)."""

    def issue_secret(
        issuer: Caller, ttl: float | None, settings: Mapping[str, Any] | None
    ) -> Maybe[IssuedSecret]:
        """A new client secret for ``issuer``; raise (or fail with) :class:`TooManySecrets` when full."""


class IClientSecretStore(Interface):
    """Unspent client secrets, by digest: each spent at most once, gone when it expires.

    Methods answer at once (:class:`ClientSecrets`, in memory) or with a
    Deferred (a store front doors share). Only digests of secrets are kept.
    """

    default_ttl = Attribute("Seconds a secret lives when the request does not say.")
    max_ttl = Attribute("The longest lifetime a request may ask for.")
    issued = Attribute("Secrets issued by this process.")
    spent = Attribute("Secrets this process took out of the store to open a call.")

    def issue(issuer: Caller, ttl: float | None, settings: Mapping[str, Any] | None) -> Maybe[IssuedSecret]:
        """A new secret for ``issuer``; :class:`TooManySecrets` when the store is full."""

    def spend(value: str) -> Maybe[SecretRecord | None]:
        """Take the unexpired secret ``value`` out of the store, atomically; ``None`` if there is none."""

    def put_back(record: SecretRecord) -> Maybe[None]:
        """Return a spent secret whose call never opened (it keeps its expiry)."""

    def unspent() -> int:
        """Unexpired secrets in the store, as last known (for a gauge)."""


@dataclass(frozen=True, slots=True)
class IssuedSecret:
    """A client secret as ``POST /v1/realtime/client_secrets`` returns it."""

    value: str
    expires_at: float
    settings: Mapping[str, Any] | None


@dataclass(frozen=True, slots=True)
class SecretRecord:
    """What a store keeps of an unspent client secret: its digest, never the secret."""

    #: SHA-256 of the secret.
    digest: bytes
    #: The principal of the API key that issued it (``key:<name>``, or ``anonymous``).
    issuer: str
    #: The API key answerable for the calls it opens, if any.
    key_name: str | None
    expires_at: float
    settings: Mapping[str, Any] | None


def secret_digest(value: str) -> bytes:
    """The SHA-256 digest a client secret is stored and looked up by."""
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).digest()


_digest = secret_digest


def _secret_principal(digest: bytes) -> str:
    return "ek:" + digest[:16].hex()


@implementer(IClientSecretStore)
class ClientSecrets:
    """Unspent client secrets in memory, by digest, each until it expires or is spent.

    Bounded: ``max_secrets`` unexpired secrets at most (expired ones are
    swept first). Only digests are kept, so the store's memory never holds
    a usable secret.
    """

    def __init__(
        self,
        clock: IReactorTime,
        *,
        default_ttl: float = 60.0,
        max_ttl: float = 600.0,
        max_secrets: int = 4096,
    ) -> None:
        if not 0 < default_ttl <= max_ttl:
            raise ValueError("client secret TTLs must satisfy 0 < default_ttl <= max_ttl")
        self.clock = clock
        self.default_ttl = default_ttl
        self.max_ttl = max_ttl
        self.max_secrets = max_secrets
        self._by_digest: dict[bytes, SecretRecord] = {}
        self._expiry: list[tuple[float, bytes]] = []
        self.issued = 0
        self.spent = 0

    def issue(self, issuer: Caller, ttl: float | None, settings: Mapping[str, Any] | None) -> IssuedSecret:
        """A new secret for ``issuer`` valid ``ttl`` seconds (default and ceiling configured)."""
        self._sweep()
        if len(self._by_digest) >= self.max_secrets:
            raise TooManySecrets()
        lifetime = self.default_ttl if ttl is None else min(float(ttl), self.max_ttl)
        expires_at = self.clock.seconds() + lifetime
        value = CLIENT_SECRET_PREFIX + secrets.token_urlsafe(32)
        digest = _digest(value)
        self._by_digest[digest] = SecretRecord(digest, issuer.principal, issuer.key_name, expires_at, settings)
        heapq.heappush(self._expiry, (expires_at, digest))
        self.issued += 1
        return IssuedSecret(value, expires_at, settings)

    def spend(self, value: str) -> SecretRecord | None:
        """Take an unexpired secret out of the store; ``None`` if there is none."""
        record = self._by_digest.pop(_digest(value), None)
        if record is None:
            return None
        if record.expires_at <= self.clock.seconds():
            return None
        self.spent += 1
        return record

    def put_back(self, record: SecretRecord) -> None:
        """Return a spent secret whose call never opened (it keeps its expiry)."""
        if record.expires_at > self.clock.seconds() and record.digest not in self._by_digest:
            self._by_digest[record.digest] = record
            heapq.heappush(self._expiry, (record.expires_at, record.digest))
            self.spent -= 1

    def _sweep(self) -> None:
        now = self.clock.seconds()
        while self._expiry and self._expiry[0][0] <= now:
            expires_at, digest = heapq.heappop(self._expiry)
            record = self._by_digest.get(digest)
            if record is not None and record.expires_at == expires_at:
                del self._by_digest[digest]
        if len(self._expiry) > 2 * max(len(self._by_digest), 64):
            # Spent secrets leave stale heap entries behind; rebuild now and then.
            self._expiry = [(r.expires_at, d) for d, r in self._by_digest.items()]
            heapq.heapify(self._expiry)

    def unspent(self) -> int:
        """Unexpired secrets held now."""
        self._sweep()
        return len(self._by_digest)

    def __len__(self) -> int:
        return self.unspent()


def bearer_token(authorization: bytes | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, else ``None``."""
    if authorization is None:
        return None
    scheme, _, token = authorization.strip().partition(b" ")
    if scheme.lower() != b"bearer":
        return None
    token = token.strip()
    if not token or len(token) > 512:
        return None
    try:
        return token.decode("ascii")
    except UnicodeDecodeError:
        return None


@implementer(ICredentialChecker)
class Credentials:
    """The checker of one service: API keys from a keys file, client secrets in a store.

    With ``api_keys`` of ``None`` the service is open (``auth = none``, or
    the loopback default): every request is :data:`ANONYMOUS`, except that a
    valid client secret still carries its settings to the call it opens.
    Answers are at once, but for spending a client secret in a store that
    answers later.
    """

    def __init__(self, api_keys: ApiKeys | None, client_secrets: IClientSecretStore) -> None:
        self.api_keys = api_keys
        self.client_secrets = client_secrets
        self.open = api_keys is None

    def caller_for(self, authorization: bytes | None, purpose: Purpose) -> Maybe[Caller]:
        """See :meth:`ICredentialChecker.caller_for`."""
        token = bearer_token(authorization)
        if token is not None and token.startswith(CLIENT_SECRET_PREFIX):
            return self._client_secret_caller(token, purpose)
        if self.api_keys is None:
            return ANONYMOUS
        if token is None:
            if authorization is None:
                raise Unauthorized("this endpoint needs Authorization: Bearer <key>", error=None)
            raise Unauthorized("the Authorization header is not 'Bearer <key>'", error="invalid_request")
        name = self.api_keys.name_of(token)
        if name is None:
            raise Unauthorized("the key is not valid")
        principal = "key:" + name
        return Caller(principal, CredentialKind.API_KEY, name, frozenset({principal}), frozenset({principal}))

    def _client_secret_caller(self, token: str, purpose: Purpose) -> Maybe[Caller]:
        digest = _digest(token)
        principal = _secret_principal(digest)
        identities = frozenset({principal, ANONYMOUS.principal} if self.open else {principal})
        if purpose is Purpose.SESSION:
            # A secret is spent by the call it opened, yet still names that
            # call's holder; no store lookup, the digest is the proof.
            return Caller(principal, CredentialKind.CLIENT_SECRET, None, frozenset({principal}), identities)
        if purpose is not Purpose.NEW_CALL:
            if self.open:
                return ANONYMOUS
            raise Unauthorized("a client secret cannot do this; use an API key", error="insufficient_scope")
        spent = self.client_secrets.spend(token)
        if isinstance(spent, defer.Deferred):
            return spent.addCallback(self._spender, principal, identities)
        return self._spender(spent, principal, identities)

    def _spender(self, record: SecretRecord | None, principal: str, identities: frozenset[str]) -> Caller:
        if record is None:
            if self.open:
                return ANONYMOUS
            raise Unauthorized("the client secret is not valid, expired, or already used")
        return Caller(
            principal,
            CredentialKind.CLIENT_SECRET,
            record.key_name,
            frozenset({principal, record.issuer}),
            identities,
            record.settings,
            record,
        )

    def metrics(self) -> Iterator[Sample]:
        """Samples for :mod:`voiceedge.metrics`: client secrets issued, spent, unspent."""
        secrets_ = self.client_secrets
        yield ("counter", "voiceedge_client_secrets_issued", "Client secrets issued.", {}, secrets_.issued)
        yield ("counter", "voiceedge_client_secrets_spent", "Client secrets that opened a call.", {}, secrets_.spent)
        yield ("gauge", "voiceedge_client_secrets_unspent", "Client secrets issued, not yet used or expired.", {},
               secrets_.unspent())

    def refund(self, caller: Caller) -> Maybe[None]:
        """See :meth:`ICredentialChecker.refund`."""
        if caller._secret is not None:
            return self.client_secrets.put_back(caller._secret)
        return None

    def issue_secret(
        self, issuer: Caller, ttl: float | None, settings: Mapping[str, Any] | None
    ) -> Maybe[IssuedSecret]:
        """See :meth:`ICredentialChecker.issue_secret`."""
        return self.client_secrets.issue(issuer, ttl, settings)
