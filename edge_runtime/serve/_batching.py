"""Dynamic batching: requests queue, worker threads run the model on batches of them.

One worker by default: the backend already uses every core it is given (--threads) inside one
call, and two multi-threaded calls at once on a 2-4 core device only fight over the same cores.
`workers` > 1 is for single-threaded calls side by side (--workers C --threads 1 on C cores):
short inputs run one by one (a batch-dependent artifact served batch-invariantly) keep every core
busy that way, where one call cannot split a 15-token GEMM well across threads. A batch is what the queue
holds when the worker gets to it (first in, first out), topped up for at most max_batch_wait_ms
while it has room if the worker was idle before it, within max_batch_tokens padded tokens (rows x longest row, what activation
memory scales with) and max_batch_requests. Back-pressure is TEI's: one permit per input,
max_concurrent_requests permits in all (queued and running); a request that cannot get its
permits is refused at once with 429 Overloaded, so a burst costs a refusal, never unbounded memory.
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge_runtime._text import Encoded
from edge_runtime.serve._config import ServeConfig, ServeError
from edge_runtime.serve._engine import Served

__all__ = ["Batcher", "Result"]

log = logging.getLogger("edge_runtime.serve")


@dataclass
class Result:
    """One job's rows of the batch output, and where its time went (seconds)."""

    outputs: Any
    queue: float
    inference: float
    batch_size: int


@dataclass(eq=False)  # a job is itself, whatever its rows: the queue removes it by identity
class _Job:
    served: Served | None
    rows: list[Encoded]
    future: concurrent.futures.Future
    enqueued: float = field(default_factory=time.perf_counter)
    call: Callable[[], Any] | None = None  # a maintenance call (golden check) instead of rows

    @property
    def longest(self) -> int:
        return max((len(r.ids) for r in self.rows), default=0)


class Batcher:
    """The queue and its worker thread. submit() from any thread; results arrive as futures."""

    def __init__(self, config: ServeConfig, metrics):
        self.config = config
        self.metrics = metrics
        self._queue: collections.deque[_Job] = collections.deque()
        self._cond = threading.Condition()
        self._in_flight = 0
        self._stopping = False
        self._started = False
        # Told (served, why) after a batch whose backend call failed or returned NaN/Inf: the
        # golden watchdog re-runs its samples then (Service wires it; None: nobody listens).
        self.on_backend_failure: Callable[[Served, str], None] | None = None
        self._threads = [
            threading.Thread(target=self._loop, name=f"edge-serve-worker-{i}", daemon=True)
            for i in range(config.workers)
        ]

    # -- producer side -------------------------------------------------------------------------
    def start(self) -> None:
        for thread in self._threads:
            thread.start()
        self._started = True

    @property
    def alive(self) -> bool:
        return all(thread.is_alive() for thread in self._threads)

    @property
    def queued(self) -> int:
        """Inputs holding a permit: queued or in the running batch (te_queue_size)."""
        return self._in_flight

    def reserve(self, count: int) -> None:
        """Take `count` permits (one per input) now, before the inputs are tokenized: a request
        that cannot have them is refused at once (429), as TEI does, so an overload costs a
        refusal, not a tokenization. ServeError 503 when draining or the worker is gone, 422 for
        more inputs than there are permits. Give them back with release() unless submit() took
        them over."""
        with self._cond:
            if self._stopping:
                raise ServeError("Unhealthy", "the server is shutting down", err="shutdown")
            if self._started and not self.alive:  # nobody would ever answer
                raise ServeError("Unhealthy", "the inference worker is not running", err="worker")
            if count > self.config.max_concurrent_requests:  # would be refused forever
                raise ServeError(
                    "Validation",
                    f"batch size {count} > maximum concurrent requests "
                    f"{self.config.max_concurrent_requests}",
                    err="batch_size",
                )
            if self._in_flight + count > self.config.max_concurrent_requests:
                raise ServeError("Overloaded", "Model is overloaded", err="overloaded")
            self._in_flight += count

    def release(self, count: int) -> None:
        """Give back permits reserve() took for inputs that were never submitted (their
        tokenization failed, or their client left first)."""
        with self._cond:
            self._in_flight -= count

    def submit(
        self, served: Served, rows: list[Encoded], reserved: bool = False
    ) -> concurrent.futures.Future:
        """Queue `rows` for `served`, taking one permit per row (ServeError as reserve()), or
        with `reserved`, the len(rows) permits reserve() took (the job then owns them: they go
        back when it has run or is cancelled; on a ServeError they are still the caller's)."""
        if not reserved:
            self.reserve(len(rows))
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._cond:
            if self._stopping:
                if not reserved:
                    self._in_flight -= len(rows)
                raise ServeError("Unhealthy", "the server is shutting down", err="shutdown")
            job = _Job(served, rows, future)
            self._queue.append(job)
            self._cond.notify()
        # A weak reference: the job holds its future, and a future keeps its callbacks after it
        # is done, so a closure over the job would make a cycle only the cyclic GC frees, keeping
        # every reloaded-away model (sessions, lane threads) alive until it happens to run.
        queued = weakref.ref(job)
        future.add_done_callback(lambda done: self._forget(queued) if done.cancelled() else None)
        return future

    def _forget(self, queued: weakref.ref) -> None:
        """A job cancelled while queued (its client left, or the drain ran out of time) leaves the
        queue at once: its permits go back now, not when the worker reaches it, and it takes no
        room in a batch. A burst of abandoned requests then neither refuses live ones 429 nor
        delays them by a batch."""
        job = queued()
        if job is None:  # no longer held by the queue or a batch: nothing to take back
            return
        with self._cond:
            try:
                self._queue.remove(job)
            except ValueError:  # already in a batch: the worker skips it and frees its permits
                return
            self._in_flight -= len(job.rows)

    def call(self, fn: Callable[[], Any]) -> concurrent.futures.Future:
        """Run fn() on a worker thread between two of its batches (the golden re-run): it then
        measures the serving backend as requests use it (with one worker, it never competes with
        a batch)."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._cond:
            if self._stopping:
                raise ServeError("Unhealthy", "the server is shutting down", err="shutdown")
            self._queue.append(_Job(None, [], future, call=fn))
            self._cond.notify()
        return future

    def close(self, timeout: float | None = None) -> bool:
        """Stop taking work, finish everything queued, stop the workers. True if they finished."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        deadline = None if timeout is None else time.perf_counter() + timeout
        for thread in self._threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.perf_counter()))
        return not any(thread.is_alive() for thread in self._threads)

    # -- worker side ---------------------------------------------------------------------------
    def _fits(self, batch: list[_Job], job: _Job) -> bool:
        if job.call is not None or job.served is not batch[0].served:
            return False
        rows = sum(len(j.rows) for j in batch) + len(job.rows)
        limit = self.config.max_batch_requests
        if limit is not None and rows > limit:
            return False
        longest = max(max(j.longest for j in batch), job.longest)
        return rows * longest <= self.config.max_batch_tokens

    def _next_batch(self) -> list[_Job] | None:
        """Block until there is work; the jobs of the next batch, None once drained and stopping."""
        with self._cond:
            idle = not self._queue
            while not self._queue and not self._stopping:
                self._cond.wait()
            if not self._queue:
                return None
            batch = [self._queue.popleft()]
            if batch[0].call is not None:
                return batch
            # Top up only a batch that starts an idle spell: under load, what queued while the
            # previous batch ran is the batch, and waiting would only idle the worker
            # (MiniLM INT8, 16 clients, 2-vCPU AVX-512 VNNI Xeon: 1.02-1.03x the throughput of
            # always waiting 2 ms; benchmarks/RESULTS.md run S).
            wait_s = self.config.max_batch_wait_ms / 1000.0 if idle else 0.0
            deadline = time.perf_counter() + wait_s
            while True:
                while self._queue and self._fits(batch, self._queue[0]):
                    batch.append(self._queue.popleft())
                # The next job does not fit, or the batch has no room left: waiting cannot help.
                rows = sum(len(j.rows) for j in batch)
                limit = self.config.max_batch_requests
                full = bool(self._queue) or (limit is not None and rows >= limit)
                remaining = deadline - time.perf_counter()
                if full or self._stopping or remaining <= 0:
                    return batch
                self._cond.wait(remaining)

    def _loop(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            # A job cancelled after it was taken into this batch (a cancel while queued took it
            # out of the queue: _forget) is not run either; its permits still go back below.
            live = [job for job in batch if not job.future.cancelled()]
            try:
                answers = self._run(live) if live else []
            except BaseException as exc:  # never let the worker die with futures unanswered
                log.exception("worker failed on a batch")
                answers = [(job.future, exc) for job in live]
            # Permits go back before the answers do: a client that sends its next request the
            # moment it has this answer must find its permit free.
            with self._cond:
                self._in_flight -= sum(len(j.rows) for j in batch)
            for future, answer in answers:
                try:
                    if isinstance(answer, BaseException):
                        future.set_exception(answer)
                    else:
                        future.set_result(answer)
                except concurrent.futures.InvalidStateError:  # cancelled while it ran: nobody waits
                    pass

    def _suspect(self, served: Served, why: str) -> None:
        listener = self.on_backend_failure
        if listener is None:
            return
        try:
            listener(served, why)
        except Exception:  # noqa: BLE001 -- a listener's failure must not cost the batch its answers
            log.exception("the backend-failure listener failed")

    def _run(self, batch: list[_Job]) -> list[tuple[concurrent.futures.Future, Any]]:
        """(future, result or exception) per job of the batch."""
        if batch[0].call is not None:
            try:
                return [(batch[0].future, batch[0].call())]
            # any failure is answered and never kills the worker
            except Exception as exc:  # noqa: BLE001
                return [(batch[0].future, exc)]
        served = batch[0].served
        rows = [row for job in batch for row in job.rows]
        # Only a batch of one job can hold more rows than max_batch_requests (_fits keeps the
        # others out); its rows then run as consecutive batches of at most that many, so the
        # limit holds per batch and per backend call (1: batch-size-1 serving), as TEI's
        # per-input queue would have it.
        step = self.config.max_batch_requests or len(rows)
        started = time.perf_counter()
        parts = []
        try:
            for first in range(0, len(rows), step):
                chunk = rows[first : first + step]
                self.metrics.batch_size.observe(len(chunk))
                self.metrics.batch_tokens.observe(sum(len(r.ids) for r in chunk))
                outputs, calls, padding = served.execute(
                    chunk, self.config.batch_invariant, self.config.max_batch_tokens
                )
                self.metrics.backend_calls.inc(calls)
                self.metrics.padding_tokens.inc(padding)
                parts.append(outputs)
        except Exception as exc:  # noqa: BLE001 -- any failure is answered, never kills the server
            log.error("inference failed on a batch of %d inputs: %s", len(rows), exc)
            error = ServeError(
                "Backend", f"Backend error: {type(exc).__name__}: {exc}", err="inference"
            )
            self._suspect(served, f"the backend failed on a batch ({type(exc).__name__})")
            return [(job.future, error) for job in batch]
        outputs = parts[0] if len(parts) == 1 else np.concatenate(parts)
        inference = time.perf_counter() - started
        answers, start = [], 0
        if not np.isfinite(outputs).all():
            self._suspect(served, "the backend returned NaN or infinite values")
        for job in batch:
            part = outputs[start : start + len(job.rows)]
            start += len(job.rows)
            if not np.isfinite(part).all():
                # A backend gone wrong (NaN or Inf outputs) is TEI's 424 Backend, never an answer
                # that JSON cannot carry or a base64 vector of NaNs; the other jobs' rows stand.
                log.error("the backend returned non-finite outputs for %d of %d inputs (%s)",
                          int((~np.isfinite(part)).any(axis=-1).sum()), len(job.rows), served.name)
                answers.append((job.future, ServeError(
                    "Backend", "Backend error: the model returned NaN or infinite values",
                    err="inference")))
                continue
            answers.append((job.future, Result(part, started - job.enqueued, inference,
                                                min(step, len(rows)))))
        return answers
