"""The input-statistics tap: E[x^T x] of every FULLY_CONNECTED weight's input in a .tflite.

GPTQ (converters/core/gptq.py) rounds a weight against the second moment of the activations that
reach it. Here they are read from the FP32 .tflite itself, not from PyTorch: the interpreter
keeps every intermediate tensor (builtin kernels), each calibration row runs on the bucket that
holds it, and only its real tokens count. Short "prefix" rows are added because short inputs
set the minimum cosine and calibration files rarely hold enough of them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from converters.tflite.flatbuffer import Weight
from converters.tflite.signatures import Signatures

__all__ = ["collect_hessians", "with_prefixes"]

_HESSIAN_CHUNK = 128  # calibration rows per Hessian update (memory vs GEMM size)


def with_prefixes(
    rows: list[dict[str, np.ndarray]], prefix_tokens: tuple[int, ...]
) -> list[dict[str, np.ndarray]]:
    """rows plus, per row and k in prefix_tokens, its first k + 1 tokens followed by its last
    one: "[CLS] w1 [SEP]"-like inputs for BERT/RoBERTa/XLM-R tokenizers, whose first and last
    tokens are the special ones. Short inputs give the lowest cosines, and calibration files
    rarely hold enough of them for GPTQ to fit them too."""
    extra = []
    for row in rows:
        n = row["attention_mask"].shape[1]
        for k in prefix_tokens:
            if n > k + 2:
                extra.append(
                    {
                        name: np.concatenate([v[:, : k + 1], v[:, n - 1 :]], 1)
                        for name, v in row.items()
                    }
                )
    return rows + extra


def collect_hessians(
    path: Path, weights: dict[int, Weight], rows: list[dict[str, np.ndarray]]
) -> dict[int, np.ndarray]:
    """E[x^T x] of each FC weight's input over the real tokens of every row, each row weighted
    alike (a short row counts as much as a long one), summed over the signatures sharing it."""
    signatures = Signatures(path, preserve=True)
    by_subgraph: dict[int, list[tuple[int, int]]] = {}
    for weight in weights.values():
        for subgraph, tensor in weight.inputs:
            by_subgraph.setdefault(subgraph, []).append((weight.buffer, tensor))
    sums: dict[int, np.ndarray] = {}
    pending: dict[int, list[np.ndarray]] = {}

    def flush() -> None:
        # One GEMM per weight over many rows: per-row products of a few tokens were 90% of the
        # time. float32 products of at most _HESSIAN_CHUNK rows, accumulated in float64.
        for buffer, parts in pending.items():
            x = np.concatenate(parts)
            sums[buffer] = sums.get(buffer, 0.0) + (x.T @ x).astype(np.float64)
        pending.clear()

    for count, row in enumerate(rows, 1):
        n = row["attention_mask"].shape[1]
        _, length, subgraph = signatures.run(row)
        for buffer, tensor in by_subgraph.get(subgraph, []):
            x = signatures.interpreter.get_tensor(tensor, subgraph)
            x = x.reshape(-1, x.shape[-1])
            if x.shape[0] == length:  # one row per token position: keep the real ones
                x = x[:n]
            pending.setdefault(buffer, []).append(x.astype(np.float32) / np.sqrt(len(x)))
        if count % _HESSIAN_CHUNK == 0:
            flush()
    flush()
    return {buffer: h / len(rows) for buffer, h in sums.items()}
