"""Real calls from aiortc to the all-in-one running the parrot: turn-taking and barge-in, with espeak-ng speech."""

from __future__ import annotations

import array
import asyncio
import functools
import math
import shutil
import subprocess
import tempfile
import wave
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import pytest
from twisted.trial.unittest import SkipTest, TestCase

from tests.support import free_tcp_port, free_udp_port, health_sessions, running_service, write_allinone_config

if TYPE_CHECKING:
    from tests.aiortc_peer import TurnCallResult

RATE = 48000
FRAME = RATE // 50
SILENCE_MS = 600
# Per-frame RMS above this counts as speech, in what we send and what comes back.
VOICED_DB = -45.0
# A hold-up of the client's own sending this long in the middle of an utterance (a loaded
# machine) may, with the pauses in the speech itself, make a silence of SILENCE_MS at the
# server: a call with one is made again, up to ATTEMPTS calls.
HELD_UP = SILENCE_MS / 1000 / 2
ATTEMPTS = 3

FIRST = "The quick brown fox jumps over the lazy dog, near the bank of the river."
SECOND = "Wait a moment, I have a question for you."


def _frame_levels(pcm: bytes) -> list[float]:
    """RMS dBFS of every 20 ms frame of 48 kHz PCM16."""
    levels = []
    for offset in range(0, len(pcm) - FRAME * 2 + 1, FRAME * 2):
        samples = array.array("h", pcm[offset : offset + FRAME * 2])
        energy = sum(s * s for s in samples) / FRAME
        levels.append(10 * math.log10(energy / 32768**2) if energy else -100.0)
    return levels


def speech(tmp: Path, name: str, text: str) -> bytes:
    """``text`` said by espeak-ng as 48 kHz PCM16 mono, trimmed to its first and last voiced frames."""
    raw, wav = tmp / f"{name}-espeak.wav", tmp / f"{name}.wav"
    subprocess.run(["espeak-ng", "-w", str(raw), text], check=True, capture_output=True)
    subprocess.run(
        ["sox", str(raw), "-r", str(RATE), "-c", "1", "-b", "16", "-e", "signed-integer", str(wav)],
        check=True,
        capture_output=True,
    )
    with wave.open(str(wav)) as f:
        assert (f.getframerate(), f.getnchannels(), f.getsampwidth()) == (RATE, 1, 2)
        pcm = f.readframes(f.getnframes())
    voiced = [i for i, level in enumerate(_frame_levels(pcm)) if level > VOICED_DB]
    return pcm[voiced[0] * FRAME * 2 : (voiced[-1] + 1) * FRAME * 2]


def seconds_of(pcm: bytes) -> float:
    """The duration of 48 kHz PCM16."""
    return len(pcm) / 2 / RATE


def bursts(times: list[float], gap: float = 0.3) -> list[tuple[float, float]]:
    """Group arrival times into (first, last) bursts separated by more than ``gap`` seconds."""
    out: list[tuple[float, float]] = []
    for t in times:
        if out and t - out[-1][1] <= gap:
            out[-1] = (out[-1][0], t)
        else:
            out.append((t, t))
    return out


def answered(times: int) -> Callable[[TurnCallResult], bool]:
    """Whether the parrot has said ``times`` answers to the end (``parrot.done``); true at once without
    the events channel. A loaded machine may answer late: the call waits for it (bounded)."""

    def done(result: TurnCallResult) -> bool:
        if not result.channel_opened:
            return True
        return [e.get("type") for e in result.events].count("parrot.done") >= times

    return done


@functools.cache
def make_utterances() -> dict[str, bytes]:
    """The two utterances, made once per process (in a directory of their own, removed after)."""
    if shutil.which("espeak-ng") is None or shutil.which("sox") is None:
        raise SkipTest("espeak-ng and sox are needed to make speech")
    with tempfile.TemporaryDirectory(prefix="parrot-speech-") as directory:
        tmp = Path(directory)
        return {"first": speech(tmp, "first", FIRST), "second": speech(tmp, "second", SECOND)}


@pytest.mark.integration
class ParrotCallTests(TestCase):
    """aiortc speaks espeak-ng utterances to the parrot: it answers after the turn, stops when barged in, and takes session.update."""

    timeout = 240

    def start_parrot_service(self) -> str:
        """The all-in-one with the parrot agent, on free loopback ports, stopped at cleanup; its base URL."""
        tmp_path = Path(self.mktemp()).resolve()
        tmp_path.mkdir(parents=True)
        http_port, media_port = free_tcp_port(), free_udp_port()
        ini = write_allinone_config(
            tmp_path,
            http_port,
            media_port,
            agent={"name": "parrot"},
            # These calls check the silence-timer rule itself; tests/test_turn_taking.py checks silero's.
            speech={"detector": "energy", "silence_ms": SILENCE_MS, "max_wait_ms": 20000},
            **{"agent.parrot": {"prefix_padding_ms": 100}},
        )
        base = f"http://127.0.0.1:{http_port}"
        service = running_service(["voiceedge", "--config", str(ini)], base + "/healthz", log_dir=tmp_path)
        service.__enter__()
        self.addCleanup(service.__exit__, None, None, None)
        return base

    def undisturbed_call(self, base: str, segments: list[tuple[float, bytes]], seconds: float) -> TurnCallResult:
        """:func:`~tests.aiortc_peer.scripted_call` until the parrot's last answer is done; called again
        (ATTEMPTS calls at most) while the client itself was held up HELD_UP or more in the middle of an
        utterance (a loaded machine): the server then heard a pause the script does not have, and may
        rightly end the turn there, answer, and be barged in on again."""
        from tests.aiortc_peer import scripted_call

        held: list[list[tuple[int, float]]] = []
        for _ in range(ATTEMPTS):
            result = asyncio.run(scripted_call(base, segments, seconds=seconds, until=answered(1)))
            held.append([(segment, round(gap, 3)) for segment, gap in result.holdups if gap >= HELD_UP])
            if not held[-1]:
                return result
            print(f"the client was held up while it talked (segment, seconds): {held[-1]}; calling again")
        self.fail(f"the client was held up while it talked in each of {ATTEMPTS} calls: {held}")

    def test_turn_comes_back_after_the_end_of_the_turn(self) -> None:
        """One utterance: its echo starts only after the turn and silence_ms, and lasts as long as the turn."""
        utterances = make_utterances()
        parrot_service = self.start_parrot_service()

        first = utterances["first"]
        duration = seconds_of(first)
        self.assertLess(2.0, duration, duration)
        self.assertLess(duration, 6.0, duration)
        result = self.undisturbed_call(parrot_service, [(1.0, first)], 1.0 + 2 * duration + 2.5)
        self.assertEqual(result.delete_status, 204)
        said_at = result.segment_started_at[0]
        self.assertIsNotNone(said_at)
        turn_end = said_at + duration

        loud = result.loud(VOICED_DB)
        self.assertTrue(loud, f"nothing came back: {len(result.received)} packets received")
        # Nothing during the turn or the silence that ends it.
        first_back = loud[0]
        self.assertGreaterEqual(first_back, turn_end + SILENCE_MS / 1000 - 0.1, (first_back - turn_end, result.events))
        self.assertLessEqual(first_back, turn_end + SILENCE_MS / 1000 + 0.5, (first_back - turn_end, result.events))
        # One answer, about as long as the turn (its voiced part: the padding is quiet). Both on the
        # senders' clocks: what the client said (a starved client skips frames rather than send a
        # backlog) and the RTP time of what came back (a starved client reads a burst late).
        answer = result.talkspurts(VOICED_DB, gap=0.5)
        self.assertEqual(len(answer), 1, (answer, result.events))
        back, said = answer[0][1], result.segment_said[0]
        self.assertLessEqual(abs(back - said), 0.25, (back, said, duration))

        if result.channel_opened:
            types = [e.get("type") for e in result.events]
            for kind in ("parrot.turn_ended", "parrot.speaking", "parrot.done"):
                self.assertEqual(types.count(kind), 1, types)
            ended = next(e for e in result.events if e.get("type") == "parrot.turn_ended")
            self.assertLessEqual(abs(ended["duration_ms"] - duration * 1000), 250, (ended, duration))
        self.assertEqual(health_sessions(parrot_service + "/healthz"), 0)

    def test_second_utterance_barges_in(self) -> None:
        """Speaking while the parrot plays stops it within 60 ms at the transceiver; the new turn comes back."""
        utterances = make_utterances()
        parrot_service = self.start_parrot_service()

        first, second = utterances["first"], utterances["second"]
        duration, second_duration = seconds_of(first), seconds_of(second)
        # Barge in about 1.2 s into the parrot's answer.
        second_at = 1.0 + duration + SILENCE_MS / 1000 + 1.2
        length = second_at + second_duration + SILENCE_MS / 1000 + second_duration + 2.0
        result = self.undisturbed_call(parrot_service, [(1.0, first), (second_at, second)], length)
        self.assertEqual(result.delete_status, 204)
        self.assertEqual(result.stats_status, 200, result.stats_status)

        # The transceiver's own measure: first voiced packet in -> last agent packet out.
        barge_in_ms = result.stats.get("barge_in_ms")
        self.assertTrue(barge_in_ms, result.stats)
        self.assertEqual(len(barge_in_ms), 1, barge_in_ms)
        self.assertLessEqual(barge_in_ms[0], 60, barge_in_ms)

        # The client's: the answer was playing when the second utterance began, and stopped soon after,
        # on the client's clock when the server sent it (a client too loaded to read on time reads late).
        first_at, barge_at = result.segment_started_at
        self.assertIsNotNone(first_at)
        self.assertIsNotNone(barge_at)
        loud = result.loud(VOICED_DB)
        self.assertTrue(
            result.loud_sent(VOICED_DB, barge_at - 0.3, barge_at), "the parrot was not playing when the caller spoke"
        )
        during = result.loud_sent(VOICED_DB, barge_at, barge_at + second_duration + SILENCE_MS / 1000 - 0.1)
        self.assertTrue(during, "no audio at all after the barge-in started")
        stopped_after = during[-1] - barge_at
        self.assertLessEqual(stopped_after, 0.15, (stopped_after, bursts(during, 0.1)))

        # Then the second turn comes back, about as long as it was said (on the senders' clocks, as above).
        second_end = barge_at + second_duration
        answer = result.talkspurts(VOICED_DB, second_end, gap=0.5)
        self.assertEqual(len(answer), 1, (answer, result.events))
        self.assertGreaterEqual(answer[0][0], second_end + SILENCE_MS / 1000 - 0.1, answer[0][0] - second_end)
        said = result.segment_said[1]
        self.assertLessEqual(abs(answer[0][1] - said), 0.25, (answer, said, second_duration))

        if result.channel_opened:
            types = [e.get("type") for e in result.events]
            self.assertEqual(types.count("parrot.interrupted"), 1, types)
            self.assertEqual(types.count("parrot.speaking"), 2, types)
        self.assertTrue(loud)
        self.assertEqual(health_sessions(parrot_service + "/healthz"), 0)

    def test_session_update_over_the_data_channel(self) -> None:
        """session.update on oai-events sets the silence; session.updated answers, and the turn waits that long."""
        utterances = make_utterances()
        parrot_service = self.start_parrot_service()
        from tests.aiortc_peer import scripted_call

        second = utterances["second"]
        duration = seconds_of(second)
        detection = {"type": "server_vad", "silence_duration_ms": 1500}
        update = {"type": "session.update", "session": {"audio": {"input": {"turn_detection": detection}}}}
        result = asyncio.run(
            scripted_call(parrot_service, [(1.5, second)], seconds=1.5 + 2 * duration + 3.0, events=[update])
        )
        if not result.channel_opened:
            self.fail(f"the oai-events channel never opened: {result.events}")
        updated = [e for e in result.events if e.get("type") == "session.updated"]
        self.assertTrue(updated, result.events)
        self.assertEqual(updated[0]["session"]["audio"]["input"]["turn_detection"]["silence_duration_ms"], 1500)
        said_at = result.segment_started_at[0]
        self.assertIsNotNone(said_at)
        loud = result.loud(VOICED_DB)
        self.assertTrue(loud)
        self.assertGreaterEqual(loud[0], said_at + duration + 1.4, loud[0] - said_at - duration)
