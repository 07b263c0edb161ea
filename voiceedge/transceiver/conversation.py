# -*- test-case-name: tests.test_conversation -*-
"""The conversation side of a call: the agent, its audio and events, the Realtime layer, ``oai-events``.

A :class:`Conversation` is what an agent sees as its
:class:`~voiceedge.agents.interfaces.IAgentSession`. It takes the session's
conversation events (the caller's decoded audio, speech, the events
channel, playout), feeds them to the session's
:class:`~voiceedge.transceiver.realtime.RealtimeEventLayer` and to the
agent, and carries out what the layer outputs: server events to send, and
actions (stop the agent's audio, ask the agent for a turn, ...). It turns the
agent's calls into session inputs, stamped with the clock, and asks its
driver to flush the session's outputs. Transport knows nothing of agents;
this knows nothing of sockets.

An agent factory whose backend speaks the Realtime protocol itself
(``speaks_realtime = True``) takes over the whole exchange: then there is no
layer, and events pass between client and agent unchanged.
"""

from __future__ import annotations

import collections
import secrets
from typing import Any, Callable, cast

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from voiceedge.agents.interfaces import (
    AudioFrame,
    IAgent,
    IAgentFactory,
    IAgentSession,
    IPassthroughAgent,
    IPassthroughSession,
    ITurnTakingAgent,
    OpusFrame,
)
from voiceedge.media.speech import SpeechStarted, SpeechStopped
from voiceedge.transceiver.realtime import (
    CancelTurn,
    ConfigureAgent,
    ConfigureDetector,
    ForwardToAgent,
    RealtimeEventLayer,
    RequestTurn,
    StopAudio,
    TurnMode,
)
from voiceedge.transceiver.realtime_config import TurnDetectionDefaults
from voiceedge.transceiver.rtp_sender import PlayoutStarted, PlayoutStopped
from voiceedge.transceiver.credentials import loggable_id
from voiceedge.transceiver.session import Session
from voiceedge.transceiver.session_events import (
    ClientEvent,
    ClientEventRejected,
    Closed,
    Connected,
    EndReason,
    EventsChannelOpened,
    SessionEvent,
)

__all__ = ["Conversation"]


def _turn_mode(agent: IAgent) -> TurnMode:
    if ITurnTakingAgent.providedBy(agent):
        return "explicit"
    return "none" if getattr(agent, "turns", None) == "none" else "inferred"


@implementer(IAgentSession, IPassthroughSession)
class Conversation:
    """The agent of one session, the session as the agent sees it, and the Realtime layer between.

    ``flush`` is called after every input the agent gives the session (its
    driver sends the datagrams and handles the events that came of it).
    ``barge_in`` is the default of the client's ``interrupt_response``: when
    the caller starts speaking while the agent's audio plays, the response is
    cancelled and its queued audio dropped at once.
    """

    log = Logger()

    def __init__(
        self,
        session: Session,
        agent_factory: IAgentFactory,
        clock: IReactorTime,
        flush: Callable[[], None],
        barge_in: bool = True,
        realtime_counters: collections.Counter[str] | None = None,
    ) -> None:
        self.session = session
        self.session_id = session.session_id
        self.sample_rate: int = agent_factory.sample_rate
        self.clock = clock
        self.barge_in = barge_in
        self._agent_factory = agent_factory
        self._flush = flush
        self.agent: IAgent | None = None
        # The same agent as an IPassthroughAgent, for opus_frame (no cast per frame).
        self._opus_agent: IPassthroughAgent | None = None
        self.barge_in_ms: list[float] = []
        self.ended = False
        speech = session.speech
        self.realtime: RealtimeEventLayer | None = None
        if not getattr(agent_factory, "speaks_realtime", False):
            self.realtime = RealtimeEventLayer(
                session.session_id,
                model="voiceedge-" + str(getattr(agent_factory, "name", "agent")),
                base_threshold_db=speech.threshold_db,
                # The silence the call's detector waits after an end that is neither final nor hesitant.
                turn_detection=TurnDetectionDefaults(
                    speech.silence_ms if speech.detector == "energy" else speech.neutral_silence_ms, barge_in
                ),
                counters=realtime_counters,
            )
            # A client secret's session settings are the call's first configuration.
            settings = getattr(session, "settings", None)
            if settings:
                self.realtime.configure_from(settings)
        self._running = False
        self._timer: IDelayedCall | None = None
        self._speech_from = 0.0

    # -- session events in --------------------------------------------------------

    def opus_frame(self, frame: OpusFrame) -> None:
        """One frame of the caller's Opus for a passthrough agent (the driver's shortcut past :meth:`handle`)."""
        # The payload as it came, nothing decoded.
        layer = self.realtime
        if layer is not None:
            layer.audio_received(frame.arrival, 0.02)
        agent = self._opus_agent
        if agent is not None:
            agent.opus_received(frame)

    def handle(self, event: SessionEvent) -> None:
        """One conversation event from the session (transport events are ignored)."""
        agent = self.agent
        layer = self.realtime
        # The caller's audio first: fifty of these a second.
        if isinstance(event, AudioFrame):
            if layer is not None:
                # The audio buffer's positions are on the speech events' timeline.
                layer.audio_received(event.start, len(event.pcm) / 2 / event.sample_rate)
            if agent is not None:
                agent.audio_received(event)
            return
        if isinstance(event, OpusFrame):
            self.opus_frame(event)
            return
        now = self.clock.seconds()
        if isinstance(event, SpeechStarted):
            # Barge-in latency is measured from when the voice arrived, on the
            # clock (the sender's last_sent_at), not from its RTP-timed place.
            self._speech_from = event.time if event.arrival is None else event.arrival
            # On the clock, not at the detector's frame time (a frame's end, ahead of now).
            if layer is not None:
                layer.speech_started(event, self.session.agent_playing(now))
                self._run()
            elif self.barge_in and self.session.agent_playing(now):
                self.stop_agent_audio(now, "barge_in")
            if self.agent is not None:
                self.agent.speech_started(event.time)
        elif isinstance(event, SpeechStopped):
            if layer is not None:
                layer.speech_stopped(event)
                self._run()
            if self.agent is not None:
                self.agent.speech_stopped(event.time)
        elif isinstance(event, ClientEvent):
            if layer is not None:
                layer.client_event(event.event, now)
                self._run()
            elif agent is not None:
                agent.event_received(event.event)
        elif isinstance(event, (PlayoutStarted, PlayoutStopped)):
            if layer is not None:
                if isinstance(event, PlayoutStarted):
                    layer.playout_started(event)
                else:
                    layer.playout_stopped(event)
                self._run()
        elif isinstance(event, Connected):
            self.agent = self._agent_factory.agent_for(self)
            # Only a passthrough session emits OpusFrame: its agent is one.
            self._opus_agent = cast(IPassthroughAgent, self.agent)
            if layer is not None:
                layer.agent_ready(_turn_mode(self.agent))
                self._run()
        elif isinstance(event, EventsChannelOpened):
            if layer is not None:
                layer.channel_opened(now)
                self._run()
        elif isinstance(event, ClientEventRejected):
            if layer is not None:
                layer.client_event_rejected(event.why, now)
                self._run()
            else:
                error = {"type": "invalid_request_error", "message": event.why}
                self.send_event({"type": "error", "event_id": "event_" + secrets.token_hex(8), "error": error})
        elif isinstance(event, Closed):
            self._ended(event.reason)

    def stop_agent_audio(self, now: float, reason: str) -> int:
        """The one seam that cuts the agent's audio: barge-in, ``response.cancel``, ``output_audio_buffer.clear``,
        and the agent's own :meth:`clear_audio`. The milliseconds of queued audio dropped."""
        sender = self.session.sender
        dropped = self.session.stop_audio(now, "barge_in" if reason == "barge_in" else "stopped")
        if reason == "barge_in":
            # From the first voiced packet's arrival to the last agent packet
            # sent: the fade that ends what the caller hears, sent at once.
            last = sender.last_sent_at if sender is not None else None
            latency = 0.0 if last is None else max(0.0, last - self._speech_from)
            self.barge_in_ms.append(round(latency * 1000, 1))
        return dropped

    def _ended(self, reason: EndReason) -> None:
        if self.ended:
            return
        self.ended = True
        self._cancel_timer()
        agent, self.agent = self.agent, None
        self._opus_agent = None
        try:
            if agent is not None:
                agent.session_ended(reason.value)
        except Exception:
            # The agent's bug must not keep the session's routes alive.
            self.log.failure("session {id}: the agent failed to end", id=loggable_id(self.session_id))

    # -- the layer's outputs ---------------------------------------------------------

    def _run(self) -> None:
        """Carry out what the layer has output, in order, until it has nothing more.

        An action may call the agent, which may feed the layer again: a call
        made while this loop runs returns at once and the loop picks it up.
        """
        layer = self.realtime
        if layer is None or self._running:
            return
        self._running = True
        try:
            while not self.ended and (outputs := layer.take_outputs()):
                for output in outputs:
                    if self.ended:
                        break
                    self._carry_out(layer, output)
        finally:
            self._running = False
        self._arm_timer()

    def _carry_out(self, layer: RealtimeEventLayer, output: Any) -> None:
        now = self.clock.seconds()
        agent = self.agent
        if isinstance(output, dict):
            self.session.send_event(output, now)
            self._flush()
        elif isinstance(output, StopAudio):
            self.stop_agent_audio(now, output.reason)
            self._flush()
        elif isinstance(output, ForwardToAgent):
            if agent is not None:
                agent.event_received(output.event)
        elif isinstance(output, RequestTurn):
            took = ITurnTakingAgent.providedBy(agent) and agent.create_response(output.request)
            if not took:
                layer.turn_declined(output.response_id, now)
        elif isinstance(output, CancelTurn):
            if ITurnTakingAgent.providedBy(agent):
                agent.cancel_response()
        elif isinstance(output, ConfigureAgent):
            if ITurnTakingAgent.providedBy(agent):
                agent.configure(output.config)
        elif isinstance(output, ConfigureDetector):
            self.session.update_speech(output.threshold_db, output.silence_ms, output.threshold)

    def _arm_timer(self) -> None:
        layer = self.realtime
        deadline = None if layer is None or self.ended else layer.deadline()
        timer = self._timer
        if timer is not None and timer.active():
            if deadline is not None and abs(timer.getTime() - deadline) < 1e-6:
                return
            timer.cancel()
        self._timer = None
        if deadline is not None:
            self._timer = self.clock.callLater(max(0.0, deadline - self.clock.seconds()), self._timeout)

    def _timeout(self) -> None:
        self._timer = None
        if self.realtime is not None and not self.ended:
            self.realtime.handle_timeout(self.clock.seconds())
            self._run()

    def _cancel_timer(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()

    # -- the agent's side (IAgentSession) ----------------------------------------

    def send_audio(self, pcm: bytes) -> None:
        """Queue agent PCM; it goes out in paced 20 ms Opus frames."""
        if self.ended:
            return
        now = self.clock.seconds()
        layer = self.realtime
        if layer is not None and pcm:
            layer.agent_audio(now)
            # As for send_opus: the layer's loop only when it has something to carry out.
            if not (self._timer is None and layer.idle()):
                self._run()
        self.session.send_audio(pcm, now)
        self._flush()

    def send_opus(self, payload: bytes) -> None:
        """Queue one 20 ms Opus packet (passthrough agents); it goes out paced, unchanged."""
        if self.ended:
            return
        now = self.clock.seconds()
        layer = self.realtime
        if layer is not None and payload:
            layer.agent_audio(now)
            # Fifty a second while the agent talks, and mostly nothing to do:
            # no outputs, no deadline, and no timer armed for an old one.
            if not (self._timer is None and layer.idle()):
                self._run()
        self.session.send_opus(payload, now)
        self._flush()

    def clear_audio(self) -> int:
        """Drop all queued agent audio; the milliseconds dropped."""
        if self.ended:
            return 0
        dropped = self.stop_agent_audio(self.clock.seconds(), "agent")
        self._flush()
        return dropped

    def queued_audio_ms(self) -> int:
        """Agent audio waiting to be sent, in milliseconds."""
        return self.session.queued_audio_ms()

    def send_event(self, event: dict[str, Any]) -> None:
        """Send a JSON event to the caller on ``oai-events`` (with an ``event_id`` when it has none)."""
        if self.ended:
            return
        if self.realtime is not None:
            self.realtime.agent_event(event)
            self._run()
            return
        self.session.send_event(event, self.clock.seconds())
        self._flush()

    def start_turn(self) -> None:
        """The agent starts a turn."""
        if not self.ended and self.realtime is not None:
            self.realtime.turn_started(self.clock.seconds())
            self._run()

    def end_turn(self, interrupted: bool = False) -> None:
        """The agent has queued all of its turn's audio (or cut it short)."""
        if not self.ended and self.realtime is not None:
            self.realtime.turn_ended(self.clock.seconds(), interrupted)
            self._run()

    def end(self, reason: str) -> None:
        """The agent hangs up."""
        if self.ended:
            return
        self.log.info("session {id}: agent ended the call: {why}", id=loggable_id(self.session_id), why=reason)
        self.session.close(EndReason.AGENT, self.clock.seconds())
        self._flush()

    def stats(self) -> dict[str, Any]:
        """The conversation's numbers for ``GET <Location>``."""
        return {"barge_in_ms": list(self.barge_in_ms)}
