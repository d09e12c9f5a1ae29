"""benchmarks/golden_drift.py, the measurement behind the short-sample golden tolerance (RESULTS.md
run BJ): its three steps on a converted tiny model. The same machine on both sides drifts by
nothing; a shifted copy of the outputs is measured and judged against the recorded tolerances."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import golden_drift  # noqa: E402

pytestmark = pytest.mark.slow  # the rpi5 conversion of the session's tiny model


def test_feeds_run_and_compare(tiny_rpi5, tmp_path, capsys):
    feeds, here, again = tmp_path / "feeds.npz", tmp_path / "here.npz", tmp_path / "again.npz"
    assert golden_drift.main(["feeds", str(tiny_rpi5), str(feeds)]) == 0
    with np.load(feeds) as data:
        groups = {k.split("/")[0] for k in data.files}
    assert len([g for g in groups if g.startswith("text")]) == len(golden_drift.TEXTS)
    assert "tflite-int8:golden3" in groups and not any(g.startswith("onnx-fp32:") for g in groups)
    for out in (here, again):
        assert golden_drift.main(["run", str(tiny_rpi5), "tflite-int8", str(feeds), str(out)]) == 0
    assert golden_drift.main(["compare", str(tiny_rpi5), "tflite-int8", str(feeds), str(again), str(here)]) == 0
    printed = capsys.readouterr().out
    assert "tflite-int8 texts (n=42): 1-cos max" in printed and "0 moved by more than 1e-6" in printed
    # A copy with one text's output moved: measured, and judged only where a tolerance is recorded.
    with np.load(here) as data:
        moved = {k: data[k] * (np.float32(1.5) if k.startswith("text4/") or k.startswith("tflite-int8:golden3/")
                               else np.float32(1)) for k in data.files}
    np.savez(again, **moved)
    golden_drift.main(["compare", str(tiny_rpi5), "tflite-int8", str(feeds), str(again), str(here)])
    printed = capsys.readouterr().out
    assert "'Thanks!'" in printed and "rel L2 0.5" in printed
    assert "golden short" in printed and "FAILS its recorded tolerance" in printed
    rows = json.loads(again.with_suffix(".drift.json").read_text())
    assert {r["feed"] for r in rows if r["rel_l2"] > 0.4} == {"'Thanks!'", "golden short"}
