"""Fit and score on different texts (issue 10): the calibration texts split deterministically
into a fit set and a validation set (or the validation texts come from their own file); every
fitting step sees only the fit set, every metric the validation set, and the manifest records
both sets and where its metrics come from."""

from __future__ import annotations

import hashlib
import json

import pytest

from converters import ConvertConfig, SourceModelError, convert
from converters.inputs.calibration import (
    MIN_SPLIT_SIDE,
    VALIDATION_SHARE,
    TextSet,
    load_texts,
    split_texts,
    validation_share,
)


def _set(texts, source="test") -> TextSet:
    return TextSet(tuple(texts), source, hashlib.sha256("\n".join(texts).encode()).hexdigest())


def test_builtin_split_is_disjoint_complete_and_about_a_quarter():
    calibration = load_texts()
    split = split_texts(calibration)
    fit, val = split.fit.texts, split.validation.texts
    assert not set(fit) & set(val)
    assert sorted(fit + val) == sorted(calibration.texts)
    assert 0.18 < len(val) / len(calibration.texts) < 0.32
    # each side keeps the calibration order
    order = {t: i for i, t in enumerate(calibration.texts)}
    assert [order[t] for t in fit] == sorted(order[t] for t in fit)
    # both sides hold short and long texts
    for side in (fit, val):
        lengths = [len(t.split()) for t in side]
        assert min(lengths) <= 2 and max(lengths) >= 40


def test_split_is_deterministic_and_per_text():
    texts = [f"sentence number {i} about something" for i in range(200)]
    first = split_texts(_set(texts))
    assert split_texts(_set(texts)) == first
    # A text's side depends on the text alone: reordering or adding texts moves no other text.
    again = split_texts(_set(list(reversed(texts)) + ["one more text"]))
    assert set(first.validation.texts) <= set(again.validation.texts)
    assert set(first.fit.texts) <= set(again.fit.texts)
    assert all((validation_share(t) < VALIDATION_SHARE) == (t in first.validation.texts) for t in texts)


def test_duplicates_land_on_the_same_side():
    texts = [f"text {i}" for i in range(40)] * 2
    split = split_texts(_set(texts))
    assert not set(split.fit.texts) & set(split.validation.texts)


def test_small_file_still_gets_both_sides():
    texts = [f"short calibration text {i}" for i in range(8)]
    split = split_texts(_set(texts))
    assert len(split.validation.texts) >= MIN_SPLIT_SIDE and len(split.fit.texts) >= MIN_SPLIT_SIDE
    assert not set(split.fit.texts) & set(split.validation.texts)


def test_too_few_distinct_texts_is_a_clear_error():
    with pytest.raises(SourceModelError, match="too few to split"):
        split_texts(_set(["same text"] * 8 + ["other"]))


def test_validation_file_keeps_every_calibration_text_for_fitting():
    calibration = _set([f"fit text {i}" for i in range(10)])
    validation = _set([f"validation text {i}" for i in range(9)], "val.txt")
    split = split_texts(calibration, validation)
    assert split.fit.texts == calibration.texts and split.validation is validation
    assert split.describe()["split"]["method"] == "file"


def test_validation_file_sharing_a_calibration_text_is_refused():
    calibration = _set([f"fit text {i}" for i in range(10)])
    validation = _set(["fit text 3"] + [f"validation text {i}" for i in range(9)], "val.txt")
    with pytest.raises(SourceModelError, match=r"1 text\(s\) of the validation file val.txt .*'fit text 3'"):
        split_texts(calibration, validation)


def test_missing_validation_file_names_its_role(tmp_path):
    with pytest.raises(SourceModelError, match="validation file .*does not exist"):
        load_texts(tmp_path / "nope.txt", role="validation")


def _rows(batches) -> list[tuple[int, ...]]:
    """Each tokenized text of `batches` as its real (unpadded) token ids."""
    return [tuple(ids[mask.astype(bool)]) for b in batches for ids, mask in zip(b["input_ids"], b["attention_mask"])]


@pytest.mark.slow
def test_fitters_see_only_fit_texts_and_metrics_only_validation_texts(tiny_model_factory, tmp_path, monkeypatch):
    import converters._artifacts as artifacts
    from converters.core.validate import make_batches
    from converters.inputs.source import load_source

    seen: dict[str, list] = {"smooth": [], "gptq": [], "w4a8": [], "scored": []}
    smooth, rounding, w4a8, metrics = (artifacts.smooth_activations, artifacts.Int8Rounding,
                                       artifacts.W4A8Weights, artifacts.compute_metrics)

    def record_smooth(model, out, batches, config):
        seen["smooth"].append(_rows(batches))
        return smooth(model, out, batches, config)

    class RecordRounding(rounding):
        def __init__(self, float_path, stats_path, batches, *args, **kwargs):
            seen["gptq"].append(_rows(batches))
            super().__init__(float_path, stats_path, batches, *args, **kwargs)

    class RecordW4A8(w4a8):
        def __init__(self, int8_path, float_path, stats_path, batches, *args, **kwargs):
            seen["w4a8"].append(_rows(batches))
            super().__init__(int8_path, float_path, stats_path, batches, *args, **kwargs)

    def record_metrics(source, reference, run, artifact="the artifact"):
        seen["scored"].append((artifact, reference.texts))
        return metrics(source, reference, run, artifact)

    monkeypatch.setattr(artifacts, "smooth_activations", record_smooth)
    monkeypatch.setattr(artifacts, "Int8Rounding", RecordRounding)
    monkeypatch.setattr(artifacts, "W4A8Weights", RecordW4A8)
    monkeypatch.setattr(artifacts, "compute_metrics", record_metrics)

    model_dir = tiny_model_factory("bert", "feature-extraction")
    out = tmp_path / "out"
    convert(ConvertConfig(model=model_dir, target="x86-avx2", out=out, latency_runs=2))
    manifest = json.loads((out / "manifest.json").read_text())

    split = split_texts(load_texts())
    source = load_source(model_dir, None)
    fit_rows = set(_rows(make_batches(source, split.fit.texts)))
    val_rows = set(_rows(make_batches(source, split.validation.texts))) - fit_rows  # uncased tokenizers merge some

    assert seen["smooth"] and seen["gptq"] and seen["w4a8"], seen.keys()
    for kind in ("smooth", "gptq", "w4a8"):
        for rows in seen[kind]:
            assert len(rows) == len(split.fit.texts), kind
            assert set(rows) <= fit_rows and not set(rows) & val_rows, kind
    final = [texts for artifact, texts in seen["scored"] if artifact in ("onnx-fp32", "onnx-int8", "onnx-int4")]
    assert final and all(texts == split.validation.texts for texts in final)

    calibration = manifest["calibration"]
    assert calibration["metrics_from"] == "validation"
    assert calibration["split"]["method"] == "hash"
    for side, texts in (("fit", split.fit.texts), ("validation", split.validation.texts)):
        assert calibration[side]["count"] == len(texts)
        assert calibration[side]["sha256"] == hashlib.sha256("\n".join(texts).encode()).hexdigest()
    assert calibration["fit"]["count"] + calibration["validation"]["count"] == calibration["count"]
    assert all(a["metrics_texts"] == "validation (unseen by fitting)" for a in manifest["artifacts"])
    # dynamic INT8/INT4 also scored a text at a time, as embed() runs them; FP32 is batch-free
    entries = {a["name"]: a for a in manifest["artifacts"]}
    assert "metrics_each_text_alone" not in entries["onnx-fp32"]
    dynamic = [name for name in entries if name != "onnx-fp32"]
    assert "onnx-int8" in dynamic, sorted(entries)
    for name in dynamic:
        alone = entries[name]["metrics_each_text_alone"]
        assert set(alone) == set(entries[name]["metrics"]) and 0.9 < alone["cosine_mean"] <= 1.0
    assert "arithmetic" in manifest and "validation" not in manifest


@pytest.mark.slow
def test_cli_validation_texts_file_and_table_header(tiny_model_factory, tmp_path):
    from click.testing import CliRunner

    from converters.cli import main as edge_convert

    validation = tmp_path / "val.txt"
    validation.write_text("\n".join(f"A validation sentence number {i} that no calibration text holds." for i in range(10)))
    out = tmp_path / "out"
    model_dir = tiny_model_factory("bert", "feature-extraction")
    result = CliRunner().invoke(edge_convert, [str(model_dir), "--target", "x86-avx512-vnni", "--out", str(out),
                                               "--validation-texts", str(validation), "--arithmetic", "exact", "-q"])
    assert result.exit_code == 0, result.output
    assert "validation (unseen by fitting)" in result.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["calibration"]["validation"] == {"source": str(validation), "count": 10, "sha256": hashlib.sha256(
        "\n".join(validation.read_text().splitlines()).encode()).hexdigest()}
    assert manifest["calibration"]["fit"]["count"] == manifest["calibration"]["count"]
    assert manifest["arithmetic"]["method"] == "exact-int32-reference"

    clash = tmp_path / "clash.txt"
    clash.write_text("hello\n" + validation.read_text())
    result = CliRunner().invoke(edge_convert, [str(model_dir), "--target", "x86-avx2", "--out", str(tmp_path / "o2"),
                                               "--validation-texts", str(clash), "-q"])
    assert result.exit_code != 0 and "'hello'" in result.output


# Keys that are timings of this machine, not properties of the artifact: they differ between runs
# and are the documented exception to "same model, same manifest" (issue 10).
TIMING_KEYS = {"latency_ms_p50", "vs_fp32", "seconds", "cpu_wait_share"}


def _without_timings(value):
    if isinstance(value, dict):
        return {k: _without_timings(v) for k, v in value.items() if k not in TIMING_KEYS}
    if isinstance(value, list):
        return [_without_timings(v) for v in value]
    return value


@pytest.mark.slow
def test_converting_twice_gives_the_same_manifest(tiny_model_factory, tmp_path):
    """Same model, same target, same machine: byte-identical artifacts (every sha256 in the
    manifest) and identical metrics, split and reports. Exception: the timings in TIMING_KEYS
    (measured_on_converter.latency_ms_p50, its ratio to the FP32 artifact's and the CPU's busy share
    while it was timed; an INT8
    fallback's trade-off latencies; TFLite quantize seconds). The manifest holds no wall-clock timestamp."""
    model_dir = tiny_model_factory("bert", "feature-extraction")
    manifests = []
    for run in range(2):
        out = tmp_path / f"out{run}"
        convert(ConvertConfig(model=model_dir, target="x86-avx2", out=out, latency_runs=2))
        manifests.append(json.loads((out / "manifest.json").read_text()))
    first, second = (_without_timings(m) for m in manifests)
    assert first == second
    measured = manifests[0]["artifacts"][0]["measured_on_converter"]
    assert measured["latency_ms_p50"] > 0  # the exception exists
    # every artifact timed together with the others, ratios against the ONNX FP32 one
    assert (measured["baseline"], measured["vs_fp32"], measured["runs"], measured["rounds"]) == ("onnx-fp32", 1.0, 2, 2)
    assert all(a["measured_on_converter"]["vs_fp32"] > 0 for a in manifests[0]["artifacts"])
    assert measured["cpu_wait_share"] is None or 0 <= measured["cpu_wait_share"] <= 1
    files = [f["sha256"] for a in first["artifacts"] for f in a["files"] + [a["golden"]]]
    assert len(files) >= 4 and files == [f["sha256"] for a in second["artifacts"] for f in a["files"] + [a["golden"]]]


@pytest.mark.slow
def test_an_artifact_below_the_floor_run_a_text_at_a_time_is_refused(tiny_model_factory, tmp_path, monkeypatch):
    """Searches decide on padded batches; the floor must also hold a text at a time (how embed
    runs dynamic INT8/INT4). Here every text-at-a-time run is perturbed: the dynamic artifacts are
    refused with that reason and their files are not delivered; FP32 (batch-free) is."""
    import numpy as np

    import converters.pipeline as pipeline

    real = pipeline.rows_alone

    def perturbed(run, sequence_outputs):
        alone = real(run, sequence_outputs)

        def noisy(feeds):
            out = alone(feeds)
            rng = np.random.default_rng(0)
            return {k: v + rng.normal(0, 3 * float(np.abs(v).mean()), v.shape).astype(v.dtype)
                    for k, v in out.items()}
        return noisy

    monkeypatch.setattr(pipeline, "rows_alone", perturbed)
    out = tmp_path / "out"
    convert(ConvertConfig(model=tiny_model_factory("bert", "feature-extraction"), target="x86-avx2", out=out,
                          latency_runs=2))
    manifest = json.loads((out / "manifest.json").read_text())
    delivered = {a["name"] for a in manifest["artifacts"]}
    refused = {r["name"]: r["reason"] for r in manifest["refused"]}
    assert "onnx-fp32" in delivered and "onnx-int8" not in delivered, (delivered, refused)
    assert "a text at a time" in refused["onnx-int8"] and "cosine" in refused["onnx-int8"]
    assert not list(out.glob("onnx-int8*")), "a refused artifact's files are not delivered"
