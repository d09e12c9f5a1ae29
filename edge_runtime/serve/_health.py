"""Is the served model still right? A periodic golden re-run on the serving backend, and an
input-drift signal.

Golden watchdog: load() proved the artifact computes the conversion's numbers once; a long-running
device can stop doing so (a backend library upgraded under the process, memory errors, a file
rewritten on a flaky SD card). Every golden_interval_s the worker thread re-runs the artifact's
golden samples between two batches, on the very session requests use, and exports the lowest
cosine against the conversion outputs (edge_golden_cosine_min) and pass/fail (edge_golden_ok);
a failure turns /health into 503 Unhealthy until a re-run passes or a reload swaps the model.
A batch the backend answered with NaN or Inf, or failed to run, queues a re-run at once (at most
one every SUSPECT_GAP_S): a backend gone wrong shows in /health within one batch, not only at
the next interval.

Drift: the recent inputs' token lengths and pre-normalization embedding norms against a
reference, as a Kolmogorov-Smirnov distance (edge_input_drift). The reference is the manifest's
`input_stats` (quantiles of the validation texts, recorded at conversion); a directory converted
before edge-convert recorded them falls back to the first REFERENCE inputs served by this model
(reference="warmup"): a shift *since start* (docs/serve.md).
"""

from __future__ import annotations

import collections
import logging
import math
import threading
import time
from typing import Any

import numpy as np

from edge_runtime._golden import compare_outputs, golden_samples
from edge_runtime._manifest import resolve
from edge_runtime.serve._config import ServeError

__all__ = ["DriftMonitor", "GoldenWatchdog", "golden_agreement"]

log = logging.getLogger("edge_runtime.serve")


def golden_agreement(model) -> tuple[bool, float, list[str]]:
    """(agrees, lowest cosine of any golden output row, problems) for `model` run now. The samples
    are read from the directory the model was loaded from (Model.root, resolved at load: not
    where a symlink points now) at each run, so a rewritten golden file shows too."""
    golden = model.artifact["golden"]
    with np.load(resolve(model.root, golden["path"]), allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    problems, lowest = [], 1.0
    for label, inputs, want, tolerance in golden_samples(golden, arrays, model.name):
        got = model.run(inputs)
        problems += [f"{label}: {p}" for p in compare_outputs(got, want, tolerance)]
        for name, expected in want.items():
            actual = got.get(name)
            if actual is None or actual.shape != expected.shape:
                lowest = -1.0
                continue
            a = actual.reshape(len(actual), -1).astype(np.float64)
            b = expected.reshape(len(expected), -1).astype(np.float64)
            norms = np.clip(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30, None)
            cosine = float(np.min((a * b).sum(axis=1) / norms))
            lowest = min(lowest, cosine if math.isfinite(cosine) else -1.0)
    return not problems, lowest, problems


class GoldenWatchdog:
    """Re-runs the golden samples of the serving model: periodically, on demand, and when a
    batch's outputs make the backend suspect. interval_s 0 turns the periodic and the
    suspicion-triggered re-runs off (POST /admin/check still runs one)."""

    # At most one suspicion-triggered re-run per this many seconds: a backend that returns NaN
    # for every batch costs one golden run per gap, not one per batch.
    SUSPECT_GAP_S = 10.0

    def __init__(self, slot, batcher, metrics, interval_s: float):
        self.slot, self.batcher, self.metrics, self.interval = slot, batcher, metrics, interval_s
        self._failed: dict[int, str] = {}  # model generation -> why its last re-run failed
        self._suspect_lock = threading.Lock()
        self._suspect_pending = False
        self._suspect_last = -math.inf  # time.monotonic() of the last suspicion-triggered run
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="edge-serve-golden", daemon=True)

    def start(self) -> None:
        if self.interval > 0:
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def unhealthy(self) -> str | None:
        """Why the serving model is not trusted now, or None."""
        return self._failed.get(self.slot.current.generation)

    def loaded(self, served) -> None:
        """A model just passed load()'s golden check: record it as the last result and, with the
        watchdog on, queue its first re-run on the worker (the first batch it serves comes after
        it), so edge_golden_cosine_min has a value from the start, not only after an interval."""
        self.metrics.golden_ok.set(1)
        self.metrics.golden_last.set(time.time())
        if self.interval > 0:
            try:
                self.batcher.call(lambda: self._check(served))
            except ServeError:  # shutting down
                pass

    def schedule(self):
        """Queue a check of the serving model on the worker thread; a future of its result."""
        served = self.slot.current
        return self.batcher.call(lambda: self._check(served))

    def check(self, timeout: float | None = None) -> dict[str, Any]:
        """Run the check on the worker thread now; its result."""
        return self.schedule().result(timeout)

    def suspect(self, served, why: str) -> None:
        """A batch of `served` came back wrong (`why`): queue a golden re-run on the worker now,
        unless the watchdog is off, `served` is no longer the serving model, one is queued, or
        one ran less than SUSPECT_GAP_S ago. Called from the worker thread; never raises."""
        if self.interval <= 0 or served is not self.slot.current:
            return
        now = time.monotonic()
        with self._suspect_lock:
            if self._suspect_pending or now - self._suspect_last < self.SUSPECT_GAP_S:
                return
            self._suspect_pending, self._suspect_last = True, now
        log.warning("re-running the golden samples of %s now: %s", served.name, why)
        try:
            self.batcher.call(lambda: self._suspect_check(served))
        except ServeError:  # shutting down
            with self._suspect_lock:
                self._suspect_pending = False

    def _suspect_check(self, served) -> dict[str, Any]:
        try:
            return self._check(served)
        finally:
            with self._suspect_lock:
                self._suspect_pending = False

    def _check(self, served) -> dict[str, Any]:
        try:
            ok, lowest, problems = golden_agreement(served.model)
        except Exception as exc:  # noqa: BLE001 -- the backend failed to run a sample
            ok, lowest, problems = False, float("nan"), [f"{type(exc).__name__}: {exc}"]
        self.metrics.golden_ok.set(1 if ok else 0)
        self.metrics.golden_cosine.set(lowest)
        self.metrics.golden_last.set(time.time())
        self.metrics.golden_runs.inc(result="pass" if ok else "fail")
        if ok:
            self._failed.pop(served.generation, None)
        else:
            reason = f"artifact {served.name} failed its golden re-run: " + "; ".join(problems)
            self._failed[served.generation] = reason
            log.error("%s", reason)
        # JSON has no NaN: a check that could not compare says null (the gauge keeps NaN).
        return {"ok": ok, "cosine_min": lowest if math.isfinite(lowest) else None, "problems": problems,
                "artifact": served.name}

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.check()
            except ServeError:  # shutting down
                return
            except Exception:
                log.exception("golden re-run could not be scheduled")


def _ks_samples(reference: np.ndarray, window: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov distance: max |F_ref(x) - F_win(x)| over all points."""
    ref, win = np.sort(reference), np.sort(window)
    points = np.concatenate([ref, win])
    f_ref = np.searchsorted(ref, points, side="right") / len(ref)
    f_win = np.searchsorted(win, points, side="right") / len(win)
    return float(np.max(np.abs(f_ref - f_win)))


def _ks_quantiles(quantiles: dict[str, float], window: np.ndarray) -> float:
    """Distance of `window` from a distribution known by quantiles {probability: value}."""
    win = np.sort(window)
    return float(
        max(
            abs(np.searchsorted(win, v, side="right") / len(win) - float(p))
            for p, v in quantiles.items()
        )
    )


class DriftMonitor:
    """Token lengths and embedding norms of recent inputs against a reference distribution."""

    WINDOW = 1024  # recent inputs compared
    REFERENCE = 512  # inputs that make the warm-up reference
    MIN_WINDOW = 64  # fewer recent inputs than this say nothing yet

    def __init__(self, metrics, manifest: dict[str, Any]):
        self.metrics = metrics
        self._lock = threading.Lock()
        self.reset(manifest)

    def reset(self, manifest: dict[str, Any]) -> None:
        """Start over for a newly loaded model (its own reference). A series the new model goes
        on exporting keeps its last value until the new model's inputs replace it (MIN_WINDOW of
        them): cleared, edge_input_drift would vanish at every reload and alerts on it read "no
        data". Series it will not export (another reference kind, no embeddings) go now."""
        stats = manifest.get("input_stats") or {}
        with self._lock:
            self._manifest_ref = {
                signal: (stats.get(signal) or {}).get("quantiles")
                for signal in ("token_length", "embedding_norm")
            }
            self._warmup = {s: [] for s in self._manifest_ref}
            self._window = {s: collections.deque(maxlen=self.WINDOW) for s in self._manifest_ref}
        embeds = manifest.get("task", "feature-extraction") == "feature-extraction"
        for labels in self.metrics.drift.series():
            signal = labels["signal"]
            kind = "manifest" if self._manifest_ref.get(signal) else "warmup"
            if labels["reference"] != kind or (signal == "embedding_norm" and not embeds):
                self.metrics.drift.discard(**labels)

    def observe(self, signal: str, values) -> None:
        with self._lock:
            warm = self._warmup[signal]
            for value in values:
                if not math.isfinite(value):  # a backend gone wrong says nothing of the inputs
                    continue
                if len(warm) < self.REFERENCE:
                    warm.append(float(value))
                else:
                    self._window[signal].append(float(value))

    def update(self) -> None:
        """Set edge_input_drift from what has been observed (called at each scrape)."""
        with self._lock:
            snapshot = {
                s: (self._manifest_ref[s], list(self._warmup[s]), list(self._window[s]))
                for s in self._manifest_ref
            }
        for signal, (quantiles, warm, window) in snapshot.items():
            if quantiles:
                recent = np.asarray((warm + window)[-self.WINDOW :])
                if len(recent) >= self.MIN_WINDOW:
                    self.metrics.drift.set(
                        _ks_quantiles(quantiles, recent), signal=signal, reference="manifest"
                    )
            elif len(warm) >= self.REFERENCE and len(window) >= self.MIN_WINDOW:
                self.metrics.drift.set(
                    _ks_samples(np.asarray(warm), np.asarray(window)),
                    signal=signal,
                    reference="warmup",
                )
