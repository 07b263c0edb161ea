# -*- test-case-name: tests.test_bench_scripts -*-
"""CPU per echoed frame on the transceiver's media path, in memory: where the time goes, without a network.

``python bench/media_path.py [--sessions 10] [--seconds 20] [--agent echo] [--profile]``
``python bench/media_path.py --callgrind``  (instructions per echoed frame, under valgrind)
``--silero-batch off``: each session runs its Silero windows alone (before batching), for a side-by-side
``--spread``: the sessions' packets come spread over each 20 ms (the clock moves between them), as
calls' packets reach a real process, instead of all in one turn; ``--silero-delay-ms``: the batcher's
wait (the transceiver's 5 ms by default). Both print the windows per Silero inference and the
session timer wake-ups per inference.

A :class:`~voiceedge.transceiver.host.Transceiver` on a ``task.Clock`` with
``--sessions`` in-memory clients (ICE, DTLS and SRTP done for real). Every
client's packets for the whole run (real Opus speech, ``tests/pion/audio``)
are protected before the clock starts, so what is measured is the server's
side only: every 20 ms each client's next packet goes into
``datagram_received``, then the clock moves 20 ms (the shared tick, every
session's timer). The transceiver's datagrams are counted, not decrypted.

It prints CPU µs per echoed frame (``time.process_time``), and with
``--profile`` the cProfile functions that take the most time per frame. CPU
time on a loaded machine is noisy; ``--callgrind`` runs the same thing under
``valgrind --tool=callgrind`` twice (a short and a long run) and prints the
difference in instructions per echoed frame, which load does not change.
What it leaves out: the event loop and the sockets (``bench/transceiver.py``
measures a real process) and the relay hop of the all-in-one.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from twisted.internet.task import Clock  # noqa: E402

from tests import memory_call as mc  # noqa: E402
from voiceedge.agents.interfaces import IAgentFactory  # noqa: E402

AUDIO = ROOT / "tests" / "pion" / "audio" / "speech.opus20"
FRAME = 0.020


def speech_frames() -> list[bytes]:
    """The Opus packets pionpeer sends (2-byte big-endian length, then the packet)."""
    data = AUDIO.read_bytes()
    frames = []
    while data:
        (size,) = struct.unpack_from("!H", data)
        frames.append(data[2 : 2 + size])
        data = data[2 + size :]
    return frames


def make_agent_factory(agent: str, complexity: int | None) -> IAgentFactory:
    """The agent under test: ``echo`` (decode and re-encode) or ``passthrough`` (Opus both ways)."""
    if agent == "echo":
        from voiceedge.agents.echo import EchoAgentFactory

        return EchoAgentFactory()
    if agent == "passthrough":
        from voiceedge.agents.echo import PassthroughEchoAgentFactory

        return PassthroughEchoAgentFactory()
    raise SystemExit(f"unknown agent {agent!r}")


class MemoryBench:
    """Sessions connected in memory, their packets ready; :meth:`run` echoes them for real."""

    def __init__(
        self,
        sessions: int,
        frames: int,
        agent: str,
        complexity: int | None,
        application: str | None = None,
        silero_batch: bool = True,
        spread: bool = False,
        silero_delay: float | None = None,
    ) -> None:
        self.spread = spread
        self.clock = Clock()
        self.clock.advance(1_000_000)
        kwargs: dict[str, Any] = {"max_sessions": sessions + 1}
        if complexity is not None:
            kwargs["opus_complexity"] = complexity
        if application is not None:
            kwargs["opus_application"] = application
        self.transceiver, self.written = mc.make_transceiver(
            self.clock, make_agent_factory(agent, complexity), **kwargs
        )
        if not silero_batch:
            self.transceiver.silero_batcher = None  # type: ignore[assignment]  # sessions opened now run alone
        elif silero_delay is not None:
            self.transceiver.silero_batcher.delay = silero_delay
        # Session timers that fire (each a wake-up of the event loop for one call).
        self.timeouts = 0
        timeout = self.transceiver._timeout

        def counted(call: Any) -> None:
            self.timeouts += 1
            timeout(call)

        self.transceiver._timeout = counted  # type: ignore[method-assign]
        self.addresses = [("127.0.0.1", 40000 + i) for i in range(sessions)]
        self.clients: list[mc.MemoryClient] = []
        for address in self.addresses:
            self.clients.append(self._connect(address))
        self.written.clear()
        audio = speech_frames()
        # Every packet of the run, protected in order before anything is timed.
        self.packets: list[list[bytes]] = []
        for client in self.clients:
            assert client.srtp is not None
            sent: list[bytes] = []
            client.send = sent.append
            for i in range(frames):
                client.send_rtp(audio[i % len(audio)])
            self.packets.append(sent)
        self.frames = frames

    def _connect(self, address: tuple[str, int]) -> mc.MemoryClient:
        return mc.connect_client(self.transceiver, self.clock, self.written, address)

    def run(self) -> int:
        """Feed every packet on the 20 ms grid; the RTP datagrams the transceiver sent back."""
        receive = self.transceiver.datagram_received
        written = self.written
        echoed = 0
        pairs = list(zip(self.packets, self.addresses))
        advance = self.clock.advance
        step = FRAME / len(pairs)
        for i in range(self.frames):
            if self.spread:
                for packets, address in pairs:
                    receive(packets[i], address)
                    advance(step)
            else:
                for packets, address in pairs:
                    receive(packets[i], address)
                advance(FRAME)
            for data, _ in written:
                if 128 <= data[0] <= 191 and not 192 <= data[1] <= 223:
                    echoed += 1
            written.clear()
        return echoed


def measure(args: argparse.Namespace) -> None:
    """Set up, run once, print µs per echoed frame (and the profile, if asked)."""
    frames = int(args.seconds / FRAME)
    delay = None if args.silero_delay_ms is None else args.silero_delay_ms / 1000
    bench = MemoryBench(
        args.sessions, frames, args.agent, args.complexity, args.application, args.silero_batch == "on",
        args.spread, delay,
    )
    batcher = bench.transceiver.silero_batcher
    inferences0, windows0, timeouts0 = (batcher.inferences, batcher.windows, bench.timeouts) if batcher else (0, 0, 0)
    profiler = cProfile.Profile() if args.profile else None
    cpu0 = time.process_time()
    if profiler is not None:
        profiler.enable()
    echoed = bench.run()
    if profiler is not None:
        profiler.disable()
    cpu = time.process_time() - cpu0
    print(
        f"{args.agent}: {args.sessions} sessions x {frames} frames: {echoed} echoed, "
        f"{cpu / max(echoed, 1) * 1e6:.1f} µs CPU per echoed frame{' (profiled)' if profiler else ''},"
        f" Silero batching {args.silero_batch}"
    )
    if batcher is not None:
        inferences = max(batcher.inferences - inferences0, 1)
        print(
            f"batches: {(batcher.windows - windows0) / inferences:.1f} windows per Silero inference"
            f" (delay {batcher.delay * 1000:g} ms{', packets spread' if args.spread else ''}),"
            f" {(bench.timeouts - timeouts0) / inferences:.2f} session timer wake-ups per inference"
        )
    if profiler is not None:
        out = io.StringIO()
        stats = pstats.Stats(profiler, stream=out)
        stats.sort_stats(args.sort).print_stats(args.top)
        print(out.getvalue())


def callgrind(args: argparse.Namespace) -> None:
    """Instructions per echoed frame: two runs under callgrind, the long one minus the short one."""
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        raise SystemExit("valgrind is not installed (apt-get install valgrind)")
    short, long = 1.0, 1.0 + args.seconds
    totals = []
    with tempfile.TemporaryDirectory(prefix="media-path-") as tmp:
        for seconds in (short, long):
            out = Path(tmp) / f"callgrind.{seconds}"
            argv = [
                valgrind, "--tool=callgrind", f"--callgrind-out-file={out}",
                sys.executable, __file__, "--sessions", str(args.sessions), "--seconds", str(seconds),
                "--agent", args.agent,
            ]
            if args.complexity is not None:
                argv += ["--complexity", str(args.complexity)]
            if args.application is not None:
                argv += ["--application", args.application]
            argv += ["--silero-batch", args.silero_batch]
            if args.spread:
                argv.append("--spread")
            if args.silero_delay_ms is not None:
                argv += ["--silero-delay-ms", str(args.silero_delay_ms)]
            proc = subprocess.run(argv, capture_output=True, text=True, check=False, env=dict(os.environ, PYTHONHASHSEED="0"))
            match = re.search(r"Collected : (\d+)", proc.stderr)
            if proc.returncode != 0 or match is None:
                raise SystemExit(f"callgrind run failed:\n{proc.stdout}\n{proc.stderr[-2000:]}")
            totals.append(int(match.group(1)))
            batches = [line for line in proc.stdout.splitlines() if line.startswith("batches:")]
            if args.keep:
                shutil.copy(out, ROOT / "build" / out.name)
    echoed = args.sessions * round(args.seconds / FRAME)
    per_frame = (totals[1] - totals[0]) / echoed
    print(
        f"{args.agent}: {per_frame / 1000:.1f} k instructions per echoed frame ({args.sessions} sessions, {echoed} frames),"
        f" Silero batching {args.silero_batch}"
    )
    for line in batches:  # the long run's
        print(line)


def main() -> None:
    """Parse arguments and measure."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=20.0, help="seconds of audio per session")
    parser.add_argument("--agent", default="echo", choices=("echo", "passthrough"))
    parser.add_argument("--complexity", type=int, default=None, help="[transceiver] opus_complexity")
    parser.add_argument("--application", default=None, help="[transceiver] opus_application")
    parser.add_argument("--profile", action="store_true", help="cProfile the run")
    parser.add_argument("--sort", default="tottime", help="cProfile sort key")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--callgrind", action="store_true", help="instructions per frame under valgrind")
    parser.add_argument("--keep", action="store_true", help="keep the callgrind files in build/")
    parser.add_argument(
        "--silero-batch", default="on", choices=("on", "off"),
        help="off: each session runs its Silero windows alone (the transceiver batches them: on)",
    )
    parser.add_argument("--spread", action="store_true", help="the sessions' packets spread over each 20 ms")
    parser.add_argument("--silero-delay-ms", type=float, default=None, help="the Silero batcher's wait (default 5)")
    args = parser.parse_args()
    if args.callgrind:
        callgrind(args)
    else:
        measure(args)


if __name__ == "__main__":
    main()
