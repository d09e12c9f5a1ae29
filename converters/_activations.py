"""Statistics of intermediate activations of an ONNX model, for calibration-aware passes."""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["channel_abs_max"]


def channel_abs_max(model_path: Path, tensors: list[str], batches: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """max |x| per last-axis channel of each named tensor, over real (unpadded) tokens."""
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
    peaks: dict[str, np.ndarray] = {}
    for feeds in batches:
        outputs = dict(zip(names, session.run(names, feeds)))
        keep = feeds["attention_mask"].astype(bool)
        for name in tensors:
            value = outputs[name]
            rows = value[keep] if value.ndim == 3 else value.reshape(-1, value.shape[-1])
            peak = np.abs(rows).max(axis=0)
            peaks[name] = peak if name not in peaks else np.maximum(peaks[name], peak)
    return peaks
