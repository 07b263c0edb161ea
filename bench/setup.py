# -*- test-case-name: tests.test_long_calls -*-
"""Call setup: first echoed RTP with Pion calls, voiceedge beside a Pion echo server, in one run.

``python bench/setup.py [--calls 20] [--datachannel oai-events] [--firefox 5]``

Both servers run on loopback at once: the voiceedge all-in-one (``twistd -n
voiceedge``: relay, transceiver, echo agent) and ``bench/pionecho`` (ICE-lite
Pion on one UDP port, echoing RTP payloads). The same client, ``pionpeer``
(Pion, built from Debian's sources by ``tests/pion_peer.py``), makes
``--calls`` one-second calls to each, alternating, one at a time, and reports
when the first echoed RTP packet arrived, in ms from the start of the call
(before the peer connection is made: the offer, the HTTP round trip, ICE,
DTLS and the echo all count). The table gives p50 and p95 for each server
and every setup milestone, the ratio of voiceedge to Pion, and voiceedge's own
setup waterfall from ``/metrics`` (p50 by histogram bucket). The goal: voiceedge's
p50 at most 1.5x Pion's.

With ``--firefox N`` (Debian's ``firefox-esr``, headless, through
``tests/firefox_peer.py``), N more calls to each server from a fresh Firefox
each time: answer to DTLS connected, p50 and ratio. Firefox's first DTLS
flight carries a post-quantum key share in a 1,408-byte datagram; a relay that
drops it makes Firefox connect a retransmission later.

Bounded: each call ends by itself after a second (pionpeer's own deadline);
both servers are stopped in ``finally``.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests import pion_peer  # noqa: E402
from tests.support import (  # noqa: E402
    free_tcp_port,
    free_udp_port,
    running_service,
    scrape_metrics,
    write_allinone_config,
)

MILESTONES = ("http_answer_ms", "ice_connected_ms", "dtls_connected_ms", "first_inbound_rtp_ms")
WATERFALL = ("answer", "first_check", "nomination", "dtls", "first_rtp_in", "first_rtp_out", "datachannel_open")


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) by linear interpolation."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def one_call(url: str, datachannel: str, log_dir: Path) -> dict[str, Any]:
    """A one-second Pion call; its result, which must have reached echoed audio."""
    result = pion_peer.call(url, seconds=1.0, datachannel=datachannel, setup_timeout=5.0, log_dir=log_dir)
    if result.get("first_inbound_rtp_ms") is None:
        raise RuntimeError(f"a call to {url} got no echoed audio: {result.get('error')}")
    return result


def waterfall_p50(base_url: str) -> dict[str, str]:
    """voiceedge's setup histograms: the bucket bound under which half the sessions reached each step."""
    samples = scrape_metrics(base_url).get("voiceedge_transceiver_setup_seconds_bucket", {})
    by_step: dict[str, list[tuple[float, float]]] = {}
    for labels, count in samples.items():
        fields = dict(item.split("=", 1) for item in labels.split(","))
        bound = float("inf") if fields["le"] == "+Inf" else float(fields["le"])
        by_step.setdefault(fields["milestone"], []).append((bound, count))
    result = {}
    for step in WATERFALL:
        buckets = sorted(by_step.get(step, []))
        total = buckets[-1][1] if buckets else 0
        if not total:
            continue
        bound = next(b for b, n in buckets if n >= total / 2)
        result[step] = f"<= {bound * 1000:g} ms"
    return result


def main() -> int:
    """Run both servers, alternate the calls, print the table and the ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20, help="calls to each server")
    parser.add_argument("--datachannel", default="oai-events", help='label, or "" for audio only')
    parser.add_argument("--firefox", type=int, default=0, help="Firefox calls to each server (0: none)")
    args = parser.parse_args()

    pion_peer.build()
    logs = Path(tempfile.mkdtemp(prefix="bench-setup-"))
    http_port, media_port = free_tcp_port(), free_udp_port()
    base = f"http://127.0.0.1:{http_port}"
    results: dict[str, list[dict[str, Any]]] = {"voiceedge": [], "pionecho": []}
    firefox: dict[str, list[float]] = {"voiceedge": [], "pionecho": []}
    with contextlib.ExitStack() as stack:
        harness = None
        if args.firefox:
            from tests.firefox_peer import FirefoxHarness

            harness = stack.enter_context(FirefoxHarness(log_dir=logs))
        ini = write_allinone_config(
            logs,
            http_port,
            media_port,
            # Every call comes from this one address: no per-address call limit here.
            signaling={"cors_origins": harness.origin if harness else "", "calls_per_minute_per_address": 0},
        )
        stack.enter_context(running_service(["voiceedge", "--config", str(ini)], base + "/healthz", log_dir=logs))
        echo = stack.enter_context(pion_peer.running_pionecho(log_dir=logs))
        urls = {"voiceedge": base + "/v1/realtime/calls", "pionecho": echo.offer_url}
        # One warm-up call each: the first call pays for imports and caches.
        for url in urls.values():
            one_call(url, args.datachannel, logs)
        for _ in range(args.calls):
            for name, url in urls.items():
                results[name].append(one_call(url, args.datachannel, logs))
        waterfall = waterfall_p50(base)
        for _ in range(args.firefox):
            for name, url in urls.items():
                assert harness is not None
                result = harness.call(url, seconds=1.0, datachannel=args.datachannel)
                if not result.get("ok") or result.get("dtls_connected_ms") is None:
                    raise RuntimeError(f"a Firefox call to {url} failed: {result.get('error')}")
                firefox[name].append(result["dtls_connected_ms"] - result["http_answer_ms"])

    print(f"{args.calls} Pion calls to each server, one at a time, alternating; ms from the call's start")
    print(f"{'milestone':24} {'voiceedge p50':>14} {'p95':>8} {'pionecho p50':>14} {'p95':>8} {'ratio p50':>10}")
    for milestone in MILESTONES:
        ours = [r[milestone] for r in results["voiceedge"] if r.get(milestone) is not None]
        theirs = [r[milestone] for r in results["pionecho"] if r.get(milestone) is not None]
        if not ours or not theirs:
            continue
        ratio = percentile(ours, 0.5) / max(percentile(theirs, 0.5), 1e-9)
        print(
            f"{milestone:24} {percentile(ours, 0.5):14.1f} {percentile(ours, 0.95):8.1f} "
            f"{percentile(theirs, 0.5):14.1f} {percentile(theirs, 0.95):8.1f} {ratio:10.2f}"
        )
    first = [r["first_inbound_rtp_ms"] for r in results["voiceedge"]]
    first_pion = [r["first_inbound_rtp_ms"] for r in results["pionecho"]]
    ratio = statistics.median(first) / statistics.median(first_pion)
    print(f"voiceedge setup waterfall (server side, p50 from /metrics): {waterfall}")
    print(
        f"first echoed RTP: voiceedge p50 {percentile(first, 0.5):.1f} ms p95 {percentile(first, 0.95):.1f} ms; "
        f"pionecho p50 {percentile(first_pion, 0.5):.1f} ms p95 {percentile(first_pion, 0.95):.1f} ms; "
        f"ratio p50 {ratio:.2f} (goal <= 1.5)"
    )
    if args.firefox:
        ours, theirs = statistics.median(firefox["voiceedge"]), statistics.median(firefox["pionecho"])
        print(
            f"Firefox ESR, {args.firefox} calls each, answer to DTLS connected: voiceedge p50 {ours:.1f} ms, "
            f"pionecho p50 {theirs:.1f} ms, ratio {ours / theirs:.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
