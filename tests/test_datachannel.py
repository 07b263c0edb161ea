# -*- test-case-name: tests.test_datachannel -*-
"""Tests for DCEP (RFC 8832) and data channel bookkeeping over the SCTP association."""

from __future__ import annotations

import random
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from tests.cases import case
from tests.test_sctp import LossyLink
from voiceedge.transceiver.datachannel import (
    PPID_DCEP,
    ChannelClosed,
    ChannelOpened,
    ChannelState,
    DataChannel,
    DataChannelManager,
    DcepError,
    DcepOpen,
    MessageReceived,
    build_dcep_ack,
    parse_dcep,
)
from voiceedge.transceiver.sctp import Closed, Established, SctpAssociation, SctpState


# -- codec -----------------------------------------------------------------------------------------------

class DcepCodecTests(SynchronousTestCase):
    """DCEP OPEN and ACK encode and parse; anything else is a DcepError."""

    @given(st.integers(0, 255), st.integers(0, 0xFFFF), st.integers(0, 0xFFFFFFFF), st.text(), st.text())
    def test_open_roundtrip(self, ctype: int, priority: int, reliability: int, label: str, protocol: str) -> None:
        """parse(build(OPEN)) == OPEN."""
        message = DcepOpen(ctype, priority, reliability, label, protocol)
        self.assertEqual(parse_dcep(message.encode()), message)

    def test_ack_and_known_bytes(self) -> None:
        """ACK is one byte; an OPEN for a reliable ordered "chat" channel matches RFC 8832 §5.1 layout."""
        self.assertIsNone(parse_dcep(build_dcep_ack()))
        raw = bytes.fromhex("03 00 0000 00000000 0004 0000") + b"chat"
        self.assertEqual(parse_dcep(raw), DcepOpen(0, 0, 0, "chat", ""))
        self.assertEqual(DcepOpen(0, 0, 0, "chat", "").encode(), raw)

    @given(st.binary(max_size=64))
    def test_parse_random_bytes_raises_only_dcep_error(self, data: bytes) -> None:
        """Random bytes raise only DcepError."""
        try:
            parse_dcep(data)
        except DcepError:
            pass

    def test_bad_messages(self) -> None:
        """Truncated, padded, unknown and non-UTF-8 messages are refused."""
        good = DcepOpen(0, 0, 0, "ab", "c").encode()
        for bad in (b"", b"\x02\x00", b"\x07", good[:-1], good + b"x", good[:12] + b"\xff\xfe" + b"c"):
            with case(f"message {bad!r}"), self.assertRaises(DcepError):
                parse_dcep(bad)


# -- channels over a simulated link -------------------------------------------------------------------------

class Peers:
    """A DTLS server (voiceedge) and a DTLS client, each with a DataChannelManager, on a LossyLink."""

    def __init__(self, seed: int = 3, **link: Any) -> None:
        self.server_assoc = SctpAssociation(rng=random.Random(seed))
        self.client_assoc = SctpAssociation(rng=random.Random(seed + 1))
        self.server = DataChannelManager(self.server_assoc, dtls_server=True)
        self.client = DataChannelManager(self.client_assoc, dtls_server=False)
        self.net = LossyLink(
            self.server_assoc,
            self.client_assoc,
            seed=seed,
            drain_a=self.server.take_events,
            drain_b=self.client.take_events,
            **link,
        )

    def connect(self) -> None:
        """Both sides send INIT, as browsers do."""
        self.server_assoc.connect(0.0)
        self.client_assoc.connect(0.0)
        assert self.net.run_until(lambda: self.up(self.net.events_a) and self.up(self.net.events_b))

    @staticmethod
    def up(events: list[Any]) -> bool:
        return any(isinstance(e, Established) for e in events)

    def run_until(self, condition: Any, max_time: float = 120.0) -> None:
        assert self.net.run_until(condition, max_time=max_time)

    @property
    def server_events(self) -> list[Any]:
        return self.net.events_a

    @property
    def client_events(self) -> list[Any]:
        return self.net.events_b


def opened(events: list[Any]) -> list[DataChannel]:
    """Channels announced open."""
    return [e.channel for e in events if isinstance(e, ChannelOpened)]


def messages(events: list[Any], channel: DataChannel | None = None) -> list[str | bytes]:
    """Messages received (optionally on one channel)."""
    return [e.data for e in events if isinstance(e, MessageReceived) and (channel is None or e.channel is channel)]


def _chunks(packet: bytes) -> tuple[Any, ...]:
    from voiceedge.wire.sctp_chunks import parse_packet

    return parse_packet(packet).chunks


class DataChannelTests(SynchronousTestCase):
    """DataChannelManager on both ends of a simulated lossy link: open, messages, close, bad opens."""

    def test_server_opens_channel_with_odd_id(self) -> None:
        """voiceedge (DTLS server) opens a channel: odd id, OPEN then ACK, both sides see it open."""
        peers = Peers()
        peers.connect()
        channel = peers.server.open_channel("oai-events", protocol="json")
        self.assertEqual(channel.stream_id % 2, 1)
        self.assertIs(channel.state, ChannelState.CONNECTING)
        peers.run_until(lambda: opened(peers.client_events) and opened(peers.server_events))
        remote = opened(peers.client_events)[0]
        self.assertEqual((remote.label, remote.protocol, remote.stream_id, remote.ordered), ("oai-events", "json", 1, True))
        self.assertEqual(opened(peers.server_events), [channel])
        self.assertIs(channel.state, ChannelState.OPEN)
        self.assertEqual(peers.server.open_channel("second").stream_id, 3)

    def test_client_opens_channel_with_even_id(self) -> None:
        """The browser side (DTLS client) opens with an even id; voiceedge answers with ACK."""
        peers = Peers()
        peers.connect()
        channel = peers.client.open_channel("chat")
        self.assertEqual(channel.stream_id, 0)
        peers.run_until(lambda: opened(peers.client_events) and opened(peers.server_events))
        ours = opened(peers.server_events)[0]
        self.assertEqual(ours.label, "chat")
        self.assertEqual(ours.stream_id, 0)
        self.assertIs(ours.state, ChannelState.OPEN)
        acks = [
            p
            for target, p in peers.net.sent
            if target == 1 and PPID_DCEP in [getattr(c, "ppid", None) for c in _chunks(p)]
        ]
        self.assertTrue(acks, "the server sent a DCEP message (the ACK)")

    def test_open_before_association_is_up(self) -> None:
        """A channel opened before the handshake is announced once it completes."""
        peers = Peers()
        channel = peers.server.open_channel("early")
        channel.send("hello")
        peers.server_assoc.connect(0.0)
        peers.run_until(lambda: messages(peers.client_events) == ["hello"])
        self.assertEqual(opened(peers.client_events)[0].label, "early")

    def test_messages_of_every_kind_both_ways(self) -> None:
        """Text, binary, empty text, empty binary and a 256 KiB message, both ways, under loss."""
        peers = Peers(loss=0.1, jitter=0.02)
        peers.connect()
        channel = peers.server.open_channel("data")
        big = random.Random(1).randbytes(262144)
        sent = ["héllo", b"\x00\x01", "", b"", big, "end"]
        for m in sent:
            channel.send(m)  # ordered data may follow the OPEN before the ACK
        peers.run_until(lambda: len(messages(peers.client_events)) == len(sent), max_time=300)
        self.assertEqual(messages(peers.client_events), sent)
        self.assertEqual([type(m) for m in messages(peers.client_events)], [str, bytes, str, bytes, bytes, str])
        remote = opened(peers.client_events)[0]
        for m in reversed(sent):
            remote.send(m)
        peers.run_until(lambda: len(messages(peers.server_events)) == len(sent), max_time=300)
        self.assertEqual(messages(peers.server_events, channel), list(reversed(sent)))

    def test_unordered_channel_holds_data_until_ack(self) -> None:
        """An unordered channel sends nothing but the OPEN until the ACK, then its held messages."""
        peers = Peers()
        peers.connect()
        channel = peers.server.open_channel("u", ordered=False)
        channel.send(b"one")
        self.assertEqual(len(channel._held), 1)
        peers.run_until(lambda: len(messages(peers.client_events)) == 1)
        self.assertIs(opened(peers.client_events)[0].ordered, False)
        self.assertEqual(messages(peers.client_events), [b"one"])

    def test_data_before_ack_opens_channel(self) -> None:
        """Data on a channel whose ACK was lost still opens it (RFC 8832 §6)."""
        peers = Peers()
        peers.connect()
        channel = peers.server.open_channel("x")
        peers.run_until(lambda: bool(opened(peers.client_events)))
        channel.state = ChannelState.CONNECTING  # as if the ACK were lost
        peers.server.channels[channel.stream_id] = channel
        opened(peers.client_events)[0].send("hi")
        peers.run_until(lambda: messages(peers.server_events) == ["hi"])
        self.assertIs(channel.state, ChannelState.OPEN)

    def test_server_closes_via_stream_reset(self) -> None:
        """voiceedge's close() resets the outgoing stream; the peer resets its own; both see ChannelClosed; the id is free."""
        self.close_via_stream_reset("server")

    def test_client_closes_via_stream_reset(self) -> None:
        """The browser's close() resets its stream; voiceedge resets back; both see ChannelClosed; the id is free."""
        self.close_via_stream_reset("client")

    def close_via_stream_reset(self, closer: str) -> None:
        """``closer`` ("server" or "client") closes a channel: both sides see it closed, and the id opens again."""
        peers = Peers(loss=0.05)
        peers.connect()
        channel = peers.server.open_channel("c")
        peers.run_until(lambda: opened(peers.client_events) and opened(peers.server_events))
        remote = opened(peers.client_events)[0]
        channel.send("last words")
        (channel if closer == "server" else remote).close()
        peers.run_until(
            lambda: any(isinstance(e, ChannelClosed) for e in peers.client_events)
            and any(isinstance(e, ChannelClosed) for e in peers.server_events)
        )
        self.assertEqual(messages(peers.client_events), ["last words"])
        self.assertIs(channel.state, ChannelState.CLOSED)
        self.assertIs(remote.state, ChannelState.CLOSED)
        self.assertEqual(peers.server.channels, {})
        self.assertEqual(peers.client.channels, {})
        with self.assertRaises(ValueError):
            channel.send("too late")
        again = peers.server.open_channel("again")
        self.assertEqual(again.stream_id, channel.stream_id)
        peers.run_until(lambda: len(opened(peers.client_events)) == 2)
        again.send("fresh")
        peers.run_until(lambda: "fresh" in messages(peers.client_events))

    def test_association_close_closes_channels(self) -> None:
        """When the association ends, every channel is closed and Closed passes through."""
        peers = Peers()
        peers.connect()
        channel = peers.server.open_channel("a")
        peers.run_until(lambda: bool(opened(peers.server_events)))
        peers.client_assoc.abort("gone")
        peers.run_until(lambda: any(isinstance(e, Closed) for e in peers.server_events))
        self.assertIn(ChannelClosed(channel), peers.server_events)
        self.assertIs(channel.state, ChannelState.CLOSED)
        self.assertIs(peers.server_assoc.state, SctpState.CLOSED)

    def test_open_with_wrong_parity_or_duplicate_id_dropped(self) -> None:
        """The peer may not open on our parity, nor twice on one id."""
        peers = Peers()
        peers.connect()
        wrong = DcepOpen(0, 0, 0, "evil", "").encode()
        peers.client_assoc.send(1, PPID_DCEP, wrong)  # odd ids are the server's
        peers.client_assoc.send(2, PPID_DCEP, wrong)
        peers.client_assoc.send(2, PPID_DCEP, wrong)
        peers.client_assoc.send(4, PPID_DCEP, b"\x03garbage")
        peers.client_assoc.send(6, 53, b"data on no channel")
        peers.run_until(lambda: peers.server.dropped_messages == 4)
        self.assertEqual([c.stream_id for c in opened(peers.server_events)], [2])


# -- interop with aiortc's RTCSctpTransport (in memory, real asyncio time) ----------------------------------

class _FakeDtls:
    """Just enough of aiortc's RTCDtlsTransport for RTCSctpTransport: a role and a data pipe."""

    def __init__(self, role: str, outbox: Any) -> None:
        self.state = "connected"
        self._role = role
        self._outbox = outbox
        self.receiver: Any = None

    def _register_data_receiver(self, receiver: Any) -> None:
        self.receiver = receiver

    def _unregister_data_receiver(self, receiver: Any) -> None:
        self.receiver = None

    async def _send_data(self, data: bytes) -> None:
        self._outbox.put_nowait(data)


async def _interop_scenario() -> None:
    import asyncio

    from aiortc.rtcdatachannel import RTCDataChannel, RTCDataChannelParameters
    from aiortc.rtcsctptransport import RTCSctpCapabilities, RTCSctpTransport

    loop = asyncio.get_running_loop()
    to_ours: asyncio.Queue[bytes] = asyncio.Queue()
    ours = SctpAssociation()
    manager = DataChannelManager(ours, dtls_server=True)
    dtls = _FakeDtls("client", to_ours)  # aiortc plays the browser: DTLS client, even ids
    theirs = RTCSctpTransport(dtls)  # type: ignore[arg-type]
    events: list[Any] = []
    remote_channels: list[Any] = []
    remote_messages: list[Any] = []
    remote_closed = asyncio.Event()

    @theirs.on("datachannel")  # type: ignore[untyped-decorator,misc]
    def on_datachannel(channel: Any) -> None:
        remote_channels.append(channel)
        channel.on("message", remote_messages.append)
        channel.on("close", remote_closed.set)

    async def flush() -> None:
        events.extend(manager.take_events())
        for packet in ours.take_outgoing():
            await theirs._handle_data(packet)

    async def pump() -> None:
        while True:
            deadline = ours.deadline()
            timeout = 0.05 if deadline is None else max(0.0, min(0.05, deadline - loop.time()))
            try:
                packet = await asyncio.wait_for(to_ours.get(), timeout)
                ours.receive(packet, loop.time())
            except asyncio.TimeoutError:
                ours.handle_timeout(loop.time())
            await flush()

    async def until(condition: Any) -> None:
        for _ in range(400):
            if condition():
                return
            await asyncio.sleep(0.01)
        raise AssertionError("interop condition not met")

    pump_task = asyncio.ensure_future(pump())
    try:
        await theirs.start(RTCSctpCapabilities(maxMessageSize=262144), 5000)
        ours.connect(loop.time())  # both send INIT, as in a browser call
        await flush()
        await until(lambda: any(isinstance(e, Established) for e in events) and theirs.state == "connected")

        # We open a channel (odd id); aiortc announces it and ACKs.
        channel = manager.open_channel("oai-events", protocol="json")
        await flush()
        await until(lambda: remote_channels and any(isinstance(e, ChannelOpened) for e in events))
        remote = remote_channels[0]
        assert (remote.label, remote.protocol, remote.id) == ("oai-events", "json", 1)

        big = random.Random(5).randbytes(200_000)
        for m in ("hello", b"\x01\x02", "", big):
            channel.send(m)
        await flush()
        await until(lambda: len(remote_messages) == 4)
        assert remote_messages == ["hello", b"\x01\x02", "", big]

        for m in ("pong", big, b""):
            remote.send(m)
        await until(lambda: len(messages(events, channel)) == 3)
        assert messages(events, channel) == ["pong", big, b""]

        # aiortc opens one (even id); we answer with the ACK and both sides use it.
        theirs_channel = RTCDataChannel(theirs, RTCDataChannelParameters(label="chat"))
        await until(lambda: theirs_channel.readyState == "open" and len(opened(events)) == 2)
        ours_chat = opened(events)[1]
        assert (ours_chat.label, ours_chat.stream_id) == ("chat", 0)
        theirs_channel.send("from aiortc")
        await until(lambda: messages(events, ours_chat) == ["from aiortc"])

        # We close ours with a stream reset; aiortc resets back; both see it closed.
        channel.close()
        await flush()
        await until(lambda: remote_closed.is_set() and ChannelClosed(channel) in events)
        assert remote.readyState == "closed"

        # aiortc closes its channel; we follow.
        theirs_channel.close()
        await until(lambda: ChannelClosed(ours_chat) in events and theirs_channel.readyState == "closed")
        await theirs.stop()
        await until(lambda: any(isinstance(e, Closed) for e in events))
    finally:
        pump_task.cancel()


class AiortcInteropTests(SynchronousTestCase):
    """Our association and channels against aiortc's RTCSctpTransport, in memory, on asyncio's clock."""

    def test_interop_with_aiortc(self) -> None:
        """Handshake, DCEP both ways, text/binary/empty/200 KB messages and reset-close against aiortc."""
        import asyncio

        asyncio.run(asyncio.wait_for(_interop_scenario(), 30))
