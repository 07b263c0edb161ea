"""An aiortc client that calls voiceedge over loopback: the independent WebRTC peer of our tests."""

from __future__ import annotations

import asyncio
import fractions
import json
import math
import struct
import time
import urllib.request
from dataclasses import dataclass, field
from typing import Any

import aioice.ice
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import AudioFrame

# aioice leaves loopback out of its host candidates; these tests run on
# loopback only, so 127.0.0.1 is the one candidate the client gets.
aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"]

SAMPLE_RATE = 48000
FRAME_SAMPLES = 960


class SineTrack(MediaStreamTrack):
    """A 440 Hz tone paced in real time, 20 ms frames, as a microphone would give them."""

    kind = "audio"

    def __init__(self, frequency: float = 440.0, amplitude: int = 8000) -> None:
        super().__init__()
        self._frequency = frequency
        self._amplitude = amplitude
        self._pts = 0
        self._start: float | None = None

    async def recv(self) -> AudioFrame:
        """The next 20 ms frame, on time."""
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        else:
            self._pts += FRAME_SAMPLES
            delay = self._start + self._pts / SAMPLE_RATE - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        step = 2 * math.pi * self._frequency / SAMPLE_RATE
        samples = [
            int(self._amplitude * math.sin(step * (self._pts + i))) for i in range(FRAME_SAMPLES)
        ]
        frame = AudioFrame(format="s16", layout="mono", samples=FRAME_SAMPLES)
        frame.planes[0].update(struct.pack(f"<{FRAME_SAMPLES}h", *samples))
        frame.pts = self._pts
        frame.sample_rate = SAMPLE_RATE
        frame.time_base = fractions.Fraction(1, SAMPLE_RATE)
        return frame


@dataclass
class CallResult:
    """What one echo call measured."""

    location: str
    packets_sent: int = 0
    packets_received: int = 0
    frames_decoded: int = 0
    received_rms: float = 0.0
    connected_after: float = 0.0
    delete_status: int = 0
    events: list[dict[str, Any]] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)


def frame_rms(frame: AudioFrame) -> float:
    """RMS of one decoded s16 frame (any channel layout)."""
    data = bytes(frame.planes[0])[: frame.samples * 2 * len(frame.layout.channels)]
    samples = struct.unpack(f"<{len(data) // 2}h", data)
    return math.sqrt(sum(x * x for x in samples) / max(len(samples), 1))


async def _read_stats(pc: RTCPeerConnection, result: CallResult) -> None:
    for stat in (await pc.getStats()).values():
        if stat.type == "outbound-rtp":
            result.packets_sent = stat.packetsSent
        elif stat.type == "inbound-rtp":
            result.packets_received = stat.packetsReceived


def _http(method: str, url: str, body: bytes | None = None, content_type: str | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, data=body, method=method)
    if content_type:
        request.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


async def echo_call(
    base_url: str, seconds: float = 5.0, events: list[dict[str, Any]] | None = None
) -> CallResult:
    """Call voiceedge, send ``seconds`` of Opus, count what comes back, hang up.

    With ``events``, the call also opens ``oai-events`` and sends each event
    once the channel is open; every event received is kept in the result.
    """
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    connected = asyncio.Event()
    decoded = 0
    levels: list[float] = []
    received_events: list[dict[str, Any]] = []
    if events is not None:
        channel = pc.createDataChannel("oai-events")

        @channel.on("open")
        def _open() -> None:
            for event in events:
                channel.send(json.dumps(event))

        @channel.on("message")
        def _message(message: str | bytes) -> None:
            received_events.append(json.loads(message))

    @pc.on("connectionstatechange")
    def _state() -> None:
        if pc.connectionState == "connected":
            connected.set()

    async def consume(track: MediaStreamTrack) -> None:
        nonlocal decoded
        try:
            while True:
                frame = await track.recv()
                decoded += 1
                levels.append(frame_rms(frame))
        except MediaStreamError:
            pass

    consumers: list[asyncio.Task[None]] = []

    @pc.on("track")
    def _track(track: MediaStreamTrack) -> None:
        consumers.append(asyncio.ensure_future(consume(track)))

    sender = pc.addTrack(SineTrack())
    started = time.monotonic()
    try:
        await pc.setLocalDescription(await pc.createOffer())
        status, headers, body = await asyncio.to_thread(
            _http, "POST", base_url + "/v1/realtime/calls", pc.localDescription.sdp.encode(), "application/sdp"
        )
        assert status == 201, (status, body)
        location = headers["Location"]
        result = CallResult(location)
        await pc.setRemoteDescription(RTCSessionDescription(body.decode(), "answer"))
        await asyncio.wait_for(connected.wait(), 10)
        result.connected_after = time.monotonic() - started
        await asyncio.sleep(seconds)
        # Stop sending, then count once the echo has drained (bounded wait).
        sender.replaceTrack(None)
        previous = -1
        for _ in range(30):
            await asyncio.sleep(0.1)
            await _read_stats(pc, result)
            if result.packets_received == previous and result.packets_received >= result.packets_sent:
                break
            previous = result.packets_received
        result.frames_decoded = decoded
        # The middle of the call: past start-up, before the tail.
        middle = levels[len(levels) // 4 : 3 * len(levels) // 4] or [0.0]
        result.received_rms = sum(middle) / len(middle)
        result.events = received_events
        status, _, _ = await asyncio.to_thread(_http, "DELETE", base_url + location)
        result.delete_status = status
        return result
    finally:
        await pc.close()
        for task in consumers:
            task.cancel()
