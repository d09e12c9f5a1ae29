"""Validate with the target's arithmetic, not the workstation's (issue 8).

Every accuracy decision of a conversion (metrics, floors, FP32 fallbacks, INT4 upgrades,
refusals, golden outputs) comes from running candidate ONNX graphs. Run on the workstation's
own onnxruntime, an INT8 GEMM computes what *this* CPU computes: on x86 without VNNI, MLAS adds
adjacent u8 x s8 products into a saturating int16, so artifacts for int32 targets (VNNI, ARM64,
TensorRT) came out degraded or refused when converted on an AVX2-only machine, and fine on a
VNNI one. Here the profile's `int8.arithmetic` and the host's kernel decide how a candidate is
run, so the same conversion gives the same artifacts and metrics on any workstation:

    target int32,     host int32      -> the host's kernels (they are the target's arithmetic)
    target int32,     host s16-pairs  -> converters/core/exact_integer_ops.py: integer GEMMs rewritten
                                         onto onnxruntime's u8 x u8 kernel where it is measured
                                         exact here (u8u8_gemm_is_exact), else into exact float
                                         arithmetic; then onnxruntime
    target s16-pairs, host s16-pairs  -> the host's kernels: the target's own saturating kernel
    target s16-pairs, host int32      -> the host's kernels: the profile's pair_sum_limit keeps
                                         every pair sum inside int16 (each INT8 weight is checked
                                         before it ships), so saturating and exact sums agree

`ValidationSessions(...)(path)` returns the session to score `path` with.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from converters.core.exact_integer_ops import ExactIntegerConfig, exact_integer_ops, u8u8_gemm_is_exact
from edge_runtime._bench_config import DEFAULT_SHAPE
from edge_runtime.backends.onnx import OnnxSession
from targets import TargetProfile

__all__ = ["MODES", "Validation", "ValidationSessions", "choose_validation", "host_int8_gemm"]

MODES = ("auto", "host", "exact")  # what ConvertConfig.validation may ask for


def host_int8_gemm() -> str:
    """How this machine's onnxruntime INT8 GEMM accumulates: "int32" or "s16-pairs"."""
    from edge_runtime._device import detect

    return detect().int8_gemm


@dataclass(frozen=True)
class Validation:
    target: str  # the profile's int8.arithmetic
    host: str  # this machine's int8 GEMM
    exact_reference: bool  # candidates run through exact_integer_ops
    reason: str
    # how the exact reference runs u8-activation GEMMs: "u8-integer-gemm" (onnxruntime's u8 x u8
    # kernel, measured exact on this machine; s8-activation or untyped ones still take float
    # chunks) or "float-chunks" (all of them); None without the reference
    exact_gemm: str | None = None

    def describe(self) -> dict[str, Any]:
        described = {
            "target_int8_gemm": self.target,
            "host_int8_gemm": self.host,
            "method": "exact-int32-reference" if self.exact_reference else "host-kernels",
            "reason": self.reason,
        }
        if self.exact_gemm:
            described["exact_gemm"] = self.exact_gemm
        return described

    def exact_config(self) -> ExactIntegerConfig:
        return ExactIntegerConfig(u8_weights=self.exact_gemm == "u8-integer-gemm")


def choose_validation(profile: TargetProfile, mode: str = "auto", host: str | None = None,
                      u8u8_exact: bool | None = None) -> Validation:
    """How candidates for `profile` are run on this machine. mode: "auto" (the table in the
    module docstring), "exact" (always the exact reference, e.g. to compare hosts), "host"
    (always this machine's kernels: diagnostics only; artifacts for int32 targets converted on a
    saturating CPU then carry that CPU's errors). `host` and `u8u8_exact` are measured on this
    machine when not given (tests pass them)."""
    if mode not in MODES:
        raise ValueError(f"validation mode {mode!r}; expected one of {', '.join(MODES)}")
    target = profile.int8.arithmetic
    host = host or host_int8_gemm()
    if mode == "host":
        return Validation(target, host, False, "asked for this machine's kernels")
    if mode == "exact" or (target == "int32" and host != "int32"):
        if u8u8_exact is None:
            u8u8_exact = u8u8_gemm_is_exact()
        gemm = "u8-integer-gemm" if u8u8_exact else "float-chunks"
        reason = ("asked for the exact int32 reference" if mode == "exact" else
                  "this CPU's INT8 GEMM saturates int16 pair sums; the target accumulates in int32: "
                  "integer GEMMs are run exactly instead")
        return Validation(target, host, True, reason, gemm)
    if target == host:
        return Validation(target, host, False, "this CPU's INT8 GEMM is the target's arithmetic")
    return Validation(target, host, False, "the profile's pair_sum_limit keeps every int16 pair sum exact, "
                      "so this CPU's exact int32 sums are the target's")


class ValidationSessions:
    """Opens the session a candidate ONNX graph is scored with, per `validation`."""

    def __init__(self, validation: Validation, work: Path, threads: int = DEFAULT_SHAPE.threads):
        self.validation = validation
        self.work = work
        self.threads = threads

    def __call__(self, path: Path, threads: int | None = None) -> OnnxSession:
        """`threads`: None for this object's; a ranking lane passes its share."""
        path, threads = Path(path), threads or self.threads
        if self.validation.exact_reference and _has_integer_ops(path):
            # Named after the candidate's file: ranking lanes (core/search.py) write distinct ones.
            exact = self.work / f"{path.stem}.exact.onnx"
            exact_integer_ops(path, exact, self.validation.exact_config())
            try:
                return OnnxSession(exact, threads=threads, graph_optimization_level="all")
            finally:
                # onnxruntime has read the file; the next candidate gets a fresh one
                exact.unlink(missing_ok=True)
        return OnnxSession(path, threads=threads, graph_optimization_level="all")


def _has_integer_ops(path: Path) -> bool:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return any(n.op_type in ("MatMulInteger", "DequantizeLinear", "QAttention", "QLinearMatMul")
               for n in model.graph.node)
