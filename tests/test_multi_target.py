"""`edge-convert --target a,b,c` / `all`: one run, shared stages, one directory per target, the
same artifacts as separate runs (issue 9)."""

from __future__ import annotations

import json
import re

import pytest
from click.testing import CliRunner

from converters import ConvertConfig, convert
from converters.cli import main as edge_convert
from converters.pipeline import TargetFailure, convert_targets


def _artifacts(path):
    manifest = json.loads((path / "manifest.json").read_text())
    return {a["name"]: a for a in manifest["artifacts"]}


@pytest.mark.slow  # three conversions of a tiny model, one with TFLite
def test_targets_share_stages_and_identical_builds(tiny_model_factory, tmp_path):
    model = tiny_model_factory("bert", "feature-extraction")
    messages: list[str] = []
    config = ConvertConfig(model=model, target="x86-avx2", out=tmp_path / "all", latency_runs=1)
    results = convert_targets(config, ["x86-avx512-vnni", "rpi5", "x86-avx2"], messages.append)
    assert [r.target for r in results] == ["x86-avx512-vnni", "rpi5", "x86-avx2"]
    assert not [r for r in results if isinstance(r, TargetFailure)]

    # Loaded, referenced and exported once for the run.
    assert sum("loading the source model" in m for m in messages) == 1
    # (the reference pass is a count per text set: one start of each)
    for side in ("validation", "fit"):
        starts = [m for m in messages if f"computing PyTorch FP32 reference outputs: {side} texts, batch 0/" in m]
        assert len(starts) == 1, (side, starts)
    # rpi5's TFLite export started with the run, in a second process beside the ONNX stages
    # (converters/tflite/background.py), unless this machine has no room for one: said either way.
    started = [m for m in messages if m.startswith("exporting TFLite with litert-torch in a second")]
    in_process = [m for m in messages if m.startswith("the TFLite export will run in this process")]
    assert len(started) + len(in_process) == 1, messages
    if started:
        first = next(i for i, m in enumerate(messages) if "computing PyTorch FP32 reference outputs" in m)
        assert messages.index(started[0]) < first
        assert sum(m.startswith("rpi5: TFLite export done in the second process") for m in messages) == 1
    # rpi5 asks for the same ONNX recipe as x86-avx512-vnni: its builds are reused, and say so.
    reused = [m for m in messages if m.startswith("rpi5: [onnx-") and "reused" in m]
    assert len(reused) == 3, reused
    vnni, rpi5 = _artifacts(tmp_path / "all" / "x86-avx512-vnni"), _artifacts(tmp_path / "all" / "rpi5")
    assert set(vnni) == {"onnx-fp32", "onnx-int8"}  # a tiny model misses INT4's size budget
    refused = json.loads((tmp_path / "all" / "rpi5" / "manifest.json").read_text())["refused"]
    reasons = {r["name"]: r["reason"] for r in refused}
    assert "measured for x86-avx512-vnni" in reasons["onnx-int4"]
    for name in vnni:
        assert rpi5[name]["built_for"] == "x86-avx512-vnni" and "built_for" not in vnni[name]
        assert [f["sha256"] for f in rpi5[name]["files"]] == [f["sha256"] for f in vnni[name]["files"]]
        assert rpi5[name]["metrics"] == vnni[name]["metrics"]
    assert {"tflite-fp32", "tflite-int8"} <= set(rpi5) and "tflite-int4" in reasons  # size budget too
    # in bytes, and naming the profile's setting in its file (a review, session 52: "0.160x FP32,
    # above the size budget of 0.16x FP32 ... targets/<id>.toml")
    assert re.search(r"the all-INT4 model is \d+ bytes \(0\.\d{4}x FP32\), above the size budget of \d+ bytes "
                     r"\(0\.16x FP32's \d+, int4_size_budget in targets/rpi5\.toml \[tflite\]; no option changes it\)",
                     reasons["tflite-int4"]), reasons["tflite-int4"]
    # x86-avx2's recipe differs (pair-limited INT8): built for itself.
    avx2 = _artifacts(tmp_path / "all" / "x86-avx2")
    assert not [a for a in avx2.values() if "built_for" in a]

    # The same bytes as a conversion of its own (ONNX only: the cheap one).
    alone = convert(ConvertConfig(model=model, target="x86-avx512-vnni", out=tmp_path / "alone", latency_runs=1))
    assert alone.artifacts
    for name, entry in _artifacts(tmp_path / "alone").items():
        assert [f["sha256"] for f in entry["files"]] == [f["sha256"] for f in rpi5[name]["files"]], name


@pytest.mark.slow  # two ONNX-only conversions of a tiny model
def test_cli_converts_a_list_of_targets_into_one_directory_each(tiny_model_factory, tmp_path):
    model = tiny_model_factory("bert", "feature-extraction")
    out = tmp_path / "several"
    result = CliRunner().invoke(edge_convert, [str(model), "--target", "x86-avx2,x86-avx512-vnni", "--out", str(out),
                                               "--json", "-q"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert [s["target"] for s in summary] == ["x86-avx2", "x86-avx512-vnni"]
    assert [s["out"] for s in summary] == [str((out / t).resolve()) for t in ("x86-avx2", "x86-avx512-vnni")]
    for target in ("x86-avx2", "x86-avx512-vnni"):
        assert (out / target / "manifest.json").is_file()
