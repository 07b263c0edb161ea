# -*- test-case-name: tests.test_long_calls -*-
"""A Pion load on the all-in-one: 100 calls held 90 s; does any end early, and how many keep 48 packets/s?

``python bench/load.py [--calls 100] [--seconds 90] [--ramp 10] [--audio tone] [--datachannel ""] [--workers auto]
[--max-cpu-percent P] [--max-loop-lag-ms MS]``

Runs ``twistd -n voiceedge`` (relay, transceiver and the echo agent, which
decodes and re-encodes every frame: a transcoding call) on loopback and loads it
with ``pionpeer load`` (Pion, built by ``tests/pion_peer.py``): ``--calls``
calls started ``--ramp`` a second, each sending a real Opus frame every 20 ms
(``--audio tone`` by default: continuous sound, every frame echoed; ``speech``
has pauses the echo does not send back, so its calls stay under 48 packets/s),
measured together for ``--seconds`` once all are up. It prints what a user of
the service would ask first:

* calls that ended early (the consent bug ended every call of an 80-call load at
  30 s), and why;
* calls that held at least 48 packets/s of echoed audio over the window, with
  the mean and worst per-call rate and arrival-gap percentiles;
* the server's CPU per call-second and in % of one core, and its RSS per call.

The all-in-one runs ``--workers`` processes (default ``auto``, the service's own
default: one per core); the server's CPU and RSS are the supervisor's and its
workers'. When it cannot carry every call at 48 packets/s, the figures say how
many it did carry. Each worker refuses calls past its load limits (``[transceiver]
max_cpu_percent``, ``max_loop_lag_ms``: the service's defaults unless
``--max-cpu-percent``/``--max-loop-lag-ms`` say otherwise, ``0 0`` for none);
the refusals are printed, and with one worker its load while calls were up.
Bounded: ``pionpeer`` ends
every call itself and the server is stopped in ``finally``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests import pion_peer  # noqa: E402
from voiceedge.workers import parse_workers, process_count  # noqa: E402
from tests.support import (  # noqa: E402
    free_tcp_port,
    free_udp_port,
    running_service,
    wait_workers_serving,
    scrape_metrics,
    write_allinone_config,
)


class LoadSampler(threading.Thread):
    """Reads the transceiver's load gauges from ``/metrics`` every ``period`` seconds until stopped.

    A one-process all-in-one shows its CPU share and loop lag; a supervisor's
    ``/metrics`` is its front door's, which shows each worker's CPU share and
    whether it admits calls, as the worker last reported them.
    """

    def __init__(self, base: str, period: float = 2.0) -> None:
        super().__init__(daemon=True)
        self.base = base
        self.period = period
        self.done = threading.Event()
        self.cpu: list[float] = []
        self.lag_ms: list[float] = []
        self.wait: list[float] = []
        self.refusing = 0

    def run(self) -> None:
        """Sample until :attr:`done` is set."""
        while not self.done.wait(self.period):
            try:
                metrics = scrape_metrics(self.base)
            except Exception:
                continue
            cpu = metrics.get("voiceedge_transceiver_cpu_ratio", {}).get("")
            lag = metrics.get("voiceedge_transceiver_loop_lag_seconds", {}).get("")
            sessions = metrics.get("voiceedge_transceiver_sessions", {}).get("", 0)
            if cpu is not None and lag is not None and sessions:
                self.cpu.append(cpu * 100)
                self.lag_ms.append(lag * 1000)
                self.wait.append(metrics.get("voiceedge_transceiver_cpu_wait_ratio", {}).get("", 0.0) * 100)
            workers = metrics.get("voiceedge_frontdoor_transceiver_cpu_ratio", {})
            self.cpu.extend(share * 100 for share in workers.values() if share > 0.02)
            admitting = metrics.get("voiceedge_frontdoor_transceiver_admitting", {})
            self.refusing += sum(1 for value in admitting.values() if not value)

    def summary(self) -> str:
        """Median and largest of what was read while calls were open."""
        if not self.cpu:
            return "none read"
        lag = (f"waited for a core % median {statistics.median(self.wait):.0f}; "
               f"loop lag ms median {statistics.median(self.lag_ms):.1f} max {max(self.lag_ms):.1f}"
               if self.lag_ms else f"worker readings refusing calls: {self.refusing}")
        return (f"CPU % of a core (per worker) median {statistics.median(self.cpu):.0f} max {max(self.cpu):.0f}; "
                f"{lag} ({len(self.cpu)} readings)")


def main() -> int:
    """Run the load once and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=90.0, help="the measured window")
    parser.add_argument("--ramp", type=float, default=10.0, help="calls started per second")
    parser.add_argument("--audio", default="tone", choices=("tone", "speech"),
                        help="what each call sends: a continuous tone (every frame echoed, so 48 packets/s"
                        " is what a call that keeps up gets back) or speech (its pauses are not sent back:"
                        " no call reaches 48 packets/s, and its gaps are the pauses)")
    parser.add_argument("--datachannel", default="", help='label for every call, or "" for audio only')
    parser.add_argument("--workers", default="auto", help="[process] workers of the all-in-one (auto or a count)")
    parser.add_argument("--max-cpu-percent", type=float, default=None,
                        help="[transceiver] max_cpu_percent of each worker (default: the service's; 0: no limit)")
    parser.add_argument("--max-loop-lag-ms", type=float, default=None,
                        help="[transceiver] max_loop_lag_ms of each worker (default: the service's; 0: no limit)")
    parser.add_argument("--json", action="store_true", help="also print pionpeer's whole summary")
    args = parser.parse_args()

    pion_peer.build()
    logs = Path(tempfile.mkdtemp(prefix="bench-load-"))
    http_port, media_port = free_tcp_port(), free_udp_port()
    # The service's own load limits unless given (the tests' config helper turns them off; None restores them).
    transceiver: dict[str, object | None] = {
        "max_sessions": args.calls + 10,
        "max_cpu_percent": args.max_cpu_percent,
        "max_loop_lag_ms": args.max_loop_lag_ms,
    }
    ini = write_allinone_config(
        logs,
        http_port,
        media_port,
        transceiver=transceiver,
        process={"workers": args.workers},
        # Every call comes from this one address: no per-address limits here.
        signaling={"calls_per_minute_per_address": 0, "max_connections_per_address": 0},
    )
    base = f"http://127.0.0.1:{http_port}"
    count = process_count(parse_workers(args.workers))
    with running_service(["voiceedge", "--config", str(ini)], base + "/healthz", log_dir=logs, timeout=60) as server:
        if count > 1:
            wait_workers_serving(base, count)
        sampler = LoadSampler(base)
        sampler.start()
        summary = pion_peer.load(
            base + "/v1/realtime/calls",
            n=args.calls,
            ramp=args.ramp,
            seconds=args.seconds,
            server_pids=[server.pid],
            server_children=True,
            datachannel=args.datachannel,
            audio=args.audio,
            setup_timeout=20.0,
            log_dir=logs,
        )
        sampler.done.set()
        sampler.join()
        metrics = scrape_metrics(base)
    drops = {
        name.replace("voiceedge_", "").replace("_drops_total", ""): {k: v for k, v in samples.items() if v}
        for name, samples in metrics.items()
        if name.endswith("_drops_total")
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    ended = metrics.get("voiceedge_transceiver_sessions_ended_total", {})
    pps = summary.get("in_pps_per_call", {})
    gaps = summary.get("gap_ms", {})
    print(f"{args.calls} Pion calls to the all-in-one ({count} worker(s); echo agent: Opus decode and re-encode), "
          f"started {args.ramp:g}/s, measured together for {args.seconds:g} s")
    print(f"  up when the window opened: {summary.get('up_at_window')}; ok at the end: {summary.get('ok_calls')}")
    print(f"  ended early: {summary.get('ended_early')} {summary.get('end_reasons') or ''}; "
          f"errors: {summary.get('errors') or 'none'}")
    print(f"  server-side ends by reason: {ended}")
    refused = {k: v for k, v in metrics.get("voiceedge_transceiver_sessions_refused_total", {}).items() if v}
    offers = {k: v for k, v in metrics.get("voiceedge_frontdoor_offers_total", {}).items() if v}
    print(f"  refused by the transceiver: {refused or 'none'}; front door offers: {offers or '(one process)'}")
    print(f"  the transceiver's load while calls were up: {sampler.summary()}")
    print(f"  drops: {drops}")
    print(f"  calls at >= 48 packets/s over the window: {summary.get('calls_ge_48pps')} of {args.calls}; "
          f"per-call packets/s mean {pps.get('mean')} min {pps.get('min')}")
    print(f"  arrival gaps ms: p50 {gaps.get('p50')} p99 {gaps.get('p99')} max {gaps.get('max')}; "
          f"worst call's p99 {summary.get('gap_p99_ms_worst_call')}")
    cpu = summary.get("server", {})
    print(f"  server CPU: {cpu.get('cpu_ms_per_call_s')} ms per call-second, {cpu.get('cpu_pct')} % of a core; "
          f"RSS {cpu.get('rss_kb_per_call')} kB per call")
    print(f"  lost (by sequence number): {summary.get('in_lost_total')}; "
          f"packets/s received in total {summary.get('in_pps_total')} of {summary.get('sent_pps_total')} sent")
    print(f"  setup ms (p50/p95): {json.dumps(summary.get('setup_ms'))}")
    print(f"  client (to see it kept up): {json.dumps(summary.get('client'))}")
    return 0 if not summary.get("ended_early") else 1


if __name__ == "__main__":
    sys.exit(main())
