"""The bridge agent against a real WebSocket backend on loopback: alone, then behind a real call."""

from __future__ import annotations

import asyncio
import select
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest
from twisted.internet import reactor as global_reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from tests.support import (
    REPO_ROOT,
    free_tcp_port,
    free_udp_port,
    health_sessions,
    http_get,
    running_service,
    write_allinone_config,
)
from voiceedge.agents.bridge import (
    BridgeAgent,
    BridgeAgentFactory,
    BridgeSettings,
    LinkState,
    websocket_connector,
    websocket_url,
)
from voiceedge.agents.interfaces import AudioFrame, IAgentSession

BACKEND = REPO_ROOT / "tests" / "fixtures" / "bridge" / "echo_backend.py"
reactor: Any = global_reactor


@dataclass
class Backend:
    """The example echo backend (docs/agent-protocol.md) running in a subprocess."""

    url: str
    process: subprocess.Popen[bytes]

    def kill(self) -> None:
        """SIGKILL it: its sockets die with it, as in a crash."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=5)


def start_backend(testcase: TestCase) -> Backend:
    """The echo backend on a free loopback port, killed at the test's cleanup."""
    process = subprocess.Popen(
        [sys.executable, str(BACKEND), "0"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    testcase.addCleanup(Backend("", process).kill)
    assert process.stdout is not None
    deadline = time.monotonic() + 15
    line = b""
    while not line.startswith(b"listening"):
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([process.stdout], [], [], remaining)[0]:
            testcase.fail("echo backend did not start within 15 s")
        line = process.stdout.readline()
        if not line:
            testcase.fail(f"echo backend exited with {process.wait()}")
    port = int(line.split()[1])
    return Backend(f"ws://127.0.0.1:{port}/agent", process)


# -- the agent alone, on the real reactor --------------------------------------------


@implementer(IAgentSession)
class RecordingSession:
    """An IAgentSession on the real reactor that records what the agent does."""

    def __init__(self) -> None:
        self.session_id = "real-1"
        self.sample_rate = 24000
        self.clock = reactor
        self.audio: list[bytes] = []
        self.events: list[dict[str, Any]] = []
        self.ended: list[str] = []
        self.agent: BridgeAgent | None = None

    def send_audio(self, pcm: bytes) -> None:
        self.audio.append(pcm)

    def clear_audio(self) -> int:
        return 0

    def queued_audio_ms(self) -> int:
        return 0

    def send_event(self, event: dict[str, Any]) -> None:
        self.events.append(event)

    def end(self, reason: str) -> None:
        self.ended.append(reason)
        agent, self.agent = self.agent, None
        if agent is not None:
            agent.session_ended("agent")


def start_agent(url: str, connect_timeout: float = 5.0) -> tuple[BridgeAgent, RecordingSession]:
    """A bridge agent for a recording session, connecting for real."""
    session = RecordingSession()
    settings = BridgeSettings(websocket_url(url), 24000, connect_timeout)
    factory = BridgeAgentFactory(settings, websocket_connector(reactor, settings))
    agent = factory.agent_for(session)
    assert isinstance(agent, BridgeAgent)
    session.agent = agent
    return agent, session


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> Deferred[None]:
    """Fires once ``predicate()`` holds; fails after ``timeout`` seconds."""

    async def poll() -> None:
        deadline = reactor.seconds() + timeout
        while not predicate():
            if reactor.seconds() > deadline:
                raise AssertionError(f"timed out after {timeout} s")
            await deferLater(reactor, 0.01, lambda: None)

    return Deferred.fromCoroutine(poll())


def no_timers_left(agent: BridgeAgent) -> bool:
    """The agent holds no DelayedCall and no pending connect."""
    return agent._timer is None and agent._connecting is None


@pytest.mark.integration
class BridgeAgentTests(TestCase):
    """The bridge agent alone on the real reactor, against the echo backend, a closed port and a silent server."""

    timeout = 30

    @inlineCallbacks
    def test_agent_and_backend_talk_then_backend_dies(self) -> Any:
        """Audio and events round-trip through the echo backend; its death ends the session."""
        backend = start_backend(self)
        agent, session = start_agent(backend.url)
        yield wait_until(lambda: agent.state is LinkState.OPEN)
        pcm = b"\x10\x27" * 480
        for i in range(5):
            agent.audio_received(AudioFrame(pcm, 24000, i * 960, reactor.seconds()))
        agent.event_received({"type": "ping", "n": 1})
        agent.speech_started(reactor.seconds())
        yield wait_until(lambda: len(session.audio) == 5 and len(session.events) == 2)
        self.assertEqual(session.audio, [pcm] * 5)
        self.assertIn({"type": "backend.echo", "event": {"type": "ping", "n": 1}}, session.events)
        self.assertIn({"type": "backend.heard_speech"}, session.events)
        backend.kill()
        yield wait_until(lambda: bool(session.ended))
        self.assertEqual(session.events[-1]["type"], "error")
        self.assertEqual(session.events[-1]["error"]["code"], "backend_unavailable")
        self.assertTrue(session.ended[0].startswith("backend_unavailable"))
        self.assertTrue(no_timers_left(agent))

    @inlineCallbacks
    def test_backend_hangs_up(self) -> Any:
        """The backend's session.end hangs up the session with its reason, no error."""
        backend = start_backend(self)
        agent, session = start_agent(backend.url)
        yield wait_until(lambda: agent.state is LinkState.OPEN)
        agent.event_received({"type": "hangup"})
        yield wait_until(lambda: bool(session.ended))
        self.assertEqual(session.ended, ["the caller asked"])
        self.assertEqual(session.events, [])
        self.assertTrue(no_timers_left(agent))

    @inlineCallbacks
    def test_connection_refused_ends_at_once(self) -> Any:
        """Nothing listening: an error event and the end, well before the timeout."""
        started = reactor.seconds()
        agent, session = start_agent(f"ws://127.0.0.1:{free_tcp_port()}/", connect_timeout=10)
        yield wait_until(lambda: bool(session.ended))
        self.assertLess(reactor.seconds() - started, 5)
        self.assertEqual(session.events[0]["error"]["code"], "backend_unavailable")
        self.assertTrue(no_timers_left(agent))

    @inlineCallbacks
    def test_silent_backend_times_out(self) -> Any:
        """A server that accepts TCP but never answers the upgrade: connect_timeout ends it."""
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen(4)
            port = listener.getsockname()[1]
            started = reactor.seconds()
            agent, session = start_agent(f"ws://127.0.0.1:{port}/", connect_timeout=0.3)
            yield wait_until(lambda: bool(session.ended))
            self.assertLessEqual(0.25, reactor.seconds() - started)
            self.assertLess(reactor.seconds() - started, 3)
            self.assertIn("within 0.3 s", session.events[0]["error"]["message"])
            self.assertTrue(no_timers_left(agent))


# -- a real call through the all-in-one ----------------------------------------------


@pytest.mark.integration
class BridgedCallTests(TestCase):
    """A real aiortc call through the all-in-one whose agent is the bridge to the echo backend."""

    timeout = 120

    def start_bridged(self) -> tuple[str, Backend]:
        """The all-in-one with the bridge agent pointed at the echo backend, both stopped at cleanup."""
        backend = start_backend(self)
        tmp_path = Path(self.mktemp()).resolve()
        tmp_path.mkdir(parents=True)
        http_port, media_port = free_tcp_port(), free_udp_port()
        ini = write_allinone_config(
            tmp_path,
            http_port,
            media_port,
            agent={"name": "bridge"},
            **{"agent.bridge": {"url": backend.url, "connect_timeout": 3}},
        )
        base = f"http://127.0.0.1:{http_port}"
        service = running_service(["voiceedge", "--config", str(ini)], base + "/healthz", log_dir=tmp_path)
        service.__enter__()
        self.addCleanup(service.__exit__, None, None, None)
        return base, backend

    def test_call_through_the_bridge(self) -> None:
        """aiortc talks to the echo backend: its tone comes back, events go both ways,
        then the backend is killed and the call ends with an error event."""
        from tests.aiortc_peer import LiveCall, live_call

        base, backend = self.start_bridged()

        async def script(call: LiveCall) -> None:
            self.assertTrue(await call.wait_for(call.opened.is_set, 10), "oai-events never opened")
            call.send_event({"type": "ping", "n": 7})
            self.assertTrue(await call.wait_for(lambda: call.loud_frames() >= 50, 10), f"little echoed audio: {call.loud_frames()} loud of {len(call.levels)} frames")
            self.assertTrue(await call.wait_for(
                # Forwarded unchanged, but for the event_id the Realtime layer adds.
                lambda: any(
                    e.get("type") == "backend.echo" and e.get("event") == {"type": "ping", "n": 7} and "event_id" in e
                    for e in call.events
                ),
                5,
            ), call.events)
            self.assertEqual(health_sessions(base + "/healthz"), 1)
            backend.kill()
            await call.wait_for(
                lambda: any(e.get("type") == "error" for e in call.events) and call.ended.is_set(), 10
            )

        call = asyncio.run(live_call(base, script))
        errors = [e for e in call.events if e.get("type") == "error"]
        self.assertTrue(errors, call.events)
        self.assertEqual(errors[0]["error"]["code"], "backend_unavailable", call.events)
        self.assertTrue(call.ended.is_set(), "the server did not end the call")
        self.assertEqual(health_sessions(base + "/healthz"), 0)
        # An operator sees the backend failure on /metrics.
        _, metrics = http_get(base + "/metrics")
        self.assertIn(b'voiceedge_agent_events_total{agent="bridge",event="backend_unavailable"} 1.0', metrics, metrics)

    def test_caller_hangup_reaches_the_backend(self) -> None:
        """A DELETE ends the session and /healthz drops to 0 while the backend lives on."""
        from tests.aiortc_peer import LiveCall, live_call

        base, backend = self.start_bridged()

        async def script(call: LiveCall) -> None:
            self.assertTrue(await call.wait_for(lambda: call.loud_frames() >= 10, 10))

        call = asyncio.run(live_call(base, script))
        self.assertEqual(call.delete_status, 204)
        self.assertEqual(health_sessions(base + "/healthz"), 0)
        self.assertIsNone(backend.process.poll())
