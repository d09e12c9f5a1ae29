"""Where TensorRT's engine cache goes: into the device cache, keyed by the artifact, or nowhere.

onnxruntime's TensorRT provider compiles each TensorRT subgraph into an engine when a session
starts (minutes on a Jetson). With `trt_engine_cache_enable` it saves the engines and loads them
at the next start, into `trt_engine_cache_path`, or, without one, into the process's working
directory: `/` or a unit's WorkingDirectory for a service, never cleaned, outside the device cache
and shared by every model the process ever ran. Its engine names do not follow the weights:
onnxruntime's TensorRT documentation asks users to delete old engines themselves when the model,
onnxruntime or TensorRT changes.

So, when a profile enables the cache without a path, the engines go to
`<device cache>/tensorrt/<artifact sha256>-ort<onnxruntime version>/`: a changed artifact (or
another onnxruntime) starts from an empty directory instead of reusing an engine built for other
weights. The hash is the one the load verified; an unverified load (verify=False), like a load
without device caches (device_cache=False), turns the engine cache off: engines are then built at
every start, never written to the working directory. A path the profile gives is kept.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from edge_runtime.backends._cache import make_cache_dir

__all__ = ["PROVIDER", "full_precision", "place_engine_cache"]

log = logging.getLogger("edge_runtime")

PROVIDER = "TensorrtExecutionProvider"
_ENABLE, _PATH = "trt_engine_cache_enable", "trt_engine_cache_path"


def _enabled(value: Any) -> bool:
    # onnxruntime reads its options as text: a TOML/JSON true arrives as "True"; "true" and
    # "True" are the spellings its TensorRT option parser takes for on.
    return str(value).strip().lower() == "true"


def place_engine_cache(
    providers: list[tuple[str, dict[str, Any]]],
    cache_dir: Path | None,
    model_sha256: str | None,
    ort_version: str,
    model_name: str,
) -> list[tuple[str, dict[str, Any]]]:
    """`providers` ((name, options) pairs, as onnxruntime takes them) with the TensorRT engine
    cache placed as the module docstring says. `cache_dir`: the device cache's ONNX directory
    (None: device caching is off); `model_sha256`: the verified artifact's hash (None: not
    verified). The options given are not changed; a new list is returned."""
    placed = []
    for name, options in providers:
        if name != PROVIDER or not _enabled(options.get(_ENABLE, False)) or options.get(_PATH):
            placed.append((name, options))
            continue
        options = dict(options)
        if cache_dir is None:
            why_not, level = "this load has no device cache (device_cache=False)", logging.INFO
        elif not model_sha256:
            why_not = "its files were not verified (the cache is keyed by their hash)"
            level = logging.INFO
        else:
            directory = Path(cache_dir) / "tensorrt" / f"{model_sha256}-ort{_safe(ort_version)}"
            try:
                make_cache_dir(directory)
                options[_PATH], why_not = str(directory), None
            except OSError as exc:  # as the other device caches: go without, and say so
                why_not, level = f"{directory} cannot be written ({exc})", logging.WARNING
        if why_not is not None:
            log.log(level, "no TensorRT engine cache for %s: %s; its engines are built at every "
                    "load", model_name, why_not)
            options[_ENABLE] = False
        placed.append((name, options))
    return placed


def full_precision(provider_options: dict[str, Any], precision: str, model_name: str) -> dict[str, Any]:
    """`provider_options` (per provider name) for an artifact of `precision`: an FP32 artifact
    without TensorRT's FP16 kernels. Its golden samples allow FP32's rounding, not FP16's: with
    them it failed its own check. Manifests from before jetson-orin.toml dropped the option still
    carry it; the manifest itself is not changed."""
    options = provider_options.get(PROVIDER)
    if precision != "fp32" or not isinstance(options, dict) or not _enabled(options.get("trt_fp16_enable", False)):
        return provider_options
    log.info("%s is FP32: TensorRT runs it without trt_fp16_enable (the manifest asks for it)", model_name)
    return {**provider_options, PROVIDER: {**options, "trt_fp16_enable": False}}


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in ".-" else "_" for c in text)
