"""4-bit blocks for onnxruntime's INT4 ops: the values (round-to-nearest or clip search per
block) and the nodes (MatMulNBits / GatherBlockQuantized as MatMulNBitsQuantizer writes them,
with our values swapped in). converters/onnx/quantize_int4.py assembles models from them.

clip_search: per block, a grid over shrink ratios of min and max that minimises
sum_k E[x_k^2] (w_k - dq(w_k))^2, the output error of the layer when inputs are uncorrelated,
with E[x_k^2] measured on the calibration batches (tables: plain squared error).
"""

from __future__ import annotations

import logging
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from converters._console import CountCallback
from converters._errors import ConversionError, UnsupportedModelError

INT4_OPSET = 21  # INT4/UINT4 tensors need opset 21 (and IR version 10)
# Shrink ratios of a block's min and max tried by clip_search. 16 x 16 pairs; the prototype's
# 26 x 26 took 2.6x longer (4.9 s vs 1.9 s for one 384 x 1536 weight on 2 cores).
_WEIGHT_RATIOS = np.linspace(0.5, 1.0, 16, dtype=np.float32)
_TABLE_RATIOS = np.linspace(0.7, 1.0, 11, dtype=np.float32)  # tables: only rare outliers to clip

# ----------------------------------------------------------------------------- block quantization


def _pack_nibbles(values: np.ndarray) -> np.ndarray:
    """Pairs along the last axis (even length) into bytes, the first value in the low nibble."""
    return (values[..., 0::2] | (values[..., 1::2] << 4)).astype(np.uint8)


def _blocks(matrix: np.ndarray, block: int) -> np.ndarray:
    """[K, N] -> [N, K/block, block], zero-padded along K (MatMulNBits' layout)."""
    rows, cols = matrix.shape
    padded = np.zeros((-(-rows // block) * block, cols), np.float32)
    padded[:rows] = matrix
    return np.ascontiguousarray(padded.T.reshape(cols, -1, block))


# Elements of `blocks` per _clip_search step: each of the grid's ~10 array passes then stays in
# the CPU cache. Whole-array passes over MiniLM's word table (11.7 M values, 121 grid points)
# made rpi5's 4-bit table step take 15 s, steps of 2^16 elements 5 s (benchmarks/RESULTS.md run
# T, AVX-512 VNNI Xeon), with identical results: every value and every per-block sum is computed
# alike whatever the step.
_CLIP_STEP_ELEMENTS = 1 << 16


def _clip_search(blocks: np.ndarray, importance: np.ndarray | None, ratios: np.ndarray,
                 progress: CountCallback | None = None):
    """Per block [.., block]: 4-bit asymmetric (q, scale, zero_point) from the grid of (min, max)
    shrink ratios with the least importance-weighted squared error. `importance` broadcasts
    against `blocks` (E[x^2] per input channel) or is None (plain squared error). The grid
    contains (1, 1), plain round-to-nearest, so the error never exceeds RTN's. Runs over the
    leading axis in cache-sized steps (_CLIP_STEP_ELEMENTS), on _clip_threads() threads (numpy
    releases the GIL inside each pass; every step is computed alone, so the result is the same
    bytes whatever the thread count); `progress(rows done, rows)` hears each finished step."""
    if importance is not None and importance.ndim == blocks.ndim and importance.shape[0] not in (1, blocks.shape[0]):
        raise ValueError(f"importance {importance.shape} does not broadcast against blocks {blocks.shape}")
    total = blocks.shape[0]
    rows = max(1, _CLIP_STEP_ELEMENTS // max(1, int(np.prod(blocks.shape[1:]))))
    if total <= rows:
        result = _clip_search_rows(blocks, importance, ratios)
        if progress is not None:
            progress(total, total)
        return result

    def step(start: int):
        weight = importance
        if importance is not None and importance.ndim == blocks.ndim and importance.shape[0] == total:
            weight = importance[start : start + rows]  # one importance row per block row
        return _clip_search_rows(blocks[start : start + rows], weight, ratios)

    starts = range(0, total, rows)
    parts = []
    pool = ThreadPoolExecutor(max_workers=_clip_threads())
    try:
        # map() keeps the order of the steps; results are told as they come in that order.
        for start, part in zip(starts, pool.map(step, starts)):
            parts.append(part)
            if progress is not None:
                progress(min(start + rows, total), total)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # a Ctrl-C waits for the running steps only
    return tuple(np.concatenate(part) for part in zip(*parts))


def _clip_threads() -> int:
    """Threads of the clip search: the CPUs this process may use (MiniLM's tables inside an rpi4
    conversion on a 2-vCPU Xeon: 8.1 s on one thread, 4.4 s on two; benchmarks/RESULTS.md run AZ)."""
    from edge_runtime._select import usable_cpus

    return max(1, usable_cpus())


def _clip_search_rows(blocks: np.ndarray, importance: np.ndarray | None, ratios: np.ndarray):
    """_clip_search on one step of rows. Per grid point, the dequantized value is computed as
    clip(round(x / scale), -zero, 15 - zero) * scale: the same floats as
    (clip(round(x / scale) + zero, 0, 15) - zero) * scale (small integers are exact in floating point)
    in two fewer passes over the step, and without importance no multiply by ones."""
    low0 = np.minimum(blocks.min(-1), 0.0)
    high0 = np.maximum(blocks.max(-1), 0.0)
    best_err = np.full(low0.shape, np.inf, np.float32)
    best_low, best_high = low0.copy(), high0.copy()
    for a in ratios:
        for b in ratios:
            low, high = low0 * a, high0 * b
            scale = np.maximum((high - low) / 15.0, 1e-12)
            zero = np.clip(np.round(-low / scale), 0, 15)[..., None]
            levels = np.round(blocks / scale[..., None])
            np.clip(levels, -zero, 15.0 - zero, out=levels)
            levels *= scale[..., None]
            diff = np.subtract(blocks, levels, out=levels)
            diff *= diff
            if importance is not None:
                diff *= importance
            err = diff.sum(-1)
            better = err < best_err
            best_err = np.where(better, err, best_err)
            best_low = np.where(better, low, best_low)
            best_high = np.where(better, high, best_high)
    scale = np.maximum((best_high - best_low) / 15.0, 1e-12).astype(np.float32)
    zero = np.clip(np.round(-best_low / scale), 0, 15)
    q = np.clip(np.round(blocks / scale[..., None]) + zero[..., None], 0, 15).astype(np.uint8)
    return q, scale, zero.astype(np.uint8)


def _clip_matmul_weight(
    weight: np.ndarray, block: int, mean_square: np.ndarray
) -> dict[str, np.ndarray]:
    """MatMulNBits 4-bit initializers (suffix -> array) for weight [K, N]."""
    rows = weight.shape[0]
    importance = np.zeros(-(-rows // block) * block, np.float32)
    importance[:rows] = mean_square + 1e-12 * mean_square.max()  # dead channels still break ties
    q, scale, zero = _clip_search(
        _blocks(weight, block), importance.reshape(1, -1, block), _WEIGHT_RATIOS
    )
    n_blocks = q.shape[1]
    # Zero points pack per column (row of [N, nb]); an odd count is padded with 8, as ORT does.
    zero = np.pad(zero, ((0, 0), (0, n_blocks % 2)), constant_values=8)
    return {"_Q4": _pack_nibbles(q), "_scales": scale, "_zero_points": _pack_nibbles(zero)}


def _clip_table(table: np.ndarray, block: int, progress: CountCallback | None = None) -> dict[str, Any]:
    """GatherBlockQuantized UINT4 initializers for table [rows, dim], blocks along dim
    (`progress`: the clip search's rows, _clip_search)."""
    from onnx import TensorProto

    rows, dim = table.shape
    q, scale, zero = _clip_search(_blocks(table.T, block), None, _TABLE_RATIOS, progress)
    q = q.reshape(rows, -1)[:, :dim]
    # ONNX packs INT4/UINT4 over the flattened tensor, not per row (odd totals get one pad nibble).
    flat_q, flat_zero = q.reshape(-1), zero.reshape(-1)
    flat_q = np.pad(flat_q, (0, flat_q.size % 2))
    flat_zero = np.pad(flat_zero, (0, flat_zero.size % 2))
    return {
        "_Q4": (TensorProto.UINT4, [rows, dim], _pack_nibbles(flat_q).tobytes()),
        "_scales": scale,
        "_zero_points": (TensorProto.UINT4, list(scale.shape), _pack_nibbles(flat_zero).tobytes()),
    }


# ----------------------------------------------------------------------------- graph handling


@dataclass
class _Parts:
    """Replacement node and the initializers it reads, per original node name."""

    nodes: dict[str, Any]
    initializers: dict[str, dict[str, Any]]  # node -> {initializer name: TensorProto}


def _to_opset21(model):
    from onnx import version_converter

    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if opset > INT4_OPSET:
        raise UnsupportedModelError(
            f"INT4 pass supports opset <= {INT4_OPSET}, the model has opset {opset}"
        )
    if opset == INT4_OPSET:
        return model
    # MatMulNBitsQuantizer only relabels the opset to 21 when it writes INT4 tensors; ops whose
    # signature changed (ReduceL2 axes became an input at 18) then fail to load. Convert for real.
    try:
        converted = version_converter.convert_version(model, INT4_OPSET)
    except Exception as exc:  # the converter raises plain RuntimeError/ValidationError
        raise UnsupportedModelError(
            f"converting the graph from opset {opset} to {INT4_OPSET} (needed for INT4 tensors) failed: "
            f"{exc}. Export with a plain (unfused) graph, or at opset {INT4_OPSET}."
        ) from exc
    converted.ir_version = max(converted.ir_version, 10)
    return converted


def _name_nodes(model) -> None:
    """Nodes are tracked by name (and ORT names its replacements after them): name any that lack one."""
    taken = {n.name for n in model.graph.node}
    for index, node in enumerate(model.graph.node):
        if not node.name:
            node.name = next(
                f"{node.op_type}_int4_{index}_{k}"
                for k in range(len(taken) + 1)
                if f"{node.op_type}_int4_{index}_{k}" not in taken
            )
            taken.add(node.name)


def _targets(model, embedding_min_elements: int) -> tuple[dict[str, str], dict[str, str]]:
    """(MatMul node -> weight, Gather node -> table) for constant float weights that qualify."""
    from onnx import TensorProto

    inits = {i.name: i for i in model.graph.initializer}
    consumers: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers[name] = consumers.get(name, 0) + 1
    matmuls, tables = {}, {}
    for node in model.graph.node:
        if node.op_type == "MatMul" and len(node.input) > 1:
            weight = inits.get(node.input[1])
            if (
                weight is not None
                and weight.data_type == TensorProto.FLOAT
                and len(weight.dims) == 2
            ):
                matmuls[node.name] = weight.name
        elif node.op_type == "Gather":
            table = inits.get(node.input[0])
            if (
                table is not None
                and table.data_type == TensorProto.FLOAT
                and len(table.dims) == 2
                and math.prod(table.dims) >= embedding_min_elements
                and consumers.get(table.name) == 1  # a tied table is also a MatMul weight
                and all(a.name != "axis" or a.i == 0 for a in node.attribute)
            ):
                tables[node.name] = table.name
    return matmuls, tables


def _ort_quantize(
    model, nodes: dict[str, str], op_type: str, bits: int, block: int, level: int
) -> _Parts:
    """Run onnxruntime's MatMulNBitsQuantizer (RTN) on `nodes` of a copy of `model` and harvest
    the node each became and the initializers it reads."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(
        logging.WARNING
    )  # INFO per node

    if not nodes:
        return _Parts({}, {})
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    quantizer = MatMulNBitsQuantizer(
        copy,
        bits=bits,
        block_size=block,
        is_symmetric=False,
        accuracy_level=level,
        nodes_to_exclude=[n.name for n in copy.graph.node if n.name not in nodes],
        op_types_to_quantize=(op_type,),
        quant_axes=(("MatMul", 0), ("Gather", 1)),
    )
    with np.errstate(
        divide="ignore", invalid="ignore"
    ):  # ORT's RTN divides by 0 on all-zero rows (padding)
        quantizer.process()
    graph = quantizer.model.model.graph
    inits = {i.name: i for i in graph.initializer}
    suffix = f"_Q{bits}" if op_type == "MatMul" else "_Q4"
    made = {
        n.name[: -len(suffix)]: n
        for n in graph.node
        if n.name.endswith(suffix) and n.name[: -len(suffix)] in nodes
    }
    missing = sorted(set(nodes) - set(made))
    if missing:
        raise ConversionError(
            f"onnxruntime's MatMulNBitsQuantizer left {missing} unquantized ({op_type}, {bits}-bit)"
        )
    return _Parts(
        made, {name: {i: inits[i] for i in node.input if i in inits} for name, node in made.items()}
    )


def _with_values(parts: _Parts, node_name: str, values: dict[str, Any]) -> None:
    """Overwrite the harvested initializers of `node_name` (by name suffix) with new values."""
    from onnx import helper, numpy_helper

    for init_name, tensor in parts.initializers[node_name].items():
        suffix = next((s for s in values if init_name.endswith(s)), None)
        if suffix is None:
            continue
        value = values[suffix]
        if isinstance(value, tuple):
            new = helper.make_tensor(init_name, value[0], value[1], value[2], raw=True)
        else:
            new = numpy_helper.from_array(value.reshape(tuple(tensor.dims)), init_name)
        if tuple(new.dims) != tuple(tensor.dims) or new.data_type != tensor.data_type:
            raise ConversionError(
                f"{init_name}: new value {list(new.dims)} type {new.data_type} does not match "
                f"onnxruntime's layout {list(tensor.dims)} type {tensor.data_type}"
            )
        parts.initializers[node_name][init_name] = new


