"""Byte-level reading and patching of a .tflite flatbuffer, for what the generated accessors make
slow: tensor keys read straight from the bytes (~100 us a tensor through the accessors), and a
subgraph cut by rewriting a few offsets and appending small tables instead of re-serializing
the model (~0.3 s through the object API). Used by prefix.py, which scores a search's ranking
candidates from where they differ from its start model.

A flatbuffer table holds a signed distance to its vtable; the vtable lists, per field slot, the
field's offset from the table (0: absent). An offset field holds an unsigned distance forward
to what it references (a vector: a uint32 count, then the elements; a vector of tables: a
distance from each element to its table).
"""

from __future__ import annotations

import hashlib
import struct
from typing import Any

import numpy as np

__all__ = ["Patches", "RawTensors", "Tail", "Unprovable", "op_options", "op_signature", "op_tensors", "patch_cut",
           "patch_outputs", "tensor_names"]


class Unprovable(Exception):
    """Two tensors this module cannot prove equal (treated as different)."""


class RawTensors:
    """Keys of one subgraph's tensors read straight from the flatbuffer's bytes (the generated
    accessors cost ~100 us a tensor, most of a candidate's check). A tensor's key holds what an
    op reads from it: type, shape (and shape signature, variability), for a constant the sha256
    of its bytes, and its quantization, a block-quantized weight's scale and zero-point tensors by
    their keys. A field this reader does not know (a newer schema, sparsity) raises Unprovable."""

    # Tensor fields: shape, type, buffer, name, quantization, is_variable, (6: sparsity),
    # shape_signature, has_rank. QuantizationParameters: min, max, scale, zero_point,
    # details_type, details, quantized_dimension. BlockwiseQuantization: scales, zero_points,
    # block_size, block_shape.
    TENSOR, QUANT, BLOCKWISE = {0, 1, 2, 3, 4, 5, 7, 8}, set(range(7)), {0, 1, 2, 3}

    def __init__(self, model, data, sub, digests: dict[int, bytes]):
        self.data, self.digests = data, digests
        self.tensors = _ref(data, _field(sub, 0))  # Subgraph.tensors
        self.buffers = _ref(data, _field(model, 4))  # Model.buffers
        self.keys: dict[int, tuple] = {}

    def key(self, t: int) -> tuple:
        if t not in self.keys:
            self.keys[t] = self._key(t)
        return self.keys[t]

    def _key(self, t: int) -> tuple:
        data = self.data
        table = _element(data, self.tensors, t)
        fields = _present(data, table, self.TENSOR, "tensor")
        buffer = _scalar(data, fields, 2, "<I")
        key: list[Any] = [_scalar(data, fields, 1, "<b"), _vector(data, fields, 0, 4), _scalar(data, fields, 5, "<B"),
                          _vector(data, fields, 7, 4), _scalar(data, fields, 8, "<B"), self._digest(buffer)]
        if 4 in fields:
            quant = _ref(data, fields[4])
            q = _present(data, quant, self.QUANT, "quantization")
            details = _scalar(data, q, 4, "<B")
            key += [_vector(data, q, 0, 4), _vector(data, q, 1, 4), _vector(data, q, 2, 4), _vector(data, q, 3, 8),
                    details, _scalar(data, q, 6, "<i")]
            if details == 2:  # BlockwiseQuantization
                block = _present(data, _ref(data, q[5]), self.BLOCKWISE, "blockwise quantization")
                scales, zeros = _scalar(data, block, 0, "<i"), _scalar(data, block, 1, "<i")
                if not 0 <= scales != t:
                    raise Unprovable(f"blockwise scales tensor {scales}")
                key += [_scalar(data, block, 2, "<i"), _vector(data, block, 3, 4), self.key(scales),
                        self.key(zeros) if 1 in block and 0 <= zeros and zeros not in (scales, t) else zeros]
            elif details != 0:
                raise Unprovable(f"quantization details type {details}")
        return tuple(key)

    def _digest(self, buffer: int) -> bytes | None:
        """sha256 of a constant buffer's bytes (inline or stored after the flatbuffer); None
        for an activation's empty buffer."""
        if buffer <= 0:
            return None
        if buffer not in self.digests:
            data = self.data
            fields = _present(data, _element(data, self.buffers, buffer), {0, 1, 2}, "buffer")
            offset, size = _scalar(data, fields, 1, "<Q"), _scalar(data, fields, 2, "<Q")
            if offset > 1:
                content = bytes(data[offset:offset + size])
            else:
                content = _vector(data, fields, 0, 1)
            self.digests[buffer] = hashlib.sha256(content).digest() if content else b""
        return self.digests[buffer] or None


def _element(data, vector: int, index: int) -> int:
    """The table at `index` of the vector of tables at `vector`."""
    at = vector + 4 + 4 * index
    return at + struct.unpack_from("<I", data, at)[0]


def _present(data, table: int, known: set[int], what: str) -> dict[int, int]:
    """{field slot: its absolute position} of the fields `table` holds; a slot outside `known`
    raises Unprovable."""
    vtable = table - struct.unpack_from("<i", data, table)[0]
    size = struct.unpack_from("<H", data, vtable)[0]
    offsets = struct.unpack_from(f"<{(size - 4) // 2}H", data, vtable + 4)
    fields = {slot: table + offset for slot, offset in enumerate(offsets) if offset}
    unknown = set(fields) - known
    if unknown:
        raise Unprovable(f"{what} fields {sorted(unknown)}")
    return fields


def _scalar(data, fields: dict[int, int], slot: int, fmt: str):
    return struct.unpack_from(fmt, data, fields[slot])[0] if slot in fields else 0


def _ref(data, field: int) -> int:
    return field + struct.unpack_from("<I", data, field)[0]


def _vector(data, fields: dict[int, int], slot: int, width: int) -> bytes:
    if slot not in fields:
        return b""
    vector = _ref(data, fields[slot])
    count = struct.unpack_from("<I", data, vector)[0]
    return bytes(data[vector + 4:vector + 4 + count * width])


# -- patching ------------------------------------------------------------------------------------
# A table's field k is at the table's position plus the offset its vtable lists for it; an
# offset field holds an unsigned distance forward to what it references. New vectors and tables
# go after the end of the file (every reference from the existing tables points forward to
# them), 4-byte aligned; weights stored after the flatbuffer keep their absolute offsets.


class Tail:
    """Bytes appended after a file of `base` bytes; `at(n)` reserves n bytes and returns the
    absolute position of the reservation."""

    def __init__(self, base: int):
        self.base = (base + 15) & ~15
        self.pad = self.base - base
        self.data = bytearray()

    def at(self, size: int) -> int:
        position = self.base + len(self.data)
        self.data += b"\0" * ((size + 3) & ~3)
        return position

    def put(self, position: int, fmt: str, *values) -> None:
        struct.pack_into(fmt, self.data, position - self.base, *values)

    def bytes(self) -> bytes:
        return b"\0" * self.pad + bytes(self.data)


class Patches:
    """Writes into the file's bytes, remembering where (to write back only those)."""

    def __init__(self, data: bytearray):
        self.data, self.spans = data, []

    def unpack(self, fmt: str, position: int):
        return struct.unpack_from(fmt, self.data, position)[0]

    def pack(self, fmt: str, position: int, *values) -> None:
        struct.pack_into(fmt, self.data, position, *values)
        self.spans.append((position, struct.calcsize(fmt)))


def _field(table, slot: int) -> int:
    """The absolute position of field `slot` of a generated-API table object (which must hold it)."""
    offset = table._tab.Offset(4 + 2 * slot)
    if not offset:
        raise Unprovable(f"field {slot} of a table is absent")
    return table._tab.Pos + offset


def _point(data: Patches, field: int, target: int) -> None:
    """Make the offset field at `field` reference `target` (which lies after it)."""
    data.pack("<I", field, target - field)


def patch_cut(data: Patches, tail: Tail, sub, signature, point: int, crossing: list[int], prefix: str) -> None:
    """Cut subgraph `sub` at op `point`: its operators vector starts there (the length written
    over the last dropped entry; kept entries are distances from themselves, unchanged), its
    inputs are `crossing`, and the signature feeds them by the names "<prefix><tensor index>"."""
    ops_field = _field(sub, 3)  # Subgraph.operators
    vector = ops_field + data.unpack("<I", ops_field)
    count = data.unpack("<I", vector)
    data.pack("<I", vector + 4 * point, count - point)
    _point(data, ops_field, vector + 4 * point)

    inputs = tail.at(4 + 4 * len(crossing))  # Subgraph.inputs: [int]
    tail.put(inputs, f"<I{len(crossing)}i", len(crossing), *crossing)
    _point(data, _field(sub, 1), inputs)

    _point(data, _field(signature, 0), _tensor_maps(tail, [(f"{prefix}{t}", t) for t in crossing]))


def patch_outputs(data: Patches, tail: Tail, sub, signature, extra: list[int], prefix: str) -> None:
    """Make the activation tensors `extra` outputs of subgraph `sub` as well, each named
    "<prefix><tensor index>" in `signature` (its own outputs kept, in their order): also one
    that is an output already, under its second name, as the tap names it (a reader of the
    prefixed names finds every one of `extra`)."""
    own = [int(t) for t in sub.OutputsAsNumpy()]
    outputs = own + [t for t in extra if t not in own]
    vector = tail.at(4 + 4 * len(outputs))  # Subgraph.outputs: [int]
    tail.put(vector, f"<I{len(outputs)}i", len(outputs), *outputs)
    _point(data, _field(sub, 2), vector)
    maps = [(signature.Outputs(i).Name().decode(), signature.Outputs(i).TensorIndex())
            for i in range(signature.OutputsLength())]
    _point(data, _field(signature, 1), _tensor_maps(tail, maps + [(f"{prefix}{t}", t) for t in extra]))


def _tensor_maps(tail: Tail, entries: list[tuple[str, int]]) -> int:
    """A new vector of SignatureDef TensorMaps {name: string, tensor_index: uint} in `tail`, one
    vtable shared; its position."""
    maps = tail.at(4 + 4 * len(entries))
    vtable = tail.at(8)
    tail.put(vtable, "<4H", 8, 12, 4, 8)
    tables = [tail.at(12) for _ in entries]
    names = [tail.at(4 + len(name.encode()) + 1) for name, _ in entries]
    tail.put(maps, "<I", len(entries))
    for i, ((name, t), table, at) in enumerate(zip(entries, tables, names)):
        text = name.encode()
        tail.put(maps + 4 + 4 * i, "<I", table - (maps + 4 + 4 * i))
        tail.put(table, "<iII", table - vtable, at - (table + 4), t)
        tail.put(at, f"<I{len(text)}s", len(text), text)
    return maps


# -- reading ops and signatures -------------------------------------------------------------------


def tensor_names(signature) -> tuple:
    """A signature's (input maps, output maps) as (name, tensor index) pairs."""
    return (tuple((signature.Inputs(i).Name(), signature.Inputs(i).TensorIndex()) for i in range(signature.InputsLength())),
            tuple((signature.Outputs(i).Name(), signature.Outputs(i).TensorIndex())
                  for i in range(signature.OutputsLength())))


def op_tensors(op) -> tuple:
    """(the tensor indices an op reads, those it writes)."""
    inputs, outputs = op.InputsAsNumpy(), op.OutputsAsNumpy()  # 0, not an array, when absent
    return (tuple(int(t) for t in inputs) if isinstance(inputs, np.ndarray) else (),
            tuple(int(t) for t in outputs) if isinstance(outputs, np.ndarray) else ())


def op_signature(op, codes: list[tuple]) -> tuple:
    """What an op is apart from its tensors' contents: its code and version, the tensors it reads
    and writes (by index), its options."""
    return (codes[op.OpcodeIndex()], *op_tensors(op), op_options(op))


def op_options(op) -> tuple:
    """An op's options as bytes: the options table's vtable and inline fields (scalars; a table
    whose fields reference vectors compares by their offsets, so equal contents may still count
    as different, never the other way round), and its custom options."""
    parts: list[Any] = []
    for kind, get in (("BuiltinOptionsType", "BuiltinOptions"), ("BuiltinOptions2Type", "BuiltinOptions2")):
        if not hasattr(op, kind):
            continue
        parts.append(getattr(op, kind)())
        table = getattr(op, get)() if parts[-1] else None
        if table is not None:
            buf, pos = table.Bytes, table.Pos
            vtable = pos - struct.unpack_from("<i", buf, pos)[0]
            size, inline = struct.unpack_from("<HH", buf, vtable)
            parts += [bytes(buf[vtable:vtable + size]), bytes(buf[pos + 4:pos + inline])]
    parts.append(op.CustomOptionsAsNumpy().tobytes() if op.CustomOptionsLength() else b"")
    return tuple(parts)
