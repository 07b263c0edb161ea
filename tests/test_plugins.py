"""The twistd plugins: discoverable, well-formed, and listed by a fresh install."""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest
from twisted.application.service import IServiceMaker
from twisted.plugin import IPlugin, getPlugins
from zope.interface.verify import verifyObject

REPO = Path(__file__).resolve().parent.parent
EXPECTED = {"voiceedge", "voiceedge-transceiver", "voiceedge-relay"}


def test_every_plugin_is_found_and_provides_its_interfaces() -> None:
    """A plugin that fails to import vanishes from twistd silently; this catches it."""
    found = {p.tapname: p for p in getPlugins(IServiceMaker) if p.tapname.startswith("voiceedge")}
    assert set(found) == EXPECTED
    for plugin in found.values():
        verifyObject(IServiceMaker, plugin)
        verifyObject(IPlugin, plugin)
        assert plugin.options().parseOptions is not None


def test_no_init_files_shadow_twisted() -> None:
    """twisted/ and twisted/plugins/ in the repo must stay namespace directories."""
    assert not (REPO / "twisted" / "__init__.py").exists()
    assert not (REPO / "twisted" / "plugins" / "__init__.py").exists()


@pytest.mark.integration
def test_twistd_help_lists_every_plugin_after_a_fresh_install(tmp_path: Path) -> None:
    """pip install into a new virtualenv, then ``twistd --help`` from elsewhere lists our plugins."""
    env_dir = tmp_path / "venv"
    # System site-packages supply the dependencies (no download); the package
    # itself, and its plugin file, come only from this install.
    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
         "--no-build-isolation", "--disable-pip-version-check", str(REPO)],
        check=True,
        cwd=tmp_path,
    )
    clean_env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    help_text = subprocess.run(
        # twistd itself, run by the new environment's interpreter.
        [str(python), "-c", "from twisted.scripts.twistd import run; run()", "--help"],
        check=True, capture_output=True, text=True, cwd=tmp_path, env=clean_env,
    ).stdout
    for name in EXPECTED:
        assert f"    {name} " in help_text, help_text
    where = subprocess.run(
        [str(python), "-c",
         "import twisted.plugins.voiceedge_plugins as p, voiceedge; print(p.__file__); print(voiceedge.__file__)"],
        check=True, capture_output=True, text=True, cwd=tmp_path, env=clean_env,
    ).stdout.split()
    assert all(path.startswith(str(env_dir)) for path in where), where
