"""A Realtime session's configuration: what session.update may say, and how it merges."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from voiceedge.transceiver.realtime_config import (
    SessionConfigError,
    TurnDetectionDefaults,
    default_config,
    merged,
)

# What @openai/agents-realtime 0.20.0 sends first, with its defaults (voice left out: undefined).
SDK_FIRST_UPDATE: dict[str, Any] = {
    "type": "realtime",
    "instructions": "You are a helpful assistant.",
    "model": "gpt-realtime-2.1",
    "output_modalities": ["audio"],
    "audio": {
        "input": {
            "format": {"type": "audio/pcm", "rate": 24000},
            "noise_reduction": None,
            "transcription": {"model": "gpt-4o-mini-transcribe"},
            "turn_detection": {"type": "semantic_vad"},
        },
        "output": {"format": {"type": "audio/pcm", "rate": 24000}, "speed": 1},
    },
}


DEFAULTS = TurnDetectionDefaults(600, False)


def base() -> dict[str, Any]:
    return default_config("s", "voiceedge-test", DEFAULTS, expires_at=5)


def merge(config: dict[str, Any], update: Any) -> dict[str, Any]:
    return merged(config, update, DEFAULTS)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=12), inner, max_size=3),
    max_leaves=12,
)
keys = st.sampled_from(["type", "instructions", "audio", "input", "output", "turn_detection", "voice", "threshold", "format", "tools", "x"])
updates = st.dictionaries(
    keys, json_values | st.dictionaries(keys, json_values | st.dictionaries(keys, json_values, max_size=4), max_size=4), max_size=4
)


class MergeTests(SynchronousTestCase):
    # Nested JSON takes a while to generate when another test runs beside it (trial -j):
    # the too_slow health check times the generator, not the merge under test.
    @settings(suppress_health_check=[HealthCheck.too_slow])
    @given(updates)
    def test_any_update_is_merged_or_refused_with_our_error(self, update: dict[str, Any]) -> None:
        """Hostile updates: either a configuration or a SessionConfigError, never anything else."""
        try:
            config = merge(base(), update)
        except SessionConfigError as e:
            self.assertTrue(e.param.startswith("session"))
        else:
            self.assertEqual(config["type"], "realtime")

    def test_the_sdks_own_updates_are_accepted(self) -> None:
        config = merge(base(), SDK_FIRST_UPDATE)
        self.assertEqual(config["model"], "gpt-realtime-2.1")
        self.assertEqual(
            config["audio"]["input"]["turn_detection"],
            {"type": "semantic_vad", "eagerness": "auto", "create_response": True, "interrupt_response": False},
        )
        self.assertEqual(config["audio"]["output"]["voice"], "alloy")
        config = merge(config, {"type": "realtime", "tracing": "auto"})
        self.assertEqual(config["tracing"], "auto")

    def test_defaults_follow_the_operator(self) -> None:
        detection = base()["audio"]["input"]["turn_detection"]
        self.assertEqual((detection["silence_duration_ms"], detection["interrupt_response"]), (600, False))

    def test_containers_merge_and_leaves_are_replaced(self) -> None:
        config = merge(base(), {"audio": {"input": {"turn_detection": {"type": "server_vad", "silence_duration_ms": 900}}}})
        config = merge(config, {"audio": {"output": {"voice": {"id": "voice_1"}}}})
        self.assertEqual(config["audio"]["input"]["turn_detection"]["silence_duration_ms"], 900)
        self.assertEqual(config["audio"]["output"]["voice"], {"id": "voice_1"})
        config = merge(config, {"audio": {"input": {"turn_detection": {"type": "server_vad", "threshold": 0.2}}}})
        # Replaced whole: the silence is back to its default.
        self.assertEqual(config["audio"]["input"]["turn_detection"]["silence_duration_ms"], 600)

    def test_nothing_changes_on_error(self) -> None:
        start = base()
        with self.assertRaises(SessionConfigError):
            merge(start, {"instructions": "x", "output_modalities": ["smell"]})
        self.assertEqual(start, base())

    def test_errors_name_the_field(self) -> None:
        cases: list[tuple[Any, str, str]] = [
            ("nonsense", "session", "invalid_type"),
            ({"type": "transcription"}, "session.type", "invalid_value"),
            ({"turn_detection": None}, "session.turn_detection", "unknown_parameter"),
            ({"instructions": 5}, "session.instructions", "invalid_type"),
            ({"audio": {"input": {"turn_detection": {"type": "server_vad", "silence_duration_ms": 10**400}}}}, "session.audio.input.turn_detection.silence_duration_ms", "invalid_value"),
            ({"audio": {"input": {"turn_detection": {"type": "server_vad", "silence_duration_ms": True}}}}, "session.audio.input.turn_detection.silence_duration_ms", "invalid_type"),
            ({"audio": {"input": {"turn_detection": {"type": "server_vad", "threshold": float("nan")}}}}, "session.audio.input.turn_detection.threshold", "invalid_value"),
            ({"audio": {"input": {"turn_detection": {"type": "server_vad", "eagerness": "low"}}}}, "session.audio.input.turn_detection.eagerness", "unknown_parameter"),
            ({"audio": {"input": {"turn_detection": {"type": "magic"}}}}, "session.audio.input.turn_detection.type", "invalid_value"),
            ({"audio": {"input": {"turn_detection": {"type": "semantic_vad", "eagerness": "now"}}}}, "session.audio.input.turn_detection.eagerness", "invalid_value"),
            ({"audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000}}}}, "session.audio.input.format.rate", "invalid_value"),
            ({"audio": {"output": {"speed": 3}}}, "session.audio.output.speed", "invalid_value"),
            ({"audio": {"output": {"voice": ""}}}, "session.audio.output.voice", "invalid_value"),
            ({"audio": {"sideways": {}}}, "session.audio.sideways", "unknown_parameter"),
            ({"audio": {"input": {"volume": 1}}}, "session.audio.input.volume", "unknown_parameter"),
            ({"max_output_tokens": 0}, "session.max_output_tokens", "invalid_value"),
            ({"tools": [1]}, "session.tools[0]", "invalid_type"),
        ]
        for update, param, code in cases:
            with self.assertRaises(SessionConfigError) as caught:
                merge(base(), update)
            self.assertEqual((caught.exception.param, caught.exception.code), (param, code), update)


