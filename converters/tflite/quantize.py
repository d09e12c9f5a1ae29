"""Pass: quantize an FP32 .tflite (from export.export_tflite) with a named recipe.

Every signature (one per sequence bucket) is kept and the weights they share are quantized once.
The recipes are listed in recipes.py. ai-edge-quantizer's own are applied as they are; ours need
calibration feeds and decide per model, from measurements against the FP32 .tflite on them.
gptq_wi8_afp32 first rescales every FC input (smooth.py: one MUL per input tensor, the scale
folded into the weights) so that per-token int8 activations do not carry the outlier channels;
the smoothed copy's Hessians are derived from the export's. gptq_wi4b32_afp32 can do the same
(GptqInt4Config.smooth_alpha; off: measured no better for INT4, RESULTS.md run AI).

- gptq_wi8_afp32 (gptq_int8.py): the stock INT8 layout with GPTQ codes; with a cosine floor the
  all-INT8 model misses, the most sensitive FULLY_CONNECTED weights stay float (the shared
  search's floor policy, converters/core/search.py).
- gptq_wi4b32_afp32 (gptq_int4.py): INT4 blocks with GPTQ codes; with a size budget, the
  weights whose INT4 form costs the most accuracy per byte are stored INT8 per channel while
  the file fits (the shared search's budget policy). The tensor names litert-torch writes (the full Python
  module path of every fused op, about 1 MB in an INT4 MiniLM) are shortened first
  (flatbuffer.compact_copy): the size budget is what they would eat.

This module holds the pass and the two recipe drivers that tie a writer, the Hessian tap, the
judge and a search together; each of those lives in its own file.

Measured on all-MiniLM-L6-v2 (4 buckets; held-out texts, sentence-embedding cosine vs PyTorch
FP32; p50 vs the FP32 .tflite on XNNPACK, batch 1 x 128 tokens, 2 threads, Zen 4; see
docs/notes/tflite-findings.md, "Converter side: calibrated INT4 and static INT8"):
- dynamic_wi8_afp32: 0.29x size, 0.42x p50, cosine 0.9976 mean / 0.981 min.
- gptq_wi8_afp32 (RESULTS.md run AI, Xeon, rpi5 profile): 0.29x size, 0.255x p50 (unsmoothed
  0.245x), cosine 0.9995 / 0.9983 with smoothed FC inputs (unsmoothed 0.9981 / 0.9873).
- dynamic_wi4b32_afp32: 0.160x size, 0.50x p50, cosine 0.957 / 0.824: offered so the pipeline
  can measure and reject it per model.
- gptq_wi4b32_afp32: all INT4 0.151x, 0.50x, 0.986 / 0.962; with size budget 0.16 (8 of 36
  weights INT8) 0.158x, 0.49x, 0.990 / 0.969.
- static_wi8_ai8 / static_wi8_ai16: refused, see recipes.REFUSED.
"""

from __future__ import annotations

import importlib.metadata
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from converters._console import counter
from converters._errors import AccuracyError, ConversionError
from converters.core.search import RANKING_TEXTS, Budget, Floor, greedy_search
from converters.core.validate import AgainstFile
from converters.tflite.config import GptqInt4Config, gptq_policy
from converters.tflite.edge_quantizer import run_quantizer
from converters.tflite.flatbuffer import FC, compact_copy, find_weights, op_counts
from converters.tflite.gptq_int4 import BUDGET_PARAMETER, Int4Builder
from converters.tflite.gptq_int8 import Int8Builder
from converters.tflite.hessians import HessianCache, hessian_rows
from converters.tflite.judge import floor_rule, tflite_outputs
from converters.tflite.recipes import GPTQ_INT8_RECIPE, GPTQ_RECIPE, lookup
from converters.tflite.shared_quantization import share_quantization
from converters.tflite.space import TfliteSpace
from converters.tflite.signatures import calibration_rows, signature_lengths, synthetic_cosines
from converters.tflite.smooth import SMOOTH_ALPHA, smooth_fc_inputs
from targets import AccuracyFloor

__all__ = ["quantize_tflite"]

log = logging.getLogger(__name__)

Progress = Callable[[str], None]


Score = Callable[[Path], dict[str, float]]


def _scorers(reference_path: Path, rows, val_rows, rank: Score | None, judge: Score | None) -> tuple[Score, Score]:
    """The search's scores: the pipeline's (agreement with PyTorch through edge_runtime, the one
    evaluator of every search) when given; for standalone use, agreement with the FP32 .tflite
    (core/validate.AgainstFile) on the fit rows (a length-spread subset ranks) and the validation rows."""
    if rank is None:
        ranker = AgainstFile(tflite_outputs, reference_path, rows)
        subset = np.unique(np.linspace(0, len(rows) - 1, min(len(rows), RANKING_TEXTS)).astype(int))
        rank = lambda path: ranker.metrics(path, subset)
    if judge is None:
        judge = AgainstFile(tflite_outputs, reference_path, val_rows).metrics
    return rank, judge


def _smoothed(in_path: Path, out_path: Path, rows: list[dict[str, np.ndarray]], weighting: str,
              hessians: HessianCache, alpha: float | None, progress: Progress) -> tuple[Path, dict[str, Any] | None]:
    """(the FP32 model the recipe quantizes, what smoothing did): with `alpha`, `in_path` with SmoothQuant-scaled
    FC inputs (smooth.py) next to `out_path`, Hessians derived and put in `hessians`; None: `in_path` itself."""
    if alpha is None:
        return in_path, None
    fcs = {b: w for b, w in find_weights(in_path).items() if w.kind == FC}
    progress(f"smoothing the inputs of {len(fcs)} FULLY_CONNECTED weights (SmoothQuant, alpha {alpha})")
    found = hessians.get(in_path, fcs, rows, weighting=weighting, progress=counter(progress, "input statistics, step"))
    path = out_path.with_name(out_path.stem + ".smoothed.tflite")
    smoothing = smooth_fc_inputs(in_path, path, {b: h for b, (h, _) in found.items()}, alpha)
    origin = ", ".join(sorted({o for _, o in found.values()})) + ", rescaled by the smoothing"
    smoothed = {b: w for b, w in find_weights(path).items() if w.kind == FC}
    hessians.put(path, smoothed, rows, smoothing.hessians, origin, weighting)
    return path, smoothing.describe()


def _quantize_gptq_int4(
    in_path: Path,
    out_path: Path,
    calibration: list[dict[str, np.ndarray]],
    config: GptqInt4Config,
    progress: Progress,
    validation: list[dict[str, np.ndarray]] | None = None,
    rank: Score | None = None,
    judge: Score | None = None,
    hessians: HessianCache | None = None,
    floor: AccuracyFloor | tuple[float, float] | None = None,
) -> dict[str, Any]:
    policy = config.gptq_policy()
    rows, stat_rows = hessian_rows(calibration, max(signature_lengths(in_path)), policy)
    val_rows = rows if validation is None else calibration_rows(validation, max(signature_lengths(in_path)))
    hessians = hessians if hessians is not None else HessianCache()
    compact = out_path.with_name(out_path.stem + ".compact.tflite")
    probe = out_path.with_name(out_path.stem + ".probe.tflite")
    fp32_bytes = in_path.stat().st_size  # the budget is the FP32 artifact's, not the smoothed copy's
    source, smoothing = in_path, None
    try:
        source, smoothing = _smoothed(in_path, out_path, stat_rows, policy.weighting, hessians,
                                      config.smooth_alpha, progress)
        compact_copy(source, compact)
        builder = Int4Builder(compact, config, source=source)
        builder.check_some_int4()
        if config.size_budget is not None:
            # The size does not depend on the values: refuse before the expensive part.
            size = builder.build(probe, set())
            if size > config.size_budget * fp32_bytes:
                # Small models are dominated by what stays float (norms, biases, positions).
                raise AccuracyError(
                    f"the all-INT4 model is {size} bytes ({size / fp32_bytes:.4f}x FP32), above the size budget "
                    f"of {int(config.size_budget * fp32_bytes)} bytes ({config.size_budget}x FP32's {fp32_bytes}, "
                    f"{BUDGET_PARAMETER}){builder.budget_advice()}"
                )
        builder.round(stat_rows, progress, hessians)
        chosen: list[int] = []
        search: list[dict[str, Any]] = []
        seconds = 0.0
        if config.size_budget is not None:
            # The shared search's budget policy: ranked on the fit texts, each step judged on
            # the validation texts.
            rank, judge = _scorers(compact, rows, val_rows, rank, judge)
            space = TfliteSpace(builder, list(builder.codes), probe, rank, judge)
            rule = floor_rule(floor)
            result = greedy_search(space, Budget(int(config.size_budget * fp32_bytes), rule and rule.shortfall),
                                   move="INT8", progress=progress)
            chosen, search, seconds = result.moved, result.steps, result.seconds
        builder.build(out_path, set(chosen))
    finally:
        compact.unlink(missing_ok=True)
        probe.unlink(missing_ok=True)
        if source != in_path:
            source.unlink(missing_ok=True)
    layers = builder.schemes(set(chosen))
    for name, layer in layers.items():
        if not layer["scheme"].startswith("int4"):
            log.info("%s: %s %s stays %s", GPTQ_RECIPE, layer["op"], name, layer["scheme"])
    return {
        "config": config.as_dict(),
        "smoothing": smoothing,
        "calibration_rows": len(rows),
        "hessian_rows": len(stat_rows),
        "hessians_from": builder.hessians_from,
        "validation_rows": len(val_rows),
        "layers": layers,
        "promoted": {"to": "int8", "weights": [builder.weights[b].name for b in sorted(chosen)]},
        "search": search,
        "search_seconds": round(seconds, 1),
    }


def _quantize_gptq_int8(
    in_path: Path,
    out_path: Path,
    calibration: list[dict[str, np.ndarray]],
    floor: AccuracyFloor | tuple[float, float] | None,
    progress: Progress,
    validation: list[dict[str, np.ndarray]] | None = None,
    rank: Score | None = None,
    judge: Score | None = None,
    hessians: HessianCache | None = None,
    smooth_alpha: float | None = SMOOTH_ALPHA,
) -> dict[str, Any]:
    """GPTQ INT8; with a floor (judge.floor_rule) that the all-INT8 model misses on the validation
    rows, the shared search's floor policy keeps FCs float until it is met."""
    policy = gptq_policy(GPTQ_INT8_RECIPE)
    rows, stat_rows = hessian_rows(calibration, max(signature_lengths(in_path)), policy)
    hessians = hessians if hessians is not None else HessianCache()
    source, smoothing = _smoothed(in_path, out_path, stat_rows, policy.weighting, hessians, smooth_alpha, progress)
    probe = out_path.with_name(out_path.stem + ".probe.tflite")
    try:
        builder = Int8Builder(source, stat_rows, progress, hessians, policy)
        written = builder.build(out_path, set())
        report: dict[str, Any] = {
            "smoothing": smoothing,
            "gptq": {
                "weights": written,
                **policy.describe(),
                "calibration_rows": len(rows),
                "hessian_rows": len(stat_rows),
                "hessians_from": builder.hessians.origin,
            },
            "promoted": {"to": "float32", "weights": []},
        }
        if floor is None:
            return report
        val_rows = rows if validation is None else calibration_rows(validation, max(signature_lengths(in_path)))
        report["gptq"]["validation_rows"] = len(val_rows)
        rank, judge = _scorers(in_path, rows, val_rows, rank, judge)
        metrics = judge(out_path)
        report["validation_metrics"] = metrics
        rule = floor_rule(floor)
        if not rule.failures(metrics):
            return report
        space = TfliteSpace(builder, list(builder.fcs), probe, rank, judge)
        goal = Floor(rule.failures, shortfall=rule.extra)
        result = greedy_search(space, goal, move="float", progress=progress, start_metrics=metrics)
        report["gptq"]["weights"] = builder.build(out_path, set(result.moved))
    finally:
        probe.unlink(missing_ok=True)
        if source != in_path:
            source.unlink(missing_ok=True)
    report.update(promoted={"to": "float32", "weights": [builder.label(b) for b in result.moved]},
                  validation_metrics=result.metrics, search=result.steps,
                  search_seconds=round(result.seconds, 1))
    return report


def quantize_tflite(
    in_path: Path,
    out_path: Path,
    recipe: str,
    calibration: list[dict[str, np.ndarray]] | None = None,
    *,
    int4: GptqInt4Config | None = None,
    progress: Progress = lambda message: None,
    floor: AccuracyFloor | tuple[float, float] | None = None,
    validation: list[dict[str, np.ndarray]] | None = None,
    rank: Score | None = None,
    judge: Score | None = None,
    hessians: HessianCache | None = None,
    smooth_alpha: float | None = SMOOTH_ALPHA,
) -> dict[str, Any]:
    """Quantize the FP32 .tflite at `in_path` with `recipe` into `out_path`.

    Precondition: `in_path` is a float model with named signatures (export_tflite's output).
    Postcondition (checked on the written file): the same signatures with the same inputs and
    outputs, and outputs that are finite and point the same way as the float model's.
    `calibration` (named int [batch, seq] arrays with an attention_mask, e.g. from
    converters.core.validate.make_batches) is used only by recipes that need it. `int4` configures
    gptq_wi4b32_afp32 (default GptqInt4Config()); with a size_budget that the all-INT4 model
    already exceeds, AccuracyError is raised (the pipeline refuses the artifact). `floor` (the
    artifact's AccuracyFloor, or a cosine mean, min pair: judge.floor_rule) lets gptq_wi8_afp32
    keep its most sensitive FULLY_CONNECTED weights float until it is met; gptq_wi4b32_afp32's
    size-budget search weighs how far a candidate misses it.
    `validation` (same form as `calibration`, disjoint texts) is what our recipes' searches
    judge candidates on and report as validation_metrics; `calibration` then only fits (GPTQ
    Hessians, sensitivity rankings). None: `calibration` does both (in-sample).
    `rank` / `judge` score a candidate file for the searches (fit texts / validation texts);
    the pipeline passes its one evaluator (agreement with PyTorch through edge_runtime). None:
    agreement with the FP32 .tflite on the calibration / validation rows. `hessians`: a
    HessianCache shared with other calls on the same export and rows (None: collected here).
    `smooth_alpha`: gptq_wi8_afp32 first rescales the FC inputs (smooth.py) with this migration
    strength; None: it quantizes `in_path` as it is (gptq_wi4b32_afp32 reads `int4.smooth_alpha`).
    """
    spec = lookup(recipe)
    if spec.needs_calibration and not calibration:
        raise ConversionError(
            f"TFLite recipe {recipe!r} needs calibration samples (tokenized texts); none were given"
        )
    if int4 is not None and recipe != GPTQ_RECIPE:
        raise ConversionError(
            f"GptqInt4Config applies to {GPTQ_RECIPE} only; {recipe!r} is ai-edge-quantizer's own"
        )
    in_path, out_path = Path(in_path), Path(out_path)

    from ai_edge_litert.interpreter import Interpreter

    before = Interpreter(model_path=str(in_path)).get_signature_list()
    started = time.perf_counter()
    details: dict[str, Any] = {}
    if recipe == GPTQ_INT8_RECIPE:
        details = _quantize_gptq_int8(in_path, out_path, calibration, floor, progress, validation, rank, judge,
                                      hessians, smooth_alpha)
    elif spec.ours:
        config = int4 or GptqInt4Config()
        details = _quantize_gptq_int4(in_path, out_path, calibration, config, progress, validation, rank,
                                      judge, hessians, floor)
    else:
        from ai_edge_quantizer import recipe as recipes

        run_quantizer(in_path, out_path, getattr(recipes, recipe)(), calibration)
    # Per-bucket subgraphs repeat each quantized tensor's parameters: stored once (the same bits
    # computed; MiniLM tflite-int8 26.8 -> 25.0 MB, RESULTS.md run AS).
    shared = share_quantization(out_path)
    if shared:
        progress(f"quantization parameters repeated by the {len(before)} signatures stored once: "
                 f"{shared / 1e6:.2f} MB smaller")
    seconds = time.perf_counter() - started

    after = Interpreter(model_path=str(out_path)).get_signature_list()
    if after != before:
        raise ConversionError(
            f"quantizing {in_path.name} with {recipe!r} changed its signatures: {before} -> {after}"
        )
    cosines = synthetic_cosines(in_path, out_path)
    broken = {k: c for k, c in cosines.items() if not np.isfinite(c) or c < 0.5}
    if broken:
        raise ConversionError(
            f"{recipe!r} broke {in_path.name}: output cosine vs the float model "
            + ", ".join(f"{k} {c:.3f}" for k, c in broken.items())
        )

    return {
        "recipe": recipe,
        "precision": spec.precision,
        "note": spec.note,
        "bytes": out_path.stat().st_size,
        "size_ratio": out_path.stat().st_size / in_path.stat().st_size,
        "signatures": sorted(after),
        "cosine_vs_float_synthetic": cosines,
        "op_counts": op_counts(out_path),
        "seconds": round(seconds, 2),
        "shared_quantization_bytes": shared,
        "tool": {"ai_edge_quantizer": importlib.metadata.version("ai-edge-quantizer")},
        **details,
    }
