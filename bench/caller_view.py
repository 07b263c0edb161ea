"""What the caller hears, side by side: stop tails, speech detectors and browsers, measured from the page.

    python bench/caller_view.py [--calls 5] [--browsers chromium,firefox]
                                [--stop-tails silence,dtx,abrupt] [--detectors silero,energy]

For every (detector, stop tail) it starts the all-in-one with the parrot
(``[speech] detector``, ``[transceiver] stop_tail``) and makes ``--calls``
scripted calls from each headless browser (``tests/caller_view.py``: a
sentence, a pause, then talking over the parrot's answer). It prints, per
variant, min / median / max of: the end of the caller's turn to the reply heard;
the caller talking over the reply to the reply silent in the browser, and that
span taken apart (the caller's voice reaching the server, the server's own
barge-in figure, the last packet to silence in the browser); the browser's own
way there and back; and how many next replies opened with a burst. The last
lines compare each variant's silence-after-barge-in with the ``abrupt`` stop's
(a ratio). The lead re-measures on a quiet machine.
Needs Debian's chromium and firefox-esr, espeak-ng and sox.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.caller_view import CallerFigures, caller_figures, run_caller, scripted_caller_wav  # noqa: E402
from tests.support import free_tcp_port, free_udp_port, running_service, write_allinone_config  # noqa: E402


def spread(values: list[float]) -> str:
    """min / median / max, or '-' when there is nothing."""
    if not values:
        return "-"
    return f"{min(values):.0f} / {statistics.median(values):.0f} / {max(values):.0f}"


def run_variant(
    tmp: Path, detector: str, stop_tail: str, browsers: list[str], calls: int, wav: Path, seconds: float
) -> dict[str, list[CallerFigures]]:
    """Every browser's calls against one all-in-one."""
    http_port, media_port = free_tcp_port(), free_udp_port()
    ini = write_allinone_config(
        tmp,
        http_port,
        media_port,
        signaling={"cors_origins": "*"},
        agent={"name": "parrot"},
        speech={"detector": detector},
        transceiver={"max_sessions": "10", "stop_tail": stop_tail},
    )
    base = f"http://127.0.0.1:{http_port}"
    results: dict[str, list[CallerFigures]] = {b: [] for b in browsers}
    with running_service(["voiceedge", "--config", str(ini)], base + "/healthz", log_dir=tmp):
        for n in range(calls):
            for browser in browsers:
                timeline = run_caller(
                    browser, base + "/v1/realtime/calls", wav, seconds, tmp / f"{browser}-{n}"
                )
                results[browser].append(caller_figures(timeline))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=5)
    parser.add_argument("--browsers", default="chromium,firefox")
    parser.add_argument("--stop-tails", default="silence,dtx,abrupt")
    parser.add_argument("--detectors", default="silero,energy")
    args = parser.parse_args()
    browsers = args.browsers.split(",")
    with tempfile.TemporaryDirectory(prefix="caller-view-") as name:
        tmp = Path(name)
        wav = tmp / "caller.wav"
        script = scripted_caller_wav(wav, barge_after=2.0)
        table: dict[tuple[str, str, str], list[CallerFigures]] = {}
        for detector in args.detectors.split(","):
            for stop_tail in args.stop_tails.split(","):
                where = tmp / f"{detector}-{stop_tail}"
                where.mkdir()
                got = run_variant(where, detector, stop_tail, browsers, args.calls, wav, script.duration + 0.5)
                for browser, figures in got.items():
                    table[(detector, stop_tail, browser)] = figures
        print(
            "| detector | stop | browser | turn → reply heard | talking over it → silent | → server hears it"
            " | server barge-in | last packet → silent | browser's own way there and back | bursts |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|")
        for (detector, stop_tail, browser), figures in table.items():

            def column(name: str) -> str:
                return spread([v for f in figures if (v := getattr(f, name)) is not None])

            own = [
                f.to_server_onset_ms + f.first_packet_to_heard_ms
                for f in figures
                if f.to_server_onset_ms is not None and f.first_packet_to_heard_ms is not None
            ]
            print(
                f"| {detector} | {stop_tail} | {browser} | {column('turn_latency_ms')}"
                f" | {column('silent_after_barge_in_ms')} | {column('to_server_onset_ms')}"
                f" | {spread([f.server_barge_in_ms[0] for f in figures if f.server_barge_in_ms])}"
                f" | {column('last_packet_to_silent_ms')} | {spread(own)} | {sum(f.burst for f in figures)}/{len(figures)} |"
            )
        for (detector, stop_tail, browser), figures in table.items():
            base = table.get((detector, "abrupt", browser))
            if stop_tail == "abrupt" or not base:
                continue
            ours = statistics.median(f.silent_after_barge_in_ms or 0.0 for f in figures)
            theirs = statistics.median(f.silent_after_barge_in_ms or 0.0 for f in base)
            print(f"{detector} {browser}: silent after barge-in, {stop_tail} / abrupt = {ours / max(theirs, 1):.2f}")


if __name__ == "__main__":
    main()
