"""Will an artifact fit this device's memory? An estimate of what it keeps resident once loaded.

`edge_runtime.load()` ranks last the artifacts whose estimate does not fit the memory available
now with headroom (it still tries them: an estimate is not a measurement, and a tight fit is better
than no model). The estimate is the artifact's file bytes times a factor per format and precision,
plus a fixed overhead, from RSS measured with the device package (tools/measure_load_rss.py).
"""

from __future__ import annotations

from typing import Any

__all__ = ["estimate_mb", "fit", "headroom_mb"]

# RSS growth from before `load()` to after its first batch-1 run at the converter's typical length
# (128 tokens), in a fresh process that has already imported numpy, edge_runtime and the backend:
# `python tools/measure_load_rss.py DIR`, two runs each on MiniLM x86-avx2 artifacts
# (onnxruntime 1.32, 2-core AMD EPYC with AVX2 and no VNNI; the second run with the device
# caches the first one built):
#   artifact    files MB   RSS +MB      (RSS - 16) / files MB
#   onnx-fp32     86.2     63.8 / 70.0     0.55 / 0.63
#   onnx-int8     22.1     37.5 / 35.0     0.97 / 0.86
#   onnx-int4     13.6     42.7 / 32.9     1.96 / 1.24
# The fixed part: a tiny model (0.2 MB of files) grew 13.9 / 14.7 MB. FP32 stays below its file
# size because the 47 MB word-embedding table is gathered (only the rows used become resident);
# INT8 weights are packed by onnxruntime next to the mapped file; INT4 is expanded to int8 at
# load. The factors are those ratios rounded up with a ~50% margin (a model without a large
# embedding table touches all of its weights; batches larger than 1 need more activations).
# TFLite, MiniLM rpi4 artifacts, the same tool (ai-edge-litert 2.3, 2-core AMD EPYC Zen 4; first
# run / second run with the device caches): fp32 83.9 / 77.2 MB for 87.1 MB of files, int8 52.1 /
# 46.4 for 23.8, int4 44.7 / 39.1 for 13.8: within file x 2 (XNNPACK packs every weight into its
# own buffer unless its weight cache maps them) and x 3. A weight-only recipe's file
# (tflite-int8-legacy, weight_only_wi8_afp32) is dequantized to float at load, once per signature:
# 404.9 / 357.9 MB for 23.9 MB with 4 signatures, (RSS - 16) / files = 4.1 per signature
# (_DEQUANTIZED_PER_SIGNATURE; a review found it estimated at 64 MB and ranked as fitting).
_FACTOR = {
    ("onnx", "fp32"): 1.0,
    ("onnx", "fp16"): 2.0,  # not measured: expanded to fp32 on CPUs without FP16 arithmetic
    ("onnx", "int8"): 1.5,
    ("onnx", "int4"): 3.0,
    ("tflite", "fp32"): 2.0,
    ("tflite", "fp16"): 3.0,
    ("tflite", "int8"): 2.0,
    ("tflite", "int4"): 3.0,
}
_DEFAULT_FACTOR = 3.0  # a format or precision not measured: err on the large side
_DEQUANTIZED_PER_SIGNATURE = 4.5  # measured 4.1, with a margin
_OVERHEAD_MB = 16.0  # measured on the tiny model: session, arena and activations at batch 1


def estimate_mb(entry: dict[str, Any]) -> float:
    """Estimated resident MB of a manifest artifact entry once loaded and run."""
    size_mb = sum(f["bytes"] for f in entry["files"]) / 2**20
    return size_mb * _factor(entry) + _OVERHEAD_MB


def _factor(entry: dict[str, Any]) -> float:
    quantization = entry.get("quantization")
    recipe = quantization.get("recipe") if isinstance(quantization, dict) else None
    if entry["format"] == "tflite" and isinstance(recipe, str) and recipe.startswith("weight_only"):
        signatures = (entry.get("tflite") or {}).get("signatures")
        count = len(signatures) if isinstance(signatures, (dict, list)) and signatures else 1
        return _DEQUANTIZED_PER_SIGNATURE * count
    return _FACTOR.get((entry["format"], entry["precision"]), _DEFAULT_FACTOR)


def headroom_mb(total_mb: int) -> float:
    """Memory left to the rest of the system and to larger batches: 10% of RAM, at least 64 MB."""
    return max(64.0, 0.1 * total_mb)


def fit(entry: dict[str, Any], available_mb: int, total_mb: int) -> tuple[bool, str]:
    """(fits, reason) for an artifact against the memory available now."""
    need = estimate_mb(entry)
    usable = available_mb - headroom_mb(total_mb)
    if available_mb <= 0:  # unknown (no /proc/meminfo, no psutil): do not reorder on a guess
        return True, f"needs ~{need:.0f} MB; available memory unknown"
    if need <= usable:
        return True, f"needs ~{need:.0f} MB of {available_mb} MB available"
    return False, (
        f"needs ~{need:.0f} MB but only {available_mb} MB are available "
        f"({headroom_mb(total_mb):.0f} MB kept free)"
    )
