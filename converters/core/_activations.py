"""Statistics of intermediate activations of an ONNX model, for calibration-aware passes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from converters._console import CountCallback

__all__ = ["BatchProgress", "GramSums", "channel_abs_max", "channel_mean_square", "token_rows"]

# Told (batches done, batches in all) as a pass over the calibration batches goes: ~10 s for the
# built-in 270 fit texts on a 2-core machine, a minute and more for a file of thousands (run AY).
BatchProgress = CountCallback


# The precision of each block's product x^T x (sums across blocks are float64 either way).
# float64. float32 halves the products' time (RESULTS.md run BG: masked rpi4, ~3 s of each ONNX
# Hessian pass's ~8 s) but moves GPTQ's rounding decisions: the INT8 codes change and the W4A8
# search takes another path after its second move, with lower minimum cosines on the validation
# texts (ONNX INT8 0.9948 -> 0.9936, ONNX INT4 0.9791 -> 0.9766): not kept. Read at use, so that
# a measurement can swap it (benchmarks/bench_gram_precision.py).
GRAM_PRODUCT: type = np.float64


class GramSums:
    """sum x^T x per key, in float64, over blocks of rows [rows, K] added one at a time: what
    every GPTQ Hessian is (converters/core/gptq.input_hessians for ONNX graphs,
    converters/tflite/hessians.py for the TFLite weights).

    Blocks are buffered and multiplied together once `budget` bytes are waiting: one product
    writes the whole K x K result, so a product per calibration batch of a few hundred tokens
    (or per TFLite row length, a few dozen) spent most of its time writing results, not
    multiplying (MiniLM's rpi4 conversion spent 24 s of numpy work in three collections;
    RESULTS.md run AJ). The sum is the same up to float64 rounding (relative differences ~1e-15).

    Each product is computed in `product` precision (GRAM_PRODUCT unless given) and added to a
    float64 sum."""

    def __init__(self, budget: int = 96 << 20, per_key: bool = False, product: type | None = None):
        """`budget`: bytes waiting in all keys together before every key is multiplied out;
        `per_key`: in each key on its own instead, so that a key's sum does not depend on which
        other keys are summed beside it (bit for bit: the blocks of one product are the same);
        `product`: the dtype blocks are multiplied in (None: GRAM_PRODUCT, read now)."""
        self.budget = budget
        self.per_key = per_key
        self.product = np.dtype(product or GRAM_PRODUCT)
        self._sums: dict = {}
        self._pending: dict = {}
        self._waiting: dict = {}

    def add(self, key, rows: np.ndarray) -> None:
        block = np.asarray(rows, dtype=self.product)
        self._pending.setdefault(key, []).append(block)
        counted = key if self.per_key else None
        self._waiting[counted] = self._waiting.get(counted, 0) + block.nbytes
        if self._waiting[counted] >= self.budget:
            self._flush(key if self.per_key else None)

    def _flush(self, only=None) -> None:
        """Multiply out the blocks waiting in key `only`, or in every key (None)."""
        for key in [only] if only is not None else list(self._pending):
            blocks = self._pending.pop(key)
            x = blocks[0] if len(blocks) == 1 else np.concatenate(blocks)
            product = (x.T @ x).astype(np.float64, copy=False)
            # A new array, not +=: a result handed out by sums() never changes afterwards.
            self._sums[key] = self._sums[key] + product if key in self._sums else product
            self._waiting.pop(key if self.per_key else None, None)

    def sums(self) -> dict:
        """{key: sum x^T x} of everything added."""
        self._flush()
        return dict(self._sums)


def token_rows(
    model_path: Path, tensors: list[str], batches: list[dict[str, np.ndarray]], progress: BatchProgress | None = None,
    threads: int | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """Per batch: each named tensor as [rows, channels], real (unpadded) tokens only. `threads`:
    onnxruntime's intra-op threads (None: its default, every core)."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(model_path))
    present = {o.name for o in model.graph.output}
    for name in tensors:
        if name not in present:
            model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep tensors by name
    if threads is not None:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    if progress is not None:
        progress(0, len(batches))
    for done, feeds in enumerate(batches, 1):
        outputs = dict(zip(names, session.run(names, feeds)))
        if progress is not None:
            progress(done, len(batches))
        keep = feeds["attention_mask"].astype(bool)
        yield {
            name: outputs[name][keep] if outputs[name].ndim == 3 else outputs[name].reshape(-1, outputs[name].shape[-1])
            for name in tensors
        }


def channel_abs_max(model_path: Path, tensors: list[str], batches: list[dict[str, np.ndarray]],
                    progress: BatchProgress | None = None) -> dict[str, np.ndarray]:
    """max |x| per last-axis channel of each named tensor, over real (unpadded) tokens."""
    peaks: dict[str, np.ndarray] = {}
    for rows in token_rows(model_path, tensors, batches, progress):
        for name, value in rows.items():
            peak = np.abs(value).max(axis=0)
            peaks[name] = peak if name not in peaks else np.maximum(peaks[name], peak)
    return peaks


def channel_mean_square(
    model_path: Path, tensors: list[str], batches: list[dict[str, np.ndarray]]
) -> dict[str, np.ndarray]:
    """E[x^2] per last-axis channel of each named tensor, over real (unpadded) tokens: the
    diagonal of the input Hessian of a linear layer, which weights its weight errors."""
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    for rows in token_rows(model_path, tensors, batches):
        for name, value in rows.items():
            square = (value.astype(np.float64) ** 2).sum(axis=0)
            sums[name] = square if name not in sums else sums[name] + square
            counts[name] = counts.get(name, 0) + len(value)
    return {name: sums[name] / max(counts[name], 1) for name in sums}
