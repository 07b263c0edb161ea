# -*- test-case-name: tests.test_memory -*-
"""Memory per call: an echo's queue stays bounded when the event loop is late, and nothing leaves it uncounted.

In memory, on a Clock (``tests.memory_call``): real ICE, DTLS, SRTP, Opus and the
energy detector, the loop late as a saturated worker's is (``ConnectedCalls.feed``).
The heap bound is read with ``tracemalloc`` (Python objects and numpy's arrays),
not RSS, which the rest of the process and the allocator's reuse make noisy.
"""

from __future__ import annotations

import gc
import tracemalloc

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tests import memory_call as mc
from voiceedge.agents.echo import DEFAULT_MAX_LAG_MS, LATE_DROPPED, EchoAgentFactory, PassthroughEchoAgentFactory
from voiceedge.agents.interfaces import IAgentFactory
from voiceedge.transceiver.audio import InboundAudio, OutboundAudio
from voiceedge.transceiver.host import Transceiver
from voiceedge.transceiver.settings import SpeechSettings, TransceiverSettings

#: The Python heap one echo call may hold, whatever the loop's lateness (bench/memory.py:
#: about 67 kB on time and 77 kB with the loop 200 ms late; 314 kB late before the bound).
HEAP_PER_CALL = 128 * 1024


def calls(count: int, factory: IAgentFactory) -> mc.ConnectedCalls:
    """``count`` calls to a fresh transceiver with ``factory``'s agent and the energy detector."""
    clock = Clock()
    clock.advance(1000)
    written: list[tuple[bytes, mc.Address]] = []
    settings = TransceiverSettings(media_listen=mc.SERVER, max_sessions=count + 1)
    transceiver = Transceiver(clock, mc.SERVER_CERT, factory, settings, speech=SpeechSettings(detector="energy"))
    transceiver.write = lambda data, destination: written.append((bytes(data), destination))
    transceiver.start()
    return mc.ConnectedCalls(transceiver, clock, written, count)


def agent_events(transceiver: Transceiver) -> dict[str, float]:
    """``voiceedge_agent_events`` of the echo, by event."""
    return {
        labels["event"]: float(value)  # type: ignore[arg-type]
        for _, name, _, labels, value in transceiver.metrics()
        if name == "voiceedge_agent_events" and labels.get("agent") == "echo"
    }


class LateLoopTests(SynchronousTestCase):
    """A late loop hands the echo a burst; at most ``max_lag_ms`` of it waits, the rest is counted."""

    def test_on_time_nothing_waits_and_nothing_is_dropped(self) -> None:
        """Packets on their slots: every frame goes out as it comes."""
        factory = EchoAgentFactory()
        load = calls(2, factory)
        load.feed(mc.tone_packets(), 100)
        self.assertEqual(load.queued_ms(), [0, 0])
        self.assertEqual(factory.counters[LATE_DROPPED], 0)

    def test_late_loop_queue_is_bounded_and_every_frame_accounted_for(self) -> None:
        """The loop 300 ms late for 4 s: the queue stays at the bound; every frame decoded is sent, queued or counted."""
        factory = EchoAgentFactory()
        load = calls(2, factory)
        load.feed(mc.tone_packets(), 200, late=0.300)
        for queued in load.queued_ms():
            self.assertLessEqual(queued, DEFAULT_MAX_LAG_MS)
        dropped_ms = factory.counters[LATE_DROPPED]
        self.assertGreater(dropped_ms, 0)
        self.assertEqual(agent_events(load.transceiver), {LATE_DROPPED: dropped_ms})
        heard = taken = 0
        for call in load.transceiver._by_id.values():
            inbound, outbound = call.session._inbound, call.session._outbound
            assert isinstance(inbound, InboundAudio) and isinstance(outbound, OutboundAudio)
            heard += inbound.frames_decoded + inbound.frames_concealed
            taken += (
                outbound.frames_encoded + outbound.frames_silent + outbound.frames_trimmed
                + outbound.frames_dropped + outbound.queued_ms() // 20
            )
        self.assertEqual(heard, taken + dropped_ms // 20)

    def test_passthrough_echo_is_bounded_too(self) -> None:
        """The Opus echo's queue has the same bound and counter."""
        factory = PassthroughEchoAgentFactory()
        load = calls(2, factory)
        load.feed(mc.tone_packets(), 100, late=0.300)
        for queued in load.queued_ms():
            self.assertLessEqual(queued, DEFAULT_MAX_LAG_MS)
        self.assertGreater(factory.counters[LATE_DROPPED], 0)
        self.assertEqual(agent_events(load.transceiver), {LATE_DROPPED: factory.counters[LATE_DROPPED]})

    def test_no_bound_lets_the_backlog_grow(self) -> None:
        """``max_lag_ms = 0``: the old behaviour, the backlog of a late loop stays queued (what the bound is for)."""
        factory = EchoAgentFactory(max_lag_ms=0)
        load = calls(1, factory)
        load.feed(mc.tone_packets(), 100, late=0.300)
        self.assertGreater(min(load.queued_ms()), 500)
        self.assertEqual(factory.counters[LATE_DROPPED], 0)


class HeapPerCallTests(SynchronousTestCase):
    """The Python heap of N echo calls stays under :data:`HEAP_PER_CALL` each, on time and with the loop late."""

    def heap_per_call(self, late: float) -> float:
        """Bytes of Python heap per call that 8 calls hold after 3 s of tone with the loop ``late``."""
        payloads = mc.tone_packets()
        calls(1, EchoAgentFactory()).feed(payloads, 5)  # what the first call touches once (imports, caches)
        gc.collect()
        was_tracing = tracemalloc.is_tracing()
        if not was_tracing:
            tracemalloc.start()
        try:
            before = tracemalloc.take_snapshot()
            load = calls(8, EchoAgentFactory())
            load.feed(payloads, 150, late=late)
            load.clients.clear()  # the clients' side is not the server's memory
            gc.collect()
            after = tracemalloc.take_snapshot()
        finally:
            if not was_tracing:
                tracemalloc.stop()
        self.assertEqual(len(load.transceiver._by_id), 8)
        return sum(stat.size_diff for stat in after.compare_to(before, "filename")) / 8

    def test_on_time(self) -> None:
        """The loop on time."""
        self.assertLess(self.heap_per_call(0.0), HEAP_PER_CALL)

    def test_loop_late(self) -> None:
        """The loop 300 ms late throughout (without the echo's bound: 269 kB after these 3 s, and growing)."""
        self.assertLess(self.heap_per_call(0.300), HEAP_PER_CALL)
