# -*- test-case-name: tests.test_auth -*-
"""Server API keys: made at random, stored only as hashes in a keys file, and a CLI to add one.

A keys file has one key a line, ``<name> sha256:<64 hex digits>``; ``#``
starts a comment. The name says whose key it is (it appears in metrics and
logs); the key itself is never stored or logged. API keys are 256 random
bits, so a plain SHA-256 is as strong as a slow password hash here: there is
nothing to guess.

``python -m voiceedge.signaling.keys new NAME`` prints a new key once and
the line for the keys file (``--append FILE`` adds the line itself).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import secrets
import sys
from dataclasses import dataclass
from typing import Mapping, Sequence

__all__ = [
    "API_KEY_PREFIX",
    "ApiKeys",
    "KeysFileError",
    "hash_line",
    "load_keys_file",
    "new_api_key",
    "parse_keys",
]

#: Server API keys start with this; client secrets with ``ek_``.
API_KEY_PREFIX = "sk_"
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}\Z")
_HASH = re.compile(r"sha256:([0-9a-f]{64})\Z")
# Longer Bearer values are not worth hashing: no key of ours is this long.
MAX_TOKEN_LENGTH = 256


class KeysFileError(ValueError):
    """A keys file is unusable; the message names the file and line, never a key."""


@dataclass(frozen=True, slots=True)
class ApiKeys:
    """The API keys a service accepts: key name by SHA-256 digest."""

    names_by_digest: Mapping[bytes, str]

    def name_of(self, token: str) -> str | None:
        """The name of the key ``token`` is, or ``None``."""
        if len(token) > MAX_TOKEN_LENGTH:
            return None
        # A lookup by digest leaks nothing through timing: the caller cannot
        # steer the digest of what it sends towards a stored one.
        digest = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        return self.names_by_digest.get(digest)

    def __len__(self) -> int:
        return len(self.names_by_digest)


def new_api_key() -> str:
    """A new API key: ``sk_`` and 256 random bits in URL-safe base64."""
    return API_KEY_PREFIX + secrets.token_urlsafe(32)


def hash_line(name: str, key: str) -> str:
    """The keys-file line for ``key`` under ``name``."""
    if not _NAME.match(name):
        raise ValueError("a key name is 1-64 of A-Z a-z 0-9 _ . -")
    return f"{name} sha256:{hashlib.sha256(key.encode('utf-8')).hexdigest()}"


def parse_keys(text: str, source: str = "<keys>") -> ApiKeys:
    """Parse a keys file's text; :class:`KeysFileError` names the line of any problem."""
    names: dict[bytes, str] = {}
    seen: set[str] = set()
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2:
            raise KeysFileError(f"{source}:{number}: expected '<name> sha256:<hex>'")
        name, hashed = parts
        if not _NAME.match(name):
            raise KeysFileError(f"{source}:{number}: a key name is 1-64 of A-Z a-z 0-9 _ . -")
        match = _HASH.match(hashed)
        if match is None:
            # Never echo the value: someone may have pasted a key instead of its hash.
            raise KeysFileError(f"{source}:{number}: key {name!r} is not 'sha256:' and 64 lower-case hex digits")
        if name in seen:
            raise KeysFileError(f"{source}:{number}: key name {name!r} appears twice")
        digest = bytes.fromhex(match.group(1))
        if digest in names:
            raise KeysFileError(f"{source}:{number}: key {name!r} has the same hash as {names[digest]!r}")
        seen.add(name)
        names[digest] = name
    return ApiKeys(names)


def load_keys_file(path: str) -> ApiKeys:
    """Read and parse the keys file at ``path``."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise KeysFileError(f"{path}: cannot read: {e.strerror or e}") from e
    except UnicodeDecodeError as e:
        raise KeysFileError(f"{path}: not UTF-8") from e
    return parse_keys(text, path)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m voiceedge.signaling.keys new NAME [--append FILE]``."""
    parser = argparse.ArgumentParser(
        prog="python -m voiceedge.signaling.keys", description="Make voiceedge server API keys."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    new = commands.add_parser("new", help="make a key; print it once, and its keys-file line")
    new.add_argument("name", help="whose key it is (shown in metrics and logs)")
    new.add_argument("--append", metavar="FILE", help="add the line to this keys file (made 0600 if new)")
    args = parser.parse_args(argv)

    key = new_api_key()
    try:
        line = hash_line(args.name, key)
    except ValueError as e:
        parser.error(str(e))
    if args.append:
        try:
            existing = load_keys_file(args.append) if os.path.exists(args.append) else ApiKeys({})
        except KeysFileError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        if args.name in existing.names_by_digest.values():
            print(f"error: {args.append} already has a key named {args.name!r}", file=sys.stderr)
            return 1
        fd = os.open(args.append, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(fd, "a", encoding="utf-8") as f:
            f.write(line + "\n")
        print(f"added {args.name!r} to {args.append}", file=sys.stderr)
    else:
        print("keys-file line:", file=sys.stderr)
        print(line)
    print("API key (shown only now; give it to the server that calls voiceedge):", file=sys.stderr)
    print(key)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
