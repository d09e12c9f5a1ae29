"""INT4 weight-only pass on a tiny exported BERT: graph form, size and numbers against FP32."""

from __future__ import annotations

import time

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from converters._errors import ConversionError, UnsupportedModelError
from converters.core.validate import make_batches
from converters.export.export_onnx import ExportConfig, export_onnx
from converters.inputs.calibration import load_texts
from converters.inputs.source import load_source
from converters.onnx.int4_blocks import _clip_search
from converters.onnx.quantize_int4 import Int4Config, quantize_int4

# The tiny model's tables (400 x 32 words, 128 x 32 positions) are far below the default
# threshold; this lets them qualify while the 2 x 32 token-type table still stays FP32.
TINY_TABLES = 1000
# Tolerances, from measurements on this tiny random BERT (hidden 32, 2 layers) over held-out
# texts: per-token cosine vs FP32 was 0.9967-0.9969 mean / 0.991 min for rtn and clip_search,
# mask-mean-pooled min 0.998. The bounds allow about twice that error.
TOKEN_COSINE_MEAN = 0.993
POOLED_COSINE_MIN = 0.995


@pytest.fixture(scope="module")
def exported(tiny_model_factory, tmp_path_factory):
    source = load_source(tiny_model_factory("bert", "feature-extraction"))
    path = export_onnx(source, tmp_path_factory.mktemp("int4") / "m.onnx", ExportConfig())
    texts = load_texts().texts
    calibration = make_batches(source, texts[:32])
    heldout = make_batches(source, texts[32:64], batch_size=32)[0]  # texts the pass never saw
    return path, calibration, heldout


def _run(path, feeds):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def _cosines(path, quantized, feeds) -> tuple[np.ndarray, np.ndarray]:
    """Per real token, and per sequence after mask-mean pooling."""
    want, got = _run(path, feeds).astype(np.float64), _run(quantized, feeds).astype(np.float64)
    mask = feeds["attention_mask"].astype(bool)

    def cos(a, b):
        return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)

    weights = mask[..., None]
    return cos(want[mask], got[mask]), cos((want * weights).sum(1), (got * weights).sum(1))


def _bits(path) -> dict[str, int]:
    graph = onnx.load(str(path)).graph
    return {
        n.name: next(a.i for a in n.attribute if a.name == "bits")
        for n in graph.node
        if n.op_type == "MatMulNBits"
    }


@pytest.mark.parametrize("algorithm", ["rtn", "clip_search", "auto"])
def test_int4_rewrites_every_weight_and_stays_close(exported, tmp_path, algorithm):
    path, calibration, heldout = exported
    out = tmp_path / "q.onnx"
    report = quantize_int4(
        path, out, Int4Config(algorithm=algorithm, embedding_min_elements=TINY_TABLES), calibration
    )

    graph = onnx.load(str(out)).graph
    ops = [n.op_type for n in graph.node]
    constants = {i.name for i in graph.initializer}
    assert ops.count("MatMulNBits") == 12  # 2 layers x (q, k, v, attention out, FFN in, FFN out)
    assert not [n.name for n in graph.node if n.op_type == "MatMul" and n.input[1] in constants]
    gathers = {n.input[0]: n for n in graph.node if n.op_type == "GatherBlockQuantized"}
    assert len(gathers) == 2  # word and position tables
    for table in gathers:
        assert (
            next(i for i in graph.initializer if i.name == table).data_type
            == onnx.TensorProto.UINT4
        )
    assert [k["shape"] for k in report["unquantized"]] == [[2, 32]]  # token types: 64 floats
    assert set(_bits(out).values()) == {4}

    assert report["bytes_after"] == out.stat().st_size
    assert (
        report["size_ratio"] < 0.45
    )  # measured 0.38: biases and LayerNorms weigh a lot at hidden 32
    if algorithm == "auto":
        assert set(report["candidates"]) == {"rtn", "clip_search"}
        assert report["algorithm"] in report["candidates"]
    else:
        assert report["algorithm"] == algorithm and list(report["candidates"]) == [algorithm]
    assert report["metrics"]["cosine_min"] > POOLED_COSINE_MIN  # the pass's own calibration metric

    token, pooled = _cosines(path, out, heldout)
    assert token.mean() > TOKEN_COSINE_MEAN, f"{algorithm}: token cosine {token.mean():.4f}"
    assert pooled.min() > POOLED_COSINE_MIN, f"{algorithm}: pooled cosine min {pooled.min():.4f}"


def test_mixed_precision_int8_nodes_and_size_budget(exported, tmp_path):
    path, calibration, heldout = exported
    base = quantize_int4(
        path,
        tmp_path / "q4.onnx",
        Int4Config(algorithm="rtn", embedding_min_elements=TINY_TABLES),
        calibration,
    )
    chosen = (
        "/inner/encoder/layer.1/attention/self/value/MatMul",
        "/inner/encoder/layer.1/output/dense/MatMul",
    )
    mixed = tmp_path / "mixed.onnx"
    report = quantize_int4(
        path,
        mixed,
        Int4Config(algorithm="rtn", int8_nodes=chosen, embedding_min_elements=TINY_TABLES),
        calibration,
    )
    bits = _bits(mixed)
    assert {name[: -len("_Q8")] for name, b in bits.items() if b == 8} == set(chosen)
    assert sum(b == 4 for b in bits.values()) == 10
    assert {n: v["bits"] for n, v in report["nodes"].items() if v["bits"] == 8} == dict.fromkeys(
        chosen, 8
    )
    assert base["bytes_after"] < report["bytes_after"] < report["bytes_before"]
    token, _ = _cosines(path, mixed, heldout)
    assert token.mean() > TOKEN_COSINE_MEAN

    # A budget between all-4-bit (0.38x) and all-8-bit: some MatMuls move to 8-bit, the file fits
    # (measured: 3 moved, 0.442x).
    budget = 0.45
    fitted = quantize_int4(
        path,
        tmp_path / "budget.onnx",
        Int4Config(algorithm="rtn", size_budget=budget, embedding_min_elements=TINY_TABLES),
        calibration,
    )
    assert fitted["bytes_after"] <= budget * fitted["bytes_before"]
    assert any(v["bits"] == 8 for v in fitted["nodes"].values())
    assert _loss(fitted["metrics"]) < _loss(
        base["metrics"]
    )  # each move was kept only if it measured better
    with pytest.raises(ConversionError, match="size budget"):
        quantize_int4(
            path,
            tmp_path / "small.onnx",
            Int4Config(algorithm="rtn", size_budget=0.2, embedding_min_elements=TINY_TABLES),
            calibration,
        )


def _loss(metrics):
    return (1 - metrics["cosine_mean"]) + 0.25 * (1 - metrics["cosine_min"])


def test_clip_search_never_worse_than_round_to_nearest():
    rng = np.random.default_rng(0)
    blocks = rng.standard_t(df=3, size=(64, 4, 32)).astype(
        np.float32
    )  # heavy tails: outliers to clip
    importance = rng.gamma(0.5, size=(1, 4, 32)).astype(np.float32)  # uneven input channels

    def error(ratios):
        q, scale, zero = _clip_search(blocks, importance, np.asarray(ratios, np.float32))
        diff = blocks - (q.astype(np.float32) - zero[..., None]) * scale[..., None]
        return (diff * diff * importance).sum(-1)

    rtn, searched = error([1.0]), error(np.linspace(0.5, 1.0, 16))
    assert (searched <= rtn * (1 + 1e-5)).all()
    assert searched.sum() < 0.9 * rtn.sum()  # measured 0.77x on this draw


@pytest.mark.parametrize("importance_rows", [0, 1, 37])
def test_clip_search_in_steps_equals_one_pass(monkeypatch, importance_rows):
    """_clip_search walks the rows in cache-sized steps: the same bytes as one pass over the whole
    array (uneven last step; importance absent, broadcast, or one row per block row)."""
    from converters.onnx import int4_blocks

    rng = np.random.default_rng(1)
    blocks = rng.standard_t(df=3, size=(37, 5, 32)).astype(np.float32)
    importance = None if importance_rows == 0 else rng.gamma(0.5, size=(importance_rows, 5, 32)).astype(np.float32)
    ratios = np.linspace(0.6, 1.0, 5, dtype=np.float32)
    whole = int4_blocks._clip_search_rows(blocks, importance, ratios)
    monkeypatch.setattr(int4_blocks, "_CLIP_STEP_ELEMENTS", 4 * 5 * 32)  # steps of 4 rows: 10 steps
    stepped = int4_blocks._clip_search(blocks, importance, ratios)
    for a, b in zip(whole, stepped):
        assert a.dtype == b.dtype and np.array_equal(a, b)


@pytest.mark.parametrize("threads", [1, 3])
def test_clip_search_threads_give_the_same_bytes_and_count_rows(monkeypatch, threads):
    """The steps run on several threads (numpy releases the GIL in each pass): the result does
    not depend on how many, and the rows finished are told in order, up to all of them."""
    from converters.onnx import int4_blocks

    rng = np.random.default_rng(2)
    blocks = rng.standard_t(df=3, size=(37, 5, 32)).astype(np.float32)
    ratios = np.linspace(0.6, 1.0, 5, dtype=np.float32)
    whole = int4_blocks._clip_search_rows(blocks, None, ratios)
    monkeypatch.setattr(int4_blocks, "_CLIP_STEP_ELEMENTS", 4 * 5 * 32)  # steps of 4 rows
    monkeypatch.setattr(int4_blocks, "_clip_threads", lambda: threads)
    told: list[tuple[int, int]] = []
    stepped = int4_blocks._clip_search(blocks, None, ratios, lambda done, total: told.append((done, total)))
    for a, b in zip(whole, stepped):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    assert told == [(min(k, 37), 37) for k in range(4, 41, 4)]


def test_errors_say_what_to_fix(exported, tmp_path):
    path, calibration, _ = exported
    with pytest.raises(ValueError, match="power of two"):
        Int4Config(block_size=24)
    with pytest.raises(ValueError, match="algorithm"):
        Int4Config(algorithm="gptq")
    with pytest.raises(UnsupportedModelError, match="these are"):
        quantize_int4(path, tmp_path / "x.onnx", Int4Config(int8_nodes=("nope",)), calibration)
    with pytest.raises(ValueError, match="calibration batches"):
        quantize_int4(path, tmp_path / "x.onnx", Int4Config(), [])


def test_a_clip_search_stopped_midway_leaves_no_step_running(monkeypatch):
    """An error (or a Ctrl-C) raised while the steps run stops the search: the steps not started
    are cancelled instead of run to the end before the error reaches the caller."""
    from converters.onnx import int4_blocks

    blocks = np.random.default_rng(3).standard_normal((40, 2, 32)).astype(np.float32)
    monkeypatch.setattr(int4_blocks, "_CLIP_STEP_ELEMENTS", 2 * 32)  # 40 steps of one row
    monkeypatch.setattr(int4_blocks, "_clip_threads", lambda: 2)
    ran: list[int] = []
    plain = int4_blocks._clip_search_rows

    def counted(rows, importance, ratios):
        ran.append(1)
        if len(ran) > 3:  # later steps are slow: the stop arrives while they queue
            time.sleep(0.2)
        return plain(rows, importance, ratios)

    monkeypatch.setattr(int4_blocks, "_clip_search_rows", counted)

    def stop(done, total):
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        int4_blocks._clip_search(blocks, None, np.linspace(0.7, 1.0, 3, dtype=np.float32), stop)
    assert len(ran) <= 8  # the running steps finish; the queued ones never start
