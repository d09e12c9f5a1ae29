"""Pass: give the first token of each FFN MatMul its own dynamic quantization scale.

Encoders put a massive activation on token 0 ([CLS] / <s>, an "attention sink"): in MiniLM ~28
in one FFN input channel against 4-8 for every other token. Dynamic INT8 quantizes each MatMul
input with a single scale, so that one value coarsens the steps for all other tokens, and short
sentences suffer most. The rewrite

    Y = MatMul(X, W)   ->   Y = Concat(MatMul(X[:, :1], W), MatMul(X[:, 1:], W), axis=1)

is exact in FP32; after quantization each half gets its own scale. Applied to the MatMuls whose
weight has one of `weight_shapes` (FFN: [hidden, intermediate] and [intermediate, hidden]; the
attention projections: [hidden, hidden]) and whose input is [batch, sequence, features];
quantize_int8 stores the shared weight once. In Q and K inputs token 0 holds the largest value
of every MiniLM text we checked (2.2x the median token); in the FFN output input, 4-6x.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from converters._graph import inline_identity_constants

__all__ = ["SplitConfig", "split_first_token"]


@dataclass(frozen=True)
class SplitConfig:
    weight_shapes: tuple[tuple[int, int], ...]  # [K, N] of the MatMul weights to split


def split_first_token(model_path: Path, out_path: Path, config: SplitConfig) -> list[str]:
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(model_path))
    graph = model.graph
    inline_identity_constants(graph)
    shapes = {i.name: tuple(i.dims) for i in graph.initializer}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    wanted = set(config.weight_shapes)
    constants = {"split_start0": 0, "split_start1": 1, "split_end": np.iinfo(np.int64).max, "split_axis": 1}
    split, nodes, dropped = [], [], set()
    for node in graph.node:
        if node.output[0] in dropped:
            continue
        if node.op_type != "MatMul" or shapes.get(node.input[1]) not in wanted:
            nodes.append(node)
            continue
        x, w, y, name = node.input[0], node.input[1], node.output[0], node.name
        # A bias Add that only this MatMul feeds moves into both halves: onnxruntime fuses
        # MatMul + Add into one quantized MatMul with bias, which it cannot do across Concat.
        users = consumers.get(y, [])
        bias = None
        if len(users) == 1 and users[0].op_type == "Add":
            other = [i for i in users[0].input if i != y]
            if len(other) == 1 and len(shapes.get(other[0], ())) == 1:
                bias, y = other[0], users[0].output[0]
                dropped.add(y)
        halves = []
        for half, start, stop in (("first", "split_start0", "split_start1"), ("rest", "split_start1", "split_end")):
            tag = "token0" if half == "first" else "tokens"
            nodes.append(helper.make_node("Slice", [x, start, stop, "split_axis"], [f"{name}_x_{half}"], name=f"{name}_{half}"))
            nodes.append(helper.make_node("MatMul", [f"{name}_x_{half}", w], [f"{name}_y_{half}"], name=f"{name}_{tag}"))
            if bias is not None:
                nodes.append(helper.make_node("Add", [f"{name}_y_{half}", bias], [f"{name}_yb_{half}"], name=f"{name}_{tag}_bias"))
            halves.append(f"{name}_yb_{half}" if bias is not None else f"{name}_y_{half}")
        nodes.append(helper.make_node("Concat", halves, [y], name=f"{name}_concat", axis=1))
        split.append(name)
    if split:
        graph.initializer.extend(numpy_helper.from_array(np.array([v], np.int64), k) for k, v in constants.items())
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.save(model, str(out_path))
    return split
