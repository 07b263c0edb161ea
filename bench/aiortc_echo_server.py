# -*- test-case-name: tests.test_aiortc_call -*-
"""A plain aiortc echo server on loopback: the reference side of ``bench/transceiver.py``.

``python bench/aiortc_echo_server.py --port 8081 [--deadline 120]``

It speaks the same signaling as voiceedge, just enough of it: ``POST
/v1/realtime/calls`` with an SDP offer answers ``201 Created``, a ``Location``
and the SDP answer; ``DELETE <Location>`` hangs up; ``GET /healthz`` answers
``ok sessions=<n>``. Each call is an :class:`aiortc.RTCPeerConnection` that
sends the caller's own audio back through :class:`aiortc.contrib.media.MediaRelay`:
aiortc decodes the received Opus to PCM frames and its sender encodes them again,
the same work voiceedge's echo agent does. Loopback only: no STUN server, and
aioice's host candidates are patched to ``127.0.0.1``. The process exits by
itself after ``--deadline`` seconds, so a forgotten one does not linger.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import signal
import sys

import aioice.ice
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.contrib.media import MediaRelay
from aiortc.mediastreams import MediaStreamTrack

# aioice leaves loopback out of its host candidates; this server lives on
# loopback only, so 127.0.0.1 is its one candidate.
aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"]

LOOPBACK = "127.0.0.1"
CALLS_PATH = "/v1/realtime/calls"
MAX_BODY = 64 * 1024
REASONS = {200: "OK", 201: "Created", 204: "No Content", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}


class EchoServer:
    """The calls in progress and the HTTP handler that creates and ends them."""

    def __init__(self) -> None:
        self._calls: dict[str, RTCPeerConnection] = {}
        self._ids = itertools.count(1)
        self._relay = MediaRelay()

    async def answer(self, offer_sdp: str) -> tuple[str, str]:
        """Accept an offer: a new peer connection that echoes its audio; (location, answer SDP)."""
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        location = f"{CALLS_PATH}/{next(self._ids)}"
        self._calls[location] = pc

        @pc.on("track")
        def _track(track: MediaStreamTrack) -> None:
            # Added before createAnswer, so it rides the offer's own transceiver.
            if track.kind == "audio":
                pc.addTrack(self._relay.subscribe(track))

        @pc.on("connectionstatechange")
        async def _state() -> None:
            if pc.connectionState in ("failed", "closed"):
                await self._close(location)

        try:
            await pc.setRemoteDescription(RTCSessionDescription(offer_sdp, "offer"))
            await pc.setLocalDescription(await pc.createAnswer())
        except Exception as e:  # aiortc raises several types for an offer it cannot take
            await self._close(location)
            raise ValueError(f"offer refused: {e}") from e
        return location, pc.localDescription.sdp

    async def _close(self, location: str) -> bool:
        pc = self._calls.pop(location, None)
        if pc is None:
            return False
        await pc.close()
        return True

    async def close_all(self) -> None:
        """Hang up every call."""
        for location in list(self._calls):
            await self._close(location)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve one HTTP/1.1 request, then close the connection."""
        try:
            status, headers, body = await self._respond(reader)
        except (ValueError, asyncio.IncompleteReadError) as e:
            status, headers, body = 400, {}, str(e).encode()
        head = [f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}", f"Content-Length: {len(body)}", "Connection: close"]
        head += [f"{name}: {value}" for name, value in headers.items()]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        try:
            await writer.drain()
        finally:
            writer.close()

    async def _respond(self, reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
        request_line = (await reader.readline()).decode("latin-1").split()
        if len(request_line) != 3:
            raise ValueError("bad request line")
        method, path, _ = request_line
        length = 0
        while True:
            line = (await reader.readline()).decode("latin-1").strip()
            if not line:
                break
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        if not 0 <= length <= MAX_BODY:
            raise ValueError("body too large")
        body = await reader.readexactly(length)
        if path == "/healthz" and method == "GET":
            return 200, {"Content-Type": "text/plain"}, f"ok sessions={len(self._calls)}".encode()
        if path == CALLS_PATH:
            if method != "POST":
                return 405, {}, b""
            location, answer = await self.answer(body.decode("utf-8"))
            return 201, {"Location": location, "Content-Type": "application/sdp"}, answer.encode()
        if path.startswith(CALLS_PATH + "/") and method == "DELETE":
            return (204 if await self._close(path) else 404), {}, b""
        return 404, {}, b""


async def serve(port: int, deadline: float) -> None:
    """Serve on 127.0.0.1:``port`` until SIGTERM/SIGINT or ``deadline`` seconds pass."""
    server = EchoServer()
    listener = await asyncio.start_server(server.handle, LOOPBACK, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print(f"aiortc echo server on http://{LOOPBACK}:{port}", flush=True)
    try:
        await asyncio.wait_for(stop.wait(), deadline)
    except asyncio.TimeoutError:
        print("deadline reached, exiting", file=sys.stderr, flush=True)
    finally:
        listener.close()
        await server.close_all()


def main() -> None:
    """Parse arguments and serve."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--deadline", type=float, default=120.0, help="exit after this many seconds")
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.deadline))


if __name__ == "__main__":
    main()
