"""Validation on the target's arithmetic (issue 8): the exact int32 reference and its choice.

converters/core/exact_integer_ops.py rewrites integer GEMMs so any CPU computes what a target with
32-bit accumulation computes; converters/core/arithmetic.py decides when to use it; edge_runtime
refuses artifacts a device would compute wrongly (edge_runtime/_compat.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import edge_runtime
from converters import ConvertConfig, convert
from converters._errors import ConversionError
from converters._graph import without_weight_values
from converters.core.arithmetic import ValidationSessions, choose_validation
from converters.core.exact_integer_ops import (
    ExactIntegerConfig,
    chunk_rows,
    exact_integer_ops,
    integer_gemm_is_exact,
    u8u8_gemm_is_exact,
)
from edge_runtime._compat import arithmetic_problem, required_int8_gemm
from edge_runtime._device import detect
from edge_runtime.backends.onnx import OnnxSession
from targets import load_profile


def _save(path: Path, nodes, inputs, outputs, inits) -> Path:
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    import onnx

    onnx.save(model, str(path))
    return path


def _matmul_integer_model(path: Path, weights: np.ndarray, b_zero: np.ndarray | None = None) -> Path:
    k, n = weights.shape
    inputs = ["a", "w", "a_zp"] + (["w_zp"] if b_zero is not None else [])
    inits = [numpy_helper.from_array(weights, "w"), numpy_helper.from_array(np.array(7, np.uint8), "a_zp")]
    if b_zero is not None:
        inits.append(numpy_helper.from_array(b_zero, "w_zp"))
    return _save(path, [helper.make_node("MatMulInteger", inputs, ["y"], name="mmi")],
                 [helper.make_tensor_value_info("a", TensorProto.UINT8, [None, k])],
                 [helper.make_tensor_value_info("y", TensorProto.INT32, [None, n])], inits)


def test_chunk_rows_keeps_every_partial_sum_exact_in_float32():
    rows = chunk_rows(255, 128)
    assert rows == 514 and rows * 255 * 128 < 2**24 <= (rows + 1) * 255 * 128
    with pytest.raises(ValueError):
        chunk_rows(0, 128)


def test_matmul_integer_rewrite_is_exact_where_this_cpu_saturates(tmp_path):
    """Worst-case operands (K = 1536, products up to 255 x 127, sums far beyond 2^24): the
    rewrite equals int64 numpy bit for bit; this CPU's own kernel does too only if it does not
    saturate (the witness that the test can fail)."""
    rng = np.random.default_rng(0)
    k, n = 1536, 64
    weights = rng.integers(100, 128, (k, n)).astype(np.int8) * rng.choice(np.array([-1, 1], np.int8), (1, n))
    a = np.concatenate([np.full((4, k), 255, np.uint8), rng.integers(0, 256, (12, k), dtype=np.uint8)])
    want = (a.astype(np.int64) - 7) @ weights.astype(np.int64)
    assert np.abs(want).max() > 2**24, "the operands must exceed float32's exact integers"

    plain = _matmul_integer_model(tmp_path / "mmi.onnx", weights)
    report = exact_integer_ops(plain, tmp_path / "exact.onnx")
    assert report["matmul_integer"] == [{"node": "mmi", "method": "float-chunks", "k_chunks": 3}]
    got = OnnxSession(tmp_path / "exact.onnx", threads=2).run({"a": a})["y"]
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, want)

    # the same on onnxruntime's u8 x u8 integer kernel (weights shifted by 128)
    report = exact_integer_ops(plain, tmp_path / "u8.onnx", ExactIntegerConfig(u8_weights=True))
    assert report["matmul_integer"] == [{"node": "mmi", "method": "u8-integer-gemm"}]
    np.testing.assert_array_equal(OnnxSession(tmp_path / "u8.onnx", threads=2).run({"a": a})["y"], want)

    native = OnnxSession(plain, threads=2).run({"a": a})["y"]
    if detect().int8_gemm == "s16-pairs":
        assert np.abs(native - want).max() > 1000, "VPMADDUBSW saturates on these operands"
    else:
        np.testing.assert_array_equal(native, want)


def test_u8u8_kernel_is_exact_here():
    """The premise of the integer exact reference, measured: onnxruntime's u8 x u8 GEMM widens
    to int16 and sums in int32 on every CPU we convert on (MLAS VPMADDWD on AVX2 and
    AVX-512BW, VNNI, AMX, ARM64); the saturating VPMADDUBSW exists only for u8 x s8.
    tests/test_avx2_only.py runs this on the saturating AVX2 kernel."""
    assert u8u8_gemm_is_exact(), "onnxruntime's u8 x u8 MatMulInteger is not exact on this CPU"


def test_the_integer_gemm_probe_can_say_no():
    """The same probe on u8 x s8 weights answers what edge_runtime's kernel probe measures:
    False on the saturating AVX2 kernel (tests/test_avx2_only.py runs this there), True on int32
    kernels. A probe that always said True would fail one of the two."""
    assert integer_gemm_is_exact(np.int8) is (detect().int8_gemm == "int32")


def test_u8_weight_rewrite_is_exact_for_every_weight_form(tmp_path):
    """s8 weights over the whole range (-128 and 127 included) with per-column s8 zero points,
    as constants and computed in the graph (unpacked 4-bit codes are): every sum equals int64
    numpy; the s8 initializer does not stay next to its u8 twin."""
    import onnx

    rng = np.random.default_rng(5)
    k, n = 1536, 32
    weights = rng.choice(np.array([-128, -127, 127, 126, 0, 3], np.int8), (k, n))
    zero = rng.integers(-128, 128, (n,)).astype(np.int8)
    a = np.concatenate([np.full((3, k), 255, np.uint8), np.zeros((1, k), np.uint8),
                        rng.integers(0, 256, (8, k), dtype=np.uint8)])
    want = (a.astype(np.int64) - 7) @ (weights.astype(np.int64) - zero.astype(np.int64))

    constant = _matmul_integer_model(tmp_path / "const.onnx", weights, zero)
    report = exact_integer_ops(constant, tmp_path / "const_u8.onnx", ExactIntegerConfig(u8_weights=True))
    assert report["matmul_integer"] == [{"node": "mmi", "method": "u8-integer-gemm"}]
    inits = {i.name: i for i in onnx.load(str(tmp_path / "const_u8.onnx")).graph.initializer}
    assert "w" not in inits and "w_zp" not in inits
    assert {inits[name].data_type for name in inits if name != "a_zp"} == {TensorProto.UINT8}
    np.testing.assert_array_equal(OnnxSession(tmp_path / "const_u8.onnx", threads=2).run({"a": a})["y"], want)

    computed = _save(tmp_path / "computed.onnx",
                     [helper.make_node("Reshape", ["w_flat", "shape"], ["w"]),
                      helper.make_node("MatMulInteger", ["a", "w", "a_zp", "w_zp"], ["y"], name="mmi")],
                     [helper.make_tensor_value_info("a", TensorProto.UINT8, [None, k])],
                     [helper.make_tensor_value_info("y", TensorProto.INT32, [None, n])],
                     [numpy_helper.from_array(weights.reshape(-1), "w_flat"),
                      numpy_helper.from_array(np.array([k, n], np.int64), "shape"),
                      numpy_helper.from_array(np.array(7, np.uint8), "a_zp"), numpy_helper.from_array(zero, "w_zp")])
    report = exact_integer_ops(computed, tmp_path / "computed_u8.onnx", ExactIntegerConfig(u8_weights=True))
    assert report["matmul_integer"] == [{"node": "mmi", "method": "u8-integer-gemm"}]
    np.testing.assert_array_equal(OnnxSession(tmp_path / "computed_u8.onnx", threads=2).run({"a": a})["y"], want)


def test_u8_weight_rewrite_keeps_weights_that_are_graph_inputs(tmp_path):
    """An initializer listed as a graph input can be fed at run time: the u8 path shifts it in
    the graph (not baked from the stored values) and keeps it, so a fed weight still counts."""
    rng = np.random.default_rng(7)
    k, n = 96, 8
    stored = rng.integers(-128, 128, (k, n)).astype(np.int8)
    path = _save(tmp_path / "w_input.onnx", [helper.make_node("MatMulInteger", ["a", "w"], ["y"], name="mmi")],
                 [helper.make_tensor_value_info("a", TensorProto.UINT8, [None, k]),
                  helper.make_tensor_value_info("w", TensorProto.INT8, [k, n])],
                 [helper.make_tensor_value_info("y", TensorProto.INT32, [None, n])],
                 [numpy_helper.from_array(stored, "w")])
    report = exact_integer_ops(path, tmp_path / "u8.onnx", ExactIntegerConfig(u8_weights=True))
    assert report["matmul_integer"] == [{"node": "mmi", "method": "u8-integer-gemm"}]
    session = OnnxSession(tmp_path / "u8.onnx", threads=1)
    a = np.full((3, k), 255, np.uint8)
    np.testing.assert_array_equal(session.run({"a": a})["y"], a.astype(np.int64) @ stored.astype(np.int64))
    fed = rng.integers(-128, 128, (k, n)).astype(np.int8)
    np.testing.assert_array_equal(session.run({"a": a, "w": fed})["y"], a.astype(np.int64) @ fed.astype(np.int64))


def test_u8_weight_rewrite_leaves_what_it_cannot_take_to_the_float_rewrite(tmp_path):
    """s8 activations have no u8 x u8 form: those MatMulIntegers keep the float rewrite."""
    rng = np.random.default_rng(6)
    weights = rng.integers(-128, 128, (64, 8)).astype(np.int8)
    path = _save(tmp_path / "s8s8.onnx", [helper.make_node("MatMulInteger", ["a", "w"], ["y"], name="s8s8")],
                 [helper.make_tensor_value_info("a", TensorProto.INT8, [None, 64])],
                 [helper.make_tensor_value_info("y", TensorProto.INT32, [None, 8])],
                 [numpy_helper.from_array(weights, "w")])
    report = exact_integer_ops(path, tmp_path / "out.onnx", ExactIntegerConfig(u8_weights=True))
    assert report["matmul_integer"] == [{"node": "s8s8", "method": "float-chunks", "k_chunks": 1}]
    a = rng.integers(-128, 128, (4, 64)).astype(np.int8)
    np.testing.assert_array_equal(OnnxSession(tmp_path / "out.onnx", threads=1).run({"a": a})["y"],
                                  a.astype(np.int64) @ weights.astype(np.int64))


def _pair_limited(rng, k: int, n: int) -> np.ndarray:
    """int8 weights with |B[2j]| + |B[2j+1]| <= 128 everywhere, many pairs at exactly 128."""
    first = rng.integers(-128, 129, (k // 2, n))
    first = np.clip(first, -127, 127)
    second = (128 - np.abs(first)) * rng.choice(np.array([-1, 1]), (k // 2, n))
    return np.stack([first, second], 1).reshape(k, n).astype(np.int8)


def test_pair_limited_weights_are_exact_on_every_kernel(tmp_path):
    """The x86-avx2 profile's premise: int8 weights whose adjacent-row pairs satisfy
    |B[2j]| + |B[2j+1]| <= 128 give exact int32 sums on every kernel, the saturating one included
    (255 x 128 fits int16); one pair at 129 overflows VPMADDUBSW. tests/test_avx2_only.py runs
    this test with onnxruntime's saturating AVX2 kernel on any x86 with CPUID faulting."""
    rng = np.random.default_rng(4)
    k, n = 768, 48
    weights = _pair_limited(rng, k, n)
    assert (np.abs(weights[0::2].astype(int)) + np.abs(weights[1::2].astype(int))).max() == 128
    a = np.concatenate([np.full((4, k), 255, np.uint8), rng.integers(0, 256, (12, k), dtype=np.uint8)])
    got = OnnxSession(_matmul_integer_model(tmp_path / "safe.onnx", weights), threads=2).run({"a": a})["y"]
    np.testing.assert_array_equal(got, (a.astype(np.int64) - 7) @ weights.astype(np.int64))

    over = weights.copy()
    over[0, 0], over[1, 0] = 65, 64  # 129
    got = OnnxSession(_matmul_integer_model(tmp_path / "over.onnx", over), threads=2).run({"a": a})["y"]
    want = (a.astype(np.int64) - 7) @ over.astype(np.int64)
    if detect().int8_gemm == "s16-pairs":
        assert got[0, 0] != want[0, 0], "255 x 129 saturates the int16 pair sum"
        np.testing.assert_array_equal(got[:, 1:], want[:, 1:])
    else:
        np.testing.assert_array_equal(got, want)


def test_matmul_integer_rewrite_with_weight_zero_points(tmp_path):
    rng = np.random.default_rng(1)
    weights = rng.integers(0, 256, (96, 8)).astype(np.uint8)
    zero = rng.integers(100, 150, (8,)).astype(np.uint8)
    path = _matmul_integer_model(tmp_path / "u8.onnx", weights, zero)
    exact_integer_ops(path, tmp_path / "exact.onnx")
    a = rng.integers(0, 256, (5, 96), dtype=np.uint8)
    got = OnnxSession(tmp_path / "exact.onnx", threads=1).run({"a": a})["y"]
    want = (a.astype(np.int64) - 7) @ (weights.astype(np.int64) - zero.astype(np.int64))
    np.testing.assert_array_equal(got, want)


def test_dynamic_int8_graph_matches_this_cpu_where_no_pair_saturates(tmp_path):
    """A quantize_dynamic graph with 7-bit weights (never saturates anywhere): the rewrite runs
    DynamicQuantizeLinear like onnxruntime's fused kernel and gives the same floats."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    rng = np.random.default_rng(2)
    w = rng.standard_normal((64, 32)).astype(np.float32)
    fp32 = _save(tmp_path / "fp32.onnx",
                 [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Relu", ["m"], ["y"])],
                 [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 64])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 32])],
                 [numpy_helper.from_array(w, "w")])
    quantize_dynamic(str(fp32), str(tmp_path / "int8.onnx"), per_channel=True, reduce_range=True,
                     weight_type=QuantType.QInt8, extra_options={"MatMulConstBOnly": True})
    x = rng.standard_normal((10, 64)).astype(np.float32) * 3
    native = OnnxSession(tmp_path / "int8.onnx", threads=1).run({"x": x})["y"]
    exact_integer_ops(tmp_path / "int8.onnx", tmp_path / "exact.onnx")
    got = OnnxSession(tmp_path / "exact.onnx", threads=1).run({"x": x})["y"]
    np.testing.assert_allclose(got, native, rtol=1e-5, atol=1e-5)
    assert np.abs(got - np.maximum(x @ w, 0)).max() > 1e-4, "it is the quantized model, not the float one"


def test_qdq_matmul_rewrite_prevents_integer_fusion(tmp_path):
    rng = np.random.default_rng(3)
    w = rng.integers(-127, 128, (48, 16)).astype(np.int8)
    scale = np.full(16, 0.01, np.float32)
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"], name="dq_x"),
        helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wd"], name="dq_w", axis=1),
        helper.make_node("MatMul", ["xd", "wd"], ["y"]),
    ]
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(scale, "ws"),
             numpy_helper.from_array(np.zeros(16, np.int8), "wz"), numpy_helper.from_array(np.float32(0.05), "xs"),
             numpy_helper.from_array(np.int8(0), "xz")]
    path = _save(tmp_path / "qdq.onnx", nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 48])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 16])], inits)
    report = exact_integer_ops(path, tmp_path / "exact.onnx")
    assert sorted(report["dequantize_linear"]) == ["dq_w", "dq_x"]
    x = rng.standard_normal((6, 48)).astype(np.float32) * 4
    got = OnnxSession(tmp_path / "exact.onnx", threads=1).run({"x": x})["y"]
    xq = np.clip(np.rint(x / 0.05), -128, 127)
    want = (xq.astype(np.int64) @ w.astype(np.int64)) * 0.05 * 0.01
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_unknown_integer_ops_are_refused(tmp_path):
    path = _save(tmp_path / "qlinear.onnx",
                 [helper.make_node("QLinearMatMul", ["a", "as", "az", "b", "bs", "bz", "ys", "yz"], ["y"])],
                 [helper.make_tensor_value_info("a", TensorProto.UINT8, [None, 4])],
                 [helper.make_tensor_value_info("y", TensorProto.UINT8, [None, 4])], [])
    with pytest.raises(ConversionError, match="QLinearMatMul"):
        exact_integer_ops(path, tmp_path / "out.onnx")


@pytest.mark.parametrize(
    ("target", "host", "exact"),
    [("rpi5", "s16-pairs", True), ("rpi5", "int32", False), ("x86-avx512-vnni", "s16-pairs", True),
     ("jetson-orin", "s16-pairs", True), ("x86-avx2", "s16-pairs", False), ("x86-avx2", "int32", False)],
)
def test_validation_follows_the_target_arithmetic(target, host, exact):
    chosen = choose_validation(load_profile(target), "auto", host=host, u8u8_exact=True)
    assert chosen.exact_reference is exact and chosen.reason
    assert chosen.exact_gemm == ("u8-integer-gemm" if exact else None)
    assert choose_validation(load_profile(target), "exact", host=host, u8u8_exact=False).exact_gemm == "float-chunks"
    assert choose_validation(load_profile(target), "exact", host=host).exact_reference
    assert not choose_validation(load_profile(target), "host", host=host).exact_reference
    with pytest.raises(ValueError, match="validation mode"):
        choose_validation(load_profile(target), "fast", host=host)


class _Device:
    def __init__(self, kind):
        self.int8_gemm, self.cpu_model = kind, "test CPU"


def test_runtime_refuses_artifacts_this_cpu_would_compute_wrongly():
    manifest = {"target": {"id": "rpi5", "profile": {"int8": {"pair_sum_limit": 0}, "int4": {"kernel": "int8-gemm"}}}}
    int8 = {"name": "onnx-int8", "format": "onnx", "precision": "int8"}
    assert required_int8_gemm(int8, manifest) == ["int32"]  # old manifests: from the profile
    assert "overflow" in arithmetic_problem(int8, manifest, _Device("s16-pairs"))
    assert arithmetic_problem(int8, manifest, _Device("int32")) is None
    for safe in ({"name": "onnx-fp32", "format": "onnx", "precision": "fp32"},
                 {"name": "tflite-int8", "format": "tflite", "precision": "int8"},
                 {**int8, "requires": {"int8_gemm": ["int32", "s16-pairs"]}}):
        assert arithmetic_problem(safe, manifest, _Device("s16-pairs")) is None


@pytest.mark.slow  # real conversions
@pytest.mark.parametrize("target", ["rpi5", "x86-avx2"])
def test_conversion_scores_with_the_target_arithmetic(tiny_model_factory, tmp_path, target):
    """The manifest says how it was validated; the golden outputs are the target's numbers
    (the exact reference's for int32 targets), and the runtime agrees with `requires`."""
    out = tmp_path / "out"
    convert(ConvertConfig(model=tiny_model_factory("bert", "feature-extraction"), target=target, out=out,
                          latency_runs=2))
    manifest = json.loads((out / "manifest.json").read_text())
    host = detect().int8_gemm
    profile = load_profile(target)
    assert manifest["arithmetic"]["host_int8_gemm"] == host
    expect_exact = profile.int8.arithmetic == "int32" and host != "int32"
    assert manifest["arithmetic"]["method"] == ("exact-int32-reference" if expect_exact else "host-kernels")
    entry = next(a for a in manifest["artifacts"] if a["name"] == "onnx-int8")
    assert entry["requires"]["int8_gemm"] == (["int32"] if target != "x86-avx2" else ["int32", "s16-pairs"])
    # The golden outputs were computed like the metrics: the exact reference reproduces them.
    with np.load(out / entry["golden"]["path"]) as golden:
        inputs = {k[6:]: golden[k] for k in golden.files if k.startswith("input:")}
        want = {k[7:]: golden[k] for k in golden.files if k.startswith("output:")}
    exact = ValidationSessions(choose_validation(profile, "exact"), tmp_path)(out / entry["files"][0]["path"])
    for name, value in exact.run(inputs).items():
        np.testing.assert_allclose(value, want[name], rtol=1e-4, atol=1e-4)
    if arithmetic_problem(entry, manifest, detect()):
        with pytest.raises(edge_runtime.DeviceMismatchError, match="rpi5"):
            edge_runtime.load(out, artifact="onnx-int8")
    else:
        edge_runtime.load(out, artifact="onnx-int8")


def test_shape_inference_without_weight_values_infers_the_same_shapes():
    """The rewriter infers shapes on a copy without its large initializers' values (faster: onnx
    serializes the whole model for its C++ inference); small ones, which inference reads (a
    Reshape's target shape here), keep their values, and the model itself is left whole."""
    import onnx

    weight = numpy_helper.from_array(np.arange(64 * 96, dtype=np.float32).reshape(64, 96) / 1e3, "w")
    target = numpy_helper.from_array(np.array([-1, 4, 24], np.int64), "target")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"]), helper.make_node("Reshape", ["y", "target"], ["z"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 64])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)], [weight, target])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])

    def shapes(m):
        inferred = onnx.shape_inference.infer_shapes(m, strict_mode=True)
        return {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
                for v in list(inferred.graph.value_info) + list(inferred.graph.output)}

    light = without_weight_values(model)
    assert shapes(light) == shapes(model) == {"y": [2, 96], "z": [2, 4, 24]}
    stripped = {i.name: i for i in light.graph.initializer}
    assert not stripped["w"].raw_data and list(stripped["w"].dims) == [64, 96]
    assert numpy_helper.to_array(stripped["target"]).tolist() == [-1, 4, 24]
    assert numpy_helper.to_array(model.graph.initializer[0]).shape == (64, 96)  # the original keeps its values
