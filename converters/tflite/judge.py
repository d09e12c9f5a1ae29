"""How the TFLite searches score a candidate: agreement with the FP32 .tflite on calibration rows.

A search builds many candidates (which weights stay INT8 or float) and needs a cheap, stable
score for each. The reference is the FP32 .tflite run on the same rows (not PyTorch), so the
score measures what quantization changed and nothing else; the pipeline's final validation
against PyTorch on held-out texts (converters/core/validate.py) is separate.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np

from converters._errors import NonFiniteOutputError
from converters.core.validate import floor_failures, floor_shortfall, meets_floor, row_cosine
from converters.tflite.signatures import Signatures
from targets import AccuracyFloor

__all__ = ["FloorRule", "Judge", "cosines", "floor_rule", "meets"]

Metrics = dict[str, float]


class Judge:
    """Agreement of a candidate with the FP32 .tflite on the calibration rows: cosine per row of
    the first output, mean-pooled over the tokens when it has a sequence axis (what sentence
    embeddings compare; a per-token cosine would hide errors that all tokens share)."""

    def __init__(self, fp32_path: Path, rows: list[dict[str, np.ndarray]], fp32_bytes: int):
        self.rows = rows
        self.fp32_bytes = fp32_bytes  # of the artifact the size budget refers to
        self.reference = self._outputs(fp32_path, rows)

    @staticmethod
    def _outputs(path: Path, rows) -> list[np.ndarray]:
        signatures = Signatures(path)
        outputs = []
        for row in rows:
            got, _, _ = signatures.run(row)
            value = next(iter(got.values()))[0]  # export.export_tflite writes one output
            outputs.append(value.mean(0) if value.ndim == 2 else value.reshape(-1))
        return outputs

    def metrics(self, path: Path, subset: np.ndarray | None = None) -> dict[str, float]:
        """cosine_mean / cosine_min of the model at `path` on all rows, or on `subset`."""
        picked = np.arange(len(self.rows)) if subset is None else subset
        got = np.stack(self._outputs(path, [self.rows[i] for i in picked]))
        cos = row_cosine(got, np.stack([self.reference[i] for i in picked]))
        bad = ~np.isfinite(got).all(axis=1) | ~np.isfinite(cos)
        if bad.any():
            row = int(picked[int(np.argmax(bad))])
            raise NonFiniteOutputError(Path(path).name, f"<calibration row {row}>", row)
        return {"cosine_mean": float(cos.mean()), "cosine_min": float(cos.min())}


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
