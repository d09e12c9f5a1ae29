"""tools/check_min_runtime.py: the oldest backend release a manifest allows really runs its artifacts.

The slow test installs the releases MIN_RUNTIME names into virtualenvs (pip: it needs PyPI, as the
README's install does) and loads tiny artifacts there with every hash and golden sample checked:
both INT4 kinds (x86-avx2's unpacked tables; the W4A8 graph with GatherBlockQuantized tables that
x86-avx512-vnni, rpi4 and rpi5 share) and FP32/INT8. test_minilm.py checks MiniLM's x86-avx2 directory.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "tools" / "check_min_runtime.py"


def _tool():
    spec = importlib.util.spec_from_file_location("check_min_runtime", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_release_is_the_lowest_the_minimum_allows():
    tool = _tool()
    assert tool.release("1.23") == "1.23.0"
    assert tool.release("2.3") == "2.3.0"
    assert tool.release("1.17.3") == "1.17.3"


def test_old_releases_get_a_numpy_they_import_with():
    tool = _tool()
    assert "numpy<2" in tool.requirements("onnxruntime", "1.17.0")
    assert "numpy" in tool.requirements("onnxruntime", "1.23.0")
    assert "numpy<2" in tool.requirements("tflite-runtime", "2.14.0")
    assert tool.requirements("onnxruntime", "1.23.0")[0] == "onnxruntime==1.23.0"


def test_bad_directory_and_unknown_artifact_exit_2(tmp_path):
    done = subprocess.run([sys.executable, str(TOOL), str(tmp_path)], capture_output=True, text=True)
    assert done.returncode == 2 and "no manifest.json" in done.stderr
    (tmp_path / "manifest.json").write_text(json.dumps({"artifacts": [{"name": "onnx-int8"}]}))
    done = subprocess.run([sys.executable, str(TOOL), str(tmp_path), "--artifact", "onnx-int9"],
                          capture_output=True, text=True)
    assert done.returncode == 2 and "no artifact onnx-int9" in done.stderr and "onnx-int8" in done.stderr


@pytest.mark.slow
@pytest.mark.parametrize("target", ["x86-avx2", "x86-avx512-vnni"])
def test_artifacts_run_on_the_oldest_release_they_allow(tiny_model_factory, tmp_path, monkeypatch, target):
    import onnx

    import converters.options
    from converters.onnx import quantize_int4
    from converters import ConvertConfig, convert
    from converters._artifacts import MIN_RUNTIME

    # A tiny model cannot meet the profile's 0.16x INT4 size budget (its 4-bit file, with scales,
    # token-0 splits and small tables kept 8-bit, is larger than its FP32 one): no budget, so that
    # the INT4 artifact exists to be checked.
    load = converters.options.load_profile

    def looser(name):
        profile = load(name)
        return dataclasses.replace(profile, int4=dataclasses.replace(profile.int4, size_budget=5.0))

    monkeypatch.setattr(converters.options, "load_profile", looser)
    # and its embedding tables 4-bit too, as MiniLM's are (GatherBlockQuantized, or unpacked Gathers)
    targets = quantize_int4._targets
    monkeypatch.setattr(quantize_int4, "_targets", lambda model, _smallest: targets(model, 1000))
    out = tmp_path / target
    convert(ConvertConfig(model=tiny_model_factory("bert", "feature-extraction"), target=target, out=out,
                          accuracy_floor=0.5, latency_runs=2, latency_rounds=1))
    manifest = json.loads((out / "manifest.json").read_text())
    names = {a["name"] for a in manifest["artifacts"]}
    assert {"onnx-fp32", "onnx-int8", "onnx-int4"} <= names, manifest.get("refused")
    ops = {n.op_type for n in onnx.load(out / "onnx-int4.onnx", load_external_data=False).graph.node}
    assert ("GatherBlockQuantized" in ops) == (target != "x86-avx2"), ops
    recorded = {a["name"]: a["min_runtime"] for a in manifest["artifacts"]}
    assert recorded["onnx-int4"] == MIN_RUNTIME[("onnx", "int4", "")]
    done = subprocess.run([sys.executable, str(TOOL), str(out), "--artifact", "onnx-int8", "--artifact", "onnx-int4"],
                          capture_output=True, text=True)
    print(done.stdout, done.stderr)
    assert done.returncode == 0
    assert done.stdout.count("golden samples passed") == 2
