# Types of the compiled helper voiceedge/transceiver/_srtpio.c (see its comments for ownership and failures).
from typing import Any, Callable, Iterable

BUFFER_SIZE: int
MAX_ACCEPTED: int
CODE_ELSEWHERE: int
CODE_TOO_LONG: int
CODE_RTP_SHORT: int
CODE_RTP_VERSION: int
CODE_RTP_CSRC: int
CODE_RTP_EXTENSION: int
CODE_RTP_PADDING: int

class RtpIo:
    def __init__(
        self,
        protect: int,
        unprotect: int,
        tx: int,
        rx: int,
        owners: Any,
        failed: Callable[[int, Any], Any],
        min_rtp: int,
        max_rtp: int,
    ) -> None: ...
    def read_rtp(self, packet: bytes) -> tuple[int, int, int, int, bytes]: ...
    def write_rtp(
        self, marker_payload_type: int, sequence_number: int, timestamp: int, ssrc: int, extension: bytes, payload: bytes
    ) -> bytes: ...
    def accept(self, ssrcs: Iterable[int]) -> None: ...
