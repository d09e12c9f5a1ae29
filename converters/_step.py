"""What every artifact builder reads and returns (Step, Built), the sessions they score with,
and the two records every builder writes alike (a refusal below the floor, what a search
promoted). converters/_artifacts.py (ONNX) and converters/_artifacts_tflite.py (TFLite) build
on it."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from converters._console import CountCallback, counter
from converters._errors import AccuracyError
from converters.core.validate import Reference, floor_failures
from converters.inputs.source import SourceModel
from converters.packaging.timing import WARMUP_RUNS, timing_feeds
from edge_runtime import backends
from edge_runtime._bench_config import DEFAULT_SHAPE
from edge_runtime.backends.onnx import OnnxSession
from targets import AccuracyFloor, TargetProfile

__all__ = ["PLAIN_ONNX_EXPORT", "Built", "Progress", "Step", "checked", "latency_ms", "onnx_session", "open_session",
           "promoted"]

Progress = Callable[[str], None]


def onnx_session(path: Path, threads: int = DEFAULT_SHAPE.threads) -> OnnxSession:
    return OnnxSession(path, threads=threads, graph_optimization_level="all")


def open_session(fmt: str, path: Path, threads: int = DEFAULT_SHAPE.threads):
    """A session of the device backend for `fmt`, as edge_runtime opens it."""
    return backends.open_session(fmt, path, threads=threads)


def latency_ms(session: OnnxSession, source: SourceModel, seq: int, runs: int) -> float:
    """p50 at batch 1 and a full `seq`-token input on this machine (informational)."""
    feeds = timing_feeds(source.input_names, source.tokenizer.vocab_size, min(seq, source.max_length))
    for _ in range(WARMUP_RUNS):
        session.run(feeds)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(feeds)
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1000)



@dataclass
class Step:
    """What every artifact builder reads."""

    source: SourceModel
    profile: TargetProfile
    # The validation texts and their PyTorch FP32 outputs: every metric, floor and search
    # evaluation. Never fitted on (issue 10).
    reference: Reference
    floor: AccuracyFloor
    work: Path
    fp32_path: Path  # the exported (and, per profile, fused) FP32 ONNX graph
    progress: Progress
    # The fit texts and their PyTorch FP32 outputs: SmoothQuant scales, GPTQ Hessians, static
    # ranges, clip statistics and sensitivity rankings. Disjoint from `reference`.
    fit: Reference
    cache: dict[str, Any] = field(default_factory=dict)  # results shared between builders
    # Opens the session a candidate ONNX graph is scored with: the target's arithmetic, not
    # necessarily this machine's (converters/core/arithmetic.py). None: this machine's kernels.
    sessions: Callable[[Path, int], Any] | None = None
    # Where exports shared by the targets of one run live (None: `work`).
    exports: Path | None = None
    # Building a pruned twin (converters/pruning/twins.py): `source` is the pruned model, and the
    # profile's [pruning] section says what of the ONNX INT8 recipe it keeps.
    pruned: bool = False

    def session(self, path: Path, threads: int | None = None) -> Any:
        """The session that scores the ONNX graph at `path` for this target (`threads`: None for
        the project's scoring threads)."""
        threads = threads or DEFAULT_SHAPE.threads
        return self.sessions(path, threads) if self.sessions is not None else onnx_session(path, threads)

    def counted(self, label: str) -> CountCallback:
        """A long step told as a count: "`label` done/total" (the console adds a bar and an ETA)."""
        return counter(self.progress, label)

    def batches_counted(self, label: str) -> CountCallback:
        """A pass over calibration batches told as a count: "`label`, batch done/total"."""
        return self.counted(f"{label}, batch")


# step.cache key of the unfused FP32 ONNX export, when the run made one (converters/_shared.py).
PLAIN_ONNX_EXPORT = "onnx-plain-export"


@dataclass
class Built:
    model_path: Path
    metrics: dict[str, float]
    # What a search moved to a wider form than `precision` (kept float, or 8 bits in an INT4
    # artifact), and to which.
    promoted: list[str] = field(default_factory=list)
    promoted_to: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def checked(step: Step, name: str, precision: str, metrics: dict[str, float]) -> None:
    """Refuse an artifact below the profile's floor for its precision."""
    failures = floor_failures(metrics, step.floor.for_precision(precision))
    if failures:
        raise AccuracyError(f"{name} is below the accuracy floor: {'; '.join(failures)}")


def promoted(to: str, weights: list[str]) -> dict[str, Any]:
    """The manifest's one record of what a search moved to a wider form than the artifact's
    precision (every format and search writes it so)."""
    return {"to": to, "weights": list(weights)}
