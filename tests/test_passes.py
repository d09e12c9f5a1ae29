"""Graph passes on tiny exported models, checked numerically against the graph they rewrite."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from converters.core.validate import make_batches
from converters.export.export_onnx import ExportConfig, export_onnx
from converters.inputs.calibration import load_texts
from converters.inputs.source import load_source
from converters.onnx.quantize_embeddings import EmbeddingQuantConfig, quantize_embeddings
from converters.onnx.quantize_int8 import Int8Config, quantizable_nodes, quantize_int8
from targets import load_profile


@pytest.fixture(scope="module")
def exported(tiny_model_factory, tmp_path_factory):
    source = load_source(tiny_model_factory("bert", "feature-extraction"))
    path = export_onnx(source, tmp_path_factory.mktemp("exp") / "m.onnx", ExportConfig())
    feeds = make_batches(source, load_texts().texts[:16])[0]
    return source, path, feeds


def _run(path, feeds):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def test_embedding_rows_to_int8(exported, tmp_path):
    source, path, feeds = exported
    out = tmp_path / "emb.onnx"
    changed = quantize_embeddings(path, out, EmbeddingQuantConfig(min_elements=1000))
    assert [c["shape"] for c in changed] == [[source.tokenizer.vocab_size, 32], [128, 32]]
    assert all(c["bytes_after"] < c["bytes_before"] / 3 for c in changed)
    model = onnx.load(str(out))
    int8 = [i for i in model.graph.initializer if i.data_type == onnx.TensorProto.INT8]
    assert len(int8) == 2
    want, got = _run(path, feeds), _run(out, feeds)
    cos = (want * got).sum(-1) / np.linalg.norm(want, axis=-1) / np.linalg.norm(got, axis=-1)
    assert cos.min() > 0.999
    # Nothing qualifies above the default threshold in a tiny model: the graph is unchanged.
    assert quantize_embeddings(path, tmp_path / "same.onnx", EmbeddingQuantConfig()) == []


@pytest.mark.parametrize("target", ["x86-avx2", "jetson-orin"])
def test_int8_quantizes_every_matmul_unless_excluded(exported, tmp_path, target):
    source, path, feeds = exported
    nodes = quantizable_nodes(path)
    assert len(nodes) == 12  # 2 layers x (q, k, v, out, up, down)
    scheme = load_profile(target).int8
    batches = make_batches(source, load_texts().texts[:32])
    calibration = tuple(batches) if scheme.mode == "static" else ()
    rounding = None
    if scheme.pair_sum_limit:  # onnxruntime alone cannot honour the limit
        from converters.core.gptq import Int8Rounding
        from converters.onnx.quantize_int8 import int8_range

        with pytest.raises(ValueError, match="pair_sum_limit"):
            quantize_int8(path, tmp_path / "q.onnx", Int8Config(scheme=scheme))
        rounding = Int8Rounding(path, path, batches, int8_range(scheme), pair_limit=scheme.pair_sum_limit)
    out = quantize_int8(path, tmp_path / "q.onnx", Int8Config(scheme=scheme, exclude=(nodes[0],),
                                                             calibration_batches=calibration), rounding)
    graph = onnx.load(str(out)).graph
    ops = {n.op_type for n in graph.node}
    if scheme.quant_format == "qdq":
        assert "DequantizeLinear" in ops and "QuantizeLinear" in ops
    else:
        assert "MatMulInteger" in ops
    assert nodes[0] in [n.name for n in graph.node if n.op_type == "MatMul"], "excluded node stays FP32"
    want, got = _run(path, feeds), _run(out, feeds)
    cos = (want * got).sum(-1) / np.linalg.norm(want, axis=-1) / np.linalg.norm(got, axis=-1)
    assert cos[feeds["attention_mask"].astype(bool)].mean() > 0.99


def test_outlier_passes_are_exact_in_fp32_and_store_weights_once(exported, tmp_path):
    from converters.export.fuse_onnx import fuse_onnx, fusion_config
    from converters.onnx.smooth_activations import SmoothConfig, smooth_activations
    from converters.onnx.split_first_token import SplitConfig, split_first_token

    source, path, feeds = exported
    fused = tmp_path / "fused.onnx"
    assert fuse_onnx(path, fused, fusion_config(source))["Attention"] == 2
    smoothed = smooth_activations(fused, tmp_path / "s.onnx", [feeds], SmoothConfig())
    assert len(smoothed) == 2 and all(c["activation_peak_after"] <= c["activation_peak_before"] * 10 for c in smoothed)
    split = split_first_token(tmp_path / "s.onnx", tmp_path / "sp.onnx", SplitConfig(((32, 64), (64, 32))))
    assert len(split) == 4  # 2 layers x (FFN in, FFN out)
    want = _run(path, feeds)
    for rewritten in ("s.onnx", "sp.onnx"):
        np.testing.assert_allclose(_run(tmp_path / rewritten, feeds), want, atol=1e-4, rtol=1e-4)
    # A one-token input still runs (the "rest" half is empty).
    one = {k: v[:1, :1] for k, v in feeds.items()}
    assert _run(tmp_path / "sp.onnx", one).shape == (1, 1, 32)

    scheme = load_profile("x86-avx512-vnni").int8
    plain = quantize_int8(fused, tmp_path / "q_plain.onnx", Int8Config(scheme=scheme))
    both = quantize_int8(tmp_path / "sp.onnx", tmp_path / "q_split.onnx", Int8Config(scheme=scheme))
    int8_bytes = [sum(len(i.raw_data) for i in onnx.load(str(p)).graph.initializer
                      if i.data_type == onnx.TensorProto.INT8) for p in (plain, both)]
    assert int8_bytes[0] == int8_bytes[1], "split MatMuls share one quantized weight"
    q_one = ort.InferenceSession(str(both), providers=["CPUExecutionProvider"]).run(None, one)[0]
    assert np.isfinite(q_one).all()


def test_static_qdq_leaves_attentions_activation_matmuls_float(exported, tmp_path):
    """Q x K^T and probabilities x V read no weight: onnxruntime's QDQ quantizer ignored
    MatMulConstBOnly and gave the softmax's probabilities the calibration texts' range (~+-0.43),
    clipping a 1-3 token text's (0.5-0.8): cosine 0.966 on "" (a review, session 50). They stay
    float; a 1-token input agrees with FP32 as closely as the calibration texts do."""
    source, path, feeds = exported
    scheme = load_profile("jetson-orin").int8
    batches = tuple(make_batches(source, load_texts().texts[:32]))
    out = quantize_int8(path, tmp_path / "q.onnx", Int8Config(scheme=scheme, calibration_batches=batches))
    graph = onnx.load(str(out)).graph
    weights = {i.name for i in graph.initializer}
    dequantized = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] not in weights}
    activation_matmuls = [n for n in graph.node if n.op_type == "MatMul" and n.input[1] not in weights
                          and not any(n.input[1] == d.output[0] and d.input[0] in weights
                                      for d in graph.node if d.op_type == "DequantizeLinear")]
    assert len(activation_matmuls) == 4  # 2 layers x (scores, context)
    assert not any(set(n.input) & dequantized for n in activation_matmuls), "no quantized activation feeds them"
    short = make_batches(source, ("", "Hi."))[0]
    want, got = _run(path, short), _run(out, short)
    keep = short["attention_mask"].astype(bool)
    cos = (want * got).sum(-1) / np.linalg.norm(want, axis=-1) / np.linalg.norm(got, axis=-1)
    assert cos[keep].min() > 0.99, cos[keep]


@pytest.mark.parametrize("method", ["minmax", "percentile", "entropy"])
def test_static_qdq_calibration_methods(exported, tmp_path, method):

    source, path, feeds = exported
    scheme = dataclasses.replace(load_profile("jetson-orin").int8, calibration_method=method)
    batches = tuple(make_batches(source, load_texts().texts[:40]))  # uneven lengths on purpose
    out = quantize_int8(path, tmp_path / "q.onnx", Int8Config(scheme=scheme, calibration_batches=batches))
    graph = onnx.load(str(out)).graph
    zero_points = [numpy_helper_array(i) for i in graph.initializer if i.name.endswith("_zero_point")]
    assert zero_points and all(not z.any() for z in zero_points), "symmetric: every zero point is 0"
    want, got = _run(path, feeds), _run(out, feeds)
    keep = feeds["attention_mask"].astype(bool)
    cos = (want * got).sum(-1) / np.linalg.norm(want, axis=-1) / np.linalg.norm(got, axis=-1)
    assert cos[keep].mean() > 0.98, (method, cos[keep].mean())

    # The fallback search's calibration cache: written by the first call, read by the next (with
    # other nodes excluded, which calibration ignores), and the files equal calibrating each time.
    cache = tmp_path / "ranges.json"
    excluded = (quantizable_nodes(path)[0],)
    for name, exclude in (("cold", ()), ("warm", ()), ("warm_excl", excluded)):
        config = Int8Config(scheme=scheme, calibration_batches=batches, exclude=exclude)
        quantize_int8(path, tmp_path / f"{name}.onnx", config, ranges=cache)
        assert cache.is_file()
    plain_excl = quantize_int8(path, tmp_path / "excl.onnx",
                               Int8Config(scheme=scheme, calibration_batches=batches, exclude=excluded))
    assert (tmp_path / "cold.onnx").read_bytes() == out.read_bytes()
    assert (tmp_path / "warm.onnx").read_bytes() == out.read_bytes()
    assert (tmp_path / "warm_excl.onnx").read_bytes() == plain_excl.read_bytes()


def numpy_helper_array(init):
    from onnx import numpy_helper

    return numpy_helper.to_array(init)


def test_pack_projections_is_exact_and_packs_qkv(exported, tmp_path):
    from converters.onnx.pack_projections import pack_projections
    from converters.onnx.split_first_token import SplitConfig, split_first_token

    source, path, feeds = exported
    out = tmp_path / "packed.onnx"
    groups = pack_projections(path, out)
    assert len(groups) == 2 and all(g["widths"] == [32, 32, 32] for g in groups)  # Q, K, V per layer
    graph = onnx.load(str(out)).graph
    assert sum(n.op_type == "MatMul" and n.input[1] in {i.name for i in graph.initializer}
               for n in graph.node) == 2 * 4  # packed QKV, attention out, FFN in, FFN out
    np.testing.assert_allclose(_run(out, feeds), _run(path, feeds), atol=1e-5, rtol=1e-4)
    # Splitting token 0 off the packed MatMul moves its bias Add into both halves (so that
    # onnxruntime can fuse MatMul + bias) and stays exact.
    split = split_first_token(out, tmp_path / "split.onnx", SplitConfig(((32, 96),)))
    assert len(split) == 2
    graph = onnx.load(str(tmp_path / "split.onnx")).graph
    assert sum(n.name.endswith("_bias") for n in graph.node) == 4
    np.testing.assert_allclose(_run(tmp_path / "split.onnx", feeds), _run(path, feeds), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("target", ["x86-avx2", "x86-avx512-vnni", "jetson-orin"])
def test_gptq_rounding_lowers_layer_output_error(exported, tmp_path, target):
    """GPTQ lowers || x W - x W_q || on the calibration inputs for every layer against
    onnxruntime's round-to-nearest (per layer, on the data it was fitted to, the error cannot be
    larger in expectation; measured: lower for all 12 weights of the tiny model). Under a pair-sum
    limit (x86-avx2) the comparison is with onnxruntime's 7-bit weights, the limit's alternative,
    and every adjacent pair of codes stays within the limit."""
    from onnx import numpy_helper

    from converters.core.gptq import Int8Rounding, input_hessians, pair_sums
    from converters.onnx.quantize_int8 import int8_range

    source, path, feeds = exported
    scheme = load_profile(target).int8
    plain = dataclasses.replace(scheme, pair_sum_limit=0)
    batches = make_batches(source, load_texts().texts[:48])
    calibration = tuple(batches) if scheme.mode == "static" else ()
    nearest = quantize_int8(path, tmp_path / "rtn.onnx", Int8Config(scheme=plain, calibration_batches=calibration))
    solved: list[tuple[int, int]] = []
    rounding = Int8Rounding(path, path, batches, int8_range(scheme), pair_limit=scheme.pair_sum_limit,
                            solve_progress=lambda done, total: solved.append((done, total)))
    gptq = quantize_int8(path, tmp_path / "gptq.onnx", Int8Config(scheme=scheme, calibration_batches=calibration),
                         rounding)
    # each weight's GPTQ solve told once, from none to all; a second file reuses the codes
    total = len(rounding.weights)
    assert solved == [(k, total) for k in range(total + 1)]
    quantize_int8(path, tmp_path / "gptq2.onnx", Int8Config(scheme=scheme, calibration_batches=calibration), rounding)
    assert len(solved) == total + 1

    floats = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}
    weights = {n.input[1] for n in onnx.load(str(path)).graph.node
               if n.op_type == "MatMul" and n.input[1] in floats and floats[n.input[1]].ndim == 2}
    hessians = input_hessians(path, weights, batches)
    qmin, qmax = int8_range(scheme)

    def dequantized(model_path):
        inits = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(model_path)).graph.initializer}
        return {w: inits[f"{w}_quantized"].astype(np.float64) * inits[f"{w}_scale"] for w in weights}

    before, after = dequantized(nearest), dequantized(gptq)
    for w in weights:
        err = {k: np.trace((floats[w] - d[w]).T @ hessians[w] @ (floats[w] - d[w])) for k, d in (("rtn", before), ("gptq", after))}
        assert err["gptq"] < err["rtn"], (w, err)
        codes = np.rint(after[w] / np.broadcast_to(
            numpy_helper.to_array({i.name: i for i in onnx.load(str(gptq)).graph.initializer}[f"{w}_scale"]), (after[w].shape[1],)))
        assert codes.min() >= qmin and codes.max() <= qmax
        if scheme.pair_sum_limit:
            assert pair_sums(codes).max() <= scheme.pair_sum_limit
    # The whole model agrees with FP32 at least as well.
    want = _run(path, feeds)
    keep = feeds["attention_mask"].astype(bool)

    def cosine(p):
        got = _run(p, feeds)
        return ((want * got).sum(-1) / np.linalg.norm(want, axis=-1) / np.linalg.norm(got, axis=-1))[keep].mean()

    assert cosine(gptq) >= cosine(nearest) - 1e-4
    assert rounding.describe()["algorithm"] == "gptq"


@pytest.mark.parametrize("rows, scales", [(33, 8), (64, 1)])
def test_pair_safe_rerounding_of_weights_gptq_does_not_handle(rows, scales):
    """INT8 weights of ops the GPTQ rounding does not cover (a classifier's Gemm) are re-rounded
    onto a pair-safe grid: every adjacent pair within the limit, close to the original weight."""
    from converters.core.gptq import _pair_safe_nearest, pair_sums

    rng = np.random.default_rng(rows)
    codes = rng.integers(-127, 128, (rows, 8)).astype(np.int8)
    scale = rng.uniform(0.01, 0.1, scales).astype(np.float32)
    new_codes, new_scale = _pair_safe_nearest(codes, scale, 128)
    assert new_scale.shape == scale.shape and pair_sums(new_codes).max() <= 128
    before = codes.astype(np.float64) * scale
    after = new_codes.astype(np.float64) * new_scale
    assert np.abs(after - before).max() <= 0.51 * new_scale.max() + 0.5 * scale.max()


def test_passes_over_the_calibration_batches_report_each_batch(exported, tmp_path):
    """SmoothQuant's ranges and GPTQ's Hessians read every fit batch through onnxruntime (a
    minute or more with a few hundred texts): each pass tells its progress batch by batch, from
    0 to all of them, and the statistics are the same as without a listener."""
    from converters.core._activations import channel_abs_max
    from converters.core.gptq import Int8Rounding

    source, path, _ = exported
    batches = make_batches(source, load_texts().texts[:40], batch_size=8)
    tensors = sorted({n.input[0] for n in onnx.load(str(path)).graph.node if n.op_type == "MatMul"})[:2]
    told: list[tuple[int, int]] = []
    peaks = channel_abs_max(path, tensors, batches, lambda done, total: told.append((done, total)))
    assert told == [(k, len(batches)) for k in range(len(batches) + 1)]
    assert all(np.array_equal(peaks[t], channel_abs_max(path, tensors, batches)[t]) for t in tensors)

    rounding_told: list[tuple[int, int]] = []
    rounding = Int8Rounding(path, path, batches, (-127, 127), progress=lambda d, t: rounding_told.append((d, t)))
    weight = sorted(rounding.weights)[0]
    hessian = rounding.hessian(weight)
    # every fit batch and the prefix rows GPTQ's policy adds (gptq.prefix_batches)
    assert rounding_told and rounding_told[0][0] == 0 and rounding_told[-1][0] == rounding_told[-1][1] >= len(batches)
    rounding.hessian(sorted(rounding.weights)[1])  # read once: no second pass
    assert sum(done == 0 for done, _ in rounding_told) == 1
    assert np.array_equal(hessian, Int8Rounding(path, path, batches, (-127, 127)).hessian(weight))
