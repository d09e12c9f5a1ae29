"""Pass: 4-bit embedding tables gathered as 8-bit codes that onnxruntime unpacks when the
session starts, instead of by GatherBlockQuantized.

quantize_int4.quantize_tables_int4 stores large Gather tables as GatherBlockQuantized UINT4
(blocks of B values along the row, one float scale and one UINT4 zero point per block). The
values are right, but onnxruntime's CPU kernel dequantizes element by element with three 64-bit
divisions per element (contrib_ops/cpu/quantization/gather_block_quantized.cc): on an AMD EPYC
(Zen 3, AVX2, 2 threads) MiniLM's two 4-bit tables took 1.05 ms of a 31 ms run at 128 tokens,
more than its 6 Softmax (benchmarks/profile_onnx_ops.py, /work/notes/int8_avx2_profile.md).
This pass keeps the file 4-bit and writes the same arithmetic with plain ops:

    load time (constant folding, any optimization level >= basic):
        codes  = Cast(table_uint4 -> uint8)                  [R, C]   (R x C bytes in memory)
        offset = Cast(zero_points_uint4 -> float) * scales   [R, C / B]
    per run:
        q      = Cast(Gather(codes, ids) -> float)           [..., C / B, B]
        value  = q * Gather(scales, ids) - Gather(offset, ids)   (broadcast over each block)

(q - z) * s and q * s - z * s differ by one float rounding; the artifact is validated as
written. Memory after load: the unpacked codes (11.7 MB for MiniLM's word table) instead of the
4-bit table; the file is unchanged in size.

Preconditions: GatherBlockQuantized nodes with UINT4 data, gather_axis 0, quantize_axis 1 (the
last axis of a 2-D table), float scales and UINT4 zero points, indices of known rank. A row
that is not a whole number of blocks is padded with zero codes at load and sliced back.
Postcondition, checked on the result: no GatherBlockQuantized is left, and the rewritten
gathers return what GatherBlockQuantized returned for every row of every table (compared with
onnxruntime on the workstation, to 1e-6 of the row's largest value).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from converters._errors import ConversionError

__all__ = ["UnpackedTablesConfig", "gather_tables_unpacked"]

CONFIG_VERSION = 1


@dataclass(frozen=True)
class UnpackedTablesConfig:
    check_rows: int = 0  # rows per table compared against GatherBlockQuantized; 0 = all

    def describe(self) -> dict:
        return {"config_version": CONFIG_VERSION, "kernel": "gather-unpacked-uint8"}


def gather_tables_unpacked(
    model_path: Path, out_path: Path, config: UnpackedTablesConfig = UnpackedTablesConfig()
) -> list[dict[str, Any]]:
    """Rewrite every GatherBlockQuantized of `model_path` into `out_path`; returns one entry per
    table."""
    import onnx

    model = onnx.load(str(model_path))
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    ranks = _ranks(model)
    nodes, changed, originals, added = [], [], [], []
    for node in graph.node:
        if node.op_type != "GatherBlockQuantized":
            nodes.append(node)
            continue
        new_nodes, new_inits = _rewrite(node, inits, ranks)
        nodes.extend(new_nodes)
        added.extend(new_inits)
        originals.append(node)
        table = inits[node.input[0]]
        changed.append(
            {
                "node": node.name,
                "table": node.input[0],
                "shape": list(table.dims),
                "unpacked_bytes": int(np.prod(table.dims)),
            }
        )
    if not changed:
        onnx.save(model, str(out_path))
        return []
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(added)
    _check(originals, inits, ranks, model, config)
    onnx.save(model, str(out_path))
    return changed


def _ranks(model) -> dict[str, int]:
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    ranks = {}
    for info in list(inferred.graph.value_info) + list(inferred.graph.input):
        if info.type.tensor_type.HasField("shape"):
            ranks[info.name] = len(info.type.tensor_type.shape.dim)
    return ranks


def _rewrite(node, inits, ranks) -> tuple[list, list]:
    """The nodes replacing `node` and the constants they add."""
    from onnx import TensorProto, helper, numpy_helper

    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    data_name, ids, scale_name = node.input[0], node.input[1], node.input[2]
    zero_name = node.input[3] if len(node.input) > 3 and node.input[3] else None
    data = inits.get(data_name)
    scales = inits.get(scale_name)
    problems = []
    if data is None or data.data_type != TensorProto.UINT4 or len(data.dims) != 2:
        problems.append("data is not a constant 2-D UINT4 table")
    if attrs.get("gather_axis", 0) != 0 or attrs.get("quantize_axis", 1) not in (1, -1):
        axes = (attrs.get("gather_axis", 0), attrs.get("quantize_axis", 1))
        problems.append(f"gather_axis {axes[0]}, quantize_axis {axes[1]}")
    if scales is None or scales.data_type != TensorProto.FLOAT:
        problems.append("scales are not a constant float tensor")
    if zero_name is not None and (
        zero_name not in inits or inits[zero_name].data_type != TensorProto.UINT4
    ):
        problems.append("zero points are not a constant UINT4 tensor")
    if ids not in ranks:
        problems.append(f"the rank of the indices {ids!r} is unknown")
    if problems:
        raise ConversionError(
            f"gather_tables_unpacked: cannot rewrite {node.name}: {'; '.join(problems)}"
        )
    cols = data.dims[1]
    block = int(attrs.get("block_size", 128))
    blocks = -(-cols // block)
    # One block: it is the whole row. Several with a short last one: the codes are padded with
    # zeros at load to whole blocks and the padding sliced off after scaling.
    width = cols if blocks == 1 else blocks * block
    p, rank = node.name or node.output[0], ranks[ids]
    extra = [
        numpy_helper.from_array(
            np.array([0] * rank + [blocks, width // blocks], np.int64), f"{p}_block_shape"
        ),
        numpy_helper.from_array(np.array([0] * rank + [width], np.int64), f"{p}_row_shape"),
        numpy_helper.from_array(np.array([-1], np.int64), f"{p}_last_axis"),
    ]
    # Load time: folded by onnxruntime's constant folding into uint8 codes and float offsets.
    nodes = [
        helper.make_node(
            "Cast", [data_name], [f"{p}_codes"], to=TensorProto.UINT8, name=f"{p}_unpack"
        )
    ]
    codes = f"{p}_codes"
    if width != cols:
        extra.append(
            numpy_helper.from_array(np.array([0, 0, 0, width - cols], np.int64), f"{p}_pads")
        )
        nodes.append(
            helper.make_node("Pad", [codes, f"{p}_pads"], [f"{p}_padded"], name=f"{p}_pad")
        )
        codes = f"{p}_padded"
    nodes += [
        helper.make_node("Gather", [codes, ids], [f"{p}_q8"], axis=0, name=f"{p}_gather_codes"),
        helper.make_node(
            "Cast", [f"{p}_q8"], [f"{p}_qf"], to=TensorProto.FLOAT, name=f"{p}_cast_codes"
        ),
        helper.make_node(
            "Reshape", [f"{p}_qf", f"{p}_block_shape"], [f"{p}_blocks"], name=f"{p}_to_blocks"
        ),
        helper.make_node(
            "Gather", [scale_name, ids], [f"{p}_s"], axis=0, name=f"{p}_gather_scales"
        ),
        helper.make_node(
            "Unsqueeze", [f"{p}_s", f"{p}_last_axis"], [f"{p}_s1"], name=f"{p}_scales_per_block"
        ),
        helper.make_node("Mul", [f"{p}_blocks", f"{p}_s1"], [f"{p}_scaled"], name=f"{p}_scale"),
    ]
    last = f"{p}_scaled"
    if zero_name is not None:
        nodes += [
            helper.make_node(
                "Cast", [zero_name], [f"{p}_zf"], to=TensorProto.FLOAT, name=f"{p}_unpack_zero"
            ),
            helper.make_node("Mul", [f"{p}_zf", scale_name], [f"{p}_offset"], name=f"{p}_offsets"),
            helper.make_node(
                "Gather", [f"{p}_offset", ids], [f"{p}_o"], axis=0, name=f"{p}_gather_offsets"
            ),
            helper.make_node(
                "Unsqueeze",
                [f"{p}_o", f"{p}_last_axis"],
                [f"{p}_o1"],
                name=f"{p}_offsets_per_block",
            ),
            helper.make_node("Sub", [last, f"{p}_o1"], [f"{p}_shifted"], name=f"{p}_shift"),
        ]
        last = f"{p}_shifted"
    rows = node.output[0] if width == cols else f"{p}_rows"
    nodes.append(helper.make_node("Reshape", [last, f"{p}_row_shape"], [rows], name=f"{p}_to_rows"))
    if width != cols:
        extra += [
            numpy_helper.from_array(np.array([0], np.int64), f"{p}_start"),
            numpy_helper.from_array(np.array([cols], np.int64), f"{p}_end"),
        ]
        nodes.append(
            helper.make_node(
                "Slice",
                [rows, f"{p}_start", f"{p}_end", f"{p}_last_axis"],
                [node.output[0]],
                name=f"{p}_unpad",
            )
        )
    return nodes, extra


def _check(originals, inits, ranks, model, config: UnpackedTablesConfig) -> None:
    """No GatherBlockQuantized is left, and every rewritten table gathers what
    GatherBlockQuantized gathered, on onnxruntime."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    left = [n.name for n in model.graph.node if n.op_type == "GatherBlockQuantized"]
    if left:
        raise ConversionError(f"gather_tables_unpacked: {left} left in the graph")
    for node in originals:
        rows = inits[node.input[0]].dims[0]
        count = rows if not config.check_rows else min(rows, config.check_rows)
        # Indices of the rank the graph feeds (e.g. [batch, sequence]): [1, ..., 1, count].
        ids = (
            np.linspace(0, rows - 1, count)
            .astype(np.int64)
            .reshape([1] * (ranks[node.input[1]] - 1) + [count])
        )
        got = _run_gather(model, node, ids)
        probe = helper.make_graph(
            [node],
            "probe",
            [helper.make_tensor_value_info(node.input[1], TensorProto.INT64, list(ids.shape))],
            [helper.make_tensor_value_info(node.output[0], TensorProto.FLOAT, None)],
            [inits[n] for n in node.input if n in inits],
        )
        reference = _session(
            helper.make_model(probe, opset_imports=model.opset_import, ir_version=model.ir_version),
            ort,
        ).run(None, {node.input[1]: ids})[0]
        worst = np.abs(got - reference).max(axis=-1) / np.maximum(
            np.abs(reference).max(axis=-1), 1e-30
        )
        if worst.max() > 1e-6:
            raise ConversionError(
                f"gather_tables_unpacked: {node.name} differs from GatherBlockQuantized by "
                f"{worst.max():.2e} of a row's largest value (row {int(ids[worst.argmax()])})"
            )


def _run_gather(model, node, ids: np.ndarray) -> np.ndarray:
    """The rewritten subgraph for `node`, run alone on `ids`."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    prefix = node.name or node.output[0]
    sub = [
        n for n in model.graph.node if n.name.startswith(f"{prefix}_") or node.output[0] in n.output
    ]
    needed = {i for n in sub for i in n.input}
    inits = [i for i in model.graph.initializer if i.name in needed]
    graph = helper.make_graph(
        sub,
        "probe",
        [helper.make_tensor_value_info(node.input[1], TensorProto.INT64, list(ids.shape))],
        [helper.make_tensor_value_info(node.output[0], TensorProto.FLOAT, None)],
        inits,
    )
    probe = helper.make_model(graph, opset_imports=model.opset_import, ir_version=model.ir_version)
    return _session(probe, ort).run(None, {node.input[1]: ids})[0]


def _session(model, ort):
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
