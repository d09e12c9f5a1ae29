"""The settings of our two TFLite recipes, as plain frozen data with the measurement behind each.

gptq_wi4b32_afp32 takes a GptqInt4Config (it varies per target: the size budget comes from the
profile) and records it in the manifest; gptq_wi8_afp32 has fixed settings. They live apart
from the writers and searches that read them, so changing a setting never means reading
flatbuffer code, and so a search does not depend on a writer for its constants.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from converters._errors import ConversionError

__all__ = [
    "BLOCK",
    "GPTQ_INT4_VERSION",
    "INT8_DAMP",
    "INT8_PREFIX_TOKENS",
    "GptqInt4Config",
]

GPTQ_INT4_VERSION = 1
# Blockwise INT4 as XNNPACK runs it (qb4w: bf16 scales, blocks a multiple of 32). 32 is the
# most accurate: round-to-nearest on MiniLM gave 0.961 mean at block 32, 0.943 at 128.
BLOCK = 32

# -- gptq_wi8_afp32 ------------------------------------------------------------------------------
INT8_DAMP = 0.03  # as for INT4 (GptqInt4Config.damp)
INT8_PREFIX_TOKENS = (1, 2, 3)  # short-input Hessian rows, as for INT4


# -- gptq_wi4b32_afp32 ---------------------------------------------------------------------------
@dataclass(frozen=True)
class GptqInt4Config:
    """Settings of gptq_wi4b32_afp32; serialized into the manifest with the result."""

    # Max bytes of the result / bytes of the FP32 input; filled with INT8 layers by measured
    # sensitivity. None: every FULLY_CONNECTED weight INT4, no search.
    size_budget: float | None = None
    # GPTQ damping (fraction of the mean Hessian diagonal). MiniLM held-out minimum cosine,
    # all-INT4, PyTorch simulation: 0.03 and 0.1 within noise (0.963 / 0.958), 0.01 worse.
    damp: float = 0.03
    # Extra Hessian rows per calibration row: its first k + 1 tokens and its last one
    # ("[CLS] w1 [SEP]" for BERT-style tokenizers). Short inputs set the minimum cosine; on
    # MiniLM these rows lifted the held-out minimum from 0.956 to 0.969 (same budget).
    prefix_tokens: tuple[int, ...] = (1, 2, 3)
    embedding_min_elements: int = 1 << 16  # smaller tables (token types) stay float
    version: int = GPTQ_INT4_VERSION

    def __post_init__(self) -> None:
        problems = []
        if self.size_budget is not None and not 0.0 < self.size_budget <= 1.0:
            problems.append(f"size_budget {self.size_budget} must be in (0, 1]")
        if not 0.0 < self.damp < 1.0:
            problems.append(f"damp {self.damp} must be in (0, 1)")
        if any(k < 1 for k in self.prefix_tokens):
            problems.append(f"prefix_tokens {self.prefix_tokens} must be >= 1")
        if problems:
            raise ConversionError("GptqInt4Config: " + "; ".join(problems))

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "block_size": BLOCK}
