"""A device refuses an artifact its CPU would compute wrongly (README "What is guaranteed"), through
load() itself, on any host: the device is faked (detect() says its INT8 GEMM adds pairs of
products into a saturating int16, "s16-pairs", as x86 AVX2 without VNNI does), so this runs on
the VNNI, AMX and ARM machines where the real refusal never shows (test_avx2_emulated.py shows it
under qemu, slowly). The artifact directory is built by hand (tests/tiny_artifact.py) with an
INT8 entry that requires int32 accumulation, as rpi5's and x86-avx512-vnni's do; its files are
good, so without the check it would load: only the arithmetic refuses it."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from pathlib import Path

import onnx
import pytest

import edge_runtime
import tiny_artifact
from edge_runtime import _device, _select


def _with_int8(root: Path, requires: list[str]) -> Path:
    """tiny_artifact's directory, made for rpi5, with an "onnx-int8" entry (the same small graph
    under its own files, so that it loads and passes its golden sample) requiring `requires`;
    the profile prefers it to onnx-fp32."""
    manifest = tiny_artifact.build(root)
    model = onnx.load(str(root / "onnx-fp32.onnx"))
    onnx.save(model, str(root / "onnx-int8.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
              location="onnx-int8.onnx.data", size_threshold=0)
    shutil.copy(root / "golden" / "onnx-fp32.npz", root / "golden" / "onnx-int8.npz")
    fp32 = manifest["artifacts"][0]
    golden = {**tiny_artifact._file(root, "golden/onnx-int8.npz"), "tolerance": fp32["golden"]["tolerance"]}
    int8 = {**fp32, "name": "onnx-int8", "precision": "int8", "requires": {"int8_gemm": requires},
            "files": [tiny_artifact._file(root, "onnx-int8.onnx"), tiny_artifact._file(root, "onnx-int8.onnx.data")],
            "golden": golden}
    manifest["target"] = {"id": "rpi5"}
    manifest["artifacts"] = [fp32, int8]
    manifest["runtime"]["artifact_preference"] = ["int8", "fp32"]
    (root / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return root


def _device_with(monkeypatch, int8_gemm: str) -> None:
    """detect() answers this host's facts with `int8_gemm` (and a CPU name that says so)."""
    here = _device.detect()
    fake = dataclasses.replace(here, int8_gemm=int8_gemm, cpu_model=f"test CPU ({int8_gemm})",
                               int8_gemm_source="faked by the test")
    monkeypatch.setattr(_device, "detect", lambda *args, **kwargs: fake)


def test_a_saturating_int16_device_refuses_an_int32_artifact_by_name_and_skips_it(
        tmp_path, monkeypatch, caplog, capsys):
    root = _with_int8(tmp_path / "rpi5", ["int32"])
    _device_with(monkeypatch, "s16-pairs")

    with pytest.raises(edge_runtime.DeviceMismatchError,
                       match=r"onnx-int8 was made for rpi5, whose INT8 GEMM accumulates in int32 .*"
                             r"test CPU \(s16-pairs\).*overflow"):
        edge_runtime.load(root, artifact="onnx-int8")

    # Automatic selection leaves it out before opening anything, saying why, and loads the next one.
    plan = _select.plan(root, edge_runtime.read_manifest(root), _device.detect(), None)
    assert [c.name for c in plan.choices] == ["onnx-fp32"]
    assert "would compute wrong numbers" in plan.skipped["onnx-int8"]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="edge_runtime"):
        model = edge_runtime.load(root)
    assert model.name == "onnx-fp32"
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("not trying artifact onnx-int8: onnx-int8 was made for rpi5") and "overflow" in m
               for m in messages), messages
    assert not any(m.startswith("skipping artifact onnx-int8") for m in messages), messages  # never opened

    # edge-run --info says the same without loading.
    from edge_runtime import cli

    capsys.readouterr()
    assert cli.main([str(root), "--info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["selection"]["artifact"] == "onnx-fp32"
    assert "would compute wrong numbers" in info["not_tried"]["onnx-int8"]


@pytest.mark.parametrize(("device", "requires"), [("int32", ["int32"]), ("s16-pairs", ["int32", "s16-pairs"])])
def test_a_device_whose_arithmetic_the_artifact_allows_loads_it(tmp_path, monkeypatch, device, requires):
    """The controls: the same directory loads its INT8 entry, by name and first by itself, where
    the device's arithmetic is one it was validated with (x86-avx2's pair-limited artifacts
    allow both kinds). So the refusal above is the arithmetic's, not a broken fixture's."""
    root = _with_int8(tmp_path / "rpi5", requires)
    _device_with(monkeypatch, device)
    assert edge_runtime.load(root, artifact="onnx-int8").name == "onnx-int8"
    assert edge_runtime.load(root).name == "onnx-int8"
