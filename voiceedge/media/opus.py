# -*- test-case-name: tests.test_opus -*-
"""Opus decode/encode between RTP payloads and PCM16 mono, on libopus directly (ctypes).

Why libopus through ``ctypes`` and not PyAV's ``CodecContext`` (what we used
before) or opuslib, measured with ``python bench/codec.py`` (ours beside PyAV):

- Under load nearly half of a transcoding transceiver's CPU was the encode
  path, and a third of that was PyAV, not libopus: an ``AudioFrame`` per frame,
  an FFmpeg filter-graph resampler per encode, a generator, FFmpeg's
  multistream encoder.  Here a frame is one ``opus_encode`` call on the bytes
  we already hold, into a buffer the coder owns: nothing but the returned
  payload is allocated per call.
- FFmpeg's decoder always decodes at 48 kHz (lower rates went through
  swresample, with its delay filled with leading zeros) and always calls
  ``opus_decode`` with ``decode_fec=0``.  libopus decodes natively at
  8/12/16/24/48 kHz, and :meth:`OpusDecoder.decode_fec` reaches **Opus in-band
  FEC** (:attr:`OpusDecoder.supports_fec` is ``True``): the redundant copy of a
  lost frame that the next packet carries when the sender has FEC on (browsers
  do when the SDP says ``useinbandfec=1``, which every answer of ours does).
- No new dependency: the library is the libopus that PyAV's wheel bundles
  (``av.libs/libopus-*.so*``, found without importing PyAV: a current 1.5/1.6
  on any machine after ``pip install``), else the system's (Debian's
  ``libopus0``), else ``$VOICEEDGE_LIBOPUS`` if set, first.  Neither:
  :class:`OpusUnavailable` when the first coder is made.

Everything that reaches C is bounded first: a payload's duration is read from
its TOC (:func:`voiceedge.wire.opus.packet_duration`; over 120 ms, empty, or a
code 3 packet without frames is refused), every call writes into a
preallocated buffer of 120 ms with its capacity passed, and a negative libopus
return code becomes :class:`CodecError` with libopus's own message; the coder
stays usable.  Coders are freed (``opus_*_destroy``) when garbage collected.

PCM is signed 16-bit little-endian mono at the decoder's or encoder's sample rate.
Stereo Opus (some browsers send it) is downmixed by libopus itself, since the
decoder is opened with one channel.  The RTP clock of Opus is always 48 kHz
(RFC 7587 §4.1) whatever the PCM rate: one 20 ms frame advances the RTP timestamp
by :data:`RTP_TIMESTAMP_STEP`.
"""

from __future__ import annotations

import array
import ctypes
import ctypes.util
import functools
import importlib.util
import os
import sys
from pathlib import Path
from typing import Any, ClassVar, Iterable, Iterator

from voiceedge.wire.errors import WireError
from voiceedge.wire.opus import OpusPacketError, packet_duration

__all__ = [
    "FRAME_MS",
    "RTP_CLOCK_RATE",
    "RTP_TIMESTAMP_STEP",
    "SUPPORTED_RATES",
    "CodecError",
    "OpusDecoder",
    "OpusEncoder",
    "OpusUnavailable",
    "libopus_version",
    "live_coders",
]

#: PCM sample rates Opus encodes and decodes natively.
SUPPORTED_RATES = (8000, 12000, 16000, 24000, 48000)
#: Opus's RTP clock rate, whatever the PCM rate (RFC 7587 §4.1).
RTP_CLOCK_RATE = 48000
#: The frame length voiceedge sends and expects, in milliseconds.
FRAME_MS = 20
#: RTP timestamp increment of one 20 ms Opus frame.
RTP_TIMESTAMP_STEP = RTP_CLOCK_RATE * FRAME_MS // 1000

_BIG_ENDIAN = sys.byteorder == "big"
_MAX_PACKET_MS = 120  # the longest an Opus packet can be (RFC 6716 §3.2.5)
_MAX_PAYLOAD = 1500  # one 20 ms frame is at most 1275 bytes (RFC 6716 §3.2.1), plus its TOC

# From opus_defines.h.
_OPUS_OK = 0
_APPLICATIONS = {"voip": 2048, "audio": 2049, "lowdelay": 2051}
_SET_BITRATE = 4002
_SET_VBR_CONSTRAINT = 4020
_SET_COMPLEXITY = 4010
_SET_INBAND_FEC = 4012
_SET_PACKET_LOSS_PERC = 4014
_RESET_STATE = 4028

#: The environment variable that names a libopus to load before any other.
LIBOPUS_ENV = "VOICEEDGE_LIBOPUS"


class CodecError(WireError):
    """An Opus payload that does not decode, or PCM that does not encode.

    A :class:`~voiceedge.wire.errors.WireError` (so a ``ValueError``): the one type
    the media path catches for hostile or malformed audio.
    """


class OpusUnavailable(RuntimeError):
    """No libopus could be loaded: neither PyAV's bundled one nor the system's."""


def libopus_candidates() -> Iterator[str]:
    """Where to look for libopus, in order: ``$VOICEEDGE_LIBOPUS``, PyAV's wheel, the system.

    Lazily: the system's is looked up (``ldconfig -p``, a process) only if no other loaded.
    """
    if os.environ.get(LIBOPUS_ENV):
        yield os.environ[LIBOPUS_ENV]
    # find_spec locates PyAV without importing it (and FFmpeg with it).
    spec = importlib.util.find_spec("av")
    if spec is not None and spec.origin:
        package = Path(spec.origin).resolve().parent
        for folder, pattern in (
            (package.parent / "av.libs", "libopus*.so*"),  # Linux wheels (auditwheel)
            (package / ".dylibs", "libopus*.dylib"),  # macOS wheels (delocate)
            (package.parent / "av.libs", "opus*.dll"),  # Windows wheels (delvewheel)
        ):
            yield from sorted(str(p) for p in folder.glob(pattern))
    system = ctypes.util.find_library("opus")
    if system:
        yield system


class _LibOpus:
    """The few libopus functions we call, with their C signatures declared."""

    def __init__(self, path: str) -> None:
        lib = ctypes.CDLL(path)
        self.path = path
        c_int, c_int32, c_void_p, c_char_p = ctypes.c_int, ctypes.c_int32, ctypes.c_void_p, ctypes.c_char_p
        int_p = ctypes.POINTER(ctypes.c_int)
        pcm_p = ctypes.POINTER(ctypes.c_int16)
        data_p = ctypes.POINTER(ctypes.c_ubyte)

        def bind(name: str, restype: Any, *argtypes: Any) -> Any:
            function = getattr(lib, name)
            function.restype = restype
            function.argtypes = list(argtypes)
            return function

        self.get_version_string = bind("opus_get_version_string", c_char_p)
        self.strerror = bind("opus_strerror", c_char_p, c_int)
        self.encoder_create = bind("opus_encoder_create", c_void_p, c_int32, c_int, c_int, int_p)
        self.encoder_destroy = bind("opus_encoder_destroy", None, c_void_p)
        # opus_int32 opus_encode(OpusEncoder*, const opus_int16*, int frame_size,
        #                        unsigned char*, opus_int32 max_data_bytes)
        self.encode = bind("opus_encode", c_int32, c_void_p, c_char_p, c_int, data_p, c_int32)
        self.decoder_create = bind("opus_decoder_create", c_void_p, c_int32, c_int, int_p)
        self.decoder_destroy = bind("opus_decoder_destroy", None, c_void_p)
        # int opus_decode(OpusDecoder*, const unsigned char*, opus_int32 len,
        #                 opus_int16*, int frame_size, int decode_fec)
        self.decode = bind("opus_decode", c_int, c_void_p, c_char_p, c_int32, pcm_p, c_int, c_int)
        # The _ctl functions are variadic: only the fixed arguments are declared,
        # and ctypes passes the rest as variadic arguments (ffi_prep_cif_var),
        # each a C int, as the request macros of opus_defines.h do.
        self.encoder_ctl = bind("opus_encoder_ctl", c_int, c_void_p, c_int)
        self.decoder_ctl = bind("opus_decoder_ctl", c_int, c_void_p, c_int)
        # int opus_packet_has_lbrr(const unsigned char*, opus_int32 len): libopus 1.5 and later.
        self.packet_has_lbrr = (
            bind("opus_packet_has_lbrr", c_int, c_char_p, c_int32) if hasattr(lib, "opus_packet_has_lbrr") else None
        )

    def error(self, code: int) -> str:
        """libopus's message for a negative return code."""
        message = self.strerror(code)
        return message.decode("ascii", "replace") if message else f"error {code}"


_lib: _LibOpus | None = None
_live = 0  # coders created and not yet destroyed


def load_libopus(candidates: Iterable[str] | None = None) -> _LibOpus:
    """The libopus binding, loaded once from the first of ``candidates`` that loads.

    :class:`OpusUnavailable` names every place tried when none does.
    """
    global _lib
    if _lib is not None and candidates is None:
        return _lib
    tried = []
    for path in libopus_candidates() if candidates is None else candidates:
        try:
            lib = _LibOpus(path)
        except (OSError, AttributeError) as e:
            tried.append(f"{path}: {e}")
            continue
        if candidates is None:
            _lib = lib
        return lib
    raise OpusUnavailable(
        "no libopus found: install PyAV (its wheel bundles one: pip install av), or the "
        f"system's (Debian: apt-get install libopus0), or point {LIBOPUS_ENV} at one"
        + (f"; tried {'; '.join(tried)}" if tried else "")
    )


def libopus_version() -> str:
    """The version string of the libopus in use, e.g. ``libopus 1.6.1``, and its path."""
    lib = load_libopus()
    return f"{lib.get_version_string().decode('ascii', 'replace')} ({lib.path})"


def live_coders() -> int:
    """Encoders and decoders created in this process and not yet freed."""
    return _live


def _check_rate(sample_rate: int) -> None:
    if sample_rate not in SUPPORTED_RATES:
        raise CodecError(
            f"Opus sample rate must be one of {SUPPORTED_RATES}, not {sample_rate!r}"
        )


@functools.lru_cache(maxsize=None)
def _decode_buffer(capacity: int) -> tuple[Any, memoryview]:
    """The output buffer decoders of ``capacity`` samples share: libopus writes it, :meth:`OpusDecoder._pcm` copies out."""
    buffer = bytearray(capacity * 2)
    return (ctypes.c_int16 * capacity).from_buffer(buffer), memoryview(buffer)


class OpusDecoder:
    """Decode Opus RTP payloads to PCM16 mono at ``sample_rate``.

    Every call returns exactly the audio its packet (or concealment) stands for:
    ``sample_rate / 50`` samples for a 20 ms frame.  One decoder per stream: Opus
    decoding is stateful.  Decoders at one rate share one output buffer (11 kB
    at 48 kHz, copied out before a call returns), so a process's decoders are
    used from one thread, as the reactor's are.
    """

    #: Whether :meth:`decode_fec` uses Opus in-band FEC (it does: libopus directly).
    supports_fec: ClassVar[bool] = True

    __slots__ = ("sample_rate", "frame_samples", "_lib", "_state", "_out", "_view", "_capacity")

    def __init__(self, sample_rate: int) -> None:
        _check_rate(sample_rate)
        global _live
        self._state: int | None = None
        lib = self._lib = load_libopus()
        self.sample_rate = sample_rate
        #: Samples in one 20 ms frame at ``sample_rate``.
        self.frame_samples = sample_rate * FRAME_MS // 1000
        self._capacity = sample_rate * _MAX_PACKET_MS // 1000
        self._out, self._view = _decode_buffer(self._capacity)
        error = ctypes.c_int(0)
        state = lib.decoder_create(sample_rate, 1, ctypes.byref(error))
        if not state or error.value != _OPUS_OK:
            raise CodecError(f"cannot open the Opus decoder: {lib.error(error.value)}")
        self._state = state
        _live += 1

    def __del__(self) -> None:
        state = getattr(self, "_state", None)
        if state:
            global _live
            self._state = None
            self._lib.decoder_destroy(state)
            _live -= 1

    def decode(self, payload: bytes) -> bytes:
        """Decode one Opus packet to PCM16 mono little-endian at ``sample_rate``.

        Raise :class:`CodecError` for an empty or corrupt payload; the decoder
        stays usable.
        """
        try:
            packet_duration(payload)  # at most 120 ms: what the buffer holds
        except OpusPacketError as e:
            raise CodecError(f"malformed Opus payload ({len(payload)} bytes): {e}") from None
        samples = self._lib.decode(self._state, payload, len(payload), self._out, self._capacity, 0)
        if samples < 0:
            raise CodecError(
                f"corrupt Opus payload ({len(payload)} bytes): {self._lib.error(samples)}"
            )
        return self._pcm(samples)

    def conceal(self, samples: int | None = None) -> bytes:
        """Return concealment audio for a lost frame (libopus PLC).

        ``samples`` defaults to one 20 ms frame; it must be a positive multiple of
        10 ms of samples, at most 120 ms.  Before any packet it is silence.
        """
        step = self.sample_rate // 100
        if samples is None:
            samples = self.frame_samples
        if samples <= 0 or samples % step or samples > self._capacity:
            raise CodecError(
                f"can conceal only multiples of 10 ms up to {_MAX_PACKET_MS} ms, "
                f"not {samples!r} samples at {self.sample_rate} Hz"
            )
        return self._plc(samples)

    def decode_fec(self, next_payload: bytes) -> bytes:
        """Return audio for the 20 ms frame lost just before ``next_payload``.

        Decodes the redundant (LBRR) copy of the lost frame that ``next_payload``
        carries when its sender has in-band FEC on; libopus conceals (PLC) when
        it carries none (FEC off, or a CELT-only packet), and so does this when
        ``next_payload`` is malformed (:meth:`decode` will report it).  Call
        :meth:`decode` on ``next_payload`` afterwards as usual.
        """
        samples = self.frame_samples
        try:
            packet_duration(next_payload)
        except OpusPacketError:
            return self._plc(samples)
        got = self._lib.decode(self._state, next_payload, len(next_payload), self._out, samples, 1)
        if got != samples:
            return self._plc(samples)
        return self._pcm(got)

    def carries_fec(self, payload: bytes) -> bool | None:
        """Whether ``payload`` carries an in-band FEC (LBRR) copy of the frame before it.

        ``None`` when this libopus (before 1.5) cannot tell; ``False`` for a
        malformed payload.
        """
        has_lbrr = self._lib.packet_has_lbrr
        if has_lbrr is None:
            return None
        return bool(has_lbrr(payload, len(payload)) == 1)

    def reset(self) -> None:
        """Forget the stream so far (``OPUS_RESET_STATE``), as a fresh decoder."""
        code = self._lib.decoder_ctl(self._state, _RESET_STATE)
        if code != _OPUS_OK:
            raise CodecError(f"cannot reset the Opus decoder: {self._lib.error(code)}")

    def _plc(self, samples: int) -> bytes:
        got = self._lib.decode(self._state, None, 0, self._out, samples, 0)
        if got != samples:
            raise CodecError(f"Opus concealment failed: {self._lib.error(got)}")
        return self._pcm(got)

    def _pcm(self, samples: int) -> bytes:
        """The first ``samples`` of the output buffer as PCM16 little-endian bytes."""
        data = self._view[: samples * 2].tobytes()
        if _BIG_ENDIAN:
            swapped = array.array("h", data)
            swapped.byteswap()
            data = swapped.tobytes()
        return data


class OpusEncoder:
    """Encode 20 ms frames of PCM16 mono at ``sample_rate`` to Opus RTP payloads.

    ``bitrate`` is in bits per second (6000-510000), variable (unconstrained VBR,
    as FFmpeg's wrapper set it before); ``complexity`` is libopus's 0-10
    CPU/quality trade-off (``None``: 10).  A positive ``packet_loss_percent``
    turns on Opus in-band FEC, tuned for that much loss. ``application`` is
    libopus's ``voip`` (speech, the default), ``audio`` or ``lowdelay``.  Each
    payload advances the RTP timestamp by :data:`RTP_TIMESTAMP_STEP` (48 kHz
    clock) whatever ``sample_rate`` is.
    """

    __slots__ = ("sample_rate", "frame_samples", "_frame_bytes", "_lib", "_state", "_out", "_view")

    def __init__(
        self,
        sample_rate: int,
        bitrate: int = 32000,
        complexity: int | None = None,
        *,
        packet_loss_percent: int = 0,
        application: str = "voip",
    ) -> None:
        self._state: int | None = None
        _check_rate(sample_rate)
        if not 6000 <= bitrate <= 510000:
            raise CodecError(f"Opus bitrate must be 6000-510000 bit/s, not {bitrate!r}")
        if complexity is not None and not 0 <= complexity <= 10:
            raise CodecError(f"Opus complexity must be 0-10, not {complexity!r}")
        if not 0 <= packet_loss_percent <= 100:
            raise CodecError(f"packet loss must be 0-100 %, not {packet_loss_percent!r}")
        if application not in _APPLICATIONS:
            raise CodecError(f"unknown Opus application {application!r}")
        global _live
        lib = self._lib = load_libopus()
        self.sample_rate = sample_rate
        #: Samples in one 20 ms frame: :meth:`encode` takes exactly this many.
        self.frame_samples = sample_rate * FRAME_MS // 1000
        self._frame_bytes = self.frame_samples * 2
        buffer = bytearray(_MAX_PAYLOAD)
        self._out = (ctypes.c_ubyte * _MAX_PAYLOAD).from_buffer(buffer)
        self._view = memoryview(buffer)
        error = ctypes.c_int(0)
        state = lib.encoder_create(sample_rate, 1, _APPLICATIONS[application], ctypes.byref(error))
        if not state or error.value != _OPUS_OK:
            raise CodecError(f"cannot open the Opus encoder: {lib.error(error.value)}")
        self._state = state
        _live += 1
        for request, value in (
            (_SET_BITRATE, bitrate),
            (_SET_VBR_CONSTRAINT, 0),
            (_SET_COMPLEXITY, 10 if complexity is None else complexity),
            (_SET_INBAND_FEC, 1 if packet_loss_percent else 0),
            (_SET_PACKET_LOSS_PERC, packet_loss_percent),
        ):
            code = lib.encoder_ctl(state, request, ctypes.c_int(value))
            if code != _OPUS_OK:
                raise CodecError(f"cannot set up the Opus encoder ({request}={value}): {lib.error(code)}")

    def __del__(self) -> None:
        state = getattr(self, "_state", None)
        if state:
            global _live
            self._state = None
            self._lib.encoder_destroy(state)
            _live -= 1

    def encode(self, pcm: bytes) -> bytes:
        """Encode exactly one 20 ms frame of PCM16 mono little-endian to one payload."""
        if len(pcm) != self._frame_bytes:
            raise CodecError(
                f"Opus frame must be {self._frame_bytes} bytes "
                f"({FRAME_MS} ms at {self.sample_rate} Hz), not {len(pcm)}"
            )
        if _BIG_ENDIAN:
            samples = array.array("h", pcm)
            samples.byteswap()
            pcm = samples.tobytes()
        size = self._lib.encode(self._state, bytes(pcm), self.frame_samples, self._out, _MAX_PAYLOAD)
        if size < 0:
            raise CodecError(f"Opus encoding failed: {self._lib.error(size)}")
        return self._view[:size].tobytes()

    def reset(self) -> None:
        """Start over (``OPUS_RESET_STATE``): the next frame is coded as by a fresh encoder."""
        code = self._lib.encoder_ctl(self._state, _RESET_STATE)
        if code != _OPUS_OK:
            raise CodecError(f"cannot reset the Opus encoder: {self._lib.error(code)}")
