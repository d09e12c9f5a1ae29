"""The loaded model as the server uses it (Served) and the slot that holds the current one.

A Served tokenizes request inputs and runs a batch of rows; a job keeps a reference to the Served
that tokenized it, so a reload never runs rows through another model's tokenizer or graph: queued
rows finish on the model they were prepared for, new requests get the new one (_reload.py).
The arithmetic is Model.embed's and Model.classify's: the same tokenizer, padding, masked pooling
and normalization functions (edge_runtime/_text.py), so a vector served equals embed()'s.
"""

from __future__ import annotations

import concurrent.futures
import os
import queue
import threading
import time
import weakref
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime._errors import InputError
from edge_runtime._inputs import check_texts
from edge_runtime._model import Model
from edge_runtime._text import Encoded, pool, softmax
from edge_runtime.serve._config import ServeError

__all__ = ["Served", "Slot", "normalize_rows"]

# Which route serves which task; TEI answers a route the model cannot serve with 424 Backend
# ("model_type"), which we keep, with a message naming the right route.
ROUTE_TASKS = {"embed": ("feature-extraction",), "predict": ("text-classification",)}


def normalize_rows(vectors: np.ndarray) -> np.ndarray:
    """L2-normalize rows exactly as edge_runtime._text.pool does (float32, same clip)."""
    return vectors / np.clip(np.linalg.norm(vectors, axis=-1, keepdims=True), 1e-12, None)


def _lane(jobs: queue.SimpleQueue) -> None:
    while True:
        job = jobs.get()
        if job is None:
            return
        fn, args, future = job
        if future.set_running_or_notify_cancel():
            try:
                future.set_result(fn(*args))
            except BaseException as exc:  # noqa: BLE001 -- answered to whoever waits for it
                future.set_exception(exc)
        # Nothing of the job stays referenced while this thread waits for the next one: it would
        # keep a reloaded-away model (its sessions) alive.
        del job, fn, args, future


class _Lanes:
    """`count` daemon threads running the calls submitted to them, for Served's lanes. Not a
    ThreadPoolExecutor: interpreter exit joins its threads, so a batch still running when a
    drain gave up on it would hold the process for the whole batch (past --graceful-timeout,
    into a service manager's SIGKILL). The threads end once their Served is freed (a reload)."""

    def __init__(self, count: int):
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        for i in range(count):
            threading.Thread(target=_lane, args=(self._jobs,), name=f"edge-serve-lane-{i}",
                             daemon=True).start()
        weakref.finalize(self, lambda jobs=self._jobs: [jobs.put(None) for _ in range(count)])

    def submit(self, fn, *args) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._jobs.put((fn, args, future))
        return future


# The tasks edge-serve has routes for.
SERVED_TASKS = ("feature-extraction", "text-classification")


def check_task(task: str, path) -> None:
    """ServeError (model_type) unless edge-serve has routes for `task`."""
    if task not in SERVED_TASKS:
        raise ServeError(
            "Backend",
            f"edge-serve serves feature-extraction (/embed) and text-classification "
            f"(/predict) models; {path} does {task}",
            err="model_type",
        )


class Served:
    """One loaded Model with its tokenizer, ready for the worker thread."""

    def __init__(self, model: Model, path: Path, generation: int, lane_model: Model | None = None):
        self.model = model
        # Batch-invariant rows of a batch-dependent artifact run one per call; with a
        # single-threaded twin session (lane_model, same artifact) a batch of several runs them on
        # model.threads lanes side by side instead, each call on one core: a 15-token GEMM
        # splits poorly across threads. A lone row still gets every thread.
        self.lane_model = lane_model
        self._lanes = _Lanes(model.threads) if lane_model is not None else None
        self.path = Path(path)  # as configured or asked for: often a symlink a deployment re-points
        # What was loaded: the directory `path` named at load time (load_served resolves it once).
        self.directory = Path(model.root)
        self.generation = generation
        self.loaded_at = time.time()
        self.task = model.task
        check_task(self.task, path)
        self.encoder = model._text()  # the Model's own TextEncoder: one tokenizer configuration
        self.max_length = self.encoder.max_length
        post = model.manifest.get("postprocess", {})
        self.output = post.get("output", "logits")
        self.pooling = post.get("pooling", "mean")
        self.labels = post.get("labels") or []

    @property
    def name(self) -> str:
        return self.model.name

    def answers(self) -> dict[str, Any]:
        """What clients get from this model, beyond its numbers: the task (the route), the
        vector size or the labels, the pooling and normalization. A reload that changes any of
        them changes the API under running clients (reloader.check_same_answers)."""
        output = next((o for o in self.model.outputs if o["name"] == self.output), self.model.outputs[0])
        post = self.model.manifest.get("postprocess", {})
        shape = {"task": self.task, "size": output["shape"][-1]}
        if self.task == "text-classification":
            return {**shape, "labels": list(self.labels)}
        return {**shape, "pooling": self.pooling, "normalize": bool(post.get("normalize", False)),
                "truncate_dim": post.get("truncate_dim")}

    def require(self, route: str) -> None:
        """ServeError (424, model_type) unless this model serves `route`."""
        tasks = ROUTE_TASKS[route]
        if self.task not in tasks:
            other = "/predict" if self.task == "text-classification" else "/embed or /v1/embeddings"
            raise ServeError(
                "Backend",
                f"this model does {self.task}, not {' or '.join(tasks)}: use {other}",
                err="model_type",
            )

    # -- request side (event loop thread) ---------------------------------------------------
    def tokenize(self, texts: list[str], truncate: bool, openai: bool = False) -> list[Encoded]:
        """Each input's tokens. truncate=False: 422 Validation naming the input and its length
        (in the words of the route: OpenAI's `input` has no truncate field; the server's
        --auto-truncate decides there)."""
        try:
            # The library's checks first: a lone surrogate is named, not a tokenizer type error.
            return self.encoder.encode_texts(check_texts(texts), truncate=truncate)
        except InputError as exc:  # the library names its parameter; we name the request field
            field, hint = (("input", "start edge-serve with --auto-truncate true") if openai
                           else ("inputs", 'send "truncate": true'))
            message = (
                str(exc)
                .replace("texts[", f"{field}[")
                .replace("pass truncate=True", hint)
            )
            raise ServeError("Validation", message, err="validation") from None
        except Exception as exc:  # noqa: BLE001 -- the tokenizer failed on this input
            raise ServeError("Tokenizer", f"tokenizer error: {exc}", err="tokenization") from None

    # -- worker side ---------------------------------------------------------------------------
    def execute(
        self, rows: list[Encoded], batch_invariant: bool, max_tokens: int
    ) -> tuple[np.ndarray, int, int]:
        """(outputs, backend calls, padding tokens) for `rows`. Outputs in row order: pooled, not
        yet normalized vectors [n, dim] for embedding models, logits [n, labels] for classifiers.
        Rows of similar length share a padded backend call (padding is masked, so a row's numbers
        are its own up to float rounding) of at most `max_tokens` padded tokens (_groups);
        artifacts whose numbers depend on the batch (dynamic INT8) run each row alone when
        `batch_invariant`, exactly as Model.embed(batch_invariant=True)."""
        if batch_invariant and self.model.batch_dependent:
            if self._lanes is not None and len(rows) > 1:
                return self._run_on_lanes(rows)
            groups = [[i] for i in range(len(rows))]
        else:
            groups = self._groups(rows, max_tokens)
        out_rows: list[np.ndarray | None] = [None] * len(rows)
        padding = 0
        for group in groups:
            padding += self._call(self.model, rows, group, out_rows)
        return np.stack(out_rows), len(groups), padding

    def _call(self, model: Model, rows: list[Encoded], group: list[int], out_rows: list) -> int:
        """One backend call of `model` on rows[group], padded together; their outputs (pooled
        vectors or logits) go to out_rows[group]. Returns the padding tokens computed."""
        feeds = self.encoder.pad([rows[i] for i in group])
        out = model.run(feeds)[self.output]
        if self.task == "feature-extraction":
            part = pool(out, feeds["attention_mask"], self.pooling, normalize=False)
        else:
            part = np.asarray(out, dtype=np.float32)
        for i, row in zip(group, part):
            out_rows[i] = row
        return int(feeds["attention_mask"].size - feeds["attention_mask"].sum())

    def _run_on_lanes(self, rows: list[Encoded]) -> tuple[np.ndarray, int, int]:
        """Each row alone on lane_model, the rows dealt longest first to the least loaded of
        model.threads lanes (by tokens); the same numbers as one by one (same artifact, each row
        its own call, on a kernel whose results do not depend on the thread count)."""
        lanes: list[list[int]] = [[] for _ in range(self.model.threads)]
        load = [0] * len(lanes)
        for i in sorted(range(len(rows)), key=lambda i: -len(rows[i].ids)):
            lane = load.index(min(load))
            lanes[lane].append(i)
            load[lane] += len(rows[i].ids)
        out_rows: list[np.ndarray | None] = [None] * len(rows)

        def run(indices: list[int]) -> None:
            for i in indices:
                self._call(self.lane_model, rows, [i], out_rows)

        for future in [self._lanes.submit(run, lane) for lane in lanes if lane]:
            future.result()
        return np.stack(out_rows), len(rows), 0

    # A row joins a backend call only while the call's padding stays under this share of its
    # tokens: padding is computed and thrown away, so a 50-token sentence padding fifteen 12-token
    # ones costs more than it saves (MiniLM INT8 on AVX2, 16 mixed single sentences: 1.32x the
    # one-at-a-time rate in 25 %-cut calls, 1.09x in one padded call; benchmarks/RESULTS.md run P).
    PADDING_WASTE = 0.25

    @classmethod
    def _groups(cls, rows: list[Encoded], max_tokens: int) -> list[list[int]]:
        """Row indices per backend call: rows sorted by length, cut where the padding would
        exceed PADDING_WASTE of the call's tokens or the call max_tokens padded tokens."""
        order = sorted(range(len(rows)), key=lambda i: len(rows[i].ids))
        groups: list[list[int]] = []
        current: list[int] = []
        real = 0
        for i in order:
            length = len(rows[i].ids)  # the longest so far: rows come shortest first
            padded = (len(current) + 1) * length
            if current and (
                padded > max_tokens or padded > (1 + cls.PADDING_WASTE) * (real + length)
            ):
                groups.append(current)
                current, real = [], 0
            current.append(i)
            real += length
        if current:
            groups.append(current)
        return groups

    def predictions(self, logits: np.ndarray, raw_scores: bool) -> list[dict[str, Any]]:
        """TEI's /predict answer for one input: every label with its score, best first
        (softmax probabilities; raw logits with raw_scores)."""
        scores = (
            logits.astype(np.float64) if raw_scores else softmax(logits.astype(np.float64)[None])[0]
        )
        order = np.argsort(-scores, kind="stable")
        names = self.labels or [f"LABEL_{i}" for i in range(len(scores))]
        return [{"score": float(scores[i]), "label": names[i]} for i in order]

    def where(self) -> str:
        """`path`, and the directory it named at load when that differs (a symlink re-pointed
        since, or one to a versioned directory): what log lines say this model was loaded from."""
        path, directory = str(self.path), str(self.directory)
        return path if os.path.realpath(path) == directory and os.path.abspath(path) == directory \
            else f"{path} (-> {directory})"

    def info(self) -> dict[str, Any]:
        entry = self.model.artifact
        return {
            "artifact": entry["name"],
            "format": entry["format"],
            "precision": entry["precision"],
            "backend": self.model.backend,
            "threads": self.model.threads,
            "path": str(self.path),
            "directory": str(self.directory),
            "batch_dependent": self.model.batch_dependent,
            "lanes": self.model.threads if self.lane_model is not None else 1,
        }


class Slot:
    """Holds the Served that new requests get; swapped atomically by a reload."""

    def __init__(self, served: Served):
        self._served = served
        self._lock = threading.Lock()

    @property
    def current(self) -> Served:
        return self._served  # one reference read: atomic under the GIL

    def swap(self, served: Served) -> Served:
        with self._lock:
            old, self._served = self._served, served
        return old
