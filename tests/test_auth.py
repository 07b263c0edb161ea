# -*- test-case-name: tests.test_auth -*-
"""Tests for voiceedge.signaling.keys and .auth: the keys file, its CLI, API keys and client secrets."""

from __future__ import annotations

import contextlib
import io
import os
import stat

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from voiceedge.signaling import keys
from voiceedge.signaling.auth import (
    ANONYMOUS,
    ClientSecrets,
    CredentialKind,
    Credentials,
    ICredentialChecker,
    Purpose,
    TooManySecrets,
    Unauthorized,
    bearer_token,
)

KEY = "sk_" + "A" * 43
OTHER_KEY = "sk_" + "B" * 43


def bearer(token: str) -> bytes:
    """An Authorization header value."""
    return b"Bearer " + token.encode("ascii")


def keys_for(**named: str) -> keys.ApiKeys:
    """ApiKeys holding ``name=key`` pairs, through the keys-file format."""
    return keys.parse_keys("\n".join(keys.hash_line(name, key) for name, key in named.items()))


class KeysFileTests(SynchronousTestCase):
    """The keys file holds names and hashes, and its errors never echo a key."""

    def test_round_trip(self) -> None:
        """A hash line made for a key finds that key's name, and no other key."""
        api_keys = keys_for(web=KEY)
        self.assertEqual(api_keys.name_of(KEY), "web")
        self.assertIsNone(api_keys.name_of(OTHER_KEY))
        self.assertIsNone(api_keys.name_of("x" * 10_000))

    def test_comments_and_blank_lines(self) -> None:
        """``#`` comments and blank lines are ignored."""
        text = "# who may call\n\n" + keys.hash_line("web", KEY) + "  # the web backend\n"
        self.assertEqual(len(keys.parse_keys(text)), 1)

    def test_errors_name_the_line_not_the_key(self) -> None:
        """A pasted key instead of a hash is refused without repeating it."""
        error = self.assertRaises(keys.KeysFileError, keys.parse_keys, f"web {KEY}\n", "secrets.txt")
        self.assertIn("secrets.txt:1", str(error))
        self.assertNotIn(KEY, str(error))

    def test_duplicates_refused(self) -> None:
        """A name or a hash twice is an error."""
        line = keys.hash_line("web", KEY)
        self.assertRaises(keys.KeysFileError, keys.parse_keys, line + "\n" + keys.hash_line("web", OTHER_KEY))
        self.assertRaises(keys.KeysFileError, keys.parse_keys, line + "\n" + line.replace("web", "web2"))

    def test_bad_names_refused(self) -> None:
        """Names are plain words."""
        self.assertRaises(ValueError, keys.hash_line, "two words", KEY)
        self.assertRaises(keys.KeysFileError, keys.parse_keys, "a/b sha256:" + "0" * 64)

    def test_unreadable_file(self) -> None:
        """A missing file is a KeysFileError naming it."""
        error = self.assertRaises(keys.KeysFileError, keys.load_keys_file, "/nonexistent/keys")
        self.assertIn("/nonexistent/keys", str(error))

    def test_new_keys_are_random_and_long(self) -> None:
        """``sk_`` and 256 random bits."""
        made = {keys.new_api_key() for _ in range(100)}
        self.assertEqual(len(made), 100)
        self.assertTrue(all(k.startswith("sk_") and len(k) == 46 for k in made))


class KeysCliTests(SynchronousTestCase):
    """``python -m voiceedge.signaling.keys new NAME``."""

    def run_cli(self, *argv: str) -> tuple[int, str, str]:
        """Run main() capturing its output."""
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = keys.main(list(argv))
        return code, out.getvalue(), err.getvalue()

    def test_new_prints_the_line_and_the_key(self) -> None:
        """The printed key matches the printed line."""
        code, out, _ = self.run_cli("new", "web")
        self.assertEqual(code, 0)
        line, key = out.split()[0:2], out.split()[2]
        parsed = keys.parse_keys(" ".join(line))
        self.assertEqual(parsed.name_of(key), "web")

    def test_append_writes_a_private_file(self) -> None:
        """--append adds the line to a new 0600 file, and refuses the same name twice."""
        path = self.mktemp()
        code, out, _ = self.run_cli("new", "web", "--append", path)
        self.assertEqual(code, 0)
        key = out.strip()
        self.assertEqual(keys.load_keys_file(path).name_of(key), "web")
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        code, _, err = self.run_cli("new", "web", "--append", path)
        self.assertEqual(code, 1)
        self.assertIn("already", err)
        code, out, _ = self.run_cli("new", "phone", "--append", path)
        self.assertEqual(len(keys.load_keys_file(path)), 2)


class CredentialsTests(SynchronousTestCase):
    """API keys, client secrets, and the open service, on a Clock."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.secrets = ClientSecrets(self.clock, default_ttl=60, max_ttl=600, max_secrets=10)
        self.checker = Credentials(keys_for(web=KEY, other=OTHER_KEY), self.secrets)

    def test_provides_the_interface(self) -> None:
        """Both the closed and the open checker are ICredentialChecker."""
        verifyObject(ICredentialChecker, self.checker)
        verifyObject(ICredentialChecker, Credentials(None, self.secrets))

    def test_api_key(self) -> None:
        """A known key is a caller named after it, answerable for itself."""
        caller = self.checker.caller_for(bearer(KEY), Purpose.NEW_CALL)
        self.assertEqual((caller.principal, caller.kind, caller.key_name), ("key:web", CredentialKind.API_KEY, "web"))
        self.assertEqual(caller.managers, frozenset({"key:web"}))

    def test_missing_and_bad_credentials(self) -> None:
        """No header: a challenge without error; a bad key: invalid_token; another scheme: invalid_request."""
        none = self.assertRaises(Unauthorized, self.checker.caller_for, None, Purpose.NEW_CALL)
        self.assertEqual(none.challenge(), b'Bearer realm="voiceedge"')
        bad = self.assertRaises(Unauthorized, self.checker.caller_for, bearer("sk_nope"), Purpose.NEW_CALL)
        self.assertEqual(bad.challenge(), b'Bearer realm="voiceedge", error="invalid_token"')
        basic = self.assertRaises(Unauthorized, self.checker.caller_for, b"Basic dXNlcjpwdw==", Purpose.SESSION)
        self.assertEqual(basic.error, "invalid_request")

    def test_client_secret_opens_one_call(self) -> None:
        """A secret is spent by the call it opens; it carries its settings and its issuer."""
        web = self.checker.caller_for(bearer(KEY), Purpose.MINT_SECRET)
        issued = self.checker.issue_secret(web, None, {"type": "realtime", "instructions": "hi"})
        self.assertTrue(issued.value.startswith("ek_"))
        self.assertEqual(issued.expires_at, self.clock.seconds() + 60)
        caller = self.checker.caller_for(bearer(issued.value), Purpose.NEW_CALL)
        self.assertEqual(caller.kind, CredentialKind.CLIENT_SECRET)
        self.assertEqual(caller.key_name, "web")
        self.assertEqual(caller.settings, {"type": "realtime", "instructions": "hi"})
        self.assertEqual(caller.managers, frozenset({caller.principal, "key:web"}))
        self.assertNotIn(issued.value, caller.principal)
        self.assertRaises(Unauthorized, self.checker.caller_for, bearer(issued.value), Purpose.NEW_CALL)

    def test_spent_secret_still_names_its_holder(self) -> None:
        """For a session, a spent secret is the same principal as when it opened the call."""
        web = self.checker.caller_for(bearer(KEY), Purpose.MINT_SECRET)
        value = self.checker.issue_secret(web, None, None).value
        opened = self.checker.caller_for(bearer(value), Purpose.NEW_CALL)
        later = self.checker.caller_for(bearer(value), Purpose.SESSION)
        self.assertEqual(later.identities, frozenset({opened.principal}))

    def test_refund_gives_the_secret_back(self) -> None:
        """A call that did not open does not use up the secret."""
        web = self.checker.caller_for(bearer(KEY), Purpose.MINT_SECRET)
        value = self.checker.issue_secret(web, None, None).value
        caller = self.checker.caller_for(bearer(value), Purpose.NEW_CALL)
        self.checker.refund(caller)
        self.checker.caller_for(bearer(value), Purpose.NEW_CALL)

    def test_expiry(self) -> None:
        """A secret past its lifetime opens nothing; a refund after expiry does not revive it."""
        web = self.checker.caller_for(bearer(KEY), Purpose.MINT_SECRET)
        value = self.checker.issue_secret(web, 30, None).value
        caller = self.checker.caller_for(bearer(value), Purpose.NEW_CALL)
        self.clock.advance(31)
        self.checker.refund(caller)
        self.assertRaises(Unauthorized, self.checker.caller_for, bearer(value), Purpose.NEW_CALL)
        late = self.checker.issue_secret(web, 30, None).value
        self.clock.advance(30)
        self.assertRaises(Unauthorized, self.checker.caller_for, bearer(late), Purpose.NEW_CALL)

    def test_ttl_is_capped(self) -> None:
        """No secret outlives max_ttl, whatever was asked."""
        web = self.checker.caller_for(bearer(KEY), Purpose.MINT_SECRET)
        issued = self.checker.issue_secret(web, 10_000, None)
        self.assertEqual(issued.expires_at, self.clock.seconds() + 600)

    def test_a_secret_cannot_mint_or_administer(self) -> None:
        """Only API keys make secrets or read metrics."""
        web = self.checker.caller_for(bearer(KEY), Purpose.MINT_SECRET)
        value = self.checker.issue_secret(web, None, None).value
        for purpose in (Purpose.MINT_SECRET, Purpose.ADMIN):
            error = self.assertRaises(Unauthorized, self.checker.caller_for, bearer(value), purpose)
            self.assertEqual(error.error, "insufficient_scope")

    def test_the_store_is_bounded_and_sweeps_expired_secrets(self) -> None:
        """Ten unspent secrets fill it; once they expire there is room again."""
        web = self.checker.caller_for(bearer(KEY), Purpose.MINT_SECRET)
        for _ in range(10):
            self.checker.issue_secret(web, None, None)
        self.assertRaises(TooManySecrets, self.checker.issue_secret, web, None, None)
        self.clock.advance(61)
        self.assertEqual(len(self.secrets), 0)
        self.checker.issue_secret(web, None, None)

    def test_open_service(self) -> None:
        """Without keys everyone is anonymous, yet a valid secret still brings its settings."""
        checker = Credentials(None, self.secrets)
        self.assertIs(checker.caller_for(None, Purpose.NEW_CALL), ANONYMOUS)
        self.assertIs(checker.caller_for(bearer("whatever"), Purpose.ADMIN), ANONYMOUS)
        value = checker.issue_secret(ANONYMOUS, None, {"instructions": "x"}).value
        caller = checker.caller_for(bearer(value), Purpose.NEW_CALL)
        self.assertEqual(caller.settings, {"instructions": "x"})
        self.assertIn("anonymous", caller.managers)
        self.assertIs(checker.caller_for(bearer(value), Purpose.NEW_CALL), ANONYMOUS)

    def test_bearer_token(self) -> None:
        """Only ``Bearer <ascii token>`` yields a token; the scheme is case-insensitive."""
        self.assertEqual(bearer_token(b"bearer abc"), "abc")
        self.assertEqual(bearer_token(b"Bearer  abc "), "abc")
        for bad in (None, b"", b"Bearer", b"Bearer ", b"Basic abc", b"Bearer \xff", b"Bearer " + b"a" * 600):
            self.assertIsNone(bearer_token(bad))
