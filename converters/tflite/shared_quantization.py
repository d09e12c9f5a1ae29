"""Pass: store each distinct set of quantization parameters once in a .tflite file.

Why: export_tflite writes one subgraph per sequence bucket (MiniLM: 4), and every subgraph has
its own tensor table. The weights are shared (one buffer each), but a quantized tensor's
parameters (scale and zero point per channel) live inline in each subgraph's tensor, so the
per-row parameters of a quantized embedding table (30,522 rows x a float32 scale and an int64
zero point) are written once per bucket: 1.8 of MiniLM's 26.8 MB tflite-int8 file repeated
identical parameters (benchmarks/RESULTS.md run AS).

A flatbuffer may reference one table from several places (an offset is only a distance to an
object built earlier), so the file is re-serialized with every QuantizationParameters table of
equal contents packed once and referenced by each tensor that has it. Buffers, ops, signatures
and every value a kernel reads are unchanged: the interpreter computes the same bits.

Precondition: a .tflite readable by ai-edge-litert's generated schema. Postcondition (checked):
the rewritten file holds the same QuantizationParameters per tensor, value for value.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from converters._errors import ConversionError
from converters.tflite.flatbuffer import read_model, schema, write_model

__all__ = ["share_quantization"]

# Parameter sets smaller than this (bytes of scales and zero points) are written per tensor: a
# shared table saves nothing there.
MIN_SHARED_BYTES = 64


def _canonical(params) -> tuple | None:
    """Everything a QuantizationParameters table holds, as a comparable value."""
    if params is None:
        return None
    arrays = tuple(None if a is None else (np.asarray(a).dtype.str, np.asarray(a).shape, np.asarray(a).tobytes())
                   for a in (params.scale, params.zeroPoint, params.min, params.max))
    details = None if params.details is None else (
        type(params.details).__name__, sorted((k, repr(v)) for k, v in vars(params.details).items()))
    return arrays, params.quantizedDimension, params.detailsType, details


def _key(params) -> tuple | None:
    """What makes two QuantizationParameters the same shared table; None: packed per tensor
    (block-wise details and other unions, or too small to matter)."""
    if params.details is not None or params.detailsType:
        return None
    canonical = _canonical(params)
    if sum(len(a[2]) for a in canonical[0] if a is not None) < MIN_SHARED_BYTES:
        return None
    return canonical


@contextlib.contextmanager
def _packed_once() -> Iterator[None]:
    """While active, QuantizationParametersT.Pack returns the offset of an equal table already
    packed into the same builder instead of packing it again."""
    cls = schema().QuantizationParametersT
    original = cls.Pack
    packed: dict[tuple, int] = {}

    def pack(self, builder):
        key = _key(self)
        if key is None:
            return original(self, builder)
        key = (id(builder), key)
        if key not in packed:
            packed[key] = original(self, builder)
        return packed[key]

    cls.Pack = pack
    try:
        yield
    finally:
        cls.Pack = original


def _parameters(model) -> list[tuple | None]:
    return [_canonical(tensor.quantization) for graph in model.subgraphs for tensor in graph.tensors]


def share_quantization(path: Path) -> int:
    """Rewrite the .tflite at `path` with equal quantization parameters stored once (see the
    module docstring); the bytes saved (0: nothing is repeated, and the file is left as it was, or
    it was shared already)."""
    path = Path(path)
    model = read_model(path)
    before = _parameters(model)
    shared = [_key(t.quantization) for graph in model.subgraphs for t in graph.tensors if t.quantization is not None]
    shared = [key for key in shared if key is not None]
    if len(shared) == len(set(shared)):
        return 0
    size = path.stat().st_size
    temporary = path.with_name(f".{path.name}.shared")
    try:
        with _packed_once():
            write_model(model, temporary)
        if _parameters(read_model(temporary)) != before:
            raise ConversionError(f"sharing the quantization parameters of {path.name} changed them: a bug")
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return size - path.stat().st_size
