# -*- test-case-name: tests.test_sdp -*-
"""SDP codec (RFC 8866) with the WebRTC attributes: ICE, BUNDLE, rtcp-mux, DTLS, SCTP, Opus."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from voiceedge.wire.errors import WireError

__all__ = [
    "SdpError",
    "Fingerprint",
    "Codec",
    "Candidate",
    "MediaDescription",
    "SessionDescription",
    "parse_sdp",
    "parse_sdpfrag",
    "serialize_sdp",
    "MAX_LINE_LENGTH",
    "MAX_LINES",
    "MAX_MEDIA",
]

MAX_LINE_LENGTH = 4096
MAX_LINES = 1000
MAX_MEDIA = 64

DIRECTIONS = frozenset({"sendrecv", "sendonly", "recvonly", "inactive"})
SETUP_ROLES = frozenset({"actpass", "active", "passive", "holdconn"})

# RFC 8866 token-char; used for attribute names, mids, media kinds, protos.
_TOKEN = re.compile(r"[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+\Z")
# RFC 8839 ice-char.
_ICE_CHARS = re.compile(r"[A-Za-z0-9+/]{1,256}\Z")
_HEX_PAIRS = re.compile(r"[0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2}){0,63}\Z")
# Printable ASCII plus tab: what every parsed (non free-text) line may hold.
_PRINTABLE_ASCII = re.compile(r"[\t\x20-\x7e]*\Z")
# Anything but NUL/CR/LF: RFC 8866 byte-string, for free text and unknown attributes.
_BYTE_STRING = re.compile(r"[^\x00\r\n]*\Z")

_SESSION_TYPES = frozenset("vosiuepcbtrzka")
_MEDIA_TYPES = frozenset("icbka")
# Serialization order of line types (RFC 8866 section 5).
_SESSION_RANK = {"i": 0, "u": 1, "e": 2, "p": 3, "c": 4, "b": 5, "t": 6, "r": 7, "z": 8, "k": 9, "a": 10}
_MEDIA_RANK = {"i": 0, "c": 1, "b": 2, "k": 3, "a": 4}


class SdpError(WireError):
    """Text that is not a session description this codec accepts."""

    def __init__(self, lineno: int, reason: str) -> None:
        self.lineno = lineno
        self.reason = reason
        where = f"line {lineno}" if lineno else "SDP"
        super().__init__(f"{where}: {reason}")


@dataclass(slots=True)
class Fingerprint:
    """A DTLS certificate fingerprint (RFC 8122): ``sha-256`` and ``AB:CD:...``."""

    algorithm: str
    value: str


@dataclass(slots=True)
class Codec:
    """One RTP payload format: rtpmap, fmtp parameters and rtcp-fb values."""

    payload_type: int
    name: str
    clock_rate: int
    channels: int = 1
    parameters: dict[str, str] = field(default_factory=dict)
    rtcp_feedback: list[str] = field(default_factory=list)


@dataclass(slots=True)
class Candidate:
    """An ICE candidate attribute (RFC 8839 section 5.1)."""

    foundation: str
    component: int
    transport: str
    priority: int
    host: str
    port: int
    type: str
    extra: list[str] = field(default_factory=list)

    def to_sdp(self) -> str:
        """Return the attribute value, without the ``a=candidate:`` prefix."""
        head = (
            f"{self.foundation} {self.component} {self.transport} {self.priority} "
            f"{self.host} {self.port} typ {self.type}"
        )
        return " ".join([head, *self.extra]) if self.extra else head


@dataclass(slots=True)
class MediaDescription:
    """One m= section.

    ``connection`` holds the first ``c=`` value; ``other`` keeps every line
    this codec does not model (``a=msid:...``, ``b=AS:30``, ``a=ssrc:...``)
    verbatim, so a description survives a round trip.  ``ssrcs`` lists the
    SSRC ids named by ``a=ssrc`` lines (those lines stay in ``other``).
    """

    kind: str
    port: int
    proto: str
    formats: list[str]
    mid: str | None = None
    codecs: list[Codec] = field(default_factory=list)
    extmaps: list[tuple[int, str]] = field(default_factory=list)
    rtcp_mux: bool = False
    rtcp_rsize: bool = False
    direction: str | None = None
    ice_ufrag: str | None = None
    ice_pwd: str | None = None
    ice_options: list[str] = field(default_factory=list)
    fingerprints: list[Fingerprint] = field(default_factory=list)
    setup: str | None = None
    candidates: list[Candidate] = field(default_factory=list)
    end_of_candidates: bool = False
    sctp_port: int | None = None
    max_message_size: int | None = None
    ssrcs: list[int] = field(default_factory=list)
    other: list[str] = field(default_factory=list)
    connection: str | None = None

    def codec(self, name: str) -> Codec | None:
        """Return the first codec called ``name`` (case-insensitive), or None."""
        wanted = name.lower()
        for codec in self.codecs:
            if codec.name.lower() == wanted:
                return codec
        return None


@dataclass(slots=True)
class SessionDescription:
    """A whole session description: session-level fields and the m= sections."""

    origin: str
    session_name: str = "-"
    ice_lite: bool = False
    ice_ufrag: str | None = None
    ice_pwd: str | None = None
    ice_options: list[str] = field(default_factory=list)
    fingerprints: list[Fingerprint] = field(default_factory=list)
    setup: str | None = None
    groups: list[tuple[str, list[str]]] = field(default_factory=list)
    msid_semantic: str | None = None
    media: list[MediaDescription] = field(default_factory=list)
    other: list[str] = field(default_factory=list)
    connection: str | None = None
    timing: str = "0 0"

    def ice_credentials(self, media: MediaDescription) -> tuple[str, str] | None:
        """Return ``(ufrag, pwd)`` for ``media``, falling back to session level."""
        ufrag = media.ice_ufrag if media.ice_ufrag is not None else self.ice_ufrag
        pwd = media.ice_pwd if media.ice_pwd is not None else self.ice_pwd
        if ufrag is None or pwd is None:
            return None
        return ufrag, pwd

    def dtls_fingerprints(self, media: MediaDescription) -> list[Fingerprint]:
        """Return the fingerprints for ``media``, falling back to session level."""
        return list(media.fingerprints or self.fingerprints)

    def dtls_setup(self, media: MediaDescription) -> str | None:
        """Return the ``a=setup`` role for ``media``, falling back to session level."""
        return media.setup if media.setup is not None else self.setup

    def group(self, semantics: str) -> list[str] | None:
        """Return the mids of the first group with these semantics, or None."""
        for name, mids in self.groups:
            if name.upper() == semantics.upper():
                return list(mids)
        return None


# --- parsing ---------------------------------------------------------------


def _int(text: str, lineno: int, what: str, maximum: int, minimum: int = 0) -> int:
    # int() alone would accept " 5", "1_0" and non-ASCII digits.
    if not text or len(text) > 20 or not (text.isascii() and text.isdigit()):
        raise SdpError(lineno, f"{what} is not a number: {text[:40]!r}")
    value = int(text)
    if not minimum <= value <= maximum:
        raise SdpError(lineno, f"{what} out of range: {value}")
    return value


def _token(text: str, lineno: int, what: str) -> str:
    if not _TOKEN.match(text):
        raise SdpError(lineno, f"bad {what}: {text[:40]!r}")
    return text


def _ice_chars(text: str, lineno: int, what: str) -> str:
    if not _ICE_CHARS.match(text):
        raise SdpError(lineno, f"bad {what}: {text[:40]!r}")
    return text


def _ascii(value: str, lineno: int) -> None:
    if not _PRINTABLE_ASCII.match(value):
        raise SdpError(lineno, "non-ASCII or control character where the grammar forbids it")


def _transport_attribute(
    target: SessionDescription | MediaDescription, name: str, arg: str | None, lineno: int
) -> bool:
    """ICE and DTLS attributes, the same at session and media level; False if ``name`` is not one."""
    if name == "ice-ufrag":
        target.ice_ufrag = _ice_chars((arg or "").strip(), lineno, "ice-ufrag")
    elif name == "ice-pwd":
        target.ice_pwd = _ice_chars((arg or "").strip(), lineno, "ice-pwd")
    elif name == "ice-options":
        target.ice_options = [_token(t, lineno, "ice-option") for t in (arg or "").split()]
    elif name == "fingerprint":
        target.fingerprints.append(_parse_fingerprint(arg or "", lineno))
    elif name == "setup":
        target.setup = _parse_setup(arg or "", lineno)
    else:
        return False
    return True


def _transport_lines(target: SessionDescription | MediaDescription) -> list[str]:
    """The ICE and DTLS attribute lines, the same at session and media level."""
    lines = []
    if target.ice_ufrag is not None:
        lines.append(f"a=ice-ufrag:{target.ice_ufrag}")
    if target.ice_pwd is not None:
        lines.append(f"a=ice-pwd:{target.ice_pwd}")
    if target.ice_options:
        lines.append("a=ice-options:" + " ".join(target.ice_options))
    lines.extend(f"a=fingerprint:{fp.algorithm} {fp.value}" for fp in target.fingerprints)
    if target.setup is not None:
        lines.append(f"a=setup:{target.setup}")
    return lines


def _parse_fingerprint(value: str, lineno: int) -> Fingerprint:
    parts = value.split()
    if len(parts) != 2:
        raise SdpError(lineno, "fingerprint needs '<hash> <hex>'")
    algorithm = _token(parts[0], lineno, "fingerprint hash").lower()
    if not _HEX_PAIRS.match(parts[1]):
        raise SdpError(lineno, "fingerprint value is not colon-separated hex")
    return Fingerprint(algorithm, parts[1].upper())


def _parse_setup(value: str, lineno: int) -> str:
    role = value.strip().lower()
    if role not in SETUP_ROLES:
        raise SdpError(lineno, f"unknown setup role {value[:40]!r}")
    return role


def _parse_candidate(value: str, lineno: int) -> Candidate:
    parts = value.split()
    if len(parts) < 8 or parts[6] != "typ":
        raise SdpError(lineno, "candidate needs '<foundation> <component> <transport> <priority> <host> <port> typ <type>'")
    return Candidate(
        foundation=_ice_chars(parts[0], lineno, "candidate foundation"),
        component=_int(parts[1], lineno, "candidate component", 256, 1),
        transport=_token(parts[2], lineno, "candidate transport"),
        priority=_int(parts[3], lineno, "candidate priority", 2**32 - 1),
        host=parts[4],
        port=_int(parts[5], lineno, "candidate port", 65535),
        type=_token(parts[7], lineno, "candidate type"),
        extra=parts[8:],
    )


def _parse_connection(value: str, lineno: int) -> str:
    _ascii(value, lineno)
    parts = value.split()
    if len(parts) != 3:
        raise SdpError(lineno, "c= needs '<nettype> <addrtype> <address>'")
    return " ".join(parts)


def _parse_origin(value: str, lineno: int) -> str:
    _ascii(value, lineno)
    parts = value.split()
    if len(parts) != 6:
        raise SdpError(lineno, "o= needs 6 fields")
    _int(parts[1], lineno, "o= session id", 2**64 - 1)
    _int(parts[2], lineno, "o= session version", 2**64 - 1)
    return " ".join(parts)


def _split_attribute(value: str, lineno: int) -> tuple[str, str | None]:
    name, sep, rest = value.partition(":")
    _token(name, lineno, "attribute name")
    return name, (rest if sep else None)


def _parse_fmtp_parameters(text: str) -> dict[str, str]:
    params: dict[str, str] = {}
    for item in text.split(";"):
        key, _, val = item.partition("=")
        key = key.strip()
        if key:
            params[key] = val.strip()
    return params


def _parse_m_line(value: str, lineno: int) -> MediaDescription:
    _ascii(value, lineno)
    parts = value.split()
    if len(parts) < 4:
        raise SdpError(lineno, "m= needs '<media> <port> <proto> <fmt> ...'")
    kind = _token(parts[0], lineno, "media kind")
    if "/" in parts[1]:
        raise SdpError(lineno, "m= port counts are not supported")
    port = _int(parts[1], lineno, "m= port", 65535)
    proto = parts[2]
    if not all(_TOKEN.match(p) for p in proto.split("/")):
        raise SdpError(lineno, f"bad m= proto {proto[:40]!r}")
    formats = [_token(f, lineno, "m= format") for f in parts[3:]]
    return MediaDescription(kind=kind, port=port, proto=proto, formats=formats)


def _rtpmap_pts(lines: list[tuple[int, str]]) -> set[int]:
    """Payload types that have an rtpmap in this section (fmtp may precede rtpmap)."""
    pts: set[int] = set()
    for lineno, line in lines:
        if line.startswith("a=rtpmap:"):
            head = line[9:].split(None, 1)
            if head:
                pts.add(_int(head[0], lineno, "rtpmap payload type", 127))
    return pts


def _parse_media_section(header: tuple[int, str], lines: list[tuple[int, str]]) -> MediaDescription:
    m_lineno, m_value = header
    media = _parse_m_line(m_value, m_lineno)
    known_pts = _rtpmap_pts(lines)
    codecs: dict[int, Codec] = {}
    pending_fmtp: list[tuple[int, dict[str, str]]] = []
    pending_fb: list[tuple[int, str]] = []
    seen_ssrcs: set[int] = set()
    for lineno, line in lines:
        kind, value = line[0], line[2:]
        if kind != "a":
            if kind == "c" and media.connection is None:
                media.connection = _parse_connection(value, lineno)
            else:
                media.other.append(line)
            continue
        name, arg = _split_attribute(value, lineno)
        if name in _MEDIA_ATTRS:
            _ascii(value, lineno)
        if name == "mid":
            media.mid = _token((arg or "").strip(), lineno, "mid")
        elif name in DIRECTIONS:
            media.direction = name
        elif name == "rtcp-mux":
            media.rtcp_mux = True
        elif name == "rtcp-rsize":
            media.rtcp_rsize = True
        elif _transport_attribute(media, name, arg, lineno):
            pass
        elif name == "candidate":
            media.candidates.append(_parse_candidate(arg or "", lineno))
        elif name == "end-of-candidates":
            media.end_of_candidates = True
        elif name == "sctp-port":
            media.sctp_port = _int((arg or "").strip(), lineno, "sctp-port", 65535)
        elif name == "max-message-size":
            media.max_message_size = _int((arg or "").strip(), lineno, "max-message-size", 2**63 - 1)
        elif name == "extmap":
            parts = (arg or "").split()
            if len(parts) == 2 and parts[0].isascii() and parts[0].isdigit():
                media.extmaps.append((_int(parts[0], lineno, "extmap id", 65535, 1), parts[1]))
            else:
                # direction or extension attributes: keep the line as written
                media.other.append(line)
        elif name == "rtpmap":
            codec = _parse_rtpmap(arg or "", lineno)
            if codec.payload_type in codecs:
                raise SdpError(lineno, f"second rtpmap for payload type {codec.payload_type}")
            codecs[codec.payload_type] = codec
        elif name == "fmtp":
            head = (arg or "").split(None, 1)
            pt = _int(head[0], lineno, "fmtp payload type", 127) if head else -1
            if pt in known_pts:
                pending_fmtp.append((pt, _parse_fmtp_parameters(head[1] if len(head) > 1 else "")))
            else:
                media.other.append(line)
        elif name == "rtcp-fb":
            head = (arg or "").split(None, 1)
            if head and head[0].isascii() and head[0].isdigit() and len(head) == 2 and head[1].strip():
                pt = _int(head[0], lineno, "rtcp-fb payload type", 127)
                if pt in known_pts:
                    pending_fb.append((pt, " ".join(head[1].split())))
                    continue
            media.other.append(line)
        else:
            if name == "ssrc":
                head = (arg or "").split(None, 1)
                ssrc = _int(head[0] if head else "", lineno, "ssrc", 2**32 - 1)
                if ssrc not in seen_ssrcs:
                    seen_ssrcs.add(ssrc)
                    media.ssrcs.append(ssrc)
            media.other.append(line)
    for pt, params in pending_fmtp:
        codecs[pt].parameters.update(params)
    for pt, fb in pending_fb:
        codecs[pt].rtcp_feedback.append(fb)
    media.codecs = list(codecs.values())
    # Kept lines in the order the serializer writes them, so a round trip is exact.
    media.other.sort(key=lambda line: _MEDIA_RANK[line[0]])
    return media


def _parse_rtpmap(arg: str, lineno: int) -> Codec:
    parts = arg.split()
    if len(parts) != 2:
        raise SdpError(lineno, "rtpmap needs '<pt> <name>/<rate>[/<channels>]'")
    pt = _int(parts[0], lineno, "rtpmap payload type", 127)
    enc = parts[1].split("/")
    if len(enc) not in (2, 3):
        raise SdpError(lineno, "rtpmap needs '<name>/<rate>[/<channels>]'")
    name = _token(enc[0], lineno, "codec name")
    rate = _int(enc[1], lineno, "clock rate", 2**32 - 1, 1)
    channels = _int(enc[2], lineno, "channels", 255, 1) if len(enc) == 3 else 1
    return Codec(pt, name, rate, channels)


def _check_free_text(line: str, lineno: int) -> None:
    if not _BYTE_STRING.match(line):
        raise SdpError(lineno, "control character in line")


_MEDIA_ATTRS = frozenset(
    {
        "mid", "sendrecv", "sendonly", "recvonly", "inactive", "rtcp-mux", "rtcp-rsize",
        "ice-ufrag", "ice-pwd", "ice-options", "fingerprint", "setup", "candidate",
        "end-of-candidates", "sctp-port", "max-message-size", "rtpmap", "fmtp", "rtcp-fb", "extmap",
    }
)
_SESSION_ATTRS = frozenset(
    {"ice-lite", "ice-ufrag", "ice-pwd", "ice-options", "fingerprint", "setup", "group", "msid-semantic"}
)


def _split_lines(text: str) -> list[tuple[int, str]]:
    if not isinstance(text, str):
        raise SdpError(0, "SDP must be text")
    raw = text.split("\n")
    if raw and raw[-1] == "":
        raw.pop()
    if len(raw) > MAX_LINES:
        raise SdpError(0, f"more than {MAX_LINES} lines")
    lines: list[tuple[int, str]] = []
    for lineno, line in enumerate(raw, 1):
        if line.endswith("\r"):
            line = line[:-1]
        if len(line) > MAX_LINE_LENGTH:
            raise SdpError(lineno, f"line longer than {MAX_LINE_LENGTH} characters")
        if not line:
            continue  # tolerated: some clients emit blank lines
        if len(line) < 2 or line[1] != "=" or not ("a" <= line[0] <= "z"):
            raise SdpError(lineno, "not a '<type>=<value>' line")
        _check_free_text(line, lineno)
        lines.append((lineno, line))
    return lines


def parse_sdp(text: str) -> SessionDescription:
    """Parse a session description; raise :class:`SdpError` for anything malformed."""
    lines = _split_lines(text)
    if len(lines) < 3:
        raise SdpError(0, "SDP needs at least v=, o= and s= lines")
    (l1, v), (l2, o), (l3, s) = lines[0], lines[1], lines[2]
    if not v.startswith("v="):
        raise SdpError(l1, "first line must be v=")
    if v != "v=0":
        raise SdpError(l1, "only SDP version 0 is supported")
    if not o.startswith("o="):
        raise SdpError(l2, "second line must be o=")
    if not s.startswith("s="):
        raise SdpError(l3, "third line must be s=")
    desc = SessionDescription(origin=_parse_origin(o[2:], l2), session_name=s[2:])

    sections: list[tuple[tuple[int, str], list[tuple[int, str]]]] = []
    seen_timing = False
    for lineno, line in lines[3:]:
        kind, value = line[0], line[2:]
        if kind == "m":
            if len(sections) >= MAX_MEDIA:
                raise SdpError(lineno, f"more than {MAX_MEDIA} m= sections")
            sections.append(((lineno, value), []))
            continue
        if sections:
            if kind not in _MEDIA_TYPES:
                raise SdpError(lineno, f"{kind}= not allowed in a media section")
            sections[-1][1].append((lineno, line))
            continue
        if kind not in _SESSION_TYPES or kind in "vos":
            raise SdpError(lineno, f"unexpected {kind}= line at session level")
        if kind == "t" and not seen_timing:
            _ascii(value, lineno)
            parts = value.split()
            if len(parts) != 2:
                raise SdpError(lineno, "t= needs '<start> <stop>'")
            for part in parts:
                _int(part, lineno, "t= time", 2**64 - 1)
            desc.timing = " ".join(parts)
            seen_timing = True
        elif kind == "c" and desc.connection is None:
            desc.connection = _parse_connection(value, lineno)
        elif kind == "a":
            _parse_session_attribute(desc, line, lineno)
        else:
            desc.other.append(line)

    desc.other.sort(key=lambda line: _SESSION_RANK[line[0]])
    mids: set[str] = set()
    for header, body in sections:
        media = _parse_media_section(header, body)
        if media.mid is not None:
            if media.mid in mids:
                raise SdpError(header[0], f"duplicate mid {media.mid!r}")
            mids.add(media.mid)
        desc.media.append(media)
    return desc


# What parse_sdpfrag puts in front of a fragment so the SDP parser reads it.
_FRAGMENT_HEAD = "v=0\r\no=- 0 0 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n"


def parse_sdpfrag(text: str) -> SessionDescription:
    """Parse an SDP fragment (``application/trickle-ice-sdpfrag``, RFC 8840 §9).

    A fragment is session-level attributes (``a=ice-ufrag``, ``a=ice-pwd``,
    ``a=ice-options``, ``a=group``...) followed by ``m=`` sections with
    ``a=mid`` and ``a=candidate`` lines, without ``v=``, ``o=``, ``s=`` or
    ``t=``. It is parsed by the SDP parser, with the same limits; raises
    :class:`SdpError`.
    """
    if not isinstance(text, str):
        raise SdpError(0, "SDP must be text")
    for lineno, line in enumerate(text.split("\n"), 1):
        if line[:2] in ("v=", "o=", "s=", "t="):
            raise SdpError(lineno, f"{line[:2]} does not belong in an SDP fragment")
    if not text.strip():
        raise SdpError(0, "the fragment is empty")
    return parse_sdp(_FRAGMENT_HEAD + text)


def _parse_session_attribute(desc: SessionDescription, line: str, lineno: int) -> None:
    name, arg = _split_attribute(line[2:], lineno)
    if name not in _SESSION_ATTRS:
        desc.other.append(line)
        return
    _ascii(line, lineno)
    if name == "ice-lite":
        desc.ice_lite = True
    elif _transport_attribute(desc, name, arg, lineno):
        pass
    elif name == "group":
        parts = (arg or "").split()
        if not parts:
            raise SdpError(lineno, "group needs semantics")
        desc.groups.append(
            (_token(parts[0], lineno, "group semantics"), [_token(m, lineno, "group mid") for m in parts[1:]])
        )
    else:  # msid-semantic
        desc.msid_semantic = " ".join((arg or "").split())


# --- serialization ---------------------------------------------------------


def _ordered(typed: list[tuple[int, str]], other: list[str], rank: dict[str, int]) -> list[str]:
    # Typed lines first within a rank, then the kept lines in their order.
    items = [(r, 0, i, line) for i, (r, line) in enumerate(typed)]
    items += [(rank.get(line[:1], rank["a"]), 1, i, line) for i, line in enumerate(other)]
    items.sort(key=lambda item: (item[0], item[1], item[2]))
    return [line for _, _, _, line in items]


def _serialize_media(media: MediaDescription) -> list[str]:
    a = _MEDIA_RANK["a"]
    typed: list[tuple[int, str]] = []
    if media.connection is not None:
        typed.append((_MEDIA_RANK["c"], f"c={media.connection}"))
    if media.mid is not None:
        typed.append((a, f"a=mid:{media.mid}"))
    if media.direction is not None:
        typed.append((a, f"a={media.direction}"))
    typed.extend((a, line) for line in _transport_lines(media))
    if media.rtcp_mux:
        typed.append((a, "a=rtcp-mux"))
    if media.rtcp_rsize:
        typed.append((a, "a=rtcp-rsize"))
    for ext_id, uri in media.extmaps:
        typed.append((a, f"a=extmap:{ext_id} {uri}"))
    for codec in media.codecs:
        enc = f"{codec.name}/{codec.clock_rate}"
        if codec.channels != 1:
            enc += f"/{codec.channels}"
        typed.append((a, f"a=rtpmap:{codec.payload_type} {enc}"))
        for fb in codec.rtcp_feedback:
            typed.append((a, f"a=rtcp-fb:{codec.payload_type} {fb}"))
        if codec.parameters:
            params = ";".join(f"{k}={v}" if v else k for k, v in codec.parameters.items())
            typed.append((a, f"a=fmtp:{codec.payload_type} {params}"))
    if media.sctp_port is not None:
        typed.append((a, f"a=sctp-port:{media.sctp_port}"))
    if media.max_message_size is not None:
        typed.append((a, f"a=max-message-size:{media.max_message_size}"))
    for cand in media.candidates:
        typed.append((a, f"a=candidate:{cand.to_sdp()}"))
    if media.end_of_candidates:
        typed.append((a, "a=end-of-candidates"))
    named = {_ssrc_of(line) for line in media.other if line.startswith("a=ssrc:")}
    for ssrc in media.ssrcs:
        if ssrc not in named:
            # an SSRC set programmatically without its attribute lines
            typed.append((a, f"a=ssrc:{ssrc} cname:voiceedge"))
    head = f"m={media.kind} {media.port} {media.proto} {' '.join(media.formats)}"
    return [head, *_ordered(typed, media.other, _MEDIA_RANK)]


def _ssrc_of(line: str) -> int | None:
    head = line[7:].split(None, 1)
    return int(head[0]) if head and head[0].isascii() and head[0].isdigit() else None


def serialize_sdp(desc: SessionDescription) -> str:
    """Serialize ``desc`` with CRLF line endings, in RFC 8866 line order."""
    a = _SESSION_RANK["a"]
    typed: list[tuple[int, str]] = [(_SESSION_RANK["t"], f"t={desc.timing}")]
    if desc.connection is not None:
        typed.append((_SESSION_RANK["c"], f"c={desc.connection}"))
    if desc.ice_lite:
        typed.append((a, "a=ice-lite"))
    typed.extend((a, line) for line in _transport_lines(desc))
    for semantics, mids in desc.groups:
        typed.append((a, "a=group:" + " ".join([semantics, *mids])))
    if desc.msid_semantic is not None:
        typed.append((a, f"a=msid-semantic: {desc.msid_semantic}"))
    lines = ["v=0", f"o={desc.origin}", f"s={desc.session_name}"]
    lines += _ordered(typed, desc.other, _SESSION_RANK)
    for media in desc.media:
        lines += _serialize_media(media)
    return "\r\n".join(lines) + "\r\n"
