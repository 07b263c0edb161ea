# -*- test-case-name: tests.test_silero_batch -*-
"""One Silero inference for every stream whose window is ready, instead of one per stream.

onnxruntime's fixed cost per call is most of what a 512-sample window costs
(86 of 128 µs per 48 kHz frame, measured); the network has a batch axis in its
input and in its state, so ``B`` streams' windows run in one call, each with its
own recurrent state, for much less than ``B`` calls.

A :class:`SileroBatcher` belongs to one event loop (its clock is passed in).
A :class:`~voiceedge.media.silero.SileroStream` made with it queues each window
it completes and :meth:`SileroBatcher.submit` s itself; the batcher runs what is
queued ``delay`` seconds after the first window came (0 by default: at the
loop's next turn, so the windows of every packet read in the same turn go
together; the transceiver waits 5 ms, ``SILERO_BATCH_DELAY``, for more calls'
windows). A lone window waits no longer than that. A run takes the oldest window of each
queued stream, up to ``max_batch`` streams per inference, and repeats while
windows remain: a stream's windows run in order, one per inference, because
each starts from the state the previous one left. Each stream gets its
probabilities and state back in order (:meth:`~voiceedge.media.silero.SileroStream.ready`);
once every round has run, each stream with an ``on_results`` callback is told,
once per run, in the order the streams first queued: the transceiver's sessions
take their frames' probabilities from there, so a batch costs the event loop
one wake-up, not one per call. A stream closed meanwhile is not told; a
callback that raises is logged and the others are still told.

Sans-I/O apart from the one ``callLater`` on the clock given: no thread, no
global reactor.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from voiceedge.metrics import Histogram

if TYPE_CHECKING:
    from voiceedge.media.silero import SileroModel, SileroStream

__all__ = ["BATCH_BUCKETS", "SileroBatcher"]

#: Upper bounds of the windows-per-inference histogram.
BATCH_BUCKETS: tuple[float, ...] = (1, 2, 4, 8, 16, 32, 64)
#: The most streams in one inference: onnxruntime's cost per stream stops
#: falling well before this, and one call stays short.
MAX_BATCH = 64


class SileroBatcher:
    """Windows from many :class:`~voiceedge.media.silero.SileroStream` s, run together (see the module doc)."""

    __slots__ = (
        "clock",
        "delay",
        "max_batch",
        "_waiting",
        "_ran",
        "_call",
        "inferences",
        "windows",
        "errors",
        "callback_errors",
        "batch_sizes",
    )

    log = Logger()

    def __init__(self, clock: IReactorTime, delay: float = 0.0, max_batch: int = MAX_BATCH) -> None:
        if not 0.0 <= delay <= 0.02:
            raise ValueError(f"delay must be within 0..0.02 s (one frame), not {delay!r}")
        if not 1 <= max_batch <= 1024:
            raise ValueError(f"max_batch must be within 1..1024, not {max_batch!r}")
        self.clock = clock
        self.delay = delay
        self.max_batch = max_batch
        # Streams with queued windows, in the order they first queued one.
        self._waiting: dict[SileroStream, None] = {}
        # Streams whose windows this run has run, to be told (on_results) once it is over.
        self._ran: dict[SileroStream, None] = {}
        self._call: IDelayedCall | None = None
        #: Inferences run, and windows they ran (their ratio: windows per inference).
        self.inferences = 0
        self.windows = 0
        #: Inferences that failed (their windows counted as no voice).
        self.errors = 0
        #: Streams' ``on_results`` callbacks that raised (logged; the others still ran).
        self.callback_errors = 0
        #: Windows per inference.
        self.batch_sizes = Histogram(BATCH_BUCKETS)

    @property
    def pending(self) -> int:
        """Streams with a window waiting."""
        return len(self._waiting)

    def submit(self, stream: SileroStream) -> None:
        """``stream`` has queued a window; it runs within ``delay`` (at the clock's next turn when 0)."""
        self._waiting[stream] = None
        if self._call is None:
            self._call = self.clock.callLater(self.delay, self.run)

    def discard(self, stream: SileroStream) -> None:
        """``stream`` ended: forget it (its queued windows never run, it is not told of those that ran)."""
        self._waiting.pop(stream, None)
        self._ran.pop(stream, None)

    def run(self) -> None:
        """Run every queued window now: one inference per round of at most ``max_batch`` streams; then
        tell each stream that ran (its ``on_results``)."""
        if self._call is not None:
            if self._call.active():
                self._call.cancel()
            self._call = None
        while self._waiting:
            streams = []
            for stream in self._waiting:
                streams.append(stream)
                if len(streams) == self.max_batch:
                    break
            by_model: dict[SileroModel, list[SileroStream]] = {}
            for stream in streams:
                by_model.setdefault(stream.model, []).append(stream)
            for model, group in by_model.items():
                self._infer(model, group)
            ran = self._ran
            for stream in streams:
                # A stream with another window goes to the end: it waits for the others' next round.
                del self._waiting[stream]
                if stream._next_window() is not None:
                    self._waiting[stream] = None
                if stream.on_results is not None:
                    ran[stream] = None
        self._tell()

    def _tell(self) -> None:
        """Call each stream's ``on_results`` whose windows ran, once; one that raises does not stop the others."""
        ran = self._ran
        # One at a time off the table: a callback may end (discard) a stream not told yet.
        while ran:
            stream = next(iter(ran))
            del ran[stream]
            callback = stream.on_results
            if callback is None:
                continue
            try:
                callback()
            except Exception:
                self.callback_errors += 1
                self.log.failure("a Silero stream's results callback failed")

    def _infer(self, model: SileroModel, streams: list[SileroStream]) -> None:
        """One inference over the oldest window of each of ``streams``."""
        windows = []
        states = []
        for stream in streams:
            window, state = stream._next_window()  # type: ignore[misc]  # every waiting stream has one
            windows.append(window)
            states.append(state)
        try:
            probabilities, new_states = model.run_batch(np.stack(windows), np.concatenate(states, axis=1))
        except Exception:
            # onnxruntime's errors are untyped. The windows are lost, not the calls: each gets
            # "no voice" and keeps its state, so its frames go on and the next window may run.
            self.errors += 1
            self.log.failure("Silero inference over {n} windows failed", n=len(streams))
            for stream, state in zip(streams, states):
                stream._window_done(0.0, state)
            return
        for i, stream in enumerate(streams):
            # A copy: a view would keep the whole batch's states alive per stream (B kB each).
            stream._window_done(float(probabilities[i]), new_states[:, i : i + 1, :].copy())
        self.inferences += 1
        self.windows += len(streams)
        self.batch_sizes.observe(len(streams))
