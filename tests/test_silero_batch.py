"""Tests for voiceedge.media.silero_batch: Silero windows of many streams in one inference, on a Clock."""

from __future__ import annotations

from collections import deque

import numpy as np
from twisted.internet.task import Clock
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tests import speech_corpus
from tests.test_silero import require_silero


class CountingModel:
    """A stand-in network with a batch axis: the probability depends on the window and the stream's
    own state, which counts that stream's windows (so a state mixed up between streams shows)."""

    def __init__(self) -> None:
        self.batches: list[int] = []

    def run(self, window: np.ndarray, state: np.ndarray) -> tuple[float, np.ndarray]:
        p, s = self.run_batch(window, state)
        return float(p[0]), s

    def run_batch(self, windows: np.ndarray, states: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.batches.append(len(windows))
        count = states[0, :, 0] + 1
        p = (np.abs(windows).mean(axis=1) * 100 + count) % 1
        new = states.copy()
        new[0, :, 0] = count
        return p.astype(np.float32), new


class LevelModel(CountingModel):
    """A stand-in network that hears voice in loud windows: 0.9 above a level, 0.1 below (turns come and go)."""

    def run_batch(self, windows: np.ndarray, states: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        _, new = super().run_batch(windows, states)
        return np.where(np.abs(windows).mean(axis=1) > 0.01, 0.9, 0.1).astype(np.float32), new


def talk(seed: int, n: int) -> list[bytes]:
    """``n`` 48 kHz frames of loud noise and silence in stretches of 3 to 40 frames."""
    rng = np.random.default_rng(seed)
    noise = frames(48000, seed, n)
    out: list[bytes] = []
    loud = False
    while len(out) < n:
        length = int(rng.integers(3, 40))
        out += noise[len(out) : len(out) + length] if loud else [bytes(1920)] * length
        loud = not loud
    return out[:n]


def frames(rate: int, seed: int, n: int) -> list[bytes]:
    """``n`` 20 ms frames of different noise per seed."""
    x = np.random.default_rng(seed).normal(0, 3000, rate // 50 * n).clip(-32768, 32767).astype("<i2").tobytes()
    size = rate // 50 * 2
    return [x[i : i + size] for i in range(0, len(x), size)]


class BatcherTests(SynchronousTestCase):
    """Streams' windows wait for one turn of the clock, run together, and come back to each in order."""

    def setUp(self) -> None:
        from voiceedge.media.silero import SileroStream
        from voiceedge.media.silero_batch import SileroBatcher

        self.clock = Clock()
        self.model = CountingModel()
        self.batcher = SileroBatcher(self.clock)
        self.make = lambda rate=48000, batcher=self.batcher: SileroStream(rate, self.model, batcher)  # type: ignore[arg-type]

    def solo(self, rate: int, audio: list[bytes]) -> list[float]:
        from voiceedge.media.silero import SileroStream

        stream = SileroStream(rate, CountingModel())  # type: ignore[arg-type]
        return [stream.feed_frame(f) for f in audio]

    def test_one_inference_per_turn_results_in_order(self) -> None:
        """Three streams at 48, 24 and 16 kHz fed frame by frame: nothing runs until the clock turns (delay
        0), then one inference takes every ready window; each stream's probabilities are its solo ones."""
        rates = (48000, 24000, 16000)
        streams = [self.make(rate) for rate in rates]
        audio = [frames(rate, seed, 16) for seed, rate in enumerate(rates)]
        got: list[list[float]] = [[] for _ in rates]
        for i in range(16):
            tickets = [s.push_frame(a[i]) for s, a in zip(streams, audio)]
            if tickets[0] > streams[0].windows_run:
                self.assertFalse(streams[0].ready(tickets[0]))
            self.clock.advance(0)
            for stream, ticket, out in zip(streams, tickets, got):
                self.assertTrue(stream.ready(ticket))
                out.append(stream.take(ticket))
            self.assertEqual(self.batcher.pending, 0)
        for rate, a, out in zip(rates, audio, got):
            self.assertEqual(out, self.solo(rate, a))
        # 16 frames = 10 windows per stream, all three ready in the same turns: 10 inferences of 3.
        self.assertEqual(self.model.batches, [3] * 10)
        self.assertEqual((self.batcher.inferences, self.batcher.windows), (10, 30))
        self.assertEqual(self.batcher.batch_sizes.count, 10)

    def test_a_backlog_runs_in_order_one_window_per_inference(self) -> None:
        """A stream fed a second of frames in one turn gets its 31 windows in order (each from the state the
        one before left), alongside another stream's single window; max_batch caps each inference."""
        from voiceedge.media.silero_batch import SileroBatcher

        batcher = SileroBatcher(self.clock, max_batch=2)
        backlog, lone, third = (self.make(48000, batcher) for _ in range(3))
        audio = frames(48000, 7, 50)
        tickets = [backlog.push_frame(f) for f in audio]
        lone_ticket = [lone.push_frame(f) for f in frames(48000, 8, 2)][-1]
        third_ticket = [third.push_frame(f) for f in frames(48000, 9, 2)][-1]
        self.assertEqual(batcher.pending, 3)
        self.clock.advance(0)
        self.assertEqual(batcher.pending, 0)
        self.assertTrue(lone.ready(lone_ticket) and third.ready(third_ticket))
        self.assertEqual([backlog.take(t) for t in tickets], self.solo(48000, audio))
        self.assertLessEqual(max(self.model.batches), 2)
        self.assertEqual(sum(self.model.batches), 31 + 1 + 1)

    def test_a_stream_that_ends_mid_batch_is_dropped(self) -> None:
        """A stream closed (or reset) with a window queued is forgotten: the others still get theirs, and the
        batcher holds nothing after the turn."""
        ending, resetting, staying = self.make(), self.make(), self.make()
        audio = frames(48000, 3, 2)
        for stream in (ending, resetting, staying):
            ticket = [stream.push_frame(f) for f in audio][-1]
        ending.close()
        resetting.reset()
        self.assertEqual(self.batcher.pending, 1)
        self.clock.advance(0)
        self.assertEqual(self.model.batches, [1])
        self.assertTrue(staying.ready(ticket))
        self.assertFalse(ending.ready(ticket))
        self.assertEqual(ending.windows_run, 0)
        ending.close()  # twice is fine
        # The reset stream starts again as a new one: its first window waits for the next turn.
        self.assertEqual([resetting.feed_frame(f) for f in audio], [0.0, 0.0])
        self.assertEqual(self.batcher.pending, 1)
        self.clock.advance(0)
        self.assertEqual(self.batcher.pending, 0)

    def test_delay_holds_a_lone_window_that_long(self) -> None:
        """With a delay, a window runs exactly that late on the clock, with those that came meanwhile."""
        from voiceedge.media.silero_batch import SileroBatcher

        batcher = SileroBatcher(self.clock, delay=0.005)
        first, second = self.make(48000, batcher), self.make(48000, batcher)
        t1 = [first.push_frame(f) for f in frames(48000, 1, 2)][-1]
        self.clock.advance(0.004)
        t2 = [second.push_frame(f) for f in frames(48000, 2, 2)][-1]
        self.assertFalse(first.ready(t1))
        self.clock.advance(0.001)
        self.assertTrue(first.ready(t1) and second.ready(t2))
        self.assertEqual(self.model.batches, [2])

    def test_a_failed_inference_loses_windows_not_calls(self) -> None:
        """When the network raises, the round's streams get 0.0 for that window and keep their state; the
        failure is logged and counted, and the next turn runs normally."""
        streams = [self.make(), self.make()]
        audio = frames(48000, 4, 4)
        broken = self.model.run_batch

        def fail(windows: np.ndarray, states: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            raise RuntimeError("onnxruntime said no")

        self.model.run_batch = fail  # type: ignore[method-assign]
        tickets = [[s.push_frame(f) for f in audio[:2]][-1] for s in streams]
        self.clock.advance(0)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(self.batcher.errors, 1)
        self.assertEqual([s.take(t) for s, t in zip(streams, tickets)], [0.0, 0.0])
        self.assertEqual(self.batcher.pending, 0)
        self.model.run_batch = broken  # type: ignore[method-assign]
        tickets = [[s.push_frame(f) for f in audio[2:]][-1] for s in streams]
        self.clock.advance(0)
        self.assertTrue(all(s.ready(t) for s, t in zip(streams, tickets)))
        self.assertEqual(self.model.batches, [2])

    def test_results_are_pushed_once_per_run(self) -> None:
        """Streams with ``on_results`` are told once per run, after every round (a backlog of many windows
        too), in the order they queued; a stream closed before the run or by an earlier callback is not
        told; a callback that raises is logged and counted, and the others are still told."""
        from voiceedge.media.silero_batch import SileroBatcher

        batcher = SileroBatcher(self.clock, max_batch=2)
        told: list[str] = []
        streams = {name: self.make(48000, batcher) for name in ("backlog", "closed", "raises", "ends_next", "next")}
        for name, stream in streams.items():
            stream.on_results = lambda name=name: told.append(name)  # type: ignore[misc]

        def raises() -> None:
            told.append("raises")
            streams["ends_next"].close()
            raise RuntimeError("a session broke")

        streams["raises"].on_results = raises
        silent = self.make(48000, batcher)  # no callback: its results wait to be taken, as before
        backlog = [streams["backlog"].push_frame(f) for f in frames(48000, 1, 10)]
        for name in ("closed", "raises", "ends_next", "next"):
            [streams[name].push_frame(f) for f in frames(48000, 2, 2)]
        silent_ticket = [silent.push_frame(f) for f in frames(48000, 3, 2)][-1]
        streams["closed"].close()
        self.clock.advance(0)
        self.assertEqual(told, ["backlog", "raises", "next"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(batcher.callback_errors, 1)
        self.assertTrue(streams["backlog"].ready(backlog[-1]) and silent.ready(silent_ticket))
        self.assertEqual(sum(self.model.batches), 6 + 4)  # 6 windows of the backlog, one each of 4 others
        self.assertEqual(batcher.pending, 0)
        # The next run tells again; nothing queued, nothing told.
        [streams["next"].push_frame(f) for f in frames(48000, 4, 2)]
        self.clock.advance(0)
        self.assertEqual(told, ["backlog", "raises", "next", "next"])
        batcher.run()
        self.assertEqual(len(told), 4)

    def test_a_failed_inference_is_pushed_too(self) -> None:
        """When the network raises, the streams are told as after a good run: their windows are 0.0."""
        told: list[int] = []
        streams = [self.make(), self.make()]
        for i, stream in enumerate(streams):
            stream.on_results = lambda i=i: told.append(i)  # type: ignore[misc]

        def fail(windows: np.ndarray, states: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            raise RuntimeError("onnxruntime said no")

        self.model.run_batch = fail  # type: ignore[method-assign]
        tickets = [[s.push_frame(f) for f in frames(48000, 4, 2)][-1] for s in streams]
        self.clock.advance(0)
        self.flushLoggedErrors(RuntimeError)
        self.assertEqual(told, [0, 1])
        self.assertEqual([s.take(t) for s, t in zip(streams, tickets)], [0.0, 0.0])

    def test_odd_input(self) -> None:
        """A wrong frame length queues nothing; a run with nothing queued is a no-op; bad knobs are refused."""
        from voiceedge.media.silero_batch import SileroBatcher

        stream = self.make()
        with self.assertRaises(ValueError):
            stream.push_frame(bytes(7))
        self.assertEqual(self.batcher.pending, 0)
        self.batcher.run()
        self.assertEqual(self.model.batches, [])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        for bad in ({"delay": -1.0}, {"delay": 1.0}, {"max_batch": 0}, {"max_batch": 10**6}):
            with self.assertRaises(ValueError):
                SileroBatcher(self.clock, **bad)


class BatchedSileroTests(SynchronousTestCase):
    """The real network, batched: each stream's probabilities are its solo ones; the turn detector's events too."""

    TOLERANCE = 1e-5

    def setUp(self) -> None:
        require_silero()

    def audio(self, rate: int, which: int) -> list[bytes]:
        if speech_corpus.available():
            return speech_corpus.make_recording(
                speech_corpus.TURNS[which : which + 2], rate=rate, noise="pinknoise", snr_db=10
            ).frames()
        return frames(rate, which, 300)

    def test_batched_equals_solo(self) -> None:
        """Two streams of different speech batched together: probabilities within TOLERANCE of each alone."""
        from voiceedge.media.silero import SileroStream
        from voiceedge.media.silero_batch import SileroBatcher

        clock = Clock()
        batcher = SileroBatcher(clock)
        a_audio, b_audio = self.audio(48000, 0), self.audio(24000, 3)
        n = min(len(a_audio), len(b_audio))
        a, b = SileroStream(48000, batcher=batcher), SileroStream(24000, batcher=batcher)
        pa, pb = [], []
        for i in range(n):
            ta, tb = a.push_frame(a_audio[i]), b.push_frame(b_audio[i])
            clock.advance(0)
            pa.append(a.take(ta))
            pb.append(b.take(tb))
        solo_a = [s.feed_frame(f) for s in [SileroStream(48000)] for f in a_audio[:n]]
        solo_b = [s.feed_frame(f) for s in [SileroStream(24000)] for f in b_audio[:n]]
        self.assertLess(float(np.abs(np.subtract(pa, solo_a)).max()), self.TOLERANCE)
        self.assertLess(float(np.abs(np.subtract(pb, solo_b)).max()), self.TOLERANCE)
        self.assertGreater(batcher.windows, batcher.inferences)

    def test_turn_events_unchanged(self) -> None:
        """A turn detector on a batched stream gives the synchronous detector's events (the same times), each
        out of the first poll after the clock turned; while frames wait, its deadline is already due. One
        whose results are pushed (``on_results``) gives them too, out of the poll in its callback."""
        if not speech_corpus.available():
            raise SkipTest("espeak-ng and sox are needed")
        from voiceedge.media.detection import DetectionSettings, make_speech_detector
        from voiceedge.media.silero_batch import SileroBatcher

        clock = Clock()
        batcher = SileroBatcher(clock)
        settings = DetectionSettings("silero")
        audio = self.audio(48000, 0)
        solo = make_speech_detector(settings, 48000)
        batched = make_speech_detector(settings, 48000, batcher)
        pushed_events: list[object] = []
        pushed = make_speech_detector(
            settings, 48000, batcher, on_results=lambda: pushed_events.extend(pushed.poll(clock.seconds()))
        )
        expected, got = [], []
        for i, frame in enumerate(audio):
            now = i * 0.02
            clock.advance(now - clock.seconds())
            expected += solo.feed(frame, now)
            got += batched.feed(frame, now)
            pushed_events.extend(pushed.feed(frame, now))
            due = batched.deadline()
            if batcher.pending:
                assert due is not None
                self.assertLessEqual(due, now)
                self.assertEqual(batched.poll(now + 0.01), [])  # no silence counted while audio waits
            clock.advance(0)
            got += batched.poll(now)
            expected += solo.poll(now)
        self.assertTrue(expected)
        self.assertEqual(got, expected)
        self.assertEqual(pushed_events, expected)


class DeferredTurnTests(SynchronousTestCase):
    """A turn detector on a batched stream: frames wait without counting silence, due when the batch runs."""

    def test_deadline_is_when_the_batch_runs(self) -> None:
        from voiceedge.media.silero import SileroStream
        from voiceedge.media.silero_batch import SileroBatcher
        from voiceedge.media.turns import ProbabilityTurnDetector

        clock = Clock()
        batcher = SileroBatcher(clock, delay=0.005)
        detector = ProbabilityTurnDetector(SileroStream(48000, CountingModel(), batcher))  # type: ignore[arg-type]
        first, second = frames(48000, 1, 2)
        self.assertEqual(detector.feed(first, 10.0), [])
        self.assertIsNone(detector.deadline())  # no window yet, nothing waits, no turn open
        detector.feed(second, 10.02)
        self.assertEqual(detector.deadline(), 10.02 + 0.005)
        self.assertEqual(detector.poll(11.0), [])
        self.assertEqual(detector.deadline(), 10.02 + 0.005)  # still waiting: a poll changed nothing
        clock.advance(0.005)
        detector.poll(10.04)
        self.assertNotEqual(detector.deadline(), 10.02 + 0.005)

    def test_pushed_results_keep_the_events_and_their_times(self) -> None:
        """With ``on_results``, frames waiting for the batch set no deadline (even in an open turn), and the
        events taken in the callback, at the batch's time on the clock, are the unbatched detector's, with
        the same times, for delays of 0 and 5 ms and frames fed on time or in bursts."""
        from voiceedge.media.detection import DetectionSettings
        from voiceedge.media.silero import SileroStream
        from voiceedge.media.silero_batch import SileroBatcher
        from voiceedge.media.turns import ProbabilityTurnDetector

        audio = talk(5, 400)
        knobs = DetectionSettings("silero", min_speech_ms=40, final_silence_ms=60, neutral_silence_ms=100,
                                  hesitation_silence_ms=140, short_phrase_ms=100).parameters()
        solo = ProbabilityTurnDetector(SileroStream(48000, LevelModel()), **knobs)  # type: ignore[arg-type]
        expected: list[object] = []
        for i, frame in enumerate(audio):
            expected += solo.feed(frame, 10 + i * 0.02)
            expected += solo.poll(10 + i * 0.02)
        self.assertGreater(len(expected), 10)
        for delay in (0.0, 0.005):
            for burst in (1, 5):
                clock = Clock()
                clock.advance(10)
                batcher = SileroBatcher(clock, delay=delay)
                got: list[object] = []
                stream = SileroStream(48000, LevelModel(), batcher)  # type: ignore[arg-type]
                detector = ProbabilityTurnDetector(stream, **knobs)  # type: ignore[arg-type]
                # Polled as InboundAudio does: on the audio's timeline, the last frame having come as it ended.
                stream.on_results = lambda: got.extend(detector.poll(clock.seconds() - 0.02))
                for i in range(0, len(audio), burst):
                    clock.advance(0.02 * burst - (clock.seconds() - 10 - i * 0.02))
                    for j in range(i, min(i + burst, len(audio))):
                        got += detector.feed(audio[j], 10 + j * 0.02)
                    if batcher.pending:
                        self.assertIsNone(detector.deadline())
                    clock.advance(delay)
                    self.assertEqual(batcher.pending, 0)
                self.assertEqual(got, expected, (delay, burst))


class TransceiverWakeUpTests(SynchronousTestCase):
    """In a transceiver (calls in memory on a Clock), a batch wakes the event loop once, not once per call."""

    def test_one_wake_up_per_batch(self) -> None:
        """Three Silero calls for 2 s: the batcher's one timer per batch hands every call its frames'
        probabilities; no session timer fires for them (before: one per call per window)."""
        require_silero()
        from tests import memory_call as mc
        from voiceedge.agents.echo import EchoAgentFactory
        from voiceedge.transceiver.host import Transceiver
        from voiceedge.transceiver.settings import SpeechSettings, TransceiverSettings
        from voiceedge.transceiver.audio import InboundAudio

        clock = Clock()
        clock.advance(1000)
        written: list[tuple[bytes, mc.Address]] = []
        settings = TransceiverSettings(media_listen=mc.SERVER, max_sessions=4)
        transceiver = Transceiver(
            clock, mc.SERVER_CERT, EchoAgentFactory(), settings, speech=SpeechSettings(detector="silero")
        )
        transceiver.write = lambda data, destination: written.append((bytes(data), destination))
        transceiver.start()
        self.addCleanup(transceiver.stop)
        load = mc.ConnectedCalls(transceiver, clock, written, 3)
        timeouts: list[str] = []
        timeout = transceiver._timeout

        def counting(call: object) -> None:
            timeouts.append(call.session.session_id)  # type: ignore[attr-defined]
            timeout(call)  # type: ignore[arg-type]

        transceiver._timeout = counting  # type: ignore[method-assign]
        batcher = transceiver.silero_batcher
        inferences = batcher.inferences
        load.feed(mc.tone_packets(), 100)
        clock.advance(0.02)
        ran = batcher.inferences - inferences
        self.assertGreaterEqual(ran, 60)  # 100 frames: 62 windows per call, all three calls' in each
        self.assertEqual(batcher.windows, 3 * batcher.inferences)
        # A session timer fires for the transport only (RTCP, consent): a handful in 2 s, not one per window.
        self.assertLess(len(timeouts), ran // 4)
        for call in transceiver._by_id.values():
            inbound = call.session._inbound
            assert isinstance(inbound, InboundAudio)
            self.assertEqual(inbound._detector._waiting, deque())  # type: ignore[attr-defined]
            self.assertEqual(inbound._detector._source.windows_run, 62)  # type: ignore[attr-defined]
        # A call that ends with windows queued: the batch runs the others' without it.
        ending = next(iter(transceiver._by_id))
        inferences, windows = batcher.inferences, batcher.windows
        load.feed(mc.tone_packets(), 1)  # 1 of 8 frames completes no window: this one does
        self.assertEqual(batcher.pending, 3)
        self.assertTrue(transceiver.close_session(ending, "test"))
        self.assertEqual(batcher.pending, 2)
        clock.advance(0.02)
        self.assertEqual((batcher.inferences - inferences, batcher.windows - windows), (1, 2))
        exported = {name: value for _, name, _, _, value in transceiver.metrics()}
        self.assertEqual(exported["voiceedge_transceiver_silero_callback_errors"], 0)
