# -*- test-case-name: tests.test_answer -*-
"""Tests for voiceedge.signaling.answer: the offer checks and the exact answer we write."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Callable

import pytest
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tests.cases import case
from voiceedge.signaling.answer import (
    AnswerParameters,
    NoOpusOffered,
    OfferNotAcceptable,
    OfferSummary,
    build_answer,
    summarize_offer,
)
from voiceedge.wire.sdp import Codec, Fingerprint, parse_sdp

FIXTURES = Path(__file__).parent / "fixtures" / "sdp"
CLIENTS = ["chrome", "firefox", "safari", "pion", "aiortc"]

UFRAG = "vE1Qx7+/abcd"
PWD = "p9T2mZ8xL4kR7wN1vB6cF3hJ"
FINGERPRINT = Fingerprint(
    "sha-256",
    "0F:2E:4D:6C:8B:AA:C9:E8:07:26:45:64:83:A2:C1:E0:FF:1E:3D:5C:7B:9A:B9:D8:F7:16:35:54:73:92:B1:D0",
)
PARAMS = AnswerParameters(UFRAG, PWD, FINGERPRINT, ("203.0.113.7", 3478), 4242)
PARAMS_DC = AnswerParameters(UFRAG, PWD, FINGERPRINT, ("203.0.113.7", 3478), 4242, accept_datachannel=True)
# What the transceiver passes: our stream's SSRC, CNAME and msid too.
PARAMS_SERVED = AnswerParameters(
    UFRAG,
    PWD,
    FINGERPRINT,
    ("203.0.113.7", 3478),
    4242,
    accept_datachannel=True,
    audio_ssrc=439041101,
    cname="6e1f0c2a9b7d4e5f8a3c2b1d",
    track_id="agent-audio",
)

# (opus pt, answered fmtp, rtcp-rsize offered) per fixture: minptime echoed, useinbandfec=1 always
OPUS = {
    "chrome": (111, "minptime=10;useinbandfec=1", True),
    "firefox": (109, "useinbandfec=1", False),
    "safari": (111, "minptime=10;useinbandfec=1", True),
    "pion": (111, "minptime=10;useinbandfec=1", True),
    "aiortc": (96, "useinbandfec=1", False),
}
# The id each fixture gives the sdes:mid header extension (Pion's offer has none).
MID_EXTENSION = {"chrome": 4, "firefox": 3, "safari": 4, "pion": None, "aiortc": 1}


def load(client: str) -> str:
    """Return a fixture offer's text."""
    return (FIXTURES / f"{client}-offer.sdp").read_bytes().decode("utf-8")


def _sections(text: str) -> list[str]:
    """Split SDP text into the session part and each m= section, keeping every line."""
    parts = text.split("m=")
    return [parts[0], *("m=" + p for p in parts[1:])]


def answer_for(text: str, params: AnswerParameters = PARAMS) -> str:
    """Summarize and answer an offer's text."""
    offer = parse_sdp(text)
    return build_answer(offer, summarize_offer(offer), params)


def transport_lines() -> list[str]:
    """Our ICE/DTLS lines, in serializer order, at session level and on accepted m-lines."""
    return [
        f"a=ice-ufrag:{UFRAG}",
        f"a=ice-pwd:{PWD}",
        f"a=fingerprint:sha-256 {FINGERPRINT.value}",
        "a=setup:passive",
    ]


def expected_answer(
    pt: int,
    fmtp: str | None,
    rsize: bool,
    datachannel: bool,
    direction: str = "sendrecv",
    mid_extension: int | None = None,
) -> list[str]:
    """The exact answer lines for a two m-line (audio mid 0, data channel mid 1) offer."""
    candidate = ["a=candidate:1 1 udp 2130706431 203.0.113.7 3478 typ host", "a=end-of-candidates"]
    lines = [
        "v=0",
        "o=- 4242 1 IN IP4 127.0.0.1",
        "s=-",
        "t=0 0",
        "a=ice-lite",
        *transport_lines(),
        "a=group:BUNDLE 0 1" if datachannel else "a=group:BUNDLE 0",
        f"m=audio 3478 UDP/TLS/RTP/SAVPF {pt}",
        "c=IN IP4 203.0.113.7",
        "a=mid:0",
        f"a={direction}",
        *transport_lines(),
        "a=rtcp-mux",
        *(["a=rtcp-rsize"] if rsize else []),
        *([f"a=extmap:{mid_extension} urn:ietf:params:rtp-hdrext:sdes:mid"] if mid_extension else []),
        f"a=rtpmap:{pt} opus/48000/2",
        *([f"a=fmtp:{pt} {fmtp}"] if fmtp else []),
        *candidate,
    ]
    if datachannel:
        lines += [
            "m=application 3478 UDP/DTLS/SCTP webrtc-datachannel",
            "c=IN IP4 203.0.113.7",
            "a=mid:1",
            *transport_lines(),
            "a=sctp-port:5000",
            "a=max-message-size:262144",
            *candidate,
        ]
    else:
        lines += ["m=application 0 UDP/DTLS/SCTP webrtc-datachannel", "c=IN IP4 0.0.0.0", "a=mid:1"]
    return lines


VIDEO = (
    "m=video 9 UDP/TLS/RTP/SAVPF 96 97\r\nc=IN IP4 0.0.0.0\r\na=mid:{mid}\r\na=sendrecv\r\na=rtcp-mux\r\n"
    "a=rtpmap:96 VP8/90000\r\na=rtpmap:97 rtx/90000\r\na=fmtp:97 apt=96\r\n"
)
SECOND_AUDIO = (
    "m=audio 9 UDP/TLS/RTP/SAVPF 111 0\r\nc=IN IP4 0.0.0.0\r\na=mid:{mid}\r\na=rtcp-mux\r\n"
    "a=rtpmap:111 opus/48000/2\r\na=rtpmap:0 PCMU/8000\r\n"
)


def _without(text: str, *prefixes: str) -> str:
    return "".join(
        line for line in text.splitlines(keepends=True) if not line.startswith(prefixes)
    )


REFUSALS: list[tuple[str, Callable[[str], str], int, str]] = [
    ("no ICE", lambda t: _without(t, "a=ice-ufrag:"), 400, "ice-ufrag"),
    ("no ICE pwd", lambda t: _without(t, "a=ice-pwd:"), 400, "ice-pwd"),
    ("short pwd", lambda t: t.replace("X3bLp0mN9tV7qRk2zW8sJd4H", "short"), 400, "RFC 8839"),
    ("no fingerprint", lambda t: _without(t, "a=fingerprint:"), 400, "fingerprint"),
    ("md5 only", lambda t: t.replace("a=fingerprint:sha-256", "a=fingerprint:md5"), 400, "fingerprint"),
    ("sha-1 only", lambda t: t.replace("a=fingerprint:sha-256", "a=fingerprint:sha-1"), 400, "sha-1"),
    ("sha-224 only", lambda t: t.replace("a=fingerprint:sha-256", "a=fingerprint:sha-224"), 400, "sha-224"),
    ("passive", lambda t: t.replace("a=setup:actpass", "a=setup:passive"), 400, "setup:passive"),
    ("holdconn", lambda t: t.replace("a=setup:actpass", "a=setup:holdconn"), 400, "setup:holdconn"),
    ("no rtcp-mux", lambda t: _without(t, "a=rtcp-mux"), 400, "rtcp-mux"),
    ("plain RTP", lambda t: t.replace("UDP/TLS/RTP/SAVPF", "RTP/AVP"), 400, "DTLS-SRTP"),
    ("no audio", lambda t: _sections(t)[0] + _sections(t)[2], 400, "no audio"),
    ("audio disabled", lambda t: t.replace("m=audio 54321", "m=audio 0"), 400, "no audio"),
]


async def _aiortc_round(direction: str, datachannel: bool, accept: bool) -> tuple[str, str, str]:
    """aiortc offers, we answer, aiortc takes the answer: its signaling state, its audio direction, our answer."""
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        pc.addTransceiver("audio", direction=direction)
        if datachannel:
            pc.createDataChannel("events")
        await pc.setLocalDescription(await pc.createOffer())
        offer = parse_sdp(pc.localDescription.sdp)
        params = AnswerParameters(
            UFRAG, PWD, FINGERPRINT, ("127.0.0.1", 9), 7, accept_datachannel=accept, audio_ssrc=1234, cname="abcd"
        )
        answer = build_answer(offer, summarize_offer(offer), params)
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        transceiver = pc.getTransceivers()[0]
        return pc.signalingState, transceiver.currentDirection or "", answer
    finally:
        await pc.close()


CHROMIUM = Path("/usr/bin/chromium")
JS_OFFER = """async (video) => {
  window.pc = new RTCPeerConnection();
  pc.addTransceiver('audio');
  if (video) pc.addTransceiver('video');
  pc.createDataChannel('events');
  const offer = await pc.createOffer();
  await pc.setLocalDescription(offer);
  return offer.sdp;
}"""
JS_ANSWER = """async (sdp) => {
  try {
    await pc.setRemoteDescription({type: 'answer', sdp});
    return pc.signalingState + ' ' + pc.getTransceivers().map(t => t.currentDirection).join(',');
  } catch (e) {
    return 'error: ' + e.message;
  } finally {
    pc.close();
  }
}"""


class FixtureAnswerTests(SynchronousTestCase):
    """Each client's recorded offer (Chrome, Firefox, Safari, Pion, aiortc): its exact answer and summary."""

    def test_fixture_answer_exact(self) -> None:
        """Each client's offer gets exactly the expected answer, which parses, with and without a data channel."""
        for client in CLIENTS:
            for datachannel in (False, True):
                with case(f"{client}, data channel {datachannel}"):
                    answer = answer_for(load(client), PARAMS_DC if datachannel else PARAMS)
                    pt, fmtp, rsize = OPUS[client]
                    expected = expected_answer(pt, fmtp, rsize, datachannel, mid_extension=MID_EXTENSION[client])
                    self.assertEqual(answer.split("\r\n"), [*expected, ""])
                    desc = parse_sdp(answer)
                    self.assertTrue(desc.ice_lite)
                    self.assertEqual(desc.media[0].codecs, [
                        Codec(pt, "opus", 48000, 2, dict(p.split("=") for p in fmtp.split(";")) if fmtp else {})
                    ])

    def test_chrome_answer_golden_file(self) -> None:
        """The Chrome answer as served (data channel, our stream described) matches the reviewed golden file."""
        golden = (FIXTURES / "chrome-answer.sdp").read_bytes().decode("utf-8")
        self.assertEqual(answer_for(load("chrome"), PARAMS_SERVED), golden)

    def test_every_client_can_map_our_ssrc_to_the_audio_m_line(self) -> None:
        """a=ssrc with cname and msid, a=msid, a=msid-semantic, and the MID header extension when
        the client offered it: each client finds the stream it demuxes by (Pion: ssrc or msid)."""
        for client in CLIENTS:
            with case(client):
                answer = parse_sdp(answer_for(load(client), PARAMS_SERVED))
                audio = answer.media[0]
                self.assertEqual(audio.ssrcs, [439041101])
                self.assertIn("a=ssrc:439041101 cname:6e1f0c2a9b7d4e5f8a3c2b1d", audio.other)
                self.assertIn("a=ssrc:439041101 msid:voiceedge agent-audio", audio.other)
                self.assertIn("a=msid:voiceedge agent-audio", audio.other)
                self.assertEqual(answer.msid_semantic, "WMS voiceedge")
                mid_extension = MID_EXTENSION[client]
                expected = [(mid_extension, "urn:ietf:params:rtp-hdrext:sdes:mid")] if mid_extension else []
                self.assertEqual(audio.extmaps, expected)
                # The data channel m-line names no stream.
                self.assertEqual(answer.media[1].ssrcs, [])
                self.assertFalse(answer.media[1].other)

    def test_no_stream_is_described_when_we_only_receive(self) -> None:
        """An offer that only sends (a=sendonly) gets a recvonly answer with no ssrc or msid."""
        answer = parse_sdp(answer_for(load("chrome").replace("a=sendrecv", "a=sendonly"), PARAMS_SERVED))
        self.assertEqual(answer.media[0].direction, "recvonly")
        self.assertEqual(answer.media[0].ssrcs, [])
        self.assertIsNone(answer.msid_semantic)

    def test_session_version_in_origin(self) -> None:
        """A second answer of the same session (an ICE restart) has a higher o= version."""
        params = AnswerParameters(UFRAG, PWD, FINGERPRINT, ("203.0.113.7", 3478), 4242, session_version=2)
        self.assertEqual(parse_sdp(answer_for(load("chrome"), params)).origin, "- 4242 2 IN IP4 127.0.0.1")
        with self.assertRaises(ValueError):
            answer_for(load("chrome"), AnswerParameters(UFRAG, PWD, FINGERPRINT, ("203.0.113.7", 3478), 1, session_version=0))

    def test_fixture_summary(self) -> None:
        """The summary carries the client's ICE credentials, fingerprints, Opus and data channel."""
        for client in CLIENTS:
            with case(client):
                offer = parse_sdp(load(client))
                summary = summarize_offer(offer)
                audio = offer.media[0]
                self.assertEqual((summary.remote_ufrag, summary.remote_pwd), offer.ice_credentials(audio))
                self.assertEqual(list(summary.remote_fingerprints), offer.dtls_fingerprints(audio))
                self.assertEqual(summary.audio_mid, "0")
                self.assertEqual(summary.datachannel_mid, "1")
                self.assertEqual(summary.opus, audio.codec("opus"))
                self.assertEqual(summary.max_message_size, offer.media[1].max_message_size)

    def test_summary_is_frozen(self) -> None:
        """OfferSummary and AnswerParameters are immutable."""
        summary = summarize_offer(parse_sdp(load("chrome")))
        with self.assertRaises(AttributeError):
            summary.audio_mid = "x"  # type: ignore[misc]
        with self.assertRaises(AttributeError):
            PARAMS.session_id = 1  # type: ignore[misc]
        self.assertIsInstance(summary, OfferSummary)


class AnswerPolicyTests(SynchronousTestCase):
    """Directions, extra m-lines, addresses, SCTP parameters, BUNDLE and setup in the answer we write."""

    def test_direction_mirrored(self) -> None:
        """The answer's direction mirrors the offer's (RFC 3264 6.1)."""
        for offered, answered in [
            ("sendrecv", "sendrecv"), ("sendonly", "recvonly"), ("recvonly", "sendonly"), ("inactive", "inactive"),
        ]:
            answer = parse_sdp(answer_for(load("chrome").replace("a=sendrecv", f"a={offered}")))
            self.assertEqual(answer.media[0].direction, answered, f"offered {offered}")

    def test_no_direction_means_sendrecv(self) -> None:
        """An offer without a direction attribute is sendrecv."""
        answer = parse_sdp(answer_for(load("chrome").replace("a=sendrecv\r\n", "")))
        self.assertEqual(answer.media[0].direction, "sendrecv")

    def test_other_m_lines_rejected(self) -> None:
        """Video and a second audio are rejected: port 0, same proto, first format, mid kept, not bundled."""
        session, audio_section, app_section = _sections(load("chrome"))
        session = session.replace("a=group:BUNDLE 0 1", "a=group:BUNDLE v 0 1 a2")
        text = session + VIDEO.format(mid="v") + audio_section + app_section + SECOND_AUDIO.format(mid="a2")
        offer = parse_sdp(text)
        self.assertEqual([m.mid for m in offer.media], ["v", "0", "1", "a2"])
        answer = parse_sdp(build_answer(offer, summarize_offer(offer), PARAMS_DC))
        self.assertEqual(answer.groups, [("BUNDLE", ["0", "1"])])
        video, audio, app, audio2 = answer.media
        self.assertEqual((video.kind, video.port, video.proto, video.formats, video.mid), (
            "video", 0, "UDP/TLS/RTP/SAVPF", ["96"], "v",
        ))
        self.assertEqual((audio2.kind, audio2.port, audio2.formats, audio2.mid), ("audio", 0, ["111"], "a2"))
        for rejected in (video, audio2):
            self.assertEqual(rejected.codecs, [])
            self.assertEqual(rejected.candidates, [])
            self.assertIsNone(rejected.ice_ufrag)
            self.assertEqual(rejected.connection, "IN IP4 0.0.0.0")
            self.assertIsNone(rejected.direction)
        self.assertEqual(audio.port, 3478)
        self.assertEqual(app.port, 3478)

    def test_first_opus_audio_wins(self) -> None:
        """With two audio m-lines the first one carrying Opus is accepted."""
        text = load("chrome").replace("a=rtpmap:111 opus/48000/2\r\n", "a=rtpmap:111 ISAC/16000\r\n")
        text = text.replace("a=group:BUNDLE 0 1", "a=group:BUNDLE 0 1 2") + SECOND_AUDIO.format(mid="2")
        offer = parse_sdp(text)
        summary = summarize_offer(offer)
        self.assertEqual(summary.audio_mid, "2")
        self.assertEqual(summary.opus.payload_type, 111)
        answer = parse_sdp(build_answer(offer, summary, PARAMS))
        self.assertEqual([m.port for m in answer.media], [0, 0, 3478])
        self.assertEqual(answer.groups, [("BUNDLE", ["2"])])

    def test_ipv6_candidate(self) -> None:
        """An IPv6 media address gives c=IN IP6 and an IPv6 host candidate."""
        params = AnswerParameters(UFRAG, PWD, FINGERPRINT, ("2001:db8::7", 3478), 1)
        answer = parse_sdp(answer_for(load("firefox"), params))
        audio = answer.media[0]
        self.assertEqual(audio.connection, "IN IP6 2001:db8::7")
        self.assertEqual((audio.candidates[0].host, audio.candidates[0].port), ("2001:db8::7", 3478))

    def test_hostname_candidate_is_a_programming_error(self) -> None:
        """The advertised address must be an IP literal."""
        offer = parse_sdp(load("chrome"))
        params = AnswerParameters(UFRAG, PWD, FINGERPRINT, ("relay.example", 3478), 1)
        with self.assertRaises(ValueError) as raised:
            build_answer(offer, summarize_offer(offer), params)
        self.assertIn("IP address", str(raised.exception))

    def test_custom_sctp_parameters(self) -> None:
        """sctp-port and max-message-size come from the parameters."""
        params = AnswerParameters(
            UFRAG, PWD, FINGERPRINT, ("203.0.113.7", 3478), 1, accept_datachannel=True,
            sctp_port=5001, max_message_size=65536,
        )
        app = parse_sdp(answer_for(load("pion"), params)).media[1]
        self.assertEqual((app.sctp_port, app.max_message_size), (5001, 65536))

    def test_datachannel_outside_audio_bundle_rejected(self) -> None:
        """A data channel not bundled with the audio cannot share our one transport: rejected."""
        text = load("chrome").replace("a=group:BUNDLE 0 1", "a=group:BUNDLE 0")
        offer = parse_sdp(text)
        summary = summarize_offer(offer)
        self.assertIsNone(summary.datachannel_mid)
        answer = parse_sdp(build_answer(offer, summary, PARAMS_DC))
        self.assertEqual(answer.media[1].port, 0)
        self.assertEqual(answer.groups, [("BUNDLE", ["0"])])

    def test_no_bundle_no_mid(self) -> None:
        """A legacy offer without mids or BUNDLE gets an answer without a=group or a=mid."""
        text = load("chrome")
        for line in ("a=group:BUNDLE 0 1\r\n", "a=mid:0\r\n", "a=mid:1\r\n"):
            text = text.replace(line, "")
        answer_text = answer_for(text, PARAMS_DC)
        self.assertNotIn("a=group", answer_text)
        self.assertNotIn("a=mid", answer_text)
        answer = parse_sdp(answer_text)
        self.assertEqual([m.port for m in answer.media], [3478, 0])

    def test_legacy_sctp_rejected(self) -> None:
        """The pre-RFC 8841 'DTLS/SCTP 5000' m-line is rejected, not answered."""
        text = load("chrome").replace(
            "m=application 54322 UDP/DTLS/SCTP webrtc-datachannel", "m=application 54322 DTLS/SCTP 5000"
        )
        answer = parse_sdp(answer_for(text, PARAMS_DC))
        self.assertEqual((answer.media[1].port, answer.media[1].proto, answer.media[1].formats), (0, "DTLS/SCTP", ["5000"]))

    def test_setup_active_accepted(self) -> None:
        """A client that insists on being the DTLS client (active) is fine: we are passive."""
        answer = parse_sdp(answer_for(load("chrome").replace("a=setup:actpass", "a=setup:active")))
        self.assertEqual(answer.media[0].setup, "passive")

    def test_answer_accepts_exactly_the_hashes_dtls_verifies(self) -> None:
        """Every fingerprint hash the answer takes, the DTLS layer can check, and no other (issue 9, finding 4)."""
        from voiceedge.signaling.answer import VERIFIABLE_FINGERPRINT_HASHES
        from voiceedge.transceiver.dtls import _FINGERPRINT_ALGORITHMS

        self.assertEqual(VERIFIABLE_FINGERPRINT_HASHES, frozenset(_FINGERPRINT_ALGORITHMS))


class RefusalTests(SynchronousTestCase):
    """Offers we cannot answer are refused with a status and a reason naming the problem."""

    def test_refusals(self) -> None:
        """Each bad-but-parseable offer is refused with its status and a reason naming the problem."""
        for name, mutate, status, reason in REFUSALS:
            with case(name):
                offer = parse_sdp(mutate(load("chrome")))
                with self.assertRaises(OfferNotAcceptable) as info:
                    summarize_offer(offer)
                self.assertEqual(info.exception.status, status)
                self.assertIn(reason, info.exception.reason)
                self.assertEqual(str(info.exception), info.exception.reason)
                self.assertNotIsInstance(info.exception, NoOpusOffered)

    def test_no_opus(self) -> None:
        """Without opus/48000/2 listed on an audio m-line the offer is 406."""
        mutations: list[tuple[str, Callable[[str], str]]] = [
            ("no-opus", lambda t: t.replace("opus/48000/2", "ISAC/16000")),
            ("mono", lambda t: t.replace("opus/48000/2", "opus/48000")),
            ("wrong-rate", lambda t: t.replace("opus/48000/2", "opus/16000/2")),
            ("opus-not-in-m-line",
             lambda t: t.replace("m=audio 54321 UDP/TLS/RTP/SAVPF 111 ", "m=audio 54321 UDP/TLS/RTP/SAVPF ")),
        ]
        for name, mutate in mutations:
            with case(name):
                offer = parse_sdp(mutate(load("chrome")))
                with self.assertRaises(NoOpusOffered) as info:
                    summarize_offer(offer)
                self.assertEqual(info.exception.status, 406)
                self.assertIn("opus", info.exception.reason)

    def test_summary_from_other_offer_refused(self) -> None:
        """build_answer with a summary that does not belong to the offer is a programming error."""
        chrome, firefox = parse_sdp(load("chrome")), parse_sdp(load("firefox"))
        with self.assertRaises(ValueError):
            build_answer(chrome, summarize_offer(firefox), PARAMS)


class AiortcAcceptsAnswerTests(SynchronousTestCase):
    """aiortc takes our answers to its offers."""

    def test_aiortc_accepts_answer(self) -> None:
        """aiortc's createOffer -> our build_answer -> aiortc's setRemoteDescription succeeds."""
        for direction, datachannel, accept, current in [
            ("sendrecv", True, True, "sendrecv"),
            ("sendrecv", True, False, "sendrecv"),
            ("sendrecv", False, False, "sendrecv"),
            ("sendonly", False, False, "sendonly"),
            ("recvonly", True, True, "recvonly"),
        ]:
            with case(f"{direction}, data channel {datachannel}, accepted {accept}"):
                state, negotiated, answer = asyncio.run(_aiortc_round(direction, datachannel, accept))
                self.assertEqual(state, "stable")
                self.assertEqual(negotiated, current)
                desc = parse_sdp(answer)
                self.assertEqual(len(desc.media), 2 if datachannel else 1)
                if datachannel:
                    self.assertEqual(desc.media[1].port, 9 if accept else 0)


@pytest.mark.browser
class ChromiumAcceptsAnswerTests(SynchronousTestCase):
    """Headless Chromium takes our answers to its offers."""

    def test_chromium_accepts_answer(self) -> None:
        """Headless chromium's offer (with and without video) -> our answer (data channel accepted
        or not) -> chromium's setRemoteDescription succeeds; a fresh page per case."""
        if not CHROMIUM.exists():
            raise SkipTest("no /usr/bin/chromium")
        try:
            from playwright.async_api import async_playwright
        except ImportError:
            raise SkipTest("playwright is not installed")

        async def run() -> list[tuple[bool, bool, str, str]]:
            results = []
            async with async_playwright() as p:
                browser = await p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
                try:
                    for video in (False, True):
                        for accept in (False, True):
                            page = await browser.new_page()
                            offer = parse_sdp(await page.evaluate(JS_OFFER, video))
                            params = AnswerParameters(
                                UFRAG, PWD, FINGERPRINT, ("127.0.0.1", 9), 7, accept_datachannel=accept,
                                audio_ssrc=1234, cname="abcd",
                            )
                            answer = build_answer(offer, summarize_offer(offer), params)
                            results.append((video, accept, await page.evaluate(JS_ANSWER, answer), answer))
                            await page.close()
                finally:
                    await browser.close()
            return results

        results = asyncio.run(run())
        self.assertEqual([(video, accept) for video, accept, _, _ in results],
                         [(False, False), (False, True), (True, False), (True, True)])
        for video, accept, result, answer in results:
            # chromium drops the transceiver of a rejected video m-line, so one audio transceiver remains
            self.assertEqual(result, "stable sendrecv", f"video {video}, data channel accepted {accept}: {answer}")
