"""INI loading and validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from voiceedge import config as c

SCHEMA: c.Schema = {
    "server": {
        "listen": c.Key(c.address, "127.0.0.1:3478"),
        "workers": c.Key(c.integer(1, 64), "2"),
        "debug": c.Key(c.boolean, "no"),
    },
    "redis": {"networks": c.Key(c.networks, "10.0.0.0/8, 192.168.0.0/16")},
}


def write(tmp_path: Path, text: str) -> str:
    """An INI file holding ``text``."""
    path = tmp_path / "x.ini"
    path.write_text(text)
    return str(path)


def test_defaults_without_a_file() -> None:
    """With no file every key takes its default, parsed."""
    conf = c.load_config(SCHEMA)
    assert conf["server"] == {"listen": ("127.0.0.1", 3478), "workers": 2, "debug": False}
    assert len(conf["redis"]["networks"]) == 2


def test_values_override_defaults(tmp_path: Path) -> None:
    """Keys in the file override defaults; IPv6 addresses are bracketed."""
    conf = c.load_config(SCHEMA, write(tmp_path, "[server]\nlisten = [::1]:9\nworkers = 8\n"))
    assert conf["server"]["listen"] == ("::1", 9)
    assert conf["server"]["workers"] == 8


def test_unknown_section_names_file_and_section(tmp_path: Path) -> None:
    """An unknown section stops loading with file and section named."""
    path = write(tmp_path, "[servr]\nlisten = 127.0.0.1:1\n")
    with pytest.raises(c.ConfigError, match=r"x\.ini: unknown section \[servr\]"):
        c.load_config(SCHEMA, path)


def test_unknown_key_names_file_section_and_key(tmp_path: Path) -> None:
    """An unknown key stops loading with file, section and key named."""
    path = write(tmp_path, "[server]\nlistn = 127.0.0.1:1\n")
    with pytest.raises(c.ConfigError, match=r"x\.ini: \[server\] unknown key 'listn'"):
        c.load_config(SCHEMA, path)


@pytest.mark.parametrize(
    "line, why",
    [
        ("workers = 0", "between 1 and 64"),
        ("workers = two", "not a whole number"),
        ("debug = maybe", "yes or no"),
        ("listen = localhost:1", "not an IP address"),
        ("listen = 127.0.0.1:70000", "between 0 and 65535"),
        ("listen = 127.0.0.1", "not an IP address|host:port"),
    ],
)
def test_bad_values_name_file_section_and_key(tmp_path: Path, line: str, why: str) -> None:
    """A value that does not parse stops loading, naming where it is and why."""
    path = write(tmp_path, f"[server]\n{line}\n")
    key = line.split(" ")[0]
    with pytest.raises(c.ConfigError, match=rf"x\.ini: \[server\] {key} = .*({why})"):
        c.load_config(SCHEMA, path)


def test_unreadable_and_malformed_files(tmp_path: Path) -> None:
    """A missing file or one that is not INI is a ConfigError, not a traceback."""
    with pytest.raises(c.ConfigError, match="cannot read"):
        c.load_config(SCHEMA, str(tmp_path / "missing.ini"))
    with pytest.raises(c.ConfigError, match="x.ini"):
        c.load_config(SCHEMA, write(tmp_path, "listen = 1\n"))
    with pytest.raises(c.ConfigError, match="x.ini"):
        c.load_config(SCHEMA, write(tmp_path, "[server]\nworkers = 1\nworkers = 2\n"))


def test_shipped_ini_files_load() -> None:
    """Every INI file in etc/ loads against its service's schema."""
    from voiceedge.transceiver.settings import TransceiverServiceSettings
    from voiceedge.transceiver.tap import load_with_agent

    root = Path(__file__).parent.parent / "etc"
    settings, agent = load_with_agent(TransceiverServiceSettings, str(root / "transceiver.ini"))
    assert agent.kind.name == settings.agent.name == "echo"
