"""TensorRT's engine cache (the Jetson profile turns it on) goes into the device cache, one
directory per artifact hash, or is off; never into the working directory, where onnxruntime puts
it without a trt_engine_cache_path (review item 5). No GPU here: onnxruntime is told TensorRT is
installed, and the provider options load() hands to its session constructor are checked."""

from __future__ import annotations

import logging

import onnxruntime as ort
import pytest
import tiny_artifact

import edge_runtime
from targets import load_profile

TRT = "TensorrtExecutionProvider"
JETSON_OPTIONS = load_profile("jetson-orin").backends[0].provider_options


def _runtime(trt_options: dict) -> dict:
    return {"graph_optimization_level": "extended",
            "backends": [{"name": "onnxruntime",
                          "execution_providers": [TRT, "CPUExecutionProvider"],
                          "provider_options": {TRT: trt_options}}]}


@pytest.fixture
def sessions(monkeypatch, tmp_path):
    """The providers (name, options) of every session load() opens; the sessions themselves run
    on the CPU provider. The working directory is an empty one of the test's."""
    opened = []
    real = ort.InferenceSession

    def recording(path, sess_options=None, providers=None):
        opened.append(providers)
        return real(path, sess_options=sess_options, providers=["CPUExecutionProvider"])

    monkeypatch.setattr(ort, "get_available_providers", lambda: [TRT, "CPUExecutionProvider"])
    monkeypatch.setattr(ort, "InferenceSession", recording)
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    return opened


def _trt(providers) -> dict:
    return dict(providers)[TRT]


def test_the_jetson_profile_keeps_fp32_artifacts_fp32():
    """FP16 kernels for every artifact made the FP32 one fail its own golden tolerance (rel L2
    <= 1e-4); INT8 stays on for the INT8 artifact's explicit Q/DQ; the cache path is the
    runtime's to choose."""
    options = JETSON_OPTIONS[TRT]
    assert "trt_fp16_enable" not in options
    assert options["trt_int8_enable"] is True and options["trt_engine_cache_enable"] is True
    assert "trt_engine_cache_path" not in options


def test_engines_go_to_the_device_cache_keyed_by_the_artifact(sessions, tmp_path):
    cache = tmp_path / "cache"
    manifest = tiny_artifact.build(tmp_path / "a", runtime=_runtime(JETSON_OPTIONS[TRT]))
    edge_runtime.load(tmp_path / "a", device_cache=cache)
    options = _trt(sessions[-1])
    engines = cache / "tensorrt"
    assert options["trt_engine_cache_enable"] is True and options["trt_int8_enable"] is True
    # What onnxruntime is handed, not only the profile: no FP16 kernels for this FP32 artifact.
    assert not options.get("trt_fp16_enable")
    path = options["trt_engine_cache_path"]
    assert path.startswith(str(engines)) and f"-ort{ort.__version__}" in path
    assert [p.name for p in engines.iterdir()] == [path.rsplit("/", 1)[1]]  # made, ready for ORT
    given = manifest["runtime"]["backends"][0]["provider_options"][TRT]
    assert given == JETSON_OPTIONS[TRT]  # the manifest's options are not edited
    # The same files again: the same engines. Other weights (same names): another directory.
    edge_runtime.load(tmp_path / "a", device_cache=cache)
    assert _trt(sessions[-1])["trt_engine_cache_path"] == path
    tiny_artifact.build(tmp_path / "a", scale=2.0, runtime=_runtime(JETSON_OPTIONS[TRT]))
    edge_runtime.load(tmp_path / "a", device_cache=cache)
    assert _trt(sessions[-1])["trt_engine_cache_path"] not in (path, None)
    assert len(list(engines.iterdir())) == 2
    assert not any((tmp_path / "cwd").iterdir())


@pytest.mark.parametrize("load_options, why", [
    ({"device_cache": False}, "this load has no device cache"),
    ({"verify": False}, "its files were not verified"),
])
def test_without_device_cache_or_verified_hash_the_engine_cache_is_off(sessions, tmp_path, caplog,
                                                                      load_options, why):
    tiny_artifact.build(tmp_path / "a", runtime=_runtime(JETSON_OPTIONS[TRT]))
    with caplog.at_level(logging.INFO, logger="edge_runtime"):
        edge_runtime.load(tmp_path / "a", **load_options)
    options = _trt(sessions[-1])
    assert options["trt_engine_cache_enable"] is False and "trt_engine_cache_path" not in options
    assert options["trt_int8_enable"] is True
    assert f"no TensorRT engine cache for onnx-fp32.onnx: {why}" in caplog.text


def test_a_path_the_profile_gives_is_kept_and_other_providers_are_untouched(sessions, tmp_path):
    given = {**JETSON_OPTIONS[TRT], "trt_engine_cache_path": str(tmp_path / "engines")}
    tiny_artifact.build(tmp_path / "a", runtime=_runtime(given))
    edge_runtime.load(tmp_path / "a", device_cache=tmp_path / "cache")
    assert _trt(sessions[-1]) == given
    assert dict(sessions[-1])["CPUExecutionProvider"] == {}
    # Engine cache off in the profile: nothing added.
    tiny_artifact.build(tmp_path / "b", runtime=_runtime({"trt_int8_enable": True}))
    edge_runtime.load(tmp_path / "b", device_cache=tmp_path / "cache")
    assert _trt(sessions[-1]) == {"trt_int8_enable": True}


def test_an_older_manifests_fp16_is_not_used_for_an_fp32_artifact(sessions, tmp_path, caplog):
    """Manifests made before the profile dropped trt_fp16_enable still carry it: an FP32 artifact
    then ran on FP16 kernels, outside its own golden tolerance."""
    older = {**JETSON_OPTIONS[TRT], "trt_fp16_enable": True}
    manifest = tiny_artifact.build(tmp_path / "a", runtime=_runtime(older))
    assert manifest["artifacts"][0]["precision"] == "fp32"
    with caplog.at_level(logging.INFO, logger="edge_runtime"):
        edge_runtime.load(tmp_path / "a", device_cache=tmp_path / "cache")
    assert _trt(sessions[-1])["trt_fp16_enable"] is False
    assert "runs it without trt_fp16_enable" in caplog.text
