"""Which INT8 GEMM onnxruntime really runs here: measured, not read from /proc/cpuinfo.

The CPU flags in /proc/cpuinfo say what the CPU has; onnxruntime's MLAS picks its kernel from
CPUID, and the two can disagree: a VM or container that masks CPUID bits but shows the host's
cpuinfo, or an emulator (qemu-user runs a Haswell's CPUID on a VNNI host and passes the host's
/proc/cpuinfo through). What decides whether an artifact's numbers come out right is the kernel
(edge_runtime/_compat.py), so this module asks it: one MatMulInteger of u8 255 x s8 127 over
K = 64. Kernels that add adjacent products into a saturating int16 (x86 AVX2/AVX-512BW without
VNNI: VPMADDUBSW) give 32 x 32767 = 1048544 per output; int32 kernels the exact 2072640.

The model is written here byte for byte (the device wheel has no `onnx` package):
tests/test_device.py rebuilds it with `onnx` and checks that the bytes are equal.
"""

from __future__ import annotations

import functools
import logging

import numpy as np

__all__ = ["PROBE_MODEL", "probe_int8_gemm"]

log = logging.getLogger("edge_runtime")

K, N = 64, 16
EXACT = K * 255 * 127  # 2072640
SATURATED = (K // 2) * 32767  # 1048544

# ModelProto (ir 7, opset 13): y[int32, (-1, 16)] = MatMulInteger(a[uint8, (-1, 64)], b), b an
# int8 [64, 16] initializer of 127s (constant, as in real models: onnxruntime prepacks it).
PROBE_MODEL = (
    bytes.fromhex(
        "0807120c656467655f72756e74696d653ae0080a180a01610a0162120179220d4d61744d756c496e7465"
        "676572120f696e74385f67656d6d5f70726f62652a8c080840081010034201624a8008"
    )
    + b"\x7f" * (K * N)
    + bytes.fromhex(
        "5a110a0161120c0a0a080212060a000a02084062110a0179120c0a0a080612060a000a02081042040a00"
        "100d"
    )
)


@functools.cache
def probe_int8_gemm() -> str | None:
    """"int32" or "s16-pairs" as onnxruntime's CPU INT8 GEMM computes in this process; None
    when onnxruntime is not installed or the probe cannot run (then cpuinfo has to do)."""
    from edge_runtime.backends import import_onnxruntime

    try:
        ort = import_onnxruntime()
    except ImportError:
        return None
    try:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.log_severity_level = 3
        session = ort.InferenceSession(PROBE_MODEL, options, providers=["CPUExecutionProvider"])
        (y,) = session.run(None, {"a": np.full((4, K), 255, np.uint8)})
    except Exception as exc:  # noqa: BLE001 -- an odd build must not stop detection
        log.debug("INT8 GEMM probe failed: %s", exc)
        return None
    if np.all(y == EXACT):
        return "int32"
    if np.all(y == SATURATED):
        return "s16-pairs"
    log.warning("INT8 GEMM probe: unexpected result %s (exact %d, pair-saturated %d)", np.unique(y), EXACT, SATURATED)
    return None
