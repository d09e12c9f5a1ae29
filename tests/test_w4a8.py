"""W4A8 (4-bit weight storage for the INT8 GEMM) on a tiny exported BERT: exact unpacking,
what onnxruntime makes of it at load, accuracy against the INT8 graph it compresses, and the
size-budgeted choice of 8-bit weights."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from converters.core.search import search_loss
from converters.inputs.source import load_source
from converters.onnx.quantize_w4a8 import W4A8Config, W4A8Space, W4A8Weights, fit_w4a8, grid_params
from w4a8_graphs import prepare


@pytest.fixture(scope="module")
def graphs(tiny_model_factory, tmp_path_factory):
    """(fp32, smoothed, split, int8) paths of the tiny model prepared as the pipeline does."""
    source = load_source(tiny_model_factory("bert", "feature-extraction"))
    told: list[tuple[int, int]] = []
    prepared = prepare(source, tmp_path_factory.mktemp("w4a8"), lambda done, total: told.append((done, total)))
    rows = sum(table["shape"][0] for table in prepared["tables"])
    # the clip search's rows, every table together, from none to all
    assert prepared["tables"] and told[0] == (0, rows) and told[-1] == (rows, rows)
    assert [done for done, _ in told] == sorted(done for done, _ in told)
    return prepared


def _run(model, feeds):
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def _pooled_cosine(want, got, mask):
    w = mask[..., None].astype(np.float64)
    a, b = (want * w).sum(1), (got * w).sum(1)
    return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


def test_grid_params_fit_blocks_inside_the_int8_range():
    rng = np.random.default_rng(0)
    units = rng.normal(0, 20, (64, 8))
    units[3, 2] = 64.0  # the column maximum of a 7-bit grid
    step, zero = grid_params(units, np.ones(64), 32, (-64, 64))
    assert step.dtype == np.float16 and step.shape == (2, 8) and zero.shape == (2, 8)
    assert zero.max() <= 15 and (step > 0).all()
    # 16 levels of `step` cover each block's range at most (clipping allowed, never wider).
    span = units.reshape(2, 32, 8).max(1) - units.reshape(2, 32, 8).min(1)
    assert (15 * step.astype(np.float64) <= span * 1.01 + 1e-3).all()


def test_unpacked_weights_are_exact_and_fold_into_the_int8_gemm(graphs, tmp_path):
    weights = W4A8Weights(graphs["int8"], graphs["split"], graphs["smooth"], graphs["batches"], graphs["qrange"])
    assert len(weights.weights) == 8  # 2 layers x (QKV, attention out, FFN in, FFN out)
    told: list[tuple[int, int]] = []
    weights.solve(lambda done, total: told.append((done, total)))  # the size search's start, counted
    assert told == [(k, 8) for k in range(9)]
    four = set(weights.weights)
    model = weights.build(four)
    weights.check(model, four)  # the graph computes exactly the codes' int8 values
    qmin, qmax = graphs["qrange"]
    for w in four:
        values = weights.four_bit(w).int8(32, graphs["qrange"])
        assert values.min() >= qmin and values.max() <= qmax
        # at most 16 distinct values per block and column (plus the 8-bit outlier rows)
        codes = weights.four_bit(w)
        assert codes.q.max() <= 15 and codes.rows.size <= W4A8Config().outlier_rows

    # onnxruntime folds the unpacking at session start: the optimized graph has plain int8
    # weights feeding DynamicQuantizeMatMul and no UINT4 tensor left.
    path = tmp_path / "w4.onnx"
    onnx.save(model, str(path))
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    optimized = onnx.load(str(tmp_path / "optimized.onnx"))
    ops = {n.op_type for n in optimized.graph.node}
    assert "DynamicQuantizeMatMul" in ops and not ops & {"ScatterND", "Round", "MatMulInteger"}
    assert not [i for i in optimized.graph.initializer if i.data_type == onnx.TensorProto.UINT4 and "_w4_" in i.name]

    # 4-bit storage: codes, fp16 steps and 4-bit zero points of 32-row blocks take 4.625 bits
    # per weight instead of 8 (the tiny model has no 8-bit outlier rows: K < 64).
    int8_bytes = sum(np.prod(weights.shape(w)) for w in four)
    stored = sum(len(i.raw_data) for i in model.graph.initializer if "_w4_" in i.name)
    assert stored <= 4.8 / 8 * int8_bytes


def test_accuracy_against_fp32_and_the_int8_graph(graphs):
    """Tiny random weights at 4 bits: the pooled cosine against FP32 on held-out texts stays
    above 0.99 (measured 0.9976 min), and GPTQ codes beat plain rounding on the same grid."""
    import converters.onnx.quantize_w4a8 as w4a8

    feeds = graphs["heldout"]
    mask = feeds["attention_mask"]
    want = _run(graphs["fp32"], feeds)
    weights = W4A8Weights(graphs["int8"], graphs["split"], graphs["smooth"], graphs["batches"], graphs["qrange"])
    four = set(weights.weights)
    gptq = _pooled_cosine(want, _run(weights.build(four), feeds), mask)
    assert gptq.min() > 0.99, gptq.min()

    def nearest(weight, hessian, row, config):  # the same grid, no error feedback
        return np.stack([row(k, weight[k].astype(np.float64))[0] for k in range(weight.shape[0])]).astype(np.int32)

    original = w4a8.gptq
    w4a8.gptq = nearest
    try:
        plain = W4A8Weights(graphs["int8"], graphs["split"], graphs["smooth"], graphs["batches"], graphs["qrange"])
        rtn = _pooled_cosine(want, _run(plain.build(four), feeds), mask)
    finally:
        w4a8.gptq = original
    assert gptq.mean() > rtn.mean() - 1e-4


def test_fit_moves_weights_to_8_bits_only_within_the_budget(graphs, tmp_path):
    weights = W4A8Weights(graphs["int8"], graphs["split"], graphs["smooth"], graphs["batches"], graphs["qrange"])
    feeds = graphs["batches"]
    want = [_run(graphs["fp32"], f) for f in feeds]

    def evaluate(count):
        def score(path):
            cos = np.concatenate([_pooled_cosine(w, _run(path, f), f["attention_mask"])
                                  for f, w in zip(feeds[:count], want[:count])])
            return {"cosine_mean": float(cos.mean()), "cosine_min": float(cos.min())}
        return score

    space = W4A8Space(weights, tmp_path / "probe.onnx", rank=evaluate(1), judge=evaluate(None))
    base = weights.build(set(weights.weights)).ByteSize()
    largest = max(weights.extra_bytes_8bit(w) for w in weights.weights)
    none = fit_w4a8(space, budget_bytes=base)
    # At hidden size 32 the 4-bit form's unpacking nodes outweigh what it saves on some weights:
    # their 8-bit form is smaller, so even a budget of the all-4-bit size admits them.
    assert none.bytes <= base
    assert all(s["added_bytes"] <= 0 for s in none.steps if s.get("accepted"))
    some = fit_w4a8(space, budget_bytes=base + 2 * largest)
    eight = set(some.moved)
    assert eight and len(eight) >= len(none.moved)
    # (Budget refusals are proven on a synthetic space in test_search_core.py: here no 8-bit
    # form adds bytes.)
    assert some.bytes <= base + 2 * largest
    assert search_loss(some.metrics) < search_loss(none.steps[0]["metrics"])
    accepted = [s for s in some.steps if s.get("accepted")]
    assert [s["candidate"] for s in accepted] == some.moved
    four_bit = set(weights.weights) - eight
    # 8-bit weights are the GPTQ int8 codes on onnxruntime's grid
    model = weights.build(four_bit)
    inits = {i.name: i for i in model.graph.initializer}
    for w in eight:
        assert numpy_helper.to_array(inits[f"{w}_quantized"]).dtype == np.int8


def test_candidates_are_scored_unpacked_with_the_same_outputs_and_sized_packed(graphs, tmp_path):
    """W4A8Space writes each candidate with its 4-bit weights as the int8 initializers the
    packed graph computes at session start: onnxruntime, and the exact int32 reference the
    searches run for int32 targets, give the same numbers bit for bit; the size is the packed
    file's."""
    from converters.core.exact_integer_ops import ExactIntegerConfig, exact_integer_ops

    weights = W4A8Weights(graphs["int8"], graphs["split"], graphs["smooth"], graphs["batches"], graphs["qrange"])
    moved = frozenset(weights.weights[:2])
    four_bit = set(weights.weights) - moved
    space = W4A8Space(weights, tmp_path / "probe.onnx", rank=lambda p: {}, judge=lambda p: {})
    size = space.build(moved)
    packed_model = weights.build(four_bit)
    assert size == packed_model.ByteSize()
    # The size is added up, not built: exact for any mix of 4-bit and 8-bit weights.
    for count in range(len(weights.weights) + 1):
        four = set(weights.weights[count:]) | set(weights.weights[:count:3])
        assert weights.size(four) == weights.build(four).ByteSize()
    scored = onnx.load(str(tmp_path / "probe.onnx"))
    assert not [i for i in scored.graph.initializer if "_w4_" in i.name]  # (the 4-bit embedding tables stay)
    assert [i for i in packed_model.graph.initializer if "_w4_" in i.name]
    packed = tmp_path / "packed.onnx"
    onnx.save(packed_model, str(packed))
    for path in (packed, tmp_path / "probe.onnx"):
        exact_integer_ops(path, path.with_suffix(".exact.onnx"), ExactIntegerConfig(u8_weights=True))
    for feeds in graphs["batches"][:2]:
        assert np.array_equal(_run(packed, feeds), _run(tmp_path / "probe.onnx", feeds))
        assert np.array_equal(_run(packed.with_suffix(".exact.onnx"), feeds),
                              _run(tmp_path / "probe.exact.onnx", feeds))
