"""The serving machinery without HTTP: the model slot, the batcher, metrics, the golden
watchdog, the drift monitor and the reloader, wired together. _app.py puts routes on top."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from typing import Any

import numpy as np

from edge_runtime.serve._batching import Batcher, Result
from edge_runtime.serve._config import ServeConfig
from edge_runtime.serve._engine import Served, Slot
from edge_runtime.serve._health import DriftMonitor, GoldenWatchdog
from edge_runtime.serve._inflight import Drained, InFlight
from edge_runtime.serve._metrics import ServeMetrics
from edge_runtime.serve._reload import Reloader, check_limits, load_served

__all__ = ["TOKENIZE_INLINE_CHARS", "Service"]

# Requests with more characters than this are tokenized on a thread, not on the event loop
# (~10 ms of tokenizing at most holds the other requests up).
TOKENIZE_INLINE_CHARS = 10_000

log = logging.getLogger("edge_runtime.serve")


class Service:
    """Loads the model (verified by load()) and serves inference requests through one queue."""

    def __init__(self, config: ServeConfig, served: Served | None = None):
        self.config = config
        served = served or load_served(config, config.path, 0)
        check_limits(config, served)
        # The input-length buckets stop at this model's maximum; after a reload to a longer model
        # the longer inputs count in the +Inf bucket only (a histogram keeps its buckets).
        self.metrics = ServeMetrics(served.max_length)
        self.slot = Slot(served)
        self.batcher = Batcher(config, self.metrics)
        self.drift = DriftMonitor(self.metrics, served.model.manifest)
        self.watchdog = GoldenWatchdog(
            self.slot, self.batcher, self.metrics, config.golden_interval_s
        )
        self.batcher.on_backend_failure = self.watchdog.suspect
        self.reloader = Reloader(config, self.slot, self.metrics, self._swapped)
        self.metrics.registry.on_collect(self._collect)
        self.inflight = InFlight()
        self.draining = False
        self._stop_requested_at: float | None = None
        self._stop_signal: int | None = None
        self._cut_after: float | None = None  # seconds from the stop signal to the drain's cut
        self._finished = True  # False once stop() left a batch running in the backend
        self._cut_by: int | None = None  # the second stop signal that cut the drain short
        self._hurry = False  # set by cut(): no more waiting for the queue, only for the batch
        self._show(served)
        self.watchdog.loaded(served)

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        self.batcher.start()
        self.watchdog.start()
        log.info(
            "serving %s (%s) from %s",
            self.slot.current.name,
            self.slot.current.model.backend,
            self.slot.current.where(),
        )

    def stop_requested(self, signum: int | None = None) -> None:
        """A stop signal arrived: the drain's time (graceful_timeout_s) counts from the first."""
        if self._stop_requested_at is None:
            self._stop_requested_at = time.monotonic()
            self._stop_signal = signum

    def _spent(self) -> float:
        if self._stop_requested_at is None:
            return 0.0
        return time.monotonic() - self._stop_requested_at

    def drain_left(self) -> float:
        """Seconds of graceful_timeout_s left since the stop signal."""
        return max(0.0, self.config.graceful_timeout_s - self._spent())

    def cut(self, second_signal: int | None = None) -> None:
        """The drain's time is up, or `second_signal` said to stop now (on the event loop): every
        request still being handled is answered 503 now, and its queued inputs are dropped unrun."""
        self._hurry = True
        if self.inflight.cut() and self._cut_after is None:
            self._cut_after = self._spent()
            self._cut_by = second_signal

    def stop(self) -> None:
        """Finish every queued input, then stop the worker and the watchdog, within what is left
        of graceful_timeout_s since the stop signal (at least 1 s for the batch running now).
        What a drain cut short is said in one line."""
        self.draining = True
        self.watchdog.stop()
        spent = self._spent()
        # After a cut (the drain's time ran out, or a second signal said to stop now) only the
        # batch still running gets its second; otherwise what is left of graceful_timeout_s.
        left = self.config.graceful_timeout_s - spent
        budget = 1.0 if self._hurry else max(1.0, left)
        started = time.monotonic()
        finished = self.batcher.close(budget)
        # A reload still loading (SIGHUP just before the stop) runs in the backend too: waited
        # for within the same budget, else abandoned like a running batch (os._exit).
        reloaded = self.reloader.close(max(0.0, budget - (time.monotonic() - started)))
        if not reloaded:
            log.error("a reload of %s was still loading when the server stopped; abandoned",
                      self.reloader.loading)
        self._finished = finished and reloaded
        dropped = self.inflight.dropped
        if dropped:
            after = f" after {signal.Signals(self._stop_signal).name}" if self._stop_signal else ""
            how = (f"drain cut short by a second {signal.Signals(self._cut_by).name}"
                   if self._cut_by else "drain timed out")
            log.error(
                "%s %.1f s%s: %d request%s dropped unfinished "
                "(answered 503 Unhealthy)%s",
                how,
                spent if self._cut_after is None else self._cut_after,
                after,
                dropped,
                "" if dropped == 1 else "s",
                "" if finished else "; the batch still running is abandoned",
            )
        elif not finished:
            log.error("worker still busy %.0f s after the stop signal; exiting anyway", spent + budget)

    def drained(self) -> Drained:
        """How the drain ended (after stop())."""
        return Drained(self._stop_signal, self.inflight.dropped, self._cut_after,
                       abandoned=not self._finished)

    def _swapped(self, served: Served) -> None:
        self.drift.reset(served.model.manifest)
        self.watchdog.loaded(served)
        self._show(served)

    def _show(self, served: Served) -> None:
        info = served.info()
        self.metrics.model_info.clear()
        self.metrics.model_info.set(
            1,
            artifact=info["artifact"],
            precision=info["precision"],
            path=info["path"],
            generation=str(served.generation),
        )
        self.metrics.model_loaded.set(served.loaded_at)

    def _collect(self) -> None:
        self.metrics.queue_size.set(self.batcher.queued)
        self.drift.update()

    def unhealthy(self) -> str | None:
        """Why /health should answer 503, or None."""
        if self.draining:
            return "the server is shutting down"
        if not self.batcher.alive:
            return "the inference worker is not running"
        return self.watchdog.unhealthy()

    # -- inference -------------------------------------------------------------------------------
    async def infer(
        self, route: str, texts: list[str], truncate: bool, openai: bool = False
    ) -> tuple[Served, Result, dict[str, Any]]:
        """Tokenize `texts` for the serving model, queue them, wait for their batch."""
        served = self.slot.current
        served.require(route)
        # The permits first, as TEI takes them: with none left the answer is an immediate 429,
        # not one after a tokenization (seconds for a 2 MB body) that competes with the
        # admitted requests for the same cores. They are the job's once submitted; until then
        # (a failed tokenization, a client gone, the drain's cut) they are given back here.
        self.batcher.reserve(len(texts))
        submitted = False
        try:
            started = time.perf_counter()
            if sum(map(len, texts)) > TOKENIZE_INLINE_CHARS:
                # Off the event loop: a 2 MB text takes ~2 s to tokenize, and every other route
                # (/health included) would wait for it.
                rows = await asyncio.to_thread(served.tokenize, texts, truncate, openai)
            else:  # a thread hop costs more than tokenizing a few sentences
                rows = served.tokenize(texts, truncate, openai)
            tokenization = time.perf_counter() - started
            future = self.batcher.submit(served, rows, reserved=True)
            submitted = True
        finally:
            if not submitted:
                self.batcher.release(len(texts))
        result = await asyncio.wrap_future(future)
        lengths = [len(r.ids) for r in rows]
        for length in lengths:
            self.metrics.input_length.observe(length)
        self.drift.observe("token_length", lengths)
        if served.task == "feature-extraction":
            norms = np.linalg.norm(result.outputs.astype(np.float64), axis=-1)
            for norm in norms:
                self.metrics.embedding_norm.observe(float(norm))
            self.drift.observe("embedding_norm", norms)
        timing = {
            "tokenization": tokenization,
            "queue": result.queue,
            "inference": result.inference,
            "tokens": sum(lengths),
        }
        return served, result, timing
