# -*- test-case-name: tests.test_bridge -*-
"""The bridge agent: each call gets a WebSocket to a backend speaking docs/agent-protocol.md."""

from __future__ import annotations

import collections
import enum
import urllib.parse
from dataclasses import dataclass
from typing import Any, Callable

from twisted.internet import protocol
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IDelayedCall, IStreamClientEndpoint
from twisted.internet.ssl import optionsForClientTLS
from twisted.logger import Logger
from twisted.python.failure import Failure
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    RejectConnection,
    Request,
    TextMessage,
)
from wsproto.utilities import ProtocolError
from zope.interface import implementer, provider

from voiceedge import config as c
from voiceedge.agents import bridge_protocol as bp
from voiceedge.agents.interfaces import (
    AudioFrame,
    IAgent,
    IAgentCounters,
    IAgentFactory,
    IAgentSession,
    IAgentType,
    ITurnTakingAgent,
)
from voiceedge.transceiver.credentials import loggable_id

log = Logger()

# A message from the backend larger than this is dropped unread: 4 MiB is
# over 40 s of 24 kHz audio in one frame, far past any sane chunk.
MAX_MESSAGE_BYTES = 4 << 20
# Events (speech, client events) held while connecting, beyond the audio bound.
MAX_PENDING_EVENTS = 256
ERROR_CODE = "backend_unavailable"


# -- configuration ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BackendURL:
    """A parsed ``ws://`` or ``wss://`` URL."""

    text: str
    secure: bool
    host: str
    port: int
    target: str  # path and query, as sent in the request line

    @property
    def host_header(self) -> str:
        """The Host header: the port only when it is not the scheme's default."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.secure else 80
        return host if self.port == default else f"{host}:{self.port}"


def websocket_url(text: str) -> BackendURL:
    """Parse ``ws://host[:port]/path?query`` or ``wss://...``; ValueError otherwise."""
    if not text:
        raise ValueError("is required: the backend's ws:// or wss:// URL")
    try:
        parts = urllib.parse.urlsplit(text)
        port = parts.port
    except ValueError as e:
        raise ValueError(f"not a URL: {e}") from None
    if parts.scheme not in ("ws", "wss"):
        raise ValueError("must start with ws:// or wss://")
    if not parts.hostname:
        raise ValueError("has no host")
    if parts.username or parts.password:
        raise ValueError("must not carry credentials: use token")
    if parts.fragment:
        raise ValueError("must not have a #fragment")
    secure = parts.scheme == "wss"
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return BackendURL(text, secure, parts.hostname, port or (443 if secure else 80), target)


def bearer_token(text: str) -> str:
    """An optional bearer token: visible ASCII without spaces (it goes in a header)."""
    if any(not 0x21 <= ord(ch) <= 0x7E for ch in text):
        raise ValueError("must be visible ASCII without spaces")
    return text


@dataclass(frozen=True, slots=True)
class BridgeSettings:
    """The parsed ``[agent.bridge]`` section."""

    url: BackendURL
    sample_rate: int = 24000
    connect_timeout: float = 5.0
    token: str = ""
    buffer_ms: int = 1000
    realtime: str = "edge"
    turn_timeout: float = 3.0


# -- the WebSocket link ------------------------------------------------------------


class BridgeLink:
    """The agent's side of one WebSocket: Twisted's ``WebSocketProtocol`` shape.

    It only forwards to the agent, so the agent can be driven in tests by a
    fake transport and a Deferred.
    """

    def __init__(self, agent: BridgeAgent) -> None:
        self.agent = agent
        self.transport: WebSocketClient | None = None

    def negotiationStarted(self, transport: WebSocketClient) -> None:  # noqa: N802 - Twisted's name
        """TCP is up; the HTTP upgrade is under way (closed at once if the agent gave up)."""
        self.transport = transport
        if self.agent.state is LinkState.CLOSED:
            transport.loseConnection()

    def negotiationFinished(self) -> None:  # noqa: N802
        """The upgrade succeeded; the connect Deferred has fired already."""

    def textMessageReceived(self, message: str) -> None:  # noqa: N802
        """A whole text message from the backend."""
        self.agent.text_received(message)

    def bytesMessageReceived(self, data: bytes | bytearray) -> None:  # noqa: N802
        """A whole binary message from the backend."""
        self.agent.bytes_received(bytes(data))

    def messageTooLarge(self, size: int) -> None:  # noqa: N802
        """The backend sent a message over :data:`MAX_MESSAGE_BYTES`; it was dropped."""
        self.agent.count("malformed_frames")

    def pongReceived(self, payload: bytes) -> None:  # noqa: N802
        """We send no pings."""

    def connectionLost(self, reason: Failure) -> None:  # noqa: N802
        """The WebSocket is gone, cleanly or not."""
        self.agent.link_lost(reason)


class BackendRejected(Exception):
    """The backend answered the upgrade with an HTTP status other than 101."""

    def __init__(self, status: int) -> None:
        super().__init__(f"backend refused the WebSocket upgrade with HTTP {status}")
        self.status = status


class BackendClosed(Exception):
    """The backend closed the WebSocket; ``code`` is its close code (1006: without one)."""

    def __init__(self, code: int, reason: str) -> None:
        detail = f": {reason}" if reason else ""
        super().__init__(f"backend closed the connection (code {code}{detail})")
        self.code = code
        self.reason = reason


class WebSocketClient(protocol.Protocol):
    """The client end of one WebSocket (RFC 6455) over a stream, on wsproto.

    Twisted's own ``WebSocketClientEndpoint`` sends no extra request headers
    (so no ``Authorization``), never fails its Deferred when TCP drops during
    the upgrade, and leaves the connection open when that Deferred is
    cancelled; this small client does all three, and offers the same
    ``WebSocketTransport`` methods to its :class:`BridgeLink`.
    """

    def __init__(
        self,
        url: BackendURL,
        headers: list[tuple[bytes, bytes]],
        link: BridgeLink,
        done: Deferred[BridgeLink],
        max_message: int = MAX_MESSAGE_BYTES,
    ) -> None:
        self._url = url
        self._headers = headers
        self._link = link
        self._done = done
        self._max = max_message
        self._ws = WSConnection(ConnectionType.CLIENT)
        self._open = False
        self._parts: list[bytes | str] = []
        self._size = 0
        self._oversize = False
        self._close: BackendClosed | None = None
        # A TCP or TLS transport: both have abortConnection, which ITransport lacks.
        self._stream: Any = None

    # -- stream protocol ------------------------------------------------

    def connectionMade(self) -> None:  # noqa: N802
        """Send the upgrade request."""
        self._stream = self.transport
        self._link.negotiationStarted(self)
        request = Request(
            host=self._url.host_header, target=self._url.target, extra_headers=self._headers
        )
        self._stream.write(self._ws.send(request))

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        """Feed wsproto and act on its events."""
        try:
            self._ws.receive_data(data)
            for event in self._ws.events():
                self._handle(event)
        except ProtocolError as e:
            # A broken upgrade answer or stray bytes after close: nothing to save.
            self._close = BackendClosed(1002, str(e)[:100])
            self._stream.abortConnection()

    def _handle(self, event: object) -> None:
        if isinstance(event, BytesMessage | TextMessage):
            self._message_part(event.data, event.message_finished)
        elif isinstance(event, Ping):
            self._send(event.response())
        elif isinstance(event, AcceptConnection):
            self._open = True
            self._done.callback(self._link)
            self._link.negotiationFinished()
        elif isinstance(event, RejectConnection):
            self._done.errback(BackendRejected(event.status_code))
            self._stream.abortConnection()
        elif isinstance(event, CloseConnection):
            self._close = BackendClosed(event.code, event.reason or "")
            if self._ws.state is ConnectionState.REMOTE_CLOSING:
                self._send(event.response())
            self._stream.loseConnection()

    def _message_part(self, data: bytes | bytearray | str, finished: bool) -> None:
        if not self._oversize:
            self._size += len(data)
            if self._size > self._max:
                self._oversize = True
                self._parts.clear()
            else:
                self._parts.append(data if isinstance(data, str) else bytes(data))
        if not finished:
            return
        parts, size, oversize = self._parts, self._size, self._oversize
        self._parts, self._size, self._oversize = [], 0, False
        if oversize:
            self._link.messageTooLarge(size)
        elif parts and isinstance(parts[0], str):
            self._link.textMessageReceived("".join(p for p in parts if isinstance(p, str)))
        else:
            self._link.bytesMessageReceived(b"".join(p for p in parts if isinstance(p, bytes)))

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:  # noqa: N802
        """Fail the connect if the upgrade never finished; otherwise tell the link."""
        if not self._open:
            if not self._done.called:
                self._done.errback(reason)
            return
        self._open = False
        # TCP gone without a Close frame is RFC 6455's abnormal closure, 1006.
        closed = self._close or BackendClosed(1006, "no close frame")
        self._link.connectionLost(Failure(closed))

    # -- WebSocketTransport ---------------------------------------------

    def _send(self, event: Any) -> None:
        if self._ws.state in (ConnectionState.OPEN, ConnectionState.REMOTE_CLOSING):
            self._stream.write(self._ws.send(event))

    def sendTextMessage(self, text: str) -> None:  # noqa: N802
        """Send one text message; dropped once closing."""
        if self._ws.state is ConnectionState.OPEN:
            self._stream.write(self._ws.send(TextMessage(text)))

    def sendBytesMessage(self, data: bytes) -> None:  # noqa: N802
        """Send one binary message; dropped once closing."""
        if self._ws.state is ConnectionState.OPEN:
            self._stream.write(self._ws.send(BytesMessage(data)))

    def ping(self, payload: bytes = b"") -> None:
        """Send a Ping."""
        if self._ws.state is ConnectionState.OPEN:
            self._stream.write(self._ws.send(Ping(payload)))

    def loseConnection(self, code: int = 1000) -> None:  # noqa: N802
        """Send a Close frame, then close TCP once written."""
        if self._ws.state is ConnectionState.OPEN:
            self._stream.write(self._ws.send(CloseConnection(code)))
        self._stream.loseConnection()

    def abort(self) -> None:
        """Drop TCP now (a cancelled connect)."""
        if self._stream is not None:
            self._stream.abortConnection()


class _OneShotFactory(protocol.Factory):
    """Builds the one protocol instance of one connection attempt."""

    noisy = False  # one per call: no start/stop lines in the log

    def __init__(self, build: Callable[[], protocol.Protocol]) -> None:
        self._build = build

    def buildProtocol(self, addr: Any) -> protocol.Protocol:  # noqa: N802
        """The protocol of this attempt."""
        return self._build()


Connector = Callable[[BridgeLink], "Deferred[BridgeLink]"]


def websocket_connector(reactor: Any, settings: BridgeSettings) -> Connector:
    """A function that opens a WebSocket to ``settings.url`` for a :class:`BridgeLink`.

    The Deferred it returns fires with the link once the upgrade succeeded,
    fails on refusal, loss or TLS error, and, when cancelled, drops whatever
    part of the connection exists.
    """
    url = settings.url
    headers = [(b"authorization", b"Bearer " + settings.token.encode("ascii"))] if settings.token else []

    def endpoint() -> IStreamClientEndpoint:
        tcp = HostnameEndpoint(reactor, url.host, url.port, timeout=max(1, int(settings.connect_timeout + 1)))
        if url.secure:
            return wrapClientTLS(optionsForClientTLS(url.host), tcp)
        return tcp

    def connect(link: BridgeLink) -> Deferred[BridgeLink]:
        client: WebSocketClient | None = None
        tcp: Deferred[Any]

        def cancel(d: Deferred[BridgeLink]) -> None:
            if not tcp.called:
                tcp.cancel()
            elif client is not None:
                client.abort()

        done: Deferred[BridgeLink] = Deferred(cancel)

        def build() -> protocol.Protocol:
            nonlocal client
            client = WebSocketClient(url, headers, link, done)
            return client

        tcp = endpoint().connect(_OneShotFactory(build))

        def tcp_failed(failure: Failure) -> None:
            if not done.called:
                done.errback(failure)

        tcp.addErrback(tcp_failed)
        return done

    return connect


# -- the agent ---------------------------------------------------------------------


class LinkState(enum.Enum):
    """Where the agent's WebSocket is."""

    CONNECTING = "connecting"
    OPEN = "open"
    ENDING = "ending"  # the backend said session.end with drain: waiting for playout
    CLOSED = "closed"


@implementer(ITurnTakingAgent)
class BridgeAgent:
    """Relays one session to a backend over a WebSocket (docs/agent-protocol.md).

    Turns: the session's Realtime layer asks for one with ``turn.request``
    and cancels it with ``turn.cancelled``; the backend says ``turn.start``
    and ``turn.end``. A requested turn the backend neither starts nor ends
    within ``turn_timeout`` (an older backend that ignores ``turn.request``)
    completes empty, so no client waits for it.

    Caller audio and events are encoded and sent as they come; while the
    socket is still connecting they wait in a bounded buffer (oldest audio
    dropped first). A backend that cannot be reached in time, or that goes
    away mid-call, ends the session with a ``backend_unavailable`` error event.
    """

    def __init__(
        self,
        session: IAgentSession,
        settings: BridgeSettings,
        connect: Connector,
        totals: collections.Counter[str] | None = None,
    ) -> None:
        self._session = session
        self._settings = settings
        self._clock = session.clock
        self._started = self._clock.seconds()
        self.state = LinkState.CONNECTING
        self.counters: collections.Counter[str] = collections.Counter()
        self._totals = totals
        self._link = BridgeLink(self)
        self._pending: collections.deque[bytes | str] = collections.deque()
        self._pending_audio_bytes = 0
        self._pending_events = 0
        self._buffer_bytes = settings.sample_rate * 2 * settings.buffer_ms // 1000
        self._timer: IDelayedCall | None = self._clock.callLater(
            settings.connect_timeout, self._connect_timed_out
        )
        self._connecting: Deferred[BridgeLink] | None = None
        self._turn_timer: IDelayedCall | None = None
        self._turn_open = False
        self._responses = 0
        # A connect that fails at once must not end the session from inside
        # agent_for(): the session has not got its agent yet.
        self._constructing = True
        connecting = connect(self._link)
        if not connecting.called:
            self._connecting = connecting
        connecting.addCallbacks(self._connected, self._connect_failed)
        self._constructing = False

    def count(self, name: str) -> None:
        """Bump a counter of this session and of the factory."""
        self.counters[name] += 1
        if self._totals is not None:
            self._totals[name] += 1

    def _ms(self, at: float) -> int:
        return max(0, round((at - self._started) * 1000))

    # -- caller -> backend (IAgent) ----------------------------------------

    def audio_received(self, frame: AudioFrame) -> None:
        """Send the frame with its header, or hold it while connecting."""
        if self.state is LinkState.OPEN or self.state is LinkState.CONNECTING:
            data = bp.encode_audio(
                bp.AudioMessage(
                    bp.KIND_INPUT_AUDIO,
                    frame.pcm,
                    frame.rtp_timestamp,
                    max(0, round((frame.arrival - self._started) * 1_000_000)),
                    frame.lost,
                )
            )
            transport = self._link.transport
            if self.state is LinkState.OPEN and transport is not None:
                transport.sendBytesMessage(data)
            else:
                self._hold_audio(data)

    def speech_started(self, at: float) -> None:
        """Tell the backend the caller started speaking."""
        self._send_text(bp.speech_started(self._ms(at)))

    def speech_stopped(self, at: float) -> None:
        """Tell the backend the caller stopped speaking."""
        self._send_text(bp.speech_stopped(self._ms(at)))

    def event_received(self, event: dict[str, Any]) -> None:
        """Pass the caller's event to the backend unchanged (dropped and counted if not JSON)."""
        try:
            text = bp.client_event(event)
        except bp.BridgeProtocolError:
            self.count("events_unencodable")
            return
        self._send_text(text)

    # -- turns (ITurnTakingAgent) ------------------------------------------

    def configure(self, config: dict[str, Any]) -> None:
        """Give the backend the session's whole configuration."""
        try:
            self._send_text(bp.session_config(config))
        except bp.BridgeProtocolError:
            self.count("events_unencodable")

    def create_response(self, request: dict[str, Any]) -> bool:
        """Ask the backend for a turn; it has ``turn_timeout`` to start or end it."""
        if self.state is not LinkState.OPEN and self.state is not LinkState.CONNECTING:
            return False
        try:
            text = bp.turn_request(self._next_response_id(), request)
        except bp.BridgeProtocolError:
            self.count("events_unencodable")
            return False
        self._send_text(text)
        self._turn_open = True
        self._cancel_turn_timer()
        self._turn_timer = self._clock.callLater(self._settings.turn_timeout, self._turn_timed_out)
        return True

    def _next_response_id(self) -> str:
        self._responses += 1
        return f"turn_{self._responses}"

    def cancel_response(self) -> None:
        """Tell the backend its turn is cancelled; its audio was dropped already."""
        self._cancel_turn_timer()
        if self._turn_open:
            self._turn_open = False
            self._send_text(bp.turn_cancelled(f"turn_{self._responses}"))

    def _turn_timed_out(self) -> None:
        self._turn_timer = None
        self.count("turns_timed_out")
        self._turn_open = False
        self._session.end_turn()

    def _cancel_turn_timer(self) -> None:
        timer, self._turn_timer = self._turn_timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def session_ended(self, reason: str) -> None:
        """The call is over: say so to the backend, close, cancel every timer."""
        was = self.state
        if was is LinkState.CLOSED:
            return
        if was is LinkState.OPEN:
            self._send_text(bp.session_end(reason))
        self._shut()

    # -- buffering while connecting ----------------------------------------

    def _send_text(self, text: str) -> None:
        transport = self._link.transport
        if self.state is LinkState.OPEN and transport is not None:
            transport.sendTextMessage(text)
        elif self.state is LinkState.CONNECTING:
            if self._pending_events >= MAX_PENDING_EVENTS:
                self.count("events_dropped_connecting")
                return
            self._pending_events += 1
            self._pending.append(text)

    def _hold_audio(self, data: bytes) -> None:
        self._pending.append(data)
        self._pending_audio_bytes += len(data) - bp.AUDIO_HEADER_SIZE
        while self._pending_audio_bytes > self._buffer_bytes:
            # Oldest audio first; events keep their place.
            for i, item in enumerate(self._pending):
                if isinstance(item, bytes):
                    del self._pending[i]
                    self._pending_audio_bytes -= len(item) - bp.AUDIO_HEADER_SIZE
                    self.count("audio_dropped_connecting")
                    break

    # -- the connection ---------------------------------------------------

    def _connected(self, link: BridgeLink) -> None:
        self._connecting = None
        transport = link.transport
        if self.state is not LinkState.CONNECTING or transport is None:
            if transport is not None:
                transport.loseConnection()
            return
        self._cancel_timer()
        self.state = LinkState.OPEN
        transport.sendTextMessage(bp.session_start(self._session.session_id, self._settings.sample_rate))
        pending, self._pending = self._pending, collections.deque()
        self._pending_audio_bytes = self._pending_events = 0
        for item in pending:
            if isinstance(item, bytes):
                transport.sendBytesMessage(item)
            else:
                transport.sendTextMessage(item)

    def _connect_failed(self, failure: Failure) -> None:
        self._connecting = None
        if self.state is not LinkState.CONNECTING:
            return  # we cancelled it, or ended already
        detail = f"cannot connect to {self._settings.url.text}: {failure.getErrorMessage()}"
        if self._constructing:
            self._cancel_timer()
            self._timer = self._clock.callLater(0, self._fail, detail)
            return
        self._fail(detail)

    def _connect_timed_out(self) -> None:
        self._timer = None
        self._fail(
            f"no connection to {self._settings.url.text} within {self._settings.connect_timeout:g} s"
        )

    def link_lost(self, reason: Failure) -> None:
        """The WebSocket closed: fatal unless we were ending anyway."""
        if self.state is LinkState.OPEN or self.state is LinkState.CONNECTING:
            self._fail(f"backend connection lost: {reason.getErrorMessage()}")

    def _fail(self, detail: str) -> None:
        if self.state is LinkState.CLOSED:
            return
        log.warn("session {id}: {detail}", id=loggable_id(self._session.session_id), detail=detail)
        self.count("backend_unavailable")
        self._shut()
        try:
            self._session.send_event({"type": "error", "error": {"code": ERROR_CODE, "message": detail}})
        finally:
            # Whatever became of the event, the call must not outlive its backend.
            self._session.end(f"{ERROR_CODE}: {detail}")

    def _shut(self) -> None:
        """Closed for good: no timer, no socket, no buffer. Safe to call twice."""
        self.state = LinkState.CLOSED
        self._cancel_timer()
        self._cancel_turn_timer()
        self._pending.clear()
        self._pending_audio_bytes = self._pending_events = 0
        connecting, self._connecting = self._connecting, None
        if connecting is not None and not connecting.called:
            connecting.cancel()
        transport = self._link.transport
        if transport is not None:
            transport.loseConnection()
        if self.counters:
            log.info(
                "session {id} bridge counters: {counters}",
                id=loggable_id(self._session.session_id),
                counters=dict(self.counters),
            )

    def _cancel_timer(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()

    # -- backend -> caller --------------------------------------------------

    def bytes_received(self, data: bytes) -> None:
        """Agent audio from the backend: queue it for the caller."""
        if self.state is not LinkState.OPEN:
            return
        try:
            message = bp.decode_audio(data)
        except bp.BridgeProtocolError:
            self.count("malformed_frames")
            return
        if message.kind != bp.KIND_OUTPUT_AUDIO:
            self.count("malformed_frames")
            return
        if message.pcm:
            self._cancel_turn_timer()
            self._session.send_audio(message.pcm)

    def text_received(self, text: str) -> None:
        """An event from the backend."""
        if self.state is not LinkState.OPEN:
            return
        try:
            event = bp.parse_backend_event(text)
        except bp.BridgeProtocolError:
            self.count("malformed_frames")
            return
        if isinstance(event, bp.ClearOutputAudio):
            self._session.clear_audio()
        elif isinstance(event, bp.ForwardClientEvent):
            self._session.send_event(event.event)
        elif isinstance(event, bp.EndSession):
            self._backend_ended(event)
        elif isinstance(event, bp.StartTurn):
            self._cancel_turn_timer()
            self._turn_open = True
            self._session.start_turn()
        elif isinstance(event, bp.EndTurn):
            self._cancel_turn_timer()
            self._turn_open = False
            self._session.end_turn(event.interrupted)
        else:
            self.count("unknown_events")

    def _backend_ended(self, event: bp.EndSession) -> None:
        delay = self._session.queued_audio_ms() / 1000 if event.drain else 0.0
        transport = self._link.transport
        if delay <= 0:
            self._shut()
            self._session.end(event.reason)
            return
        # Keep playing what is queued, but take nothing more from the backend.
        self.state = LinkState.ENDING
        if transport is not None:
            transport.loseConnection()

        def end_now() -> None:
            self._timer = None
            self._shut()
            self._session.end(event.reason)

        self._timer = self._clock.callLater(delay, end_now)


# -- the factory and the plugin's type ---------------------------------------------


@implementer(IAgentFactory, IAgentCounters)
class BridgeAgentFactory:
    """Builds a :class:`BridgeAgent` for every session, all to one backend URL.

    With ``realtime = backend`` the backend speaks OpenAI's Realtime events
    itself: the session's event layer steps aside (``speaks_realtime``) and
    events pass between client and backend unchanged.
    """

    name = "bridge"

    def __init__(self, settings: BridgeSettings, connect: Connector) -> None:
        self.settings = settings
        self.speaks_realtime = settings.realtime == "backend"
        self.sample_rate = settings.sample_rate
        self.connect = connect
        self.counters: collections.Counter[str] = collections.Counter()

    def agent_for(self, session: IAgentSession) -> IAgent:
        """A bridge agent for ``session``; its connection starts now."""
        return BridgeAgent(session, self.settings, self.connect, self.counters)


@provider(IAgentType)
class agent_type:  # noqa: N801 - the module attribute AgentPlugin loads
    """The bridge agent's INI section ``[agent.bridge]``."""

    name = "bridge"
    description = "a WebSocket to any backend (docs/agent-protocol.md)"
    options = {
        "url": c.Key(websocket_url, "", "the backend's ws:// or wss:// URL (required)"),
        "sample_rate": c.Key(c.choice(16000, 24000, 48000), "24000", "PCM rate both ways"),
        "connect_timeout": c.Key(c.seconds(0.1, 60), "5", "seconds to open the WebSocket"),
        "token": c.Key(bearer_token, "", "sent as Authorization: Bearer <token>; empty: none"),
        "buffer_ms": c.Key(
            c.integer(0, 10_000), "1000", "caller audio held while connecting; older is dropped"
        ),
        "realtime": c.Key(
            c.word("edge", "backend"),
            "edge",
            "edge: voiceedge speaks the Realtime events; backend: the backend does, events pass unchanged",
        ),
        "turn_timeout": c.Key(
            c.seconds(0.1, 60), "3", "seconds the backend has to start or end a requested turn"
        ),
    }

    @staticmethod
    def make_factory(options: dict[str, Any], reactor: Any) -> IAgentFactory:
        """A bridge factory from the parsed options, connecting with ``reactor``."""
        settings = BridgeSettings(
            url=options["url"],
            sample_rate=options["sample_rate"],
            connect_timeout=options["connect_timeout"],
            token=options["token"],
            buffer_ms=options["buffer_ms"],
            realtime=options["realtime"],
            turn_timeout=options["turn_timeout"],
        )
        return BridgeAgentFactory(settings, websocket_connector(reactor, settings))
