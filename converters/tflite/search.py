"""The two greedy searches of the TFLite recipes, apart from the writers that build candidates.

- fit_size_budget (gptq_wi4b32_afp32): which FULLY_CONNECTED weights to store INT8 instead of
  INT4 while the file stays within a byte budget; ranked by calibration loss removed per added
  byte, each accepted only if the loss measurably drops.
- keep_float_until_floor (gptq_wi8_afp32): which weights to keep float until the candidate
  meets a cosine floor; ranked by the loss each recovers alone, added one at a time.

Both see a candidate only through a Builder (build(path, selection), label(buffer)) and a
judge.Judge, and return their choice plus every step in a list for the manifest. They are kept
as they were measured (ranking, acceptance and stop rules differ); issue 9 moves every search
of the project onto one shared core.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from converters._console import count
from converters.tflite.judge import Judge, meets
from converters.validate import probe_loss

__all__ = ["Builder", "fit_size_budget", "keep_float_until_floor"]

Progress = Callable[[str], None]


class Builder(Protocol):
    def build(self, out_path: Path, selection: set[int]) -> int:
        """Write the candidate with the weights (FP32 buffer indices) in `selection` changed."""

    def label(self, buffer: int) -> str:
        """A readable name of the weight at `buffer` for reports."""


def _ranking_subset(rows: int, count: int) -> np.ndarray:
    # Ranking needs only the order: an evenly spread subset of rows (short and long) is enough.
    return np.unique(np.linspace(0, rows - 1, count).astype(int))


def fit_size_budget(
    builder: Builder,
    candidates: list[int],
    judge: Judge,
    budget: int,
    probe: Path,
    ranking_rows: int,
    progress: Progress,
    ranker: Judge | None = None,
) -> tuple[set[int], list[dict[str, Any]]]:
    """Move `candidates` (FC weights, INT4 by default) to INT8, most calibration loss removed
    per added byte first, while the file stays within `budget` bytes and each move measurably
    lowers the loss (the scheme of quantize_int4._fit_budget for ONNX). `builder.build` returns
    the candidate's size in bytes; `probe` is scratch space. Returns (the INT8 weights, every
    step: the all-INT4 start, then one entry per ranked weight with accepted and why).
    `ranker` (the fit rows; None: `judge`) measures the ranking, `judge` (validation) every
    acceptance."""
    ranker = ranker or judge
    base_size = builder.build(probe, set())
    subset = _ranking_subset(len(ranker.rows), ranking_rows)
    base = probe_loss(ranker.metrics(probe, subset))
    progress(f"ranking {len(candidates)} INT4 weights by measured sensitivity")
    gains = {}
    for index, buffer in enumerate(candidates):
        progress(count("  INT4 sensitivity", index, len(candidates)))
        size = builder.build(probe, {buffer})
        gains[buffer] = (base - probe_loss(ranker.metrics(probe, subset)), size - base_size)
    progress(count("  INT4 sensitivity", len(candidates), len(candidates)))
    ranked = sorted(
        (b for b in gains if gains[b][0] > 0),
        key=lambda b: gains[b][0] / max(gains[b][1], 1),
        reverse=True,
    )
    chosen: set[int] = set()
    size = base_size
    builder.build(probe, chosen)  # the probe holds the last ranking candidate
    metrics = judge.metrics(probe)
    search: list[dict[str, Any]] = [{"int8": [], "bytes": base_size, "metrics": metrics}]
    for index, buffer in enumerate(ranked):
        progress(count("  INT8 upgrades tried", index, len(ranked)))
        name = builder.label(buffer)
        step = {"weight": name, "sensitivity": gains[buffer][0], "added_bytes": gains[buffer][1]}
        if size + gains[buffer][1] > budget:  # sizes add up (16-byte padding aside)
            search.append({**step, "accepted": False, "why": "over budget"})
            continue
        trial_size = builder.build(probe, chosen | {buffer})
        if trial_size > budget:
            search.append({**step, "bytes": trial_size, "accepted": False, "why": "over budget"})
            continue
        trial = judge.metrics(probe)
        accepted = probe_loss(trial) < probe_loss(metrics)
        search.append({**step, "bytes": trial_size, "accepted": accepted, "metrics": trial})
        if accepted:
            chosen.add(buffer)
            metrics, size = trial, trial_size
            progress(
                f"  INT8 {len(chosen)}: {name} -> cosine {trial['cosine_mean']:.4f} / "
                f"{trial['cosine_min']:.4f}, {size / judge.fp32_bytes:.4f}x FP32"
            )
    if ranked:
        progress(count("  INT8 upgrades tried", len(ranked), len(ranked)))
    return chosen, search


def keep_float_until_floor(
    builder: Builder,
    candidates: list[int],
    judge: Judge,
    floor: tuple[float, float],
    start: Path,
    start_metrics: dict[str, float],
    probe: Path,
    ranking_rows: int,
    progress: Progress,
    ranker: Judge | None = None,
) -> tuple[list[int], list[dict[str, Any]], dict[str, float]]:
    """Keep `candidates` (FC weights, INT8 by default) float, the one whose float form recovers
    the most loss alone first, one at a time, until the candidate meets `floor` (cosine mean,
    min). `start` is the all-INT8 model, scored `start_metrics`; `probe` is scratch space.
    Returns (the float weights in the order they were added, one step per addition, the
    metrics of the last candidate built, or start_metrics when none was). `ranker` (the fit
    rows; None: `judge`) measures the ranking, `judge` (validation) the floor."""
    ranker = ranker or judge
    progress(
        f"all-INT8 cosine {start_metrics['cosine_mean']:.4f} / "
        f"{start_metrics['cosine_min']:.4f} vs FP32 .tflite, floor {floor[0]} / {floor[1]}: "
        f"ranking {len(candidates)} FULLY_CONNECTED weights"
    )
    subset = _ranking_subset(len(ranker.rows), min(len(ranker.rows), ranking_rows))
    base = probe_loss(ranker.metrics(start, subset))
    gains = {}
    for index, buffer in enumerate(candidates):
        progress(count("  float sensitivity", index, len(candidates)))
        builder.build(probe, {buffer})
        gains[buffer] = base - probe_loss(ranker.metrics(probe, subset))
    progress(count("  float sensitivity", len(candidates), len(candidates)))
    metrics = start_metrics
    kept: list[int] = []  # in the order they were added
    search = []
    for buffer in sorted((b for b in gains if gains[b] > 0), key=gains.get, reverse=True):
        kept.append(buffer)
        builder.build(probe, set(kept))
        metrics = judge.metrics(probe)
        search.append({"weight": builder.label(buffer), "metrics": metrics})
        progress(
            f"  float {len(kept)}: {builder.label(buffer)} -> cosine "
            f"{metrics['cosine_mean']:.4f} / {metrics['cosine_min']:.4f}"
        )
        if meets(metrics, floor):
            break
    return kept, search, metrics
