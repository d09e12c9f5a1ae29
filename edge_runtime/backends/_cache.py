"""What the backends' device caches share: naming by CPU.

Caches hold device-specific forms of an artifact (XNNPACK's packed weights for TFLite,
onnxruntime's optimized graph for ONNX). They are named after the artifact's content, the
runtime version and the CPU, so a cache directory that outlives its machine or runtime is never
trusted by another one.
"""

from __future__ import annotations

import hashlib
import platform

__all__ = ["cpu_tag"]


def cpu_tag() -> str:
    """8 hex digits naming what kernels (and so packed layouts) are picked by.

    Runtimes check their own build identifier, not the CPU. A cache directory can outlive the
    CPU it was made on (a home directory on NFS, an SD card moved from a Pi 4 to a Pi 5), so the
    machine and CPU feature flags go into the cache's name."""
    parts = {platform.machine()}
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo:
            for line in cpuinfo:
                key = line.partition(":")[0].strip().lower()
                # x86 "flags"; ARM "Features", "CPU implementer", "CPU part" (one set per core
                # type on big.LITTLE; the set keeps each once)
                if key in ("flags", "features", "cpu implementer", "cpu part"):
                    parts.add(" ".join(line.split()))
    except OSError:
        parts.add(platform.processor())
    return hashlib.sha256("\n".join(sorted(parts)).encode()).hexdigest()[:8]
