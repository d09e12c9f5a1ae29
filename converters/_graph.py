"""Small ONNX graph helpers shared by the passes."""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["inline_identity_constants", "model_bytes", "without_weight_values"]


def inline_identity_constants(graph) -> int:
    """Point consumers of Identity(initializer) at the initializer itself and drop the Identity.

    torch.onnx.export writes equal parameters (e.g. all-zero biases of a fresh model) once and
    reads the copies through Identity nodes; passes that look for constant weights or biases
    would otherwise miss them. Identities that produce a graph output are kept. Returns the
    number of nodes removed."""
    constants = {i.name for i in graph.initializer}
    outputs = {o.name for o in graph.output}
    alias = {
        node.output[0]: node.input[0]
        for node in graph.node
        if node.op_type == "Identity" and node.input[0] in constants and node.output[0] not in outputs
    }
    if not alias:
        return 0
    kept = [node for node in graph.node if not (node.op_type == "Identity" and node.output[0] in alias)]
    for node in kept:
        for index, name in enumerate(node.input):
            if name in alias:
                node.input[index] = alias[name]
    del graph.node[:]
    graph.node.extend(kept)
    return len(alias)


def model_bytes(path: Path) -> int:
    """Bytes of an .onnx file plus the external data files it references."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    files = {
        entry.value
        for init in model.graph.initializer
        if init.data_location == onnx.TensorProto.EXTERNAL
        for entry in init.external_data
        if entry.key == "location"
    }
    return Path(path).stat().st_size + sum((Path(path).parent / f).stat().st_size for f in files)


def without_weight_values(model, keep: int = 64):
    """A copy of `model` whose initializers above `keep` elements hold no values, only their
    name, type and dims: what shape inference reads of a weight. Small ones (shapes, axes,
    indices, which inference may read) keep theirs. onnx hands its C++ inference a serialized
    model, weights included, and a Pi search rewrites every candidate it scores: on MiniLM's rpi4
    onnx-int4 the copy infers the same 1,402 shapes in 11 ms instead of 40 ms (AVX2 code;
    benchmarks/bench_exact_rewrite.py, RESULTS.md run AJ)."""
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for init in copy.graph.initializer:
        if int(np.prod(init.dims)) > keep:
            for field in ("raw_data", "float_data", "int32_data", "int64_data", "double_data", "uint64_data",
                          "string_data", "external_data"):
                init.ClearField(field)
            init.data_location = onnx.TensorProto.DEFAULT
    return copy
