"""How the TFLite searches read a floor, and run a file for a score when called without one.

The pipeline scores every candidate with its one evaluator (agreement with PyTorch through
edge_runtime, converters/core/validate.py) and reads floors as its final validation does
(floor_rule). A library call without those scores is scored against the FP32 .tflite on the
same rows (core/validate.AgainstFile running tflite_outputs): what quantization changed alone.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from converters.core.validate import floor_failures, floor_shortfall, meets_floor
from converters.tflite.signatures import Signatures
from targets import AccuracyFloor

__all__ = ["FloorRule", "cosines", "floor_rule", "meets", "tflite_outputs"]

Metrics = dict[str, float]


def tflite_outputs(path: Path, rows: Sequence[dict[str, np.ndarray]]) -> list[np.ndarray]:
    """The first output of the .tflite file at `path` for each calibration row ([1, n] feeds,
    the bucket's padding cut off): what converters/core/validate.AgainstFile compares when a
    TFLite search is called without the pipeline's scores."""
    signatures = Signatures(path)
    return [next(iter(signatures.run(row)[0].values())) for row in rows]  # export_tflite writes one output


def cosines(metrics: dict[str, float]) -> tuple[float, float]:
    """(mean, min) cosine of `metrics`: of embeddings, or of logits for classifiers."""
    prefix = "" if "cosine_mean" in metrics else "logits_"
    return metrics[f"{prefix}cosine_mean"], metrics[f"{prefix}cosine_min"]


def meets(metrics: dict[str, float], floor: tuple[float, float]) -> bool:
    """Whether `metrics` reach `floor` (cosine mean, cosine min); NaN never does."""
    mean, worst = cosines(metrics)
    return meets_floor(mean, floor[0]) and meets_floor(worst, floor[1])


class FloorRule:
    """What a search needs of a floor: what misses it, how far (the budget search weighs that),
    and what the walk of a floor search must weigh beside search_loss (a classifier's top-1)."""

    def __init__(self, failures: Callable[[Metrics], list[str]], shortfall: Callable[[Metrics], float],
                 extra: Callable[[Metrics], float] | None = None):
        self.failures, self.shortfall, self.extra = failures, shortfall, extra


def floor_rule(floor: AccuracyFloor | tuple[float, float] | None) -> FloorRule | None:
    """An AccuracyFloor is read as the pipeline's final validation reads it (converters/core/
    validate.py: a classifier by its top-1 agreement, an embedding by its cosines), so a search
    stops where that check passes, and searches when only top-1 misses; a (mean, min) tuple
    (tests, direct callers) as cosines of the embedding or of the logits."""
    if floor is None:
        return None
    if isinstance(floor, AccuracyFloor):
        return FloorRule(lambda m: floor_failures(m, floor), lambda m: floor_shortfall(m, floor),
                         lambda m: floor_shortfall(m, floor, ("top1_agreement",)))
    pair = floor

    def failures(m: Metrics) -> list[str]:
        mean, worst = cosines(m)
        return [] if meets(m, pair) else [f"cosine {mean:.4f} / {worst:.4f} < floor {pair[0]} / {pair[1]}"]

    def shortfall(m: Metrics) -> float:
        mean, worst = cosines(m)
        if not (math.isfinite(mean) and math.isfinite(worst)):
            return math.inf
        return max(0.0, pair[0] - mean) + max(0.0, pair[1] - worst)

    return FloorRule(failures, shortfall)
