"""Reading and rewriting the .tflite flatbuffer: op names, weight buffers, tensor names.

Every TFLite pass here reads the model through ai-edge-litert's generated schema (no
interpreter) and rewrites it in place by buffer index, so what a pass changes is exactly the
bytes it names. Kept in one place because the writers (gptq_int4, gptq_int8), the Hessian tap
and the export report all need the same view of the file: which FULLY_CONNECTED /
EMBEDDING_LOOKUP weights exist, which ops of which signature read them, and where their bytes
are.
"""

from __future__ import annotations

import collections
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "EMBEDDING",
    "FC",
    "Weight",
    "buffer_view",
    "code_name",
    "compact_copy",
    "find_weights",
    "float_weights",
    "op_counts",
    "op_name",
    "read_model",
    "schema",
    "short_name",
    "weight_tensors",
    "write_model",
]

FC, EMBEDDING = "FULLY_CONNECTED", "EMBEDDING_LOOKUP"


def schema():
    """ai-edge-litert's generated flatbuffer schema (imported on first use)."""
    from ai_edge_litert import schema_py_generated

    return schema_py_generated


@functools.lru_cache(maxsize=1)  # one schema module; callers ask per op
def _builtin_names(schema) -> dict[int, str]:
    return {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}


def _code_name(names: dict[int, str], code) -> str:
    # Builtin codes >= 127 live in BuiltinCode; older ones in the deprecated int8 field.
    return names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), "UNKNOWN")


def code_name(code) -> str:
    """The builtin operator name of an OperatorCode table (e.g. "FULLY_CONNECTED")."""
    return _code_name(_builtin_names(schema()), code)


def op_name(schema, model, op) -> str:
    """The builtin operator name of `op` (e.g. "FULLY_CONNECTED")."""
    return _code_name(_builtin_names(schema), model.OperatorCodes(op.OpcodeIndex()))


def op_counts(path: Path) -> dict[str, dict[str, int]]:
    """Builtin operator counts per signature, read from the flatbuffer (no interpreter)."""
    fb = schema()
    model = fb.Model.GetRootAsModel(Path(path).read_bytes(), 0)
    names = _builtin_names(fb)
    codes = []
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        name = _code_name(names, code)
        if name == "CUSTOM":
            name = "CUSTOM:" + (code.CustomCode() or b"").decode()
        codes.append(name)
    counts = {}
    for i in range(model.SignatureDefsLength()):
        sig = model.SignatureDefs(i)
        graph = model.Subgraphs(sig.SubgraphIndex())
        counter = collections.Counter(
            codes[graph.Operators(o).OpcodeIndex()] for o in range(graph.OperatorsLength())
        )
        counts[sig.SignatureKey().decode()] = dict(counter.most_common())
    return counts


def buffer_view(data: bytearray | bytes, model, index: int) -> np.ndarray:
    """The bytes of buffer `index` as a uint8 view into `data` (writable if `data` is)."""
    buffer = model.Buffers(index)
    if buffer.Offset() > 1:  # stored after the flatbuffer (files > 2 GB, or by choice)
        return np.frombuffer(data, np.uint8, buffer.Size(), buffer.Offset())
    if buffer.DataLength() == 0:
        return np.zeros(0, np.uint8)
    return buffer.DataAsNumpy()


def _scope(graph, op) -> str:
    """ai-edge-quantizer's op scope: output tensor names joined by ';', with a trailing ';'."""
    names = [graph.Tensors(t).Name().decode() for t in op.OutputsAsNumpy() if t >= 0]
    return ";".join(names) + ";" if names else ""


@dataclass
class Weight:
    """One constant weight buffer and every op reading it (one per signature)."""

    kind: str  # FC or EMBEDDING
    buffer: int  # index in the FP32 model
    shape: tuple[int, ...]
    name: str  # the weight tensor's name in the first subgraph that reads it
    uses: list[tuple[int, int, str]]  # (subgraph, op index, scope)
    inputs: list[tuple[int, int]]  # (subgraph, activation tensor index) for FCs


def _read(model: Path | bytes) -> bytes:
    """A model's bytes: `model` itself, or the file it names (a pass that needs several views
    of one file reads it once and hands the bytes around)."""
    return model if isinstance(model, (bytes, bytearray)) else Path(model).read_bytes()


def find_weights(path: Path | bytes) -> dict[int, Weight]:
    """The constant float FULLY_CONNECTED and EMBEDDING_LOOKUP weights of the model at `path`
    (or in these bytes), by buffer index; a weight shared by several signatures is one entry
    with several uses."""
    fb = schema()
    data = _read(path)
    model = fb.Model.GetRootAs(data, 0)
    found: dict[int, Weight] = {}
    for s in range(model.SubgraphsLength()):
        graph = model.Subgraphs(s)
        for o in range(graph.OperatorsLength()):
            op = graph.Operators(o)
            kind = op_name(fb, model, op)
            if kind not in (FC, EMBEDDING) or op.InputsLength() < 2:
                continue
            tensor = graph.Tensors(op.Inputs(1))  # FC: (x, weight, bias); lookup: (ids, table)
            if (
                tensor.Type() != fb.TensorType.FLOAT32
                or not buffer_view(data, model, tensor.Buffer()).size
            ):
                continue  # not a constant float weight
            entry = found.setdefault(
                tensor.Buffer(),
                Weight(
                    kind,
                    tensor.Buffer(),
                    tuple(int(d) for d in tensor.ShapeAsNumpy()),
                    tensor.Name().decode(),
                    [],
                    [],
                ),
            )
            entry.uses.append((s, o, _scope(graph, op)))
            if kind == FC:
                entry.inputs.append((s, op.Inputs(0)))
    return found


def float_weights(path: Path | bytes, weights: list[Weight]) -> dict[int, np.ndarray]:
    """The FP32 values of `weights` (by buffer), copied out of the model at `path` (or these bytes)."""
    fb = schema()
    data = _read(path)
    model = fb.Model.GetRootAs(data, 0)
    return {
        w.buffer: buffer_view(data, model, w.buffer).view(np.float32).reshape(w.shape).copy()
        for w in weights
    }


def weight_tensors(model, weight: Weight) -> list[tuple[Any, Any]]:
    """(subgraph, tensor) each op using `weight` reads it from, in a quantized copy of the model
    (the quantizers keep subgraph and op order, so the FP32 model's op indices still apply)."""
    tensors = []
    for subgraph, op_index, _ in weight.uses:
        graph = model.Subgraphs(subgraph)
        tensors.append((graph, graph.Tensors(graph.Operators(op_index).Inputs(1))))
    return tensors


def short_name(name: bytes | None, subgraph: int, index: int) -> bytes:
    """A readable, unique short form of a litert-torch tensor name, which is the full Python
    module path of every op fused into it (';;'-joined), ~500 bytes: 1 MB of an INT4 MiniLM
    (7% of the file) was tensor names. Kept: the first fused location naming a Linear (the
    weight's own: a key projection is named 'LayerNorm;;Linear_key;;Linear_query'), else the
    last, as its last four module names, plus subgraph and tensor index (ai-edge-quantizer needs
    names unique across the model, and fused names repeat), e.g.
    'BertLayer_0/BertAttention_attention/BertSelfAttention_self/Linear_key#0.29'."""
    parts = (name or b"").decode("utf-8", errors="replace").rstrip(";").split(";;")
    own = next((p for p in parts if "Linear_" in p.rsplit("/", 1)[-1]), parts[-1])
    short = "/".join(segment.rsplit(".", 1)[-1] for segment in own.split("/")[-4:])
    return f"{short[-96:]}#{subgraph}.{index}".encode()


def read_model(path: Path | bytes):
    """The model at `path` (or in these bytes) as the schema's object tree (ModelT): what a pass
    edits before write_model."""
    from ai_edge_litert.tools import flatbuffer_utils

    return flatbuffer_utils.read_model_from_bytearray(bytearray(_read(path)))


def write_model(model, out_path: Path) -> None:
    """Serialize `model` (a ModelT) to `out_path`. Buffers of 1 KB or more go after the
    flatbuffer, 16-byte aligned, the layout ai-edge-quantizer writes
    (model_modifier._serialize_model); `model`'s large buffers are left emptied."""
    from ai_edge_litert.tools import flatbuffer_utils

    fb = schema()
    large = {}
    for index, buffer in enumerate(model.buffers):
        if buffer.data is not None and len(buffer.data) >= 1024:
            large[index] = np.asarray(buffer.data, np.uint8).reshape(-1)
            buffer.data, buffer.offset, buffer.size = None, 1, 1  # reserve the fields
    head = bytearray(flatbuffer_utils.convert_object_to_bytearray(model))
    packed = fb.Model.GetRootAs(head, 0)
    offset, pieces = (len(head) + 15) & ~15, []
    for index, values in large.items():
        flatbuffer_utils.update_packed_buffer(
            packed.Buffers(index), offset=offset, size=values.size
        )
        pieces.append((offset, values))
        offset = (offset + values.size + 15) & ~15
    with open(out_path, "wb") as out:  # piece by piece: no second copy of the weights in memory
        out.write(head)
        for start, values in pieces:
            out.write(b"\0" * (start - out.tell()))
            out.write(np.ascontiguousarray(values).data)
        out.write(b"\0" * (offset - out.tell()))


def compact_copy(in_path: Path, out_path: Path) -> None:
    """`in_path` with short tensor names (short_name) written to `out_path`; numerics, ops,
    signatures and weights unchanged, in write_model's layout."""
    model = read_model(in_path)
    for subgraph, graph in enumerate(model.subgraphs):
        for index, tensor in enumerate(graph.tensors):
            tensor.name = short_name(tensor.name, subgraph, index)
    write_model(model, out_path)
