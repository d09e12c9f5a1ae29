"""benchmarks/bench_artifacts.py checks every option before minutes of conversion, and its
JSON stays valid JSON (no NaN) naming the timing's shape and how busy the CPU was."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import bench_artifacts  # noqa: E402


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--block", "0"], "--block must be at least 1, got 0"),  # once looped forever
        (["--rounds", "0"], "--rounds must be at least 1"),
        (["--runs", "-3"], "--runs must be at least 1"),
        (["--threads", "0"], "--threads must be at least 1"),
        (["--seq", "512"], "--seq must be 1-256"),  # once timed 256 tokens labelled 512
        (["--reuse"], "--reuse reads the artifacts of an earlier --keep DIR"),
        (["--target", "nosuch"], "--target nosuch: unknown target 'nosuch'"),
        (["--target", "x86-avx2/floor=high"], "the /floor= suffix must be a number"),
    ],
)
def test_bad_options_are_one_line_before_any_work(argv, message, capsys, monkeypatch):
    monkeypatch.setattr(bench_artifacts, "_bench", lambda *a: pytest.fail("started despite a bad option"))
    with pytest.raises(SystemExit) as exited:
        bench_artifacts.main(argv)
    assert exited.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("bench_artifacts.py: error: ") or error.startswith(f"{Path(sys.argv[0]).name}: error: ")
    assert message in error


def test_output_paths_are_checked_first(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(bench_artifacts, "_bench", lambda *a: pytest.fail("started despite a bad path"))
    a_file = tmp_path / "file"
    a_file.write_text("x")
    for argv, message in ((["--json", str(tmp_path)], "a directory; name the file"),
                          (["--json", str(a_file / "out.json")], "is not a writable directory"),
                          (["--keep", str(a_file)], "a file, not a directory")):
        with pytest.raises(SystemExit):
            bench_artifacts.main(argv)
        assert message in capsys.readouterr().err


def test_ctrl_c_is_one_line_and_the_work_dir_is_removed(tmp_path, capsys, monkeypatch):
    seen = []

    def interrupted(args, argv, work):
        seen.append(work)
        (work / "plain_fp32.onnx").write_bytes(b"x" * 100)
        raise KeyboardInterrupt

    monkeypatch.setattr(bench_artifacts, "_bench", interrupted)
    assert bench_artifacts.main(["--keep", str(tmp_path / "kept")]) == 130
    assert "interrupted, nothing measured was written; converted artifacts stay in" in capsys.readouterr().err
    assert seen and not seen[0].exists()


def test_json_values_have_no_nan():
    assert bench_artifacts._json_value(float("nan")) is None
    assert bench_artifacts._json_value(math.inf) is None
    assert bench_artifacts._json_value(Path("/a/b")) == "/a/b"
    assert json.dumps({"p50_ms": bench_artifacts._json_value(1.5)}, allow_nan=False) == '{"p50_ms": 1.5}'
