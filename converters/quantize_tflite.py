"""Pass: quantize an FP32 .tflite (from export_tflite) with a named ai-edge-quantizer recipe.

Recipes are ai-edge-quantizer's own; names follow its convention (w = weights, a = activations,
i8/i4 = integer bits, b32 = 32-element blocks, fp32 = float). Every signature (one per sequence
bucket) is kept: the quantizer rewrites each subgraph and the shared weight buffers once.

Measured on all-MiniLM-L6-v2 (docs/notes/tflite-findings.md, sentence cosine vs PyTorch FP32):
- dynamic_wi8_afp32: 0.26x size, 0.41x FP32 latency, cosine 0.9967 mean / 0.9905 min.
- dynamic_wi4b32_afp32: 0.146x size, 0.47x latency, cosine 0.845 / 0.791: below any useful
  accuracy floor on that model; offered so the pipeline can measure and reject it per model.
- static_wi8_ai8: cosine 0.288 and not delegated to XNNPACK (1.0x latency): refused here.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import io
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from converters._errors import ConversionError

__all__ = ["RECIPES", "TfliteRecipe", "quantize_tflite"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TfliteRecipe:
    name: str  # the ai_edge_quantizer.recipe function of the same name
    precision: str  # manifest precision of the result
    needs_calibration: bool
    note: str


RECIPES = {
    r.name: r
    for r in (
        TfliteRecipe(
            "dynamic_wi8_afp32",
            "int8",
            False,
            "int8 per-channel weights, activations quantized per run (XNNPACK QD8 kernels)",
        ),
        TfliteRecipe(
            "dynamic_wi4b32_afp32",
            "int4",
            False,
            "int4 weights in 32-element blocks, activations quantized per run; accuracy is "
            "model-dependent (MiniLM cosine 0.85): validate before shipping",
        ),
        TfliteRecipe(
            "weight_only_wi8_afp32",
            "int8",
            False,
            "int8 weights dequantized to FP32 at load: 4x smaller file, FP32 speed and accuracy",
        ),
    )
}

# Recipes ai-edge-quantizer offers that we refuse, with the measured reason.
_REFUSED = {
    "static_wi8_ai8": (
        "static int8 activations give wrong numbers on BERT-style encoders with ai-edge-quantizer "
        "0.10 / ai-edge-litert 2.3 (MiniLM sentence cosine 0.288 vs PyTorch: the per-tensor int8 "
        "ranges of LayerNorm/softmax inputs lose the signal) and the quantized graph is not "
        "delegated to XNNPACK (no speed-up). See docs/notes/tflite-findings.md."
    ),
    "static_wi8_ai16": (
        "int16 activations are accurate (MiniLM cosine 0.990) but run on reference kernels, "
        "16x slower than FP32 with XNNPACK."
    ),
}


def _calibration_feeds(
    path: Path, calibration: list[dict[str, np.ndarray]]
) -> dict[str, list[dict[str, np.ndarray]]]:
    """Per signature, each calibration row cut/padded to the signature's length (pad 0, mask 0)."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    feeds: dict[str, list[dict[str, np.ndarray]]] = {}
    for key, spec in interpreter.get_signature_list().items():
        details = interpreter.get_signature_runner(key).get_input_details()
        length = int(details[spec["inputs"][0]]["shape"][1])
        rows = []
        for sample in calibration:
            missing = set(spec["inputs"]) - set(sample)
            if missing:
                raise ConversionError(
                    f"calibration sample lacks inputs {sorted(missing)}; "
                    f"the model takes {spec['inputs']}"
                )
            batch = np.atleast_2d(np.asarray(sample[spec["inputs"][0]])).shape[0]
            for row in range(batch):
                feed = {}
                for name in spec["inputs"]:
                    value = np.atleast_2d(np.asarray(sample[name]))[row, :length]
                    padded = np.zeros((1, length), details[name]["dtype"])
                    padded[0, : value.shape[0]] = value
                    feed[name] = padded
                rows.append(feed)
        feeds[key] = rows
    return feeds


def _outputs_close(float_path: Path, quant_path: Path) -> dict[str, float]:
    """Cosine of each signature's output, quantized vs float, on a fixed synthetic input.

    Not an accuracy metric (the pipeline validates on real text): a cheap postcondition that
    catches a broken rewrite (NaN, zeros, a signature wired to the wrong subgraph)."""
    from ai_edge_litert.interpreter import Interpreter

    ref_it = Interpreter(model_path=str(float_path), num_threads=1)
    q_it = Interpreter(model_path=str(quant_path), num_threads=1)
    cosines = {}
    rng = np.random.default_rng(0)
    for key, spec in ref_it.get_signature_list().items():
        ref_runner = ref_it.get_signature_runner(key)
        details = ref_runner.get_input_details()
        length = int(details[spec["inputs"][0]]["shape"][1])
        used = max(1, length // 2)
        feed = {}
        for name in spec["inputs"]:
            value = np.zeros((1, length), np.int32)
            if name == "attention_mask":
                value[0, :used] = 1
            elif name == "input_ids":
                value[0, :used] = rng.integers(5, 100, used)
            feed[name] = value
        want = ref_runner(**feed)
        got = q_it.get_signature_runner(key)(**feed)
        a = np.concatenate([v.ravel() for v in want.values()]).astype(np.float64)
        b = np.concatenate([got[k].ravel() for k in want]).astype(np.float64)
        cosines[key] = float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-30))
    return cosines


def quantize_tflite(
    in_path: Path,
    out_path: Path,
    recipe: str,
    calibration: list[dict[str, np.ndarray]] | None = None,
) -> dict[str, Any]:
    """Quantize the FP32 .tflite at `in_path` with `recipe` into `out_path`.

    Precondition: `in_path` is a float model with named signatures (export_tflite's output).
    Postcondition (checked on the written file): the same signatures with the same inputs and
    outputs, and outputs that are finite and point the same way as the float model's.
    `calibration` (named [batch, seq] arrays) is used only by recipes that need it.
    """
    if recipe in _REFUSED:
        raise ConversionError(
            f"TFLite recipe {recipe!r} is not supported: {_REFUSED[recipe]} "
            f"Supported: {', '.join(RECIPES)}"
        )
    if recipe not in RECIPES:
        raise ConversionError(f"unknown TFLite recipe {recipe!r}; supported: {', '.join(RECIPES)}")
    spec = RECIPES[recipe]
    in_path, out_path = Path(in_path), Path(out_path)

    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_quantizer import quantizer
    from ai_edge_quantizer import recipe as recipes

    before = Interpreter(model_path=str(in_path)).get_signature_list()
    started = time.perf_counter()
    qt = quantizer.Quantizer(str(in_path), getattr(recipes, recipe)())
    calibrated = None
    if qt.need_calibration:
        if not calibration:
            raise ConversionError(
                f"TFLite recipe {recipe!r} needs calibration samples; none were given"
            )
        calibrated = qt.calibrate(_calibration_feeds(in_path, calibration), num_threads=1)
    try:
        # All-zero weight blocks (e.g. the padding row of an embedding table) get scale 0 and
        # numpy warns on 0/0; those blocks dequantize to 0 whatever the cast gave.
        with (
            contextlib.redirect_stdout(io.StringIO()),
            np.errstate(invalid="ignore", divide="ignore"),
        ):
            result = qt.quantize(
                calibrated, enable_progress_bar=False, enable_progress_report=False
            )
        result.export_model(str(out_path), overwrite=True)
    except (RuntimeError, ValueError, KeyError) as exc:
        raise ConversionError(
            f"ai-edge-quantizer could not apply {recipe!r} to {in_path.name}: {exc}"
        ) from exc
    seconds = time.perf_counter() - started

    after = Interpreter(model_path=str(out_path)).get_signature_list()
    if after != before:
        raise ConversionError(
            f"quantizing {in_path.name} with {recipe!r} changed its signatures: {before} -> {after}"
        )
    cosines = _outputs_close(in_path, out_path)
    broken = {k: c for k, c in cosines.items() if not np.isfinite(c) or c < 0.5}
    if broken:
        raise ConversionError(
            f"{recipe!r} broke {in_path.name}: output cosine vs the float model "
            + ", ".join(f"{k} {c:.3f}" for k, c in broken.items())
        )

    from converters.export_tflite import op_counts

    return {
        "path": str(out_path),
        "recipe": recipe,
        "precision": spec.precision,
        "note": spec.note,
        "bytes": out_path.stat().st_size,
        "size_ratio": out_path.stat().st_size / in_path.stat().st_size,
        "signatures": sorted(after),
        "cosine_vs_float_synthetic": cosines,
        "op_counts": op_counts(out_path),
        "seconds": round(seconds, 2),
        "tool": {"ai_edge_quantizer": importlib.metadata.version("ai-edge-quantizer")},
    }
