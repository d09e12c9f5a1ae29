"""The settings of our two TFLite recipes, as plain frozen data with the measurement behind each.

gptq_wi4b32_afp32 takes a GptqInt4Config (it varies per target: the size budget comes from the
profile) and records it in the manifest; gptq_wi8_afp32 has fixed settings. GPTQ's damping and
Hessian rows are the shared per-precision policy (converters/core/gptq.py, GPTQ_POLICY), the
same for the ONNX writers. They live apart
from the writers and searches that read them, so changing a setting never means reading
flatbuffer code, and so a search does not depend on a writer for its constants.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from converters._errors import ConversionError
from converters.core.gptq import GPTQ_POLICY, HessianPolicy

__all__ = [
    "BLOCK",
    "GPTQ_INT4_VERSION",
    "GptqInt4Config",
    "gptq_policy",
]

GPTQ_INT4_VERSION = 1
# Blockwise INT4 as XNNPACK runs it (qb4w: bf16 scales, blocks a multiple of 32). 32 is the
# most accurate: round-to-nearest on MiniLM gave 0.961 mean at block 32, 0.943 at 128.
BLOCK = 32

# -- gptq_wi4b32_afp32 ---------------------------------------------------------------------------
@dataclass(frozen=True)
class GptqInt4Config:
    """Settings of gptq_wi4b32_afp32; serialized into the manifest with the result."""

    # Max bytes of the result / bytes of the FP32 input; filled with INT8 layers by measured
    # sensitivity. None: every FULLY_CONNECTED weight INT4, no search.
    size_budget: float | None = None
    # GPTQ statistics and damping: None = the shared INT4 policy, read when rounding.
    policy: HessianPolicy | None = None
    embedding_min_elements: int = 1 << 16  # smaller tables (token types) stay float
    # Smoothing of the FC inputs (converters/tflite/smooth.py) and its strength; None: off. Off by
    # default: on MiniLM's validation texts (benchmarks/RESULTS.md run AI) it raised the INT4
    # minimum but lowered the mean, worse by the search's own loss on AVX2 code and better on
    # VNNI, and its search judged more candidates (+10 s). INT4's error is mostly the weights'.
    smooth_alpha: float | None = None
    version: int = GPTQ_INT4_VERSION

    def __post_init__(self) -> None:
        problems = []
        if self.size_budget is not None and not 0.0 < self.size_budget <= 1.0:
            problems.append(f"size_budget {self.size_budget} must be in (0, 1]")
        if self.smooth_alpha is not None and not 0.0 < self.smooth_alpha < 1.0:
            problems.append(f"smooth_alpha {self.smooth_alpha} must be in (0, 1) or None")
        if problems:
            raise ConversionError("GptqInt4Config: " + "; ".join(problems))

    def gptq_policy(self) -> HessianPolicy:
        return self.policy or GPTQ_POLICY["int4"]

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "policy": self.gptq_policy().describe(), "block_size": BLOCK}


def gptq_policy(recipe: str, int4: GptqInt4Config | None = None) -> HessianPolicy | None:
    """The Hessian policy `recipe` rounds with (`int4`: gptq_wi4b32_afp32's config), or None for
    ai-edge-quantizer's own recipes (no input statistics)."""
    from converters.tflite.recipes import GPTQ_INT8_RECIPE, GPTQ_RECIPE

    if recipe == GPTQ_INT8_RECIPE:
        return GPTQ_POLICY["int8"]
    if recipe == GPTQ_RECIPE:
        return (int4 or GptqInt4Config()).gptq_policy()
    return None
