"""Each quantizer's search runs through the shared core (converters/core/search.py) on a tiny
exported model: ONNX INT8's FP32 fallback meets a floor it could not meet all-INT8, and refuses,
naming what it tried, when the cap is reached. (W4A8 and MatMulNBits budgets: test_w4a8.py,
test_int4.py; TFLite: test_tflite_recipes.py; the policy itself: test_search_core.py.)"""

from __future__ import annotations

import dataclasses

import pytest

from converters._errors import AccuracyError
from converters.core.search import SearchExhausted
from converters.core.validate import reference_outputs
from converters.export.export_onnx import ExportConfig, export_onnx
from converters.inputs.calibration import load_texts
from converters.inputs.source import load_source
from converters.onnx.mixed_precision import quantize_with_floor
from converters.onnx.quantize_int8 import Int8Config, quantize_int8
from edge_runtime.backends.onnx import OnnxSession
from targets import AccuracyFloor, load_profile


@pytest.fixture(scope="module")
def int8_case(tiny_model_factory, tmp_path_factory):
    source = load_source(tiny_model_factory("bert", "feature-extraction"))
    work = tmp_path_factory.mktemp("adapters")
    path = export_onnx(source, work / "m.onnx", ExportConfig())
    texts = load_texts().texts
    fit, validation = reference_outputs(source, texts[:32]), reference_outputs(source, texts[32:64])
    # Round-to-nearest, 7-bit weights: a visible error on the tiny model for the search to remove.
    scheme = dataclasses.replace(load_profile("x86-avx512-vnni").int8, reduce_range=True, weight_rounding="nearest")
    return source, path, fit, validation, Int8Config(scheme=scheme)


def _session(path):
    return OnnxSession(path, threads=1)


def _run(case, tmp_path, floor):
    source, path, fit, validation, config = case
    return quantize_with_floor(path, tmp_path / "q.onnx", config, source, validation, floor, _session,
                               lambda message: None, fit=fit)


def test_int8_fallback_meets_a_floor_all_int8_misses(int8_case, tmp_path):
    source, path, fit, validation, config = int8_case
    start = _run(int8_case, tmp_path, AccuracyFloor(cosine_mean=0.5, cosine_min=0.5, top1_agreement=0.5))
    assert start.promoted == [] and start.search == []  # met all-INT8: no search
    mean = start.metrics["cosine_mean"]
    floor = AccuracyFloor(cosine_mean=min(1.0, mean + 0.3 * (1 - mean)), cosine_min=0.0, top1_agreement=0.0)
    outcome = _run(int8_case, tmp_path, floor)
    assert outcome.promoted and outcome.metrics["cosine_mean"] >= floor.cosine_mean
    accepted = [s for s in outcome.search if s.get("accepted")]
    assert accepted and outcome.search[0]["metrics"] == start.metrics
    # The file written is the search's choice: its promoted nodes are FP32 MatMuls.
    import onnx

    ops = {n.name: n.op_type for n in onnx.load(str(outcome.path)).graph.node}
    assert all(ops[n] == "MatMul" for n in outcome.promoted)


def test_int8_fallback_refuses_at_the_cap_naming_what_it_tried(int8_case, tmp_path):
    floor = AccuracyFloor(cosine_mean=1.0, cosine_min=1.0, top1_agreement=1.0)  # unreachable
    with pytest.raises(AccuracyError, match=r"candidates ranked, .* tried on the validation texts, .* accepted \(cap") as caught:
        _run(int8_case, tmp_path, floor)
    assert isinstance(caught.value.__cause__, SearchExhausted)
    result = caught.value.__cause__.result
    assert 1 <= len(result.moved) <= result.steps.__len__()
    # the walk stopped at the cap (half the candidates), not by running out of candidates
    assert result.steps[-1]["why"].startswith(f"cap reached: {len(result.moved)} of "), result.steps[-1]


def test_quantize_int8_is_plain_data_in_and_out(int8_case, tmp_path):
    _, path, _, _, config = int8_case
    assert dataclasses.fields(Int8Config) and "rounding" not in {f.name for f in dataclasses.fields(Int8Config)}
    first, second = quantize_int8(path, tmp_path / "a.onnx", config), quantize_int8(path, tmp_path / "b.onnx", config)
    assert first.read_bytes() == second.read_bytes()  # no state carried between calls
