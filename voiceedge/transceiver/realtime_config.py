# -*- test-case-name: tests.test_realtime_config -*-
"""A Realtime session's configuration: OpenAI's GA ``session`` object, validated and merged.

``session.update`` carries a partial ``session`` object in the shape of the GA
``gpt-realtime`` interface (``type``, ``instructions``, ``audio.input.turn_detection``,
``audio.output.voice``, ...). :func:`merged` checks every field it is given
and returns the whole configuration with the update applied, or raises
:class:`SessionConfigError` naming the first bad field (``param``, as
OpenAI's errors do) and changing nothing.

Merging follows the API: the containers ``audio``, ``audio.input`` and
``audio.output`` merge field by field; every other field, ``turn_detection``
included, is replaced whole (a ``turn_detection`` object gets the defaults
of its ``type`` for the fields it leaves out). An unknown field is an error,
as it is at OpenAI; so is a value of the wrong type or out of range.

What voiceedge does with each field is the event layer's and the agent's
business (:mod:`voiceedge.transceiver.realtime`, docs/realtime-events.md):
this module only says what is valid.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping

__all__ = [
    "SESSION_FIELDS",
    "SessionConfigError",
    "TurnDetectionDefaults",
    "default_config",
    "merged",
]

Config = dict[str, Any]
# A field checker: (value, the field's path for errors) -> the value to store.
Check = Callable[[Any, str], Any]

VOICES = ("alloy", "ash", "ballad", "coral", "echo", "sage", "shimmer", "verse", "marin", "cedar")


class SessionConfigError(ValueError):
    """A ``session.update`` that cannot be applied; ``param`` names the field, ``code`` says why."""

    def __init__(self, param: str, message: str, code: str = "invalid_value") -> None:
        super().__init__(f"{param}: {message}" if param else message)
        self.param = param
        self.message = message
        self.code = code


@dataclass(frozen=True, slots=True)
class TurnDetectionDefaults:
    """What a ``turn_detection`` object is filled with: OpenAI's defaults, and the operator's ``[speech]``."""

    silence_duration_ms: int = 500
    interrupt_response: bool = True


# -- checkers ------------------------------------------------------------------------


def _fail(param: str, message: str, code: str = "invalid_value") -> SessionConfigError:
    return SessionConfigError(param, message, code)


def _string(value: Any, param: str) -> str:
    if not isinstance(value, str):
        raise _fail(param, "must be a string", "invalid_type")
    if len(value) > 64_000:
        raise _fail(param, "is longer than 64000 characters")
    return value


def _boolean(value: Any, param: str) -> bool:
    if not isinstance(value, bool):
        raise _fail(param, "must be true or false", "invalid_type")
    return value


def _number(minimum: float, maximum: float, integer: bool = False) -> Check:
    def check(value: Any, param: str) -> float | int:
        # bool is an int: True is not a duration.
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _fail(param, "must be a number", "invalid_type")
        # Compare before isfinite(): a huge int (10**400) overflows a float.
        if not (minimum <= value <= maximum) or not math.isfinite(value):
            raise _fail(param, f"must be between {minimum:g} and {maximum:g}")
        if integer:
            if value != int(value):
                raise _fail(param, "must be a whole number")
            return int(value)
        return value

    return check


def _choice(*allowed: str) -> Check:
    def check(value: Any, param: str) -> str:
        if value not in allowed:
            raise _fail(param, "must be one of " + ", ".join(repr(a) for a in allowed))
        return str(value)

    return check


def _nullable(check: Check) -> Check:
    def nullable(value: Any, param: str) -> Any:
        return None if value is None else check(value, param)

    return nullable


def _any_of(*checks: Check) -> Check:
    """The first checker that takes the value; the last one's error otherwise."""

    def check(value: Any, param: str) -> Any:
        error: SessionConfigError | None = None
        for candidate in checks:
            try:
                return candidate(value, param)
            except SessionConfigError as e:
                error = e
        assert error is not None
        raise error

    return check


def _json(kind: type, what: str) -> Check:
    """A value stored as given (a deep copy), checked only for its JSON type."""

    def check(value: Any, param: str) -> Any:
        if not isinstance(value, kind):
            raise _fail(param, f"must be {what}", "invalid_type")
        return copy.deepcopy(value)

    return check


def _object(fields: Mapping[str, Check], required: tuple[str, ...] = ()) -> Check:
    """A JSON object with only these fields, each checked."""

    def check(value: Any, param: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise _fail(param, "must be an object", "invalid_type")
        result: dict[str, Any] = {}
        for name, item in value.items():
            spec = fields.get(name)
            where = f"{param}.{name}"
            if spec is None:
                raise _fail(where, "is not a known parameter", "unknown_parameter")
            result[name] = spec(item, where)
        for name in required:
            if name not in result:
                raise _fail(f"{param}.{name}", "is required", "missing_required_parameter")
        return result

    return check


def _list_of(check_item: Check, limit: int = 128) -> Check:
    def check(value: Any, param: str) -> list[Any]:
        if not isinstance(value, list):
            raise _fail(param, "must be an array", "invalid_type")
        if len(value) > limit:
            raise _fail(param, f"has more than {limit} entries")
        return [check_item(item, f"{param}[{i}]") for i, item in enumerate(value)]

    return check


def _format(value: Any, param: str) -> dict[str, Any]:
    """``{"type": "audio/pcm", "rate": 24000}``, ``audio/pcmu`` or ``audio/pcma``.

    Over WebRTC the audio on the wire is Opus whatever this says; the field is
    kept so a client reads back what it set.
    """
    result: dict[str, Any] = _object({"type": _choice("audio/pcm", "audio/pcmu", "audio/pcma"), "rate": _choice_int(24000)}, ("type",))(value, param)
    if result["type"] == "audio/pcm":
        result.setdefault("rate", 24000)
    elif "rate" in result:
        raise _fail(f"{param}.rate", "applies to audio/pcm only", "unknown_parameter")
    return result


def _choice_int(*allowed: int) -> Check:
    def check(value: Any, param: str) -> int:
        if isinstance(value, bool) or value not in allowed:
            raise _fail(param, "must be " + " or ".join(str(a) for a in allowed))
        return int(value)

    return check


def _voice(value: Any, param: str) -> Any:
    if isinstance(value, dict):
        return _object({"id": _string}, ("id",))(value, param)
    voice = _string(value, param)
    if not voice:
        raise _fail(param, "must not be empty")
    return voice


_NOISE_REDUCTION = _nullable(
    _object({"type": _choice("near_field", "far_field"), "strength": _number(0, 1)})
)
_TRANSCRIPTION = _nullable(
    _object({"model": _string, "language": _string, "prompt": _string})
)
_SERVER_VAD_FIELDS: dict[str, Check] = {
    "type": _choice("server_vad"),
    "threshold": _number(0, 1),
    "prefix_padding_ms": _number(0, 10_000, integer=True),
    "silence_duration_ms": _number(0, 10_000, integer=True),
    "create_response": _boolean,
    "interrupt_response": _boolean,
    "idle_timeout_ms": _nullable(_number(0, 3_600_000, integer=True)),
}
_SEMANTIC_VAD_FIELDS: dict[str, Check] = {
    "type": _choice("semantic_vad"),
    "eagerness": _choice("low", "medium", "high", "auto"),
    "create_response": _boolean,
    "interrupt_response": _boolean,
}


def _turn_detection(defaults: TurnDetectionDefaults) -> Check:
    def check(value: Any, param: str) -> dict[str, Any] | None:
        if value is None:
            return None
        if not isinstance(value, dict):
            raise _fail(param, "must be an object or null", "invalid_type")
        kind = value.get("type")
        if kind == "server_vad":
            given = _object(_SERVER_VAD_FIELDS)(value, param)
            filled: dict[str, Any] = {
                "type": "server_vad",
                "threshold": 0.5,
                "prefix_padding_ms": 300,
                "silence_duration_ms": defaults.silence_duration_ms,
                "create_response": True,
                "interrupt_response": defaults.interrupt_response,
                "idle_timeout_ms": None,
            }
        elif kind == "semantic_vad":
            given = _object(_SEMANTIC_VAD_FIELDS)(value, param)
            filled = {
                "type": "semantic_vad",
                "eagerness": "auto",
                "create_response": True,
                "interrupt_response": defaults.interrupt_response,
            }
        else:
            raise _fail(f"{param}.type", "must be 'server_vad' or 'semantic_vad'")
        filled.update(given)
        return filled

    return check


_TOOL = _json(dict, "an object")
_TOOL_CHOICE = _any_of(_string, _json(dict, "a string or an object"))
_TRACING = _any_of(
    _nullable(_choice("auto")),
    _object({"workflow_name": _string, "group_id": _string, "metadata": _json(dict, "an object")}),
)


def _fields(defaults: TurnDetectionDefaults) -> dict[str, Check]:
    """The ``session`` object's top-level fields (``audio`` is merged apart)."""
    return {
        "type": _choice("realtime"),
        "model": _string,
        "instructions": _string,
        "output_modalities": _list_of(_choice("audio", "text"), 2),
        "tools": _list_of(_TOOL),
        "tool_choice": _TOOL_CHOICE,
        "max_output_tokens": _any_of(_choice("inf"), _number(1, 4096, integer=True)),
        "tracing": _TRACING,
        "truncation": _any_of(_choice("auto", "disabled"), _json(dict, "'auto', 'disabled' or an object")),
        "prompt": _nullable(_json(dict, "an object or null")),
        "include": _nullable(_list_of(_string, 8)),
        "parallel_tool_calls": _boolean,
        "reasoning": _json(dict, "an object"),
        # Not in the GA session object, but older clients send it.
        "temperature": _number(0, 2),
    }


def _audio_fields(defaults: TurnDetectionDefaults) -> dict[str, dict[str, Check]]:
    return {
        "input": {
            "format": _format,
            "noise_reduction": _NOISE_REDUCTION,
            "transcription": _TRANSCRIPTION,
            "turn_detection": _turn_detection(defaults),
        },
        "output": {
            "format": _format,
            "voice": _voice,
            "speed": _number(0.25, 1.5),
        },
    }


#: The fields a ``session.update``'s ``session`` may carry.
SESSION_FIELDS = frozenset(_fields(TurnDetectionDefaults())) | {"audio"}


# -- the whole configuration -----------------------------------------------------------


def default_config(
    session_id: str,
    model: str,
    turn_detection: TurnDetectionDefaults = TurnDetectionDefaults(),
    voice: str = "alloy",
    expires_at: int = 0,
) -> Config:
    """The configuration a session starts with (what ``session.created`` shows)."""
    return {
        "type": "realtime",
        "object": "realtime.session",
        "id": session_id,
        "model": model,
        "output_modalities": ["audio"],
        "instructions": "",
        "tools": [],
        "tool_choice": "auto",
        "max_output_tokens": "inf",
        "tracing": None,
        "truncation": "auto",
        "prompt": None,
        "expires_at": expires_at,
        "audio": {
            "input": {
                "format": {"type": "audio/pcm", "rate": 24000},
                "noise_reduction": None,
                "transcription": None,
                "turn_detection": _turn_detection(turn_detection)({"type": "server_vad"}, ""),
            },
            "output": {
                "format": {"type": "audio/pcm", "rate": 24000},
                "voice": voice,
                "speed": 1.0,
            },
        },
        "include": None,
    }


def merged(
    current: Config,
    update: Any,
    turn_detection: TurnDetectionDefaults = TurnDetectionDefaults(),
) -> Config:
    """``current`` with the ``session`` object of a ``session.update`` applied.

    Raises :class:`SessionConfigError` for the first field that is unknown or
    invalid; ``current`` is never changed.
    """
    if not isinstance(update, dict):
        raise _fail("session", "must be an object", "invalid_type")
    result = copy.deepcopy(current)
    fields = _fields(turn_detection)
    for name, value in update.items():
        param = f"session.{name}"
        if name == "audio":
            _merge_audio(result, value, turn_detection)
            continue
        check = fields.get(name)
        if check is None:
            raise _fail(param, "is not a known parameter", "unknown_parameter")
        result[name] = check(value, param)
    return result


def _merge_audio(result: Config, value: Any, defaults: TurnDetectionDefaults) -> None:
    if not isinstance(value, dict):
        raise _fail("session.audio", "must be an object", "invalid_type")
    containers = _audio_fields(defaults)
    audio = result["audio"]
    for direction, fields in value.items():
        where = f"session.audio.{direction}"
        spec = containers.get(direction)
        if spec is None:
            raise _fail(where, "is not a known parameter", "unknown_parameter")
        if not isinstance(fields, dict):
            raise _fail(where, "must be an object", "invalid_type")
        target = audio[direction]
        for name, item in fields.items():
            check = spec.get(name)
            if check is None:
                raise _fail(f"{where}.{name}", "is not a known parameter", "unknown_parameter")
            target[name] = check(item, f"{where}.{name}")
