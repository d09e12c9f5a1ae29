"""Pass: store large embedding tables as INT8 with one scale per row.

A word-embedding table is half of a small encoder's bytes (MiniLM: 30522 x 384 floats = 47 MB
of 90 MB) but only a handful of its rows are read per inference, so it gains nothing from INT8
GEMM kernels and onnxruntime's MatMul quantizers leave it in FP32. This pass rewrites

    Gather(W, ids)                      W: float [rows, dim]
into
    Mul(Cast(Gather(Wq, ids)), Gather(scale, ids))    Wq: int8 [rows, dim], scale: float [rows, 1]

with standard ONNX ops only (so TensorRT, ORT and every ORT build run it), dequantizing just
the gathered rows. Per-row symmetric scales keep the error per row at <= scale/2.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["EmbeddingQuantConfig", "quantize_embeddings"]


@dataclass(frozen=True)
class EmbeddingQuantConfig:
    min_elements: int = 1 << 16  # smaller tables (token types, positions of tiny models) stay FP32


def _quantize_rows(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    peak = np.abs(table).max(axis=1, keepdims=True)
    scale = np.where(peak > 0, peak / 127.0, 1.0).astype(np.float32)
    q = np.clip(np.rint(table / scale), -127, 127).astype(np.int8)
    return q, scale


def quantize_embeddings(model_path: Path, out_path: Path, config: EmbeddingQuantConfig) -> list[dict[str, Any]]:
    """Rewrite qualifying Gathers in place of `model_path` into `out_path`; returns what changed."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(model_path))
    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    consumers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            consumers[name] = consumers.get(name, 0) + 1

    changed, new_nodes = [], []
    for node in graph.node:
        table = initializers.get(node.input[0]) if node.op_type == "Gather" else None
        if (
            table is None
            or table.data_type != onnx.TensorProto.FLOAT
            or len(table.dims) != 2
            or table.dims[0] * table.dims[1] < config.min_elements
            or consumers.get(table.name) != 1  # a tied table is also a MatMul weight: leave it
            or any(a.name == "axis" and a.i != 0 for a in node.attribute)
        ):
            new_nodes.append(node)
            continue
        weights = numpy_helper.to_array(table)
        q, scale = _quantize_rows(weights)
        base = table.name
        graph.initializer.remove(table)
        graph.initializer.extend([
            numpy_helper.from_array(q, f"{base}_int8"),
            numpy_helper.from_array(scale, f"{base}_row_scale"),
        ])
        ids, out = node.input[1], node.output[0]
        prefix = node.name or base
        new_nodes.extend([
            helper.make_node("Gather", [f"{base}_int8", ids], [f"{prefix}_q_rows"], name=f"{prefix}_gather_int8"),
            helper.make_node("Cast", [f"{prefix}_q_rows"], [f"{prefix}_rows"], name=f"{prefix}_cast",
                             to=onnx.TensorProto.FLOAT),
            helper.make_node("Gather", [f"{base}_row_scale", ids], [f"{prefix}_scales"], name=f"{prefix}_gather_scale"),
            helper.make_node("Mul", [f"{prefix}_rows", f"{prefix}_scales"], [out], name=f"{prefix}_dequant"),
        ])
        error = float(np.abs(q.astype(np.float32) * scale - weights).max())
        changed.append({"initializer": base, "shape": list(weights.shape), "scheme": "int8 per-row symmetric",
                        "bytes_before": weights.nbytes, "bytes_after": q.nbytes + scale.nbytes,
                        "max_abs_error": error})
    del graph.node[:]
    graph.node.extend(new_nodes)
    onnx.save(model, str(out_path))
    return changed
