"""Can this device compute an artifact's numbers? Its INT8 arithmetic against the artifact's.

onnxruntime's INT8 GEMM does not compute the same thing on every CPU: on x86 without VNNI
(AVX2, AVX-512BW) MLAS adds adjacent u8 x s8 products into a saturating int16 ("s16-pairs"),
while VNNI, AMX and ARM64 accumulate in int32 ("int32"). An ONNX INT8/INT4 artifact made for an
int32 target may hold weight pairs that overflow there: it loads, runs, and gives wrong numbers
(MiniLM: cosine 0.946 instead of 0.99+). The converter records what an artifact needs as
`requires.int8_gemm` (converters/pipeline.py); x86-avx2 artifacts, whose weight pairs are
limited to stay inside int16, run exactly on both kinds.
"""

from __future__ import annotations

import re
from typing import Any

from edge_runtime import _device, backends

__all__ = ["arithmetic_problem", "needs_int8_gemm_check", "required_int8_gemm", "runtime_problem"]

_KIND_WORDS = {
    "int32": "accumulates in int32 (VNNI, AMX, ARM64)",
    "s16-pairs": "adds pairs of products into a saturating int16 (x86 AVX2 without VNNI)",
}


def required_int8_gemm(entry: dict[str, Any], manifest: dict[str, Any]) -> list[str] | None:
    """The INT8 GEMM kinds `entry` computes its recorded numbers on; None: any device."""
    requires = entry.get("requires")
    if isinstance(requires, dict) and "int8_gemm" in requires:
        return list(requires["int8_gemm"])
    # Manifests written before `requires` existed: infer from the profile they were made for.
    if entry.get("format") != "onnx" or entry.get("precision") not in ("int8", "int4"):
        return None
    profile = (manifest.get("target") or {}).get("profile") or {}
    if entry.get("precision") == "int4" and (profile.get("int4") or {}).get("kernel") == "matmulnbits":
        return None
    if (profile.get("int8") or {}).get("pair_sum_limit"):
        return ["int32", "s16-pairs"]
    return ["int32"]


def needs_int8_gemm_check(entry: dict[str, Any], manifest: dict[str, Any]) -> bool:
    """Whether `entry` computes right on some INT8 GEMM kinds only, so the device's must be
    known (detect() measures it: a few ms of every cold load an artifact that runs exactly on
    both kinds, such as x86-avx2's, does not need)."""
    kinds = required_int8_gemm(entry, manifest)
    return kinds is not None and not set(_KIND_WORDS) <= set(kinds)


def arithmetic_problem(entry: dict[str, Any], manifest: dict[str, Any], device: Any) -> str | None:
    """Why `device` would compute wrong numbers with `entry`, or None when it computes them right."""
    kinds = required_int8_gemm(entry, manifest)
    if kinds is None or device.int8_gemm in kinds:
        return None
    target = (manifest.get("target") or {}).get("id", "another target")
    return (
        f"{entry['name']} was made for {target}, whose INT8 GEMM {_KIND_WORDS.get(kinds[0], kinds[0])}; "
        f"onnxruntime on this CPU ({device.cpu_model}) {_KIND_WORDS.get(device.int8_gemm, device.int8_gemm)}, "
        "where its weights overflow and it would compute wrong numbers. Convert for this device's profile "
        "(e.g. edge-convert --target x86-avx2) or load a float/TFLite artifact"
    )


def _release(version: str) -> tuple[int, ...]:
    """(1, 22, 1) from "1.22.1", "1.22.1.dev20250101" or "1.22": the numbered release only."""
    return tuple(int(part) for part in re.findall(r"\d+", version.split("+")[0])[:3])


def runtime_problem(entry: dict[str, Any]) -> str | None:
    """Why the backend installed here is too old for `entry` (its manifest min_runtime, the
    version it was validated with), or None. onnxruntime before 1.23 fails on INT4 artifacts'
    UINT4 casts and reports it as a missing kernel; the minimum says it before any load."""
    needs = entry.get("min_runtime") or {}
    package = backends.installed_package(entry.get("format", ""))
    if package not in needs:  # another runtime of the format: ranked last, the golden check decides
        return None
    have = _device.detect(measure_int8=False).backends.get(package)  # read once per process
    if have is None or _release(have) >= _release(str(needs[package])):
        return None
    return (f"{entry['name']} needs {package} >= {needs[package]} (installed here: {have}); "
            f"upgrade it: pip install -U '{package}>={needs[package]}'")
