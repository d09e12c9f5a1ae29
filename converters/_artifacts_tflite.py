"""The TFLite builders (tflite-fp32, tflite-int8, tflite-int4, and the legacy variant): the
litert-torch export with sequence buckets, shared by the targets of a run, then an
ai-edge-quantizer recipe (converters/tflite/). Registered in converters/_artifacts.BUILDERS."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from converters._errors import AccuracyError, ConversionError
from converters._step import PLAIN_ONNX_EXPORT, Built, Step, checked, open_session
from converters.inputs.plan import plan
from converters.core.search import RANKING_TEXTS, LaneScorer, ranking_lanes
from converters.core.validate import (
    Reference,
    compute_metrics,
    metric_batches,
    rows_alone,
    sequence_outputs,
)
from converters.tflite import (
    GPTQ_RECIPE,
    RECIPES,
    GptqInt4Config,
    TfliteExportConfig,
    export_tflite,
    quantize_tflite,
)
from converters.tflite.background import background_key, tflite_export_key, tflite_export_path
from converters.tflite.config import gptq_policy
from converters.tflite.gptq_int4 import BUDGET_PARAMETER
from converters.tflite.hessians import HessianCache, hessian_rows
from edge_runtime._bench_config import DEFAULT_SHAPE

__all__ = ["build_tflite_fp32", "build_tflite_quantized"]


def _tflite_fp32(step: Step) -> Path:
    """The FP32 .tflite every TFLite artifact starts from, exported once per bucket set (shared
    by the targets of one run through step.cache): the background export's file when one was
    started (SharedInputs.start_tflite_exports), else exported here."""
    key = tflite_export_key(step.profile, step.source)
    if key not in step.cache:
        path = tflite_export_path(step.exports or step.work, key)
        info = None
        background = step.cache.pop(background_key(key), None)
        if background is not None:
            waiting = time.perf_counter()
            step.progress(f"waiting for the TFLite export (started {background.seconds():.0f} s ago in a "
                          "second process)")
            if background.running():
                _statistics_while_waiting(step, max(key[1]))
            info, why = background.result(step.counted("TFLite export in the second process (litert-torch), stage"))
            if info is None:
                step.progress(f"the TFLite export process failed ({why}): exporting here instead")
            else:
                step.progress(f"TFLite export done in the second process ({background.seconds():.0f} s after its "
                              f"start; waited {time.perf_counter() - waiting:.1f} s for it)")
        if info is None:
            step.progress(f"exporting TFLite with litert-torch (signatures for {key[1]} tokens)")
            info = export_tflite(step.source, path, TfliteExportConfig(buckets=key[1]),
                                 step.counted("TFLite export (litert-torch), stage"))
        step.cache[key] = (path, info)
    return step.cache[key][0]


def _hessians(step: Step) -> HessianCache:
    """GPTQ statistics of the export: collected once, shared by both recipes and all targets;
    read from the plain ONNX export when this run made one (faster than the interpreter)."""
    return step.cache.setdefault("tflite-hessians", HessianCache(twin=step.cache.get(PLAIN_ONNX_EXPORT)))


def _int4_config(step: Step) -> GptqInt4Config:
    return GptqInt4Config(size_budget=step.profile.tflite.int4_size_budget)


def _statistics_while_waiting(step: Step, longest: int) -> None:
    """While the conversion waits for the background export (single-threaded, one core), the
    input statistics its GPTQ recipes will read are computed from the plain ONNX export on the
    other core: the same numbers as computed later (HessianCache.prefetch). MiniLM, masked rpi4 on
    2 cores: the export wait and the TFLite INT8 artifact took 7 s less (benchmarks/RESULTS.md run
    BC). Where the export is nearly done when the wait begins, this costs a few seconds instead
    (one core for the statistics, where two would have computed them after the export)."""
    hessians = _hessians(step)
    options = step.profile.tflite
    policies = {}
    for planned in plan(step.profile):
        recipes = options.legacy_recipes if planned.variant == "legacy" else options.recipes
        policy = (gptq_policy(recipes.get(planned.precision, ""), _int4_config(step))
                  if planned.format == "tflite" and not planned.pruned else None)
        if policy is not None:
            policies.setdefault((policy.prefix_tokens, policy.weighting), policy)
    from threadpoolctl import threadpool_limits

    for policy in policies.values():
        _, rows = hessian_rows(step.fit.batches, longest, policy)
        # One core: the export's process (nice 19) has the other. numpy's BLAS held to one
        # thread too: its products ran on both cores, and its idle threads spin, so the export
        # got half a core and waiting for it took as long as the statistics saved (RESULTS.md run BC).
        with threadpool_limits(limits=1, user_api="blas"):
            hessians.prefetch(rows, policy.weighting, step.counted("meanwhile, GPTQ input statistics from the "
                                                                   "ONNX export, batch"), threads=1)


def _tflite_extra(step: Step) -> dict[str, Any]:
    info = step.cache[tflite_export_key(step.profile, step.source)][1]
    keep = ("config", "buckets", "signatures", "input_names", "input_dtype", "output_names", "op_counts",
            "ops_outside_xnnpack", "tool")
    return {"tflite": {k: info[k] for k in keep if k in info}}


def build_tflite_fp32(step: Step, name: str) -> Built:
    path = _tflite_fp32(step)
    metrics = compute_metrics(step.source, metric_batches(step.reference, "tflite"), open_session("tflite", path).run,
                              name)
    checked(step, name, "fp32", metrics)
    return Built(path, metrics, extra=_tflite_extra(step))


def _tflite_scorer(step: Step, texts: Reference, label: str) -> LaneScorer:
    """The searches' scorer of .tflite candidates: each text run alone at its own length, as
    Model.embed runs it (rows_alone: the same numbers, 0.55x the tokens on the ranking subset).
    An artifact's recorded metrics still run padded batches (validate.metric_batches), so non-finite
    values in padding are caught there. Rankings may score candidates in lanes (core/search.py)."""

    def through(run) -> dict[str, float]:
        return compute_metrics(step.source, texts, rows_alone(run, sequence_outputs(step.source)), label)

    def score(path: Path, threads: int | None) -> dict[str, float]:
        return through(open_session("tflite", path, threads or DEFAULT_SHAPE.threads).run)

    return LaneScorer(score, ranking_lanes(), through=through)


def build_tflite_quantized(step: Step, name: str, precision: str, legacy: bool = False) -> Built:
    options = step.profile.tflite
    recipe = (options.legacy_recipes if legacy else options.recipes).get(precision)
    if recipe is None:
        table = "legacy_recipes" if legacy else "recipes"
        raise ConversionError(f"profile {step.profile.id} lists TFLite {precision} but no [tflite] {table} entry for it")
    out = step.work / f"{name}.tflite"
    spec = RECIPES.get(recipe)
    floor = step.floor.for_precision(precision)
    try:
        report = _quantize(step, name, recipe, spec, out, floor)
    except AccuracyError as exc:  # the library names its parameter; here the budget is the profile's
        where = f"int4_size_budget in targets/{step.profile.id}.toml [tflite]; no option changes it"
        raise AccuracyError(str(exc).replace(BUDGET_PARAMETER, where)) from exc
    metrics = compute_metrics(step.source, metric_batches(step.reference, "tflite"), open_session("tflite", out).run,
                              name)
    checked(step, name, precision, metrics)
    promoted = report.get("promoted", {})
    return Built(out, metrics, promoted.get("weights", []), promoted.get("to", ""),
                 extra={**_tflite_extra(step), "quantization": {"recipe": recipe, **report}})


def _quantize(step: Step, name: str, recipe: str, spec: Any, out: Path, floor: Any) -> dict[str, Any]:
    return quantize_tflite(
        _tflite_fp32(step), out, recipe,
        # Calibrated recipes fit on the fit texts and judge their searches on the validation
        # texts (the same split the ONNX INT8/INT4 use).
        calibration=step.fit.batches if spec and spec.needs_calibration else None,
        validation=step.reference.batches if spec and spec.needs_calibration else None,
        int4=_int4_config(step) if recipe == GPTQ_RECIPE else None,
        floor=floor if spec and spec.ours else None,  # read as the final validation reads it
        progress=lambda message: step.progress(f"[{name}] {message}"),
        # The one evaluator of every search: agreement with PyTorch through edge_runtime.
        rank=_tflite_scorer(step, step.fit.spread(RANKING_TEXTS), f"{name} ranking probe"),
        # Re-batched by length: edge_runtime pads a batch to the bucket of its longest text.
        judge=_tflite_scorer(step, step.reference.spread(None), f"{name} candidate"),
        hessians=_hessians(step),
    )
