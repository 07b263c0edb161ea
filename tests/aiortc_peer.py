"""An aiortc client that calls voiceedge over loopback: the independent WebRTC peer of our tests."""

from __future__ import annotations

import asyncio
import fractions
import json
import math
import re
import struct
import time
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Callable

import aioice.ice
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import AudioFrame

# aioice leaves loopback out of its host candidates; these tests run on
# loopback only, so 127.0.0.1 is the one candidate the client gets.
aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"]

SAMPLE_RATE = 48000
FRAME_SAMPLES = 960
# How late a paced track may run before it skips frames instead of catching up.
MAX_LATE = 0.2
# scripted_call's stay after its ``until`` came true: the last packets of what it waited for.
UNTIL_GRACE = 0.3
# A paced track handing out a frame this long after the previous one was held up (on time: 20 ms).
HOLDUP = 0.1


def tone_second(frequency: int = 440, amplitude: int = 8000) -> bytes:
    """One second of a tone as s16 mono at 48 kHz; whole periods, so it loops without a click."""
    step = 2 * math.pi * frequency / SAMPLE_RATE
    return struct.pack(f"<{SAMPLE_RATE}h", *(int(amplitude * math.sin(step * i)) for i in range(SAMPLE_RATE)))


class PacedTrack(MediaStreamTrack):
    """An audio track paced in real time, 20 ms frames, as a microphone would give them.

    Subclasses say what PCM (s16 mono, 48 kHz) plays at a sample time;
    ``first_frame_at`` is the monotonic time the first frame was handed out.
    """

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self.first_frame_at: float | None = None
        self._pts = 0
        #: Seconds between this frame's hand-out and the previous one's (20 ms when on time).
        self.gap = 0.0
        self._handed_at: float | None = None

    def pcm_at(self, pts: int) -> bytes:
        """The 20 ms of PCM that start at sample ``pts``."""
        raise NotImplementedError

    async def recv(self) -> AudioFrame:
        """The next 20 ms frame, on time."""
        if self.readyState != "live":
            raise MediaStreamError
        if self.first_frame_at is None:
            self.first_frame_at = time.monotonic()
        else:
            self._pts += FRAME_SAMPLES
            delay = self.first_frame_at + self._pts / SAMPLE_RATE - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -MAX_LATE:
                # A starved client (a loaded machine): like a microphone whose samples were
                # not read in time, skip them rather than send a backlog faster than real
                # time, which the server refuses beyond a second's burst.
                self._pts += int(-delay * SAMPLE_RATE) // FRAME_SAMPLES * FRAME_SAMPLES
        now = time.monotonic()
        self.gap = 0.0 if self._handed_at is None else now - self._handed_at
        self._handed_at = now
        frame = AudioFrame(format="s16", layout="mono", samples=FRAME_SAMPLES)
        frame.planes[0].update(self.pcm_at(self._pts))
        frame.pts = self._pts
        frame.sample_rate = SAMPLE_RATE
        frame.time_base = fractions.Fraction(1, SAMPLE_RATE)
        return frame


class SineTrack(PacedTrack):
    """A tone, cut from one precomputed second so callers spend almost nothing per frame."""

    def __init__(self, frequency: int = 440, amplitude: int = 8000) -> None:
        super().__init__()
        self._tone = tone_second(frequency, amplitude)

    def pcm_at(self, pts: int) -> bytes:
        """The tone from ``pts`` on."""
        offset = (pts % SAMPLE_RATE) * 2
        return self._tone[offset : offset + FRAME_SAMPLES * 2]


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


def new_peer() -> tuple[RTCPeerConnection, asyncio.Event]:
    """A peer connection that stays on loopback, and an event set once it is connected."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    connected = asyncio.Event()

    @pc.on("connectionstatechange")
    def _connected() -> None:
        if pc.connectionState == "connected":
            connected.set()

    return pc, connected


def channel_json(message: str | bytes) -> dict[str, Any]:
    """One data-channel message as JSON, or a marker for what did not parse."""
    try:
        event = json.loads(message)
    except ValueError:
        return {"type": "<not json>", "raw": repr(message)}
    return event if isinstance(event, dict) else {"type": "<not an object>", "raw": repr(message)}


async def negotiate(
    pc: RTCPeerConnection, base_url: str, connected: asyncio.Event, via: tuple[str, int] | None = None
) -> str:
    """Offer, POST it, apply the answer and wait until connected; the session's Location.

    ``via`` replaces the answer's candidate: the client then sends there (a
    proxy in front of the server) instead.
    """
    await pc.setLocalDescription(await pc.createOffer())
    status, headers, body = await asyncio.to_thread(
        _http, "POST", base_url + "/v1/realtime/calls", pc.localDescription.sdp.encode(), "application/sdp"
    )
    assert status == 201, (status, body)
    answer = body.decode()
    if via is not None:
        answer = re.sub(r" \S+ \d+ typ host", f" {via[0]} {via[1]} typ host", answer)
    await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
    await asyncio.wait_for(connected.wait(), 10)
    return str(headers["Location"])


async def echo_call(
    base_url: str, seconds: float = 5.0, events: list[dict[str, Any]] | None = None
) -> CallResult:
    """Call voiceedge, send ``seconds`` of Opus, count what comes back, hang up.

    With ``events``, the call also opens ``oai-events`` and sends each event
    once the channel is open; every event received is kept in the result.
    """
    pc, connected = new_peer()
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
            received_events.append(channel_json(message))

    async def consume(track: MediaStreamTrack) -> None:
        nonlocal decoded
        try:
            while True:
                frame = await track.recv()
                assert isinstance(frame, AudioFrame)
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
        location = await negotiate(pc, base_url, connected)
        result = CallResult(location)
        result.connected_after = time.monotonic() - started
        await asyncio.sleep(seconds)
        # A loaded machine runs the paced track late (it skips what it could not send in
        # time): go on, for at most three times as long again, until the call has sent what
        # ``seconds`` of audio holds.
        deadline = time.monotonic() + 3 * seconds
        await _read_stats(pc, result)
        while result.packets_sent < seconds * SAMPLE_RATE / FRAME_SAMPLES and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            await _read_stats(pc, result)
        # Stop sending, then count once the echo has drained (bounded wait).
        sender.replaceTrack(None)
        previous = -1
        for _ in range(50):
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


def record_arrivals(pc: RTCPeerConnection, arrivals: list[float]) -> list[asyncio.Task[None]]:
    """Append the arrival time (monotonic) of every frame of every track ``pc`` receives to
    ``arrivals``; the reading tasks, to cancel after ``pc.close()``."""
    consumers: list[asyncio.Task[None]] = []

    async def consume(track: MediaStreamTrack) -> None:
        try:
            while True:
                await track.recv()
                arrivals.append(time.monotonic())
        except MediaStreamError:
            pass

    @pc.on("track")
    def _track(track: MediaStreamTrack) -> None:
        consumers.append(asyncio.ensure_future(consume(track)))

    return consumers


async def monitored_call(
    base_url: str,
    seconds: float,
    during: Any = None,
    via: tuple[str, int] | None = None,
    arrivals: list[float] | None = None,
) -> list[float]:
    """Call, send a tone for ``seconds`` while ``during`` (a coroutine) runs; hang up.

    Returns the ``time.monotonic()`` arrival of every echoed frame, so a
    test can see gaps (a relay restart) and when audio came back. ``via``: as
    in :func:`negotiate`. ``arrivals``, when given, is the list the arrivals
    go into as they come (so ``during`` can wait on them); the call lasts
    at least ``seconds`` and until ``during`` ends.
    """
    pc, connected = new_peer()
    if arrivals is None:
        arrivals = []

    consumers = record_arrivals(pc, arrivals)

    pc.addTrack(SineTrack())
    try:
        location = await negotiate(pc, base_url, connected, via)
        task = asyncio.ensure_future(during) if during is not None else None
        await asyncio.sleep(seconds)
        if task is not None:
            await task
        await asyncio.to_thread(_http, "DELETE", base_url + location)
        return arrivals
    finally:
        await pc.close()
        for consumer in consumers:
            consumer.cancel()


# -- turn-taking calls (the parrot agent) ---------------------------------------


class ScriptedTrack(PacedTrack):
    """A microphone that says given PCM at given times and is silent otherwise.

    ``segments`` are ``(start, pcm)``: seconds after the first frame (rounded
    to 20 ms), PCM16 mono at 48 kHz.  ``started_at[i]`` is the monotonic time
    the first frame of segment ``i`` was handed to the encoder (aiortc
    encodes and sends it at once), ``first_frame_at`` that of the first frame.
    ``frames_said[i]`` counts the 20 ms frames of segment ``i`` handed out: a
    starved client skips frames (:data:`MAX_LATE`), so what was said may be
    less than the segment, and may start after its first frame.
    ``holdups`` lists ``(segment, seconds)`` for every frame of a segment handed
    out more than :data:`HOLDUP` after the one before it: the client's own
    pause in the middle of what it says, which the server hears as silence.
    """

    def __init__(self, segments: list[tuple[float, bytes]]) -> None:
        super().__init__()
        self._segments = [(round(start * 50) * FRAME_SAMPLES, pcm) for start, pcm in segments]
        self.started_at: list[float | None] = [None] * len(segments)
        self.frames_said = [0] * len(segments)
        self.holdups: list[tuple[int, float]] = []

    def pcm_at(self, pts: int) -> bytes:
        """The segments that play at ``pts``; silence elsewhere."""
        pcm = bytearray(FRAME_SAMPLES * 2)
        for index, (first, segment) in enumerate(self._segments):
            offset = (pts - first) * 2
            if 0 <= offset < len(segment):
                piece = segment[offset : offset + len(pcm)]
                pcm[: len(piece)] = piece
                if self.frames_said[index] and self.gap > HOLDUP:
                    self.holdups.append((index, self.gap))
                self.frames_said[index] += 1
                if self.started_at[index] is None:
                    self.started_at[index] = time.monotonic()
        return bytes(pcm)


@dataclass
class TurnCallResult:
    """What one scripted call heard: every RTP packet's arrival and level, events and server stats."""

    location: str
    segment_started_at: list[float | None]
    # (monotonic arrival, RMS level in dBFS, RTP timestamp unwrapped) of every audio packet
    # received, in order of arrival: measured on the packet, ahead of aiortc's jitter buffer,
    # which holds the last packets of a burst until the next burst comes.
    received: list[tuple[float, float, int]] = field(default_factory=list)
    # Seconds of each segment the track handed out (ScriptedTrack.frames_said).
    segment_said: list[float] = field(default_factory=list)
    # (segment, seconds) of the client's own hold-ups while it talked (ScriptedTrack.holdups).
    holdups: list[tuple[int, float]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    channel_opened: bool = False
    stats: dict[str, Any] = field(default_factory=dict)
    stats_status: int = 0
    delete_status: int = 0

    def loud(self, threshold_db: float = -45.0, since: float = 0.0, until: float = math.inf) -> list[float]:
        """Arrival times of packets louder than ``threshold_db`` within ``[since, until)``."""
        return [at for at, level, _ in self.received if level > threshold_db and since <= at < until]

    def loud_sent(self, threshold_db: float = -45.0, since: float = 0.0, until: float = math.inf) -> list[float]:
        """Like :meth:`loud`, but each packet's time is when the server sent it, on this clock: its RTP
        time placed by the call's least delayed packet (``arrival - RTP time`` at its smallest).
        A client too loaded to read its socket on time reads a burst late; these times do not move."""
        if not self.received:
            return []
        offset = min(at - timestamp / SAMPLE_RATE for at, _, timestamp in self.received)
        sent = (timestamp / SAMPLE_RATE + offset for _, level, timestamp in self.received if level > threshold_db)
        return [at for at in sent if since <= at < until]

    def talkspurts(self, threshold_db: float = -45.0, since: float = 0.0, gap: float = 0.5) -> list[tuple[float, float]]:
        """Packets louder than ``threshold_db`` arriving from ``since``, grouped on the sender's clock:
        ``(first arrival, seconds of the server's audio from the first one's start to the last one's end)``
        per group, a group ending where more than ``gap`` seconds of RTP time pass between loud packets.

        RTP time is what the server sent; arrival times also hold the client's own stalls (a
        loaded machine reads a burst late, and its span looks shorter than the audio)."""
        out: list[list[float]] = []
        last = 0
        for at, level, timestamp in self.received:
            if level <= threshold_db or at < since:
                continue
            if out and (timestamp - last) / SAMPLE_RATE <= gap:
                out[-1][1] += (timestamp - last) / SAMPLE_RATE
            else:
                out.append([at, FRAME_SAMPLES / SAMPLE_RATE])
            last = timestamp
        return [(first, seconds) for first, seconds in out]


def _level_db(pcm: bytes) -> float:
    count = len(pcm) // 2
    if not count:
        return -100.0
    samples = struct.unpack(f"<{count}h", pcm[: count * 2])
    energy = sum(s * s for s in samples) / count
    return max(-100.0, 10 * math.log10(energy / 32768**2)) if energy else -100.0


async def scripted_call(
    base_url: str,
    segments: list[tuple[float, bytes]],
    seconds: float,
    events: list[dict[str, Any]] | None = None,
    until: Callable[[TurnCallResult], bool] | None = None,
    patience: float = 10.0,
) -> TurnCallResult:
    """Call voiceedge, say ``segments`` (see :class:`ScriptedTrack`), listen ``seconds`` from the first frame.

    With ``until``, the call goes on after that while ``until(result)`` is false, for at most
    ``patience`` seconds more, then :data:`UNTIL_GRACE` (a loaded machine may run late; the
    script still ends).

    Every received RTP packet is decoded with our own Opus decoder and its level
    kept with its arrival time.  An ``oai-events`` data channel is opened; the
    ``events`` given are sent on it once it opens, and what comes back is kept.
    Before hanging up the session's stats are read with ``GET <Location>``.
    """
    from voiceedge.media.opus import OpusDecoder

    pc, connected = new_peer()
    track = ScriptedTrack(segments)
    decoder = OpusDecoder(SAMPLE_RATE)
    result = TurnCallResult("", track.started_at)
    channel = pc.createDataChannel("oai-events")

    @channel.on("open")
    def _open() -> None:
        result.channel_opened = True
        for event in events or []:
            channel.send(json.dumps(event))

    @channel.on("message")
    def _message(message: str | bytes) -> None:
        result.events.append(channel_json(message))

    async def drain(remote: MediaStreamTrack) -> None:
        try:
            while True:
                await remote.recv()
        except MediaStreamError:
            pass

    consumers: list[asyncio.Task[None]] = []

    @pc.on("track")
    def _track(remote: MediaStreamTrack) -> None:
        consumers.append(asyncio.ensure_future(drain(remote)))

    pc.addTrack(track)
    for transceiver in pc.getTransceivers():
        receiver = transceiver.receiver
        handle = receiver._handle_rtp_packet

        async def measured(packet: Any, arrival_time_ms: int, handle: Any = handle) -> None:
            arrival = time.monotonic()
            try:
                level = _level_db(decoder.decode(packet.payload))
            except Exception:  # a packet our decoder rejects: note it as silent
                level = -100.0
            if result.received:
                # Unwrapped against the previous packet's (reordering on loopback is a few packets at most).
                previous = result.received[-1][2]
                timestamp = previous + ((packet.timestamp - previous + (1 << 31)) % (1 << 32)) - (1 << 31)
            else:
                timestamp = packet.timestamp
            result.received.append((arrival, level, timestamp))
            await handle(packet, arrival_time_ms=arrival_time_ms)

        receiver._handle_rtp_packet = measured  # type: ignore[method-assign]
    try:
        result.location = await negotiate(pc, base_url, connected)
        for _ in range(200):
            if track.first_frame_at is not None:
                break
            await asyncio.sleep(0.01)
        assert track.first_frame_at is not None, "aiortc never pulled a frame"
        await asyncio.sleep(max(0.0, track.first_frame_at + seconds - time.monotonic()))
        if until is not None:
            give_up = time.monotonic() + patience
            while not until(result) and time.monotonic() < give_up:
                await asyncio.sleep(0.05)
            await asyncio.sleep(UNTIL_GRACE)
        result.segment_said = [n * FRAME_SAMPLES / SAMPLE_RATE for n in track.frames_said]
        result.holdups = list(track.holdups)
        status, _, body = await asyncio.to_thread(_http, "GET", base_url + result.location)
        result.stats_status = status
        if status == 200:
            result.stats = json.loads(body)
        status, _, _ = await asyncio.to_thread(_http, "DELETE", base_url + result.location)
        result.delete_status = status
        return result
    finally:
        await pc.close()
        for task in consumers:
            task.cancel()


# -- calls driven by a test's script (the bridge agent) ------------------------


@dataclass
class LiveCall:
    """A call in progress, as a test's script sees it: events both ways, audio levels, the end."""

    channel: Any
    location: str = ""
    events: list[dict[str, Any]] = field(default_factory=list)
    # RMS level in dBFS of every frame aiortc decoded from what voiceedge sent.
    levels: list[float] = field(default_factory=list)
    opened: asyncio.Event = field(default_factory=asyncio.Event)
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    delete_status: int = 0

    def send_event(self, event: dict[str, Any]) -> None:
        """Send a JSON event on ``oai-events``."""
        self.channel.send(json.dumps(event))

    def loud_frames(self, threshold_db: float = -40.0) -> int:
        """How many received frames were louder than ``threshold_db``."""
        return sum(1 for level in self.levels if level > threshold_db)

    async def wait_for(self, predicate: Any, timeout: float) -> bool:
        """Poll ``predicate()`` every 20 ms until true or ``timeout`` seconds pass."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.02)
        return True


async def live_call(base_url: str, script: Any, track: MediaStreamTrack | None = None) -> LiveCall:
    """Call voiceedge with an ``oai-events`` channel and a tone; run ``await script(call)``; hang up.

    ``call.ended`` is set when the server ends the call (the data channel
    closes or the connection closes or fails). The DELETE is sent only if the
    call had not ended by the time the script returned.
    """
    pc, connected = new_peer()
    channel = pc.createDataChannel("oai-events")
    call = LiveCall(channel)

    @channel.on("open")
    def _open() -> None:
        call.opened.set()

    @channel.on("close")
    def _close() -> None:
        call.ended.set()

    @channel.on("message")
    def _message(message: str | bytes) -> None:
        call.events.append(channel_json(message))

    @pc.on("connectionstatechange")
    def _state() -> None:
        if pc.connectionState in ("closed", "failed") and connected.is_set():
            call.ended.set()

    async def consume(remote: MediaStreamTrack) -> None:
        try:
            while True:
                frame = await remote.recv()
                assert isinstance(frame, AudioFrame)
                call.levels.append(_level_db(bytes(frame.planes[0])))
        except MediaStreamError:
            pass

    consumers: list[asyncio.Task[None]] = []

    @pc.on("track")
    def _track(remote: MediaStreamTrack) -> None:
        consumers.append(asyncio.ensure_future(consume(remote)))

    pc.addTrack(track or SineTrack())
    try:
        call.location = await negotiate(pc, base_url, connected)
        await script(call)
        if not call.ended.is_set():
            status, _, _ = await asyncio.to_thread(_http, "DELETE", base_url + call.location)
            call.delete_status = status
        return call
    finally:
        await pc.close()
        for task in consumers:
            task.cancel()
