# -*- test-case-name: tests.test_tap -*-
"""The transceiver's settings: ``[transceiver]``, ``[route]``, ``[speech]``, ``[agent]``, typed and frozen."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Mapping

from voiceedge import config as c
from voiceedge.config import Address, SettingError, section, setting
from voiceedge.fleet.settings import DrainSettings, InternalApiSettings, RegistrySettings
from voiceedge.redis_connection import RedisConnectionSettings
from voiceedge.media.detection import DetectionSettings, DetectorName, parse_detector
from voiceedge.transceiver.audio import APPLICATIONS, DEFAULT_APPLICATION, StopTail, parse_stop_tail
from voiceedge.signaling.settings import SignalingSettings
from voiceedge.workers import ProcessSettings

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

__all__ = [
    "AgentSettings",
    "RouteSettings",
    "SpeechSettings",
    "TransceiverServiceSettings",
    "TransceiverSettings",
]


@dataclass(frozen=True, slots=True)
class TransceiverSettings:
    """``[transceiver]``: the shared media socket and the session limits."""

    media_listen: Address = setting(c.address, "127.0.0.1:3478", "UDP address of the shared media socket")
    advertised_address: Address | None = setting(
        c.optional_address, "", "the candidate put in answers (default: media_listen)"
    )
    max_sessions: int = setting(c.integer(1, 1_000_000), "1000", "sessions beyond this get 503")
    max_cpu_percent: float = setting(
        c.number(0, 6400),
        "80",
        "new sessions get 503 while this process uses or waits for more of a core (smoothed); 0: no limit",
    )
    max_loop_lag_ms: float = setting(
        c.number(0, 60_000), "25", "new sessions get 503 while the event loop runs this late (smoothed); 0: no limit"
    )
    media_poll_ms: float = setting(
        c.number(0, 20),
        "2",
        "under load, read the media socket every this many ms rather than at each datagram "
        "(a datagram waits at most this long); 0: at each datagram",
    )
    setup_timeout: float = setting(c.seconds(1, 300), "15", "seconds for ICE and DTLS to complete")
    consent_timeout: float = setting(c.seconds(5, 300), "30", "RFC 7675 consent lifetime")
    relay_networks: tuple[Network, ...] = setting(
        c.networks, "", "networks whose relays may send encapsulated client packets"
    )
    opus_complexity: int = setting(
        c.integer(0, 10), "5", "libopus complexity of agent audio (0-10: CPU against quality)"
    )
    opus_application: str = setting(
        c.word(*APPLICATIONS),
        DEFAULT_APPLICATION,
        "libopus application of agent audio: lowdelay (CELT only: about a third of the CPU, more bits), "
        "voip (SILK or hybrid for speech: fewer bits at the same PESQ-WB) or audio",
    )
    stop_tail: StopTail = setting(
        parse_stop_tail,
        "dtx",
        "how agent audio cut short ends: dtx (a 5 ms fade, a silent frame, an Opus DTX frame), silence "
        "(a fade, then encoded silence) or abrupt (nothing: the caller's decoder conceals; to compare)",
    )

    @property
    def advertised(self) -> Address:
        """The candidate in answers: ``advertised_address``, else ``media_listen``."""
        return self.advertised_address or self.media_listen


@dataclass(frozen=True, slots=True)
class RouteSettings:
    """``[route]``: the route token this transceiver puts in its ufrags."""

    keys: Mapping[int, bytes] = setting(
        c.token_keys, "", "fleet route-token keys <id>:<base64>; empty: random ufrags", secret=True
    )
    issuing_key: int | None = setting(
        c.optional_integer(0, 255), "", "key id new tokens use (default: highest)"
    )
    cluster: int = setting(c.integer(0, 65535), "0", "this transceiver's cluster id")
    address: Address | None = setting(
        c.optional_address, "", "where relays reach this transceiver (default: media_listen)"
    )

    def __post_init__(self) -> None:
        if self.keys and self.issuing_key is not None and self.issuing_key not in self.keys:
            raise SettingError("issuing_key", f"{self.issuing_key} is not among the keys")

    @property
    def issuing(self) -> int:
        """The key id new tokens use: ``issuing_key``, else the highest id."""
        return max(self.keys) if self.issuing_key is None else self.issuing_key


@dataclass(frozen=True, slots=True)
class SpeechSettings:
    """``[speech]``: the session's one speech detector; its events drive barge-in and the agent's turns."""

    detector: DetectorName = setting(
        parse_detector, "silero", "silero (neural VAD, an end of turn that adapts) or energy (a level and a fixed silence)"
    )
    min_speech_ms: int = setting(c.integer(20, 2000), "40", "voice this long starts speech (and barge-in)")
    max_wait_ms: int | None = setting(
        c.optional_integer(100, 600_000), "", "the longest turn before speech is taken as stopped (empty: none)"
    )
    threshold: float = setting(c.number(0.2, 0.99), "0.5", "silero: the voice probability that counts as voice")
    final_silence_ms: int = setting(c.integer(0, 10000), "200", "silero: silence that ends a turn after a final fall")
    neutral_silence_ms: int = setting(c.integer(0, 10000), "800", "silero: silence that ends a turn otherwise")
    hesitation_silence_ms: int = setting(
        c.integer(0, 10000), "1200", "silero: silence that ends a turn after a short fragment"
    )
    short_phrase_ms: int = setting(c.integer(0, 10000), "600", "silero: voice shorter than this before a pause is a fragment")
    threshold_db: float = setting(c.number(3, 60), "12", "energy: dB above the noise floor that counts as voice")
    silence_ms: int = setting(c.integer(100, 10000), "500", "energy: silence this long stops speech")
    barge_in: bool = setting(c.boolean, "yes", "clear queued agent audio when the caller starts speaking")

    def __post_init__(self) -> None:
        if not self.final_silence_ms <= self.neutral_silence_ms <= self.hesitation_silence_ms:
            raise SettingError(
                "neutral_silence_ms", "silences must be final_silence_ms <= neutral_silence_ms <= hesitation_silence_ms"
            )

    def detection(self) -> DetectionSettings:
        """The detector and knobs every session starts with."""
        return DetectionSettings(
            self.detector,
            min_speech_ms=self.min_speech_ms,
            silence_ms=self.silence_ms,
            max_wait_ms=self.max_wait_ms,
            threshold_db=self.threshold_db,
            threshold=self.threshold,
            final_silence_ms=self.final_silence_ms,
            neutral_silence_ms=self.neutral_silence_ms,
            hesitation_silence_ms=self.hesitation_silence_ms,
            short_phrase_ms=self.short_phrase_ms,
        )


@dataclass(frozen=True, slots=True)
class AgentSettings:
    """``[agent]``: which agent plugin sits behind every session (its options: ``[agent.<name>]``)."""

    name: str = setting(c.nonempty, "echo", "the agent behind every session (an installed agent plugin)")
    offered: tuple[str, ...] = setting(
        c.words,
        "",
        "more agents a client secret may choose per call (its session.agent), each set up in [agent.<name>]",
    )


@dataclass(frozen=True, slots=True)
class TransceiverServiceSettings:
    """Everything ``twistd voiceedge-transceiver`` reads from its INI file (less the agent's options)."""

    signaling: SignalingSettings = section(SignalingSettings)
    transceiver: TransceiverSettings = section(TransceiverSettings)
    route: RouteSettings = section(RouteSettings)
    speech: SpeechSettings = section(SpeechSettings)
    agent: AgentSettings = section(AgentSettings)
    internal: InternalApiSettings = section(InternalApiSettings)
    registry: RegistrySettings = section(RegistrySettings)
    redis: RedisConnectionSettings = section(RedisConnectionSettings)
    drain: DrainSettings = section(DrainSettings)
    process: ProcessSettings = section(ProcessSettings)

    def __post_init__(self) -> None:
        if self.registry.enabled and self.internal.reachable_at is None:
            raise SettingError(
                "enabled",
                "the registry needs [internal] listen on a concrete address, or [internal] address",
                section="registry",
            )
