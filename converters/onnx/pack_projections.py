"""Pass: pack MatMuls that read the same input into one (e.g. attention's Q, K and V).

    Add(MatMul(x, Wq), bq), Add(MatMul(x, Wk), bk), Add(MatMul(x, Wv), bv)
 -> Split(Add(MatMul(x, [Wq|Wk|Wv]), [bq|bk|bv]), axis=-1)

Exact in FP32. Why: after INT8 quantization each MatMul quantizes its input on its own
(a DynamicQuantizeLinear, a smoothing Mul, a token-0 split), so three projections of one tensor
pay that three times and run three narrow GEMMs; packed, they pay once and run one GEMM with
N = 3 x hidden, which MLAS packs and threads better. Measured on MiniLM INT8 (x86, 2 threads),
see benchmarks/RESULTS.md. The bias Add is packed too so onnxruntime still fuses it into the
quantized MatMul.

Precondition: MatMuls with constant 2-D weights of the same input width; a group is packed only
when every member has a constant bias Add (or none has). The output names of the graph are
unchanged, so later passes and the validation see the same model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from converters._graph import inline_identity_constants

__all__ = ["PackConfig", "pack_projections"]


@dataclass(frozen=True)
class PackConfig:
    min_group: int = 2  # pack groups of at least this many MatMuls reading one tensor


def _bias_add(graph, node, inits, consumers) -> Any | None:
    """The Add that adds a constant 1-D bias to `node`'s output, if that is its only consumer."""
    users = consumers.get(node.output[0], [])
    if len(users) != 1 or users[0].op_type != "Add":
        return None
    add = users[0]
    other = add.input[1] if add.input[0] == node.output[0] else add.input[0]
    bias = inits.get(other)
    return add if bias is not None and len(bias.dims) == 1 else None


def pack_projections(model_path: Path, out_path: Path, config: PackConfig = PackConfig()) -> list[dict]:
    """Rewrite `model_path` into `out_path`; returns one entry per packed group."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(model_path))
    graph = model.graph
    inline_identity_constants(graph)
    inits = {i.name: i for i in graph.initializer}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    groups: dict[str, list] = {}
    for node in graph.node:
        weight = inits.get(node.input[1]) if node.op_type == "MatMul" and len(node.input) > 1 else None
        if weight is not None and len(weight.dims) == 2 and weight.data_type == onnx.TensorProto.FLOAT:
            groups.setdefault(node.input[0], []).append(node)

    # Nodes are keyed by their first output (unique in a valid graph; names may be empty).
    replace: dict[str, list] = {}  # first member of a group -> the nodes replacing the group
    drop: set[str] = set()
    packed = []
    for x, members in groups.items():
        if len(members) < config.min_group:
            continue
        widths = {tuple(inits[m.input[1]].dims)[0] for m in members}
        adds = [_bias_add(graph, m, inits, consumers) for m in members]
        if len(widths) != 1 or (any(adds) and not all(adds)):
            continue
        weights = [numpy_helper.to_array(inits[m.input[1]]) for m in members]
        sizes = [w.shape[1] for w in weights]
        base = members[0].name or f"packed_{len(packed)}"
        w_name, y_name = f"{base}_packed_weight", f"{base}_packed_output"
        graph.initializer.append(numpy_helper.from_array(np.concatenate(weights, axis=1), w_name))
        nodes = [helper.make_node("MatMul", [x, w_name], [y_name], name=f"{base}_packed")]
        if all(adds):
            biases = []
            for m, add in zip(members, adds):
                other = add.input[1] if add.input[0] == m.output[0] else add.input[0]
                biases.append(numpy_helper.to_array(inits[other]))
            b_name = f"{base}_packed_bias"
            graph.initializer.append(numpy_helper.from_array(np.concatenate(biases), b_name))
            nodes.append(helper.make_node("Add", [y_name, b_name], [f"{y_name}_biased"], name=f"{base}_packed_bias_add"))
            y_name = f"{y_name}_biased"
            outputs = [add.output[0] for add in adds]
            drop.update(add.output[0] for add in adds)
        else:
            outputs = [m.output[0] for m in members]
        split_name = f"{base}_packed_split_sizes"
        graph.initializer.append(numpy_helper.from_array(np.array(sizes, np.int64), split_name))
        nodes.append(helper.make_node("Split", [y_name, split_name], outputs, name=f"{base}_packed_split", axis=-1))
        replace[members[0].output[0]] = nodes
        drop.update(m.output[0] for m in members[1:])
        packed.append({"input": x, "nodes": [m.name for m in members], "weights": [m.input[1] for m in members],
                       "packed_weight": w_name, "widths": sizes})
    if not packed:
        onnx.save(model, str(out_path))
        return []
    new_nodes = []
    for node in graph.node:
        if node.output[0] in replace:
            new_nodes.extend(replace[node.output[0]])
        elif node.output[0] not in drop:
            new_nodes.append(node)
    del graph.node[:]
    graph.node.extend(new_nodes)
    used = {name for node in graph.node for name in node.input}
    kept = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    onnx.save(model, str(out_path))
    return packed
