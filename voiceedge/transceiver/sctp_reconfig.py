# -*- test-case-name: tests.test_sctp_parts -*-
"""SCTP stream reconfiguration (RFC 6525): our stream resets, one request at a time, and answers to the peer's."""

from __future__ import annotations

from voiceedge.transceiver.sctp_events import StreamsReset
from voiceedge.transceiver.sctp_receiver import SctpReceiver
from voiceedge.transceiver.sctp_tsn import TSN_MASK, unwrap_tsn
from voiceedge.wire import sctp_chunks as sc
from voiceedge.wire.sctp_chunks import (
    AddStreamsRequest,
    IncomingResetRequest,
    OutgoingResetRequest,
    ReconfigChunk,
    ReconfigResponse,
)

__all__ = [
    "RESULT_BAD_SEQUENCE",
    "RESULT_DENIED",
    "RESULT_IN_PROGRESS",
    "RESULT_NOTHING_TO_DO",
    "RESULT_PERFORMED",
    "StreamReconfiguration",
]

# RE-CONFIG results (RFC 6525 §4.4).
RESULT_NOTHING_TO_DO = 0
RESULT_PERFORMED = 1
RESULT_DENIED = 2
RESULT_ERROR_REQUEST_IN_PROGRESS = 4
RESULT_BAD_SEQUENCE = 5
RESULT_IN_PROGRESS = 6

_MAX_STREAMS = 65535
# Streams named in one Outgoing SSN Reset Request; the rest wait for the next one.
_STREAMS_PER_REQUEST = 100


class StreamReconfiguration:
    """The RE-CONFIG side of one association.

    Ours: :meth:`queue` stream ids, :meth:`send_request` sends an Outgoing SSN Reset Request when
    none is outstanding, :meth:`on_timer` resends it at :attr:`deadline`; :meth:`on_param` returns
    the request when the peer's response completes it. Theirs: Outgoing SSN Reset Requests are
    answered in sequence and performed on the :class:`SctpReceiver` once every TSN sent before them
    arrived (:meth:`perform_deferred_reset`, §5.2.2); other requests are denied, except Add
    Outgoing Streams, which costs nothing. Chunks to send and events collect here for the
    association to take (:meth:`take_chunks`, :meth:`take_events`).
    """

    def __init__(self, receiver: SctpReceiver, request_seq: int, incoming_streams: int) -> None:
        self._receiver = receiver
        self.incoming_streams = incoming_streams
        self._queue: list[int] = []
        self._resetting: set[int] = set()
        self._my_req_seq = request_seq
        self._my_request: OutgoingResetRequest | None = None
        self._timer_at: float | None = None
        self._peer_req_next = 0
        self._last_response: ReconfigResponse | None = None
        self._deferred_reset: OutgoingResetRequest | None = None
        self._chunks: list[bytes] = []
        self._events: list[StreamsReset] = []

    def start(self, peer_request_seq: int, incoming_streams: int) -> None:
        """Expect the peer's requests from ``peer_request_seq`` (its initial TSN, §5.1.1)."""
        self._peer_req_next = peer_request_seq
        self.incoming_streams = incoming_streams

    @property
    def deadline(self) -> float | None:
        """When our outstanding request is resent, or None."""
        return self._timer_at

    def stop(self) -> None:
        """The association ended: nothing is resent."""
        self._timer_at = None

    def take_chunks(self) -> list[bytes]:
        """Return and forget the RE-CONFIG chunks to send."""
        chunks, self._chunks = self._chunks, []
        return chunks

    def take_events(self) -> list[StreamsReset]:
        """Return and forget the resets that completed."""
        events, self._events = self._events, []
        return events

    # -- our requests ---------------------------------------------------------------------------

    def queue(self, stream_ids: list[int] | tuple[int, ...]) -> None:
        """Queue our outgoing streams for reset; ids out of range or already queued are skipped."""
        for sid in stream_ids:
            if 0 <= sid <= 0xFFFF and sid not in self._resetting:
                self._resetting.add(sid)
                self._queue.append(sid)

    def is_resetting(self, stream_id: int) -> bool:
        """Whether a reset of our stream is queued or outstanding (it takes no new messages)."""
        return stream_id in self._resetting

    def send_request(self, last_tsn: int, now: float, rto: float) -> None:
        """Send the next request if none is outstanding; ``last_tsn`` is our last TSN assigned."""
        if self._my_request is not None or not self._queue:
            return
        streams = tuple(self._queue[:_STREAMS_PER_REQUEST])
        del self._queue[:_STREAMS_PER_REQUEST]
        request = OutgoingResetRequest(
            self._my_req_seq & TSN_MASK, (self._peer_req_next - 1) & TSN_MASK, last_tsn, streams
        )
        self._my_request = request
        self._timer_at = now + rto
        self._chunks.append(ReconfigChunk((request,)).encode())

    def on_timer(self, now: float, rto: float) -> None:
        """The reconfiguration timer expired (the RTO already backed off): resend our request."""
        if self._my_request is None:
            self._timer_at = None
            return
        self._timer_at = now + rto
        self._chunks.append(ReconfigChunk((self._my_request,)).encode())

    # -- parameters from the peer ---------------------------------------------------------------

    def on_param(self, param: sc.ReconfigParam, now: float, rto: float) -> OutgoingResetRequest | None:
        """Handle one parameter of a RE-CONFIG chunk; return our request if this response completed it."""
        if isinstance(param, OutgoingResetRequest):
            self._on_outgoing_reset_request(param)
        elif isinstance(param, ReconfigResponse):
            return self._on_response(param, now, rto)
        elif isinstance(param, (IncomingResetRequest, AddStreamsRequest)):
            seq = param.request_seq
            if seq == self._peer_req_next & TSN_MASK:
                self._peer_req_next += 1
                result = RESULT_DENIED
                if isinstance(param, AddStreamsRequest) and param.param_type == sc.PARAM_ADD_OUTGOING_STREAMS:
                    # Every stream id up to 65535 is already accepted inbound.
                    self.incoming_streams = min(self.incoming_streams + param.new_streams, _MAX_STREAMS)
                    result = RESULT_PERFORMED
                self._last_response = ReconfigResponse(seq, result)
                self._respond(self._last_response)
            elif self._last_response is not None and seq == self._last_response.response_seq:
                self._respond(self._last_response)
            else:
                self._respond(ReconfigResponse(seq, RESULT_BAD_SEQUENCE))
        return None

    def _respond(self, response: ReconfigResponse) -> None:
        self._chunks.append(ReconfigChunk((response,)).encode())

    def _on_outgoing_reset_request(self, request: OutgoingResetRequest) -> None:
        seq = request.request_seq
        if seq == self._peer_req_next & TSN_MASK:
            self._peer_req_next += 1
            if self._deferred_reset is not None:
                # RFC 6525 §5.2.2: one request at a time.
                self._respond(ReconfigResponse(seq, RESULT_ERROR_REQUEST_IN_PROGRESS))
                return
            self._deferred_reset = request
            if not self.perform_deferred_reset():
                self._last_response = ReconfigResponse(seq, RESULT_IN_PROGRESS)
                self._respond(self._last_response)
        elif self._deferred_reset is not None and seq == self._deferred_reset.request_seq:
            self._respond(ReconfigResponse(seq, RESULT_IN_PROGRESS))
        elif self._last_response is not None and seq == self._last_response.response_seq:
            self._respond(self._last_response)
        else:
            self._respond(ReconfigResponse(seq, RESULT_BAD_SEQUENCE))

    @property
    def has_deferred_reset(self) -> bool:
        """Whether a peer's reset waits for DATA sent before it."""
        return self._deferred_reset is not None

    def perform_deferred_reset(self) -> bool:
        """Reset the incoming streams of the peer's waiting request if its last TSN arrived; say if it did."""
        request = self._deferred_reset
        if request is None:
            return False
        received = self._receiver.cumulative_tsn
        if unwrap_tsn(request.last_tsn, received) > received:
            return False  # data sent before the request has not all arrived (§5.2.2 E2)
        self._deferred_reset = None
        streams = self._receiver.reset_streams(request.streams)
        self._last_response = ReconfigResponse(request.request_seq, RESULT_PERFORMED)
        self._respond(self._last_response)
        self._events.append(StreamsReset(tuple(streams), incoming=True))
        return True

    def _on_response(self, response: ReconfigResponse, now: float, rto: float) -> OutgoingResetRequest | None:
        request = self._my_request
        if request is None or response.response_seq != request.request_seq:
            return None
        if response.result == RESULT_IN_PROGRESS:
            self._timer_at = now + rto
            return None
        self._my_request = None
        self._timer_at = None
        self._my_req_seq += 1
        for sid in request.streams:
            self._resetting.discard(sid)
        if response.result in (RESULT_PERFORMED, RESULT_NOTHING_TO_DO):
            self._events.append(StreamsReset(request.streams, incoming=False))
        return request
