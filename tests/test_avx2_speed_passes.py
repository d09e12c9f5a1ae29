"""The x86-avx2 speed passes: SkipLayerNormalization kept out (keep_layernorm_unfused) and 4-bit
tables gathered as unpacked uint8 codes (gather_tables_unpacked). Both are exact rewrites: the
tests check the numbers against the graph they replace and what onnxruntime makes of the result
when a session starts."""

from __future__ import annotations

import collections
import dataclasses

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from converters._errors import ConversionError
from converters.onnx.gather_tables_unpacked import UnpackedTablesConfig, gather_tables_unpacked
from converters.onnx.keep_layernorm_unfused import KeepUnfusedConfig, keep_layernorm_unfused
from targets import ProfileError, load_profile


def _optimized_ops(
    path, tmp_path, level=ort.GraphOptimizationLevel.ORT_ENABLE_ALL
) -> collections.Counter:
    options = ort.SessionOptions()
    options.graph_optimization_level = level
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    options.log_severity_level = 3
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return collections.Counter(
        n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node
    )


def _run(path, feeds, level=ort.GraphOptimizationLevel.ORT_ENABLE_ALL):
    options = ort.SessionOptions()
    options.graph_optimization_level = level
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]).run(
        None, feeds
    )


# -- keep_layernorm_unfused -------------------------------------------------------------------


def _residual_block(path, rng, hidden=32):
    """x @ W + b + skip -> LayerNorm, twice (the second Add also feeds the graph output, which
    the fusion skips and the pass must leave alone)."""
    inits = [
        numpy_helper.from_array(rng.standard_normal((hidden, hidden)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.standard_normal(hidden).astype(np.float32), "b"),
        numpy_helper.from_array(rng.standard_normal(hidden).astype(np.float32) + 1, "gamma"),
        numpy_helper.from_array(rng.standard_normal(hidden).astype(np.float32), "beta"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["xw"], name="matmul"),
        helper.make_node("Add", ["xw", "b"], ["xb"], name="bias"),
        helper.make_node("Add", ["xb", "skip"], ["s1"], name="residual1"),
        helper.make_node(
            "LayerNormalization",
            ["s1", "gamma", "beta"],
            ["h1"],
            axis=-1,
            epsilon=1e-12,
            name="ln1",
        ),
        helper.make_node("Add", ["h1", "skip"], ["s2"], name="residual2"),
        helper.make_node(
            "LayerNormalization", ["s2", "gamma", "beta"], ["y"], axis=-1, epsilon=1e-12, name="ln2"
        ),
    ]
    shape = ["batch", "sequence", hidden]
    graph = helper.make_graph(
        nodes,
        "block",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n in ("x", "skip")],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, shape),
            helper.make_tensor_value_info("s2", TensorProto.FLOAT, shape),
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_keep_layernorm_unfused_stops_the_fusion_and_keeps_the_numbers(tmp_path):
    rng = np.random.default_rng(0)
    before = _residual_block(tmp_path / "block.onnx", rng)
    # Witness that the pattern fuses as written: onnxruntime builds SkipLayerNormalization.
    assert _optimized_ops(before, tmp_path)["SkipLayerNormalization"] == 1

    after = tmp_path / "unfused.onnx"
    changed = keep_layernorm_unfused(before, after)
    assert changed == ["residual1"]  # residual2 is a graph output: not fusable, left alone
    ops = _optimized_ops(after, tmp_path)
    assert ops["SkipLayerNormalization"] == 0 and ops["LayerNormalization"] == 2 and ops["Sum"] == 1

    feeds = {n: rng.standard_normal((2, 5, 32)).astype(np.float32) for n in ("x", "skip")}
    want = _run(before, feeds, ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    got = _run(after, feeds)
    for w, g in zip(want, got):
        np.testing.assert_allclose(g, w, rtol=0, atol=1e-5)


def test_keep_unfused_config_and_profile_reject_unknown_fusions():
    with pytest.raises(ValueError, match="Attention"):
        KeepUnfusedConfig(fusions=("Attention",))
    profile = load_profile("x86-avx2")
    assert profile.onnx.keep_unfused == ("SkipLayerNormalization",)
    with pytest.raises(ProfileError, match="keep_unfused"):
        dataclasses.replace(profile.onnx, keep_unfused=("BiasGelu",))
    with pytest.raises(ProfileError, match="table_gather"):
        dataclasses.replace(profile.int4, table_gather="dequantized")


# -- gather_tables_unpacked -------------------------------------------------------------------


def _gbq_model(path, rng, rows=300, cols=64, block=32, zero_points=True, gather_axis=0):
    """Gather(table) through GatherBlockQuantized: UINT4 codes, float scales, UINT4 zero points,
    indexed by [batch, sequence] ids, plus a float op after it."""
    codes = rng.integers(0, 16, (rows, cols))
    blocks = -(-cols // block)  # the last block may be short
    scales = (rng.random((rows, blocks)) * 0.1 + 0.01).astype(np.float32)
    zeros = rng.integers(0, 16, (rows, blocks))
    inits = [
        helper.make_tensor("table", TensorProto.UINT4, [rows, cols], codes.reshape(-1).tolist()),
        numpy_helper.from_array(scales, "scales"),
    ]
    inputs = ["table", "ids", "scales"]
    if zero_points:
        inits.append(
            helper.make_tensor(
                "zeros", TensorProto.UINT4, list(zeros.shape), zeros.reshape(-1).tolist()
            )
        )
        inputs.append("zeros")
    nodes = [
        helper.make_node(
            "GatherBlockQuantized",
            inputs,
            ["emb"],
            domain="com.microsoft",
            name="gbq",
            block_size=block,
            gather_axis=gather_axis,
            quantize_axis=1,
        ),
        helper.make_node("Relu", ["emb"], ["y"], name="after"),
    ]
    graph = helper.make_graph(
        nodes,
        "tables",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "sequence"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "sequence", cols])],
        inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)]
    )
    model.ir_version = 10
    onnx.save(model, str(path))
    per_value = np.repeat(zeros if zero_points else 0 * zeros, block, axis=1)[:, :cols]
    dequantized = (codes - per_value) * np.repeat(scales, block, axis=1)[:, :cols]
    return path, dequantized.astype(np.float32)


# Whole blocks (with and without zero points), a short last block of 16, a row shorter than a block.
@pytest.mark.parametrize("zero_points, cols", [(True, 64), (False, 64), (True, 80), (True, 20)])
def test_unpacked_tables_gather_what_gather_block_quantized_gathers(tmp_path, zero_points, cols):
    rng = np.random.default_rng(1)
    before, table = _gbq_model(tmp_path / "gbq.onnx", rng, cols=cols, zero_points=zero_points)
    after = tmp_path / "unpacked.onnx"
    report = gather_tables_unpacked(before, after, UnpackedTablesConfig())
    assert report == [
        {"node": "gbq", "table": "table", "shape": [300, cols], "unpacked_bytes": 300 * cols}
    ]

    ids = rng.integers(0, 300, (3, 7))
    want = _run(before, {"ids": ids})[0]
    got = _run(after, {"ids": ids})[0]
    # the op's own arithmetic, then the rewrite against the op
    np.testing.assert_allclose(want, np.maximum(table[ids], 0), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)

    # The file stays 4-bit; onnxruntime unpacks the codes once, at session start: the optimized
    # graph holds a uint8 table of whole blocks and gathers it with plain ops.
    model = onnx.load(str(after))
    table_types = [i.data_type for i in model.graph.initializer if i.name == "table"]
    assert table_types == [TensorProto.UINT4]
    ops = _optimized_ops(after, tmp_path, ort.GraphOptimizationLevel.ORT_ENABLE_BASIC)
    assert ops["GatherBlockQuantized"] == 0 and ops["Gather"] >= 2
    width = cols if cols <= 32 else -(-cols // 32) * 32
    folded = [
        i
        for i in onnx.load(str(tmp_path / "optimized.onnx")).graph.initializer
        if i.data_type == TensorProto.UINT8 and list(i.dims) == [300, width]
    ]
    assert len(folded) == 1


def test_unpacked_tables_refuse_layouts_they_do_not_handle(tmp_path):
    rng = np.random.default_rng(2)
    before, _ = _gbq_model(tmp_path / "gbq.onnx", rng, gather_axis=1)
    with pytest.raises(ConversionError, match="gather_axis 1"):
        gather_tables_unpacked(before, tmp_path / "unpacked.onnx")


def test_unpacked_tables_in_an_exported_encoder(tiny_model_factory, tmp_path):
    """On a real export (word table gathered by input_ids, position table by a Slice of a
    constant range) the rewritten model computes what the GatherBlockQuantized one does."""
    from converters.core.validate import make_batches
    from converters.export.export_onnx import ExportConfig, export_onnx
    from converters.inputs.calibration import load_texts
    from converters.inputs.source import load_source
    from converters.onnx.quantize_int4 import Int4Config, quantize_tables_int4

    source = load_source(tiny_model_factory("bert", "feature-extraction"))
    fp32 = export_onnx(source, tmp_path / "fp32.onnx", ExportConfig())
    tables = tmp_path / "tables.onnx"
    made = quantize_tables_int4(fp32, tables, Int4Config(embedding_min_elements=1000))
    assert len(made) == 2  # word and position tables of the tiny model
    after = tmp_path / "unpacked.onnx"
    report = gather_tables_unpacked(tables, after)
    assert sorted(r["table"] for r in report) == sorted(r["initializer"] + "_Q4" for r in made)

    feeds = make_batches(source, load_texts().texts[:8], batch_size=8)[0]
    want = _run(tables, feeds)[0]
    got = _run(after, feeds)[0]
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()
    assert _optimized_ops(after, tmp_path)["GatherBlockQuantized"] == 0
