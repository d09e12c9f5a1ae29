"""Pass: give the first token of each FFN MatMul its own dynamic quantization scale.

Encoders put a massive activation on token 0 ([CLS] / <s>, an "attention sink"): in MiniLM ~28
in one FFN input channel against 4-8 for every other token. Dynamic INT8 quantizes each MatMul
input with a single scale, so that one value coarsens the steps for all other tokens, and short
sentences suffer most. The rewrite

    Y = MatMul(X, W)   ->   Y = Concat(MatMul(X[:, :1], W), MatMul(X[:, 1:], W), axis=1)

is exact in FP32; after quantization each half gets its own scale. Applied to the FFN MatMuls
(the weights of shape [hidden, intermediate] or [intermediate, hidden]) whose input is
[batch, sequence, features]; quantize_int8 stores the shared weight once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["SplitConfig", "split_first_token"]


@dataclass(frozen=True)
class SplitConfig:
    hidden_size: int
    intermediate_size: int


def split_first_token(model_path: Path, out_path: Path, config: SplitConfig) -> list[str]:
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(model_path))
    graph = model.graph
    shapes = {i.name: tuple(i.dims) for i in graph.initializer}
    ffn = {(config.hidden_size, config.intermediate_size), (config.intermediate_size, config.hidden_size)}
    constants = {"split_start0": 0, "split_start1": 1, "split_end": np.iinfo(np.int64).max, "split_axis": 1}
    split, nodes = [], []
    for node in graph.node:
        if node.op_type != "MatMul" or shapes.get(node.input[1]) not in ffn:
            nodes.append(node)
            continue
        x, w, y, name = node.input[0], node.input[1], node.output[0], node.name
        nodes += [
            helper.make_node("Slice", [x, "split_start0", "split_start1", "split_axis"], [f"{name}_x_first"], name=f"{name}_first"),
            helper.make_node("Slice", [x, "split_start1", "split_end", "split_axis"], [f"{name}_x_rest"], name=f"{name}_rest"),
            helper.make_node("MatMul", [f"{name}_x_first", w], [f"{name}_y_first"], name=f"{name}_token0"),
            helper.make_node("MatMul", [f"{name}_x_rest", w], [f"{name}_y_rest"], name=f"{name}_tokens"),
            helper.make_node("Concat", [f"{name}_y_first", f"{name}_y_rest"], [y], name=f"{name}_concat", axis=1),
        ]
        split.append(name)
    if split:
        graph.initializer.extend(numpy_helper.from_array(np.array([v], np.int64), k) for k, v in constants.items())
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.save(model, str(out_path))
    return split
