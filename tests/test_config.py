# -*- test-case-name: tests.test_config -*-
"""INI loading and validation."""

from __future__ import annotations

import re
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from tests.cases import case
from voiceedge import config as c

SCHEMA: c.Schema = {
    "server": {
        "listen": c.Key(c.address, "127.0.0.1:3478"),
        "workers": c.Key(c.integer(1, 64), "2"),
        "debug": c.Key(c.boolean, "no"),
    },
    "redis": {"networks": c.Key(c.networks, "10.0.0.0/8, 192.168.0.0/16")},
}


class LoadConfigTests(SynchronousTestCase):
    """load_config: defaults, overrides, and a ConfigError naming file, section and key for bad input."""

    def setUp(self) -> None:
        self.directory = Path(self.mktemp()).resolve()
        self.directory.mkdir(parents=True)

    def write(self, text: str) -> str:
        """An INI file holding ``text``."""
        path = self.directory / "x.ini"
        path.write_text(text)
        return str(path)

    def assertConfigError(self, pattern: str, path: str) -> None:  # noqa: N802
        """Loading ``path`` raises ConfigError whose message matches ``pattern`` (re.search)."""
        with self.assertRaises(c.ConfigError) as raised:
            c.load_config(SCHEMA, path)
        self.assertTrue(re.search(pattern, str(raised.exception)), f"{pattern!r} not in {str(raised.exception)!r}")

    def test_defaults_without_a_file(self) -> None:
        """With no file every key takes its default, parsed."""
        conf = c.load_config(SCHEMA)
        self.assertEqual(conf["server"], {"listen": ("127.0.0.1", 3478), "workers": 2, "debug": False})
        self.assertEqual(len(conf["redis"]["networks"]), 2)

    def test_values_override_defaults(self) -> None:
        """Keys in the file override defaults; IPv6 addresses are bracketed."""
        conf = c.load_config(SCHEMA, self.write("[server]\nlisten = [::1]:9\nworkers = 8\n"))
        self.assertEqual(conf["server"]["listen"], ("::1", 9))
        self.assertEqual(conf["server"]["workers"], 8)

    def test_unknown_section_names_file_and_section(self) -> None:
        """An unknown section stops loading with file and section named."""
        path = self.write("[servr]\nlisten = 127.0.0.1:1\n")
        self.assertConfigError(r"x\.ini: unknown section \[servr\]", path)

    def test_unknown_key_names_file_section_and_key(self) -> None:
        """An unknown key stops loading with file, section and key named."""
        path = self.write("[server]\nlistn = 127.0.0.1:1\n")
        self.assertConfigError(r"x\.ini: \[server\] unknown key 'listn'", path)

    def test_bad_values_name_file_section_and_key(self) -> None:
        """A value that does not parse stops loading, naming where it is and why."""
        for line, why in [
            ("workers = 0", "between 1 and 64"),
            ("workers = two", "not a whole number"),
            ("debug = maybe", "yes or no"),
            ("listen = localhost:1", "not an IP address"),
            ("listen = 127.0.0.1:70000", "between 0 and 65535"),
            ("listen = 127.0.0.1", "not an IP address|host:port"),
        ]:
            with case(line):
                path = self.write(f"[server]\n{line}\n")
                key = line.split(" ")[0]
                self.assertConfigError(rf"x\.ini: \[server\] {key} = .*({why})", path)

    def test_unreadable_and_malformed_files(self) -> None:
        """A missing file or one that is not INI is a ConfigError, not a traceback."""
        self.assertConfigError("cannot read", str(self.directory / "missing.ini"))
        self.assertConfigError("x.ini", self.write("listen = 1\n"))
        self.assertConfigError("x.ini", self.write("[server]\nworkers = 1\nworkers = 2\n"))


class ShippedFilesTests(SynchronousTestCase):
    """The INI files in etc/ are valid."""

    def test_shipped_ini_files_load(self) -> None:
        """Every INI file in etc/ loads against its service's schema."""
        from voiceedge.transceiver.settings import TransceiverServiceSettings
        from voiceedge.transceiver.tap import load_with_agent

        root = Path(__file__).parent.parent / "etc"
        settings, agent = load_with_agent(TransceiverServiceSettings, str(root / "transceiver.ini"))
        self.assertEqual(agent.kind.name, "echo")
        self.assertEqual(settings.agent.name, "echo")
