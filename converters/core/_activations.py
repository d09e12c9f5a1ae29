"""Statistics of intermediate activations of an ONNX model, for calibration-aware passes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

__all__ = ["channel_abs_max", "channel_mean_square", "token_rows"]


def token_rows(
    model_path: Path, tensors: list[str], batches: list[dict[str, np.ndarray]]
) -> Iterator[dict[str, np.ndarray]]:
    """Per batch: each named tensor as [rows, channels], real (unpadded) tokens only."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(model_path))
    present = {o.name for o in model.graph.output}
    for name in tensors:
        if name not in present:
            model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep tensors by name
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    for feeds in batches:
        outputs = dict(zip(names, session.run(names, feeds)))
        keep = feeds["attention_mask"].astype(bool)
        yield {
            name: outputs[name][keep] if outputs[name].ndim == 3 else outputs[name].reshape(-1, outputs[name].shape[-1])
            for name in tensors
        }


def channel_abs_max(model_path: Path, tensors: list[str], batches: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """max |x| per last-axis channel of each named tensor, over real (unpadded) tokens."""
    peaks: dict[str, np.ndarray] = {}
    for rows in token_rows(model_path, tensors, batches):
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
