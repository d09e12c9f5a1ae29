"""Accuracy-aware mixed precision: quantize, and if the artifact is below the profile's floor,
keep the most sensitive layers in FP32, greedily, until it passes.

Sensitivity of a weight = the error of a model in which only the node(s) reading it are quantized,
measured on a subset of the FIT texts (ranking is fitting). Weights are then kept in FP32 in order
of error per weight element (FP32 compute and bytes both grow with it), one at a time,
re-validating on the full VALIDATION set after each, so the result is checked, not predicted.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from converters._console import count
from converters._errors import AccuracyError
from converters.quantize_int8 import Int8Config, quantizable_nodes, quantize_int8
from converters.source import SourceModel
from converters.validate import Reference, compute_metrics, floor_failures, probe_loss
from targets import AccuracyFloor

__all__ = ["QuantOutcome", "probe_loss", "quantize_with_floor"]

SENSITIVITY_BATCHES = 2  # x 16 texts: enough to rank layers, cheap enough to do per layer
MAX_KEPT_FRACTION = 0.5  # beyond this the "INT8" artifact is mostly FP32: fail instead


@dataclass
class QuantOutcome:
    path: Path
    metrics: dict[str, float]
    kept_fp32: list[str] = field(default_factory=list)
    search: list[dict[str, Any]] = field(default_factory=list)  # what the fallback tried


def _weight_groups(model_path: Path, nodes: list[str]) -> dict[str, list[str]]:
    """Nodes grouped by the weight they read. A weight shared by several nodes (the halves made
    by split_first_token) is kept in FP32 for all of them or none: keeping one half would store
    the weight twice and leave the other half's error in place."""
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    weight_of = {n.name: n.input[1] for n in model.graph.node if n.name in set(nodes)}
    groups: dict[str, list[str]] = {}
    for name in nodes:
        groups.setdefault(weight_of[name], []).append(name)
    return groups


def _weight_elements(model_path: Path) -> dict[str, int]:
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    return {i.name: int(np.prod(i.dims)) for i in model.graph.initializer}


def quantize_with_floor(
    fp32_path: Path,
    out_path: Path,
    config: Int8Config,
    source: SourceModel,
    reference: Reference,
    floor: AccuracyFloor,
    make_session: Callable[[Path], Any],
    progress: Callable[[str], None],
    fit: Reference | None = None,
    name: str = "INT8",
) -> QuantOutcome:
    """`reference`: the validation texts (metrics, floor, each step of the search); `fit`: the
    texts the sensitivity ranking is measured on (None: `reference`, for callers without a
    split)."""
    quantize_int8(fp32_path, out_path, config)
    metrics = compute_metrics(source, reference, make_session(out_path).run, name)
    failures = floor_failures(metrics, floor)
    if not failures:
        return QuantOutcome(out_path, metrics)

    nodes = quantizable_nodes(fp32_path, config.op_types)
    groups = _weight_groups(fp32_path, nodes)
    progress(f"below the accuracy floor ({'; '.join(failures)}); ranking {len(groups)} weights by sensitivity")
    subset = (reference if fit is None else fit).head(SENSITIVITY_BATCHES)
    probe = out_path.with_suffix(".probe.onnx")
    sensitivity = {}
    progress(count("  sensitivity", 0, len(groups)))
    for index, (weight, members) in enumerate(groups.items(), 1):
        only = dataclasses.replace(config, exclude=tuple(n for n in nodes if n not in members))
        quantize_int8(fp32_path, probe, only)
        sensitivity[weight] = probe_loss(compute_metrics(source, subset, make_session(probe).run,
                                                         f"{name} probe ({weight} quantized alone)"))
        progress(count("  sensitivity", index, len(groups)))
    # Most error removed per FP32 weight element first (FP32 compute and bytes both scale with it).
    sizes = _weight_elements(fp32_path)
    ranked = sorted(groups, key=lambda w: sensitivity[w] / max(sizes.get(w, 1), 1), reverse=True)

    kept: list[str] = []
    search = [{"kept_fp32": [], "metrics": metrics}]
    limit = max(1, int(len(groups) * MAX_KEPT_FRACTION))
    for weight in ranked[:limit]:
        kept.extend(groups[weight])
        quantize_int8(fp32_path, out_path, dataclasses.replace(config, exclude=tuple(kept)))
        metrics = compute_metrics(source, reference, make_session(out_path).run, name)
        search.append({"kept_fp32": list(groups[weight]), "weight": weight, "metrics": metrics,
                       "sensitivity": sensitivity[weight], "weight_elements": sizes.get(weight)})
        progress(f"  keeping {len(kept)} node(s) in FP32: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
        if not floor_failures(metrics, floor):
            return QuantOutcome(out_path, metrics, kept, search)
    raise AccuracyError(
        f"INT8 stays below the accuracy floor even with the {len(kept)} most sensitive of "
        f"{len(nodes)} quantizable nodes kept in FP32: {'; '.join(floor_failures(metrics, floor))}. "
        "Lower the floor (accuracy_floor), or ship FP32 only for this model."
    )
