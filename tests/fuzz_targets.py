"""Fuzz targets: one per parser and per state machine, each checking its contract on any bytes.

A target takes one input (bytes) and returns normally when the code under test kept its
contract; anything else (an exception of another type, a broken invariant as an
:class:`InvariantBroken`) is a finding. The contracts:

* a parser raises only its own :class:`~voiceedge.wire.errors.WireError` subclass;
* a state machine fed hostile input raises nothing, and keeps its state bounded;
* the stateful targets (a whole session on a Clock, the relay) check that nothing but STUN
  is sent to an address that has not shown it receives, that no source gets more packets
  than it sent (no amplification), and that their tables stay bounded.

Hangs and memory are bounded by the engine (``tests/fuzz_runner.py``: a per-input time
limit and an RSS limit). Targets are plain functions so that any engine can drive them.
"""

from __future__ import annotations

import ipaddress
import json
import random
import struct
import sys
from typing import Any, Callable

TARGETS: dict[str, Callable[[bytes], None]] = {}


class InvariantBroken(AssertionError):
    """A stateful target saw its code break an invariant."""


def target(function: Callable[[bytes], None]) -> Callable[[bytes], None]:
    """Register ``function`` under its name without the ``fuzz_`` prefix."""
    TARGETS[function.__name__.removeprefix("fuzz_")] = function
    return function


class Input:
    """Takes typed values off the front of a fuzz input (zero once it is used up)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def __bool__(self) -> bool:
        return self.pos < len(self.data)

    def byte(self) -> int:
        if self.pos >= len(self.data):
            return 0
        self.pos += 1
        return self.data[self.pos - 1]

    def u16(self) -> int:
        return self.byte() << 8 | self.byte()

    def chunk(self) -> bytes:
        """A length-prefixed (u16) piece of the rest."""
        size = self.u16()
        piece = self.data[self.pos : self.pos + size]
        self.pos += len(piece)
        return piece

    def rest(self) -> bytes:
        piece = self.data[self.pos :]
        self.pos = len(self.data)
        return piece


# -- parsers ------------------------------------------------------------------------------------


@target
def fuzz_stun(data: bytes) -> None:
    """STUN: parse, and the accessors a transceiver uses on what parsed."""
    from voiceedge.wire import stun

    try:
        message = stun.parse_message(data)
        message.username()
        message.priority()
        message.use_candidate  # noqa: B018 - a property that parses
        message.ice_controlling()
        message.ice_controlled()
        message.xor_mapped_address()
        message.error_code()
        message.software()
        message.unknown_required()
        stun.verify_integrity(data, b"clientPasswordAbcdefgh123")
        stun.verify_fingerprint(data)
    except stun.StunError:
        pass
    try:
        stun.peek_username(data)
    except stun.StunError:
        pass


def _sdp_text(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


@target
def fuzz_sdp_offer(data: bytes) -> None:
    """SDP offers: parse (SdpError), then the policy that picks what to answer (OfferNotAcceptable)."""
    from voiceedge.signaling.answer import OfferNotAcceptable, summarize_offer
    from voiceedge.wire import sdp

    try:
        summarize_offer(sdp.parse_sdp(_sdp_text(data)))
    except (sdp.SdpError, OfferNotAcceptable):
        pass


@target
def fuzz_sdp_answer(data: bytes) -> None:
    """SDP answers: for every offer we accept, our answer parses again and keeps the offer's mids."""
    from voiceedge.signaling.answer import AnswerParameters, OfferNotAcceptable, build_answer, summarize_offer
    from voiceedge.wire import sdp
    from voiceedge.wire.sdp import Fingerprint

    try:
        offer = sdp.parse_sdp(_sdp_text(data))
        summary = summarize_offer(offer)
    except (sdp.SdpError, OfferNotAcceptable):
        return
    params = AnswerParameters(
        "ufrag", "p" * 24, Fingerprint("sha-256", ":".join(["AB"] * 32)), ("127.0.0.1", 3478), 1,
        accept_datachannel=True,
    )
    answer = sdp.parse_sdp(build_answer(offer, summary, params))
    if [m.mid for m in answer.media] != [m.mid for m in offer.media]:
        raise InvariantBroken("the answer's m-lines do not match the offer's")


@target
def fuzz_rtp(data: bytes) -> None:
    """RTP: parse; what parsed serializes back to the same bytes."""
    from voiceedge.wire.rtp import RtpError, parse_rtp

    try:
        packet = parse_rtp(data)
    except RtpError:
        return
    packet.serialize()


_SRTP_IO_SESSIONS: dict[int, Any] = {}


def _srtp_io_sessions(index: int) -> Any:
    """(sender, compiled receiver, python receiver) of the ``index``-th profile, fresh receivers each time."""
    from pylibsrtp import Policy

    from voiceedge.transceiver.dtls import SrtpKeys
    from voiceedge.transceiver.srtp import SrtpSession

    profile, length = (
        (Policy.SRTP_PROFILE_AES128_CM_SHA1_80, 30),
        (Policy.SRTP_PROFILE_AES128_CM_SHA1_32, 30),
        (Policy.SRTP_PROFILE_AEAD_AES_128_GCM, 28),
        (Policy.SRTP_PROFILE_AEAD_AES_256_GCM, 44),
    )[index % 4]
    a, b = bytes(range(length)), bytes(range(100, 100 + length))
    if index % 4 not in _SRTP_IO_SESSIONS:
        _SRTP_IO_SESSIONS[index % 4] = SrtpSession(SrtpKeys(profile, a, b), io="python")
    receivers = [
        SrtpSession(SrtpKeys(profile, b, a), io=io, offered_ssrcs=[0x11223344], max_learned=1)
        for io in ("compiled", "python")
    ]
    return _SRTP_IO_SESSIONS[index % 4], receivers


@target
def fuzz_srtp_io(data: bytes) -> None:
    """SRTP I/O: the compiled helper and the Python path make the same of any packet.

    The input picks a profile, then gives packets: raw ones (hostile SRTP), and plaintext ones
    (any header: CSRC count, extension, padding) that a sender protects first, so they
    authenticate and only the header parse can refuse them. Both receivers must return the
    same fields or raise the same error (SrtpError or RtpError only), and count the same.
    """
    from voiceedge.transceiver import srtp
    from voiceedge.wire.rtp import RtpError

    if srtp._srtpio is None:
        return
    stream = Input(data)
    sender, receivers = _srtp_io_sessions(stream.byte())
    outcomes: list[list[tuple[Any, ...]]] = [[], []]
    while stream:
        protect = stream.byte() & 1
        packet = stream.chunk()
        if protect:
            try:
                packet = sender.protect_rtp(packet)
            except srtp.SrtpError:
                continue
        for receiver, seen in zip(receivers, outcomes):
            try:
                seen.append(("ok", receiver.read_rtp(packet)))
            except srtp.SrtpError as exc:
                seen.append((type(exc).__name__, exc.reason, str(exc)))
            except RtpError as exc:
                seen.append(("RtpError", str(exc)))
    counts = [(r.replayed, r.auth_failed, r.malformed, r.ssrc_refused, r.inbound_ssrcs) for r in receivers]
    if outcomes[0] != outcomes[1] or counts[0] != counts[1]:
        raise InvariantBroken(f"compiled {outcomes[0]} {counts[0]} != python {outcomes[1]} {counts[1]}")


@target
def fuzz_rtcp(data: bytes) -> None:
    """RTCP compound packets: parse; what parsed builds again."""
    from voiceedge.wire import rtcp

    try:
        packets = rtcp.parse_rtcp(data)
    except rtcp.RtcpError:
        return
    try:
        rtcp.build_rtcp(packets)
    except rtcp.RtcpError:
        pass  # e.g. an unknown packet type is not ours to build


@target
def fuzz_sctp_chunks(data: bytes) -> None:
    """SCTP packets and chunks, checksum checked and not."""
    from voiceedge.wire.sctp_chunks import SctpError, parse_packet

    for verify in (True, False):
        try:
            parse_packet(data, verify_checksum=verify)
        except SctpError:
            pass


@target
def fuzz_dcep(data: bytes) -> None:
    """DCEP (RFC 8832) messages."""
    from voiceedge.transceiver.datachannel import DcepError, parse_dcep

    try:
        parse_dcep(data)
    except DcepError:
        pass


@target
def fuzz_opus(data: bytes) -> None:
    """Opus through libopus (C, via ctypes): one decoder (and encoder) fed a script of hostile packets.

    The first byte picks the rate; then each step is an operation byte and a chunk: decode
    (raises only CodecError, returns 2.5-120 ms), decode_fec (exactly one 20 ms frame, never
    an error), conceal (a 10 ms multiple up to 120 ms, CodecError otherwise), or encode the
    chunk as PCM (padded to one frame) and decode that.
    """
    from voiceedge.media.opus import SUPPORTED_RATES, CodecError, OpusDecoder, OpusEncoder

    source = Input(data)
    rate = SUPPORTED_RATES[source.byte() % len(SUPPORTED_RATES)]
    decoder = OpusDecoder(rate)
    encoder: OpusEncoder | None = None
    frame = rate // 50 * 2
    for _ in range(64):
        if not source:
            break
        op = source.byte()
        piece = source.chunk()
        kind = op % 4
        if kind == 0:
            try:
                pcm = decoder.decode(piece)
            except CodecError:
                continue
            if not 0 < len(pcm) <= frame * 6 or len(pcm) % (rate // 400 * 2):
                raise InvariantBroken(f"decode returned {len(pcm)} bytes at {rate} Hz")
        elif kind == 1:
            if len(decoder.decode_fec(piece)) != frame:
                raise InvariantBroken("decode_fec did not return one frame")
        elif kind == 2:
            samples = (op >> 2) * (rate // 400)  # 2.5 ms steps, some of them illegal
            try:
                pcm = decoder.conceal(samples)
            except CodecError:
                if samples > 0 and samples % (rate // 100) == 0 and samples <= rate * 120 // 1000:
                    raise InvariantBroken(f"conceal refused {samples} samples at {rate} Hz") from None
                continue
            if len(pcm) != samples * 2:
                raise InvariantBroken("conceal returned the wrong length")
        else:
            if encoder is None:
                encoder = OpusEncoder(rate, complexity=op >> 4 if op >> 4 <= 10 else None, packet_loss_percent=op & 0x08)
            payload = encoder.encode((piece + bytes(frame))[:frame])
            if len(decoder.decode(payload)) != frame:
                raise InvariantBroken("our own payload did not decode to one frame")


_CODEC: Any = None


@target
def fuzz_route_token(data: bytes) -> None:
    """Route tokens: decode as a ufrag and as a STUN USERNAME."""
    from voiceedge.wire.route_token import RouteTokenCodec, TokenError

    global _CODEC
    if _CODEC is None:
        _CODEC = RouteTokenCodec({1: b"k" * 32, 7: b"q" * 32}, 1)
    for call in (lambda: _CODEC.decode(data), lambda: _CODEC.decode_username(data)):
        try:
            call()
        except TokenError:
            pass


@target
def fuzz_encap(data: bytes) -> None:
    """Relay encapsulation: decode, peek, and the round trip of what decoded."""
    from voiceedge.wire import encap

    for call in (encap.header_length, encap.peek_client, encap.peek_addresses):
        try:
            call(data)
        except encap.EncapError:
            pass
    _same_header_verdict(data)
    try:
        envelope, payload = encap.decode(data)
    except encap.EncapError:
        return
    again = encap.decode(encap.encode(envelope, payload))
    if again != (envelope, payload):
        raise InvariantBroken(f"encapsulation does not round-trip: {again} != {(envelope, payload)}")


@target
def fuzz_bridge_protocol(data: bytes) -> None:
    """The bridge agent's frames and events, and the caller events it forwards."""
    from voiceedge.agents import bridge_protocol as bp

    try:
        bp.decode_audio(data)
    except bp.BridgeProtocolError:
        pass
    text = data.decode("utf-8", "surrogatepass") if _is_utf8ish(data) else data.decode("latin-1")
    try:
        bp.parse_backend_event(text)
    except bp.BridgeProtocolError:
        pass
    try:
        event = json.loads(text)
    except (ValueError, RecursionError):
        return
    if isinstance(event, dict):
        try:
            bp.client_event(event).encode("utf-8")
        except bp.BridgeProtocolError:
            pass


def _is_utf8ish(data: bytes) -> bool:
    try:
        data.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError:
        return False
    return True


# -- state machines -----------------------------------------------------------------------------


@target
def fuzz_oai_events(data: bytes) -> None:
    """oai-events messages into an echoing agent: events or error events, never an exception."""
    from voiceedge.transceiver.datachannel import ChannelState
    from voiceedge.transceiver.events_channel import EventsChannel

    sent: list[str] = []
    channel: EventsChannel

    class Open:
        label = "oai-events"
        state = ChannelState.OPEN

        @staticmethod
        def send(text: str) -> None:
            text.encode("utf-8")
            sent.append(text)

    channel = EventsChannel(
        lambda: None,
        lambda event: channel.send_event({"type": "echo", "event": event}),
        lambda why: channel.send_event({"type": "error", "error": {"message": why}}),
    )
    channel._channel = Open()  # type: ignore[assignment]
    source = Input(data)
    while source:
        message = source.chunk()
        channel._message(message if source.byte() & 1 else message.decode("utf-8", "replace"))
    for text in sent:
        json.loads(text)


@target
def fuzz_sctp_association(data: bytes) -> None:
    """An SCTP association fed packets (valid checksums on request) and time: nothing raises."""
    from voiceedge.transceiver.datachannel import DataChannelManager
    from voiceedge.transceiver.sctp import SctpAssociation
    from voiceedge.wire.sctp_chunks import crc32c_table

    association = SctpAssociation(rng=random.Random(0))
    channels = DataChannelManager(association, dtls_server=True)
    association.connect(0.0)
    now = 0.0
    source = Input(data)
    while source:
        op = source.byte()
        if op < 32:
            now += op / 8
            deadline = association.deadline()
            if deadline is not None and deadline <= now:
                association.handle_timeout(now)
        else:
            packet = bytearray(source.chunk())
            if op & 1 and len(packet) >= 12:
                # Fix the checksum so the fuzzer reaches the chunks.
                packet[8:12] = b"\0\0\0\0"
                packet[8:12] = struct.pack("<I", crc32c_table(bytes(packet)))
            association.receive(bytes(packet), now)
        channels.take_events()
        association.take_outgoing()
        if association.buffered_amount > 64 << 20:
            raise InvariantBroken("SCTP buffered more than 64 MiB from hostile input")


_DTLS: Any = None


@target
def fuzz_dtls_intake(data: bytes) -> None:
    """DTLS record intake of a server waiting for a handshake: nothing raises."""
    from voiceedge.transceiver.dtls import DtlsCertificate, DtlsRole, DtlsTransport

    global _DTLS
    if _DTLS is None:
        _DTLS = (DtlsCertificate.generate(), DtlsCertificate.generate())
    server_cert, client_cert = _DTLS
    server = DtlsTransport(server_cert, DtlsRole.SERVER, [("sha-256", client_cert.fingerprint)])
    server.start(0.0)
    now = 0.0
    source = Input(data)
    while source:
        now += source.byte() / 16
        server.receive(source.chunk(), now)
        deadline = server.deadline()
        if deadline is not None and deadline <= now:
            server.handle_timeout(now)


# -- whole systems -----------------------------------------------------------------------------

_SESSION_SETUP: Any = None


@target
def fuzz_session(data: bytes) -> None:
    """A transceiver on a Clock with one real client and spoofed sources, driven by the input.

    Ops: a hostile datagram from one of 6 sources (some of which answer
    probes, as a receiving client does), a valid check with the session's
    credentials from any source, the real client's DTLS handshake, SRTP,
    SRTCP and oai-events from it, and time. Invariants: nothing but STUN
    goes to a source that never answered a probe, no such source gets more
    datagrams than twice what it sent, sessions and per-session sources stay
    bounded, and no exception escapes.
    """
    from twisted.internet.task import Clock

    from tests import memory_call as mc
    from voiceedge.wire import stun

    clock = Clock()
    clock.advance(1_000_000)
    transceiver, written = mc.make_transceiver(clock, max_sessions=4)
    real = mc.CLIENT
    sources = [real, ("127.0.0.1", 40001), ("192.0.2.7", 5000), ("192.0.2.8", 5001), ("::1", 6000), ("10.1.1.1", 9)]
    # Sources 0 and 1 receive (they answer probes); the rest never do.
    receiving = {sources[0], sources[1]}
    sent_from: dict[tuple[str, int], int] = dict.fromkeys(sources, 0)
    received_by: dict[tuple[str, int], int] = dict.fromkeys(sources, 0)
    answered: set[tuple[str, int]] = set()

    def from_source(index: int) -> Callable[[bytes], None]:
        address = sources[index]

        def send(datagram: bytes) -> None:
            sent_from[address] += 1
            transceiver.datagram_received(datagram, address)

        return send

    client = mc.open_client(transceiver, from_source(0))
    other = mc.open_client(transceiver, from_source(1))

    def pump() -> None:
        for _ in range(20):
            if not written:
                return
            batch = list(written)
            written.clear()
            for datagram, destination in batch:
                received_by[destination] = received_by.get(destination, 0) + 1
                if destination not in receiving:
                    if not datagram or datagram[0] > 3:
                        raise InvariantBroken(f"{datagram[:1].hex()}… sent to {destination}, which never receives")
                    if received_by[destination] > 2 * sent_from.get(destination, 0):
                        raise InvariantBroken(f"{destination} got more than twice what it sent")
                    continue
                if destination == sources[0]:
                    client.deliver(datagram, clock.seconds())
                elif destination == sources[1]:
                    if datagram[0] < 4 and datagram[1] == 0x01 and datagram[0] == 0x00:
                        answered.add(destination)
                        transceiver.datagram_received(
                            stun.binding_success(stun.parse_message(datagram), mc.SERVER, mc.CLIENT_PWD.encode()),
                            destination,
                        )
                    else:
                        other.deliver(datagram, clock.seconds())

    source = Input(data)
    while source:
        op = source.byte()
        who = source.byte() % len(sources)
        now = clock.seconds()
        if op < 40:
            transceiver.datagram_received(source.chunk(), sources[who])
            sent_from[sources[who]] += 1
        elif op < 70:
            check = client if who % 2 == 0 else other
            datagram = mc.binding_request(check.username, check.password, use_candidate=bool(op & 1))
            transceiver.datagram_received(datagram, sources[who])
            sent_from[sources[who]] += 1
        elif op < 80:
            if client.dtls.state.name == "NEW":
                client.start_dtls(now)
        # An op whose client is not ready does nothing (it must not fall through to the time
        # op below, whose (op - 140) would turn the clock back).
        elif op < 100:
            if client.srtp is not None:
                client.send_rtp(source.chunk() or b"\xfc", ssrc=0x1000 + source.byte() % 8)
        elif op < 110:
            if client.srtp is not None:
                payload = source.chunk()
                if len(payload) >= 8:
                    client.send_rtcp(bytes([0x80 | (payload[0] & 0x1F)]) + payload[1:])
        elif op < 130:
            if client.sctp is None:
                pass
            elif client.events_channel is None:
                client.open_events(now)
            else:
                message = source.chunk()
                try:
                    client.send_event(message.decode("utf-8", "replace") if op & 1 else message, now)
                except ValueError:
                    pass  # the client's own send rules
        elif op < 140:
            if client.dtls.state.name == "CONNECTED":
                packet = source.chunk()
                if packet:
                    for datagram in client.dtls.send_application_data(packet[:16384]):
                        client.send(datagram)
        else:
            clock.advance((op - 140) / 20)
            client.timers(clock.seconds())
        pump()
        if transceiver.session_count() > 4:
            raise InvariantBroken("more sessions than max_sessions")
    clock.advance(120)
    pump()
    if transceiver.session_count():
        raise InvariantBroken("a session outlived consent and setup timeouts")
    transceiver.stop()


def _same_header_verdict(datagram: bytes) -> None:
    """The compiled helper's header parser (where built) agrees with voiceedge.wire.encap on ``datagram``."""
    from voiceedge.wire import encap

    try:
        from voiceedge.relay import _batchio
    except ImportError:
        return
    try:
        expected: object = encap.peek_client(datagram)
    except encap.EncapError as e:
        expected = str(e)
    try:
        got: object = _batchio.peek_client(datagram)
    except ValueError as e:
        got = str(e)
    if got != expected:
        raise InvariantBroken(f"the helper reads header {datagram[:40]!r} as {got!r}, encap as {expected!r}")


@target
def fuzz_relay(data: bytes) -> None:
    """A relay on a Clock: client datagrams (hostile, or checks with valid tokens) and transceiver
    replies (encapsulated, from inside or outside its networks), and time.

    Invariants: a client only ever receives what a transceiver sent for it; a client's non-STUN
    datagram reaches a transceiver only on a confirmed flow; the flow table stays within its
    bound; no exception escapes.
    """
    from twisted.internet.task import Clock

    from tests.ice_client import binding_request
    from tests.relay_support import RecordingBatch
    from voiceedge.relay.core import Relay
    from voiceedge.relay.protocol import batch_backend
    from voiceedge.relay.settings import RelaySettings
    from voiceedge.wire import encap
    from voiceedge.wire.route_token import Route, RouteTokenCodec

    clock = Clock()
    clock.advance(1_000_000)
    codec = RouteTokenCodec({1: b"k" * 32}, 1)
    hops = [("127.0.0.1", 7000), ("127.0.0.2", 7001)]
    outsider = ("203.0.113.9", 7000)
    ingress = ("127.0.0.1", 3478)
    settings = RelaySettings(
        public_listen=ingress, max_flows=8, transceiver_networks=(ipaddress.ip_network("127.0.0.0/8"),)
    )
    relay = Relay(clock, codec, settings)
    to_clients: list[tuple[bytes, tuple[str, int]]] = []
    to_hops: list[tuple[bytes, tuple[str, int]]] = []
    relay.send_to_client = lambda data, address: to_clients.append((bytes(data), address))  # type: ignore[assignment]
    relay.send_to_transceiver = lambda data, address: to_hops.append((bytes(data), address))  # type: ignore[assignment]
    if len(data) % 2 and batch_backend() == "recvmmsg":
        # Half the inputs take the recvmmsg backend's path (the compiled helper's queue).
        batch = RecordingBatch(to_hops)
        relay.use_batch(batch, batch.buffer)
        return_batch = RecordingBatch(to_clients, headroom=0)
        relay.use_return_batch(return_batch, return_batch.buffer)
    relay.start()
    clients = [(f"198.51.100.{n}", 10000 + n) for n in range(12)]
    tokens = [codec.issue(Route(0, hop), nonce=bytes([n]) * 8) for n, hop in enumerate(hops)]
    source = Input(data)
    while source:
        op = source.byte()
        who = source.byte()
        client = clients[who % len(clients)]
        if op < 60:
            payload = source.chunk()
            confirmed = client in relay.flows.confirmed
            before = len(to_hops)
            relay.client_datagram(payload, client)
            if len(to_hops) > before and payload and payload[0] > 3 and not confirmed:
                raise InvariantBroken(f"non-STUN from {client} forwarded without a confirmed flow")
        elif op < 120:
            token = tokens[who % len(tokens)] if op & 1 else "bogus" + "A" * 20
            relay.client_datagram(binding_request(f"{token}:cli{op}", "p" * 22, use_candidate=True), client)
        elif op < 200:
            hop = hops[who % len(hops)] if op & 1 else outsider
            before = len(to_clients)
            payload = source.chunk()
            if op & 2:
                datagram = encap.encode(encap.Envelope(client, ingress), payload)
            else:
                datagram = payload
            _same_header_verdict(datagram)
            if relay.return_batch is not None:
                at, n = return_batch.put(0, datagram)
                relay.transceiver_slot(at, n, hop)
            else:
                relay.transceiver_datagram(datagram, hop)
            for _, address in to_clients[before:]:
                if hop == outsider:
                    raise InvariantBroken("a datagram from outside the transceiver networks reached a client")
                if address != client and op & 2:
                    raise InvariantBroken(f"a reply for {client} went to {address}")
        else:
            clock.advance((op - 200) / 2)
        relay.now = clock.seconds()
        if len(relay.flows) > 8:
            raise InvariantBroken("the flow table grew past max_flows")
    relay.stop()


def main() -> None:
    """``python -m tests.fuzz_targets NAME FILE...``: run one target on files (a crash reproducer)."""
    name, *paths = sys.argv[1:]
    for path in paths:
        with open(path, "rb") as f:
            TARGETS[name](f.read())
        print(f"{path}: ok")


if __name__ == "__main__":
    main()
