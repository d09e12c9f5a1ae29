"""benchmarks/bench_timing_rounds.py: the converter's own timing repeated per round shape, every
shape taking turns within a repetition; bad options are one line before any session opens."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from edge_runtime import _rounds

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import bench_timing_rounds  # noqa: E402

MANIFEST = {
    "inputs": [{"name": "input_ids"}, {"name": "attention_mask"}],
    "tokenizer": {"files": [{"path": "tokenizer/tokenizer.json"}]},
    "artifacts": [
        {"name": "onnx-fp32", "format": "onnx", "precision": "fp32", "files": [{"path": "model.onnx"}]},
        {"name": "onnx-int8", "format": "onnx", "precision": "int8", "files": [{"path": "model-int8.onnx"}]},
    ],
}


class Session:
    def __init__(self, path):
        self.path = path

    def run(self, feeds):
        assert feeds["input_ids"].shape == (1, 16)


@pytest.fixture
def directory(tmp_path, monkeypatch):
    (tmp_path / "tokenizer").mkdir()
    (tmp_path / "tokenizer" / "tokenizer.json").write_text(json.dumps({"model": {"vocab": {f"w{i}": i for i in range(50)}}}))
    opened = []
    monkeypatch.setattr(bench_timing_rounds, "read_manifest", lambda root: MANIFEST)
    monkeypatch.setattr(bench_timing_rounds.backends, "backend_available", lambda fmt: True)

    def open_session(fmt, path, threads):
        opened.append(Path(path).name)
        return Session(path)

    monkeypatch.setattr(bench_timing_rounds.backends, "open_session", open_session)
    monkeypatch.setattr(_rounds.time, "sleep", lambda s: None)
    return tmp_path, opened


@pytest.mark.parametrize(("argv", "message"), [
    (["--shapes", "4"], "--shapes '4': expected ROUNDSxRUNS, e.g. 4x5"),
    (["--shapes", "0x5"], "--shapes '0x5': rounds and runs per round must be at least 1"),
    (["--reps", "0"], "--reps must be at least 1"),
])
def test_bad_options_are_one_line_before_any_session_opens(argv, message, directory, capsys):
    root, opened = directory
    with pytest.raises(SystemExit) as exited:
        bench_timing_rounds.main([str(root), *argv])
    assert exited.value.code == 2 and message in capsys.readouterr().err and not opened


def test_every_shape_is_timed_in_every_repetition_and_summarised(directory, capsys, tmp_path):
    root, opened = directory
    out = tmp_path / "res" / "rounds.json"
    assert bench_timing_rounds.main([str(root), "--reps", "3", "--shapes", "2x2,3x1", "--seq", "16",
                                     "--json", str(out)]) == 0
    assert opened == ["model.onnx", "model-int8.onnx"]  # each artifact opened once, kept open
    table = capsys.readouterr().out
    assert "3 repetitions, batch 1 x 16 tokens" in table and "ratios vs the FP32 artifact of each format" in table
    assert "| 2x2 | onnx-int8 | onnx-fp32 |" in table and "| 3x1 | onnx-int8 |" in table
    assert "| 2x2 | onnx-fp32 |" not in table
    doc = json.loads(out.read_text())
    assert doc["baselines"]["onnx-int8"] == "onnx-fp32" and len(doc["repetitions"]) == 3
    assert [len(doc["repetitions"][0][shape]["onnx-int8"]["round_p50_ms"]) for shape in ("2x2", "3x1")] == [2, 3]
    assert set(doc["summary"]["3x1"]["onnx-int8"]) == {"vs_fp32", "p50_ratio"}


def test_ctrl_c_keeps_the_repetitions_already_done(directory, capsys, monkeypatch):
    root, _ = directory
    real = bench_timing_rounds.time_together
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # during the second repetition
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(bench_timing_rounds, "time_together", interrupted)
    assert bench_timing_rounds.main([str(root), "--reps", "5", "--shapes", "1x1,1x2", "--seq", "16"]) == 0
    captured = capsys.readouterr()
    assert "interrupted: 1 repetition(s) kept" in captured.err and "1 repetitions" in captured.out
    calls.clear()
    monkeypatch.setattr(bench_timing_rounds, "time_together",
                        lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    assert bench_timing_rounds.main([str(root), "--reps", "5", "--seq", "16"]) == 130


def test_a_directory_without_an_fp32_artifact_is_refused(directory, capsys, monkeypatch):
    root, opened = directory
    monkeypatch.setattr(bench_timing_rounds, "read_manifest",
                        lambda r: {**MANIFEST, "artifacts": MANIFEST["artifacts"][1:]})
    with pytest.raises(SystemExit) as exited:
        bench_timing_rounds.main([str(root)])
    assert exited.value.code == 2 and "has no FP32 artifact this machine can run" in capsys.readouterr().err
    assert not opened
