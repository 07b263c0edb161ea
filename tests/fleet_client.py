"""A WebRTC caller for fleet tests (aiortc): one call through a front door, reported as JSON lines.

Run it (also inside a network namespace, with ``ip netns exec``)::

    python -m tests.fleet_client --url http://10.77.0.2:8080 --seconds 20

It prints ``{"event": "connected", "location": ..., "owner": ..., "candidate": ..., "after": s}``
once ICE and DTLS are up, ``{"event": "audio", "frames": n}`` every second, and at the end
``{"event": "done", "frames": n, "longest_gap": s, "delete": status, ...}``. A refused offer
prints ``{"event": "refused", "status": ..., "retry_after": ...}``. SIGTERM ends the call early
(and it still hangs up and reports).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import signal
import sys
import time
from typing import Any

from aiortc import RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from tests.aiortc_peer import SineTrack, _http, new_peer


def say(**fields: Any) -> None:
    """One JSON line on stdout."""
    print(json.dumps(fields), flush=True)


async def call(url: str, seconds: float) -> int:
    """Call ``url``'s /v1/realtime/calls for ``seconds``; 0 when the call held, 1 otherwise."""
    pc, connected = new_peer()
    arrivals: list[float] = []
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)

    async def consume(track: MediaStreamTrack) -> None:
        try:
            while True:
                await track.recv()
                arrivals.append(time.monotonic())
        except MediaStreamError:
            pass

    consumers: list[asyncio.Task[None]] = []

    @pc.on("track")
    def _track(track: MediaStreamTrack) -> None:
        consumers.append(asyncio.ensure_future(consume(track)))

    pc.addTrack(SineTrack())
    started = time.monotonic()
    try:
        await pc.setLocalDescription(await pc.createOffer())
        status, headers, body = await asyncio.to_thread(
            _http, "POST", url + "/v1/realtime/calls", pc.localDescription.sdp.encode(), "application/sdp"
        )
        if status != 201:
            say(event="refused", status=status, retry_after=headers.get("Retry-After"), reason=body.decode()[:200])
            return 1
        answer = body.decode()
        candidate = re.search(r"a=candidate:\S+ \d+ udp \d+ (\S+) (\d+) typ host", answer)
        await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
        location = headers["Location"]
        await asyncio.wait_for(connected.wait(), 15)
        say(event="connected", location=location, owner=location.rpartition("/")[2].partition(".")[0],
            candidate=f"{candidate.group(1)}:{candidate.group(2)}" if candidate else None,
            after=round(time.monotonic() - started, 3))
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), 1.0)
            except asyncio.TimeoutError:
                pass
            say(event="audio", frames=len(arrivals))
        gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
        delete, _, _ = await asyncio.to_thread(_http, "DELETE", url + location)
        say(event="done", frames=len(arrivals), longest_gap=round(max(gaps, default=0.0), 3),
            delete=delete, connected_after=round(arrivals[0] - started, 3) if arrivals else None)
        return 0
    finally:
        await pc.close()
        for task in consumers:
            task.cancel()


def main() -> None:
    """Parse arguments and make one call."""
    parser = argparse.ArgumentParser(description="one aiortc call through a voiceedge front door")
    parser.add_argument("--url", required=True)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--host-address", default="127.0.0.1", help="the one address aiortc gathers as a candidate")
    args = parser.parse_args()
    import aioice.ice

    aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: [args.host_address]
    sys.exit(asyncio.run(call(args.url, args.seconds)))


if __name__ == "__main__":
    main()
