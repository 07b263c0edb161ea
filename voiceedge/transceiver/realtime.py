# -*- test-case-name: tests.test_realtime -*-
"""The Realtime event layer: OpenAI's GA Realtime events on ``oai-events``, for every agent.

An agent gives a call audio and its own behaviour; this layer gives it the
protocol the official SDKs wait for. It is sans-I/O: every input takes
``now``; the outputs, in order, are server events to send (dicts) and
*actions* for its driver (:class:`~voiceedge.transceiver.conversation.Conversation`):
stop the agent's audio, ask the agent for a turn, cancel its turn, give it
the new configuration, tune the speech detector, hand it a client event.
:meth:`RealtimeEventLayer.deadline` says when :meth:`~RealtimeEventLayer.handle_timeout`
is due.

What it does, in the terms of the GA ``gpt-realtime`` interface:

* Every server event carries a unique ``event_id``; ``session.created`` goes
  out when the client opens the channel.
* ``session.update`` is validated and merged (:mod:`voiceedge.transceiver.realtime_config`);
  the answer is ``session.updated`` with the whole configuration, or an
  ``error`` naming the field (``param``) and the client's ``event_id``.
* Speech from the session's detector: ``input_audio_buffer.speech_started`` /
  ``speech_stopped`` (``audio_start_ms``/``audio_end_ms`` on the caller's
  audio timeline, ``item_id``), then ``input_audio_buffer.committed`` and the
  user item (``conversation.item.added``/``done``). With
  ``turn_detection: null`` none of these are sent and nothing is interrupted.
* A *response* is an agent's turn: ``response.created``, then with its first
  audio ``response.output_item.added``, ``conversation.item.added``,
  ``response.content_part.added``; at its end ``response.output_audio.done``,
  ``response.output_audio_transcript.done``, ``response.content_part.done``,
  ``response.output_item.done``, ``conversation.item.done`` and
  ``response.done`` with its status (``completed``, or ``cancelled`` with
  ``turn_detected`` or ``client_cancelled``).
* A turn starts when the client sends ``response.create`` and the agent takes
  it (an agent that cannot make a turn gets a response completed at once
  with an empty output), when the agent says so, or, for an agent that says
  nothing about turns, with its first audio; such an *inferred* turn ends
  when its audio has drained for :data:`INFERRED_TURN_GAP`.
* ``output_audio_buffer.started``/``stopped``/``cleared`` follow what the
  caller hears: the RTP sender's playout events, not what the agent queued.
* ``response.cancel``, ``output_audio_buffer.clear`` and barge-in (speech
  while a response is under way or audible, with ``interrupt_response``)
  all stop the agent's audio through one action, :class:`StopAudio`.

docs/realtime-events.md has the table of every event: handled here, passed
through to the agent, or answered with an error.
"""

from __future__ import annotations

import collections
import copy
import secrets
import time
from dataclasses import dataclass
from typing import Any, Literal, Mapping, Union

from twisted.logger import Logger

from voiceedge.media.speech import SpeechStarted, SpeechStopped
from voiceedge.transceiver.realtime_config import (
    SESSION_FIELDS,
    SessionConfigError,
    TurnDetectionDefaults,
    default_config,
    merged,
)
from voiceedge.transceiver.rtp_sender import PlayoutStarted, PlayoutStopped

__all__ = [
    "CancelTurn",
    "ConfigureAgent",
    "ConfigureDetector",
    "ForwardToAgent",
    "IdSource",
    "INFERRED_TURN_GAP",
    "Output",
    "RealtimeEventLayer",
    "RequestTurn",
    "StopAudio",
    "TurnMode",
]

log = Logger()

#: An inferred turn (an agent that does not say when its turns end) ends when
#: its audio has not played for this long: longer than the gaps of a backend
#: streaming at real-time speed, short enough for the client's next request.
INFERRED_TURN_GAP = 0.25
#: Conversation items kept for retrieve/delete/truncate; older ones are forgotten.
MAX_ITEMS = 256
#: OpenAI refuses to commit less audio than this.
MIN_COMMIT_MS = 100
#: Server events held until the client opens the channel (so ``session.created``
#: comes first); beyond this they are dropped and counted.
MAX_HELD_EVENTS = 256

TurnMode = Literal["explicit", "inferred", "none"]

# Client events the layer answers itself; other Realtime client event types
# that make no sense over WebRTC get an error; anything else goes to the agent.
_REALTIME_CLIENT_EVENTS = frozenset(
    {
        "session.update",
        "response.create",
        "response.cancel",
        "output_audio_buffer.clear",
        "conversation.item.create",
        "conversation.item.delete",
        "conversation.item.retrieve",
        "conversation.item.truncate",
        "input_audio_buffer.append",
        "input_audio_buffer.commit",
        "input_audio_buffer.clear",
        "transcription_session.update",
    }
)


# -- outputs besides server events --------------------------------------------------


@dataclass(frozen=True, slots=True)
class StopAudio:
    """Stop the agent's audio now: drop what is queued, end the talkspurt.

    ``reason``: ``barge_in`` (the caller spoke over it), ``cancel``
    (``response.cancel``) or ``clear`` (``output_audio_buffer.clear``).
    """

    reason: Literal["barge_in", "cancel", "clear"]


@dataclass(frozen=True, slots=True)
class RequestTurn:
    """Ask the agent for a turn now (``response.create``); ``request`` is the client's ``response`` object.

    The driver answers with :meth:`RealtimeEventLayer.turn_declined` when the
    agent will not make one.
    """

    response_id: str
    request: dict[str, Any]


@dataclass(frozen=True, slots=True)
class CancelTurn:
    """Tell the agent its turn is cancelled: it must send no more of it."""

    response_id: str


@dataclass(frozen=True, slots=True)
class ConfigureAgent:
    """The session's configuration changed: give the agent the whole of it."""

    config: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ConfigureDetector:
    """Tune the session's speech detector: ``threshold_db`` above the noise floor, ``silence_ms``,
    and ``threshold``, the client's voice probability (``server_vad``), for a detector that has one."""

    threshold_db: float
    silence_ms: float
    threshold: float | None = None


@dataclass(frozen=True, slots=True)
class ForwardToAgent:
    """Hand a client event to the agent (``IAgent.event_received``)."""

    event: dict[str, Any]


Action = Union[StopAudio, RequestTurn, CancelTurn, ConfigureAgent, ConfigureDetector, ForwardToAgent]
#: What the layer outputs, in order: server events to send, and actions.
Output = Union[dict[str, Any], Action]


class IdSource:
    """Ids unique within a session, and across sessions in practice: ``<kind>_<random prefix><counter>``."""

    def __init__(self, prefix: str | None = None) -> None:
        self._prefix = secrets.token_hex(6) if prefix is None else prefix
        self._counter = 0

    def new(self, kind: str) -> str:
        """A fresh id such as ``event_3fa9c20b11de1a``."""
        self._counter += 1
        return f"{kind}_{self._prefix}{self._counter:x}"


@dataclass(slots=True)
class _Response:
    """A response (an agent turn) under way."""

    id: str
    inferred: bool  # ends when its audio drains, not when the agent says
    requested: bool  # the client asked for it
    item_id: str | None = None  # the assistant item, once audio came


class RealtimeEventLayer:
    """One session's Realtime protocol state: configuration, items, the response under way, playout.

    ``agent_turns`` says what the agent does about turns: ``explicit`` (it
    answers ``response.create`` and says when its turns start and end),
    ``inferred`` (turns are its bursts of audio; it cannot answer
    ``response.create``), ``none`` (its audio is not made of turns: the echo;
    ``response.create`` completes at once and its audio belongs to no response).
    """

    def __init__(
        self,
        session_id: str,
        *,
        model: str = "voiceedge",
        base_threshold_db: float = 12.0,
        turn_detection: TurnDetectionDefaults = TurnDetectionDefaults(),
        ids: IdSource | None = None,
        expires_at: int | None = None,
        counters: collections.Counter[str] | None = None,
    ) -> None:
        self.session_id = session_id
        self._ids = ids or IdSource()
        self._turn_defaults = turn_detection
        self._base_threshold_db = base_threshold_db
        self.config = default_config(
            session_id,
            model,
            turn_detection,
            expires_at=int(time.time()) + 3600 if expires_at is None else expires_at,
        )
        self.agent_turns: TurnMode = "inferred"
        self._outputs: list[Output] = []
        self._open = False
        self._held: list[dict[str, Any]] = []
        self._conversation_id = self._ids.new("conv")

        # Conversation items, oldest first, bounded.
        self._items: collections.OrderedDict[str, dict[str, Any]] = collections.OrderedDict()
        self._last_item_id: str | None = None

        # The caller's audio timeline: its origin and what is not committed yet.
        self._audio_origin: float | None = None
        self._uncommitted_ms = 0
        self._speech_item: str | None = None

        # The response under way, and the response whose audio is queued or playing.
        self._response: _Response | None = None
        self._audio_owner: str | None = None
        self._audio_done = True  # the owner will add no more audio
        self._responded_with_audio = False
        self._playing = False
        self._buffer_started = False  # output_audio_buffer.started sent for this playout
        self._gap_deadline: float | None = None

        #: Events by kind (``server.<type>``, ``client.<type>``, ``error.<code>``),
        #: shared by every session of a transceiver when it passes its own.
        self.counters: collections.Counter[str] = collections.Counter() if counters is None else counters

    # -- outputs ----------------------------------------------------------------

    def idle(self) -> bool:
        """Whether the layer has no outputs waiting and no deadline: then there is nothing to carry out."""
        return not self._outputs and self._gap_deadline is None

    def take_outputs(self) -> list[Output]:
        """Server events and actions since the last call, in order."""
        outputs = self._outputs
        if outputs:
            self._outputs = []
        return outputs

    def deadline(self) -> float | None:
        """When :meth:`handle_timeout` is due: an inferred turn's audio has drained."""
        return self._gap_deadline

    def _send(self, kind: str, **fields: Any) -> None:
        event: dict[str, Any] = {"type": kind, "event_id": self._ids.new("event")}
        event.update(fields)
        self.counters["server." + kind] += 1
        self._emit(event)

    def _emit(self, event: dict[str, Any]) -> None:
        if self._open:
            self._outputs.append(event)
        elif len(self._held) < MAX_HELD_EVENTS:
            self._held.append(event)
        else:
            self.counters["dropped_before_open"] += 1

    def _error(
        self,
        message: str,
        *,
        code: str,
        param: str | None = None,
        client_event_id: Any = None,
        kind: str = "invalid_request_error",
    ) -> None:
        self.counters["error." + code] += 1
        self._send(
            "error",
            error={
                "type": kind,
                "code": code,
                "message": message,
                "param": param,
                "event_id": client_event_id if isinstance(client_event_id, str) else None,
            },
        )

    def configure_from(self, settings: Mapping[str, Any]) -> None:
        """Start from ``settings`` (a client secret's ``session``) merged over the defaults.

        Fields that are not the Realtime session's (``agent``: which agent
        serves the call) are left out. Settings that do not validate are
        refused whole, logged and counted; the defaults stay.
        """
        update = {k: v for k, v in settings.items() if k in SESSION_FIELDS}
        try:
            self.config = merged(self.config, update, self._turn_defaults)
        except SessionConfigError as e:
            self.counters["error.initial_settings"] += 1
            log.warn("session {id}: its client secret's settings are refused: {why}", id=self.session_id[:6], why=str(e))

    # -- the agent and the channel ------------------------------------------------

    def agent_ready(self, turns: TurnMode) -> None:
        """The agent exists; ``turns`` is what it does about turns."""
        self.agent_turns = turns
        self._outputs.append(ConfigureAgent(copy.deepcopy(self.config)))

    def channel_opened(self, now: float) -> None:
        """The client opened ``oai-events``: ``session.created`` first, then what happened before."""
        if self._open:
            return
        self._open = True
        self._send("session.created", session=copy.deepcopy(self.config))
        held, self._held = self._held, []
        self._outputs.extend(held)

    def client_event_rejected(self, why: str, now: float) -> None:
        """A message on ``oai-events`` that is not an event."""
        self._error(why, code="invalid_json")

    # -- client events ----------------------------------------------------------------

    def client_event(self, event: dict[str, Any], now: float) -> None:
        """One JSON event from the client (an object with a string ``type``)."""
        kind = event["type"]
        event_id = event.get("event_id")
        if kind not in _REALTIME_CLIENT_EVENTS:
            # Not a Realtime client event: the agent's own protocol (the echo echoes it).
            self._outputs.append(ForwardToAgent(event))
            return
        self.counters["client." + kind] += 1
        if kind == "session.update":
            self._session_update(event, event_id)
        elif kind == "response.create":
            self._response_create(event, event_id, now)
        elif kind == "response.cancel":
            self._response_cancel(event, event_id)
        elif kind == "output_audio_buffer.clear":
            self._output_audio_clear(now)
        elif kind == "conversation.item.create":
            self._item_create(event, event_id)
        elif kind == "conversation.item.delete":
            self._item_delete(event, event_id)
        elif kind == "conversation.item.retrieve":
            self._item_retrieve(event, event_id)
        elif kind == "conversation.item.truncate":
            self._item_truncate(event, event_id)
        elif kind == "input_audio_buffer.commit":
            self._commit(event_id, client=True, event=event)
        elif kind == "input_audio_buffer.clear":
            self._uncommitted_ms = 0
            self._send("input_audio_buffer.cleared")
            self._outputs.append(ForwardToAgent(event))
        elif kind == "input_audio_buffer.append":
            self._error(
                "over WebRTC the caller's audio comes on the media track, not in events",
                code="invalid_event",
                client_event_id=event_id,
            )
        else:  # transcription_session.update
            self._error(
                "this is a realtime session; transcription sessions are not offered",
                code="invalid_event",
                client_event_id=event_id,
            )

    def _session_update(self, event: dict[str, Any], event_id: Any) -> None:
        if "session" not in event:
            self._error("session is required", code="missing_required_parameter", param="session", client_event_id=event_id)
            return
        try:
            config = merged(self.config, event["session"], self._turn_defaults)
        except SessionConfigError as e:
            self._error(e.message, code=e.code, param=e.param, client_event_id=event_id)
            return
        if self._responded_with_audio and config["audio"]["output"]["voice"] != self.config["audio"]["output"]["voice"]:
            self._error(
                "the voice cannot be changed once the agent has answered with audio",
                code="cannot_update_voice",
                param="session.audio.output.voice",
                client_event_id=event_id,
            )
            return
        before = self.config["audio"]["input"]["turn_detection"]
        self.config = config
        after = config["audio"]["input"]["turn_detection"]
        if after != before:
            detector = self._detector_settings(after)
            if detector is not None:
                self._outputs.append(detector)
        self._outputs.append(ConfigureAgent(copy.deepcopy(config)))
        self._send("session.updated", session=copy.deepcopy(config))

    def _detector_settings(self, turn_detection: dict[str, Any] | None) -> ConfigureDetector | None:
        """The speech detector's knobs for a ``turn_detection`` object.

        ``threshold`` (0..1, 0.5 by default) maps linearly onto the level above
        the noise floor: 0 is 3 dB, 0.5 is the ``[speech] threshold_db`` the
        operator set, 1 is twice that less 3 dB. ``semantic_vad`` has no
        semantic model behind it here: its ``eagerness`` picks the silence
        (``low`` 1000 ms, ``high`` 250 ms, otherwise the server default).
        """
        if turn_detection is None:
            return None
        base = self._base_threshold_db
        if turn_detection["type"] == "server_vad":
            threshold = float(turn_detection["threshold"])
            threshold_db = 3.0 + threshold * 2 * (base - 3.0)
            silence = float(turn_detection["silence_duration_ms"])
        else:
            threshold_db = base
            eagerness = turn_detection["eagerness"]
            silence = {"low": 1000.0, "high": 250.0}.get(eagerness, float(self._turn_defaults.silence_duration_ms))
        probability = float(turn_detection["threshold"]) if turn_detection["type"] == "server_vad" else None
        return ConfigureDetector(threshold_db=max(1.0, threshold_db), silence_ms=silence, threshold=probability)

    # -- responses ----------------------------------------------------------------------

    def _response_object(self, response: _Response, status: str, details: dict[str, Any] | None, output: list[Any]) -> dict[str, Any]:
        output_config = self.config["audio"]["output"]
        return {
            "object": "realtime.response",
            "id": response.id,
            "status": status,
            "status_details": details,
            "output": output,
            "conversation_id": self._conversation_id,
            "output_modalities": list(self.config["output_modalities"]),
            "max_output_tokens": self.config["max_output_tokens"],
            "audio": {"output": {"format": copy.deepcopy(output_config["format"]), "voice": output_config["voice"]}},
            "usage": copy.deepcopy(_EMPTY_USAGE) if status != "in_progress" else None,
            "metadata": None,
        }

    def _start_response(self, *, inferred: bool, requested: bool) -> _Response:
        response = _Response(self._ids.new("resp"), inferred=inferred, requested=requested)
        self._response = response
        self._send("response.created", response=self._response_object(response, "in_progress", None, []))
        return response

    def _response_create(self, event: dict[str, Any], event_id: Any, now: float) -> None:
        request = event.get("response", {})
        if not isinstance(request, dict):
            self._error("response must be an object", code="invalid_type", param="response", client_event_id=event_id)
            return
        if self._response is not None:
            self._error(
                f"conversation already has an active response in progress: {self._response.id}",
                code="conversation_already_has_active_response",
                client_event_id=event_id,
            )
            return
        response = self._start_response(inferred=False, requested=True)
        if self.agent_turns == "explicit":
            self._outputs.append(RequestTurn(response.id, copy.deepcopy(request)))
        else:
            # The agent cannot make a turn on request: done at once, so no client waits.
            self._finish_response(now, "completed")

    def turn_declined(self, response_id: str, now: float) -> None:
        """The agent will not make the turn :class:`RequestTurn` asked for: complete it empty."""
        response = self._response
        if response is not None and response.id == response_id and response.item_id is None:
            self._finish_response(now, "completed")

    def _response_cancel(self, event: dict[str, Any], event_id: Any) -> None:
        response = self._response
        wanted = event.get("response_id")
        if response is None or (wanted is not None and wanted != response.id):
            self._error(
                "there is no response in progress to cancel"
                if response is None
                else f"response {wanted!r} is not the one in progress",
                code="response_cancel_not_active",
                client_event_id=event_id,
            )
            return
        self._cancel(response, "client_cancelled")
        if self._audio_owner == response.id:
            self._outputs.append(StopAudio("cancel"))

    def _output_audio_clear(self, now: float) -> None:
        response = self._response
        if response is not None:
            self._cancel(response, "client_cancelled")
        playing = self._playing
        self._outputs.append(StopAudio("clear"))
        if not playing:
            # Nothing audible to cut: the playout says nothing, so say it here.
            self._send("output_audio_buffer.cleared", response_id=self._audio_owner)

    def _cancel(self, response: _Response, reason: str) -> None:
        """End ``response`` as cancelled; the agent is told to stop it."""
        self._outputs.append(CancelTurn(response.id))
        self._finish_response(None, "cancelled", {"type": "cancelled", "reason": reason})

    def _finish_response(self, now: float | None, status: str, details: dict[str, Any] | None = None) -> None:
        response = self._response
        if response is None:
            return
        self._response = None
        self._gap_deadline = None
        output: list[Any] = []
        item_id = response.item_id
        if item_id is not None:
            item_status = "completed" if status == "completed" else "incomplete"
            common = {"response_id": response.id, "item_id": item_id, "output_index": 0, "content_index": 0}
            self._send("response.output_audio.done", **common)
            self._send("response.output_audio_transcript.done", transcript="", **common)
            self._send("response.content_part.done", part={"type": "audio", "transcript": ""}, **common)
            item = self._assistant_item(item_id, item_status, done=True)
            self._remember(item)
            self._send("response.output_item.done", response_id=response.id, output_index=0, item=item)
            self._send("conversation.item.done", previous_item_id=self._previous_of(item_id), item=copy.deepcopy(item))
            output.append(copy.deepcopy(item))
            if self._audio_owner == response.id:
                self._audio_done = True
        self._send("response.done", response=self._response_object(response, status, details, output))
        if item_id is not None and self._audio_owner == response.id and not self._playing and self._buffer_started:
            # Its audio already drained while the agent was still on its turn.
            self._buffer_started = False
            self._send("output_audio_buffer.stopped", response_id=response.id)

    def _assistant_item(self, item_id: str, status: str, done: bool) -> dict[str, Any]:
        content = [{"type": "output_audio", "transcript": ""}] if done else []
        return {
            "id": item_id,
            "object": "realtime.item",
            "type": "message",
            "status": status,
            "role": "assistant",
            "content": content,
        }

    # -- the agent's turns and audio ------------------------------------------------------

    def turn_started(self, now: float) -> None:
        """The agent says it starts a turn: a requested one it now fills, or a new one."""
        if self.agent_turns == "none":
            return
        if self._response is None:
            self._start_response(inferred=False, requested=False)
        else:
            self._response.inferred = False

    def turn_ended(self, now: float, interrupted: bool = False) -> None:
        """The agent has queued all of its turn's audio (``interrupted``: it stopped it instead)."""
        if self._response is None:
            return
        if interrupted:
            self._finish_response(now, "cancelled", {"type": "cancelled", "reason": "turn_detected"})
        else:
            self._finish_response(now, "completed")

    def agent_audio(self, now: float) -> None:
        """The agent queues audio: it belongs to the response under way (one is inferred if none is)."""
        if self.agent_turns == "none":
            if self._audio_owner is not None:
                self._audio_owner = None
            return
        response = self._response
        if response is None:
            response = self._start_response(inferred=True, requested=False)
        if response.item_id is None:
            item_id = response.item_id = self._ids.new("item")
            item = self._assistant_item(item_id, "in_progress", done=False)
            previous = self._last_item_id
            self._remember(item)
            self._send("response.output_item.added", response_id=response.id, output_index=0, item=copy.deepcopy(item))
            self._send("conversation.item.added", previous_item_id=previous, item=copy.deepcopy(item))
            self._send(
                "response.content_part.added",
                response_id=response.id,
                item_id=item_id,
                output_index=0,
                content_index=0,
                part={"type": "audio", "transcript": ""},
            )
            self._responded_with_audio = True
        if self._audio_owner != response.id:
            self._audio_owner = response.id
            if self._playing:
                # Queued behind audio still playing: it is heard from now on.
                self._send("output_audio_buffer.started", response_id=response.id)
                self._buffer_started = True
        self._audio_done = False
        self._gap_deadline = None

    def agent_event(self, event: dict[str, Any]) -> None:
        """An event the agent sends the client: passed on, with an ``event_id`` when it has none."""
        if not isinstance(event.get("event_id"), str):
            event = dict(event)
            event["event_id"] = self._ids.new("event")
        self._emit(event)

    # -- playout: what the caller hears ---------------------------------------------------

    def playout_started(self, event: PlayoutStarted) -> None:
        """The first packet of a talkspurt went out."""
        self._playing = True
        self._gap_deadline = None
        if not self._buffer_started:
            self._buffer_started = True
            self._send("output_audio_buffer.started", response_id=self._audio_owner)

    def playout_stopped(self, event: PlayoutStopped) -> None:
        """A talkspurt ended: drained, or cut by :class:`StopAudio` (or by the agent's own clear)."""
        self._playing = False
        owner = self._audio_owner
        if event.reason != "drained":  # cut: barge-in, a cancel, a clear
            self._buffer_started = False
            self._send("output_audio_buffer.cleared", response_id=owner)
            return
        response = self._response
        if response is not None and owner == response.id:
            if response.inferred:
                self._gap_deadline = event.last_sent_at + INFERRED_TURN_GAP
            # An explicit turn that paused: the buffer stops when the turn is over.
            return
        if self._buffer_started:
            self._buffer_started = False
            self._send("output_audio_buffer.stopped", response_id=owner)

    def handle_timeout(self, now: float) -> None:
        """An inferred turn's audio drained long enough ago: the turn is over."""
        due = self._gap_deadline
        if due is None or now < due:
            return
        self._gap_deadline = None
        response = self._response
        if response is not None and response.inferred and not self._playing:
            self._finish_response(now, "completed")

    # -- the caller's speech ----------------------------------------------------------------

    def audio_received(self, arrival: float, duration: float) -> None:
        """A frame of the caller's audio arrived: it sets the audio timeline's origin and counts as uncommitted."""
        if self._audio_origin is None:
            self._audio_origin = arrival - duration
        self._uncommitted_ms += round(duration * 1000)

    def _audio_ms(self, at: float) -> int:
        origin = self._audio_origin if self._audio_origin is not None else at
        return max(0, round((at - origin) * 1000))

    @property
    def turn_detection(self) -> dict[str, Any] | None:
        """The ``turn_detection`` object in force, or ``None``."""
        value: dict[str, Any] | None = self.config["audio"]["input"]["turn_detection"]
        return value

    def speech_started(self, event: SpeechStarted, audible: bool) -> None:
        """The detector heard the caller start; ``audible``: agent audio is playing now.

        With ``interrupt_response`` this is a barge-in: the response under way
        is cancelled and the agent's audio stops.
        """
        detection = self.turn_detection
        if detection is None:
            return
        item_id = self._speech_item = self._ids.new("item")
        padding = detection.get("prefix_padding_ms", 0) / 1000
        self._send(
            "input_audio_buffer.speech_started",
            audio_start_ms=self._audio_ms(event.time - padding),
            item_id=item_id,
        )
        if not detection["interrupt_response"]:
            return
        response = self._response
        # The caller's audio stops first, then the agent hears of the cancel:
        # the cut is the barge-in's, not the agent's own clear.
        if audible or (response is not None and self._audio_owner == response.id):
            self._outputs.append(StopAudio("barge_in"))
        if response is not None:
            self._cancel(response, "turn_detected")

    def speech_stopped(self, event: SpeechStopped) -> None:
        """The detector heard the caller stop: the speech is committed as a user item."""
        if self.turn_detection is None:
            return
        item_id = self._speech_item or self._ids.new("item")
        self._speech_item = None
        self._send("input_audio_buffer.speech_stopped", audio_end_ms=self._audio_ms(event.at), item_id=item_id)
        self._commit(None, client=False, item_id=item_id)

    def _commit(
        self,
        event_id: Any,
        *,
        client: bool,
        item_id: str | None = None,
        event: dict[str, Any] | None = None,
    ) -> None:
        if client and self._uncommitted_ms < MIN_COMMIT_MS:
            self._error(
                f"buffer too small: expected at least {MIN_COMMIT_MS} ms of audio, "
                f"but the buffer holds {self._uncommitted_ms} ms",
                code="input_audio_buffer_commit_empty",
                client_event_id=event_id,
            )
            return
        self._uncommitted_ms = 0
        item_id = item_id or self._ids.new("item")
        previous = self._last_item_id
        self._send("input_audio_buffer.committed", previous_item_id=previous, item_id=item_id)
        item = {
            "id": item_id,
            "object": "realtime.item",
            "type": "message",
            "status": "completed",
            "role": "user",
            "content": [{"type": "input_audio", "transcript": None}],
        }
        self._remember(item)
        self._send("conversation.item.added", previous_item_id=previous, item=copy.deepcopy(item))
        self._send("conversation.item.done", previous_item_id=previous, item=copy.deepcopy(item))
        if event is not None:
            self._outputs.append(ForwardToAgent(event))

    # -- conversation items -----------------------------------------------------------------

    def _remember(self, item: dict[str, Any]) -> None:
        item_id = item["id"]
        if item_id not in self._items:
            self._last_item_id = item_id
        self._items[item_id] = copy.deepcopy(item)
        while len(self._items) > MAX_ITEMS:
            self._items.popitem(last=False)

    def _previous_of(self, item_id: str) -> str | None:
        previous = None
        for known in self._items:
            if known == item_id:
                return previous
            previous = known
        return None

    def _item_create(self, event: dict[str, Any], event_id: Any) -> None:
        item = event.get("item")
        if not isinstance(item, dict):
            self._error("item must be an object", code="invalid_type", param="item", client_event_id=event_id)
            return
        kind = item.get("type")
        if kind not in ("message", "function_call", "function_call_output"):
            self._error(
                "item.type must be 'message', 'function_call' or 'function_call_output'",
                code="invalid_value",
                param="item.type",
                client_event_id=event_id,
            )
            return
        if kind == "message" and item.get("role") not in ("user", "assistant", "system"):
            self._error(
                "item.role must be 'user', 'assistant' or 'system'",
                code="invalid_value",
                param="item.role",
                client_event_id=event_id,
            )
            return
        item_id = item.get("id")
        if item_id is not None and (not isinstance(item_id, str) or not item_id or len(item_id) > 64):
            self._error("item.id must be a string of 1 to 64 characters", code="invalid_value", param="item.id", client_event_id=event_id)
            return
        if item_id in self._items:
            self._error(f"item {item_id!r} already exists", code="item_already_exists", param="item.id", client_event_id=event_id)
            return
        previous = event.get("previous_item_id", self._last_item_id)
        if previous is not None and previous != "root" and previous not in self._items:
            self._error(
                f"previous item {previous!r} does not exist",
                code="item_not_found",
                param="previous_item_id",
                client_event_id=event_id,
            )
            return
        stored = copy.deepcopy(item)
        stored["id"] = item_id or self._ids.new("item")
        stored["object"] = "realtime.item"
        stored.setdefault("status", "completed")
        self._remember(stored)
        shown_previous = None if previous == "root" else previous
        self._send("conversation.item.added", previous_item_id=shown_previous, item=copy.deepcopy(stored))
        self._send("conversation.item.done", previous_item_id=shown_previous, item=copy.deepcopy(stored))
        self._outputs.append(ForwardToAgent(event))

    def _known_item(self, event: dict[str, Any], event_id: Any) -> str | None:
        item_id = event.get("item_id")
        if not isinstance(item_id, str) or item_id not in self._items:
            self._error(
                f"item {item_id!r} does not exist",
                code="item_not_found",
                param="item_id",
                client_event_id=event_id,
            )
            return None
        return item_id

    def _item_delete(self, event: dict[str, Any], event_id: Any) -> None:
        item_id = self._known_item(event, event_id)
        if item_id is None:
            return
        del self._items[item_id]
        if self._last_item_id == item_id:
            self._last_item_id = next(reversed(self._items), None)
        self._send("conversation.item.deleted", item_id=item_id)
        self._outputs.append(ForwardToAgent(event))

    def _item_retrieve(self, event: dict[str, Any], event_id: Any) -> None:
        item_id = self._known_item(event, event_id)
        if item_id is not None:
            self._send("conversation.item.retrieved", item=copy.deepcopy(self._items[item_id]))

    def _item_truncate(self, event: dict[str, Any], event_id: Any) -> None:
        item_id = self._known_item(event, event_id)
        if item_id is None:
            return
        if self._items[item_id].get("role") != "assistant":
            self._error("only assistant messages can be truncated", code="invalid_value", param="item_id", client_event_id=event_id)
            return
        audio_end_ms = event.get("audio_end_ms")
        content_index = event.get("content_index", 0)
        if isinstance(audio_end_ms, bool) or not isinstance(audio_end_ms, int) or audio_end_ms < 0:
            self._error("audio_end_ms must be a whole number >= 0", code="invalid_value", param="audio_end_ms", client_event_id=event_id)
            return
        if content_index != 0:
            self._error("content_index must be 0", code="invalid_value", param="content_index", client_event_id=event_id)
            return
        self._send("conversation.item.truncated", item_id=item_id, content_index=0, audio_end_ms=audio_end_ms)
        self._outputs.append(ForwardToAgent(event))


_EMPTY_USAGE = {
    "total_tokens": 0,
    "input_tokens": 0,
    "output_tokens": 0,
    "input_token_details": {"text_tokens": 0, "audio_tokens": 0, "cached_tokens": 0},
    "output_token_details": {"text_tokens": 0, "audio_tokens": 0},
}
