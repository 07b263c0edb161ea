# -*- test-case-name: tests.test_aiortc_call -*-
"""CPU per echo session: the voiceedge all-in-one (echo agent) beside a plain aiortc echo server.

``python bench/transceiver.py [--calls 5] [--seconds 20] [--warmup 3]``

Two sides, one after the other, in the same run, on loopback:

* ``A voiceedge``: ``twistd -n voiceedge`` (relay + transceiver in one process,
  the echo agent, which decodes the caller's Opus to PCM and encodes it again).
* ``B aiortc``: ``bench/aiortc_echo_server.py``, an aiortc peer connection per
  call that sends the received track back through ``MediaRelay`` (aiortc
  decodes and re-encodes too).

For each side the same caller process (separate from the server, so its CPU
is not counted) places ``--calls`` aiortc calls at once, each sending a 440 Hz
tone in 20 ms Opus frames, for ``--seconds`` from the first dial. The server's
CPU time (user + system, all threads, from ``/proc/<pid>/stat``) is read at the
start and end of a steady-state window, which opens ``--warmup`` seconds after
dialing (and at least a second after the last call connected) and closes when
the callers stop sending. At the same two moments the callers report how many
RTP packets they had received back, so the table gives CPU % of one core per
session and CPU µs per 20 ms frame echoed. A side is valid only if every call
connected and got back at least 90% of the packets it sent; an invalid side is
reported as such and no ratio is printed.

Bounded: every child exits by itself after a deadline, every child is killed
in ``finally``, and the default run takes about a minute.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.support import (  # noqa: E402
    free_tcp_port,
    free_udp_port,
    http_get,
    running_service,
    write_allinone_config,
)

LOOPBACK = "127.0.0.1"
CHILD_DEADLINE = 120  # seconds; no child outlives this even if the driver dies
CONNECT_TIMEOUT = 20.0
ECHO_THRESHOLD = 0.90  # a call counts as echoed when it got back this share of what it sent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads), from ``/proc/<pid>/stat``."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    # The command name (field 2) may hold spaces or parentheses; fields after it are plain.
    fields = stat[stat.rindex(b")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    return (utime + stime) / CLOCK_TICKS


# -- the callers (a child process) -------------------------------------------


@dataclass
class CallerStats:
    """What one call measured, as the caller reports it to the driver."""

    location: str = ""
    connected: bool = False
    error: str = ""
    packets_sent: int = 0
    packets_received: int = 0
    delete_status: int = 0


async def run_callers(base_url: str, calls: int) -> None:
    """Place ``calls`` echo calls at once, then obey the driver's ``mark``/``stop`` lines on stdin.

    Prints one JSON line when every call has connected (or failed), one per
    ``mark`` (packet totals so far), and the per-call results after ``stop``.
    """
    import tests.aiortc_peer  # noqa: F401  (first: it patches aioice to loopback)
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
    from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

    from tests.aiortc_peer import SineTrack

    def http(method: str, url: str, body: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
        request = urllib.request.Request(url, data=body, method=method)
        if body is not None:
            request.add_header("Content-Type", "application/sdp")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read()

    class Caller:
        """One call: a peer connection that sends the tone and drains what comes back."""

        def __init__(self) -> None:
            self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
            self.sender: RTCRtpSender = self.pc.addTrack(SineTrack())
            self.stats = CallerStats()
            self._drains: list[asyncio.Task[None]] = []
            self.pc.on("track", self._track)

        def _track(self, track: MediaStreamTrack) -> None:
            self._drains.append(asyncio.ensure_future(self._drain(track)))

        @staticmethod
        async def _drain(track: MediaStreamTrack) -> None:
            try:
                while True:
                    await track.recv()
            except MediaStreamError:
                pass

        async def connect(self) -> None:
            """Offer, POST, answer, wait for ``connected``; errors are kept, not raised."""
            connected = asyncio.Event()

            @self.pc.on("connectionstatechange")
            def _state() -> None:
                if self.pc.connectionState == "connected":
                    connected.set()

            try:
                await self.pc.setLocalDescription(await self.pc.createOffer())
                offer = self.pc.localDescription.sdp.encode()
                status, headers, body = await asyncio.to_thread(
                    http, "POST", base_url + "/v1/realtime/calls", offer
                )
                if status != 201:
                    raise RuntimeError(f"POST answered {status}: {body[:200]!r}")
                self.stats.location = headers["Location"]
                await self.pc.setRemoteDescription(RTCSessionDescription(body.decode(), "answer"))
                await asyncio.wait_for(connected.wait(), CONNECT_TIMEOUT)
                self.stats.connected = True
            except Exception as e:  # reported to the driver, which marks the side invalid
                self.stats.error = f"{type(e).__name__}: {e}"

        async def read_counts(self) -> None:
            """Refresh packets sent and received from aiortc's RTP statistics."""
            for stat in (await self.pc.getStats()).values():
                if stat.type == "outbound-rtp":
                    self.stats.packets_sent = stat.packetsSent
                elif stat.type == "inbound-rtp":
                    self.stats.packets_received = stat.packetsReceived

        async def hang_up(self) -> None:
            """DELETE the session (if there is one) and close the peer connection."""
            try:
                if self.stats.location:
                    status, _, _ = await asyncio.to_thread(http, "DELETE", base_url + self.stats.location)
                    self.stats.delete_status = status
            finally:
                await self.pc.close()
                for task in self._drains:
                    task.cancel()

    def emit(message: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(message) + "\n")
        sys.stdout.flush()

    async def totals() -> dict[str, int]:
        await asyncio.gather(*(c.read_counts() for c in callers if c.stats.connected))
        return {
            "sent": sum(c.stats.packets_sent for c in callers),
            "received": sum(c.stats.packets_received for c in callers),
        }

    callers = [Caller() for _ in range(calls)]
    try:
        dialed_at = time.monotonic()
        await asyncio.gather(*(c.connect() for c in callers))
        emit(
            {
                "dialed_at": dialed_at,
                "connected_at": time.monotonic(),
                "connected": sum(c.stats.connected for c in callers),
                "errors": [c.stats.error for c in callers if c.stats.error],
            }
        )
        while True:
            command = (await asyncio.to_thread(sys.stdin.readline)).strip()
            if command == "mark":
                emit(await totals())
            elif command == "stop" or not command:  # EOF: the driver is gone
                break
        for caller in callers:
            caller.sender.replaceTrack(None)
        # Let the echo of the last frames come back: stop when the counts settle (bounded).
        previous = -1
        for _ in range(20):
            await asyncio.sleep(0.1)
            received = (await totals())["received"]
            if received == previous:
                break
            previous = received
        emit({"results": [vars(c.stats) for c in callers]})
    finally:
        await asyncio.gather(*(c.hang_up() for c in callers), return_exceptions=True)


# -- the driver --------------------------------------------------------------


class Child:
    """A child process whose stdout lines are read by a thread, so reads can time out."""

    def __init__(self, argv: list[str]) -> None:
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=str(ROOT)
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def send(self, line: str) -> None:
        """Write one command line to the child's stdin."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def read_json(self, timeout: float) -> dict[str, Any]:
        """The child's next stdout line, parsed; RuntimeError if it ends or is silent too long."""
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise RuntimeError(f"no answer from {self.proc.args!r} within {timeout} s") from None
        if line is None:
            raise RuntimeError(f"{self.proc.args!r} ended with {self.proc.wait()}")
        result: dict[str, Any] = json.loads(line)
        return result

    def kill(self) -> None:
        """End the child now (it may already have ended)."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


@dataclass
class SideResult:
    """One side's measurement."""

    side: str
    calls: int
    window_s: float = 0.0
    server_cpu_s: float = 0.0
    callers_cpu_s: float = 0.0
    frames_echoed: int = 0
    min_echo_share: float = 0.0
    problems: list[str] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        """Every call connected and echoed; the window was real."""
        return not self.problems

    @property
    def cpu_percent_per_session(self) -> float:
        """Server CPU as % of one core, per session, over the window."""
        return 100.0 * self.server_cpu_s / self.window_s / self.calls

    @property
    def frames_per_second_per_call(self) -> float:
        """Echoed frames per second per call in the window (50 when the server keeps up)."""
        return self.frames_echoed / self.window_s / self.calls

    @property
    def us_per_frame(self) -> float:
        """Server CPU µs per 20 ms frame echoed in the window."""
        return 1e6 * self.server_cpu_s / max(self.frames_echoed, 1)


def measure_side(side: str, base_url: str, server_pid: int, calls: int, seconds: float, warmup: float) -> SideResult:
    """Run the callers against a server already up at ``base_url``; read its CPU over the window."""
    result = SideResult(side, calls)
    callers = Child([sys.executable, str(Path(__file__).resolve()), "--role", "callers", "--url", base_url, "--calls", str(calls)])
    try:
        hello = callers.read_json(CONNECT_TIMEOUT + 15)
        if hello["connected"] != calls:
            result.problems.append(f"{calls - hello['connected']} of {calls} calls did not connect: {hello['errors'][:3]}")
        opens = max(hello["dialed_at"] + warmup, hello["connected_at"] + 1.0)
        closes = hello["dialed_at"] + seconds
        if closes - opens < 1.0:
            raise SystemExit(f"{side}: no steady-state window (calls took {hello['connected_at'] - hello['dialed_at']:.1f} s to connect)")
        time.sleep(max(0.0, opens - time.monotonic()))
        callers.send("mark")
        first = callers.read_json(10)
        cpu0, callers_cpu0, t0 = process_cpu_seconds(server_pid), process_cpu_seconds(callers.proc.pid), time.monotonic()
        time.sleep(max(0.0, closes - time.monotonic()))
        callers.send("mark")
        last = callers.read_json(10)
        cpu1, callers_cpu1, t1 = process_cpu_seconds(server_pid), process_cpu_seconds(callers.proc.pid), time.monotonic()
        callers.send("stop")
        calls_seen = callers.read_json(15)["results"]
    finally:
        callers.kill()
    result.window_s = t1 - t0
    result.server_cpu_s = cpu1 - cpu0
    result.callers_cpu_s = callers_cpu1 - callers_cpu0
    result.frames_echoed = last["received"] - first["received"]
    shares = [c["packets_received"] / c["packets_sent"] if c["packets_sent"] else 0.0 for c in calls_seen]
    result.min_echo_share = min(shares, default=0.0)
    short = sum(share < ECHO_THRESHOLD for share in shares)
    if short:
        result.problems.append(f"{short} of {calls} calls got back < {ECHO_THRESHOLD:.0%} of what they sent")
    return result


def _wait_healthy(proc: "subprocess.Popen[bytes]", url: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{proc.args!r} exited with {proc.returncode} before {url} answered")
        try:
            if http_get(url, timeout=1.0)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"{url} not healthy after {timeout} s")


@contextmanager
def voiceedge_server(log_dir: Path) -> Iterator[tuple[str, int]]:
    """``twistd -n voiceedge`` on free loopback ports with the echo agent: (base URL, pid)."""
    http_port, media_port = free_tcp_port(), free_udp_port()
    # Every call comes from this one address: no per-address call limit here.
    ini = write_allinone_config(
        log_dir, http_port, media_port, agent={"name": "echo"}, signaling={"calls_per_minute_per_address": 0}
    )
    base = f"http://{LOOPBACK}:{http_port}"
    with running_service(["voiceedge", "--config", str(ini)], base + "/healthz", log_dir=log_dir) as proc:
        yield base, proc.pid


@contextmanager
def aiortc_server(log_dir: Path) -> Iterator[tuple[str, int]]:
    """``bench/aiortc_echo_server.py`` on a free loopback port: (base URL, pid)."""
    port = free_tcp_port()
    base = f"http://{LOOPBACK}:{port}"
    script = Path(__file__).resolve().parent / "aiortc_echo_server.py"
    with (log_dir / "aiortc_echo_server.log").open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, str(script), "--port", str(port), "--deadline", str(CHILD_DEADLINE)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_healthy(proc, base + "/healthz")
        yield base, proc.pid
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
        proc.wait()


def print_table(results: list[SideResult]) -> None:
    """The side-by-side table and the ratio B/A (only when both sides are valid)."""
    print(
        f"  {'side':22s} {'N':>3s} {'CPU %/session':>14s} {'µs/frame':>9s} {'frames/s/call':>14s}"
        f" {'echoed (worst call)':>20s} {'callers CPU %':>14s}"
    )
    for r in results:
        if r.valid:
            cpu, us = f"{r.cpu_percent_per_session:14.2f}", f"{r.us_per_frame:9.0f}"
        else:
            cpu, us = f"{'invalid':>14s}", f"{'-':>9s}"
        callers_load = 100.0 * r.callers_cpu_s / r.window_s if r.window_s else 0.0
        fps = r.frames_per_second_per_call if r.window_s else 0.0
        print(f"  {r.side:22s} {r.calls:3d} {cpu} {us} {fps:14.1f} {r.min_echo_share:20.1%} {callers_load:14.0f}")
        for problem in r.problems:
            print(f"      invalid: {problem}")
    if len(results) == 2 and all(r.valid for r in results):
        a, b = results
        print(f"  B/A = {b.cpu_percent_per_session / a.cpu_percent_per_session:.2f}x CPU per session (aiortc / voiceedge)")
    else:
        print("  B/A: no ratio, a side is invalid")


def main() -> None:
    """Parse arguments; run the callers role or the whole comparison."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=5, help="concurrent calls per side (N)")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each side's calls, from dialing")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds after dialing before the window opens")
    parser.add_argument("--sides", default="voiceedge,aiortc", help=argparse.SUPPRESS)
    parser.add_argument("--role", default="driver", help=argparse.SUPPRESS)
    parser.add_argument("--url", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.role == "callers":
        signal.alarm(CHILD_DEADLINE)
        asyncio.run(run_callers(args.url, args.calls))
        return

    started = time.monotonic()
    print(
        f"{args.calls} concurrent echo calls per side, {args.seconds:.0f} s each (window from "
        f"{args.warmup:.0f} s), Opus 48 kHz, loopback, {os.cpu_count()} CPUs, Python {sys.version.split()[0]}",
        flush=True,
    )
    servers = {"voiceedge": ("A voiceedge (echo)", voiceedge_server), "aiortc": ("B aiortc MediaRelay", aiortc_server)}
    results: list[SideResult] = []
    with tempfile.TemporaryDirectory(prefix="voiceedge-bench-") as tmp:
        for key in args.sides.split(","):
            label, server = servers[key]
            log_dir = Path(tmp) / key
            log_dir.mkdir()
            with server(log_dir) as (base, pid):
                results.append(measure_side(label, base, pid, args.calls, args.seconds, args.warmup))
    print_table(results)
    print(f"  total {time.monotonic() - started:.1f} s")


if __name__ == "__main__":
    main()
