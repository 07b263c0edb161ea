# -*- test-case-name: tests.test_answer -*-
"""The SDP answer policy: which offered m-lines voiceedge accepts and the ICE-lite answer it writes."""

from __future__ import annotations

import ipaddress
from typing import Any
from dataclasses import dataclass

from voiceedge.wire.sdp import (
    Candidate,
    Codec,
    Fingerprint,
    MediaDescription,
    SessionDescription,
    serialize_sdp,
)

__all__ = [
    "OfferNotAcceptable",
    "NoOpusOffered",
    "VERIFIABLE_FINGERPRINT_HASHES",
    "OfferSummary",
    "AnswerParameters",
    "summarize_offer",
    "build_answer",
    "build_restart_fragment",
]

# DTLS-SRTP RTP profiles we answer; the answer always says UDP/TLS/RTP/SAVPF.
_SRTP_PROTOS = frozenset({"UDP/TLS/RTP/SAVPF", "UDP/TLS/RTP/SAVP", "RTP/SAVPF"})
_DATACHANNEL_PROTO = "UDP/DTLS/SCTP"
_DATACHANNEL_FORMAT = "webrtc-datachannel"
#: Hash functions the DTLS layer checks a client certificate with (RFC 8122
#: section 5); tests hold this equal to voiceedge.transceiver.dtls's table. An
#: offer with only other hashes (sha-1, sha-224, md5) is refused here, with a
#: 400, before anything is allocated.
VERIFIABLE_FINGERPRINT_HASHES = frozenset({"sha-256", "sha-384", "sha-512"})
# The answerer's direction for each offered direction (RFC 3264 section 6.1).
_MIRROR = {"sendrecv": "sendrecv", "sendonly": "recvonly", "recvonly": "sendonly", "inactive": "inactive"}
# Opus fmtp parameters echoed back when the client offered them.
_ECHOED_OPUS_PARAMS = ("minptime",)
#: Opus fmtp parameters of every answer, about what we receive (RFC 7587 §6.1):
#: we decode in-band FEC (voiceedge.media.opus), so the caller should send it.
ANSWER_OPUS_PARAMS = {"useinbandfec": "1"}
# Host candidate priority for the one local candidate (RFC 8445 5.1.2.1, type pref 126).
_HOST_PRIORITY = 2130706431
#: The RTP header extension that carries the m-line's MID (RFC 8843 §15).
MID_EXTENSION_URI = "urn:ietf:params:rtp-hdrext:sdes:mid"


class OfferNotAcceptable(Exception):
    """An offer that parses but that voiceedge cannot answer; ``status`` is the HTTP code."""

    def __init__(self, reason: str, status: int = 400) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class NoOpusOffered(OfferNotAcceptable):
    """The offer has no audio m-line carrying opus/48000/2."""

    def __init__(self, reason: str = "the offer has no audio m-line with opus/48000/2") -> None:
        super().__init__(reason, status=406)


@dataclass(frozen=True)
class OfferSummary:
    """What the transceiver needs to know from a client's offer."""

    remote_ufrag: str
    remote_pwd: str
    remote_fingerprints: tuple[Fingerprint, ...]
    audio_mid: str | None
    opus: Codec
    datachannel_mid: str | None = None
    max_message_size: int | None = None
    mid_extension_id: int | None = None  # the id the audio m-line gives the sdes:mid extension
    remote_ssrcs: tuple[int, ...] = ()  # the audio m-line's a=ssrc ids


@dataclass(frozen=True)
class AnswerParameters:
    """Our side of the answer: ICE credentials, certificate fingerprint, advertised address.

    ``audio_ssrc`` and ``cname`` describe the stream we send; with them the
    answer says which m-line our RTP belongs to in every way a client may
    look for it (``a=ssrc`` with ``cname`` and ``msid``, ``a=msid``,
    ``a=msid-semantic``, and the MID header extension when offered), so a
    client that BUNDLEs audio with a data channel can map our SSRC (Pion
    needs one of them). ``session_version`` goes up with each new answer of
    the same session (RFC 3264 §8).
    """

    ice_ufrag: str
    ice_pwd: str
    fingerprint: Fingerprint
    candidate: tuple[str, int]
    session_id: int
    accept_datachannel: bool = False
    sctp_port: int = 5000
    max_message_size: int = 262144
    audio_ssrc: int | None = None
    cname: str = ""
    stream_id: str = "voiceedge"
    track_id: str = "agent-audio"
    session_version: int = 1


def _usable(media: MediaDescription) -> bool:
    # A zero port disables an offered m-line unless it is bundle-only (RFC 8843 6).
    return media.port != 0 or "a=bundle-only" in media.other


def _is_opus(codec: Codec) -> bool:
    return codec.name.lower() == "opus" and codec.clock_rate == 48000 and codec.channels == 2


def _opus_of(media: MediaDescription) -> Codec | None:
    for codec in media.codecs:
        if _is_opus(codec) and str(codec.payload_type) in media.formats:
            return codec
    return None


def _pick_audio(offer: SessionDescription) -> tuple[int, Codec]:
    """Index and Opus codec of the audio m-line we accept."""
    audio = [(i, m) for i, m in enumerate(offer.media) if m.kind == "audio" and _usable(m)]
    if not audio:
        raise OfferNotAcceptable("the offer has no audio m-line")
    with_opus = [(i, m, c) for i, m in audio for c in [_opus_of(m)] if c is not None]
    if not with_opus:
        raise NoOpusOffered()
    for i, media, codec in with_opus:
        if media.proto in _SRTP_PROTOS:
            return i, codec
    raise OfferNotAcceptable(
        f"the audio m-line is offered over {with_opus[0][1].proto}, not UDP/TLS/RTP/SAVPF (DTLS-SRTP)"
    )


def _bundle_group(offer: SessionDescription, mid: str | None) -> list[str] | None:
    if mid is None:
        return None
    for semantics, mids in offer.groups:
        if semantics.upper() == "BUNDLE" and mid in mids:
            return mids
    return None


def _tagged_media(offer: SessionDescription, mid: str | None) -> list[MediaDescription]:
    """The offerer BUNDLE-tagged m-line of ``mid``'s group, if there is one."""
    group = _bundle_group(offer, mid)
    if not group:
        return []
    return [m for m in offer.media if m.mid == group[0]][:1]


def _pick_datachannel(offer: SessionDescription, audio_mid: str | None) -> MediaDescription | None:
    """The first data channel m-line that shares the audio m-line's BUNDLE group.

    We answer with one candidate and one transport, so a data channel on a
    transport of its own could never connect.
    """
    group = _bundle_group(offer, audio_mid)
    if group is None:
        return None
    for media in offer.media:
        if (
            media.kind == "application"
            and media.proto == _DATACHANNEL_PROTO
            and _DATACHANNEL_FORMAT in media.formats
            and _usable(media)
            and media.mid in group
        ):
            return media
    return None


def summarize_offer(offer: SessionDescription) -> OfferSummary:
    """Check an offer against our policy and return what we need from it.

    Raises :class:`NoOpusOffered` (406) without opus/48000/2 and
    :class:`OfferNotAcceptable` (400) for an offer we cannot answer.
    """
    index, opus = _pick_audio(offer)
    audio = offer.media[index]
    # A bundled m-line may leave the transport attributes to the BUNDLE-tagged one (RFC 8843).
    sources = [audio, *_tagged_media(offer, audio.mid)]
    credentials = next(filter(None, (offer.ice_credentials(m) for m in sources)), None)
    if credentials is None:
        raise OfferNotAcceptable("the offer has no a=ice-ufrag/a=ice-pwd for the audio m-line")
    ufrag, pwd = credentials
    if not 4 <= len(ufrag) <= 256 or not 22 <= len(pwd) <= 256:
        raise OfferNotAcceptable("the offer's ICE ufrag or pwd has a length RFC 8839 forbids")
    offered = next(filter(None, (offer.dtls_fingerprints(m) for m in sources)), [])
    fingerprints = [f for f in offered if f.algorithm in VERIFIABLE_FINGERPRINT_HASHES]
    if not fingerprints:
        if offered:
            hashes = ", ".join(sorted({f.algorithm for f in offered}))[:80]
            raise OfferNotAcceptable(
                f"the offer's a=fingerprint uses {hashes}; use sha-256, sha-384 or sha-512"
            )
        raise OfferNotAcceptable("the offer has no a=fingerprint for the audio m-line")
    setup = next(filter(None, (offer.dtls_setup(m) for m in sources)), None)
    if setup in ("passive", "holdconn"):
        # We are ICE-lite and take the DTLS server role; the client must be able to connect.
        raise OfferNotAcceptable(f"the offer has a=setup:{setup}; it must be actpass or active")
    if not audio.rtcp_mux:
        raise OfferNotAcceptable("the audio m-line does not offer a=rtcp-mux")
    datachannel = _pick_datachannel(offer, audio.mid)
    mid_extension = next((i for i, uri in audio.extmaps if uri == MID_EXTENSION_URI), None)
    return OfferSummary(
        remote_ufrag=ufrag,
        remote_pwd=pwd,
        remote_fingerprints=tuple(fingerprints),
        audio_mid=audio.mid,
        opus=opus,
        datachannel_mid=datachannel.mid if datachannel is not None else None,
        max_message_size=datachannel.max_message_size if datachannel is not None else None,
        mid_extension_id=mid_extension if audio.mid is not None else None,
        remote_ssrcs=tuple(audio.ssrcs),
    )


def _find_audio(offer: SessionDescription, summary: OfferSummary) -> int:
    for i, media in enumerate(offer.media):
        if media.kind == "audio" and media.mid == summary.audio_mid and summary.opus in media.codecs:
            return i
    raise ValueError("the summary does not belong to this offer")


def _connection_for(host: str) -> str:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"the advertised host must be an IP address, not {host!r}") from None
    return f"IN IP{address.version} {address}"


def _transport(params: AnswerParameters, candidate: Candidate, connection: str) -> dict[str, Any]:
    """The ICE and DTLS fields every accepted m-line carries (fresh lists each time)."""
    return {
        "candidates": [candidate],
        "end_of_candidates": True,
        "connection": connection,
        "ice_ufrag": params.ice_ufrag,
        "ice_pwd": params.ice_pwd,
        "fingerprints": [params.fingerprint],
        "setup": "passive",
    }


def _describe_stream(
    answer: SessionDescription, audio: MediaDescription, ssrc: int, params: AnswerParameters
) -> None:
    """Name the stream we send on the audio m-line: msid (RFC 8830), ssrc with cname and msid."""
    msid = f"{params.stream_id} {params.track_id}"
    answer.msid_semantic = f"WMS {params.stream_id}"
    audio.other += [
        f"a=msid:{msid}",
        f"a=ssrc:{ssrc} cname:{params.cname}",
        f"a=ssrc:{ssrc} msid:{msid}",
    ]
    audio.ssrcs.append(ssrc)


def build_answer(offer: SessionDescription, summary: OfferSummary, params: AnswerParameters) -> str:
    """Write the SDP answer for ``offer`` as a CRLF-terminated string.

    One answer m-line per offered m-line, same order and mid. The Opus audio
    m-line (and the data channel when ``params.accept_datachannel``) is
    accepted on our single host candidate; every other m-line is rejected
    with port 0. ICE and DTLS lines appear at session level too, so parsers
    that want them on rejected m-lines (aiortc) find them.
    """
    host, port = params.candidate
    connection = _connection_for(host)
    if not 0 < port < 65536:
        raise ValueError(f"bad advertised port {port}")
    if params.session_id < 0 or params.session_id >= 2**63:
        raise ValueError("session_id must fit in 63 bits")
    audio_index = _find_audio(offer, summary)
    accepted = {audio_index}
    if params.accept_datachannel and summary.datachannel_mid is not None:
        for i, media in enumerate(offer.media):
            if media.kind == "application" and media.mid == summary.datachannel_mid:
                accepted.add(i)
                break

    if params.session_version < 1:
        raise ValueError("session_version starts at 1")
    candidate = Candidate("1", 1, "udp", _HOST_PRIORITY, str(ipaddress.ip_address(host)), port, "host")
    answer = SessionDescription(
        origin=f"- {params.session_id} {params.session_version} IN IP4 127.0.0.1",
        session_name="-",
        ice_lite=True,
        ice_ufrag=params.ice_ufrag,
        ice_pwd=params.ice_pwd,
        fingerprints=[params.fingerprint],
        setup="passive",
    )
    for i, offered in enumerate(offer.media):
        if i == audio_index:
            opus = summary.opus
            echoed = {
                k: v
                for wanted in _ECHOED_OPUS_PARAMS
                for k, v in opus.parameters.items()
                if k.lower() == wanted
            }
            echoed.update(ANSWER_OPUS_PARAMS)
            direction = _MIRROR[offered.direction or "sendrecv"]
            audio = MediaDescription(
                kind="audio",
                port=port,
                proto="UDP/TLS/RTP/SAVPF",
                formats=[str(opus.payload_type)],
                mid=offered.mid,
                codecs=[Codec(opus.payload_type, "opus", 48000, 2, echoed)],
                rtcp_mux=True,
                rtcp_rsize=offered.rtcp_rsize,
                direction=direction,
                **_transport(params, candidate, connection),
            )
            if summary.mid_extension_id is not None:
                audio.extmaps.append((summary.mid_extension_id, MID_EXTENSION_URI))
            if params.audio_ssrc is not None and direction in ("sendrecv", "sendonly"):
                _describe_stream(answer, audio, params.audio_ssrc, params)
            answer.media.append(audio)
        elif i in accepted:
            answer.media.append(
                MediaDescription(
                    kind="application",
                    port=port,
                    proto=_DATACHANNEL_PROTO,
                    formats=[_DATACHANNEL_FORMAT],
                    mid=offered.mid,
                    sctp_port=params.sctp_port,
                    max_message_size=params.max_message_size,
                    **_transport(params, candidate, connection),
                )
            )
        else:
            answer.media.append(
                MediaDescription(
                    kind=offered.kind,
                    port=0,
                    proto=offered.proto,
                    formats=offered.formats[:1],
                    mid=offered.mid,
                    connection="IN IP4 0.0.0.0",
                )
            )
    group = _bundle_group(offer, summary.audio_mid)
    if group is not None:
        mids = [m.mid for i, m in enumerate(offer.media) if i in accepted and m.mid is not None]
        answer.groups.append(("BUNDLE", [mid for mid in group if mid in mids]))
    return serialize_sdp(answer)


def build_restart_fragment(summary: OfferSummary, params: AnswerParameters) -> str:
    """Our new ICE credentials and candidate after an ICE restart, as an SDP fragment (RFC 8840).

    What RFC 9725 §4.3.2 answers a restart PATCH with: ``a=ice-ufrag``,
    ``a=ice-pwd``, and the BUNDLE-tagged (audio) m-line with its ``a=mid`` and
    our one candidate.
    """
    host, port = params.candidate
    candidate = Candidate("1", 1, "udp", _HOST_PRIORITY, str(ipaddress.ip_address(host)), port, "host")
    lines = [
        "a=ice-lite",
        f"a=ice-ufrag:{params.ice_ufrag}",
        f"a=ice-pwd:{params.ice_pwd}",
        f"m=audio {port} UDP/TLS/RTP/SAVPF {summary.opus.payload_type}",
    ]
    if summary.audio_mid is not None:
        lines.append(f"a=mid:{summary.audio_mid}")
    lines += [f"a=candidate:{candidate.to_sdp()}", "a=end-of-candidates"]
    return "\r\n".join(lines) + "\r\n"
