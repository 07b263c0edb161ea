"""Seed the fuzz corpus from real traffic: ``python -m tests.fuzz_seeds [DIR]`` (default tests/fuzz/corpus).

The seeds are what real peers send: the SDP offers in tests/fixtures/sdp (Chromium, Firefox,
Safari, Pion, aiortc), and a whole call captured in memory (tests/memory_call.py: ICE checks,
a pyOpenSSL DTLS handshake, SRTP and SRTCP, SCTP with DCEP and oai-events), cut into each
target's input format. Files are named by their SHA-1, so running it again adds nothing twice.
"""

from __future__ import annotations

import hashlib
import struct
import sys
from pathlib import Path

from twisted.internet.task import Clock

from tests import memory_call as mc
from voiceedge.agents import bridge_protocol as bp
from voiceedge.wire import encap, rtcp
from voiceedge.wire.route_token import Route, RouteTokenCodec

REPO = Path(__file__).resolve().parent.parent
CORPUS = REPO / "tests" / "fuzz" / "corpus"


def chunk(data: bytes) -> bytes:
    """The targets' length-prefixed piece (tests.fuzz_targets.Input.chunk)."""
    return struct.pack("!H", len(data)) + data[:65535]


def capture_call() -> tuple[list[tuple[str, bytes]], list[tuple[str, bytes]]]:
    """(what the client received, what it sent) over one whole echo call with events."""
    clock = Clock()
    clock.advance(1_000_000)
    transceiver, written = mc.make_transceiver(clock)
    sent: list[tuple[str, bytes]] = []

    def send(data: bytes) -> None:
        kind = "stun" if data[0] < 4 else "dtls" if 20 <= data[0] <= 63 else "srtp"
        sent.append((kind, data))
        transceiver.datagram_received(data, mc.CLIENT)

    client = mc.open_client(transceiver, send)
    client.capture = []

    def run(rounds: int = 40) -> None:
        for _ in range(rounds):
            batch = list(written)
            written.clear()
            for datagram, destination in batch:
                if destination == mc.CLIENT:
                    client.deliver(datagram, clock.seconds())
            client.timers(clock.seconds())
            if not written:
                clock.advance(0.02)

    client.check()
    client.start_dtls(clock.seconds())
    run()
    client.open_events(clock.seconds())
    run()
    for text in ('{"type":"session.update","session":{"turn_detection":null}}', '{"type":"x","a":[1,{"b":"\\u00e9"}]}'):
        client.send_event(text, clock.seconds())
        run(5)
    from tests.fuzz_targets import TARGETS  # noqa: F401 - the same modules the targets use

    frame = b"\xfc\xff\xfe" + bytes(40)
    for _ in range(5):
        client.send_rtp(frame)
        run(3)
    client.send_rtcp(struct.pack("!BBHI", 0x80, 201, 1, 1234))
    run(5)
    sent_plain = [("sctp", data) for kind, data in client.capture if kind == "sctp"]
    transceiver.stop()
    return client.capture, sent + sent_plain


def seeds() -> dict[str, list[bytes]]:
    """Every target's seeds."""
    received, sent = capture_call()
    out: dict[str, list[bytes]] = {name: [] for name in __import__("tests.fuzz_targets").fuzz_targets.TARGETS}
    offers = [p.read_bytes() for p in sorted((REPO / "tests" / "fixtures" / "sdp").glob("*offer*.sdp"))]
    offers.append(mc.offer_sdp(mc.CLIENT_CERT.fingerprint).encode())
    out["sdp_offer"] += offers
    out["sdp_answer"] += offers
    stun_messages = [d for k, d in received + sent if k == "stun"]
    out["stun"] += stun_messages
    out["rtp"] += [d for k, d in received if k == "rtp"]
    out["rtcp"] += [d for k, d in received if k == "rtcp"]
    # A profile byte, then packets: plaintext RTP to protect (1), and the same raw (0).
    rtp_packets = [d for k, d in received if k == "rtp"][:3]
    out["srtp_io"] += [
        bytes([profile]) + b"".join(b"\x01" + chunk(p) + b"\x00" + chunk(p) for p in rtp_packets)
        for profile in range(4)
    ]
    out["rtcp"].append(rtcp.build_rtcp([rtcp.ReceiverReport(1234, [rtcp.ReportBlock(1, 0, 0, 5, 3, 0, 0)])]))
    sctp_packets = [d for k, d in received + sent if k == "sctp"]
    out["sctp_chunks"] += sctp_packets
    client_sctp = [d for k, d in sent if k == "sctp"]
    out["sctp_association"].append(b"".join(bytes([33]) + chunk(p) for p in client_sctp) + b"\x05")
    out["dcep"] += [bytes([3, 0, 0, 0, 0, 0, 0, 0, 0, 10, 0, 0]) + b"oai-events", b"\x02"]
    dtls = [d for k, d in sent if k == "dtls"]
    out["dtls_intake"].append(b"".join(b"\x01" + chunk(d) for d in dtls))
    out["dtls_intake"] += [b"\x00" + chunk(d) for d in dtls[:2]]
    codec = RouteTokenCodec({1: b"k" * 32, 7: b"q" * 32}, 1)
    token = codec.issue(Route(3, ("127.0.0.1", 7000)), nonce=b"\x01" * 8)
    token6 = codec.issue(Route(9, ("::1", 7000)), nonce=b"\x02" * 8)
    out["route_token"] += [token.encode(), token6.encode(), f"{token}:cli1".encode()]
    out["encap"] += [
        encap.encode(encap.Envelope(("198.51.100.1", 5000), ("127.0.0.1", 3478)), stun_messages[0]),
        encap.encode(encap.Envelope(("2001:db8::1", 5000), ("::1", 3478)), b"\x80" * 20),
    ]
    out["bridge_protocol"] += [
        bp.encode_audio(bp.AudioMessage(bp.KIND_OUTPUT_AUDIO, bytes(64), 960, 20000, True)),
        bp.session_start("s1", 48000).encode(),
        b'{"type":"client.event","event":{"type":"response.created"}}',
        b'{"type":"session.end","reason":"bye","drain":true}',
        b'{"type":"output_audio.clear"}',
    ]
    events = [d for k, d in received if k == "event"] + [
        b'{"type":"conversation.item.create","item":{"content":[{"type":"input_text","text":"hi"}]}}'
    ]
    out["oai_events"] += [b"".join(chunk(e) + bytes([n % 2]) for n, e in enumerate(events))]
    # The session: a check, the handshake, time, events, RTP, RTCP; then spoofed sources.
    session = (
        bytes([41, 0]) + bytes([75, 0]) + bytes([141, 0]) * 6 + bytes([115, 0]) + bytes([141, 0]) * 3
        + bytes([121, 0]) + chunk(b'{"type":"x"}') + bytes([90, 0]) + chunk(b"\xfc\xff\xfe") + b"\x00"
        + bytes([100, 0]) + chunk(struct.pack("!BBHI", 0x80, 201, 1, 1234)) + bytes([150, 0])
        + bytes([41, 2]) + bytes([10, 3]) + chunk(dtls[0]) + bytes([43, 1]) + bytes([160, 0])
    )
    out["session"].append(session)
    out["session"].append(bytes([41, 2]) + bytes([42, 3]) + bytes([10, 4]) + chunk(stun_messages[0]))
    relay = (
        bytes([61, 1]) + bytes([131, 0]) + chunk(stun_messages[-1]) + bytes([131, 1]) + chunk(b"\x16" * 40)
        + bytes([10, 1]) + chunk(dtls[0]) + bytes([10, 2]) + chunk(b"\x80" * 30) + bytes([210, 0])
        + bytes([63, 3]) + bytes([130, 3]) + chunk(b"\x16" * 20) + bytes([250, 0])
    )
    out["relay"].append(relay)
    out["opus"] += opus_seeds()
    return out


def opus_seeds() -> list[bytes]:
    """Scripts for the opus target: real payloads (with FEC) decoded, a loss recovered, concealment, encoding."""
    import math

    from voiceedge.media.opus import OpusEncoder

    scripts = []
    for index, rate in ((2, 16000), (4, 48000)):
        encoder = OpusEncoder(rate, packet_loss_percent=10)
        n = rate // 50
        payloads = [
            encoder.encode(struct.pack(f"<{n}h", *(int(8000 * math.sin(2 * math.pi * 220 * (f * n + i) / rate)) for i in range(n))))
            for f in range(6)
        ]
        script = bytes([index])
        for payload in payloads[:3]:
            script += b"\x00" + chunk(payload)
        script += b"\x01" + chunk(payloads[4]) + b"\x00" + chunk(payloads[4]) + bytes([2 | 8 << 2]) + chunk(b"")
        script += b"\x03" + chunk(bytes(range(256)) * 4) + b"\x00" + chunk(bytes([1 << 3 | 3, 6]))
        scripts.append(script)
    return scripts


def write(directory: Path = CORPUS) -> int:
    """Write the seeds under ``directory/<target>/``; the number of new files."""
    new = 0
    for name, inputs in seeds().items():
        target_dir = directory / name
        target_dir.mkdir(parents=True, exist_ok=True)
        for data in inputs:
            path = target_dir / hashlib.sha1(data).hexdigest()
            if not path.exists():
                path.write_bytes(data)
                new += 1
    return new


if __name__ == "__main__":
    print(f"{write(Path(sys.argv[1]) if len(sys.argv) > 1 else CORPUS)} new seeds")
