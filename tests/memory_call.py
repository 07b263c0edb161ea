"""A whole client in memory against a Transceiver on a Clock: ICE checks, DTLS, SRTP, SCTP, oai-events.

Shared by the fuzz targets (tests/fuzz_targets.py) and the impairment tests: the client's
datagrams go through ``send`` and the transceiver's come back through ``deliver``, so a test
can put anything (an impairment, a fuzzer) between them.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from typing import Any, Callable

from twisted.internet.task import Clock

from tests.ice_client import binding_request
from voiceedge.agents.echo import EchoAgentFactory
from voiceedge.agents.interfaces import IAgentFactory
from voiceedge.transceiver.datachannel import ChannelOpened, DataChannel, DataChannelManager, MessageReceived
from voiceedge.transceiver.dtls import DtlsCertificate, DtlsRole, DtlsState, DtlsTransport
from voiceedge.transceiver.host import Transceiver
from voiceedge.transceiver.sctp import SctpAssociation
from voiceedge.transceiver.settings import TransceiverSettings
from voiceedge.transceiver.srtp import SrtpSession
from voiceedge.wire import sdp, stun
from voiceedge.wire.rtp import RtpPacket

Address = tuple[str, int]
SERVER: Address = ("127.0.0.1", 3478)
CLIENT: Address = ("127.0.0.1", 40000)
CLIENT_UFRAG = "cli1"
CLIENT_PWD = "clientPasswordAbcdefgh123"
SERVER_CERT = DtlsCertificate.generate()
CLIENT_CERT = DtlsCertificate.generate()


def offer_sdp(fingerprint: str, ufrag: str = CLIENT_UFRAG, pwd: str = CLIENT_PWD) -> str:
    """An offer as a browser sends it: Opus 111, rtcp-mux, BUNDLE, a data channel."""
    transport = [
        f"a=ice-ufrag:{ufrag}",
        f"a=ice-pwd:{pwd}",
        f"a=fingerprint:sha-256 {fingerprint}",
        "a=setup:actpass",
    ]
    return "\r\n".join(
        ["v=0", "o=- 4611731400430051336 2 IN IP4 127.0.0.1", "s=-", "t=0 0", "a=group:BUNDLE 0 1"]
        + ["m=audio 9 UDP/TLS/RTP/SAVPF 111", "c=IN IP4 0.0.0.0", *transport, "a=mid:0", "a=sendrecv"]
        + ["a=rtcp-mux", "a=rtpmap:111 opus/48000/2", "a=fmtp:111 minptime=10;useinbandfec=1"]
        + ["m=application 9 UDP/DTLS/SCTP webrtc-datachannel", "c=IN IP4 0.0.0.0", *transport]
        + ["a=mid:1", "a=sctp-port:5000", ""]
    )


def make_transceiver(
    clock: Clock, agent_factory: IAgentFactory | None = None, **kwargs: Any
) -> tuple[Transceiver, list[tuple[bytes, Address]]]:
    """A started transceiver whose writes are appended to the returned list."""
    written: list[tuple[bytes, Address]] = []
    settings = TransceiverSettings(media_listen=SERVER, **kwargs)
    transceiver = Transceiver(clock, SERVER_CERT, agent_factory or EchoAgentFactory(), settings)
    transceiver.write = lambda data, destination: written.append((bytes(data), destination))
    transceiver.start()
    return transceiver, written


@dataclass
class MemoryClient:
    """The client's side of one call: what a browser does, driven by the test.

    ``send`` is where the client's datagrams go (the transceiver, or an
    impairment in front of it); the test calls :meth:`deliver` with each
    datagram the transceiver wrote to ``source``.
    """

    session_id: str
    username: str
    password: str
    send: Callable[[bytes], None]
    dtls: DtlsTransport
    rng: random.Random = field(default_factory=lambda: random.Random(1))
    srtp: SrtpSession | None = None
    sctp: SctpAssociation | None = None
    channels: DataChannelManager | None = None
    events_channel: DataChannel | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    rtp_received: list[RtpPacket] = field(default_factory=list)
    stun_responses: int = 0
    sequence: int = 0
    # When a list: plaintext of what passes, as (kind, bytes), kind one of
    # "stun", "dtls", "sctp", "rtp", "rtcp", "event" (fuzz seeds are made from it).
    capture: list[tuple[str, bytes]] | None = None

    def _capture(self, kind: str, data: bytes) -> None:
        if self.capture is not None:
            self.capture.append((kind, bytes(data)))

    def check(self, use_candidate: bool = True) -> None:
        """Send one connectivity check."""
        self.send(binding_request(self.username, self.password, use_candidate=use_candidate))

    def start_dtls(self, now: float) -> None:
        """Send the ClientHello."""
        for datagram in self.dtls.start(now):
            self.send(datagram)

    def deliver(self, data: bytes, now: float) -> None:
        """One datagram from the transceiver."""
        if not data:
            return
        first = data[0]
        if first < 4:
            self._capture("stun", data)
            self._stun(data)
        elif 20 <= first <= 63:
            if self.dtls.state is DtlsState.NEW:
                # Spoofed DTLS "from" this client made the server answer it
                # before our ClientHello; a real client has nothing to feed.
                return
            self._capture("dtls", data)
            output = self.dtls.receive(data, now)
            for reply in output.datagrams:
                self.send(reply)
            if self.dtls.state is DtlsState.CONNECTED and self.srtp is None:
                self._connected(now)
            if self.sctp is not None:
                for chunk in output.application_data:
                    self._capture("sctp", chunk)
                    self.sctp.receive(chunk, now)
                self._pump(now)
        elif 128 <= first <= 191 and self.srtp is not None and not 192 <= data[1] <= 223:
            from voiceedge.wire.rtp import parse_rtp

            plain = self.srtp.unprotect_rtp(data)
            self._capture("rtp", plain)
            self.rtp_received.append(parse_rtp(plain))
        elif 128 <= first <= 191 and self.srtp is not None:
            self._capture("rtcp", self.srtp.unprotect_rtcp(data))

    def _stun(self, data: bytes) -> None:
        message = stun.parse_message(data)
        if message.message_class is stun.StunClass.REQUEST:
            # The transceiver's return-routability probe: answer it, as a browser does.
            self.send(stun.binding_success(message, SERVER, CLIENT_PWD.encode()))
        elif message.message_class is stun.StunClass.SUCCESS:
            self.stun_responses += 1

    def _connected(self, now: float) -> None:
        assert self.dtls.srtp_keys is not None
        self.srtp = SrtpSession(self.dtls.srtp_keys)
        self.sctp = SctpAssociation(rng=random.Random(self.rng.random()))
        self.channels = DataChannelManager(self.sctp, dtls_server=False)
        self.sctp.connect(now)
        self._pump(now)

    def open_events(self, now: float) -> None:
        """Open the ``oai-events`` channel (once SCTP is up)."""
        assert self.channels is not None
        self.events_channel = self.channels.open_channel("oai-events")
        self._pump(now)

    def send_event(self, text: str | bytes, now: float) -> None:
        """Send one message on ``oai-events``."""
        assert self.events_channel is not None
        self.events_channel.send(text)
        self._pump(now)

    def timers(self, now: float) -> None:
        """Run the client's DTLS and SCTP timers that are due."""
        deadline = self.dtls.deadline()
        if deadline is not None and deadline <= now:
            for datagram in self.dtls.handle_timeout(now):
                self.send(datagram)
        if self.sctp is not None:
            deadline = self.sctp.deadline()
            if deadline is not None and deadline <= now:
                self.sctp.handle_timeout(now)
            self._pump(now)

    def _pump(self, now: float) -> None:
        assert self.sctp is not None and self.channels is not None
        for event in self.channels.take_events():
            if isinstance(event, ChannelOpened) and event.channel.label == "oai-events":
                self.events_channel = event.channel
            elif isinstance(event, MessageReceived):
                self._capture("event", event.data.encode() if isinstance(event.data, str) else event.data)
                try:
                    self.events.append(json.loads(event.data))
                except ValueError:
                    pass
        for packet in self.sctp.take_outgoing():
            self._capture("sctp", packet)
            if self.dtls.state is DtlsState.CONNECTED:
                for datagram in self.dtls.send_application_data(packet):
                    self.send(datagram)

    def send_rtp(self, payload: bytes, ssrc: int = 1234) -> None:
        """Protect and send one Opus packet."""
        assert self.srtp is not None
        self.sequence += 1
        packet = RtpPacket(111, self.sequence & 0xFFFF, self.sequence * 960, ssrc, payload).serialize()
        self.send(self.srtp.protect_rtp(packet))

    def send_rtcp(self, packet: bytes) -> None:
        """Protect and send one RTCP packet."""
        assert self.srtp is not None
        self.send(self.srtp.protect_rtcp(packet))


def open_client(
    transceiver: Transceiver, send: Callable[[bytes], None], certificate: DtlsCertificate = CLIENT_CERT
) -> MemoryClient:
    """Open a session for an offer and return the client's side of it (nothing sent yet)."""
    opened = transceiver.open_session(offer_sdp(certificate.fingerprint))
    answer = sdp.parse_sdp(opened.answer_sdp)
    audio = answer.media[0]
    credentials = answer.ice_credentials(audio)
    assert credentials is not None
    ufrag, pwd = credentials
    fingerprint = audio.fingerprints[0].value
    dtls = DtlsTransport(certificate, DtlsRole.CLIENT, [("sha-256", fingerprint)])
    return MemoryClient(opened.session_id, f"{ufrag}:{CLIENT_UFRAG}", pwd, send, dtls)


def tone_packets(count: int = 50) -> list[bytes]:
    """Opus packets of a continuous 440 Hz tone, 20 ms each (every frame is sound: an echo sends each back)."""
    import math

    from voiceedge.media.opus import OpusEncoder

    encoder = OpusEncoder(48000)
    packets = []
    for n in range(count):
        samples = [int(8000 * math.sin(2 * math.pi * 440 * (n * 960 + i) / 48000)) for i in range(960)]
        packets.append(encoder.encode(b"".join(s.to_bytes(2, "little", signed=True) for s in samples)))
    return packets


def connect_client(
    transceiver: Transceiver, clock: Clock, written: list[tuple[bytes, Address]], address: Address
) -> MemoryClient:
    """A client at ``address`` through ICE and DTLS with ``transceiver`` (whose writes go to ``written``), SRTP keyed.

    The clock moves 1 ms a round until the handshake is done; ``AssertionError``
    if it is not within 50 rounds.
    """
    client = open_client(transceiver, lambda d: transceiver.datagram_received(d, address))
    client.check()
    client.start_dtls(clock.seconds())
    for _ in range(50):
        batch = [d for d, dest in written if dest == address]
        written.clear()
        for datagram in batch:
            client.deliver(datagram, clock.seconds())
        if client.srtp is not None and not batch:
            break
        clock.advance(0.001)
    if client.srtp is None:
        raise AssertionError("an in-memory client did not connect")
    return client


class ConnectedCalls:
    """``count`` clients connected in memory (ICE, DTLS, SRTP for real) to one transceiver on a Clock.

    :meth:`feed` sends each client's audio with the event loop on time or late,
    as a saturated process's is: what the clients sent meanwhile arrives at once.
    """

    def __init__(self, transceiver: Transceiver, clock: Clock, written: list[tuple[bytes, Address]], count: int) -> None:
        self.transceiver = transceiver
        self.clock = clock
        self.written = written
        self.addresses: list[Address] = [("127.0.0.1", 40000 + i) for i in range(count)]
        self.clients = [self._connect(address) for address in self.addresses]
        written.clear()

    def _connect(self, address: Address) -> MemoryClient:
        return connect_client(self.transceiver, self.clock, self.written, address)

    def feed(self, payloads: list[bytes], frames: int, late: float = 0.0) -> None:
        """``frames`` packets from every client, one per 20 ms; the loop runs every ``late`` seconds (0: every 20 ms).

        The transceiver's datagrams are dropped, not delivered: only the server's side is exercised.
        """
        receive = self.transceiver.datagram_received
        per_step = max(1, round(late / 0.020))
        packets = []
        for client in self.clients:
            sent: list[bytes] = []
            client.send = sent.append
            for i in range(frames):
                client.send_rtp(payloads[i % len(payloads)])
            packets.append(sent)
        for start in range(0, frames, per_step):
            self.clock.advance(0.020 * per_step)
            for sent, address in zip(packets, self.addresses):
                for packet in sent[start : start + per_step]:
                    receive(packet, address)
            self.written.clear()

    def queued_ms(self) -> list[int]:
        """Agent audio waiting in each session's outbound queue."""
        return [call.session.queued_audio_ms() for call in self.transceiver._by_id.values()]
