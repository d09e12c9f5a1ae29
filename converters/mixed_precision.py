"""Accuracy-aware mixed precision: quantize, and if the artifact is below the profile's floor,
keep the most sensitive layers in FP32, greedily, until it passes.

Sensitivity of a layer = the error of a model in which only that layer is quantized, measured on
a subset of the calibration texts. Layers are then kept in FP32 in order of sensitivity, one at
a time, re-validating on the full set after each, so the result is checked, not predicted.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from converters._errors import AccuracyError
from converters.quantize_int8 import Int8Config, quantizable_nodes, quantize_int8
from converters.source import SourceModel
from converters.validate import Reference, compute_metrics, floor_failures
from targets import AccuracyFloor

__all__ = ["QuantOutcome", "quantize_with_floor"]

SENSITIVITY_BATCHES = 2  # x 16 texts: enough to rank layers, cheap enough to do per layer
MAX_KEPT_FRACTION = 0.5  # beyond this the "INT8" artifact is mostly FP32: fail instead


@dataclass
class QuantOutcome:
    path: Path
    metrics: dict[str, float]
    kept_fp32: list[str] = field(default_factory=list)
    search: list[dict[str, Any]] = field(default_factory=list)  # what the fallback tried


def _loss(metrics: dict[str, float]) -> float:
    return 1.0 - metrics.get("cosine_mean", metrics.get("logits_cosine_mean", 1.0))


def quantize_with_floor(
    fp32_path: Path,
    out_path: Path,
    config: Int8Config,
    source: SourceModel,
    reference: Reference,
    floor: AccuracyFloor,
    make_session: Callable[[Path], Any],
    progress: Callable[[str], None],
) -> QuantOutcome:
    quantize_int8(fp32_path, out_path, config)
    metrics = compute_metrics(source, reference, make_session(out_path).run)
    failures = floor_failures(metrics, floor)
    if not failures:
        return QuantOutcome(out_path, metrics)

    nodes = quantizable_nodes(fp32_path, config.op_types)
    progress(f"below the accuracy floor ({'; '.join(failures)}); ranking {len(nodes)} layers by sensitivity")
    subset = Reference(reference.batches[:SENSITIVITY_BATCHES], reference.outputs[:SENSITIVITY_BATCHES])
    probe = out_path.with_suffix(".probe.onnx")
    sensitivity = {}
    for index, node in enumerate(nodes, 1):
        only = dataclasses.replace(config, exclude=tuple(n for n in nodes if n != node))
        quantize_int8(fp32_path, probe, only)
        sensitivity[node] = _loss(compute_metrics(source, subset, make_session(probe).run))
        if index % 8 == 0 or index == len(nodes):
            progress(f"  sensitivity {index}/{len(nodes)}")
    ranked = sorted(nodes, key=lambda n: sensitivity[n], reverse=True)

    kept: list[str] = []
    search = [{"kept_fp32": [], "metrics": metrics}]
    limit = max(1, int(len(nodes) * MAX_KEPT_FRACTION))
    for node in ranked[:limit]:
        kept.append(node)
        quantize_int8(fp32_path, out_path, dataclasses.replace(config, exclude=tuple(kept)))
        metrics = compute_metrics(source, reference, make_session(out_path).run)
        search.append({"kept_fp32": list(kept), "metrics": metrics, "sensitivity": sensitivity[node]})
        progress(f"  keeping {len(kept)} layer(s) in FP32: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
        if not floor_failures(metrics, floor):
            return QuantOutcome(out_path, metrics, kept, search)
    raise AccuracyError(
        f"INT8 stays below the accuracy floor even with the {len(kept)} most sensitive of "
        f"{len(nodes)} layers kept in FP32: {'; '.join(floor_failures(metrics, floor))}. "
        "Lower the floor with --accuracy-floor, or ship FP32 only for this model."
    )
