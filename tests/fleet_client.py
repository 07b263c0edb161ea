"""A WebRTC caller for fleet tests (aiortc): one call through a front door, reported as JSON lines.

Run it (also inside a network namespace, with ``ip netns exec``)::

    python -m tests.fleet_client --url http://10.77.0.2:8080 --seconds 20

It prints ``{"event": "connected", "location": ..., "owner": ..., "candidate": ..., "after": s}``
once ICE and DTLS are up, ``{"event": "audio", "frames": n}`` every second, and at the end
``{"event": "done", "frames": n, "longest_gap": s, "delete": status, ...}``. A refused offer
prints ``{"event": "refused", "status": ..., "retry_after": ...}``. SIGTERM ends the call early
(and it still hangs up and reports). ``--token`` is sent as ``Authorization: Bearer``;
with ``--no-delete`` the caller leaves without a DELETE (it closes its peer connection, as a
browser tab that is closed does; ``delete`` is null then).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import signal
import sys
import time
import urllib.error
import urllib.request
from typing import Any

from aiortc import RTCSessionDescription

from tests.aiortc_peer import SineTrack, new_peer, record_arrivals


def say(**fields: Any) -> None:
    """One JSON line on stdout."""
    print(json.dumps(fields), flush=True)


def _http(
    method: str, url: str, body: bytes | None = None, content_type: str | None = None, token: str | None = None
) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, data=body, method=method)
    if content_type:
        request.add_header("Content-Type", content_type)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


async def call(url: str, seconds: float, token: str | None = None, delete: bool = True) -> int:
    """Call ``url``'s /v1/realtime/calls for ``seconds``; 0 when the call held, 1 otherwise."""
    pc, connected = new_peer()
    arrivals: list[float] = []
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)

    consumers = record_arrivals(pc, arrivals)

    pc.addTrack(SineTrack())
    started = time.monotonic()
    try:
        await pc.setLocalDescription(await pc.createOffer())
        status, headers, body = await asyncio.to_thread(
            _http, "POST", url + "/v1/realtime/calls", pc.localDescription.sdp.encode(), "application/sdp", token
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
        deleted: int | None = None
        if delete:
            deleted, _, _ = await asyncio.to_thread(_http, "DELETE", url + location, None, None, token)
        say(event="done", frames=len(arrivals), longest_gap=round(max(gaps, default=0.0), 3),
            delete=deleted, connected_after=round(arrivals[0] - started, 3) if arrivals else None)
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
    parser.add_argument("--token", default=None, help="sent as Authorization: Bearer (an API key or an ek_ secret)")
    parser.add_argument("--no-delete", action="store_true", help="leave without DELETE (close the peer connection)")
    args = parser.parse_args()
    import aioice.ice

    aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: [args.host_address]
    sys.exit(asyncio.run(call(args.url, args.seconds, args.token, not args.no_delete)))


if __name__ == "__main__":
    main()
