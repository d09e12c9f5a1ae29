"""How each artifact is built: one builder per (format, precision), the profile's plan, and
what each artifact needs on the device. converters/pipeline.py runs them in order.

    onnx-fp32   the export, validated
    onnx-int8   pack Q/K/V -> smooth -> split token 0 -> INT8 (GPTQ rounding) with FP32 fallback
    onnx-int4   4-bit tables + W4A8 weights on the INT8 graph, 8-bit weights within a size budget
                (or MatMulNBits, per the profile)
    tflite-*    litert-torch export with sequence buckets -> ai-edge-quantizer recipe
                (converters/_artifacts_tflite.py)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from converters._artifacts_tflite import build_tflite_fp32, build_tflite_quantized
from converters._errors import AccuracyError, ConversionError, UnsupportedModelError
from converters._graph import model_bytes
from converters._step import (
    PLAIN_ONNX_EXPORT,
    Built,
    Step,
    checked,
    latency_ms,
    onnx_session,
    open_session,
    promoted,
)
from converters.core.gptq import Int8Rounding
from converters.core.search import RANKING_TEXTS, LaneScorer, ranking_lanes
from converters.core.validate import (
    Reference,
    compute_metrics,
    floor_failures,
    floor_shortfall,
)
from converters.inputs.plan import Planned
from converters.inputs.source import SourceModel
from converters.onnx.gather_tables_unpacked import UnpackedTablesConfig, gather_tables_unpacked
from converters.onnx.keep_layernorm_unfused import KeepUnfusedConfig, keep_layernorm_unfused
from converters.onnx.mixed_precision import quantize_with_floor
from converters.onnx.pack_projections import pack_projections
from converters.onnx.quantize_embeddings import EmbeddingQuantConfig, quantize_embeddings
from converters.onnx.quantize_int4 import Int4Config, quantize_int4, quantize_tables_int4
from converters.onnx.quantize_int8 import Int8Config, int8_range, quantize_int8
from converters.onnx.quantize_w4a8 import W4A8Config, W4A8Space, W4A8Weights, fit_w4a8
from converters.onnx.smooth_activations import SmoothConfig, smooth_activations
from converters.onnx.split_first_token import SplitConfig, split_first_token
from converters.pruning.structure import find_layers
from edge_runtime._bench_config import DEFAULT_SHAPE

# Step, Built and the sessions live in converters/_step.py; re-exported here for the pipeline.
__all__ = ["BUILDERS", "MIN_RUNTIME", "PLAIN_ONNX_EXPORT", "Built", "Step", "latency_ms", "onnx_session",
           "open_session"]


def _build_onnx_fp32(step: Step, name: str) -> Built:
    metrics = compute_metrics(step.source, step.reference, onnx_session(step.fp32_path).run, name)
    failures = floor_failures(metrics, step.floor)
    if failures:
        raise ConversionError(
            f"the FP32 export of {step.source.name} disagrees with PyTorch ({'; '.join(failures)}): "
            "this is an export bug, please report it with the model config"
        )
    return Built(step.fp32_path, metrics)


@dataclass
class _Int8Graph:
    """The float graph prepared for dynamic/static INT8 (both rewrites exact in FP32)."""

    smoothed: Path  # [batch, sequence, K] MatMul inputs: where activation statistics come from
    split: Path  # what the INT8 quantizer reads
    report: dict[str, Any]


def _projection_shapes(source: SourceModel) -> tuple[tuple[tuple[int, int], ...], tuple[tuple[int, int], ...]]:
    """The [K, N] weight shapes of the encoder's MatMuls: (those reading the layer input, the
    attention context or the FFN input projection's input; the FFN output projections). A pruned
    model's layers each have their own widths (converters/pruning/), so they are read per layer
    where the architecture is one pruning knows."""
    h, i = source.hidden_size, source.intermediate_size
    first, second = {(h, i), (h, h), (h, 3 * h)}, {(i, h)}
    try:
        layers = find_layers(source.module)
    except UnsupportedModelError:
        layers = []
    for layer in layers:
        width, neurons = layer.query.out_features, layer.neurons
        first |= {(h, neurons), (h, width), (width, h), (h, 3 * width)}
        second.add((neurons, h))
    return tuple(sorted(first)), tuple(sorted(second - first))


def _prepare_int8_graph(step: Step, name: str, start_path: Path) -> _Int8Graph:
    """pack Q/K/V -> smooth activation outliers -> split token 0 off every MatMul -> keep the
    session-time fusions the profile lists out (onnx.keep_unfused)."""
    work = step.work
    # Q, K and V become one MatMul: one quantized input instead of three (exact in FP32).
    packed_path = work / f"{name}-packed.onnx"
    packed = pack_projections(start_path, packed_path)
    # Outlier handling: rescale activation channels into the per-channel weights, and give
    # token 0 its own scale in every MatMul.
    inputs_side, ffn_out = _projection_shapes(step.source)
    smooth = SmoothConfig(weight_shapes=inputs_side)  # all but the FFN output
    smoothed_path, split_path = work / f"{name}-smooth.onnx", work / f"{name}-split.onnx"
    smoothed = smooth_activations(packed_path, smoothed_path, step.fit.batches, smooth,
                                  step.batches_counted(f"[{name}] activation ranges for SmoothQuant"))
    # A pruned twin may split fewer MatMuls (pruning.first_token_split): its error is the pruning's,
    # and each split MatMul costs a Slice, a Concat and a second GEMM call.
    at = step.profile.pruning.first_token_split if step.pruned else "all"
    shapes = inputs_side + ffn_out if at == "all" else ()
    split = split_first_token(smoothed_path, split_path, SplitConfig(shapes))
    step.progress(f"[{name}] packed {len(packed)} projection groups; smoothed {len(smoothed)} MatMul inputs; "
                  f"split token 0 off {len(split)} MatMuls" + ("" if at == "all" else f" (pruning.first_token_split = {at})"))
    report = {"packed_projections": packed, "smoothquant": {"alpha": smooth.alpha, "nodes": smoothed},
              "first_token_split": split}
    if step.profile.onnx.keep_unfused:
        # Session-time fusions the profile measured slower on its CPU stay out (exact rewrite).
        unfused = KeepUnfusedConfig(fusions=step.profile.onnx.keep_unfused)
        kept_path = work / f"{name}-unfused.onnx"
        sums = keep_layernorm_unfused(split_path, kept_path, unfused)
        step.progress(f"[{name}] kept {len(sums)} Add + LayerNormalization pairs out of "
                      "onnxruntime's SkipLayerNormalization fusion (onnx.keep_unfused)")
        report["keep_unfused"] = {**unfused.describe(), "nodes": sums}
        split_path = kept_path
    return _Int8Graph(smoothed_path, split_path, report)


def _build_onnx_int8(step: Step, name: str) -> Built:
    source, profile, work = step.source, step.profile, step.work
    start_path, embeddings = step.fp32_path, []
    if profile.int8.embeddings == "int8-per-row":
        start_path = work / f"{name}-embeddings.onnx"
        embeddings = quantize_embeddings(step.fp32_path, start_path, EmbeddingQuantConfig())
        step.progress(f"[{name}] embedding tables to INT8 rows: "
                      + (", ".join(f"{e['initializer']} {e['shape']}" for e in embeddings) or "none large enough"))
    graph = _prepare_int8_graph(step, name, start_path)
    rounding = None
    if profile.int8.weight_rounding == "gptq":
        step.progress(f"[{name}] GPTQ weight rounding (Hessians from {len(step.fit.texts)} fit texts)")
        limit = profile.int8.pair_sum_limit
        if limit:
            step.progress(f"[{name}] 8-bit codes with adjacent-row pair sums <= {limit} (int8.pair_sum_limit)")
        rounding = Int8Rounding(graph.split, graph.smoothed, step.fit.batches, int8_range(profile.int8),
                                pair_limit=limit, progress=step.batches_counted(f"[{name}] GPTQ Hessians"),
                                solve_progress=step.counted(f"[{name}] GPTQ rounding, weight"))
    int8 = Int8Config(
        scheme=profile.int8,
        calibration_batches=_range_batches(step.fit.batches) if profile.int8.mode == "static" else (),
    )
    outcome = quantize_with_floor(graph.split, work / f"{name}.onnx", int8, source,
                                  step.reference, step.floor.for_precision("int8"), step.session, step.progress,
                                  fit=step.fit, name=name, rounding=rounding, lanes=ranking_lanes())
    extra = {"quantization": {**int8.describe(rounding), "promoted": promoted("float32", outcome.promoted),
                              "embeddings": embeddings, **graph.report, "search": outcome.search}}
    if outcome.promoted:
        extra["quantization"]["tradeoff"] = _fallback_cost(step, name, graph.split, int8, rounding, outcome)
    return Built(outcome.path, outcome.metrics, outcome.promoted, "float32", extra)


# Static INT8 activation ranges from at most this many batches (x 16 texts), spread over the
# fit set: ranges settle well before that, and percentile/entropy calibration re-runs
# the model on every batch for every probe of the accuracy fallback (all 357 texts: > 30 minutes
# and 19 GB of stored activations for percentile).
RANGE_BATCHES = 4


def _range_batches(batches: list[dict[str, np.ndarray]]) -> tuple:
    stride = max(1, -(-len(batches) // RANGE_BATCHES))
    return tuple(batches[::stride])


def _fallback_cost(step: Step, name: str, split: Path, int8: Int8Config, rounding, outcome) -> dict[str, Any]:
    """What keeping nodes in FP32 cost against the all-INT8 model it replaced: bytes, p50 on
    this machine, and the metrics it bought. Printed, and recorded in the manifest."""
    probe = step.work / f"{name}-all-int8.onnx"
    quantize_int8(split, probe, int8, rounding)  # the rounding's codes are cached: this is quick
    seq = DEFAULT_SHAPE.seq
    sides = {}
    for label, path, metrics in (("all_int8", probe, outcome.search[0]["metrics"]),
                                 ("chosen", outcome.path, outcome.metrics)):
        sides[label] = {"bytes": model_bytes(path), "metrics": metrics,
                        "latency_ms_p50": round(latency_ms(onnx_session(path), step.source, seq, 20), 3)}
    probe.unlink(missing_ok=True)
    a, c = sides["all_int8"], sides["chosen"]
    key = "cosine_min" if "cosine_min" in c["metrics"] else "top1_agreement"
    step.progress(
        f"[{name}] trade-off: {len(outcome.promoted)} node(s) in FP32 cost "
        f"{(c['bytes'] - a['bytes']) / 1e6:+.2f} MB and {c['latency_ms_p50'] - a['latency_ms_p50']:+.2f} ms p50 "
        f"(batch 1, {min(seq, step.source.max_length)} tokens, this machine) for {key} "
        f"{a['metrics'].get(key, float('nan')):.4f} -> {c['metrics'].get(key, float('nan')):.4f}"
    )
    return sides


def _onnx_scorer(step: Step, texts: Reference, label: str) -> LaneScorer:
    """The searches' scorer of ONNX candidates: agreement with PyTorch on `texts`, through the
    session of the target's arithmetic (step.session). Rankings may score candidates in lanes
    (core/search.py); called with a path alone it uses the project's scoring threads."""

    def through(run) -> dict[str, float]:
        return compute_metrics(step.source, texts, run, label)

    def opener(path: Path, threads: int | None):
        return step.session(path, threads).run

    def score(path: Path, threads: int | None) -> dict[str, float]:
        return through(opener(path, threads))

    return LaneScorer(score, ranking_lanes(), through=through, opener=opener)


def _build_onnx_int4(step: Step, name: str) -> Built:
    if step.profile.int4.kernel == "int8-gemm":
        return _build_onnx_int4_w4a8(step, name)
    return _build_onnx_int4_matmulnbits(step, name)


def _build_onnx_int4_w4a8(step: Step, name: str) -> Built:
    """4-bit weights on the INT8 graph's grid (run by the INT8 GEMM), 4-bit embedding tables,
    and the MatMuls whose 8-bit form helps most per byte in 8 bits, within the size budget."""
    import onnx

    scheme, profile, work, source = step.profile.int4, step.profile, step.work, step.source
    tables_path = work / f"{name}-tables.onnx"
    tables = quantize_tables_int4(step.fp32_path, tables_path,
                                  Int4Config(embedding_block_size=scheme.embedding_block_size),
                                  step.counted(f"[{name}] embedding tables to 4-bit blocks: clip search, row"))
    step.progress(f"[{name}] embedding tables to 4-bit blocks of {scheme.embedding_block_size}: "
                  + (", ".join(f"{t['initializer']} {t['shape']}" for t in tables) or "none large enough"))
    unpacked = []
    if scheme.table_gather == "unpacked" and tables:
        # Same 4-bit file; onnxruntime unpacks the codes at load and plain ops gather them
        # (GatherBlockQuantized is slow on CPU: int4.table_gather in the profile).
        gather_path = work / f"{name}-tables-unpacked.onnx"
        unpacked = gather_tables_unpacked(tables_path, gather_path, UnpackedTablesConfig())
        step.progress(f"[{name}] {len(unpacked)} 4-bit table(s) gathered as uint8 codes unpacked "
                      "at load (int4.table_gather = unpacked)")
        tables_path = gather_path
    graph = _prepare_int8_graph(step, name, tables_path)
    int8_path = work / f"{name}-int8.onnx"
    # W4A8 rounds without a pair limit, so its 8-bit expansions use the scheme's plain range
    # (7 bits where reduce_range is set): safe on AVX2 without pair-aware codes.
    plain = dataclasses.replace(profile.int8, pair_sum_limit=0)
    quantize_int8(graph.split, int8_path, Int8Config(scheme=plain))
    config = W4A8Config(block_size=scheme.block_size)
    weights = W4A8Weights(int8_path, graph.split, graph.smoothed, step.fit.batches,
                          int8_range(plain), config, step.batches_counted(f"[{name}] GPTQ Hessians"))
    probe = work / f"{name}.probe.onnx"

    fp32_bytes = model_bytes(step.fp32_path)
    step.progress(f"[{name}] GPTQ 4-bit codes for {len(weights.weights)} weights (block {scheme.block_size})")
    weights.solve(step.counted(f"[{name}] GPTQ 4-bit codes, weight"))
    base_bytes = weights.size(set(weights.weights))
    budget = int((scheme.size_budget or 1.0) * fp32_bytes)
    if base_bytes > budget:
        # Small models are dominated by biases and norms: the target's size budget cannot be
        # met, and the artifact is refused like one below the accuracy floor.
        raise AccuracyError(f"the all-4-bit model is {base_bytes} bytes ({base_bytes / fp32_bytes:.3f}x FP32), above "
                            f"the size budget of {budget} bytes ({scheme.size_budget}x FP32, the profile's [int4] "
                            "size_budget): what stays float (norms, biases, small tables) weighs more in a small "
                            f"model: ship the INT8 artifact for this model (the budget is part of the profile, "
                            f"targets/{step.profile.id}.toml; no option changes it)")
    step.progress(f"[{name}] all 4-bit: {base_bytes / 1e6:.1f} MB of a {budget / 1e6:.1f} MB budget; "
                  "moving the most sensitive MatMuls to 8 bits while they fit")
    # The shared search (converters/core/search.py): ranked on a length-spread subset of the fit
    # texts, each step judged on the validation texts.
    space = W4A8Space(weights, probe, rank=_onnx_scorer(step, step.fit.spread(RANKING_TEXTS), f"{name} ranking probe"),
                      judge=_onnx_scorer(step, step.reference, f"{name} candidate"))
    floor = step.floor.for_precision("int4")
    fit = fit_w4a8(space, budget, progress=lambda message: step.progress(f"[{name}] {message}"),
                   shortfall=lambda metrics: floor_shortfall(metrics, floor))
    four_bit = set(weights.weights) - set(fit.moved)
    model = weights.build(four_bit)
    weights.check(model, four_bit)
    path = work / f"{name}.onnx"
    onnx.save(model, str(path))
    probe.unlink(missing_ok=True)
    metrics = compute_metrics(source, step.reference, step.session(path).run, name)
    checked(step, name, "int4", metrics)
    eight = sorted(fit.moved)
    base = fit.steps[0]["metrics"]
    step.progress(f"[{name}] trade-off: {len(eight)} of {len(weights.weights)} MatMul weights in 8 bits cost "
                  f"{(path.stat().st_size - base_bytes) / 1e6:+.2f} MB ({path.stat().st_size / 1e6:.1f} MB, "
                  f"{path.stat().st_size / fp32_bytes:.3f}x FP32) for "
                  + ", ".join(f"{k} {base[k]:.4f} -> {v:.4f}" for k, v in metrics.items() if k in base)
                  + "; speed is the INT8 GEMM's either way")
    report = {"kernel": "int8-gemm", "config": config.describe(), "int8_scheme": Int8Config(scheme=plain).describe(),
              "embeddings": tables,
              "table_gather": {"mode": scheme.table_gather, "tables": unpacked},
              **graph.report,
              "weights": {w: {"bits": 4 if w in four_bit else 8, "shape": list(weights.shape(w))}
                          for w in weights.weights},
              "promoted": promoted("int8", eight), "search": fit.steps, "search_seconds": round(fit.seconds, 1), "size_budget": scheme.size_budget,
              "bytes_all_4bit": base_bytes, "bytes": path.stat().st_size, "bytes_fp32": fp32_bytes}
    # The runtime keeps this artifact's optimized graph in its device cache: expanding the
    # 4-bit weights is most of a session start (edge_runtime/backends/onnx.py).
    return Built(path, metrics, eight, "int8", {"quantization": report, "load_cache": "optimized-model"})


def _build_onnx_int4_matmulnbits(step: Step, name: str) -> Built:
    scheme = step.profile.int4
    config = Int4Config(block_size=scheme.block_size, algorithm=scheme.algorithm,
                        accuracy_level=scheme.accuracy_level, embedding_block_size=scheme.embedding_block_size,
                        size_budget=scheme.size_budget)
    step.progress(f"[{name}] block-wise INT4 ({scheme.algorithm}, block {scheme.block_size}, "
                  f"size budget {scheme.size_budget}): measuring candidates")
    report = quantize_int4(step.fp32_path, step.work / f"{name}.onnx", config, step.fit.batches,
                           validation_batches=step.reference.batches,
                           progress=lambda message: step.progress(f"[{name}] {message}"),
                           rank=_onnx_scorer(step, step.fit.spread(RANKING_TEXTS), f"{name} ranking probe"),
                           judge=_onnx_scorer(step, step.reference, f"{name} candidate"),
                           shortfall=lambda metrics: floor_shortfall(metrics, step.floor.for_precision("int4")))
    path = step.work / f"{name}.onnx"
    metrics = compute_metrics(step.source, step.reference, step.session(path).run, name)
    checked(step, name, "int4", metrics)
    return Built(path, metrics, report["promoted"]["weights"], "int8", {"quantization": report})


# (format, precision) -> builder. Registered once; an unknown pair is a clear error up front.
BUILDERS: dict[tuple[str, str], Callable[[Step, Planned], Built]] = {
    ("onnx", "fp32"): lambda step, p: _build_onnx_fp32(step, p.name),
    ("onnx", "int8"): lambda step, p: _build_onnx_int8(step, p.name),
    ("onnx", "int4"): lambda step, p: _build_onnx_int4(step, p.name),
    ("tflite", "fp32"): lambda step, p: build_tflite_fp32(step, p.name),
    ("tflite", "int8"): lambda step, p: build_tflite_quantized(step, p.name, "int8", p.variant == "legacy"),
    ("tflite", "int4"): lambda step, p: build_tflite_quantized(step, p.name, "int4", p.variant == "legacy"),
}
# What each artifact needs on the device (the versions it was tested with). tflite-runtime
# 2.14 runs the FP32 export and weight-only INT8 correctly, but computes per-channel dynamic
# INT8 wrongly without raising (docs/notes/tflite-findings.md): those need ai-edge-litert.
_LEGACY_TFLITE = {"ai-edge-litert": "2.3", "tflite-runtime": "2.14"}
MIN_RUNTIME = {
    ("onnx", "fp32", ""): {"onnxruntime": "1.17"},
    ("onnx", "int8", ""): {"onnxruntime": "1.17"},
    # UINT4 Casts: none in 1.22; 1.23.0 passes every INT4 kind's golden samples (tests/test_min_runtime.py)
    ("onnx", "int4", ""): {"onnxruntime": "1.23"},
    ("tflite", "fp32", ""): _LEGACY_TFLITE,
    ("tflite", "int8", ""): {"ai-edge-litert": "2.3"},
    ("tflite", "int4", ""): {"ai-edge-litert": "2.3"},
    ("tflite", "int8", "legacy"): _LEGACY_TFLITE,
}
