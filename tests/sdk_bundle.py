# -*- test-case-name: tests.test_sdk -*-
"""OpenAI's browser SDK for tests: ``@openai/agents-realtime`` from npm, pinned, bundled unmodified with esbuild.

``tests/sdk/`` holds a package.json and package-lock.json that pin the SDK and
esbuild, and ``entry.mjs``, which puts the SDK's classes on ``window``. The
bundle is built once per content of those files, in a cache directory outside
the tracked tree (``$VOICEEDGE_CACHE``, else ``~/.cache/voiceedge``), with
``npm ci`` from the npm registry and esbuild; concurrent builders do not step
on each other (each builds in its own directory and the first rename wins).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

__all__ = ["SDK_DIR", "SdkUnavailable", "sdk_bundle"]

SDK_DIR = Path(__file__).resolve().parent / "sdk"
_FILES = ("package.json", "package-lock.json", "entry.mjs")


class SdkUnavailable(Exception):
    """node/npm is missing, or the registry cannot be reached: the SDK cannot be built here."""


def _cache_root() -> Path:
    root = os.environ.get("VOICEEDGE_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "voiceedge"


def sdk_bundle() -> Path:
    """The path of the bundled SDK (an IIFE script), building it if needed."""
    digest = hashlib.sha256()
    for name in _FILES:
        digest.update((SDK_DIR / name).read_bytes())
    target = _cache_root() / f"agents-realtime-{digest.hexdigest()[:16]}"
    bundle = target / "sdk.js"
    if bundle.exists():
        return bundle
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        raise SdkUnavailable("node and npm are needed to build the SDK (scripts/test installs them)")
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="sdk-build-", dir=target.parent))
    try:
        for name in _FILES:
            shutil.copy(SDK_DIR / name, work / name)
        # --ignore-scripts: esbuild's binary comes in its platform package; nothing needs to run.
        _run([npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"], work, 600)
        esbuild = work / "node_modules" / ".bin" / "esbuild"
        _run(
            [str(esbuild), "entry.mjs", "--bundle", "--format=iife", "--platform=browser", "--log-level=error", "--outfile=sdk.js"],
            work,
            120,
        )
        try:
            os.rename(work, target)
        except OSError:
            if not bundle.exists():  # another builder won the race with a complete bundle, or not
                raise
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
    return bundle


def _run(argv: list[str], cwd: Path, timeout: float) -> None:
    try:
        subprocess.run(argv, cwd=cwd, check=True, capture_output=True, text=True, timeout=timeout)
    except subprocess.CalledProcessError as e:
        raise SdkUnavailable(f"{' '.join(argv[:2])} failed: {e.stderr.strip()[-2000:]}") from None
    except subprocess.TimeoutExpired:
        raise SdkUnavailable(f"{' '.join(argv[:2])} took over {timeout:g} s") from None
