"""The input-statistics tap: E[x^T x] of every FULLY_CONNECTED weight's input in a .tflite.

GPTQ (converters/core/gptq.py) rounds a weight against the second moment of the activations that
reach it. Here they are read from the FP32 .tflite itself, not from PyTorch: the interpreter
keeps every intermediate tensor (builtin kernels), each calibration row runs on the bucket that
holds it, and only its real tokens count. Short "prefix" rows are added because short inputs
set the minimum cosine and calibration files rarely hold enough of them.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from converters.tflite.flatbuffer import Weight
from converters.tflite.signatures import Signatures

__all__ = ["HessianCache", "TfliteHessians", "collect_hessians", "with_prefixes"]

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
    path: Path, weights: dict[int, Weight], rows: list[dict[str, np.ndarray]], weighting: str = "row"
) -> dict[int, np.ndarray]:
    """E[x^T x] of each FC weight's input over the real tokens of every row, summed over the
    signatures sharing it. weighting "row": each row weighted alike (a short row counts as much
    as a long one); "token": every token alike (HessianPolicy, converters/core/gptq.py)."""
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
            scale = np.sqrt(len(x)) if weighting == "row" else 1.0
            pending.setdefault(buffer, []).append(x.astype(np.float32) / scale)
        if count % _HESSIAN_CHUNK == 0:
            flush()
    flush()
    return {buffer: h / len(rows) for buffer, h in sums.items()}


def _rows_digest(rows: list[dict[str, np.ndarray]]) -> str:
    digest = hashlib.sha256()
    for row in rows:
        for name in sorted(row):
            digest.update(name.encode())
            digest.update(np.ascontiguousarray(row[name]).tobytes())
    return digest.hexdigest()


class HessianCache:
    """Hessians of one FP32 .tflite's FC weights on one set of rows, collected once and shared:
    gptq_wi8_afp32 and gptq_wi4b32_afp32 round against the same statistics (same export, same
    rows), and so do the targets of one run. Tapping the interpreter over ~1,000 rows is the
    costly part (60-85 s for MiniLM on 2 cores), GPTQ itself a few seconds. The cache is passed
    explicitly (the pipeline keeps one per run); a model file that only renames tensors and
    moves buffers (flatbuffer.compact_copy) shares its original's entry via `source`: weights
    are matched by the op that reads them."""

    def __init__(self) -> None:
        self._store: dict[tuple[str, str, str], dict[tuple[int, ...], np.ndarray]] = {}
        self.collected = 0  # weights whose statistics were tapped (the rest were reused)

    def get(self, path: Path, weights: dict[int, Weight], rows: list[dict[str, np.ndarray]],
            source: Path | None = None, weighting: str = "row") -> dict[int, np.ndarray]:
        key = (str(Path(source or path).resolve()), _rows_digest(rows), weighting)
        store = self._store.setdefault(key, {})
        # By the first op reading the weight: compact_copy keeps ops in place, not buffer indices.
        use = {b: tuple(w.uses[0][:2]) for b, w in weights.items()}
        missing = {b: w for b, w in weights.items() if use[b] not in store}
        if missing:
            for buffer, hessian in collect_hessians(path, missing, rows, weighting).items():
                store[use[buffer]] = hessian
            self.collected += len(missing)
        return {b: store[use[b]] for b in weights}


class TfliteHessians:
    """The TFLite adapter of the GPTQ driver's HessianSource (converters/core/gptq.py): the
    Hessians of `weights` (by FP32 buffer) of the model at `path` on `rows`, through `cache`."""

    def __init__(self, path: Path, weights: dict[int, Weight], rows: list[dict[str, np.ndarray]],
                 weighting: str, cache: HessianCache | None = None, source: Path | None = None):
        self._hessians = (cache or HessianCache()).get(path, weights, rows, source=source, weighting=weighting)

    def hessian(self, weight: int) -> np.ndarray:
        return self._hessians[weight]
