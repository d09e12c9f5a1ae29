"""A golden check with teeth, and metrics measured on what ships (issue 10).

- Several golden samples per artifact (largest FP32 activations, one at max length, one short),
  each run alone and compared on its own with the tolerance the manifest records; one broken
  sample is enough to refuse the artifact; manifests with a single golden sample still load.
- The tolerances hold between correct kernels (re-measured here) and catch slightly wrong
  weights behind matching hashes, which the old 0.99 / 0.15 tolerance let through.
- The recorded metrics are the packaged files' run through edge_runtime, and a packaging step
  that changed the numbers stops the conversion.
The emulated-Haswell proof (the x86-avx512-vnni INT8 artifact refused by the golden check on an
AVX2 CPU, the x86-avx2 one accepted) is in tests/test_avx2_emulated.py.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import edge_runtime
from converters import ConversionError, ConvertConfig, convert
from converters.packaging import package
from converters.packaging.golden import (FLOOR, GOLDEN_TOLERANCE, K_INTEGER, SHORT_TOKENS, K, golden_tolerance,
                                         tolerance_k)
from converters.packaging.package import file_entry
from edge_runtime._manifest import read_manifest
from edge_runtime._model import Model, compare_outputs, golden_samples

OLD_INT8_TOLERANCE = {"cosine_min": 0.99, "rel_l2_max": 0.15}  # before issue 10


# -- runtime: per-sample comparison, old manifests (no conversion: milliseconds) ----------------


class _Doubling:
    """A stand-in backend session: output = 2 x input_ids as float, [batch, sequence, 1]."""

    backend_name, backend_version, providers = "fake", "0", ("CPU",)

    def run(self, feeds):
        return {"y": (2.0 * feeds["input_ids"]).astype(np.float32)[:, :, None]}


def _model(root: Path, golden: dict) -> Model:
    manifest = {
        "task": "feature-extraction",
        "inputs": [{"name": n, "dtype": "int64", "shape": ["batch", "sequence"]} for n in ("input_ids", "attention_mask")],
        "outputs": [{"name": "y", "dtype": "float32", "shape": ["batch", "sequence", 1]}],
    }
    entry = {"name": "a", "format": "onnx", "precision": "int8", "files": [], "golden": golden}
    return Model(root, manifest, entry, _Doubling(), 1, 0.0)


def _write(root: Path, samples: list[tuple[str, np.ndarray, np.ndarray]]) -> dict:
    """golden/a.npz holding (prefix, ids, expected y) per sample."""
    (root / "golden").mkdir(exist_ok=True)
    arrays = {}
    for prefix, ids, y in samples:
        arrays[f"{prefix}input:input_ids"] = ids
        arrays[f"{prefix}input:attention_mask"] = np.ones_like(ids)
        arrays[f"{prefix}output:y"] = y
    np.savez(root / "golden" / "a.npz", **arrays)
    return file_entry(root, root / "golden" / "a.npz")


def _ids(n: int, start: int = 3) -> np.ndarray:
    return np.arange(start, start + n, dtype=np.int64)[None, :]


def _right(ids: np.ndarray) -> np.ndarray:
    return (2.0 * ids).astype(np.float32)[:, :, None]


TIGHT = {"cosine_min": 0.99999, "rel_l2_max": 1e-3}


def test_every_sample_is_compared_and_one_broken_sample_fails(tmp_path):
    long_ids, short_ids, mid_ids = _ids(40), _ids(2, 7), _ids(9, 11)
    broken = _right(mid_ids).copy()
    broken[0, 4, 0] *= 1.05  # one value of one sample 5% off
    golden = _write(tmp_path, [("", long_ids, _right(long_ids)), ("sample1/", short_ids, _right(short_ids)),
                               ("sample2/", mid_ids, broken)])
    golden["tolerance"] = TIGHT
    golden["samples"] = [{"prefix": "", "kind": "long"}, {"prefix": "sample1/", "kind": "short"},
                         {"prefix": "sample2/", "kind": "largest-activation", "tokens": 9}]
    with pytest.raises(edge_runtime.GoldenMismatchError) as caught:
        _model(tmp_path, golden).self_check()
    message = str(caught.value)
    assert "sample 2 (largest-activation, 9 tokens): y: cosine" in message
    assert "sample 0" not in message and "sample 1" not in message  # only the broken one is listed
    # The same error is still an EdgeRuntimeError (old `except` clauses keep working).
    assert isinstance(caught.value, edge_runtime.EdgeRuntimeError)
    # Fixed, it passes: the comparison is per sample, not one verdict over a padded batch.
    golden = _write(tmp_path, [("", long_ids, _right(long_ids)), ("sample1/", short_ids, _right(short_ids)),
                               ("sample2/", mid_ids, _right(mid_ids))])
    golden.update(tolerance=TIGHT, samples=[{"prefix": ""}, {"prefix": "sample1/"}, {"prefix": "sample2/"}])
    _model(tmp_path, golden).self_check()


def test_per_sample_tolerance_overrides_the_entry_tolerance(tmp_path):
    ids = _ids(12)
    off = _right(ids) * np.float32(1.0 + np.linspace(0, 0.02, 12))[None, :, None]  # rel L2 ~1.2e-2
    golden = _write(tmp_path, [("", ids, _right(ids)), ("sample1/", ids, off)])
    golden["tolerance"] = OLD_INT8_TOLERANCE
    golden["samples"] = [{"prefix": ""}, {"prefix": "sample1/", "tolerance": TIGHT}]
    with pytest.raises(edge_runtime.GoldenMismatchError, match=r"sample 1 .*relative L2 error 0\.01"):
        _model(tmp_path, golden).self_check()


def test_a_manifest_with_one_golden_sample_still_loads(tmp_path):
    """Manifests from before issue 10: one sample under plain keys, golden.tolerance, no
    golden.samples. Checked as before (and still refused when wrong)."""
    ids = _ids(20)
    golden = _write(tmp_path, [("", ids, _right(ids))])
    golden["tolerance"] = OLD_INT8_TOLERANCE
    _model(tmp_path, golden).self_check()
    assert [label for label, *_ in golden_samples(golden, {"input:input_ids": ids, "output:y": _right(ids)})] == [
        "sample 0 (sample)"]
    golden = _write(tmp_path, [("", ids, -_right(ids))])
    golden["tolerance"] = OLD_INT8_TOLERANCE
    with pytest.raises(edge_runtime.GoldenMismatchError, match="sample 0"):
        _model(tmp_path, golden).self_check()


def test_a_listed_sample_missing_from_the_file_is_a_manifest_error(tmp_path):
    ids = _ids(5)
    golden = _write(tmp_path, [("", ids, _right(ids))])
    golden.update(tolerance=TIGHT, samples=[{"prefix": ""}, {"prefix": "sample1/"}])
    with pytest.raises(edge_runtime.ManifestError, match="golden sample 1 .*sample1/"):
        _model(tmp_path, golden).self_check()


def test_manifest_reader_checks_golden_samples(tmp_path):
    ids = _ids(5)
    golden = _write(tmp_path, [("", ids, _right(ids))])
    (tmp_path / "m.onnx").write_bytes(b"model")
    base = {"schema_version": 1, "target": {}, "source": {}, "task": "feature-extraction",
            "inputs": [{"name": "input_ids", "dtype": "int64", "shape": ["batch", "sequence"]}],
            "outputs": [{"name": "last_hidden_state", "dtype": "float32", "shape": ["batch", "sequence", 8]}], "artifacts": [{"name": "a", "format": "onnx", "precision": "int8", "metrics": {},
                                          "files": [file_entry(tmp_path, tmp_path / "m.onnx")], "golden": golden}]}
    for samples, message in (([], "samples must be a non-empty list"),
                             ([{"kind": "long"}], r"samples\[0\] must be an object with a string prefix"),
                             ([{"prefix": ""}, {"prefix": ""}], "duplicate prefix"),
                             ([{"prefix": "", "tolerance": {"cosine_min": "high"}}], "tolerance must give")):
        golden["samples"] = samples
        (tmp_path / "manifest.json").write_text(json.dumps(base))
        with pytest.raises(edge_runtime.ManifestError, match=message):
            read_manifest(tmp_path)
    golden["samples"] = [{"prefix": ""}]
    (tmp_path / "manifest.json").write_text(json.dumps(base))
    read_manifest(tmp_path)


def test_tolerances_follow_the_recorded_rule():
    """tolerance = max(K x measured drift, floor), per (format, precision), as documented."""
    for (fmt, precision), tolerance in GOLDEN_TOLERANCE.items():
        assert tolerance == golden_tolerance(fmt, precision)
        assert tolerance["rel_l2_max"] >= FLOOR["rel_l2_max"]
        assert 1.0 - tolerance["cosine_min"] >= FLOOR["one_minus_cosine"] * (1 - 1e-6)
        # Tighter than before issue 10 (cosine 0.99, relative L2 0.15 for INT8/INT4); integer
        # bounds are set by MiniLM's drift on an emulated Cortex-A76 (converters/packaging/golden.py).
        assert tolerance["cosine_min"] >= 0.997 and tolerance["rel_l2_max"] <= 0.1
    assert K == 10 and K_INTEGER == 2
    # the figures docs/guarantees.md states
    assert GOLDEN_TOLERANCE[("onnx", "int8")] == {"cosine_min": 0.99792, "rel_l2_max": 0.092}
    assert GOLDEN_TOLERANCE[("onnx", "fp32")] == {"cosine_min": 0.999999, "rel_l2_max": 0.0001}


def test_short_samples_of_tflite_integer_artifacts_get_the_short_text_drift():
    """Measured on emulated Cortex-A72/A76 (RESULTS.md run BJ): MiniLM's tflite-int4 drifted to
    cosine 0.99517 / rel L2 0.0983 on "Thanks!" (4 tokens) against the long-input bound 0.99792 /
    0.092; the short bound holds it with K's margin. Long samples keep the sharp bound, and ONNX
    keeps it at every length (the saturating-AVX2 failure shows on short samples of tiny models)."""
    sharp = {"cosine_min": 0.99792, "rel_l2_max": 0.092}
    assert golden_tolerance("tflite", "int4", 4) == golden_tolerance("tflite", "int4", SHORT_TOKENS) == {
        "cosine_min": 0.99034, "rel_l2_max": 0.197}
    assert golden_tolerance("tflite", "int8", 4) == {"cosine_min": 0.99772, "rel_l2_max": 0.0954}
    assert 1 - 0.99517 <= (1 - 0.99034) / K_INTEGER + 1e-9 and 0.0983 <= 0.197 / K_INTEGER + 1e-9  # K x the drift
    for fmt, precision in (("tflite", "int4"), ("tflite", "int8"), ("onnx", "int8"), ("onnx", "int4")):
        assert golden_tolerance(fmt, precision, SHORT_TOKENS + 1) == golden_tolerance(fmt, precision) == sharp
    for precision in ("int8", "int4"):
        assert golden_tolerance("onnx", precision, 3) == sharp
    for fmt in ("onnx", "tflite"):
        assert golden_tolerance(fmt, "fp32", 4) == golden_tolerance(fmt, "fp32")  # float: no rounding flips


# -- on a converted tiny model ----------------------------------------------------------------


@pytest.fixture(scope="module")
def converted(tiny_model_factory, tmp_path_factory):
    out = tmp_path_factory.mktemp("teeth") / "bert"
    model_dir = tiny_model_factory("bert", "feature-extraction")
    convert(ConvertConfig(model=model_dir, target="x86-avx2", out=out, latency_runs=2))
    return out, model_dir


def _manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def _entry(manifest: dict, name: str) -> dict:
    return next(a for a in manifest["artifacts"] if a["name"] == name)


def _golden_arrays(out: Path, entry: dict) -> dict[str, np.ndarray]:
    with np.load(out / entry["golden"]["path"]) as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(params=["x86-avx2", "rpi5"])
def converted_any(request, tiny_model_factory):
    """x86-avx2 (ONNX only) or rpi5 (ONNX and TFLite, the session's shared conversion: read only)."""
    if request.param == "x86-avx2":
        return request.getfixturevalue("converted")
    return request.getfixturevalue("tiny_rpi5"), tiny_model_factory("bert", "feature-extraction")


@pytest.mark.slow
def test_several_stressing_samples_are_recorded(converted_any):
    """4 golden samples per artifact, for every format: TFLite artifacts (run in length buckets)
    record the same kinds and store each sample alone at its own length, not padded to a bucket."""
    from converters.core.validate import reference_outputs
    from converters.inputs.calibration import load_texts, split_texts
    from converters.inputs.source import load_source

    out, model_dir = converted_any
    manifest = _manifest(out)
    formats = {a["format"] for a in manifest["artifacts"]}
    if manifest["target"]["id"] == "rpi5":  # else this parameter would check ONNX again
        assert {"tflite-fp32", "tflite-int8"} <= {a["name"] for a in manifest["artifacts"]} and "tflite" in formats
    source = load_source(model_dir)
    texts = split_texts(load_texts(None))
    peaks = [p for ref in (reference_outputs(source, texts.fit.texts), reference_outputs(source, texts.validation.texts))
             for p in ref.peaks]
    for entry in manifest["artifacts"]:
        golden = entry["golden"]
        samples = golden["samples"]
        kinds = [s["kind"] for s in samples]
        assert kinds == ["largest-activation", "largest-activation", "long", "short"], kinds
        assert golden["tolerance"] == golden_tolerance(entry["format"], entry["precision"])
        # Each sample's own: a short one of an integer artifact is held to the drift of short texts
        # (on emulated ARM a 4-token text drifted 2.3x past the long-input bound: RESULTS.md run BJ).
        for s in samples:
            assert s["tolerance"] == golden_tolerance(entry["format"], entry["precision"], s["tokens"])
            short = s["tokens"] <= SHORT_TOKENS and entry["format"] == "tflite" and entry["precision"] != "fp32"
            assert (s["tolerance"] == golden["tolerance"]) is not short, (entry["name"], s)
        k = tolerance_k(entry["format"], entry["precision"])
        assert golden["tolerance_basis"].startswith(f"max({k} x drift measured between correct kernels")
        # The largest activations among every fit and validation text.
        top = sorted(peaks, reverse=True)[:2]
        assert [s["fp32_activation_peak"] for s in samples[:2]] == pytest.approx(top, rel=1e-3)
        assert samples[2]["tokens"] == manifest["tokenizer"]["max_length"]  # long: the model's max
        assert samples[3]["tokens"] <= 5  # short: a word or two between [CLS] and [SEP]
        # Stored as promised: the first under plain keys (older readers), each run alone (batch 1,
        # no padding) with outputs the artifact's own.
        arrays = _golden_arrays(out, entry)
        listed = list(golden_samples(golden, arrays, entry["name"]))
        assert len(listed) == 4 and "input:input_ids" in arrays
        for (label, inputs, want, _), sample in zip(listed, samples):
            assert inputs["input_ids"].shape == (1, sample["tokens"]) and inputs["attention_mask"].all(), label
            assert want["last_hidden_state"].shape == (1, sample["tokens"], 32)
        edge_runtime.load(out, artifact=entry["name"])  # every sample passes where it was made


@pytest.mark.slow
def test_recorded_metrics_are_the_packaged_files_through_edge_runtime(converted):
    from converters.core.validate import METRIC_BATCHES
    from converters.core.validate import compute_metrics, reference_outputs
    from converters.inputs.calibration import load_texts, split_texts
    from converters.inputs.source import load_source

    out, model_dir = converted
    manifest = _manifest(out)
    source = load_source(model_dir)
    reference = reference_outputs(source, split_texts(load_texts(None)).validation.texts)
    for entry in manifest["artifacts"]:
        assert entry["metrics_from"] == "packaged files, run through edge_runtime"
        model = edge_runtime.load(out, artifact=entry["name"], weight_cache=False, tune=False)  # hashes checked
        # In the texts' own order for every format: TFLite's, recorded from length-sorted
        # batches (converters/_artifacts.metric_batches), must not depend on the batching.
        assert entry["metrics_batches"] == METRIC_BATCHES[entry["format"]]
        again = compute_metrics(source, reference, model.run, entry["name"])
        for key, value in entry["metrics"].items():
            assert again[key] == pytest.approx(value, abs=1e-6), (entry["name"], key)


@pytest.mark.slow
def test_a_packaging_step_that_changes_the_numbers_stops_the_conversion(tiny_model_factory, tmp_path, monkeypatch):
    """Packaging must not change a number; if it does, the conversion says so instead of
    recording metrics of a model that does not ship."""
    import onnx
    from onnx import numpy_helper

    from converters import pipeline

    real = pipeline._package

    def perturbing(fmt, built, stage, name):
        files = real(fmt, built, stage, name)
        if name == "onnx-fp32":
            model = onnx.load(str(stage / files[0]["path"]))
            init = max(model.graph.initializer, key=lambda i: np.prod(i.dims))
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * np.float32(1.1), init.name))
            for f in files:
                (stage / f["path"]).unlink()
            tmp = tmp_path / "perturbed.onnx"
            onnx.save(model, str(tmp))
            files = package.save_onnx(tmp, stage, name)
        return files

    monkeypatch.setattr(pipeline, "_package", perturbing)
    with pytest.raises(ConversionError, match=r"onnx-fp32: the packaged files score differently .*cosine"):
        convert(ConvertConfig(model=tiny_model_factory("bert", "feature-extraction"), target="x86-avx2",
                              out=tmp_path / "out", latency_runs=2))
    assert not (tmp_path / "out").exists()


def _retamper(out: Path, name: str, edit) -> None:
    """Apply `edit(onnx model)` to artifact `name` and record the new files' hashes in the manifest,
    as someone with write access to the directory (or a bad copy tool re-hashing) would."""
    import onnx

    manifest = _manifest(out)
    entry = _entry(manifest, name)
    model = onnx.load(str(out / entry["files"][0]["path"]))
    edit(model)
    for f in entry["files"]:
        (out / f["path"]).unlink()
    tmp = out.parent / f"{out.name}-{name}-tampered.onnx"
    onnx.save(model, str(tmp))
    entry["files"] = package.save_onnx(tmp, out, name)
    tmp.unlink()
    (out / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.slow
def test_slightly_wrong_weights_behind_matching_hashes_fail_the_golden_check(converted, tmp_path):
    """One INT8 weight scale 50% off (one MatMul's, hashes re-recorded): the outputs move by a few
    percent (rel L2) -- the old tolerance (0.99 / 0.15) loaded it; now it is refused."""
    from onnx import numpy_helper

    out = tmp_path / "tampered"
    shutil.copytree(converted[0], out)

    def scale_one_weight(model):
        scales = [i for i in model.graph.initializer if i.name.endswith("_scale") and len(i.dims) == 1
                  and i.dims[0] > 1]
        target = scales[len(scales) // 2]
        target.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(target) * np.float32(1.5), target.name))

    _retamper(out, "onnx-int8", scale_one_weight)
    entry = _entry(_manifest(out), "onnx-int8")
    model = edge_runtime.load(out, artifact="onnx-int8", verify=False, weight_cache=False, tune=False)
    arrays = _golden_arrays(out, entry)
    old_verdicts = [not compare_outputs(model.run(i), w, OLD_INT8_TOLERANCE)
                    for _, i, w, _ in golden_samples(entry["golden"], arrays)]
    assert all(old_verdicts), "the old tolerance would have caught this: the test shows nothing"
    with pytest.raises(edge_runtime.GoldenMismatchError, match=r"(?s)onnx-int8.*sample \d .*cosine"):
        edge_runtime.load(out, artifact="onnx-int8", weight_cache=False)


@pytest.mark.slow
def test_one_broken_golden_sample_refuses_the_artifact(converted, tmp_path):
    out = tmp_path / "one-broken"
    shutil.copytree(converted[0], out)
    manifest = _manifest(out)
    entry = _entry(manifest, "onnx-int8")
    arrays = _golden_arrays(out, entry)
    key = "sample3/output:last_hidden_state"  # the short sample only
    arrays[key] = arrays[key] * np.float32(1.5)  # relative L2 1 - 1/1.5 = 0.33: past even a short sample's 0.197
    np.savez(out / entry["golden"]["path"], **arrays)
    entry["golden"].update(file_entry(out, out / entry["golden"]["path"]))
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(edge_runtime.GoldenMismatchError) as caught:
        edge_runtime.load(out, artifact="onnx-int8", weight_cache=False)
    assert "sample 3 (short" in str(caught.value) and "sample 0" not in str(caught.value)


def test_an_artifact_the_backend_cannot_run_is_a_model_load_error(converted, monkeypatch):
    """tflite-runtime 2.14 loads an INT4 .tflite and fails at the first invoke ("Type not
    currently supported", seen on an emulated Pi 4): the golden check turns such a failure into
    ModelLoadError naming the artifact and what it was made for, never a raw backend error."""
    from edge_runtime.backends.onnx import OnnxSession

    def broken(self, feeds):
        raise RuntimeError("Type not currently supported. Node number 5 (EMBEDDING_LOOKUP) failed to invoke.")

    monkeypatch.setattr(OnnxSession, "run", broken)
    with pytest.raises(edge_runtime.ModelLoadError, match=r"'onnx-int8' loaded on .* failed to run its golden "
                                                          r"sample .*RuntimeError: Type not currently.*made for onnxruntime >= "):
        edge_runtime.load(converted[0], artifact="onnx-int8", weight_cache=False)


@pytest.mark.slow
def test_correct_kernels_drift_inside_the_tolerance(converted):
    """The drift the tolerances are derived from, re-measured on this artifact's golden samples:
    onnxruntime on this CPU against the exact int32 reference (pair-limited x86-avx2 weights: both
    correct), and against itself with other threads / graph optimizations (other float kernels).
    Each stays below tolerance / K, so K is a real margin, not a fit to the numbers."""
    from converters.core.arithmetic import ValidationSessions, choose_validation
    from edge_runtime.backends.onnx import OnnxSession
    from targets import load_profile

    out, _ = converted
    manifest = _manifest(out)
    profile = load_profile("x86-avx2")
    for entry in manifest["artifacts"]:
        path = out / entry["files"][0]["path"]
        kernels = {
            "exact int32 reference": ValidationSessions(choose_validation(profile, "exact"), out.parent)(path),
            "1 thread, no graph optimization": OnnxSession(path, threads=1, graph_optimization_level="disabled"),
            "2 threads, all optimizations": OnnxSession(path, threads=2, graph_optimization_level="all"),
        }
        tolerance = entry["golden"]["tolerance"]
        margin = {"cosine_min": 1 - (1 - tolerance["cosine_min"]) / K, "rel_l2_max": tolerance["rel_l2_max"] / K}
        for label, inputs, want, _ in golden_samples(entry["golden"], _golden_arrays(out, entry)):
            for kernel, session in kernels.items():
                assert not compare_outputs(session.run(inputs), want, margin), (entry["name"], label, kernel)


@pytest.mark.slow
def test_saturating_kernel_fails_the_golden_check_natively(tiny_model_factory, tmp_path):
    """On an AVX2 CPU (this kind of CI machine), the x86-avx512-vnni INT8 artifact's own golden
    samples catch the saturating kernel once the arithmetic refusal is out of the way (a manifest
    claiming the weights are pair-safe). Elsewhere the emulated test proves the same."""
    from edge_runtime._device import detect

    if detect().int8_gemm != "s16-pairs":
        pytest.skip(f"this CPU's INT8 GEMM is {detect().int8_gemm}: tests/test_avx2_only.py runs this test under tools/avx2-only, tests/test_avx2_emulated.py on an emulated Haswell")
    out = tmp_path / "vnni"
    convert(ConvertConfig(model=tiny_model_factory("bert", "feature-extraction"), target="x86-avx512-vnni", out=out,
                          latency_runs=2))
    with pytest.raises(edge_runtime.DeviceMismatchError):
        edge_runtime.load(out, artifact="onnx-int8")
    claim_pair_safe(out, "onnx-int8")
    with pytest.raises(edge_runtime.GoldenMismatchError, match=r"(?s)onnx-int8.*sample \d .*cosine"):
        edge_runtime.load(out, artifact="onnx-int8")


def claim_pair_safe(out: Path, name: str) -> None:
    """Make the manifest say the artifact runs on saturating CPUs too (`requires.int8_gemm` lists
    s16-pairs), as a stale or wrong manifest would: the runtime's arithmetic refusal
    (edge_runtime/_compat.py) then lets it through and only the golden check stands. (Removing
    `requires` is not enough: the runtime infers ["int32"] from the profile then.)"""
    manifest = _manifest(out)
    _entry(manifest, name)["requires"] = {"int8_gemm": ["int32", "s16-pairs"]}
    (out / "manifest.json").write_text(json.dumps(manifest))


# --- a mutation audit (session 52): checks no test could fail on -----------------------------------


@pytest.mark.parametrize("broken_index", [0, 1, 2])
def test_a_broken_sample_in_any_position_refuses(tmp_path, broken_index):
    """Every sample counts, not the last one's verdict only (each test broke the last sample)."""
    ids = [_ids(40), _ids(2, 7), _ids(9, 11)]
    outs = [_right(i) for i in ids]
    outs[broken_index] = outs[broken_index] * np.float32(1.5)
    golden = _write(tmp_path, [(p, i, o) for p, i, o in zip(("", "sample1/", "sample2/"), ids, outs)])
    golden.update(tolerance=TIGHT, samples=[{"prefix": ""}, {"prefix": "sample1/"}, {"prefix": "sample2/"}])
    with pytest.raises(edge_runtime.GoldenMismatchError, match=f"sample {broken_index} "):
        _model(tmp_path, golden).self_check()


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_outputs_fail_the_golden_comparison(bad):
    """NaN fails every < and > comparison: without the finiteness check an all-NaN backend passed
    the golden sample at load and edge-serve's watchdog."""
    want = {"y": np.ones((1, 4, 3), np.float32)}
    assert compare_outputs({"y": np.full((1, 4, 3), bad, np.float32)}, want, TIGHT)


@pytest.mark.parametrize("precision, quantization, dependent", [
    ("fp32", None, False), ("int8", None, True), ("int8", {"mode": "static"}, False),
    ("int8", {"mode": "dynamic"}, True), ("int4", {}, True)])
def test_batch_dependence_follows_the_recorded_scheme(precision, quantization, dependent):
    """An integer artifact whose scheme is not recorded as static is batch-dependent (run a text
    at a time by default): no fixture had an integer entry without a recorded mode."""
    entry = {"name": "a", "format": "onnx", "precision": precision, "quantization": quantization}
    model = Model(Path("."), {"task": "feature-extraction", "inputs": [], "outputs": []}, entry, None, 1, 0.0)
    assert model.batch_dependent is dependent
