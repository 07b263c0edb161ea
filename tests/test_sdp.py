"""Tests for voiceedge.wire.sdp: client fixtures, round trips, hostile input."""

from __future__ import annotations

import asyncio
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from tests.cases import case
from voiceedge.wire.errors import WireError
from voiceedge.wire.sdp import (
    MAX_LINE_LENGTH,
    Candidate,
    Codec,
    Fingerprint,
    MediaDescription,
    SdpError,
    SessionDescription,
    parse_sdp,
    serialize_sdp,
)

FIXTURES = Path(__file__).parent / "fixtures" / "sdp"
CLIENTS = ["chrome", "firefox", "safari", "pion", "aiortc"]


def load(client: str) -> str:
    """Return a fixture offer as written (CRLF)."""
    return (FIXTURES / f"{client}-offer.sdp").read_bytes().decode("utf-8")


MINIMAL = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n"
AUDIO = MINIMAL + "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"


BAD = [
    ("", "at least v="),
    ("o=- 1 1 IN IP4 0.0.0.0\r\nv=0\r\ns=-\r\n", "first line must be v="),
    ("v=1\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\n", "version 0"),
    ("v=0\r\ns=-\r\no=- 1 1 IN IP4 0.0.0.0\r\n", "second line must be o="),
    ("v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\nt=0 0\r\n", "third line must be s="),
    ("v=0\r\no=- x 1 IN IP4 0.0.0.0\r\ns=-\r\n", "session id is not a number"),
    ("v=0\r\no=- 1 1 IN IP4\r\ns=-\r\n", "6 fields"),
    (MINIMAL + "m=audio\r\n", "m= needs"),
    (MINIMAL + "m=audio 9 RTP/AVP\r\n", "m= needs"),
    (MINIMAL + "m=audio nine RTP/AVP 0\r\n", "m= port is not a number"),
    (MINIMAL + "m=audio 70000 RTP/AVP 0\r\n", "out of range"),
    (MINIMAL + "m=audio 9/2 RTP/AVP 0\r\n", "port counts"),
    (MINIMAL + "m=audio ９ RTP/AVP 0\r\n", "non-ASCII"),
    (MINIMAL + "m=audio 9 RTP/AVP 0\r\nv=0\r\n", "not allowed in a media section"),
    (MINIMAL + "x=1\r\n", "unexpected x="),
    (MINIMAL + "s=again\r\n", "unexpected s="),
    (MINIMAL + "hello\r\n", "'<type>=<value>'"),
    (MINIMAL + "a=foo\x00\r\n", "control character"),
    (MINIMAL + "a=foo\rbar\r\n", "control character"),
    (MINIMAL + "a=\r\n", "bad attribute name"),
    (MINIMAL + "a=ice-ufrag:bad ufrag!\r\n", "bad ice-ufrag"),
    (MINIMAL + "a=ice-pwd:ünicode-password-xxxxxx\r\n", "non-ASCII"),
    (MINIMAL + "a=fingerprint:sha-256\r\n", "fingerprint needs"),
    (MINIMAL + "a=fingerprint:sha-256 XY:ZZ\r\n", "not colon-separated hex"),
    (MINIMAL + "a=setup:sideways\r\n", "unknown setup role"),
    (MINIMAL + "a=group:\r\n", "group needs"),
    ("v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=now\r\n", "t= needs"),
    (MINIMAL + "c=IN IP4\r\n", "c= needs"),
    (AUDIO + "a=rtpmap:111 opus\r\n", "rtpmap needs"),
    (AUDIO + "a=rtpmap:300 opus/48000\r\n", "out of range"),
    (AUDIO + "a=rtpmap:111 opus/fast/2\r\n", "clock rate is not a number"),
    (AUDIO + "a=rtpmap:111 opus/48000/-2\r\n", "channels is not a number"),
    (AUDIO + "a=rtpmap:111 opus/48000/2\r\na=rtpmap:111 opus/48000/2\r\n", "second rtpmap"),
    (AUDIO + "a=fmtp:abc x=1\r\n", "fmtp payload type"),
    (AUDIO + "a=candidate:1 1 udp 1 host 9 typ\r\n", "candidate needs"),
    (AUDIO + "a=candidate:1 1 udp 1 host 9 type host\r\n", "candidate needs"),
    (AUDIO + "a=candidate:1 1 udp -1 host 9 typ host\r\n", "priority is not a number"),
    (AUDIO + "a=candidate:1 1 udp 1 host 1_0 typ host\r\n", "port is not a number"),
    (AUDIO + "a=candidate:1 0 udp 1 host 10 typ host\r\n", "component out of range"),
    (AUDIO + "a=sctp-port:x\r\n", "sctp-port is not a number"),
    (AUDIO + "a=max-message-size:5x\r\n", "max-message-size is not a number"),
    (AUDIO + "a=ssrc:x cname:y\r\n", "ssrc is not a number"),
    (AUDIO + "a=extmap:0 urn:x\r\n", "extmap id out of range"),
    (AUDIO + "a=mid:0\r\nm=audio 9 RTP/AVP 0\r\na=mid:0\r\n", "duplicate mid"),
    (AUDIO + "a=mid:a b\r\n", "bad mid"),
]


_token_alphabet = st.sampled_from("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._")
tokens = st.text(_token_alphabet, min_size=1, max_size=12)
ice_strings = st.text(st.sampled_from("abcXYZ019+/"), min_size=4, max_size=40)
ints16 = st.integers(0, 65535)
hex_fp = st.lists(st.integers(0, 255), min_size=1, max_size=64).map(
    lambda bs: ":".join(f"{b:02X}" for b in bs)
)
fingerprints = st.builds(Fingerprint, st.sampled_from(["sha-256", "sha-1", "sha-512"]), hex_fp)
connections = st.one_of(st.none(), st.builds(lambda a: f"IN IP4 192.0.2.{a}", st.integers(0, 255)))
free_text = st.text(
    st.characters(blacklist_characters="\x00\r\n", blacklist_categories=["Cs"]), max_size=20
)
other_attr = st.builds(lambda n, v: f"a=x-{n}:{v}", tokens, free_text)


@st.composite
def codecs(draw: st.DrawFn) -> list[Codec]:
    """Codecs with distinct payload types."""
    pts = draw(st.lists(st.integers(0, 127), unique=True, max_size=5))
    out = []
    for pt in pts:
        params = draw(st.dictionaries(tokens, st.one_of(st.just(""), tokens), max_size=3))
        fbs = draw(st.lists(st.lists(tokens, min_size=1, max_size=2).map(" ".join), max_size=3))
        out.append(Codec(pt, draw(tokens), draw(st.integers(1, 2**32 - 1)), draw(st.integers(1, 255)), params, fbs))
    return out


candidates = st.builds(
    Candidate, ice_strings, st.integers(1, 256), st.sampled_from(["udp", "tcp", "UDP"]),
    st.integers(0, 2**32 - 1), st.sampled_from(["192.0.2.1", "2001:db8::1", "x.local"]), ints16,
    st.sampled_from(["host", "srflx", "relay"]), st.lists(tokens, max_size=4),
)


@st.composite
def media_descriptions(draw: st.DrawFn, mid: str | None) -> MediaDescription:
    """A media description; SSRCs come with their a=ssrc lines, as parsed ones do."""
    ssrcs = draw(st.lists(st.integers(0, 2**32 - 1), unique=True, max_size=3))
    other = draw(st.lists(other_attr, max_size=3))
    other += [f"a=ssrc:{s} cname:{draw(tokens)}" for s in ssrcs]
    other = draw(st.lists(st.builds(lambda n: f"b=AS:{n}", ints16), max_size=1)) + other
    return MediaDescription(
        kind=draw(st.sampled_from(["audio", "video", "application", "text"])),
        port=draw(ints16),
        proto=draw(st.sampled_from(["UDP/TLS/RTP/SAVPF", "UDP/DTLS/SCTP", "RTP/AVP"])),
        formats=draw(st.lists(tokens, min_size=1, max_size=5)),
        mid=mid,
        codecs=draw(codecs()),
        extmaps=draw(st.lists(st.tuples(st.integers(1, 255), tokens), max_size=3)),
        rtcp_mux=draw(st.booleans()),
        rtcp_rsize=draw(st.booleans()),
        direction=draw(st.sampled_from([None, "sendrecv", "sendonly", "recvonly", "inactive"])),
        ice_ufrag=draw(st.one_of(st.none(), ice_strings)),
        ice_pwd=draw(st.one_of(st.none(), ice_strings)),
        ice_options=draw(st.lists(tokens, max_size=2)),
        fingerprints=draw(st.lists(fingerprints, max_size=2)),
        setup=draw(st.sampled_from([None, "actpass", "active", "passive", "holdconn"])),
        candidates=draw(st.lists(candidates, max_size=3)),
        end_of_candidates=draw(st.booleans()),
        sctp_port=draw(st.one_of(st.none(), ints16)),
        max_message_size=draw(st.one_of(st.none(), st.integers(0, 2**40))),
        ssrcs=ssrcs,
        other=other,
        connection=draw(connections),
    )


@st.composite
def session_descriptions(draw: st.DrawFn) -> SessionDescription:
    """A whole session description with unique mids."""
    mids = draw(st.lists(st.one_of(st.none(), tokens), max_size=4))
    seen: set[str] = set()
    unique = []
    for mid in mids:
        unique.append(None if mid in seen else mid)
        if mid is not None:
            seen.add(mid)
    return SessionDescription(
        origin=f"{draw(tokens)} {draw(st.integers(0, 2**63))} {draw(st.integers(0, 9))} IN IP4 0.0.0.0",
        session_name=draw(free_text),
        ice_lite=draw(st.booleans()),
        ice_ufrag=draw(st.one_of(st.none(), ice_strings)),
        ice_pwd=draw(st.one_of(st.none(), ice_strings)),
        ice_options=draw(st.lists(tokens, max_size=2)),
        fingerprints=draw(st.lists(fingerprints, max_size=2)),
        setup=draw(st.sampled_from([None, "actpass", "active", "passive"])),
        groups=draw(st.lists(st.tuples(st.just("BUNDLE"), st.lists(tokens, max_size=3)), max_size=2)),
        msid_semantic=draw(st.sampled_from([None, "WMS *", "WMS", "WMS*"])),
        media=[draw(media_descriptions(mid)) for mid in unique],
        other=draw(st.lists(other_attr, max_size=3)),
        connection=draw(connections),
        timing=draw(st.sampled_from(["0 0", "3034423619 3042462419"])),
    )


_line_prefixes = st.sampled_from(
    ["v=0", "o=- 1 1 IN IP4 0.0.0.0", "s=-", "t=0 0", "c=IN IP4 1.2.3.4", "m=audio 9 RTP/AVP 0",
     "m=application 9 UDP/DTLS/SCTP webrtc-datachannel", "a=rtpmap:", "a=fmtp:", "a=rtcp-fb:",
     "a=candidate:", "a=extmap:", "a=ssrc:", "a=mid:", "a=group:", "a=fingerprint:", "a=setup:",
     "a=ice-ufrag:", "a=ice-pwd:", "a=sctp-port:", "a=max-message-size:", "a=msid-semantic:", "b=", "a="]
)


class FixtureTests(SynchronousTestCase):
    """Real offers (the fixtures of five clients, and a live aiortc one) parse and round-trip."""

    def test_fixture_round_trip(self) -> None:
        """Every client's offer parses, and serialize/parse gives the same description."""
        for client in CLIENTS:
            with case(f"{client} offer"):
                desc = parse_sdp(load(client))
                text = serialize_sdp(desc)
                self.assertTrue(text.endswith("\r\n"))
                self.assertNotIn("\n", text.replace("\r\n", ""))
                self.assertEqual(parse_sdp(text), desc)

    def test_fixture_lf_only(self) -> None:
        """LF line endings parse like CRLF."""
        for client in CLIENTS:
            with case(f"{client} offer"):
                self.assertEqual(parse_sdp(load(client).replace("\r\n", "\n")), parse_sdp(load(client)))

    def test_fixture_common_shape(self) -> None:
        """Every fixture: BUNDLE 0 1, opus/48000/2 audio with rtcp-mux, a data channel m-line."""
        for client in CLIENTS:
            with case(f"{client} offer"):
                desc = parse_sdp(load(client))
                self.assertEqual(desc.groups, [("BUNDLE", ["0", "1"])])
                audio, app = desc.media
                self.assertEqual((audio.kind, audio.mid, audio.proto), ("audio", "0", "UDP/TLS/RTP/SAVPF"))
                opus = audio.codec("OPUS")
                self.assertIsNotNone(opus)
                self.assertEqual((opus.clock_rate, opus.channels), (48000, 2))
                self.assertTrue(audio.rtcp_mux)
                self.assertEqual(
                    (app.kind, app.mid, app.proto, app.formats),
                    ("application", "1", "UDP/DTLS/SCTP", ["webrtc-datachannel"]),
                )
                self.assertEqual(app.sctp_port, 5000)
                for media in desc.media:
                    creds = desc.ice_credentials(media)
                    self.assertIsNotNone(creds)
                    self.assertEqual(desc.dtls_fingerprints(media)[0].algorithm, "sha-256")
                    self.assertEqual(desc.dtls_setup(media), "actpass")

    def test_chrome_details(self) -> None:
        """Chrome: Opus 111 with fmtp, red/G722/PCMU/PCMA/CN/DTMF, four extmaps, host candidates."""
        desc = parse_sdp(load("chrome"))
        audio, app = desc.media
        self.assertEqual(audio.formats, ["111", "63", "9", "0", "8", "13", "110", "126"])
        self.assertEqual(
            audio.codecs[0],
            Codec(111, "opus", 48000, 2, {"minptime": "10", "useinbandfec": "1"}, ["transport-cc"]),
        )
        self.assertEqual(
            [(c.payload_type, c.name, c.clock_rate, c.channels) for c in audio.codecs[1:]],
            [
                (63, "red", 48000, 2), (9, "G722", 8000, 1), (0, "PCMU", 8000, 1), (8, "PCMA", 8000, 1),
                (13, "CN", 8000, 1), (110, "telephone-event", 48000, 1), (126, "telephone-event", 8000, 1),
            ],
        )
        self.assertIsNotNone(audio.codec("red"))
        self.assertEqual(audio.codec("red").parameters, {"111/111": ""})  # type: ignore[union-attr]
        self.assertEqual(
            audio.extmaps,
            [
                (1, "urn:ietf:params:rtp-hdrext:ssrc-audio-level"),
                (2, "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"),
                (3, "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"),
                (4, "urn:ietf:params:rtp-hdrext:sdes:mid"),
            ],
        )
        self.assertTrue(audio.rtcp_rsize)
        self.assertEqual(audio.direction, "sendrecv")
        self.assertEqual(audio.ice_ufrag, "Yq5e")
        self.assertEqual(len(audio.ice_ufrag), 4)
        self.assertEqual(audio.ice_options, ["trickle"])
        self.assertEqual(audio.setup, "actpass")
        self.assertEqual(
            audio.candidates[0],
            Candidate(
                "1467250027", 1, "udp", 2122260223, "192.168.1.23", 54321, "host",
                ["generation", "0", "network-id", "1", "network-cost", "10"],
            ),
        )
        self.assertEqual(audio.candidates[2].transport, "tcp")
        self.assertEqual(audio.candidates[2].extra[:2], ["tcptype", "active"])
        self.assertEqual(audio.ssrcs, [2863311530])
        self.assertEqual(audio.connection, "IN IP4 192.168.1.23")
        self.assertIn("a=rtcp:9 IN IP4 0.0.0.0", audio.other)
        self.assertEqual(app.max_message_size, 262144)
        self.assertEqual(desc.msid_semantic, "WMS 3f6a9c1e-8d2b-4c7a-9e55-0b1d2c3e4f50")
        self.assertEqual(desc.other, ["a=extmap-allow-mixed"])

    def test_firefox_details(self) -> None:
        """Firefox: session-level fingerprint, opus 109, extmap with a direction kept verbatim."""
        desc = parse_sdp(load("firefox"))
        audio, app = desc.media
        self.assertEqual(audio.fingerprints, [])
        self.assertEqual(len(desc.fingerprints), 1)
        self.assertEqual(desc.dtls_fingerprints(audio), desc.fingerprints)
        self.assertEqual(desc.ice_options, ["trickle"])
        opus = audio.codec("opus")
        self.assertIsNotNone(opus)
        self.assertEqual(opus.payload_type, 109)
        self.assertEqual(opus.parameters, {"maxplaybackrate": "48000", "stereo": "1", "useinbandfec": "1"})
        self.assertEqual(audio.codec("G722"), Codec(9, "G722", 8000, 1))
        self.assertEqual(audio.codec("telephone-event"), Codec(101, "telephone-event", 8000, 1, {"0-15": ""}))
        self.assertIn("a=extmap:2/recvonly urn:ietf:params:rtp-hdrext:csrc-audio-level", audio.other)
        self.assertEqual([i for i, _ in audio.extmaps], [1, 3])
        self.assertTrue(audio.end_of_candidates)
        self.assertEqual(audio.candidates[0].transport, "UDP")
        self.assertEqual(app.max_message_size, 1073741823)

    def test_safari_and_pion_details(self) -> None:
        """Safari trickles (no candidates); Pion puts the fingerprint at session level, rtcp-fb with a trailing space."""
        safari = parse_sdp(load("safari"))
        self.assertEqual(safari.media[0].candidates, [])
        self.assertEqual(safari.media[0].port, 9)
        pion = parse_sdp(load("pion"))
        audio, app = pion.media
        self.assertEqual(audio.fingerprints, [])
        self.assertEqual(pion.fingerprints[0].algorithm, "sha-256")
        self.assertEqual(audio.codec("opus").rtcp_feedback, ["transport-cc"])  # type: ignore[union-attr]
        self.assertEqual([c.component for c in audio.candidates], [1, 2, 1, 2])
        self.assertEqual(pion.msid_semantic, "WMS*")
        self.assertIsNone(app.max_message_size)
        self.assertEqual(app.direction, "sendrecv")

    def test_aiortc_fixture_details(self) -> None:
        """aiortc: three fingerprint hashes per m-line, opus on 96."""
        desc = parse_sdp(load("aiortc"))
        audio = desc.media[0]
        self.assertEqual([f.algorithm for f in audio.fingerprints], ["sha-256", "sha-384", "sha-512"])
        self.assertEqual(audio.codec("opus"), Codec(96, "opus", 48000, 2))

    def test_live_aiortc_offer(self) -> None:
        """An offer aiortc generates now (audio transceiver + data channel) parses and round-trips."""
        from aiortc import RTCConfiguration, RTCPeerConnection

        async def make_offer() -> str:
            pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
            try:
                pc.addTransceiver("audio")
                pc.createDataChannel("events")
                await pc.setLocalDescription(await pc.createOffer())
                return pc.localDescription.sdp
            finally:
                await pc.close()

        desc = parse_sdp(asyncio.run(make_offer()))
        audio, app = desc.media
        self.assertIsNotNone(audio.codec("opus"))
        self.assertTrue(audio.rtcp_mux)
        self.assertIsNotNone(desc.ice_credentials(audio))
        self.assertEqual(desc.dtls_setup(audio), "actpass")
        self.assertEqual(app.sctp_port, 5000)
        self.assertEqual(app.formats, ["webrtc-datachannel"])
        self.assertEqual(parse_sdp(serialize_sdp(desc)), desc)


class DescriptionTests(SynchronousTestCase):
    """Session-level fallbacks, tolerated oddities and serializing a built description."""

    def test_session_level_fallbacks(self) -> None:
        """ICE credentials, fingerprints and setup fall back to session level, media level wins."""
        desc = parse_sdp(
            MINIMAL
            + "a=ice-ufrag:sess\r\na=ice-pwd:sessionpasswordsessionpw\r\na=setup:active\r\n"
            + "a=fingerprint:SHA-256 ab:cd\r\n"
            + "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"
            + "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=ice-ufrag:medi\r\na=setup:actpass\r\n"
            + "a=fingerprint:sha-1 00:11\r\n"
        )
        first, second = desc.media
        self.assertEqual(desc.ice_credentials(first), ("sess", "sessionpasswordsessionpw"))
        self.assertEqual(desc.ice_credentials(second), ("medi", "sessionpasswordsessionpw"))
        self.assertEqual(desc.dtls_fingerprints(first), [Fingerprint("sha-256", "AB:CD")])
        self.assertEqual(desc.dtls_fingerprints(second), [Fingerprint("sha-1", "00:11")])
        self.assertEqual((desc.dtls_setup(first), desc.dtls_setup(second)), ("active", "actpass"))
        self.assertIsNone(desc.group("bundle"))

    def test_no_credentials(self) -> None:
        """Without any ice-ufrag the credentials are None."""
        desc = parse_sdp(AUDIO + "a=ice-pwd:sessionpasswordsessionpw\r\n")
        self.assertIsNone(desc.ice_credentials(desc.media[0]))

    def test_tolerated_oddities(self) -> None:
        """rtpmap for a pt not in m=, unknown kinds, blank lines, fmtp for an unknown pt."""
        desc = parse_sdp(
            MINIMAL
            + "\r\n"
            + "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"
            + "a=rtpmap:96 opus/48000/2\r\na=fmtp:100 x=1\r\na=rtcp-fb:* nack\r\n"
            + "a=fmtp:96 minptime=10; useinbandfec=1\r\n"
            + "m=message 9 TCP/MSRP *\r\nb=AS:30\r\n"
        )
        audio, msg = desc.media
        self.assertEqual(audio.codecs, [Codec(96, "opus", 48000, 2, {"minptime": "10", "useinbandfec": "1"})])
        self.assertEqual(audio.other, ["a=fmtp:100 x=1", "a=rtcp-fb:* nack"])
        self.assertEqual((msg.kind, msg.formats, msg.other), ("message", ["*"], ["b=AS:30"]))
        self.assertEqual(parse_sdp(serialize_sdp(desc)), desc)

    def test_serialize_built_description(self) -> None:
        """A description built in code serializes in RFC 8866 order and parses back."""
        desc = SessionDescription(
            origin="- 7 1 IN IP4 127.0.0.1",
            ice_lite=True,
            groups=[("BUNDLE", ["a"])],
            media=[
                MediaDescription(
                    "audio", 3478, "UDP/TLS/RTP/SAVPF", ["111"], mid="a",
                    codecs=[Codec(111, "opus", 48000, 2, {"useinbandfec": "1"})],
                    rtcp_mux=True, connection="IN IP4 192.0.2.1", ssrcs=[5],
                    candidates=[Candidate("1", 1, "udp", 1, "192.0.2.1", 3478, "host")],
                )
            ],
        )
        text = serialize_sdp(desc)
        self.assertEqual(
            text,
            "v=0\r\no=- 7 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=ice-lite\r\na=group:BUNDLE a\r\n"
                "m=audio 3478 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 192.0.2.1\r\na=mid:a\r\na=rtcp-mux\r\n"
                "a=rtpmap:111 opus/48000/2\r\na=fmtp:111 useinbandfec=1\r\n"
                "a=candidate:1 1 udp 1 192.0.2.1 3478 typ host\r\na=ssrc:5 cname:voiceedge\r\n",
        )
        back = parse_sdp(text)
        self.assertEqual(back.media[0].ssrcs, [5])
        self.assertEqual(back.media[0].other, ["a=ssrc:5 cname:voiceedge"])


class ErrorTests(SynchronousTestCase):
    """Malformed or oversized input raises SdpError (a WireError) naming the line and the reason."""

    def test_bad_input(self) -> None:
        """Each malformed input raises SdpError whose message names the reason."""
        for text, reason in BAD:
            with case(f"{reason}: {text!r}"):
                with self.assertRaises(SdpError) as info:
                    parse_sdp(text)
                self.assertRegex(str(info.exception), reason)
                self.assertIsInstance(info.exception, WireError)

    def test_error_names_line_number(self) -> None:
        """The message starts with the 1-based line number."""
        with self.assertRaises(SdpError) as info:
            parse_sdp(AUDIO + "a=sctp-port:x\r\n")
        self.assertEqual(info.exception.lineno, 6)
        self.assertTrue(str(info.exception).startswith("line 6: "))

    def test_limits(self) -> None:
        """Over-long lines, too many lines and too many m-lines are refused."""
        with self.assertRaises(SdpError) as caught:
            parse_sdp(MINIMAL + "a=x-long:" + "y" * MAX_LINE_LENGTH + "\r\n")
        self.assertRegex(str(caught.exception), "longer than")
        with self.assertRaises(SdpError) as caught:
            parse_sdp(MINIMAL + "a=x-y\r\n" * 1000)
        self.assertRegex(str(caught.exception), "more than 1000 lines")
        with self.assertRaises(SdpError) as caught:
            parse_sdp(MINIMAL + "m=audio 9 RTP/AVP 0\r\n" * 65)
        self.assertRegex(str(caught.exception), "more than 64 m=")
        # exactly at the limits is fine
        parse_sdp(MINIMAL + "m=audio 9 RTP/AVP 0\r\n" * 64)
        parse_sdp(MINIMAL + "a=x-long:" + "y" * (MAX_LINE_LENGTH - 9) + "\r\n")

    def test_not_text(self) -> None:
        """Bytes instead of str is an SdpError, not a TypeError."""
        with self.assertRaises(SdpError):
            parse_sdp(b"v=0\r\n")  # type: ignore[arg-type]

    def test_non_ascii_free_text_allowed(self) -> None:
        """UTF-8 is fine in s= and in attributes this codec does not interpret."""
        desc = parse_sdp("v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=Grüße\r\na=x-note:café\r\n")
        self.assertEqual(desc.session_name, "Grüße")
        self.assertEqual(desc.other, ["a=x-note:café"])


class PropertyTests(SynchronousTestCase):
    """Generated descriptions round-trip; noise and mutated fixtures raise only SdpError."""

    @settings(max_examples=200, deadline=None)
    @given(session_descriptions())
    def test_round_trip_generated(self, desc: SessionDescription) -> None:
        """parse(serialize(x)) == x for generated descriptions."""
        self.assertEqual(parse_sdp(serialize_sdp(desc)), desc)

    @settings(max_examples=300, deadline=None)
    @given(st.text(max_size=300))
    def test_random_text_only_sdp_error(self, text: str) -> None:
        """Random text raises nothing but SdpError."""
        try:
            parse_sdp(text)
        except SdpError:
            pass

    @settings(max_examples=500, deadline=None)
    @given(st.lists(st.tuples(_line_prefixes, st.text(max_size=30)), max_size=30))
    def test_sdp_shaped_noise_only_sdp_error(self, lines: list[tuple[str, str]]) -> None:
        """Lines that look like SDP with random tails raise nothing but SdpError."""
        text = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\n" + "".join(p + t + "\r\n" for p, t in lines)
        try:
            desc = parse_sdp(text)
        except SdpError:
            return
        self.assertEqual(parse_sdp(serialize_sdp(desc)), desc)

    @settings(max_examples=200, deadline=None)
    @given(st.sampled_from(CLIENTS), st.data())
    def test_mutated_fixture_only_sdp_error(self, client: str, data: st.DataObject) -> None:
        """A fixture with one line replaced by noise raises nothing but SdpError."""
        lines = load(client).split("\r\n")
        i = data.draw(st.integers(0, len(lines) - 1))
        keep = data.draw(st.integers(0, len(lines[i])))
        lines[i] = lines[i][:keep] + data.draw(st.text(max_size=20))
        try:
            desc = parse_sdp("\r\n".join(lines))
        except SdpError:
            return
        self.assertEqual(parse_sdp(serialize_sdp(desc)), desc)
