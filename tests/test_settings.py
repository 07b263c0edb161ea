# -*- test-case-name: tests.test_settings -*-
"""Typed settings: built once from a validated INI file, frozen, and documented in etc/."""

from __future__ import annotations

import configparser
import dataclasses
from pathlib import Path
from typing import Mapping

from twisted.trial.unittest import SynchronousTestCase

from voiceedge import config as c
from voiceedge.config import ConfigError, SettingError, family, section, setting
from voiceedge.relay.settings import RelayServiceSettings, RelaySettings
from voiceedge.signaling.tap import FrontDoorSettings
from voiceedge.tap import AllInOneSettings
from voiceedge.transceiver.settings import TransceiverServiceSettings
from voiceedge.transceiver.tap import load_with_agent

REPO = Path(__file__).resolve().parent.parent

# The reference INI of each service, and the keys whose shipped value is not
# the default (the relay needs a key; its demo one is there to copy).
REFERENCE_FILES: list[tuple[str, type, set[tuple[str, str]]]] = [
    ("etc/relay.ini", RelayServiceSettings, {("token", "keys")}),
    ("etc/transceiver.ini", TransceiverServiceSettings, set()),
    ("etc/voiceedge.ini", AllInOneSettings, set()),
    ("etc/signaling.ini", FrontDoorSettings, {("fleet", "secret")}),
]


@dataclasses.dataclass(frozen=True, slots=True)
class Door:
    """A section for these tests."""

    listen: c.Address = setting(c.address, "127.0.0.1:1", "where")
    width: int = setting(c.integer(1, 10), "2", "how wide")
    password: str = setting(c.text, "", "a secret", secret=True)

    def __post_init__(self) -> None:
        if self.width > 5 and self.listen[0] == "127.0.0.1":
            raise SettingError("width", "wider than 5 needs a public listen")


@dataclasses.dataclass(frozen=True, slots=True)
class House:
    """A service of two sections, one with another default."""

    front: Door = section(Door)
    back: Door = section(Door, name="back-door", width="3", listen="127.0.0.1:2")

    def __post_init__(self) -> None:
        if self.front.listen == self.back.listen:
            raise SettingError("listen", "the back door cannot be the front door", section="back-door")


@dataclasses.dataclass(frozen=True, slots=True)
class Street:
    """A service with any number of [house.<name>] sections."""

    front: Door = section(Door)
    houses: Mapping[str, Door] = family(Door, "house")


class SettingsTests(SynchronousTestCase):
    """load_settings turns an INI file into one frozen, typed object, or says exactly what is wrong."""

    def write(self, text: str) -> str:
        path = Path(self.mktemp()).resolve()
        path.write_text(text)
        return str(path)

    def test_defaults_and_overrides(self) -> None:
        """Every key has its default parsed; a service can change a section's defaults."""
        house, _ = c.load_settings(House)
        self.assertEqual(house, House())
        self.assertEqual(house.front, Door(listen=("127.0.0.1", 1), width=2))
        self.assertEqual(house.back.width, 3)
        self.assertEqual(c.schema_of(House)["back-door"]["width"].default, "3")

    def test_values_are_parsed_and_frozen(self) -> None:
        """Values come typed; the objects cannot be changed after they are built."""
        house, _ = c.load_settings(House, self.write("[front]\nlisten = [::1]:9\n[back-door]\nwidth = 4\n"))
        self.assertEqual(house.front.listen, ("::1", 9))
        self.assertEqual(house.back.width, 4)
        with self.assertRaises(dataclasses.FrozenInstanceError):
            house.front.width = 3  # type: ignore[misc]

    def test_errors_name_file_section_and_key(self) -> None:
        """Unknown sections and keys, bad values and broken rules all name where they are."""
        cases = [
            ("[side]\n", r"unknown section \[side\]"),
            ("[front]\nwidht = 1\n", r"\[front\] unknown key 'widht'"),
            ("[back-door]\nwidth = 11\n", r"\[back-door\] width = '11': must be between 1 and 10"),
            ("[front]\nwidth = 6\n", r"\[front\] width: wider than 5 needs a public listen"),
            ("[back-door]\nlisten = 127.0.0.1:1\n", r"\[back-door\] listen: the back door cannot"),
        ]
        for text, message in cases:
            path = self.write(text)
            with self.assertRaisesRegex(ConfigError, "^" + path.replace(".", r"\.") + ": " + message):
                c.load_settings(House, path)

    def test_secrets_stay_out_of_repr(self) -> None:
        """A secret key is not in the object's repr, so logging settings leaks nothing."""
        door = Door(password="hunter2")
        self.assertNotIn("hunter2", repr(door))
        self.assertIn("width=2", repr(door))
        relay, _ = c.load_settings(
            RelayServiceSettings, self.write("[token]\nkeys = 1:Fj+fqFMF8XdTZ0F+RWrNNF6ID/eZ7bX8UP826UB5rR4=\n")
        )
        self.assertNotIn("Fj+f", repr(relay))
        self.assertNotIn(repr(relay.token.keys[1]), repr(relay))

    def test_a_default_that_does_not_parse_fails_at_import(self) -> None:
        """A settings class with a bad default cannot even be defined."""
        with self.assertRaises(ValueError):
            setting(c.integer(1, 2), "3", "out of range")
        with self.assertRaises(TypeError):
            section(Door, depth="1")

    def test_families_of_sections(self) -> None:
        """[house.<name>] sections become a mapping by name; a bad one is named like any other."""
        street, _ = c.load_settings(Street, self.write("[house.a]\nwidth = 3\n[house.b-2]\n"))
        self.assertEqual(dict(street.houses), {"a": Door(width=3), "b-2": Door()})
        self.assertEqual(dict(c.load_settings(Street)[0].houses), {})
        path = self.write("[house.a]\nwidth = 30\n")
        with self.assertRaisesRegex(ConfigError, r"\[house\.a\] width = '30'"):
            c.load_settings(Street, path)
        with self.assertRaisesRegex(ConfigError, r"unknown section \[house\] .*house\.<name>"):
            c.load_settings(Street, self.write("[house]\n"))

    def test_environment_variables(self) -> None:
        """${NAME} takes an environment variable (a pod's IP, a Secret); an unset one is named."""
        path = self.write("[front]\nlisten = ${POD_IP}:8081\npassword = ${DOOR_PASSWORD}\n")
        house, _ = c.load_settings(House, path, environ={"POD_IP": "10.0.0.5", "DOOR_PASSWORD": "pw"})
        self.assertEqual(house.front.listen, ("10.0.0.5", 8081))
        self.assertEqual(house.front.password, "pw")
        with self.assertRaisesRegex(ConfigError, r"\[front\] listen: environment variable POD_IP is not set"):
            c.load_settings(House, path, environ={})

    def test_direct_construction_checks_the_same_rules(self) -> None:
        """Code (and tests) that build settings directly meet the same cross-key rules."""
        with self.assertRaises(SettingError):
            RelaySettings(public_listen=("127.0.0.1", 1), ingress_address=("::1", 1))


class ReferenceFileTests(SynchronousTestCase):
    """etc/ documents every key of every service with its default, and nothing else."""

    def test_reference_files_list_every_key_with_its_default(self) -> None:
        for name, service, not_default in REFERENCE_FILES:
            parser = configparser.ConfigParser(interpolation=None)
            parser.optionxform = str  # type: ignore[assignment,method-assign]
            parser.read(REPO / name, encoding="utf-8")
            schema = dict(c.schema_of(service))
            for prefix, _, keys in c.families_of(service).values():
                # A family's sections are examples: each must list every key.
                for written in parser.sections():
                    if written.startswith(prefix):
                        schema[written] = keys
            if "agent" in schema:
                _, agent = load_with_agent(service, str(REPO / name))
                schema[f"agent.{agent.kind.name}"] = agent.kind.options
            self.assertEqual(set(parser.sections()), set(schema), name)
            for section_name, keys in schema.items():
                self.assertEqual(set(parser[section_name]), set(keys), f"{name} [{section_name}]")
                for key_name, key in keys.items():
                    if (section_name, key_name) in not_default:
                        continue
                    written = parser[section_name][key_name].strip()
                    self.assertEqual(
                        key.parse(written), key.parse(key.default), f"{name} [{section_name}] {key_name}"
                    )

    def test_relay_reference_loads(self) -> None:
        """etc/relay.ini (which needs a key) is a valid relay configuration."""
        settings, _ = c.load_settings(RelayServiceSettings, str(REPO / "etc/relay.ini"))
        self.assertEqual(settings.relay, RelaySettings())
