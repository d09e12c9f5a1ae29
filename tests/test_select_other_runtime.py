"""The selection reason explains the order it gives (edge_runtime/_select.py): artifacts made for
another runtime of their format than the one installed here (tflite-int8 and tflite-int4, whose
min_runtime names only ai-edge-litert, under tflite-runtime 2.14) go after the rest of that
format, and the reason says so, names them and the package they need. Without it, edge-run --info
said "precisions int8 > fp32 > int4" above the order tflite-int8-legacy > tflite-fp32 > tflite-int8.
No backend is loaded: which package is installed is patched."""

from __future__ import annotations

import re

import pytest

from edge_runtime import _device, _select, backends

PREFERENCE = ["int8", "fp32", "int4"]
BOTH = {"ai-edge-litert": "2.3", "tflite-runtime": "2.14"}
LITERT = {"ai-edge-litert": "2.3"}
# An rpi4-like directory: the profile's order, then manifest order among equals.
ARTIFACTS = [("onnx-fp32", "onnx", "fp32", {"onnxruntime": "1.17"}),
             ("onnx-int8", "onnx", "int8", {"onnxruntime": "1.17"}),
             ("tflite-fp32", "tflite", "fp32", BOTH),
             ("tflite-int8", "tflite", "int8", LITERT),
             ("tflite-int8-legacy", "tflite", "int8", BOTH),
             ("tflite-int4", "tflite", "int4", LITERT)]


def _manifest(root, listed) -> dict:
    artifacts = []
    for name, fmt, precision, needs in listed:
        path = f"{name}.{fmt}"
        (root / path).write_bytes(b"\0" * 1024)
        artifacts.append({"name": name, "format": fmt, "precision": precision, "min_runtime": needs,
                          "files": [{"path": path, "bytes": 1024}]})
    return {"target": {"id": "rpi4"}, "artifacts": artifacts,
            "runtime": {"backends": [{"name": "onnxruntime"}, {"name": "litert"}],
                        "artifact_preference": PREFERENCE}}


def _installed(monkeypatch, tflite: str, onnx: str | None = None) -> None:
    packages = {"tflite": tflite, "onnx": onnx}
    monkeypatch.setattr(backends, "installed_package", lambda fmt: packages.get(fmt))
    monkeypatch.setattr(backends, "backend_available", lambda fmt: packages.get(fmt) is not None)


def _plan(tmp_path, listed=ARTIFACTS) -> _select.Plan:
    return _select.plan(tmp_path, _manifest(tmp_path, listed), _device.detect(measure_int8=False), None,
                        available_mb=10**6)


def _out_of_precision_order(plan: _select.Plan) -> set[str]:
    """Choices placed after an artifact of their own format that the stated precision order ranks
    below them: what the reason must account for."""
    rank = {p: i for i, p in enumerate(PREFERENCE)}
    late = set()
    for i, earlier in enumerate(plan.choices):
        for later in plan.choices[i + 1:]:
            same = later.entry["format"] == earlier.entry["format"]
            if same and rank[later.entry["precision"]] < rank[earlier.entry["precision"]]:
                late.add(later.name)
    return late


def test_under_tflite_runtime_the_reason_says_why_int8_and_int4_come_last(tmp_path, monkeypatch):
    _installed(monkeypatch, tflite="tflite-runtime")  # the legacy device stack, no onnxruntime
    plan = _plan(tmp_path)
    assert [c.name for c in plan.choices] == ["tflite-int8-legacy", "tflite-fp32", "tflite-int8", "tflite-int4"]
    assert set(plan.skipped) == {"onnx-fp32", "onnx-int8"}
    reason = plan.reason
    assert reason.startswith("rpi4 profile order (backends onnxruntime > litert; precisions int8 > fp32 > int4)")
    # tflite-int8 after tflite-fp32 contradicts "int8 > fp32": the reason names it, and int4 with it
    late = _out_of_precision_order(plan)
    assert late == {"tflite-int8"}
    moved = re.search(r"except that (.+?) go(?:es)? after the other tflite artifacts: (.+?)\)(;|$)", reason)
    assert moved, reason
    named = set(moved.group(1).split(", "))
    assert named == {"tflite-int8", "tflite-int4"} and late <= named, reason
    why = moved.group(2)
    assert "need ai-edge-litert" in why and "tflite-runtime runs tflite here" in why, why
    assert "pip install ai-edge-litert" in why, why
    assert re.search(r"\); needs ~\d+ MB of 1000000 MB available$", reason)  # the pick's memory note still ends it
    for choice in plan.choices:  # each moved choice carries the same note; the others none
        says = [n for n in choice.notes if "after the other tflite artifacts" in n]
        assert bool(says) == (choice.name in named), (choice.name, choice.notes)
        if says:
            assert says == ["after the other tflite artifacts: needs ai-edge-litert (min_runtime); "
                            "tflite-runtime runs tflite here"]


def test_one_moved_artifact_is_named_in_the_singular(tmp_path, monkeypatch):
    _installed(monkeypatch, tflite="tflite-runtime")
    plan = _plan(tmp_path, [a for a in ARTIFACTS if a[0] != "tflite-int4"])
    assert [c.name for c in plan.choices] == ["tflite-int8-legacy", "tflite-fp32", "tflite-int8"]
    assert ("except that tflite-int8 goes after the other tflite artifacts: it needs ai-edge-litert "
            "(its min_runtime), and tflite-runtime runs tflite here") in plan.reason, plan.reason
    assert "pip install ai-edge-litert to run it as made" in plan.reason


@pytest.mark.parametrize("onnx", [None, "onnxruntime"])
def test_with_the_runtime_they_were_made_for_the_profile_order_holds_and_nothing_is_excepted(
        tmp_path, monkeypatch, onnx):
    _installed(monkeypatch, tflite="ai-edge-litert", onnx=onnx)
    plan = _plan(tmp_path)
    tflite = ["tflite-int8", "tflite-int8-legacy", "tflite-fp32", "tflite-int4"]
    assert [c.name for c in plan.choices] == (["onnx-int8", "onnx-fp32"] if onnx else []) + tflite
    assert not _out_of_precision_order(plan)
    assert "except" not in plan.reason and "pip install" not in plan.reason, plan.reason
    assert not any("after the other" in n for c in plan.choices for n in c.notes)
