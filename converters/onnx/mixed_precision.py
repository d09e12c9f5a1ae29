"""Accuracy-aware mixed precision: quantize, and if the artifact is below the profile's floor,
keep the most sensitive layers in FP32, greedily, until it passes.

The search is the shared one (converters/core/search.py, floor policy): weights are ranked by
the loss their FP32 form removes alone per added byte on the FIT texts, then kept in FP32 one at
a time, each kept only if the VALIDATION loss drops, until the floor is met (at most half of them).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from converters._errors import AccuracyError
from converters._graph import model_bytes
from converters.core.search import RANKING_TEXTS, Floor, LaneScorer, ProbeSpace, SearchExhausted, greedy_search
from converters.core.validate import Reference, compute_metrics, floor_failures, floor_shortfall
from converters.inputs.source import SourceModel
from converters.onnx.quantize_int8 import Int8Config, quantizable_nodes, quantize_int8
from targets import AccuracyFloor

__all__ = ["QuantOutcome", "quantize_with_floor"]



@dataclass
class QuantOutcome:
    path: Path
    metrics: dict[str, float]
    promoted: list[str] = field(default_factory=list)  # nodes the search kept in FP32
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


class _Int8Space(ProbeSpace):
    """The FP32 fallback as the shared search sees it (converters/core/search.py): a candidate
    is a weight (with every node reading it) kept in FP32; each is written to `probe`."""

    def __init__(self, fp32_path: Path, probe: Path, config: Int8Config, rounding: Any, ranges: Path | None,
                 groups: dict[str, list[str]], rank: Callable[[Path], dict[str, float]],
                 judge: Callable[[Path], dict[str, float]]):
        super().__init__(probe, rank, judge)
        self.fp32_path, self.config, self.groups, self.rounding = fp32_path, config, groups, rounding
        self.ranges = ranges

    def candidates(self) -> list[str]:
        return list(self.groups)

    def label(self, key: str) -> str:
        """The module the weight belongs to, then the weight: "encoder.layer.1.output.dense
        (onnx::MatMul_329)". The exporter names a weight after nothing a user knows; its node
        is named after the module path (/inner/encoder/layer.1/output/dense/MatMul)."""
        parts = self.groups[key][0].strip("/").split("/")[:-1]
        parts = parts[1:] if parts[:1] == ["inner"] else parts  # our export wrapper's attribute
        return f"{'.'.join(parts)} ({key})" if parts else key

    def nodes(self, moved) -> tuple[str, ...]:
        return tuple(n for weight in moved for n in self.groups[weight])

    def write(self, moved: frozenset[str], path: Path) -> int:
        quantize_int8(self.fp32_path, path, dataclasses.replace(self.config, exclude=self.nodes(moved)),
                      self.rounding, self.ranges)
        return model_bytes(path)


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
    rounding: Any = None,
    lanes: int = 1,
) -> QuantOutcome:
    """`reference`: the validation texts (metrics, floor, each step of the search); `fit`: the
    texts the ranking is measured on (None: `reference`, for callers without a split);
    `rounding`: quantize_int8's GPTQ rounding (None: round-to-nearest); `lanes` > 1: the
    ranking scores that many candidates at once (core/search.py), `make_session(path, threads)`."""
    # static mode: onnxruntime's calibrated ranges, kept for the search's candidates (quantize_int8)
    static = isinstance(config, Int8Config) and config.scheme.mode == "static"
    ranges = out_path.with_suffix(".ranges.json") if static else None
    if ranges is not None:
        ranges.unlink(missing_ok=True)  # a leftover would describe another model
    try:
        return _quantize_with_floor(fp32_path, out_path, config, source, reference, floor, make_session, progress,
                                    fit, name, rounding, ranges, lanes)
    finally:
        if ranges is not None:
            ranges.unlink(missing_ok=True)


def _quantize_with_floor(fp32_path, out_path, config, source, reference, floor, make_session, progress, fit,
                         name, rounding, ranges, lanes) -> QuantOutcome:
    quantize_int8(fp32_path, out_path, config, rounding, ranges)
    metrics = compute_metrics(source, reference, make_session(out_path).run, name)
    failures = floor_failures(metrics, floor)
    if not failures:
        return QuantOutcome(out_path, metrics)

    groups = _weight_groups(fp32_path, quantizable_nodes(fp32_path, config.op_types))
    progress(f"below the accuracy floor ({'; '.join(failures)}); searching which of {len(groups)} weights "
             "to keep in FP32")
    ranking = (reference if fit is None else fit).spread(RANKING_TEXTS)

    def scorer(texts: Reference, label: str) -> LaneScorer:
        def score(path: Path, threads: int | None) -> dict[str, float]:
            # `threads` only in lanes: a one-lane caller's make_session may take the path alone
            session = make_session(path) if threads is None else make_session(path, threads)
            return compute_metrics(source, texts, session.run, f"{name} {label}")

        return LaneScorer(score, lanes)

    probe = out_path.with_suffix(".probe.onnx")
    space = _Int8Space(fp32_path, probe, config, rounding, ranges, groups, scorer(ranking, "ranking probe"),
                       scorer(reference, "candidate"))
    try:
        # Top-1 agreement (classifiers' floor) is not in search_loss: its miss weighs in, so no
        # move that flips labels is accepted for a better logits cosine.
        goal = Floor(lambda m: floor_failures(m, floor),
                     shortfall=lambda m: floor_shortfall(m, floor, ("top1_agreement",)))
        result = greedy_search(space, goal, move="float", progress=progress, start_metrics=metrics)
    except SearchExhausted as exc:
        # A pruned twin ("...-pruned") is held to the pruning floor and has no FP32 twin: its
        # levers are the pruning floor, the shares and distillation.
        advice = ("Lower the pruning floor (prune_floor), remove smaller shares (prune=...) or distil the pruned "
                  "model (distill_steps=N)." if name.endswith("-pruned")
                  else "Lower the floor (accuracy_floor), or ship FP32 only for this model.")
        raise AccuracyError(f"{name} {exc}. {advice}") from exc
    finally:
        probe.unlink(missing_ok=True)
    kept = list(space.nodes(result.moved))
    quantize_int8(fp32_path, out_path, dataclasses.replace(config, exclude=tuple(kept)), rounding, ranges)
    return QuantOutcome(out_path, result.metrics, kept, result.steps)
