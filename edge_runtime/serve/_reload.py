"""Safe model updates: load a directory (a new one, or the same path re-read), verify it, swap.

edge_runtime.load() does the verification: file hashes, the signature when trusted keys are
configured, the golden samples on this device's backend. Only a model that passed all three
replaces the serving one, by one reference swap (Slot.swap): requests already queued finish on the
model that tokenized them, new ones get the new model, and nothing is refused in between. A failed
load leaves the old model serving, is logged, and is counted (edge_reload_total{result="failure"}).

One reload runs at a time. SIGHUP re-reads the configured DIR; the usual deployment keeps DIR a
symlink to a versioned directory and moves the link before sending SIGHUP (docs/serve.md).
POST /admin/reload may name another directory.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from pathlib import Path
from typing import Any

import edge_runtime
from edge_runtime.serve._config import ServeError
from edge_runtime.serve._engine import Served, check_task

__all__ = ["Reloader", "check_limits", "load_served"]

log = logging.getLogger("edge_runtime.serve")


def load_served(config, path: Path, generation: int) -> Served:
    """load() with the server's settings, wrapped for serving."""
    keys = list(config.trusted_keys) if config.trusted_keys else None
    # Resolved once: DIR is usually a symlink that a deployment re-points (docs/serve.md), and
    # every read below (signature, manifest, files, the lanes' second load) must come from one
    # directory, not from whichever the link names at that moment. realpath, not resolve(): it
    # never raises (a symlink loop then fails in load(), with its message).
    root = Path(os.path.realpath(path))
    # A task without routes is refused from the manifest, before a load that verifies and runs
    # golden samples for seconds on a small board (load() reads it again, verified); signed, not
    # before the signature is checked (docs/signing.md): check_task runs after the load then.
    task = None
    if keys is None:
        try:
            task = edge_runtime.read_manifest(root).get("task")
        except edge_runtime.EdgeRuntimeError:  # load() says what is wrong, after its own checks
            task = None
    if task is not None:
        check_task(task, path)
    model = edge_runtime.load(root, artifact=config.artifact, threads=config.threads, trusted_keys=keys,
                              device_cache=config.device_cache)
    if keys is not None:
        check_task(model.task, path)
    lane_model = None
    if (config.lanes and config.batch_invariant and config.workers == 1 and model.batch_dependent
            and model.threads > 1 and model.thread_safe
            and config.max_batch_requests != 1):  # batches of one row never use lanes
        # The same artifact on one thread for Served's lanes (its packed weights are mapped from
        # the device cache the first load filled, so a second session costs little memory).
        # A sibling: the signature checked once for both (the same signed files, not a second check).
        lane_model = model.sibling(threads=1)
        log.info("batch-invariant rows of %s run on %d single-threaded lanes", model.name, model.threads)
    return Served(model, Path(path), generation, lane_model=lane_model)


def _as_served(message: str) -> str:
    """load()'s errors name its parameter trusted_keys; a server's keys come from --trusted-key
    (ServeConfig.trusted_keys from Python), and accepting unsigned artifacts means a restart."""
    message = message.replace(
        "load with trusted_keys=None",
        "restart edge-serve without --trusted-key (ServeConfig.trusted_keys=None)",
    )
    return re.sub(r"(?<![.\w])trusted_keys(?![\w=\[])", "--trusted-key", message)


def check_limits(config, served: Served) -> None:
    """ServeError unless `served` can be served under `config`'s limits: checked at start and
    before a reload swaps a model in (a longer model behind the same DIR must not slip past)."""
    if config.max_batch_tokens < served.max_length:
        # TEI refuses to start in the same case: one input of the model's full length could
        # never be batched.
        raise ServeError(
            "Validation",
            f"max_batch_tokens ({config.max_batch_tokens}) is below the model's "
            f"maximum input length ({served.max_length}): raise it to at least "
            f"{served.max_length}",
        )


def check_same_answers(old: Served, new: Served) -> None:
    """ServeError unless `new` answers clients as `old` does (Served.answers): a reload meant to
    update a model must not turn 384-wide vectors into 32-wide ones, or an embedder into a
    classifier that fails every /embed, while the reload reports success."""
    before, after = old.answers(), new.answers()
    changed = [f"{key} {before.get(key)!r} -> {after.get(key)!r}" for key in sorted(set(before) | set(after))
               if before.get(key) != after.get(key)]
    if changed:
        raise ServeError(
            "Validation",
            f"the new model would answer clients differently ({'; '.join(changed)}): restart edge-serve "
            "to serve another kind of model, or reload with {\"path\": ..., \"allow_change\": true}",
        )


class Reloader:
    """Loads, verifies and swaps models for a running server."""

    def __init__(self, config, slot, metrics, on_swap):
        self.config, self.slot, self.metrics = config, slot, metrics
        self._on_swap = on_swap  # called with the new Served after a swap
        self._lock = threading.Lock()
        self.path = config.path  # the directory SIGHUP re-reads
        self.last: dict[str, Any] | None = None
        self._closed = False
        self.loading: Path | None = None  # the directory a reload is loading now

    def close(self, timeout: float) -> bool:
        """Start no more reloads and wait up to `timeout` s for the one running (a load inside
        the backend: interpreter exit under it could abort the process). True if none runs now."""
        self._closed = True
        if not self._lock.acquire(timeout=max(0.0, timeout)):
            return False
        self._lock.release()
        return True

    def reload(self, path: str | Path | None = None, allow_change: bool = False) -> dict[str, Any]:
        """Load `path` (default: the current directory again); swap if it verifies and answers
        clients as the serving model does (unless `allow_change`). Returns what happened; raises
        nothing: a failure keeps the old model and says why."""
        with self._lock:
            target = Path(path) if path is not None else self.path
            old = self.slot.current
            if self._closed:  # a SIGHUP or /admin/reload during the drain: the server is going away
                self.last = {"ok": False, "path": str(target), "error": "the server is shutting down",
                             "error_class": "ShuttingDown", "serving": old.info()}
                return self.last
            started = time.perf_counter()
            self.loading = target
            try:
                served = load_served(self.config, target, old.generation + 1)
                check_limits(self.config, served)
                if not allow_change:
                    check_same_answers(old, served)
            except Exception as exc:  # noqa: BLE001 -- whatever failed, the old model keeps serving
                self.loading = None
                self.metrics.reloads.inc(result="failure")
                why = _as_served(str(exc))
                log.error(
                    "reload of %s failed; still serving %s from %s: %s: %s",
                    target,
                    old.name,
                    old.where(),
                    type(exc).__name__,
                    why,
                )
                self.last = {
                    "ok": False,
                    "path": str(target),
                    "error": f"{type(exc).__name__}: {why}",
                    "error_class": type(exc).__name__,
                    "serving": old.info(),
                }
                return self.last
            self.loading = None
            self.slot.swap(served)
            self.path = target
            self.metrics.reloads.inc(result="success")
            self._on_swap(served)
            seconds = time.perf_counter() - started
            log.info(
                "reloaded: now serving %s from %s (generation %d, %.1f s to load and verify)",
                served.name,
                served.where(),
                served.generation,
                seconds,
            )
            self.last = {
                "ok": True,
                "path": str(target),
                "serving": served.info(),
                "generation": served.generation,
                "seconds": round(seconds, 3),
            }
            return self.last

    def request(self) -> None:
        """Reload in the background (SIGHUP: a signal handler must not block on a load)."""
        threading.Thread(target=self.reload, name="edge-serve-reload", daemon=True).start()
