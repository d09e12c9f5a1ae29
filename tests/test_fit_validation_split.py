"""Fit and score on different texts (issue 10): the calibration texts split deterministically
into a fit set and a validation set (or the validation texts come from their own file); every
fitting step sees only the fit set, every metric the validation set, and the manifest records
both sets and where its metrics come from."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import pytest

from converters import ConvertConfig, SourceModelError, convert
from converters.core.search import RANKING_TEXTS
from converters import ConversionError
from converters.inputs.calibration import (
    MAX_FIT_TEXTS,
    MAX_VALIDATION_TEXTS,
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


def test_the_small_file_split_counts_distinct_texts():
    """8 distinct texts pass the 8-text minimum (a repeated text counts once); the split then
    decided on the small-file fallback by counting copies, and refused them as "8 distinct texts:
    too few to split" (review r36b, defect 6)."""
    texts = ["a b c"] * 5 + ["d e", "f g", "h i", "j k", "l m", "n o", "p q"]
    split = split_texts(_set(texts))
    assert (split.fit.distinct, split.validation.distinct) == (4, 4)
    assert not set(split.fit.texts) & set(split.validation.texts)
    assert sorted(split.fit.texts + split.validation.texts) == sorted(texts)  # every copy kept, on its text's side


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


def test_a_large_file_is_sampled_per_side_deterministically_in_file_order():
    """A side over its cap keeps a sample of the cap's size: a subset of the uncapped side, in
    the file's order, the same on every run, independent of the other side's cap."""
    texts = [f"calibration sentence number {i} about a topic" for i in range(600)]
    whole = split_texts(_set(texts), max_fit=None, max_validation=None)
    capped = split_texts(_set(texts), max_fit=100, max_validation=40)
    assert (len(capped.fit.texts), len(capped.validation.texts)) == (100, 40)
    assert capped.available == {"fit": len(whole.fit.texts), "validation": len(whole.validation.texts)}
    order = {t: i for i, t in enumerate(texts)}
    for side, full in ((capped.fit, whole.fit), (capped.validation, whole.validation)):
        assert set(side.texts) <= set(full.texts)
        assert [order[t] for t in side.texts] == sorted(order[t] for t in side.texts)
        assert side.sha256 == hashlib.sha256("\n".join(side.texts).encode()).hexdigest()
    assert split_texts(_set(texts), max_fit=100, max_validation=40) == capped
    assert split_texts(_set(texts), max_fit=100, max_validation=None).fit == capped.fit
    sampled = capped.describe()["sampled"]
    assert sampled["available"] == capped.available and "max_fit_texts" in sampled["rule"]
    assert capped.describe()["fit"]["count"] == 100
    # the default caps: the built-in set is under them, so nothing is sampled or recorded
    assert len(whole.fit.texts) > MAX_FIT_TEXTS // 4 and "sampled" not in split_texts(load_texts()).describe()
    assert split_texts(load_texts()).available == {}


def test_a_sampled_text_stays_when_other_texts_are_edited():
    """Which texts a cap keeps depends on each text alone (a hash): removing texts the sample
    did not keep, or adding texts that rank after it, changes nothing; a kept text removed is
    replaced by the next in rank, the others stay."""
    texts = [f"a line of the user's domain corpus, number {i}" for i in range(400)]
    first = split_texts(_set(texts), max_fit=50, max_validation=20)
    kept = set(first.fit.texts + first.validation.texts)
    smaller = [t for i, t in enumerate(texts) if t in kept or i % 2]  # half the texts the caps left out removed
    again = split_texts(_set(smaller), max_fit=50, max_validation=20)
    assert (again.fit.texts, again.validation.texts) == (first.fit.texts, first.validation.texts)
    dropped = first.fit.texts[0]
    edited = split_texts(_set([t for t in texts if t != dropped]), max_fit=50, max_validation=20)
    assert len(set(first.fit.texts) - set(edited.fit.texts)) == 1 and dropped not in edited.fit.texts
    assert edited.validation.texts == first.validation.texts


def test_copies_of_a_text_are_sampled_together_and_a_validation_file_is_capped_too():
    texts = [f"text {i}" for i in range(300)] * 2
    split = split_texts(_set(texts), max_fit=60, max_validation=30)
    # copies share their rank and sit next to each other in it: an even cap takes whole pairs
    assert len(split.fit.texts) == 60 and all(split.fit.texts.count(t) == 2 for t in split.fit.texts)
    assert split.fit.distinct == 30 and not set(split.fit.texts) & set(split.validation.texts)
    validation = _set([f"validation text {i}" for i in range(50)], "val.txt")
    by_file = split_texts(_set([f"fit text {i}" for i in range(30)]), validation, max_fit=None, max_validation=16)
    assert len(by_file.validation.texts) == 16 and set(by_file.validation.texts) <= set(validation.texts)
    assert by_file.available == {"validation": 50} and len(by_file.fit.texts) == 30


@pytest.mark.parametrize("value", [0, 7, -1, 2.5, "all", True])
def test_a_text_cap_below_the_minimum_or_not_a_count_names_its_parameter(value):
    with pytest.raises(ConversionError, match=r"max_fit_texts must be an integer of at least 8 or None"):
        ConvertConfig(model=None, target="x86-avx2", out="out", max_fit_texts=value)
    with pytest.raises(ConversionError, match=r"max_validation_texts must be"):
        split_texts(load_texts(), max_validation=value)
    assert MAX_VALIDATION_TEXTS >= 8 and ConvertConfig(model=None, target="x86-avx2", out="o",
                                                       max_fit_texts=None).max_fit_texts is None


@pytest.mark.parametrize(("given", "shown", "status"), [("3", "at least 8 texts", 1),  # out of range (epilog: 1)
                                                   ("many", "a number of texts or 'all'", 2)])  # not a number
def test_the_cli_refuses_a_bad_text_cap_before_any_work(given, shown, status, tmp_path):
    from click.testing import CliRunner

    from converters.cli import as_flags
    from converters.cli import main as edge_convert

    result = CliRunner().invoke(edge_convert, ["--target", "x86-avx2", "--out", str(tmp_path / "o"),
                                               "--max-validation-texts", given])
    assert result.exit_code == status and "--max-validation-texts" in result.output and shown in result.output
    assert not (tmp_path / "o").exists()
    assert as_flags("raise max_fit_texts / max_validation_texts") == "raise --max-fit-texts / --max-validation-texts"


def _rows(batches) -> list[tuple[int, ...]]:
    """Each tokenized text of `batches` as its real (unpadded) token ids."""
    return [tuple(ids[mask.astype(bool)].tolist())
            for b in batches for ids, mask in zip(b["input_ids"], b["attention_mask"])]


def _record_scoring(monkeypatch) -> list[tuple[str, str, list[tuple[int, ...]]]]:
    """Wrap compute_metrics in every converters module that holds it (the pipeline, the
    artifact builders and their ranking scorers, the INT8 floor search, pruning): each call
    appends (module, label, the token rows it ran). Rankings score in lanes (threads):
    list.append is atomic."""
    import sys

    import converters.core.validate  # noqa: F401 (the modules below import it)

    calls: list[tuple[str, str, list[tuple[int, ...]]]] = []
    for name, module in list(sys.modules.items()):
        held = getattr(module, "compute_metrics", None) if name.startswith("converters.") else None
        if callable(held):

            def bound(source, reference, run, artifact="the artifact", _name=name, _held=held):
                calls.append((_name, artifact, _rows(reference.batches)))
                return _held(source, reference, run, artifact)

            monkeypatch.setattr(module, "compute_metrics", bound)
    return calls


def _split_rows(model_dir):
    """(the built-in split, its fit rows, its validation rows in order), tokenized as the
    pipeline tokenizes them."""
    from converters.core.validate import make_batches
    from converters.inputs.source import load_source

    split = split_texts(load_texts())
    source = load_source(model_dir, None)
    fit, validation = (_rows(make_batches(source, side.texts)) for side in (split.fit, split.validation))
    return split, set(fit), validation


def _floor_just_above_all_int8(monkeypatch):
    """Make the ONNX INT8 floor search run: each quantize_with_floor is given the floor just
    above what its all-INT8 model scores (as tests/test_search_adapters.py does), so it ranks
    its weights and keeps some in FP32. The tiny model meets the profile's floor all-INT8,
    and without this no ranking scorer is ever built."""
    import dataclasses

    import converters._artifacts as artifacts

    real = artifacts.quantize_with_floor
    raised = []

    def just_above(fp32_path, out_path, config, source, reference, floor, *args, **kwargs):
        start = real(fp32_path, out_path, config, source, reference, floor, *args, **kwargs)
        assert not start.search, "the tiny model was expected to meet the profile's floor all-INT8"
        mean = start.metrics["cosine_mean"]
        floor = dataclasses.replace(floor, cosine_mean=min(1.0, mean + 0.3 * (1 - mean)))
        raised.append(floor.cosine_mean)
        return real(fp32_path, out_path, config, source, reference, floor, *args, **kwargs)

    monkeypatch.setattr(artifacts, "quantize_with_floor", just_above)
    return raised


def _int4_within_budget(monkeypatch):
    """The tiny model cannot meet the profiles' 0.16x INT4 size budget (its small tensors
    dominate), so its INT4 artifact is refused before its budget search ranks anything: no
    budget here, so that the W4A8 search ranks its weights (as tests/test_min_runtime.py does)."""
    import dataclasses

    import converters.options

    load = converters.options.load_profile

    def looser(name):
        profile = load(name)
        return dataclasses.replace(profile, int4=dataclasses.replace(profile.int4, size_budget=5.0))

    monkeypatch.setattr(converters.options, "load_profile", looser)


@pytest.mark.slow
def test_fitters_see_only_fit_texts_and_metrics_only_validation_texts(tiny_model_factory, tmp_path, monkeypatch):
    """SmoothQuant, GPTQ (INT8 and W4A8) and every search's ranking see the fit texts only;
    every metric, floor check and search step judges on the validation texts only. Both
    searches are made to run: the INT8 floor search (floor just above the all-INT8 metric)
    and the W4A8 budget search (no size budget); each ranking is recorded where its scores are
    computed (compute_metrics), whoever calls it."""
    import converters._artifacts as artifacts

    seen: dict[str, list] = {"smooth": [], "gptq": [], "w4a8": []}
    smooth, rounding, w4a8 = artifacts.smooth_activations, artifacts.Int8Rounding, artifacts.W4A8Weights

    def record_smooth(model, out, batches, config, *args, **kwargs):
        seen["smooth"].append(_rows(batches))
        return smooth(model, out, batches, config, *args, **kwargs)

    class RecordRounding(rounding):
        def __init__(self, float_path, stats_path, batches, *args, **kwargs):
            seen["gptq"].append(_rows(batches))
            super().__init__(float_path, stats_path, batches, *args, **kwargs)

    class RecordW4A8(w4a8):
        def __init__(self, int8_path, float_path, stats_path, batches, *args, **kwargs):
            seen["w4a8"].append(_rows(batches))
            super().__init__(int8_path, float_path, stats_path, batches, *args, **kwargs)

    monkeypatch.setattr(artifacts, "smooth_activations", record_smooth)
    monkeypatch.setattr(artifacts, "Int8Rounding", RecordRounding)
    monkeypatch.setattr(artifacts, "W4A8Weights", RecordW4A8)
    raised = _floor_just_above_all_int8(monkeypatch)
    _int4_within_budget(monkeypatch)
    scored = _record_scoring(monkeypatch)

    model_dir = tiny_model_factory("bert", "feature-extraction")
    out = tmp_path / "out"
    convert(ConvertConfig(model=model_dir, target="x86-avx2", out=out, latency_runs=2))
    manifest = json.loads((out / "manifest.json").read_text())
    entries = {a["name"]: a for a in manifest["artifacts"]}
    split, fit_rows, validation = _split_rows(model_dir)
    all_val = set(validation)
    val_rows = all_val - fit_rows  # uncased tokenizers merge some texts of both sides

    assert seen["smooth"] and seen["gptq"] and seen["w4a8"], seen.keys()
    for kind in ("smooth", "gptq", "w4a8"):
        for rows in seen[kind]:
            assert len(rows) == len(split.fit.texts), kind
            assert set(rows) <= fit_rows and not set(rows) & val_rows, kind

    # Both searches ran and ranked: the INT8 one kept weights in FP32, the W4A8 one moved some to 8 bits.
    assert raised and {"onnx-fp32", "onnx-int8", "onnx-int4"} <= set(entries), manifest["refused"]
    assert entries["onnx-int8"]["quantization"]["promoted"]["weights"], entries["onnx-int8"]["quantization"]
    assert len(entries["onnx-int8"]["quantization"]["search"]) > 1
    assert len(entries["onnx-int4"]["quantization"]["search"]) > 1
    labels = {label for _, label, _ in scored}
    ranking = [(module, label, rows) for module, label, rows in scored if "ranking" in label]
    ranked_by = {(module, label) for module, label, _ in ranking}
    assert ("converters.onnx.mixed_precision", "onnx-int8 ranking probe") in ranked_by, labels
    assert ("converters._artifacts", "onnx-int4 ranking probe") in ranked_by, labels
    for module, label, rows in ranking:  # a length-spread subset of the fit texts
        assert len(rows) == min(RANKING_TEXTS, len(split.fit.texts)), (module, label)
        assert set(rows) <= fit_rows and not set(rows) & val_rows, (module, label)
    # Everything else is a metric, a floor check or a search step: validation texts only.
    judged = [(module, label, rows) for module, label, rows in scored if "ranking" not in label]
    assert any("candidate" in label for _, label, _ in judged), labels
    for module, label, rows in judged:
        assert set(rows) <= all_val, (module, label)
    for name in ("onnx-fp32", "onnx-int8", "onnx-int4"):  # the recorded metrics: all of them
        final = [rows for _, label, rows in judged if label == name]
        assert final and all(sorted(rows) == sorted(validation) for rows in final), name

    calibration = manifest["calibration"]
    assert calibration["metrics_from"] == "validation"
    assert calibration["split"]["method"] == "hash"
    for side, texts in (("fit", split.fit.texts), ("validation", split.validation.texts)):
        assert calibration[side]["count"] == len(texts)
        assert calibration[side]["sha256"] == hashlib.sha256("\n".join(texts).encode()).hexdigest()
    assert calibration["fit"]["count"] + calibration["validation"]["count"] == calibration["count"]
    assert all(a["metrics_texts"] == "validation (unseen by fitting)" for a in manifest["artifacts"])
    # dynamic INT8/INT4 also scored a text at a time, as embed() runs them; FP32 is batch-free
    assert "metrics_each_text_alone" not in entries["onnx-fp32"]
    dynamic = [name for name in entries if name != "onnx-fp32"]
    assert "onnx-int8" in dynamic, sorted(entries)
    for name in dynamic:
        alone = entries[name]["metrics_each_text_alone"]
        assert set(alone) == set(entries[name]["metrics"]) and 0.9 < alone["cosine_mean"] <= 1.0
    assert "arithmetic" in manifest and "validation" not in manifest


@pytest.mark.slow
def test_static_int8_ranges_come_from_the_fit_texts_only(tiny_model_factory, tmp_path, monkeypatch):
    """jetson-orin quantizes activations statically: the ranges onnxruntime calibrates are read
    from fit texts only (every batch its calibration reader hands out), never validation texts."""
    import converters.onnx.quantize_int8 as quantize_int8

    handed: list[list[tuple[int, ...]]] = []
    reader = quantize_int8._Reader

    class RecordReader(reader):
        def __init__(self, batches):
            batches = list(batches)
            handed.append(_rows(batches))
            super().__init__(batches)

    monkeypatch.setattr(quantize_int8, "_Reader", RecordReader)
    scored = _record_scoring(monkeypatch)
    model_dir = tiny_model_factory("bert", "feature-extraction")
    out = tmp_path / "out"
    convert(ConvertConfig(model=model_dir, target="jetson-orin", out=out, latency_runs=1, latency_rounds=1))
    manifest = json.loads((out / "manifest.json").read_text())
    assert "onnx-int8" in {a["name"] for a in manifest["artifacts"]}, manifest["refused"]
    split, fit_rows, validation = _split_rows(model_dir)
    val_rows = set(validation) - fit_rows
    assert handed and all(handed), "static INT8 calibrated on nothing"
    for rows in handed:
        assert set(rows) <= fit_rows and not set(rows) & val_rows
    assert scored
    for module, label, rows in scored:
        assert set(rows) <= (fit_rows if "ranking" in label else set(validation)), (module, label)


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


@pytest.mark.slow
def test_a_capped_conversion_says_so_and_records_the_sample(tiny_model_factory, tmp_path):
    """A calibration file over the caps: the run fits and validates on the sample, says so with
    the flags that lift the caps, and the manifest records the sample and what was available."""
    from click.testing import CliRunner

    from converters.cli import main as edge_convert

    calibration = tmp_path / "domain.txt"
    calibration.write_text("\n".join(f"Customer ticket {i}: the device restarts after update {i % 7}." for i in range(120)))
    out = tmp_path / "out"
    model_dir = tiny_model_factory("bert", "feature-extraction")
    result = CliRunner().invoke(edge_convert, [str(model_dir), "--target", "x86-avx512-vnni", "--out", str(out),
                                               "--calibration", str(calibration), "--max-fit-texts", "16",
                                               "--max-validation-texts", "8", "--arithmetic", "exact"])
    assert result.exit_code == 0, result.output
    whole = split_texts(load_texts(calibration), max_fit=None, max_validation=None)
    note = [line for line in result.output.splitlines() if "deterministic sample" in line]
    assert note and f"16 of the {len(whole.fit.texts)} fit texts" in note[0], result.output
    assert f"8 of the {len(whole.validation.texts)} validation texts" in note[0]
    assert "--max-fit-texts / --max-validation-texts" in note[0] and "max_fit_texts" not in note[0]
    calibration_record = json.loads((out / "manifest.json").read_text())["calibration"]
    sample = split_texts(load_texts(calibration), max_fit=16, max_validation=8)
    assert calibration_record["fit"] == sample.fit.describe() and calibration_record["fit"]["count"] == 16
    assert calibration_record["validation"]["count"] == 8 and calibration_record["count"] == 120
    assert calibration_record["sampled"]["available"] == {"fit": len(whole.fit.texts),
                                                          "validation": len(whole.validation.texts)}


# Keys that are timings of this machine, not properties of the artifact: they differ between runs
# and are the documented exception to "same model, same manifest" (issue 10).
TIMING_KEYS = {"latency_ms_p50", "vs_fp32", "seconds", "cpu_wait_share"}


def _without_timings(value):
    if isinstance(value, dict):
        return {k: _without_timings(v) for k, v in value.items() if k not in TIMING_KEYS}
    if isinstance(value, list):
        return [_without_timings(v) for v in value]
    return value


_SECOND_CONVERSION = """
import json, sys
from converters import ConvertConfig, convert
convert(ConvertConfig(model=sys.argv[1], target="x86-avx2", out=sys.argv[2], latency_runs=2))
print(json.dumps(hash("edge-runtime manifest")))
"""


def _another_hash_seed() -> str:
    """A PYTHONHASHSEED other than this process's: set order (str hashes) differs between them."""
    mine = os.environ.get("PYTHONHASHSEED", "")
    return str((int(mine) + 1) % 4294967296) if mine.isdigit() else "1"


@pytest.mark.slow
def test_converting_twice_gives_the_same_manifest(tiny_model_factory, tmp_path):
    """Same model, same target, same machine: byte-identical artifacts (every sha256 in the
    manifest) and identical metrics, split and reports. Exception: the timings in TIMING_KEYS
    (measured_on_converter.latency_ms_p50, its ratio to the FP32 artifact's and the CPU's busy share
    while it was timed; an INT8
    fallback's trade-off latencies; TFLite quantize seconds). The manifest holds no wall-clock timestamp.
    The second conversion runs in a fresh process with another PYTHONHASHSEED (set and dict-of-set
    order, a cold tokenizer and imports): what differs between processes shows, not only what
    differs between two calls in one."""
    model_dir = tiny_model_factory("bert", "feature-extraction")
    manifests = []
    convert(ConvertConfig(model=model_dir, target="x86-avx2", out=tmp_path / "out0", latency_runs=2))
    seed = _another_hash_seed()
    child = subprocess.run([sys.executable, "-c", _SECOND_CONVERSION, str(model_dir), str(tmp_path / "out1")],
                           env={**os.environ, "PYTHONHASHSEED": seed}, cwd=tmp_path, capture_output=True,
                           text=True, timeout=600)
    assert child.returncode == 0, child.stderr[-3000:]
    # the two processes did hash strings differently (else this is the in-process test again)
    assert json.loads(child.stdout.strip().splitlines()[-1]) != hash("edge-runtime manifest"), seed
    for run in range(2):
        manifests.append(json.loads((tmp_path / f"out{run}" / "manifest.json").read_text()))
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
