"""edge-convert's pipeline: one ordered list of steps, readable top to bottom.

    load source -> reference outputs -> export ONNX -> fuse -> per precision: quantize ->
    validate (with mixed-precision fallback) -> package -> manifest -> rename into place
"""

from __future__ import annotations

import dataclasses
import platform
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from converters import package
from converters._errors import AccuracyError, ConversionError
from converters._graph import model_bytes
from converters.calibration import TextSet, load_texts
from converters.export_onnx import ExportConfig, export_onnx
from converters.fuse_onnx import fuse_onnx, fusion_config
from converters.gptq import Int8Rounding
from converters.mixed_precision import probe_loss, quantize_with_floor
from converters.pack_projections import pack_projections
from converters.export_tflite import TfliteExportConfig, export_tflite
from converters.quantize_embeddings import EmbeddingQuantConfig, quantize_embeddings
from converters.quantize_int4 import Int4Config, quantize_int4, quantize_tables_int4
from converters.quantize_int8 import Int8Config, int8_range, quantize_int8
from converters.quantize_w4a8 import W4A8Config, W4A8Weights, fit_w4a8
from converters.quantize_tflite import quantize_tflite
from converters.smooth_activations import SmoothConfig, smooth_activations
from converters.source import SourceModel, load_source
from converters.split_first_token import SplitConfig, split_first_token
from converters.validate import (
    Reference,
    compute_metrics,
    encode,
    floor_failures,
    reference_outputs,
)
from edge_runtime._manifest import MANIFEST_SCHEMA_VERSION
from edge_runtime import backends
from edge_runtime.backends.onnx import OnnxSession
from targets import AccuracyFloor, TargetProfile, load_profile

__all__ = ["ArtifactResult", "ConvertConfig", "ConvertResult", "convert"]

Progress = Callable[[str], None]
GOLDEN_TEXT = "edge-runtime golden sample: a quick check that this device computes the right numbers."
# How far a device may drift from the converter's own run of the same artifact. INT8 kernels
# differ slightly across CPUs (rounding of dynamic activation scales), FP32 barely.
GOLDEN_TOLERANCE = {
    "fp32": {"cosine_min": 0.9999, "rel_l2_max": 1e-3},
    "fp16": {"cosine_min": 0.999, "rel_l2_max": 2e-2},
    "int8": {"cosine_min": 0.99, "rel_l2_max": 0.15},
    "int4": {"cosine_min": 0.99, "rel_l2_max": 0.15},
}


@dataclass(frozen=True)
class ConvertConfig:
    model: Path | None  # None: the built-in all-MiniLM-L6-v2
    target: str
    out: Path
    task: str | None = None
    calibration: Path | None = None
    accuracy_floor: float | None = None  # overrides the profile's cosine_mean / top1 floors
    calibration_method: str | None = None  # overrides the profile's static-INT8 calibration method
    force: bool = False
    latency_runs: int = 20
    latency_seq: int = 128


@dataclass
class ArtifactResult:
    name: str
    format: str
    precision: str
    bytes: int
    metrics: dict[str, float]
    latency_ms_p50: float
    kept_fp32: list[str] = field(default_factory=list)


@dataclass
class ConvertResult:
    out: Path
    target: str
    task: str
    source: str
    artifacts: list[ArtifactResult]
    seconds: float
    refused: list[dict[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "out": str(self.out),
            "target": self.target,
            "task": self.task,
            "source": self.source,
            "seconds": round(self.seconds, 2),
            "artifacts": [a.__dict__ for a in self.artifacts],
            "refused": self.refused,
        }


def _floor(profile: TargetProfile, override: float | None) -> AccuracyFloor:
    if override is None:
        return profile.accuracy
    if not 0.0 < override <= 1.0:
        raise ConversionError(f"--accuracy-floor must be in (0, 1], got {override}")
    # The override sets the mean-cosine / top-1 floor; the per-sample minimum keeps the
    # profile's gap below it.
    gap = profile.accuracy.cosine_mean - profile.accuracy.cosine_min
    return AccuracyFloor(cosine_mean=override, cosine_min=max(0.0, override - gap), top1_agreement=override)


def _session(path: Path, threads: int = 2) -> OnnxSession:
    return OnnxSession(path, threads=threads, graph_optimization_level="all")


def _open(fmt: str, path: Path, threads: int = 2):
    """A session of the device backend for `fmt`, as edge_runtime opens it."""
    return backends.open_session(fmt, path, threads=threads)


def _latency_ms(session: OnnxSession, source: SourceModel, seq: int, runs: int) -> float:
    """p50 at batch 1 and a full `seq`-token input on this machine (informational)."""
    seq = min(seq, source.max_length)
    rng = np.random.default_rng(0)
    feeds = {"input_ids": rng.integers(5, source.tokenizer.vocab_size, (1, seq), dtype=np.int64),
             "attention_mask": np.ones((1, seq), np.int64)}
    if "token_type_ids" in source.input_names:
        feeds["token_type_ids"] = np.zeros((1, seq), np.int64)
    for _ in range(3):
        session.run(feeds)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(feeds)
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1000)


def _io_signature(source: SourceModel) -> tuple[list, list]:
    inputs = [{"name": n, "dtype": "int64", "shape": ["batch", "sequence"]} for n in source.input_names]
    if source.task == "feature-extraction":
        shape = ["batch", "sequence", source.hidden_size]
    elif source.task == "token-classification":
        shape = ["batch", "sequence", len(source.postprocess["labels"])]
    else:
        shape = ["batch", len(source.postprocess["labels"])]
    outputs = [{"name": source.output_names[0], "dtype": "float32", "shape": shape}]
    return inputs, outputs


def _tokenizer_files(source: SourceModel, root: Path) -> dict[str, Any]:
    tok_dir = root / "tokenizer"
    source.tokenizer.save_pretrained(str(tok_dir))
    main = tok_dir / "tokenizer.json"
    if not main.is_file():
        raise ConversionError(f"the tokenizer of {source.path} did not produce tokenizer.json")
    files = [package.file_entry(root, main)] + [
        package.file_entry(root, p) for p in sorted(tok_dir.iterdir()) if p != main
    ]
    return {
        "files": files,
        "max_length": source.max_length,
        "pad_token_id": source.pad_token_id,
        "class": type(source.tokenizer).__name__,
    }


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import torch
    import transformers

    from converters import __version__

    return {
        "edge-convert": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


def _runtime_settings(profile: TargetProfile) -> dict[str, Any]:
    return {
        "threads": {"intra_op": profile.threads.intra_op, "inter_op": profile.threads.inter_op},
        "backends": [
            {"name": b.name, "execution_providers": list(b.execution_providers), "provider_options": b.provider_options}
            for b in profile.backends
        ],
        "graph_optimization_level": profile.onnx.graph_optimization_level,
        "artifact_preference": list(profile.runtime.artifact_preference),
        "notes": profile.runtime.notes,
    }


@dataclass
class _Step:
    """What every artifact builder reads."""

    source: SourceModel
    profile: TargetProfile
    reference: Reference
    floor: AccuracyFloor
    work: Path
    fp32_path: Path  # the exported (and, per profile, fused) FP32 ONNX graph
    progress: Progress
    cache: dict[str, Any] = field(default_factory=dict)  # results shared between builders


@dataclass
class _Built:
    model_path: Path
    metrics: dict[str, float]
    kept_fp32: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


def _build_onnx_fp32(step: _Step, name: str) -> _Built:
    metrics = compute_metrics(step.source, step.reference, _session(step.fp32_path).run)
    failures = floor_failures(metrics, step.floor)
    if failures:
        raise ConversionError(
            f"the FP32 export of {step.source.name} disagrees with PyTorch ({'; '.join(failures)}): "
            "this is an export bug, please report it with the model config"
        )
    return _Built(step.fp32_path, metrics)


@dataclass
class _Int8Graph:
    """The float graph prepared for dynamic/static INT8 (both rewrites exact in FP32)."""

    smoothed: Path  # [batch, sequence, K] MatMul inputs: where activation statistics come from
    split: Path  # what the INT8 quantizer reads
    report: dict[str, Any]


def _prepare_int8_graph(step: _Step, name: str, start_path: Path) -> _Int8Graph:
    """pack Q/K/V -> smooth activation outliers -> split token 0 off every MatMul."""
    work, h, i = step.work, step.source.hidden_size, step.source.intermediate_size
    # Q, K and V become one MatMul: one quantized input instead of three (exact in FP32).
    packed_path = work / f"{name}-packed.onnx"
    packed = pack_projections(start_path, packed_path)
    # Outlier handling: rescale activation channels into the per-channel weights, and give
    # token 0 its own scale in every MatMul.
    smooth = SmoothConfig(weight_shapes=((h, i), (h, h), (h, 3 * h)))  # all but the FFN output
    smoothed_path, split_path = work / f"{name}-smooth.onnx", work / f"{name}-split.onnx"
    smoothed = smooth_activations(packed_path, smoothed_path, step.reference.batches, smooth)
    split = split_first_token(smoothed_path, split_path, SplitConfig(((h, i), (i, h), (h, h), (h, 3 * h))))
    step.progress(f"[{name}] packed {len(packed)} projection groups; smoothed {len(smoothed)} MatMul inputs; "
                  f"split token 0 off {len(split)} MatMuls")
    report = {"packed_projections": packed, "smoothquant": {"alpha": smooth.alpha, "nodes": smoothed},
              "first_token_split": split}
    return _Int8Graph(smoothed_path, split_path, report)


def _build_onnx_int8(step: _Step, name: str) -> _Built:
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
        step.progress(f"[{name}] GPTQ weight rounding (Hessians from {len(step.reference.batches)} batches)")
        rounding = Int8Rounding(graph.split, graph.smoothed, step.reference.batches, int8_range(profile.int8))
    int8 = Int8Config(
        scheme=profile.int8,
        calibration_batches=tuple(step.reference.batches) if profile.int8.mode == "static" else (),
        rounding=rounding,
    )
    outcome = quantize_with_floor(graph.split, work / f"{name}.onnx", int8, source,
                                  step.reference, step.floor.for_precision("int8"), _session, step.progress)
    extra = {"quantization": {**int8.describe(), "kept_fp32": outcome.kept_fp32, "embeddings": embeddings,
                              **graph.report, "search": outcome.search}}
    if outcome.kept_fp32:
        extra["quantization"]["tradeoff"] = _fallback_cost(step, name, graph.split, int8, outcome)
    return _Built(outcome.path, outcome.metrics, outcome.kept_fp32, extra)


def _fallback_cost(step: _Step, name: str, split: Path, int8: Int8Config, outcome) -> dict[str, Any]:
    """What keeping nodes in FP32 cost against the all-INT8 model it replaced: bytes, p50 on
    this machine, and the metrics it bought. Printed, and recorded in the manifest."""
    probe = step.work / f"{name}-all-int8.onnx"
    quantize_int8(split, probe, int8)  # the rounding's codes are cached: this is quick
    seq = 128
    sides = {}
    for label, path, metrics in (("all_int8", probe, outcome.search[0]["metrics"]),
                                 ("chosen", outcome.path, outcome.metrics)):
        sides[label] = {"bytes": model_bytes(path), "metrics": metrics,
                        "latency_ms_p50": round(_latency_ms(_session(path), step.source, seq, 20), 3)}
    probe.unlink(missing_ok=True)
    a, c = sides["all_int8"], sides["chosen"]
    key = "cosine_min" if "cosine_min" in c["metrics"] else "top1_agreement"
    step.progress(
        f"[{name}] trade-off: {len(outcome.kept_fp32)} node(s) in FP32 cost "
        f"{(c['bytes'] - a['bytes']) / 1e6:+.2f} MB and {c['latency_ms_p50'] - a['latency_ms_p50']:+.2f} ms p50 "
        f"(batch 1, {min(seq, step.source.max_length)} tokens, this machine) for {key} "
        f"{a['metrics'].get(key, float('nan')):.4f} -> {c['metrics'].get(key, float('nan')):.4f}"
    )
    return sides


def _checked(step: _Step, name: str, precision: str, metrics: dict[str, float]) -> None:
    """Refuse an artifact below the profile's floor for its precision."""
    failures = floor_failures(metrics, step.floor.for_precision(precision))
    if failures:
        raise AccuracyError(f"{name} is below the accuracy floor: {'; '.join(failures)}")


def _build_onnx_int4(step: _Step, name: str) -> _Built:
    if step.profile.int4.kernel == "int8-gemm":
        return _build_onnx_int4_w4a8(step, name)
    return _build_onnx_int4_matmulnbits(step, name)


def _build_onnx_int4_w4a8(step: _Step, name: str) -> _Built:
    """4-bit weights on the INT8 graph's grid (run by the INT8 GEMM), 4-bit embedding tables,
    and the MatMuls whose 8-bit form helps most per byte in 8 bits, within the size budget."""
    import onnx

    scheme, profile, work, source = step.profile.int4, step.profile, step.work, step.source
    tables_path = work / f"{name}-tables.onnx"
    tables = quantize_tables_int4(step.fp32_path, tables_path,
                                  Int4Config(embedding_block_size=scheme.embedding_block_size))
    step.progress(f"[{name}] embedding tables to 4-bit blocks of {scheme.embedding_block_size}: "
                  + (", ".join(f"{t['initializer']} {t['shape']}" for t in tables) or "none large enough"))
    graph = _prepare_int8_graph(step, name, tables_path)
    int8_path = work / f"{name}-int8.onnx"
    quantize_int8(graph.split, int8_path, Int8Config(scheme=profile.int8))
    config = W4A8Config(block_size=scheme.block_size)
    weights = W4A8Weights(int8_path, graph.split, graph.smoothed, step.reference.batches,
                          int8_range(profile.int8), config)
    probe = work / f"{name}.probe.onnx"

    def evaluate(model, batches: int | None) -> dict[str, float]:
        onnx.save(model, str(probe))
        reference = Reference(step.reference.batches[:batches], step.reference.outputs[:batches])
        return compute_metrics(source, reference, _session(probe).run)

    fp32_bytes = model_bytes(step.fp32_path)
    step.progress(f"[{name}] GPTQ 4-bit codes for {len(weights.weights)} weights (block {scheme.block_size})")
    all_four = weights.build(set(weights.weights))
    base_bytes = all_four.ByteSize()
    budget = int((scheme.size_budget or 1.0) * fp32_bytes)
    if base_bytes > budget:
        # Small models are dominated by biases and norms: the target's size budget cannot be
        # met, and the artifact is refused like one below the accuracy floor.
        raise AccuracyError(f"the all-4-bit model is {base_bytes} bytes, above the size budget of {budget} "
                            f"bytes ({scheme.size_budget} x FP32)")
    step.progress(f"[{name}] all 4-bit: {base_bytes / 1e6:.1f} MB of a {budget / 1e6:.1f} MB budget; "
                  "moving the most sensitive MatMuls to 8 bits while they fit")
    # Sensitivities on every calibration batch: ranked on the first 32 texts only, the choice
    # missed short texts (MiniLM held-out minimum 0.949 against 0.960 with all batches).
    fit = fit_w4a8(weights, evaluate, probe_loss, budget, base_bytes, probe_batches=None)
    model = weights.build(fit.four_bit)
    weights.check(model, fit.four_bit)
    path = work / f"{name}.onnx"
    onnx.save(model, str(path))
    probe.unlink(missing_ok=True)
    metrics = compute_metrics(source, step.reference, _session(path).run)
    _checked(step, name, "int4", metrics)
    eight = sorted(set(weights.weights) - fit.four_bit)
    base = fit.search[0]["metrics"]
    step.progress(f"[{name}] trade-off: {len(eight)} of {len(weights.weights)} MatMul weights in 8 bits cost "
                  f"{(path.stat().st_size - base_bytes) / 1e6:+.2f} MB ({path.stat().st_size / 1e6:.1f} MB, "
                  f"{path.stat().st_size / fp32_bytes:.3f}x FP32) for "
                  + ", ".join(f"{k} {base[k]:.4f} -> {v:.4f}" for k, v in metrics.items() if k in base)
                  + "; speed is the INT8 GEMM's either way")
    report = {"kernel": "int8-gemm", "config": config.describe(), "int8_scheme": Int8Config(scheme=profile.int8).describe(),
              "embeddings": tables, **graph.report,
              "weights": {w: {"bits": 4 if w in fit.four_bit else 8, "shape": list(weights.shape(w))}
                          for w in weights.weights},
              "eight_bit": eight, "search": fit.search, "size_budget": scheme.size_budget,
              "bytes_all_4bit": base_bytes, "bytes": path.stat().st_size, "bytes_fp32": fp32_bytes}
    return _Built(path, metrics, [], {"quantization": report})


def _build_onnx_int4_matmulnbits(step: _Step, name: str) -> _Built:
    scheme = step.profile.int4
    config = Int4Config(block_size=scheme.block_size, algorithm=scheme.algorithm,
                        accuracy_level=scheme.accuracy_level, embedding_block_size=scheme.embedding_block_size,
                        size_budget=scheme.size_budget)
    step.progress(f"[{name}] block-wise INT4 ({scheme.algorithm}, block {scheme.block_size}, "
                  f"size budget {scheme.size_budget}): measuring candidates")
    report = quantize_int4(step.fp32_path, step.work / f"{name}.onnx", config, step.reference.batches)
    path = step.work / f"{name}.onnx"
    metrics = compute_metrics(step.source, step.reference, _session(path).run)
    _checked(step, name, "int4", metrics)
    return _Built(path, metrics, report.get("kept_fp32", []), {"quantization": report})


def _tflite_fp32(step: _Step) -> Path:
    """The FP32 .tflite every TFLite artifact starts from, exported once per conversion."""
    path = step.work / "tflite-export.tflite"
    if not path.exists():
        buckets = sorted(set(step.profile.tflite.buckets) | {step.source.max_length})
        buckets = tuple(b for b in buckets if b <= step.source.max_length)
        step.progress(f"exporting TFLite with litert-torch (signatures for {buckets} tokens)")
        step.cache["tflite_export"] = export_tflite(step.source, path, TfliteExportConfig(buckets=buckets))
    return path


def _tflite_extra(step: _Step) -> dict[str, Any]:
    info = step.cache["tflite_export"]
    keep = ("config", "buckets", "signatures", "input_names", "input_dtype", "output_names", "op_counts",
            "ops_outside_xnnpack", "tool")
    return {"tflite": {k: info[k] for k in keep if k in info}}


def _build_tflite_fp32(step: _Step, name: str) -> _Built:
    path = _tflite_fp32(step)
    metrics = compute_metrics(step.source, step.reference, _open("tflite", path).run)
    _checked(step, name, "fp32", metrics)
    return _Built(path, metrics, extra=_tflite_extra(step))


def _build_tflite_quantized(step: _Step, name: str, precision: str, legacy: bool = False) -> _Built:
    options = step.profile.tflite
    recipe = (options.legacy_recipes if legacy else options.recipes).get(precision)
    if recipe is None:
        table = "legacy_recipes" if legacy else "recipes"
        raise ConversionError(f"profile {step.profile.id} lists TFLite {precision} but no [tflite] {table} entry for it")
    out = step.work / f"{name}.tflite"
    report = quantize_tflite(_tflite_fp32(step), out, recipe)
    metrics = compute_metrics(step.source, step.reference, _open("tflite", out).run)
    _checked(step, name, precision, metrics)
    return _Built(out, metrics, extra={**_tflite_extra(step), "quantization": {"recipe": recipe, **report}})


@dataclass(frozen=True)
class _Planned:
    """One artifact the profile asks for."""

    format: str
    precision: str
    variant: str = ""  # "legacy": for devices with tflite-runtime 2.14 (see the profile's notes)

    @property
    def name(self) -> str:
        return f"{self.format}-{self.precision}" + (f"-{self.variant}" if self.variant else "")


# (format, precision) -> builder. Registered once; an unknown pair is a clear error up front.
_BUILDERS: dict[tuple[str, str], Callable[[_Step, _Planned], _Built]] = {
    ("onnx", "fp32"): lambda step, p: _build_onnx_fp32(step, p.name),
    ("onnx", "int8"): lambda step, p: _build_onnx_int8(step, p.name),
    ("onnx", "int4"): lambda step, p: _build_onnx_int4(step, p.name),
    ("tflite", "fp32"): lambda step, p: _build_tflite_fp32(step, p.name),
    ("tflite", "int8"): lambda step, p: _build_tflite_quantized(step, p.name, "int8", p.variant == "legacy"),
    ("tflite", "int4"): lambda step, p: _build_tflite_quantized(step, p.name, "int4", p.variant == "legacy"),
}
# What each artifact needs on the device (the versions it was tested with). tflite-runtime
# 2.14 runs the FP32 export and weight-only INT8 correctly, but computes per-channel dynamic
# INT8 wrongly without raising (docs/notes/tflite-findings.md): those need ai-edge-litert.
_LEGACY_TFLITE = {"ai-edge-litert": "2.3", "tflite-runtime": "2.14"}
_MIN_RUNTIME = {
    ("onnx", "fp32", ""): {"onnxruntime": "1.17"},
    ("onnx", "int8", ""): {"onnxruntime": "1.17"},
    ("onnx", "int4", ""): {"onnxruntime": "1.32"},  # the version tested: UINT4 tensors, GatherBlockQuantized
    ("tflite", "fp32", ""): _LEGACY_TFLITE,
    ("tflite", "int8", ""): {"ai-edge-litert": "2.3"},
    ("tflite", "int4", ""): {"ai-edge-litert": "2.3"},
    ("tflite", "int8", "legacy"): _LEGACY_TFLITE,
}


def _plan(profile: TargetProfile) -> list[_Planned]:
    plan = [_Planned("onnx", p) for p in profile.precisions] if "onnx" in profile.formats else []
    if "tflite" in profile.formats:
        plan += [_Planned("tflite", p) for p in profile.tflite.precisions]
        plan += [_Planned("tflite", p, "legacy") for p in profile.tflite.legacy_recipes]
    return plan


def _package(fmt: str, built: _Built, stage: Path, name: str) -> list[dict[str, Any]]:
    if fmt == "onnx":
        return package.save_onnx(built.model_path, stage, name)
    target = stage / f"{name}.tflite"
    shutil.copyfile(built.model_path, target)
    return [package.file_entry(stage, target)]


def convert(config: ConvertConfig, progress: Progress = lambda message: None) -> ConvertResult:
    started = time.perf_counter()
    profile = load_profile(config.target)
    if config.calibration_method is not None:
        if profile.int8.mode != "static":
            raise ConversionError(
                f"--calibration-method applies to static INT8; profile {profile.id} quantizes "
                f"activations dynamically (int8.mode = {profile.int8.mode!r})"
            )
        profile = dataclasses.replace(
            profile, int8=dataclasses.replace(profile.int8, calibration_method=config.calibration_method)
        )
    floor = _floor(profile, config.accuracy_floor)
    unsupported = [p.name for p in _plan(profile) if (p.format, p.precision) not in _BUILDERS
                   or (p.format, p.precision, p.variant) not in _MIN_RUNTIME]
    if unsupported:
        raise ConversionError(
            f"profile {profile.id} asks for {unsupported}; this version builds "
            f"{', '.join(f'{f}-{p}' for f, p in _BUILDERS)}"
        )

    progress(f"target {profile.id}: {profile.name}")
    progress("loading the source model")
    source = load_source(config.model, config.task)
    texts: TextSet = load_texts(config.calibration)
    progress(f"source {source.name}: {source.model_type}, task {source.task}, "
             f"{source.num_parameters / 1e6:.1f}M parameters; {len(texts.texts)} validation texts")

    with package.staging_dir(config.out, config.force) as stage, tempfile.TemporaryDirectory(prefix="edge-convert-") as tmp:
        work = Path(tmp)
        progress("computing PyTorch FP32 reference outputs")
        reference: Reference = reference_outputs(source, texts.texts)

        progress(f"exporting ONNX (opset {profile.onnx.opset}, dynamic batch and sequence)")
        fp32_path = export_onnx(source, work / "export.onnx", ExportConfig(profile.onnx.opset))
        fused_ops: dict[str, int] = {}
        if profile.onnx.fusion:
            progress("fusing transformer subgraphs for onnxruntime")
            fused_ops = fuse_onnx(fp32_path, work / "fused.onnx", fusion_config(source))
            fp32_path = work / "fused.onnx"
            progress("fused: " + (", ".join(f"{k} x{v}" for k, v in fused_ops.items()) or "nothing"))

        golden_inputs = encode(source, [GOLDEN_TEXT])
        step = _Step(source, profile, reference, floor, work, fp32_path, progress)
        results, entries, refused = [], [], []
        for planned in _plan(profile):
            fmt, precision, name = planned.format, planned.precision, planned.name
            progress(f"[{name}] building")
            try:
                built = _BUILDERS[(fmt, precision)](step, planned)
            except AccuracyError as exc:
                # Never shipped silently: the artifact is left out, the reason is recorded and
                # printed, and the artifacts that do pass are still delivered.
                progress(f"[{name}] REFUSED: {exc}")
                refused.append({"name": name, "format": fmt, "precision": precision, "reason": str(exc)})
                continue
            progress(f"[{name}] " + ", ".join(f"{k} {v:.4f}" for k, v in built.metrics.items()))

            files = _package(fmt, built, stage, name)
            shipped = _open(fmt, stage / files[0]["path"])  # exactly what the device loads
            golden_outputs = shipped.run(golden_inputs)
            golden = package.write_golden(stage, name, golden_inputs, golden_outputs, GOLDEN_TOLERANCE[precision])
            latency = _latency_ms(shipped, source, config.latency_seq, config.latency_runs)
            size = sum(f["bytes"] for f in files)
            entries.append({
                "name": name,
                "format": fmt,
                "precision": precision,
                "files": files,
                "metrics": built.metrics,
                "accuracy_floor": dataclasses.asdict(floor.for_precision(precision)),
                "pruning": None,
                **({"fused_ops": fused_ops} if fmt == "onnx" else {}),
                **built.extra,
                "min_runtime": _MIN_RUNTIME[(fmt, precision, planned.variant)],
                "golden": golden,
                "measured_on_converter": {"latency_ms_p50": round(latency, 3), "batch": 1,
                                          "sequence": min(config.latency_seq, source.max_length), "threads": 2},
            })
            results.append(ArtifactResult(name, fmt, precision, size, built.metrics, latency, built.kept_fp32))
        if not entries:
            raise AccuracyError("no artifact met the accuracy floor:\n" + "\n".join(r["reason"] for r in refused))

        inputs, outputs = _io_signature(source)
        manifest = {
            "schema_version": MANIFEST_SCHEMA_VERSION,
            "created_by": _versions(),
            "target": {"id": profile.id, "name": profile.name, "profile": profile.to_dict()},
            "source": source.describe(),
            "task": source.task,
            "inputs": inputs,
            "outputs": outputs,
            "tokenizer": _tokenizer_files(source, stage),
            "postprocess": source.postprocess,
            "calibration": texts.describe(),
            "runtime": _runtime_settings(profile),
            "artifacts": entries,
            "refused": refused,
        }
        progress("writing manifest.json")
        package.write_manifest(stage, manifest)

    return ConvertResult(config.out.resolve(), profile.id, source.task, source.name, results,
                         time.perf_counter() - started, refused)
