# -*- test-case-name: tests.test_memory,tests.test_bench_scripts -*-
"""Memory per call on the transceiver's media path, in memory: what a session holds, on time and with the loop late.

``python bench/memory.py [--sessions 30] [--seconds 10] [--detector energy] [--late-ms 0,200,1000] [--top 12]``

A :class:`~voiceedge.transceiver.host.Transceiver` on a ``task.Clock`` with
``--sessions`` in-memory clients (ICE, DTLS and SRTP done for real) and the
echo agent (decode, detect speech, encode), as ``bench/media_path.py`` builds
them. Each client sends the pionpeer tone every 20 ms. With ``--late-ms 0`` the
loop is on time: every packet is handed in on its slot. With ``--late-ms L`` the
loop is late as a saturated worker's is: the clock jumps ``L`` ms at a time and
the packets of those ``L`` ms arrive at once after it (the caller kept sending;
the process read nothing meanwhile).

For each lateness it prints, per session: the Python heap (``tracemalloc``,
numpy's arrays included) the sessions hold, split by the source file that
allocated it; the agent audio waiting (mean and largest queue, ms); the
outbound queue's overflow counter; and the C memory ``tracemalloc`` cannot see:
libopus's encoder and decoder states (``opus_encoder_get_size``) and the
process's RSS growth over the sessions. Memory is read at the end of the run
with the sessions still up, after a full garbage collection.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import statistics
import sys
import tracemalloc
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from twisted.internet.task import Clock  # noqa: E402

from tests import memory_call as mc  # noqa: E402
from voiceedge.agents.echo import EchoAgentFactory  # noqa: E402
from voiceedge.transceiver.host import Transceiver  # noqa: E402
from voiceedge.transceiver.settings import SpeechSettings, TransceiverSettings  # noqa: E402
from voiceedge.media.detection import parse_detector  # noqa: E402

FRAME = 0.020


def rss_kb() -> int:
    """This process's resident set, kB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


def malloc_in_use() -> int | None:
    """Bytes glibc's malloc has handed out and not had back (``mallinfo2``): C libraries' memory and
    Python's objects over 512 bytes; ``None`` where there is no glibc 2.33+."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallinfo2 = libc.mallinfo2
    except (OSError, AttributeError):
        return None
    mallinfo2.restype = _MallInfo2
    info = mallinfo2()
    return int(info.uordblks + info.hblkhd)


def opus_state_sizes() -> tuple[int, int]:
    """libopus's encoder and decoder state sizes for one channel, bytes."""
    from voiceedge.media.opus import load_libopus

    lib = ctypes.CDLL(load_libopus().path)
    lib.opus_encoder_get_size.restype = ctypes.c_int
    lib.opus_decoder_get_size.restype = ctypes.c_int
    return lib.opus_encoder_get_size(1), lib.opus_decoder_get_size(1)


class Bench:
    """``sessions`` echo calls connected in memory, with the speech detector ``detector``."""

    def __init__(self, sessions: int, detector: str) -> None:
        clock = Clock()
        clock.advance(1_000_000)
        written: list[tuple[bytes, Any]] = []
        settings = TransceiverSettings(media_listen=mc.SERVER, max_sessions=sessions + 1)
        self.factory = EchoAgentFactory()
        transceiver = Transceiver(clock, mc.SERVER_CERT, self.factory, settings, speech=SpeechSettings(detector=parse_detector(detector)))
        transceiver.write = lambda data, destination: written.append((bytes(data), destination))
        transceiver.start()
        self.calls = mc.ConnectedCalls(transceiver, clock, written, sessions)

    def drops(self) -> dict[str, int]:
        """The transceiver's drop counters and the echo's, where not zero."""
        counts = {**self.calls.transceiver.drops, **{f"echo {k}": v for k, v in self.factory.counters.items()}}
        return {key: value for key, value in counts.items() if value}


def build_and_run(sessions: int, seconds: float, late_ms: int, detector: str, frames: list[bytes]) -> Bench:
    """The sessions after the run, their clients' side dropped (only the server's memory stays)."""
    bench = Bench(sessions, detector)
    bench.calls.feed(frames, int(seconds / FRAME), late_ms / 1000)
    bench.calls.clients.clear()
    gc.collect()
    return bench


def measure(sessions: int, seconds: float, late_ms: int, detector: str, frames: list[bytes], top: int,
            by: str) -> None:
    """One lateness: RSS over a run, then the Python heap by source over another; print both."""
    gc.collect()
    rss0, malloc0 = rss_kb(), malloc_in_use()
    bench = build_and_run(sessions, seconds, late_ms, detector, frames)
    rss1, malloc1 = rss_kb(), malloc_in_use()
    queued = bench.calls.queued_ms()
    drops = bench.drops()
    del bench
    gc.collect()
    tracemalloc.start(1)
    before = tracemalloc.take_snapshot()
    bench = build_and_run(sessions, seconds, late_ms, detector, frames)
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    stats = after.compare_to(before, by)
    traced = sum(s.size_diff for s in stats)
    encoder, decoder = opus_state_sizes()
    print(
        f"late {late_ms} ms, {sessions} sessions, {detector}: RSS growth {(rss1 - rss0) / sessions:.1f} kB per session"
        f" (the clients' memory freed but not given back), malloc in use"
        f" {(malloc1 - malloc0) / sessions / 1024 if malloc0 is not None and malloc1 is not None else float('nan'):.1f} kB;"
        f" Python heap {traced / sessions / 1024:.1f} kB (tracemalloc, numpy's arrays included);"
        f" libopus states {(encoder + decoder) / 1024:.1f} kB (encoder {encoder / 1024:.1f}, decoder {decoder / 1024:.1f})"
    )
    print(
        f"  agent audio queued: mean {statistics.mean(queued):.0f} ms, largest {max(queued)} ms;"
        f" drops {drops or 'none'}"
    )
    for stat in stats[:top]:
        frame = stat.traceback[0]
        name = str(Path(frame.filename).resolve()).replace(str(ROOT) + "/", "")
        where = f"{name}:{frame.lineno}" if by == "lineno" else name
        print(f"    {stat.size_diff / sessions / 1024:8.1f} kB {stat.count_diff / sessions:7.1f} blocks  {where}")
    del bench
    gc.collect()


def main() -> None:
    """Parse arguments; one measurement per lateness."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=30)
    parser.add_argument("--seconds", type=float, default=10.0, help="audio each client sends")
    parser.add_argument("--detector", default="energy", choices=("energy", "silero"))
    parser.add_argument("--late-ms", default="0,200,1000", help="how late the loop is (comma list: one run each)")
    parser.add_argument("--top", type=int, default=12, help="source files to list by memory held")
    parser.add_argument("--by", default="filename", choices=("filename", "lineno"), help="how to group the heap")
    args = parser.parse_args()
    frames = mc.tone_packets()
    # What the first sessions touch once (imports, caches) is not memory per session.
    build_and_run(2, 1.0, 0, args.detector, frames)
    gc.collect()
    for late in (int(x) for x in args.late_ms.split(",")):
        measure(args.sessions, args.seconds, late, args.detector, frames, args.top, args.by)


if __name__ == "__main__":
    main()
