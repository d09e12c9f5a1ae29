"""TFLite recipes of converters/tflite/ beyond ai-edge-quantizer's stock ones:
gptq_wi4b32_afp32 (GPTQ INT4 + measured INT8 fallback within a size budget) on a tiny random
BERT, the flatbuffer it writes, its numbers against PyTorch, and the recipes refused.

One export (buckets 16 and 32) is shared by the module; calibration and held-out texts are
disjoint slices of the built-in set.
"""

from __future__ import annotations

import numpy as np
import pytest

# Required dependencies (setup.cfg): imported, never skipped, so a broken install fails here.
import ai_edge_litert  # noqa: E402,F401
import ai_edge_quantizer  # noqa: E402,F401
import litert_torch  # noqa: E402,F401

from converters._errors import AccuracyError, ConversionError
from converters.core.gptq import HessianPolicy
from converters.core.search import SearchExhausted
from converters.core.validate import make_batches
from converters.inputs.calibration import load_texts
from converters.inputs.source import load_source
from converters.tflite import GptqInt4Config, TfliteExportConfig, export_tflite, quantize_tflite
from converters.tflite.flatbuffer import Weight, compact_copy, find_weights
from converters.tflite.gptq_int4 import gptq_int4, pack_int4, unpack_int4, write_int4
from edge_runtime import backends

# The tiny model's word table (400 x 32) is far below the default threshold; this lets it be
# quantized while the 2 x 32 token-type table still stays float.
TINY_TABLES = 1000
# Sentence cosine (mask-mean pooled) vs PyTorch on 48 held-out texts, tiny random BERT
# (hidden 32: one 32-block per weight row), ai-edge-litert 2.3 XNNPACK, measured: stock
# dynamic_wi4b32_afp32 0.9917 mean / 0.9876 min; gptq_wi4b32_afp32 0.9994 / 0.9978 all-INT4,
# 0.9995 / 0.9982 with 3 INT8 weights. The floors allow about three times the GPTQ error.
GPTQ_COSINE_MEAN = 0.998
GPTQ_COSINE_MIN = 0.994


@pytest.fixture(scope="module")
def bert(tiny_model_factory, tmp_path_factory):
    source = load_source(tiny_model_factory("bert", "feature-extraction"))
    root = tmp_path_factory.mktemp("tflite-recipes")
    export_tflite(source, root / "fp32.tflite", TfliteExportConfig(buckets=(16, 32)))
    texts = load_texts().texts
    calibration = make_batches(source, texts[:48])
    heldout = list(texts[48:96])
    return source, root / "fp32.tflite", calibration, heldout


@pytest.fixture(scope="module")
def gptq_all_int4(bert, tmp_path_factory):
    _, fp32, calibration, _ = bert
    path = tmp_path_factory.mktemp("gptq") / "int4.tflite"
    config = GptqInt4Config(embedding_min_elements=TINY_TABLES)
    report = quantize_tflite(fp32, path, "gptq_wi4b32_afp32", calibration, int4=config)
    return path, report


def _encode(source, texts: list[str]) -> dict[str, np.ndarray]:
    """int64 feeds cut to the longest bucket (32); token types zeros."""
    enc = source.tokenizer(texts, padding=True, truncation=True, max_length=32, return_tensors="np")
    ids = enc["input_ids"].astype(np.int64)
    return {n: enc[n].astype(np.int64) if n in enc else 0 * ids for n in source.input_names}


def _pooled_cosines(source, path, texts) -> np.ndarray:
    """Per text (batch 1, no padding): cosine of mask-mean pooled outputs, runtime vs PyTorch."""
    import torch

    session = backends.open_session("tflite", path, threads=2)
    cosines = []
    for text in texts:
        feeds = _encode(source, [text])
        got = session.run(feeds)[source.output_names[0]][0].mean(0).astype(np.float64)
        with torch.no_grad():
            args = [torch.from_numpy(feeds[n]) for n in source.input_names]
            want = source.module(*args).numpy()[0].mean(0).astype(np.float64)
        cosines.append(got @ want / np.linalg.norm(got) / np.linalg.norm(want))
    return np.array(cosines)


@pytest.mark.slow  # a TFLite export and quantization
def test_rows_alone_gives_the_padded_batch_numbers(bert, gptq_all_int4):
    """The searches score .tflite candidates a text at a time at its own length (rows_alone,
    converters/core/validate.py) instead of in the bucket of the batch's widest text: on the
    real tokens the outputs are the same numbers (masked keys add exact zeros)."""
    from converters.core.validate import rows_alone

    source, fp32, _, heldout = bert
    feeds = _encode(source, ["Fine.", "A short text, under sixteen tokens.", "Two words"] + heldout[:5])
    lengths = feeds["attention_mask"].sum(axis=1)
    assert lengths.min() <= 16 < lengths.max(), "rows in both buckets (16, 32)"
    name = source.output_names[0]
    for path in (fp32, gptq_all_int4[0]):
        session = backends.open_session("tflite", path, threads=2)
        batched = session.run(feeds)[name]
        alone = rows_alone(session.run, frozenset({name}))(feeds)[name]
        for row, length in enumerate(lengths):
            np.testing.assert_allclose(alone[row, :length], batched[row, :length], rtol=0, atol=1e-6)
            assert not alone[row, length:].any()


def _weight_types(path) -> dict[str, list[str]]:
    """Per op kind (FULLY_CONNECTED, EMBEDDING_LOOKUP): the weight tensor types of subgraph 0."""
    from pathlib import Path

    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAs(Path(path).read_bytes(), 0)
    ops = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    types = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    graph = model.Subgraphs(0)
    found: dict[str, list[str]] = {}
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        code = model.OperatorCodes(op.OpcodeIndex())
        kind = ops[max(code.BuiltinCode(), code.DeprecatedBuiltinCode())]
        if kind in ("FULLY_CONNECTED", "EMBEDDING_LOOKUP"):
            found.setdefault(kind, []).append(types[graph.Tensors(op.Inputs(1)).Type()])
    return found


@pytest.mark.slow  # a TFLite export and quantization
def test_gptq_int4_layout_and_accuracy(bert, gptq_all_int4, tmp_path):
    source, fp32, _, heldout = bert
    path, report = gptq_all_int4

    types = _weight_types(path)
    assert types["FULLY_CONNECTED"] == ["INT4"] * 12  # 2 layers x (Q, K, V, out, FFN in, out)
    assert sorted(types["EMBEDDING_LOOKUP"]) == ["FLOAT32", "INT4"]  # token types stay float
    assert report["precision"] == "int4" and report["signatures"] == ["seq16", "seq32"]
    assert report["promoted"] == {"to": "int8", "weights": []} and report["search"] == []
    schemes = [layer["scheme"] for layer in report["layers"].values()]
    assert schemes.count("int4 block 32, GPTQ") == 12
    assert report["config"]["block_size"] == 32 and report["hessian_rows"] > len(heldout)
    assert report["hessians_from"] == "the TFLite interpreter"  # no ONNX twin given
    assert report["smoothing"] is None and report["config"]["smooth_alpha"] is None  # INT4: off by default

    gptq = _pooled_cosines(source, path, heldout)
    assert gptq.mean() >= GPTQ_COSINE_MEAN and gptq.min() >= GPTQ_COSINE_MIN, gptq

    # Same bytes layout, round-to-nearest values: GPTQ must be measurably closer to PyTorch.
    stock = tmp_path / "stock.tflite"
    quantize_tflite(fp32, stock, "dynamic_wi4b32_afp32")
    nearest = _pooled_cosines(source, stock, heldout)
    assert (1 - gptq).mean() < 0.5 * (1 - nearest).mean(), (gptq.mean(), nearest.mean())


@pytest.mark.slow  # a TFLite export and quantization
def test_size_budget_keeps_the_most_sensitive_layers_int8(bert, gptq_all_int4, tmp_path):
    source, fp32, calibration, heldout = bert
    all_int4, _ = gptq_all_int4
    fp32_bytes = fp32.stat().st_size
    # Room for a few INT8 weights (a 32 x 64 FFN weight costs ~1.1 KB more as INT8).
    budget = (all_int4.stat().st_size + 3000) / fp32_bytes
    path = tmp_path / "mixed.tflite"
    config = GptqInt4Config(size_budget=budget, embedding_min_elements=TINY_TABLES)
    report = quantize_tflite(fp32, path, "gptq_wi4b32_afp32", calibration, int4=config)

    assert path.stat().st_size <= budget * fp32_bytes
    kept = report["promoted"]["weights"]
    assert 1 <= len(kept) < 12
    types = _weight_types(path)["FULLY_CONNECTED"]
    assert types.count("INT8") == len(kept) and types.count("INT4") == 12 - len(kept)
    for name in kept:
        assert report["layers"][name]["scheme"] == "int8 per channel"
    steps = [s for s in report["search"][1:] if s.get("accepted")]
    assert {s["candidate"] for s in steps} == set(kept)
    losses = [report["search"][0]["metrics"]] + [s["metrics"] for s in steps]
    loss = [(1 - m["cosine_mean"]) + 0.25 * (1 - m["cosine_min"]) for m in losses]
    assert loss == sorted(loss, reverse=True)  # every accepted move lowered the loss

    mixed = _pooled_cosines(source, path, heldout)
    assert mixed.mean() >= GPTQ_COSINE_MEAN and mixed.min() >= GPTQ_COSINE_MIN, mixed


@pytest.mark.slow  # a TFLite export and quantization
def test_size_budget_below_all_int4_is_refused(bert, tmp_path):
    _, fp32, calibration, _ = bert
    config = GptqInt4Config(size_budget=0.01, embedding_min_elements=TINY_TABLES)
    with pytest.raises(AccuracyError, match=r"all-INT4 model is \d+ bytes .* above the size budget of \d+ bytes \(0\.01x FP32.s \d+, GptqInt4Config\.size_budget\): raise the budget"):
        quantize_tflite(fp32, tmp_path / "x.tflite", "gptq_wi4b32_afp32", calibration, int4=config)
    assert not list(tmp_path.glob("*.tflite"))  # probes and the compact copy are removed


@pytest.mark.slow  # a TFLite export and quantization
def test_recipe_errors(bert, tmp_path):
    _, fp32, calibration, _ = bert
    with pytest.raises(ConversionError, match="static_wi8_ai8.*not supported.*LayerNorm"):
        quantize_tflite(fp32, tmp_path / "x.tflite", "static_wi8_ai8", calibration)
    with pytest.raises(ConversionError, match="static_wi8_ai16.*not supported.*int16"):
        quantize_tflite(fp32, tmp_path / "x.tflite", "static_wi8_ai16", calibration)
    with pytest.raises(ConversionError, match="needs calibration"):
        quantize_tflite(fp32, tmp_path / "x.tflite", "gptq_wi4b32_afp32")
    with pytest.raises(ConversionError, match="GptqInt4Config applies to gptq_wi4b32_afp32"):
        quantize_tflite(fp32, tmp_path / "x.tflite", "dynamic_wi8_afp32", int4=GptqInt4Config())
    with pytest.raises(ConversionError, match="size_budget 1.5"):
        GptqInt4Config(size_budget=1.5)
    with pytest.raises(ValueError, match="damp 0.0 must be in"):
        HessianPolicy(damp=0.0)


@pytest.mark.slow  # a TFLite export and quantization
def test_writer_refuses_a_layout_it_does_not_know(bert, gptq_all_int4, tmp_path):
    """write_int4 checks the quantizer's layout before writing: on an INT8 model it refuses."""
    _, fp32, _, _ = bert
    int8 = tmp_path / "int8.tflite"
    quantize_tflite(fp32, int8, "dynamic_wi8_afp32")
    weights = {b: w for b, w in find_weights(fp32).items() if w.kind == "FULLY_CONNECTED"}
    weight: Weight = next(iter(weights.values()))
    codes = np.zeros(weight.shape, np.int8)
    scales = np.ones((weight.shape[0], weight.shape[1] // 32), np.float32)
    floats = {weight.buffer: np.zeros(weight.shape, np.float32)}
    before = int8.read_bytes()
    with pytest.raises(ConversionError, match="unexpected INT4 layout.*not one INT4 blockwise"):
        write_int4(int8, weights, floats, {weight.buffer: (codes, scales)})
    assert int8.read_bytes() == before


@pytest.mark.slow  # a TFLite export and quantization
def test_compact_copy_keeps_numbers_and_drops_name_bytes(bert, tmp_path):
    source, fp32, _, heldout = bert
    compact = tmp_path / "compact.tflite"
    compact_copy(fp32, compact)
    assert compact.stat().st_size < fp32.stat().st_size
    a = backends.open_session("tflite", fp32, threads=1)
    b = backends.open_session("tflite", compact, threads=1)
    feeds = _encode(source, heldout[:3])
    name = source.output_names[0]
    np.testing.assert_array_equal(a.run(feeds)[name], b.run(feeds)[name])


def test_gptq_rounding_beats_round_to_nearest():
    """On correlated inputs GPTQ's codes give a smaller layer-output error than rounding each
    weight to the nearest point of the same grid; codes and scales are what XNNPACK takes."""
    import ml_dtypes

    rng = np.random.default_rng(0)
    mixing = rng.normal(size=(64, 64))
    x = rng.normal(size=(2000, 64)) @ mixing  # correlated input channels
    weight = rng.normal(size=(48, 64)).astype(np.float32)
    hessian = x.T @ x / len(x)
    codes, scales = gptq_int4(weight, hessian, damp=0.03)

    assert codes.dtype == np.int8 and codes.min() >= -8 and codes.max() <= 7
    assert scales.shape == (48, 2)
    np.testing.assert_array_equal(scales.astype(ml_dtypes.bfloat16).astype(np.float32), scales)
    step = np.repeat(scales, 32, axis=1)
    nearest = np.clip(np.rint(weight / step), -8, 7)

    def output_error(q):
        return float(np.linalg.norm(x @ (weight - q * step).T))

    assert output_error(codes) < 0.8 * output_error(nearest)


@pytest.mark.parametrize("count", [64, 63])
def test_int4_packing_round_trips(count):
    codes = np.random.default_rng(count).integers(-8, 8, count).astype(np.int8)
    packed = pack_int4(codes)
    assert packed.size == (count + 1) // 2
    assert packed[0] == (codes[0] & 0x0F) | ((codes[1] & 0x0F) << 4)  # first value: low nibble
    np.testing.assert_array_equal(unpack_int4(packed, count), codes)


@pytest.mark.slow  # a TFLite export and quantization
def test_pipeline_ships_gptq_int4_and_the_runtime_runs_it(tiny_model_factory, tmp_path, monkeypatch):
    """edge-convert for rpi5 with the profile's INT4 recipe (gptq_wi4b32_afp32) and no size
    budget (a tiny model's float norms and position tables alone exceed 0.16x): the artifact is
    calibrated, validated, shipped with its layer report, and edge_runtime embeds with it."""
    import dataclasses
    import json

    import edge_runtime
    from converters import options, pipeline
    from targets import load_profile

    profile = load_profile("rpi5")
    assert profile.tflite.recipes["int4"] == "gptq_wi4b32_afp32" and profile.tflite.int4_size_budget
    unbudgeted = dataclasses.replace(profile, tflite=dataclasses.replace(profile.tflite, int4_size_budget=None))
    monkeypatch.setattr(options, "load_profile", lambda target: unbudgeted)  # where convert() reads it
    messages: list[str] = []
    model = tiny_model_factory("bert", "feature-extraction")
    out = tmp_path / "art"
    pipeline.convert(pipeline.ConvertConfig(model=model, target="rpi5", out=out, latency_runs=2), messages.append)

    manifest = json.loads((out / "manifest.json").read_text())
    entry = next(a for a in manifest["artifacts"] if a["name"] == "tflite-int4")
    quant = entry["quantization"]
    assert quant["recipe"] == "gptq_wi4b32_afp32" and quant["promoted"]["weights"] == []
    assert quant["calibration_rows"] > 0 and quant["config"]["size_budget"] is None
    assert entry["metrics"]["cosine_mean"] >= profile.accuracy.for_precision("int4").cosine_mean
    assert any("[tflite-int4] GPTQ:" in m for m in messages), messages  # progress on the long step

    model = edge_runtime.load(out, artifact="tflite-int4", threads=1)
    texts = ["a short one", "The meeting has been rescheduled to next Tuesday."]
    got = model.embed(texts)
    want = edge_runtime.load(out, artifact="tflite-fp32", threads=1).embed(texts)
    assert got.shape == want.shape
    assert (got * want).sum(1).min() >= GPTQ_COSINE_MIN  # unit vectors: dot = cosine


@pytest.mark.slow  # a TFLite export and quantization
def test_gptq_int8_keeps_the_stock_layout_and_is_closer_to_pytorch(bert, tmp_path):
    source, fp32, calibration, heldout = bert
    stock, ours, unsmoothed = tmp_path / "stock.tflite", tmp_path / "gptq.tflite", tmp_path / "unsmoothed.tflite"
    quantize_tflite(fp32, stock, "dynamic_wi8_afp32")
    report = quantize_tflite(fp32, ours, "gptq_wi8_afp32", calibration)
    quantize_tflite(fp32, unsmoothed, "gptq_wi8_afp32", calibration, smooth_alpha=None)

    assert report["precision"] == "int8" and report["gptq"]["weights"] == 12
    assert report["gptq"]["hessian_rows"] > report["gptq"]["calibration_rows"] > 0
    # No ONNX twin given; the FC inputs smoothed first (converters/tflite/smooth.py)
    assert report["gptq"]["hessians_from"] == "the TFLite interpreter, rescaled by the smoothing"
    assert _weight_types(ours) == _weight_types(stock)  # same weight tensors and types
    # Unsmoothed, only the codes differ; smoothed, one MUL constant per FC input is added.
    assert unsmoothed.stat().st_size == stock.stat().st_size
    assert 0 < ours.stat().st_size - stock.stat().st_size < 0.02 * stock.stat().st_size  # 4 KB here
    gptq, nearest = _pooled_cosines(source, ours, heldout), _pooled_cosines(source, stock, heldout)
    assert gptq.min() >= 0.999, gptq
    assert (1 - gptq).mean() < (1 - nearest).mean(), (gptq.mean(), nearest.mean())


@pytest.mark.slow  # a TFLite export and quantization
def test_gptq_int8_keeps_sensitive_weights_float_below_the_floor(bert, tmp_path):
    _, fp32, calibration, _ = bert
    path = tmp_path / "int8.tflite"
    # An unreachable floor: the shared search keeps weights float while each helps, up to half
    # of them, then refuses naming what it tried.
    with pytest.raises(SearchExhausted, match="still below the accuracy floor") as caught:
        quantize_tflite(fp32, path, "gptq_wi8_afp32", calibration, floor=(1.0, 1.0))
    result = caught.value.result
    assert 1 <= len(result.moved) <= 6  # the cap: half of the 12 FULLY_CONNECTED weights
    accepted = [s["candidate"] for s in result.steps if s.get("accepted")]
    assert len(accepted) == len(result.moved)
    # A floor a few float weights reach: they are written float, the others INT8.
    start = result.steps[0]["metrics"]
    reachable = (min(1.0, start["cosine_mean"] + 1e-7), start["cosine_min"])
    report = quantize_tflite(fp32, path, "gptq_wi8_afp32", calibration, floor=reachable)
    kept = report["promoted"]["weights"]
    types = _weight_types(path)["FULLY_CONNECTED"]
    assert types.count("FLOAT32") == len(kept) and types.count("INT8") == 12 - len(kept)
    assert report["gptq"]["weights"] == 12 - len(kept)
    # A floor the all-INT8 model meets changes nothing.
    report = quantize_tflite(fp32, path, "gptq_wi8_afp32", calibration, floor=(0.5, 0.5))
    assert report["promoted"]["weights"] == [] and "search" not in report


@pytest.mark.slow  # a TFLite export and two Hessian taps
def test_hessians_are_tapped_once_and_shared_with_the_compact_copy(bert, tmp_path):
    """gptq_wi8_afp32 reads the export, gptq_wi4b32_afp32 its compact copy (renamed tensors,
    moved buffers): one HessianCache serves both with the statistics of a direct tap."""
    from converters.tflite.flatbuffer import FC
    from converters.tflite.hessians import HessianCache, collect_hessians, with_prefixes
    from converters.tflite.signatures import calibration_rows, signature_lengths

    _, fp32, calibration, _ = bert
    rows = with_prefixes(calibration_rows(calibration, max(signature_lengths(fp32))), (1, 2, 3))
    compact = tmp_path / "compact.tflite"
    compact_copy(fp32, compact)
    fcs = {b: w for b, w in find_weights(fp32).items() if w.kind == FC}
    compact_fcs = {b: w for b, w in find_weights(compact).items() if w.kind == FC}
    cache = HessianCache()
    cache.get(fp32, fcs, rows)
    shared = cache.get(compact, compact_fcs, rows, source=fp32)
    assert cache.collected == len(fcs) == len(compact_fcs) == 12  # tapped once
    direct = collect_hessians(compact, compact_fcs, rows)
    for buffer in compact_fcs:
        np.testing.assert_allclose(shared[buffer][0], direct[buffer], rtol=1e-5, atol=1e-7)
        assert shared[buffer][1] == HessianCache.INTERPRETER
    # Other rows or another weighting are other statistics.
    cache.get(fp32, fcs, rows[:10])
    cache.get(fp32, fcs, rows, weighting="token")
    assert cache.collected == 3 * len(fcs)


@pytest.mark.slow  # a TFLite export, an ONNX export and a Hessian tap
@pytest.mark.parametrize("weighting", ["row", "token"])
def test_hessians_from_the_onnx_twin_equal_the_interpreter_tap(bert, tiny_model_factory, tmp_path, weighting):
    """The plain ONNX export of the same model gives the statistics the interpreter taps (same
    weights matched by value, same real tokens, same weighting), in one batched run; a twin
    missing a weight (another model) sends the cache back to the interpreter."""
    from converters.export.export_onnx import ExportConfig, export_onnx
    from converters.tflite.flatbuffer import FC
    from converters.tflite.hessians import HessianCache, collect_hessians, onnx_twin_hessians, with_prefixes
    from converters.tflite.signatures import calibration_rows, signature_lengths

    import torch

    _, _, calibration, _ = bert
    source = load_source(tiny_model_factory("bert", "feature-extraction"))
    # Trained-like LayerNorms (a fresh model's are gamma 1, beta 0): litert-torch folds gamma
    # into the FC that follows, so those inputs must be un-normalized on the ONNX side.
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in source.module.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.copy_(0.5 + torch.rand(module.weight.shape, generator=generator))
                module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=generator))
    fp32 = tmp_path / "fp32.tflite"
    export_tflite(source, fp32, TfliteExportConfig(buckets=(16, 32)))
    rows = with_prefixes(calibration_rows(calibration, max(signature_lengths(fp32))), (1, 2, 3))
    fcs = {b: w for b, w in find_weights(fp32).items() if w.kind == FC}
    twin = export_onnx(source, tmp_path / "export.onnx", ExportConfig())
    tapped_told: list[tuple[int, int]] = []
    tapped = collect_hessians(fp32, fcs, rows, weighting, lambda done, total: tapped_told.append((done, total)))
    assert tapped_told == [(k, len(rows)) for k in range(len(rows) + 1)]
    cache = HessianCache(twin=twin)
    twin_told: list[tuple[int, int]] = []
    read = cache.get(fp32, fcs, rows, weighting=weighting, progress=lambda done, total: twin_told.append((done, total)))
    assert cache.from_twin == cache.collected == len(fcs) == 12
    assert twin_told[0][0] == 0 and twin_told[-1][0] == twin_told[-1][1] >= 1  # the twin's batches
    told_before = len(twin_told)
    cache.get(fp32, fcs, rows, weighting=weighting, progress=lambda done, total: twin_told.append((done, total)))
    assert cache.collected == 12 and len(twin_told) == told_before  # a hit: nothing collected, nothing told
    for buffer in fcs:
        scale = np.abs(tapped[buffer]).max()
        np.testing.assert_allclose(read[buffer][0], tapped[buffer], rtol=1e-4, atol=1e-5 * scale)
        assert read[buffer][1] == HessianCache.TWIN

    # Prefetched before the .tflite is read (every MatMul input of the twin, one onnxruntime
    # and one BLAS thread, as the pipeline does while the export runs): get() then runs nothing
    # and returns the same Hessians bit for bit.
    from threadpoolctl import threadpool_limits

    early = HessianCache(twin=twin)
    prefetch_told: list[tuple[int, int]] = []
    with threadpool_limits(limits=1, user_api="blas"):
        assert early.prefetch(rows, weighting, lambda done, total: prefetch_told.append((done, total)), threads=1)
    assert prefetch_told[-1][0] == prefetch_told[-1][1] >= 1
    assert not early.prefetch(rows, weighting, threads=1)  # prefetched already, not read yet
    later_told: list[tuple[int, int]] = []
    prefetched = early.get(fp32, fcs, rows, weighting=weighting, progress=lambda *told: later_told.append(told))
    assert later_told == [] and early.from_twin == len(fcs)
    assert not early._twin_sums  # read once: the Hessians made from it are kept, not the sums
    for buffer in fcs:
        assert np.array_equal(prefetched[buffer][0], read[buffer][0]) and prefetched[buffer][1] == HessianCache.TWIN
    # Other rows are not served by the prefetch: collected then.
    early.get(fp32, fcs, rows[:8], weighting=weighting, progress=lambda *told: later_told.append(told))
    assert later_told and early.collected == 2 * len(fcs)

    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(twin))  # one MatMul weight changed: not this model's twin any more
    weights = {n.input[1] for n in model.graph.node if n.op_type == "MatMul"}
    init = next(i for i in model.graph.initializer if i.name in weights)
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) + np.float32(1e-3), init.name))
    other_twin = tmp_path / "other.onnx"
    onnx.save(model, str(other_twin))
    assert onnx_twin_hessians(fp32, fcs, rows, other_twin, weighting) is None
    fallback = HessianCache(twin=other_twin)
    assert fallback.prefetch(rows[:8], weighting)  # computed, but matches no weight of fp32
    fallback.get(fp32, fcs, rows[:8], weighting=weighting)
    assert fallback.collected == 12 and fallback.from_twin == 0


@pytest.mark.slow  # a TFLite export and several quantizations
def test_one_quantizer_session_serves_every_recipe_byte_for_byte(bert, tmp_path):
    """A search reuses one ai-edge-quantizer Quantizer, and its tensor-parameter cache, for all
    its candidates: each recipe's output equals a plain Quantizer's byte for byte, whatever ran
    before it, and the shared cache was really used (not a silent fallback)."""
    from ai_edge_quantizer import quantizer

    from converters.tflite.edge_quantizer import QuantizerSession
    from converters.tflite.gptq_int4 import _mixed_recipe

    _, fp32, _, _ = bert
    compact = tmp_path / "compact.tflite"
    compact_copy(fp32, compact)
    weights = find_weights(compact)
    fcs = sorted(b for b, w in weights.items() if w.kind == "FULLY_CONNECTED")
    sets = [set(), {fcs[0]}, {fcs[1], fcs[-1]}, set(fcs), set()]
    session = QuantizerSession(compact)
    for index, int8 in enumerate(sets):
        recipe = _mixed_recipe(weights, int8, TINY_TABLES)
        with np.errstate(invalid="ignore", divide="ignore"):  # zero blocks: as run_quantizer does
            plain = quantizer.Quantizer(str(compact), recipe).quantize(enable_progress_report=False).quantized_model
        session.run(tmp_path / f"reused{index}.tflite", recipe)
        assert bytes(plain) == (tmp_path / f"reused{index}.tflite").read_bytes(), int8
        assert session.shares_parameters, "the shared-parameter path fell back"
    assert (tmp_path / "reused0.tflite").read_bytes() != (tmp_path / "reused3.tflite").read_bytes()


@pytest.mark.slow  # TFLite quantizations
def test_grouped_scope_entries_quantize_exactly_like_one_entry_per_op(bert, tmp_path, capsys):
    """The recipes name ops by exact scope in one alternation per (op kind, bits, block): the
    quantized model equals, byte for byte, what one entry per op gives; so does the benchmark
    that times the two forms (benchmarks/bench_tflite_build.py), which fails on any difference."""
    import sys
    from pathlib import Path

    from ai_edge_quantizer import quantizer

    from converters.tflite.gptq_int4 import _mixed_recipe

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import bench_tflite_build

    _, fp32, _, _ = bert
    compact = tmp_path / "compact.tflite"
    compact_copy(fp32, compact)
    weights = find_weights(compact)
    fcs = sorted(b for b, w in weights.items() if w.kind == "FULLY_CONNECTED")
    for int8 in (set(), {fcs[0], fcs[-1]}):
        grouped = _mixed_recipe(weights, int8, TINY_TABLES)
        one_per_op = bench_tflite_build.one_entry_per_op(grouped)
        assert len(grouped) <= 3 < len(one_per_op)
        outputs = []
        for recipe in (grouped, one_per_op):
            with np.errstate(invalid="ignore", divide="ignore"):
                outputs.append(bytes(quantizer.Quantizer(str(compact), recipe)
                                     .quantize(enable_progress_report=False).quantized_model))
        assert outputs[0] == outputs[1], int8
    assert bench_tflite_build.main([str(fp32), "--reps", "2", "--json", str(tmp_path / "b.json")]) == 0
    assert "| grouped |" in capsys.readouterr().out and (tmp_path / "b.json").is_file()
    with pytest.raises(SystemExit):
        bench_tflite_build.main([str(fp32), "--reps", "1"])


def test_scoped_entries_group_scopes_and_refuse_two_choices_for_one_op():
    from converters.tflite.edge_quantizer import scoped_entries

    entries = scoped_entries([("a/b.c", "FULLY_CONNECTED", 4, 32), ("x", "FULLY_CONNECTED", 8, 0),
                              ("d", "FULLY_CONNECTED", 4, 32), ("a/b.c", "FULLY_CONNECTED", 4, 32),
                              ("t", "EMBEDDING_LOOKUP", 4, 32)])
    assert [e["regex"] for e in entries] == [r"^(?:a/b\.c|d)$", "^(?:x)$", "^(?:t)$"]
    assert [e["op_config"]["weight_tensor_config"]["num_bits"] for e in entries] == [4, 8, 4]
    with pytest.raises(ValueError, match="op scope 'x' given two recipes"):
        scoped_entries([("x", "FULLY_CONNECTED", 8, 0), ("x", "FULLY_CONNECTED", 4, 32)])


@pytest.mark.slow
def test_int4_refusal_names_weights_too_narrow_for_its_blocks(tmp_path):
    """A hidden size that is not a multiple of the 32-wide block (TinyBERT's 312, here 48) leaves the
    attention and FFN-in weights INT8: the refusal said "raise the size budget", which would have
    shipped an "INT4" artifact of mostly 8-bit weights."""
    import json

    import transformers

    from converters import pipeline
    from tiny_models import _tokenizer

    tokenizer = _tokenizer("wordpiece")
    config = transformers.BertConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, hidden_size=48,
                                     num_hidden_layers=2, num_attention_heads=4, intermediate_size=96,
                                     max_position_embeddings=128)
    model_dir = tmp_path / "narrow"
    transformers.BertModel(config).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    out = tmp_path / "art"
    pipeline.convert(pipeline.ConvertConfig(model=model_dir, target="rpi5", out=out, latency_runs=2))
    refused = {r["name"]: r["reason"] for r in json.loads((out / "manifest.json").read_text())["refused"]}
    reason = refused["tflite-int4"]
    import re

    assert re.search(r"\d+ of \d+ FULLY_CONNECTED weights have an input width \(48\) that is not a multiple of "
                     r"the 32-wide INT4 block and stay INT8; ship the INT8 artifact", reason), reason
    assert "raise it" not in reason, reason


@pytest.mark.slow  # a TFLite export and quantization
def test_each_quantization_table_is_stored_once_and_computes_the_same_bits(bert, tmp_path):
    """Every sequence bucket's subgraph repeated the per-row parameters of the quantized embedding
    table (MiniLM: 1.8 of 26.8 MB). quantize_tflite stores each table once; the same file written
    with a table per tensor (what it was) is larger by what the report says, and every signature
    computes the same bits."""
    from ai_edge_litert.interpreter import Interpreter

    from converters.tflite.flatbuffer import read_model, write_model
    from converters.tflite.shared_quantization import share_quantization

    source, fp32, calibration, heldout = bert
    shared = tmp_path / "int8.tflite"
    report = quantize_tflite(fp32, shared, "dynamic_wi8_afp32")
    assert report["shared_quantization_bytes"] > 0 and report["bytes"] == shared.stat().st_size
    repeated = tmp_path / "repeated.tflite"
    write_model(read_model(shared), repeated)  # one table per tensor again
    # (ai-edge-quantizer's own layout and write_model's differ by a few alignment bytes)
    saved = repeated.stat().st_size - shared.stat().st_size
    assert saved == pytest.approx(report["shared_quantization_bytes"], rel=0.05)
    a, b = Interpreter(model_path=str(shared)), Interpreter(model_path=str(repeated))
    batch = make_batches(source, heldout[:1])[0]  # the signatures take one row
    for name in a.get_signature_list():
        run_a, run_b = a.get_signature_runner(name), b.get_signature_runner(name)
        inputs = run_a.get_input_details()
        length = inputs["input_ids"]["shape"][1]
        feeds = {k: np.ascontiguousarray(v[:, :length]).astype(inputs[k]["dtype"])
                 for k, v in batch.items() if k in inputs}
        feeds = {k: np.pad(v, ((0, 0), (0, length - v.shape[1]))) for k, v in feeds.items()}
        got, want = run_a(**feeds), run_b(**feeds)
        assert got.keys() == want.keys() and all(np.array_equal(got[k], want[k]) for k in got), name
    assert share_quantization(shared) == 0  # stored once already: nothing more to save
