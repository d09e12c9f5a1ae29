"""Pass: SmoothQuant-style rescaling in front of fused Attention nodes (before INT8).

Activation outliers live in a few channels; with one dynamic scale per tensor they make the
INT8 steps coarse for every other channel. For y = x W the rewrite

    x' = x * (1/s)   (an inserted Mul)        W' = diag(s) W   (folded into the weight)

leaves the FP32 result unchanged and moves part of the range into the weights, which are
quantized per channel. s_j = max|x_j|^alpha / max|W_j|^(1-alpha) (Xiao et al., SmoothQuant,
2022), with max|x_j| measured on the calibration texts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from converters.core._activations import BatchProgress, channel_abs_max

__all__ = ["SmoothConfig", "smooth_activations"]


@dataclass(frozen=True)
class SmoothConfig:
    alpha: float = 0.5
    op_types: tuple[str, ...] = ("Attention",)
    weight_shapes: tuple[tuple[int, int], ...] = ()  # MatMul weights to smooth, e.g. FFN-in; () = none


def smooth_activations(model_path: Path, out_path: Path, batches: list[dict], config: SmoothConfig,
                       progress: BatchProgress | None = None) -> list[dict[str, Any]]:
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(model_path))
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    shapes = set(config.weight_shapes)
    targets = [
        n for n in graph.node
        if len(n.input) > 1 and n.input[1] in inits
        and (n.op_type in config.op_types or (n.op_type == "MatMul" and tuple(inits[n.input[1]].dims) in shapes))
    ]
    if not targets:
        onnx.save(model, str(out_path))
        return []
    peaks = channel_abs_max(model_path, sorted({n.input[0] for n in targets}), batches, progress)
    changed, nodes = [], []
    for node in graph.node:
        if node in targets:
            weight = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
            act = np.maximum(peaks[node.input[0]], 1e-5)
            wmax = np.maximum(np.abs(weight).max(axis=1), 1e-5)
            scale = np.clip(act**config.alpha / wmax ** (1 - config.alpha), 1e-2, 1e2).astype(np.float32)
            inits[node.input[1]].CopyFrom(numpy_helper.from_array(weight * scale[:, None], node.input[1]))
            inverse = f"{node.name}_smooth_inv"
            graph.initializer.append(numpy_helper.from_array((1.0 / scale).astype(np.float32), inverse))
            smoothed = f"{node.name}_smoothed_input"
            nodes.append(helper.make_node("Mul", [node.input[0], inverse], [smoothed], name=f"{node.name}_smooth"))
            node.input[0] = smoothed
            changed.append({"node": node.name, "activation_peak_before": float(act.max()),
                            "activation_peak_after": float((act / scale).max())})
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.save(model, str(out_path))
    return changed
