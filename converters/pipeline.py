"""edge-convert's pipeline: one ordered list of steps, readable top to bottom.

    load source -> split texts (fit / validation) -> reference outputs -> export ONNX -> fuse ->
    per planned artifact: build
    (quantize, validate, fall back or refuse; converters/_artifacts.py) -> package -> score the
    packaged files through edge_runtime (the metrics recorded) -> golden samples (converters/
    golden.py) -> manifest -> rename into place
"""

from __future__ import annotations

import contextlib
import dataclasses
import platform
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from converters._artifacts import BUILDERS, MIN_RUNTIME, Built, Step
from converters._errors import AccuracyError, ConversionError, ConversionInterrupted
from converters._shared import SharedInputs, artifact_key
from converters.core.arithmetic import ValidationSessions
from converters.core.validate import (
    METRIC_BATCHES,
    compute_metrics,
    floor_failures,
    metric_batches,
    rows_alone,
    sequence_outputs,
)
from converters.inputs import preflight
from converters.inputs.plan import Planned, plan, pruned_plan
from converters.inputs.source import SourceModel
from converters.options import ConvertConfig, prepare
from converters.packaging import golden as golden_samples
from converters.packaging import package, signing
from converters.packaging.input_stats import input_stats
from converters.packaging.timing import time_delivered, timing_feeds
from converters.pruning.prune_model import check_request_fits
from converters.pruning.twins import not_built, pruned_step, twin_reason
from edge_runtime._bench_config import DEFAULT_SHAPE
from edge_runtime._compat import arithmetic_problem
from edge_runtime._contention import worst_share
from edge_runtime._device import detect
from edge_runtime._manifest import MANIFEST_SCHEMA_VERSION, verify_files
from edge_runtime._model import Model, open_artifact
from edge_runtime._sigterm import interrupt_handled
from targets import AccuracyFloor, TargetProfile

__all__ = ["METRICS_TEXTS", "ArtifactResult", "ConvertConfig", "ConvertResult", "TargetFailure", "convert",
           "convert_targets"]

# Which texts every recorded metric comes from (manifest "metrics_texts", the CLI's table).
METRICS_TEXTS = "validation (unseen by fitting)"

Progress = Callable[[str], None]
# The packaged files must score what the work-directory model scored: the packaging step
# rewrites the .onnx (external data, alignment) but must not change a number. A difference
# larger than this is a bug, reported rather than hidden (issue 10, "Measure what ships").
PACKAGED_METRICS_TOLERANCE = 1e-6


@dataclass
class ArtifactResult:
    name: str
    format: str
    precision: str
    bytes: int
    metrics: dict[str, float]
    latency_ms_p50: float
    promoted: list[str] = field(default_factory=list)  # moved to a wider form by a search
    promoted_to: str = ""
    # p50 over the p50 of the unpruned FP32 artifact of its format (fp32_baseline), round by round
    # (converters/packaging/timing.py)
    vs_fp32: float | None = None
    fp32_baseline: str | None = None


@dataclass
class ConvertResult:
    out: Path
    target: str
    task: str
    source: str
    artifacts: list[ArtifactResult]
    seconds: float
    refused: list[dict[str, str]] = field(default_factory=list)
    # The largest share of an artifact's latency runs with a task queued for a CPU (edge_runtime's
    # CpuWait); None where the kernel does not say. Above BUSY_SHARE the p50s are flagged.
    timing_cpu_wait: float | None = None
    timing_sequence: int | None = None  # tokens of the timed runs: the model's max_length if shorter

    def to_dict(self) -> dict[str, Any]:
        return {
            "out": str(self.out),
            "target": self.target,
            "task": self.task,
            "source": self.source,
            "seconds": round(self.seconds, 2),
            "metrics_texts": METRICS_TEXTS,
            "artifacts": [a.__dict__ for a in self.artifacts],
            "refused": self.refused,
            "timing_cpu_wait": self.timing_cpu_wait,
            "timing_sequence": self.timing_sequence,
        }


def _io_signature(source: SourceModel) -> tuple[list, list]:
    inputs = [{"name": n, "dtype": "int64", "shape": ["batch", "sequence"], **source.input_limits.get(n, {})}
              for n in source.input_names]
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


def _requirements(fmt: str, precision: str, profile: TargetProfile) -> dict[str, Any]:
    """What a device's arithmetic must be for the artifact to compute its recorded numbers.
    ONNX INT8/INT4 weights for an int32 target may overflow the int16 pair sums of x86 CPUs
    without VNNI; pair-limited ones (s16-pairs targets) are exact on both kinds."""
    if fmt != "onnx" or precision not in ("int8", "int4"):
        return {}
    kinds = ["int32"] if profile.int8.arithmetic == "int32" else ["int32", "s16-pairs"]
    if precision == "int4" and profile.int4.kernel != "int8-gemm":
        return {}
    return {"requires": {"int8_gemm": kinds}}


def _package(fmt: str, built: Built, stage: Path, name: str) -> list[dict[str, Any]]:
    if fmt == "onnx":
        return package.save_onnx(built.model_path, stage, name)
    target = stage / f"{name}.tflite"
    shutil.copyfile(built.model_path, target)
    return [package.file_entry(stage, target)]


def _shipped_model(step: Step, stage: Path, manifest: dict[str, Any], entry: dict[str, Any]) -> Model:
    """The packaged artifact as edge_runtime opens it (load(..., verify=False, device_cache=False,
    tune=False)), after checking its files are the bytes the manifest records. An ONNX INT8/INT4
    artifact for arithmetic this machine lacks (int32 targets on an AVX2 CPU) is run as the
    exact-int32 rewrite of the packaged file (converters/core/arithmetic.py), like its candidates
    were scored; with --arithmetic host, on this machine's kernels as scored."""
    verify_files(stage, entry["files"])
    path = stage / entry["files"][0]["path"]
    if entry["format"] == "onnx" and step.sessions is not None and (
        step.sessions.validation.exact_reference or arithmetic_problem(entry, manifest, detect())
    ):
        return open_artifact(stage, manifest, entry, threads=DEFAULT_SHAPE.threads, session=step.session(path))
    return open_artifact(stage, manifest, entry, threads=DEFAULT_SHAPE.threads)


def _same_metrics(name: str, work: dict[str, float], packaged: dict[str, float]) -> None:
    """The packaged files' metrics equal the work-directory model's (PACKAGED_METRICS_TOLERANCE)."""
    differ = [f"{k}: work directory {work[k]:.8f}, packaged {packaged.get(k, float('nan')):.8f}"
              for k in work if not abs(work[k] - packaged.get(k, float("nan"))) <= PACKAGED_METRICS_TOLERANCE]
    if differ:
        raise ConversionError(
            f"{name}: the packaged files score differently from the model they were packaged from "
            f"(beyond {PACKAGED_METRICS_TOLERANCE}): " + "; ".join(differ)
            + ". Packaging changed the model: this is a bug in edge-convert, please report it"
        )


def _refusal(planned: Planned, reason: str, inputs: SharedInputs) -> dict[str, Any]:
    """A refused artifact's manifest record; a pruned twin's keeps the pruning record (plan,
    FLOPs, generalization, distillation), as pruning/twins.py's refusals before the build do: the
    minutes of pruning are what the user picks smaller shares from (a review found them lost when
    the twin was refused at its floor)."""
    record = {"name": planned.name, "format": planned.format, "precision": planned.precision, "reason": reason}
    if planned.pruned and inputs.pruning is not None:
        record["pruning"] = inputs.pruning
    return record


def convert(config: ConvertConfig, progress: Progress = lambda message: None,
            shared: SharedInputs | None = None, prepared: tuple | None = None) -> ConvertResult:
    """Convert `config.model` for `config.target` into `config.out`. `shared`: what the targets
    of one run share (convert_targets passes it; None: this conversion loads its own).
    `prepared`: prepare(config)'s result when the caller has already checked the options."""
    started = time.perf_counter()
    profile, sign_key, floor, prune_request, validation = prepared or prepare(config)

    progress(f"target {profile.id}: {profile.name}")
    with contextlib.ExitStack() as stack:
        if shared is None:
            # The work directory is locked while in use; a re-run removes what a killed run left
            # (converters/packaging/package.py).
            shared = SharedInputs.load(config, stack.enter_context(package.work_dir()), progress, [profile])
            stack.callback(shared.close)  # before the work directory goes
        else:
            shared.check(config)
        source = shared.source
        # A request that can remove nothing from this model: refused before any artifact.
        check_request_fits(prune_request, source, profile.pruning)
        # Before any work for this target: room for its artifacts and the work directory.
        disk = preflight.check_disk_space(profile, source, config.out, pruned=prune_request is not None)
        progress(f"disk space: {disk.describe()}: enough free")
        stage = stack.enter_context(package.staging_dir(config.out, config.force, config.inputs()))
        work = shared.work / profile.id
        work.mkdir(parents=True, exist_ok=True)
        shared.start_tflite_exports([profile], progress)
        reference, fit = shared.references(progress)
        fp32_path, fused_ops = shared.onnx_export(profile, progress)
        samples = shared.samples(progress)
        texts = shared.texts
        inputs, outputs = _io_signature(source)
        # What edge_runtime needs to open an artifact of this directory before manifest.json
        # exists (the packaged files are scored before it is written).
        device_manifest = {"schema_version": MANIFEST_SCHEMA_VERSION, "task": source.task,
                           "target": {"id": profile.id, "name": profile.name, "profile": profile.to_dict()},
                           "inputs": inputs, "outputs": outputs, "postprocess": source.postprocess,
                           "runtime": _runtime_settings(profile)}
        progress(f"INT8 arithmetic: target {validation.target}, this machine {validation.host}: "
                 + (f"candidates run with exact int32 GEMMs ({validation.exact_gemm})" if validation.exact_reference
                    else "this machine's kernels")
                 + f" ({validation.reason})")
        step = Step(source, profile, reference, floor, work, fp32_path, progress, fit, cache=shared.cache,
                    sessions=ValidationSessions(validation, work), exports=shared.work)
        results, entries, refused = [], [], []

        def deliver(planned: Planned, step: Step, inputs: SharedInputs, floor: AccuracyFloor,
                    fused_ops: dict[str, int]) -> None:
            """Build one planned artifact, package it, score the packaged files, record it."""
            fmt, precision, name = planned.format, planned.precision, planned.name
            progress(f"[{name}] building")
            try:
                key = artifact_key(profile, planned, dataclasses.asdict(floor.for_precision(precision)),
                                   validation.describe())
                built = inputs.build(step, planned, key, BUILDERS[(fmt, precision)])
            except AccuracyError as exc:
                # Never shipped silently: the artifact is left out, the reason is recorded and
                # printed, and the artifacts that do pass are still delivered. A twin's advice
                # names the pruning floor and shares, which are what it is judged by.
                reason = twin_reason(str(exc)) if planned.pruned else str(exc)
                progress(f"[{name}] REFUSED: {reason}")
                refused.append(_refusal(planned, reason, inputs))
                return
            progress(f"[{name}] " + ", ".join(f"{k} {v:.4f}" for k, v in built.metrics.items()))

            files = _package(fmt, built, stage, name)
            entry = {"name": name, "format": fmt, "precision": precision, "files": files,
                     **_requirements(fmt, precision, profile)}
            # Measure what ships: the packaged bytes, through edge_runtime, with the target's
            # arithmetic; these metrics and golden outputs are the ones recorded.
            scoring = time.perf_counter()
            model = _shipped_model(step, stage, {**device_manifest, "artifacts": [entry]}, entry)
            metrics = compute_metrics(source, metric_batches(reference, fmt), model.run, name)
            _same_metrics(name, built.metrics, metrics)
            # Dynamic ONNX INT8/INT4 takes one activation scale per batch: the metrics above are
            # those of padded batches of 16, `embed` runs such artifacts a text at a time by
            # default, which scores differently (benchmarks/RESULTS.md run U): record both.
            alone = (compute_metrics(source, reference, rows_alone(model.run, sequence_outputs(source)), name)
                     if fmt == "onnx" and model.batch_dependent else None)
            # The floor holds whichever way the artifact is run: searches decide on the batched
            # figures, which are lower in nearly every case measured, but not in all of them.
            alone_failures = floor_failures(alone, floor.for_precision(precision)) if alone is not None else []
            if alone_failures:
                for entry_file in files:
                    (stage / entry_file["path"]).unlink(missing_ok=True)
                reason = ("meets the accuracy floor in padded batches of 16 but not run a text at a time, as "
                          "Model.embed/classify run it: " + "; ".join(alone_failures))
                reason = twin_reason(reason) if planned.pruned else reason
                progress(f"[{name}] REFUSED: {reason}")
                refused.append(_refusal(planned, reason, inputs))
                return
            golden = golden_samples.write_golden(stage, name, samples, model.run, fmt, precision)
            progress(f"[{name}] packaged files scored through edge_runtime (metrics as built) and "
                     f"{len(samples)} golden samples recorded in {time.perf_counter() - scoring:.1f} s")
            size = sum(f["bytes"] for f in files)
            entries.append({
                "name": name,
                "format": fmt,
                "precision": precision,
                "files": files,
                "metrics": metrics,
                "metrics_texts": METRICS_TEXTS,
                "metrics_from": "packaged files, run through edge_runtime",
                "metrics_batches": METRIC_BATCHES[fmt],
                **({"metrics_each_text_alone": alone} if alone is not None else {}),
                "accuracy_floor": dataclasses.asdict(floor.for_precision(precision)),
                "pruning": inputs.pruning,
                **({"fused_ops": fused_ops} if fmt == "onnx" else {}),
                **built.extra,
                "min_runtime": MIN_RUNTIME[(fmt, precision, planned.variant)],
                **_requirements(fmt, precision, profile),
                "golden": golden,
            })
            results.append(ArtifactResult(name, fmt, precision, size, metrics, float("nan"), built.promoted,
                                          built.promoted_to))

        for planned in plan(profile):
            deliver(planned, step, shared, floor, fused_ops)
        interrupted = False
        if prune_request is not None:
            try:
                pruned = pruned_step(shared, step, profile, prune_request, refused, config.distill_steps)
                for planned in pruned_plan(profile) if pruned is not None else ():
                    deliver(planned, pruned[0], pruned[1], profile.pruning.floor, pruned[2])
            except KeyboardInterrupt:
                # Pruning and distillation take minutes: Ctrl-C there keeps the unpruned artifacts
                # already built (a second Ctrl-C while they are packaged drops everything).
                if not entries:
                    raise
                interrupt_handled()
                interrupted = True
                not_built(profile, stage, entries, refused, progress)
        if not entries:
            raise AccuracyError("no artifact met the accuracy floor:\n" + "\n".join(r["reason"] for r in refused))
        # Latency is this machine's (informational): its own kernels on the packaged files, all
        # artifacts timed together in interleaved rounds (converters/packaging/timing.py).
        seq = min(config.latency_seq, source.max_length)
        timings = time_delivered(stage, entries, timing_feeds(source.input_names, source.tokenizer.vocab_size, seq),
                                 config.latency_runs, config.latency_rounds, progress)
        for entry, result in zip(entries, results):
            timing = timings[entry["name"]]
            result.latency_ms_p50, result.vs_fp32 = timing.p50_ms, timing.vs_baseline
            result.fp32_baseline = timing.baseline
            entry["measured_on_converter"] = timing.record(seq)

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
            # what the validation inputs looked like: edge-serve's drift reference
            "input_stats": input_stats(source, reference),
            "arithmetic": validation.describe(),
            "runtime": _runtime_settings(profile),
            "artifacts": entries,
            "refused": refused,
        }
        progress("writing manifest.json")
        package.write_manifest(stage, manifest)
        if sign_key is not None:
            # Last, over every file including manifest.json, before the rename into place: a
            # directory that looks complete is always signed.
            progress(f"signing the directory (model.sig, key {config.sign_key})")
            signing.sign_directory(stage, sign_key, model_name=config.out.resolve().name)

    result = ConvertResult(config.out.resolve(), profile.id, source.task, source.name, results,
                           time.perf_counter() - started, refused,
                           worst_share(t.cpu_wait_share for t in timings.values()), seq)
    if interrupted:
        raise ConversionInterrupted(result)
    return result


@dataclass
class TargetFailure:
    """A target of convert_targets that could not be converted (the others still were)."""

    target: str
    out: Path
    error: ConversionError


def convert_targets(config: ConvertConfig, targets: list[str],
                    progress: Progress = lambda message: None) -> list[ConvertResult | TargetFailure]:
    """Convert for each of `targets` in one run, into `config.out / <target>`, sharing what their
    conversions have in common (converters/_shared.py: the source, the texts and their PyTorch
    outputs, the exports, and every artifact whose build reads the same recipe, floor and
    arithmetic). A target whose conversion fails does not stop the others: its TargetFailure
    stands in its place."""
    if not targets:
        raise ConversionError("targets: name at least one target profile")
    if package.is_output(config.out):  # DIR/<target> inside it would break its hashes and signature
        raise ConversionError(f"{config.out} is the output of a single-target conversion; a run of several "
                              "targets writes one directory per target inside it: choose another output path, "
                              "or remove it first")
    results: list[ConvertResult | TargetFailure] = []
    prepared = {}
    for target in targets:  # before the shared stages: a bad option or output path fails at once
        try:
            prepared[target] = prepare(dataclasses.replace(config, target=target, out=config.out / target))
        except ConversionError as exc:
            raise ConversionError(f"{exc} (target {target}; nothing was converted)") from None
    with package.work_dir() as work:
        shared = SharedInputs.load(config, work, progress, [prepared[target][0] for target in targets])
        try:
            # Every target's TFLite export from the start: it runs beside the first targets' ONNX stages.
            shared.start_tflite_exports([prepared[target][0] for target in targets], progress)
            for target in targets:
                out = config.out / target
                try:
                    results.append(convert(dataclasses.replace(config, target=target, out=out),
                                           lambda message, t=target: progress(f"{t}: {message}"), shared,
                                           prepared[target]))
                except ConversionError as exc:
                    progress(f"{target}: FAILED: {exc}")
                    results.append(TargetFailure(target, out, exc))
        finally:
            shared.close()
    return results
