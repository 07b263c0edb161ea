"""The Realtime event layer on its own: inputs with a time, the exact outputs in order."""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from voiceedge.media.speech import SpeechStarted, SpeechStopped
from voiceedge.transceiver.realtime import (
    INFERRED_TURN_GAP,
    CancelTurn,
    ConfigureAgent,
    ConfigureDetector,
    ForwardToAgent,
    IdSource,
    Output,
    RealtimeEventLayer,
    RequestTurn,
    StopAudio,
    TurnMode,
)
from voiceedge.transceiver.rtp_sender import PlayoutStarted, PlayoutStopped

TURN_EVENTS_AT_END = [
    "response.output_audio.done",
    "response.output_audio_transcript.done",
    "response.content_part.done",
    "response.output_item.done",
    "conversation.item.done",
    "response.done",
]
TURN_EVENTS_AT_FIRST_AUDIO = ["response.output_item.added", "conversation.item.added", "response.content_part.added"]


def names(outputs: list[Output]) -> list[str]:
    """Each output as a word: an event's type, or an action's class name."""
    return [o["type"] if isinstance(o, dict) else type(o).__name__ for o in outputs]


def events(outputs: list[Output], kind: str | None = None) -> list[dict[str, Any]]:
    """The server events among ``outputs`` (of one type)."""
    return [o for o in outputs if isinstance(o, dict) and (kind is None or o["type"] == kind)]


class LayerTestCase(SynchronousTestCase):
    """A layer with a clock and every output kept."""

    turns: TurnMode = "explicit"

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(100.0)
        self.layer = RealtimeEventLayer("sess", ids=IdSource("t"), expires_at=0)
        self.layer.agent_ready(self.turns)
        self.layer.channel_opened(self.clock.seconds())
        self.all: list[Output] = []
        self.take()

    def take(self) -> list[Output]:
        """The outputs since the last take (all of them are kept in ``self.all`` too)."""
        outputs = self.layer.take_outputs()
        self.all.extend(outputs)
        return outputs

    def client(self, event: dict[str, Any]) -> list[Output]:
        self.layer.client_event(event, self.clock.seconds())
        return self.take()

    def audio_in(self, seconds: float) -> None:
        """The caller's audio for ``seconds``, 20 ms frames arriving in real time."""
        for _ in range(round(seconds / 0.02)):
            self.clock.advance(0.02)
            self.layer.audio_received(self.clock.seconds(), 0.02)

    def a_turn(self, request: bool = True) -> str:
        """A requested turn with audio, playing: returns its response id."""
        if request:
            created = events(self.client({"type": "response.create"}), "response.created")[0]
        else:
            self.layer.turn_started(self.clock.seconds())
            created = events(self.take(), "response.created")[0]
        self.layer.agent_audio(self.clock.seconds())
        self.layer.playout_started(PlayoutStarted(self.clock.seconds()))
        self.take()
        response_id: str = created["response"]["id"]
        return response_id


class SessionTests(LayerTestCase):
    def test_session_created_on_open_with_the_whole_configuration(self) -> None:
        self.layer = RealtimeEventLayer("sess", ids=IdSource("t"), expires_at=0)
        self.layer.channel_opened(self.clock.seconds())
        self.layer.channel_opened(self.clock.seconds())
        [created] = self.take()
        assert isinstance(created, dict)
        self.assertEqual(created["type"], "session.created")
        self.assertTrue(created["event_id"].startswith("event_"))
        session = created["session"]
        self.assertEqual((session["type"], session["object"], session["id"]), ("realtime", "realtime.session", "sess"))
        detection = session["audio"]["input"]["turn_detection"]
        self.assertEqual(
            detection,
            {
                "type": "server_vad",
                "threshold": 0.5,
                "prefix_padding_ms": 300,
                "silence_duration_ms": 500,
                "create_response": True,
                "interrupt_response": True,
                "idle_timeout_ms": None,
            },
        )

    def test_events_before_the_channel_opens_wait_for_session_created(self) -> None:
        layer = RealtimeEventLayer("s3", ids=IdSource("v"))
        layer.agent_ready("none")
        layer.playout_started(PlayoutStarted(1.0))
        self.assertEqual(names(layer.take_outputs()), ["ConfigureAgent"])
        layer.channel_opened(1.5)
        self.assertEqual(names(layer.take_outputs()), ["session.created", "output_audio_buffer.started"])

    def test_a_client_secrets_settings_are_the_first_configuration(self) -> None:
        layer = RealtimeEventLayer("s4", ids=IdSource("w"))
        layer.configure_from({"type": "realtime", "agent": "parrot", "instructions": "Be brief."})
        self.assertEqual(layer.config["instructions"], "Be brief.")
        self.assertNotIn("agent", layer.config)
        layer.configure_from({"instructions": 7})
        self.assertEqual(layer.config["instructions"], "Be brief.")
        self.assertEqual(layer.counters["error.initial_settings"], 1)

    def test_the_first_configuration_goes_to_the_agent(self) -> None:
        layer = RealtimeEventLayer("s2", ids=IdSource("u"))
        layer.agent_ready("explicit")
        [configure] = layer.take_outputs()
        assert isinstance(configure, ConfigureAgent)
        self.assertEqual(configure.config["id"], "s2")

    def test_session_update_merges_and_answers_with_everything(self) -> None:
        outputs = self.client(
            {
                "type": "session.update",
                "event_id": "c1",
                "session": {
                    "type": "realtime",
                    "instructions": "be brief",
                    "audio": {
                        "input": {"turn_detection": {"type": "server_vad", "silence_duration_ms": 800, "threshold": 0.75}},
                        "output": {"voice": "marin"},
                    },
                },
            }
        )
        self.assertEqual(names(outputs), ["ConfigureDetector", "ConfigureAgent", "session.updated"])
        detector = outputs[0]
        self.assertEqual(detector, ConfigureDetector(threshold_db=16.5, silence_ms=800.0, threshold=0.75))
        session = events(outputs)[0]["session"]
        self.assertEqual(session["instructions"], "be brief")
        self.assertEqual(session["audio"]["output"]["voice"], "marin")
        self.assertEqual(session["audio"]["output"]["speed"], 1.0)  # merged, not replaced
        self.assertEqual(session["audio"]["input"]["turn_detection"]["prefix_padding_ms"], 300)
        self.assertEqual(self.layer.config, session)

    def test_an_update_that_leaves_turn_detection_alone_does_not_touch_the_detector(self) -> None:
        outputs = self.client({"type": "session.update", "session": {"instructions": "x"}})
        self.assertEqual(names(outputs), ["ConfigureAgent", "session.updated"])

    def test_semantic_vad_eagerness_picks_the_silence(self) -> None:
        outputs = self.client(
            {"type": "session.update", "session": {"audio": {"input": {"turn_detection": {"type": "semantic_vad", "eagerness": "low"}}}}}
        )
        self.assertEqual(outputs[0], ConfigureDetector(threshold_db=12.0, silence_ms=1000.0))

    def test_a_bad_field_is_an_error_naming_it_and_the_clients_event(self) -> None:
        before = self.layer.config
        outputs = self.client(
            {
                "type": "session.update",
                "event_id": "c7",
                "session": {"instructions": "ok", "audio": {"input": {"turn_detection": {"type": "server_vad", "threshold": 3}}}},
            }
        )
        [error] = outputs
        assert isinstance(error, dict)
        self.assertEqual(error["type"], "error")
        self.assertEqual(
            error["error"],
            {
                "type": "invalid_request_error",
                "code": "invalid_value",
                "message": "must be between 0 and 1",
                "param": "session.audio.input.turn_detection.threshold",
                "event_id": "c7",
            },
        )
        self.assertEqual(self.layer.config, before)

    def test_an_unknown_field_is_an_error(self) -> None:
        [error] = self.client({"type": "session.update", "event_id": "c8", "session": {"turn_detection": {}}})
        assert isinstance(error, dict)
        self.assertEqual(error["error"]["code"], "unknown_parameter")
        self.assertEqual(error["error"]["param"], "session.turn_detection")

    def test_the_voice_is_fixed_once_the_agent_has_spoken(self) -> None:
        self.a_turn()
        [error] = self.client({"type": "session.update", "event_id": "v", "session": {"audio": {"output": {"voice": "cedar"}}}})
        assert isinstance(error, dict)
        self.assertEqual((error["error"]["code"], error["error"]["event_id"]), ("cannot_update_voice", "v"))
        ok = self.client({"type": "session.update", "session": {"audio": {"output": {"voice": "alloy"}}}})
        self.assertEqual(names(ok)[-1], "session.updated")

    def test_not_an_event_is_an_error(self) -> None:
        self.layer.client_event_rejected("not JSON", self.clock.seconds())
        [error] = self.take()
        assert isinstance(error, dict)
        self.assertEqual((error["type"], error["error"]["message"]), ("error", "not JSON"))

    def test_other_event_types_go_to_the_agent_unchanged(self) -> None:
        event = {"type": "ping", "n": 1}
        self.assertEqual(self.client(event), [ForwardToAgent(event)])

    def test_agent_events_get_an_event_id(self) -> None:
        self.layer.agent_event({"type": "parrot.done"})
        self.layer.agent_event({"type": "x", "event_id": "mine"})
        first, second = events(self.take())
        self.assertTrue(first["event_id"].startswith("event_"))
        self.assertEqual(second["event_id"], "mine")

    def test_audio_over_events_is_an_error_over_webrtc(self) -> None:
        [error] = self.client({"type": "input_audio_buffer.append", "event_id": "a1", "audio": ""})
        assert isinstance(error, dict)
        self.assertEqual(error["error"]["event_id"], "a1")


class ResponseTests(LayerTestCase):
    def test_a_requested_turn_in_order(self) -> None:
        """response.create -> the agent's audio -> playout -> the agent's end -> drained."""
        outputs = self.client({"type": "response.create", "event_id": "r1", "response": {"instructions": "hi"}})
        self.assertEqual(names(outputs), ["response.created", "RequestTurn"])
        created = events(outputs)[0]
        response_id = created["response"]["id"]
        self.assertEqual(created["response"]["status"], "in_progress")
        self.assertEqual(outputs[1], RequestTurn(response_id, {"instructions": "hi"}))

        self.layer.agent_audio(self.clock.seconds())
        self.assertEqual(names(self.take()), TURN_EVENTS_AT_FIRST_AUDIO)
        self.layer.agent_audio(self.clock.seconds())
        self.assertEqual(self.take(), [])
        self.layer.playout_started(PlayoutStarted(self.clock.seconds()))
        [started] = self.take()
        assert isinstance(started, dict)
        self.assertEqual((started["type"], started["response_id"]), ("output_audio_buffer.started", response_id))

        self.clock.advance(0.3)
        self.layer.turn_ended(self.clock.seconds())
        outputs = self.take()
        self.assertEqual(names(outputs), TURN_EVENTS_AT_END)
        done = events(outputs, "response.done")[0]["response"]
        self.assertEqual(done["status"], "completed")
        self.assertEqual(done["output"][0]["content"], [{"type": "output_audio", "transcript": ""}])
        self.assertEqual(done["output"][0]["status"], "completed")

        self.clock.advance(1.0)
        self.layer.playout_stopped(PlayoutStopped(self.clock.seconds(), self.clock.seconds() - 0.02, "drained"))
        [stopped] = self.take()
        assert isinstance(stopped, dict)
        self.assertEqual((stopped["type"], stopped["response_id"]), ("output_audio_buffer.stopped", response_id))

    def test_an_agent_that_declines_completes_the_response_empty(self) -> None:
        outputs = self.client({"type": "response.create"})
        request = outputs[1]
        assert isinstance(request, RequestTurn)
        self.layer.turn_declined(request.response_id, self.clock.seconds())
        [done] = self.take()
        assert isinstance(done, dict)
        self.assertEqual((done["type"], done["response"]["status"], done["response"]["output"]), ("response.done", "completed", []))

    def test_a_second_create_while_one_is_active_is_an_error(self) -> None:
        self.client({"type": "response.create"})
        [error] = self.client({"type": "response.create", "event_id": "r2"})
        assert isinstance(error, dict)
        self.assertEqual(error["error"]["code"], "conversation_already_has_active_response")
        self.assertEqual(error["error"]["event_id"], "r2")

    def test_audio_that_drains_mid_turn_does_not_stop_the_buffer_until_the_turn_ends(self) -> None:
        response_id = self.a_turn()
        self.layer.playout_stopped(PlayoutStopped(self.clock.seconds(), self.clock.seconds(), "drained"))
        self.assertEqual(self.take(), [])
        self.assertIsNone(self.layer.deadline())
        self.layer.turn_ended(self.clock.seconds())
        outputs = self.take()
        self.assertEqual(names(outputs), TURN_EVENTS_AT_END + ["output_audio_buffer.stopped"])
        self.assertEqual(events(outputs)[-1]["response_id"], response_id)

    def test_an_agent_started_turn(self) -> None:
        self.layer.turn_started(self.clock.seconds())
        self.assertEqual(names(self.take()), ["response.created"])
        self.layer.turn_started(self.clock.seconds())  # already open: nothing new
        self.assertEqual(self.take(), [])
        self.layer.turn_ended(self.clock.seconds(), interrupted=True)
        done = events(self.take(), "response.done")[0]["response"]
        self.assertEqual((done["status"], done["status_details"]["reason"]), ("cancelled", "turn_detected"))


class CancellationTests(LayerTestCase):
    def test_barge_in_cancels_the_response_and_stops_the_audio(self) -> None:
        response_id = self.a_turn()
        self.audio_in(1.0)
        self.layer.speech_started(SpeechStarted(self.clock.seconds() - 0.04, self.clock.seconds()), audible=True)
        outputs = self.take()
        self.assertEqual(
            names(outputs),
            ["input_audio_buffer.speech_started", "StopAudio", "CancelTurn"] + TURN_EVENTS_AT_END,
        )
        # The caller's audio is cut before the agent hears of the cancel: the cut is the barge-in's.
        self.assertEqual(outputs[1], StopAudio("barge_in"))
        self.assertEqual(outputs[2], CancelTurn(response_id))
        done = events(outputs, "response.done")[0]["response"]
        self.assertEqual(done["status"], "cancelled")
        self.assertEqual(done["status_details"], {"type": "cancelled", "reason": "turn_detected"})
        self.assertEqual(done["output"][0]["status"], "incomplete")
        # The sender's stop says the caller's audio was cut.
        self.layer.playout_stopped(PlayoutStopped(self.clock.seconds(), self.clock.seconds(), "barge_in", 400))
        [cleared] = self.take()
        assert isinstance(cleared, dict)
        self.assertEqual((cleared["type"], cleared["response_id"]), ("output_audio_buffer.cleared", response_id))

    def test_barge_in_over_a_finished_response_still_playing_only_stops_the_audio(self) -> None:
        self.a_turn()
        self.layer.turn_ended(self.clock.seconds())
        self.take()
        self.layer.speech_started(SpeechStarted(self.clock.seconds(), self.clock.seconds()), audible=True)
        self.assertEqual(names(self.take()), ["input_audio_buffer.speech_started", "StopAudio"])

    def test_without_interrupt_response_the_agent_talks_on(self) -> None:
        self.client(
            {"type": "session.update", "session": {"audio": {"input": {"turn_detection": {"type": "server_vad", "interrupt_response": False}}}}}
        )
        self.a_turn()
        self.layer.speech_started(SpeechStarted(self.clock.seconds(), self.clock.seconds()), audible=True)
        self.assertEqual(names(self.take()), ["input_audio_buffer.speech_started"])

    def test_response_cancel(self) -> None:
        response_id = self.a_turn()
        outputs = self.client({"type": "response.cancel", "event_id": "x1"})
        self.assertEqual(names(outputs), ["CancelTurn"] + TURN_EVENTS_AT_END + ["StopAudio"])
        self.assertEqual(outputs[-1], StopAudio("cancel"))
        done = events(outputs, "response.done")[0]["response"]
        self.assertEqual((done["id"], done["status_details"]["reason"]), (response_id, "client_cancelled"))

    def test_response_cancel_with_nothing_to_cancel_is_an_error(self) -> None:
        [error] = self.client({"type": "response.cancel", "event_id": "x2"})
        assert isinstance(error, dict)
        self.assertEqual((error["error"]["code"], error["error"]["event_id"]), ("response_cancel_not_active", "x2"))
        self.client({"type": "response.create"})
        [error] = self.client({"type": "response.cancel", "response_id": "resp_other", "event_id": "x3"})
        assert isinstance(error, dict)
        self.assertEqual(error["error"]["event_id"], "x3")

    def test_output_audio_buffer_clear_while_playing(self) -> None:
        self.a_turn()
        self.layer.turn_ended(self.clock.seconds())
        self.take()
        self.assertEqual(self.client({"type": "output_audio_buffer.clear"}), [StopAudio("clear")])
        self.layer.playout_stopped(PlayoutStopped(self.clock.seconds(), self.clock.seconds(), "stopped", 200))
        self.assertEqual(names(self.take()), ["output_audio_buffer.cleared"])

    def test_output_audio_buffer_clear_with_nothing_playing_answers_at_once(self) -> None:
        outputs = self.client({"type": "output_audio_buffer.clear"})
        self.assertEqual(names(outputs), ["StopAudio", "output_audio_buffer.cleared"])

    def test_output_audio_buffer_clear_cancels_a_response_under_way(self) -> None:
        self.client({"type": "response.create"})
        outputs = self.client({"type": "output_audio_buffer.clear"})
        self.assertEqual(names(outputs), ["CancelTurn", "response.done", "StopAudio", "output_audio_buffer.cleared"])


class AgentsWithoutTurnsTests(LayerTestCase):
    turns = "inferred"

    def test_response_create_completes_at_once_empty(self) -> None:
        outputs = self.client({"type": "response.create", "event_id": "r"})
        self.assertEqual(names(outputs), ["response.created", "response.done"])
        self.assertEqual(events(outputs)[1]["response"]["output"], [])

    def test_a_burst_of_audio_is_a_turn_that_ends_when_it_has_drained(self) -> None:
        self.layer.agent_audio(self.clock.seconds())
        self.assertEqual(names(self.take()), ["response.created"] + TURN_EVENTS_AT_FIRST_AUDIO)
        self.layer.playout_started(PlayoutStarted(self.clock.seconds()))
        self.clock.advance(1.0)
        last = self.clock.seconds()
        self.clock.advance(0.04)
        self.layer.playout_stopped(PlayoutStopped(self.clock.seconds(), last, "drained"))
        self.assertEqual(names(self.take()), ["output_audio_buffer.started"])
        self.assertEqual(self.layer.deadline(), last + INFERRED_TURN_GAP)
        # More audio before the gap is over: the same turn goes on.
        self.clock.advance(0.1)
        self.layer.agent_audio(self.clock.seconds())
        self.layer.playout_started(PlayoutStarted(self.clock.seconds()))
        self.assertEqual(self.take(), [])
        self.assertIsNone(self.layer.deadline())
        last = self.clock.seconds() + 0.5
        self.clock.advance(0.54)
        self.layer.playout_stopped(PlayoutStopped(self.clock.seconds(), last, "drained"))
        deadline = self.layer.deadline()
        assert deadline is not None
        self.layer.handle_timeout(deadline - 0.01)
        self.assertEqual(self.take(), [])
        self.clock.advance(deadline - self.clock.seconds())
        self.layer.handle_timeout(self.clock.seconds())
        self.assertEqual(names(self.take()), TURN_EVENTS_AT_END + ["output_audio_buffer.stopped"])


class EchoLikeTests(LayerTestCase):
    turns = "none"

    def test_audio_belongs_to_no_response(self) -> None:
        self.layer.agent_audio(self.clock.seconds())
        self.assertEqual(self.take(), [])
        self.layer.playout_started(PlayoutStarted(self.clock.seconds()))
        [started] = self.take()
        assert isinstance(started, dict)
        self.assertIsNone(started["response_id"])
        outputs = self.client({"type": "response.create"})
        self.assertEqual(names(outputs), ["response.created", "response.done"])
        self.layer.speech_started(SpeechStarted(self.clock.seconds(), self.clock.seconds()), audible=True)
        self.assertEqual(names(self.take()), ["input_audio_buffer.speech_started", "StopAudio"])


class SpeechTests(LayerTestCase):
    def test_speech_is_timed_on_the_callers_audio_and_committed(self) -> None:
        self.audio_in(2.0)  # origin: 100.0
        self.layer.speech_started(SpeechStarted(101.0, 101.04), audible=False)
        [started] = self.take()
        assert isinstance(started, dict)
        # 300 ms of prefix padding before the first voiced frame.
        self.assertEqual((started["type"], started["audio_start_ms"]), ("input_audio_buffer.speech_started", 700))
        self.audio_in(1.0)
        self.layer.speech_stopped(SpeechStopped(102.0, 102.5))
        outputs = self.take()
        self.assertEqual(
            names(outputs),
            ["input_audio_buffer.speech_stopped", "input_audio_buffer.committed", "conversation.item.added", "conversation.item.done"],
        )
        stopped, committed, added, _ = events(outputs)
        self.assertEqual(stopped["audio_end_ms"], 2500)
        self.assertEqual(stopped["item_id"], started["item_id"])
        self.assertEqual(committed["item_id"], started["item_id"])
        self.assertEqual(added["item"]["role"], "user")
        self.assertEqual(added["item"]["content"], [{"type": "input_audio", "transcript": None}])

    def test_with_turn_detection_off_no_speech_events(self) -> None:
        self.client({"type": "session.update", "session": {"audio": {"input": {"turn_detection": None}}}})
        self.a_turn()
        self.layer.speech_started(SpeechStarted(self.clock.seconds(), self.clock.seconds()), audible=True)
        self.layer.speech_stopped(SpeechStopped(self.clock.seconds(), self.clock.seconds()))
        self.assertEqual(self.take(), [])

    def test_manual_commit_needs_100_ms_of_audio(self) -> None:
        [error] = self.client({"type": "input_audio_buffer.commit", "event_id": "m"})
        assert isinstance(error, dict)
        self.assertEqual((error["error"]["code"], error["error"]["event_id"]), ("input_audio_buffer_commit_empty", "m"))
        self.audio_in(0.2)
        outputs = self.client({"type": "input_audio_buffer.commit"})
        self.assertEqual(
            names(outputs),
            ["input_audio_buffer.committed", "conversation.item.added", "conversation.item.done", "ForwardToAgent"],
        )
        self.assertEqual(names(self.client({"type": "input_audio_buffer.clear"})), ["input_audio_buffer.cleared", "ForwardToAgent"])


class ItemTests(LayerTestCase):
    def test_create_retrieve_truncate_delete(self) -> None:
        message = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hello"}]}
        outputs = self.client({"type": "conversation.item.create", "item": message})
        self.assertEqual(names(outputs), ["conversation.item.added", "conversation.item.done", "ForwardToAgent"])
        item = events(outputs)[0]["item"]
        self.assertTrue(item["id"].startswith("item_"))
        self.assertEqual(item["content"], message["content"])
        self.assertIsNone(events(outputs)[0]["previous_item_id"])

        [retrieved] = self.client({"type": "conversation.item.retrieve", "item_id": item["id"]})
        assert isinstance(retrieved, dict)
        self.assertEqual(retrieved["item"], item)

        # The assistant's item of a turn can be truncated.
        self.a_turn()
        self.layer.turn_ended(self.clock.seconds())
        assistant = events(self.take(), "response.done")[0]["response"]["output"][0]
        outputs = self.client({"type": "conversation.item.truncate", "item_id": assistant["id"], "content_index": 0, "audio_end_ms": 300})
        self.assertEqual(names(outputs), ["conversation.item.truncated", "ForwardToAgent"])

        outputs = self.client({"type": "conversation.item.delete", "item_id": item["id"]})
        self.assertEqual(names(outputs), ["conversation.item.deleted", "ForwardToAgent"])
        [error] = self.client({"type": "conversation.item.retrieve", "item_id": item["id"], "event_id": "g"})
        assert isinstance(error, dict)
        self.assertEqual((error["error"]["code"], error["error"]["event_id"]), ("item_not_found", "g"))

    def test_bad_items_are_errors(self) -> None:
        for bad, param in [
            ({"type": "conversation.item.create"}, "item"),
            ({"type": "conversation.item.create", "item": {"type": "picture"}}, "item.type"),
            ({"type": "conversation.item.create", "item": {"type": "message", "role": "robot"}}, "item.role"),
            ({"type": "conversation.item.create", "item": {"type": "message", "role": "user"}, "previous_item_id": "nope"}, "previous_item_id"),
        ]:
            [error] = self.client({**bad, "event_id": "b"})
            assert isinstance(error, dict)
            self.assertEqual((error["error"]["param"], error["error"]["event_id"]), (param, "b"))
        self.client({"type": "conversation.item.create", "item": {"id": "mine", "type": "message", "role": "user"}})
        [error] = self.client({"type": "conversation.item.create", "item": {"id": "mine", "type": "message", "role": "user"}})
        assert isinstance(error, dict)
        self.assertEqual(error["error"]["code"], "item_already_exists")


class EventIdTests(LayerTestCase):
    def test_every_server_event_of_a_long_call_has_a_unique_id(self) -> None:
        for n in range(50):
            self.audio_in(0.5)
            self.layer.speech_started(SpeechStarted(self.clock.seconds() - 0.1, self.clock.seconds()), audible=False)
            self.audio_in(0.5)
            self.layer.speech_stopped(SpeechStopped(self.clock.seconds(), self.clock.seconds()))
            self.client({"type": "conversation.item.create", "item": {"type": "message", "role": "user"}})
            self.a_turn()
            self.layer.agent_event({"type": "agent.note", "n": n})
            if n % 2:
                self.layer.speech_started(SpeechStarted(self.clock.seconds(), self.clock.seconds()), audible=True)
            else:
                self.layer.turn_ended(self.clock.seconds())
            self.layer.playout_stopped(PlayoutStopped(self.clock.seconds(), self.clock.seconds(), "drained"))
            self.client({"type": "session.update", "event_id": "bad", "session": {"nope": 1}})
            self.take()
        ids = [e["event_id"] for e in events(self.all)]
        self.assertGreater(len(ids), 1000)
        self.assertEqual(len(set(ids)), len(ids))
        self.assertTrue(all(isinstance(i, str) and i for i in ids))
        # Items are bounded however long the call.
        self.assertLessEqual(len(self.layer._items), 256)

    def test_counters_for_operators(self) -> None:
        self.client({"type": "response.cancel"})
        self.client({"type": "response.create"})
        self.assertEqual(self.layer.counters["error.response_cancel_not_active"], 1)
        self.assertEqual(self.layer.counters["client.response.create"], 1)
        self.assertEqual(self.layer.counters["server.response.created"], 1)

    def test_two_sessions_do_not_share_ids(self) -> None:
        first, second = IdSource(), IdSource()
        self.assertNotEqual(first.new("event"), second.new("event"))
