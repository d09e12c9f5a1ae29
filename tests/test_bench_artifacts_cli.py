"""benchmarks/bench_artifacts.py checks every option before minutes of conversion, and its
JSON stays valid JSON (no NaN) naming the timing's shape and how busy the CPU was. Paths the user
typed relative to their directory work although the load probes run in the repository; a failed
probe is one line with its exception; --reuse refuses another model's artifacts; SIGTERM cleans
up as Ctrl-C does; the JSON names no file the run deleted."""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import time
from pathlib import Path

import pytest

import tiny_artifact

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tools"))
import bench_artifacts  # noqa: E402
from _bench_child import ChildError  # noqa: E402


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
        # once tracebacks from inside the converter (review 3, F9)
        (["--target", "x86-avx2@bogus"], "--target x86-avx2@bogus: the @METHOD suffix applies to static INT8"),
        (["--target", "jetson-orin@bogus"], "--target jetson-orin@bogus: int8.calibration_method = 'bogus'; "
                                            "allowed: minmax, percentile, entropy"),
        (["--prune", "heads=2"], "--prune heads=2: heads must be a share from 0 up to (not including) 1"),
        (["--prune", "nope"], "--prune 'nope': 'nope' is not a share to prune"),
        (["--prune-floor", "0.5"], "--prune-floor 0.5 is the pruned artifacts' floor, and nothing is pruned "
                                   "for x86-avx2: pass --prune ... too"),
        (["--target", "x86-avx2/floor=2"], "--target x86-avx2/floor=2: the /floor= suffix must be above 0 and below 1"),
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


def test_relative_paths_are_the_callers_not_the_repositorys(tmp_path, monkeypatch):
    """--keep keepm from /tmp/review3 converted for five minutes, then the load probe (cwd=ROOT)
    failed on "keepm/x86-avx2 does not exist" (review 3, F5)."""
    seen = []
    monkeypatch.setattr(bench_artifacts, "_bench", lambda args, argv, work: seen.append(args) or 0)
    monkeypatch.chdir(tmp_path)
    assert bench_artifacts.main(["--keep", "keepm", "--json", "out/ba.json"]) == 0
    assert seen[0].keep == tmp_path / "keepm" and seen[0].json == tmp_path / "out" / "ba.json"


def test_a_failed_load_probe_is_one_line_with_the_childs_exception(tmp_path, monkeypatch, capsys):
    """The probe runs in ROOT: a relative path there is another directory. Its failure was a
    CalledProcessError quoting the 40-line probe script, the child's stderr thrown away."""
    tiny_artifact.build(tmp_path / "out1")
    monkeypatch.chdir(tmp_path)
    env = dict(os.environ)
    probe = bench_artifacts._load_probe("edge-runtime x86-avx2 onnx-fp32", "edge",
                                        f"{tmp_path / 'out1'}::onnx-fp32", 1, env)
    assert probe["load_s"] > 0 and probe["rss_mb"] > 0  # the absolute path loads

    def bench(args, argv, work):  # a probe given a path relative to the caller
        bench_artifacts._load_probe("edge-runtime x86-avx2 onnx-fp32", "edge", "out1::onnx-fp32", 1, env)

    monkeypatch.setattr(bench_artifacts, "_bench", bench)
    assert bench_artifacts.main([]) == 1
    err = capsys.readouterr().err
    first = err.splitlines()[0]
    assert first.startswith("bench_artifacts: error: the load probe of 'edge-runtime x86-avx2 onnx-fp32' "
                            "failed (exit 1): edge_runtime._errors.ManifestError: out1 does not exist")
    assert "psutil" not in err and "CalledProcessError" not in err  # not the probe's source
    assert len(err.splitlines()) <= 1 + 4  # and a few of its stderr lines for context


def _reused(tmp_path: Path, source: dict) -> Path:
    keep = tmp_path / "keep"
    manifest = tiny_artifact.build(keep / "x86-avx2")
    manifest["source"] = source
    (keep / "x86-avx2" / "manifest.json").write_text(json.dumps(manifest))
    return keep


def test_reuse_refuses_another_models_directory_before_any_work(tmp_path, monkeypatch, capsys):
    """It said "reusing", exported and quantized MiniLM for 20 s, then failed on a numpy
    broadcast error between the tiny model's 32 dimensions and MiniLM's 384 (review 3, F3)."""
    builtin = ("sentence-transformers/all-MiniLM-L6-v2 (built-in)", "53aa51172d14" + "0" * 52)
    monkeypatch.setattr(bench_artifacts, "_builtin_source", lambda: builtin)
    monkeypatch.setattr(bench_artifacts, "_bench", lambda *a: pytest.fail("started on another model's artifacts"))
    keep = _reused(tmp_path, {"name": "tiny", "sha256": "c258bffc3c37" + "1" * 52})
    with pytest.raises(SystemExit) as exited:
        bench_artifacts.main(["--keep", str(keep), "--reuse"])
    assert exited.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert (f"--reuse: {keep / 'x86-avx2'} was converted from 'tiny' (weights sha256 c258bffc3c37), not from "
            "the model benchmarked here, 'sentence-transformers/all-MiniLM-L6-v2 (built-in)' (weights sha256 "
            "53aa51172d14); give another --keep") in error
    # the same weights under another name (a local copy of MiniLM) are the same model
    keep = _reused(tmp_path / "same", {"name": "all-MiniLM-L6-v2", "sha256": builtin[1]})
    monkeypatch.setattr(bench_artifacts, "_bench", lambda *a: 0)
    assert bench_artifacts.main(["--keep", str(keep), "--reuse"]) == 0
    # a manifest that records no weights hash is not taken on trust
    keep = _reused(tmp_path / "old", {"name": "tiny-by-hand"})
    with pytest.raises(SystemExit):
        bench_artifacts.main(["--keep", str(keep), "--reuse"])
    assert "converted from 'tiny-by-hand' (no weights hash)" in capsys.readouterr().err


def test_sigterm_is_handled_like_ctrl_c(tmp_path, monkeypatch, capsys, default_signals):
    """`kill`, timeout(1) or a cancelled CI job left /tmp/bench-onnx-* (87 MB) and the converter's
    /tmp/edge-convert.work-* behind, exit 143 without a word (review 3, F9)."""
    monkeypatch.setattr(bench_artifacts.tempfile, "tempdir", str(tmp_path))
    seen = []

    def terminated(args, argv, work):
        seen.append(work)
        (work / "plain_fp32.onnx").write_bytes(b"x" * 100)
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            pytest.fail("no SIGTERM handler: the signal would end the test run")
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler runs at the next bytecode
        pytest.fail("SIGTERM did not stop the run")

    monkeypatch.setattr(bench_artifacts, "_bench", terminated)
    assert bench_artifacts.main(["--keep", str(tmp_path / "kept")]) == 143
    assert ("bench_artifacts: terminated, nothing measured was written; converted artifacts stay in "
            f"{tmp_path / 'kept'}") in capsys.readouterr().err
    assert seen and seen[0].parent == tmp_path and not seen[0].exists()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the default is back


def test_the_json_names_no_file_deleted_at_exit(tmp_path):
    """Stock exports live in the work directory, removed at exit: their paths were recorded even
    with --keep; kept artifacts are recorded relative to --keep."""
    work, keep = tmp_path / "bench-onnx-x", tmp_path / "keep"
    stock = {"kind": "ort", "path": work / "plain_fp32.onnx", "files": [work / "plain_fp32.onnx"], "p50_ms": 1.5}
    edge = {"kind": "edge", "path": f"{keep / 'x86-avx2'}::onnx-int8", "root": keep / "x86-avx2",
            "entry": {"name": "onnx-int8"}, "files": [keep / "x86-avx2" / "onnx-int8.onnx"],
            "p50_ms": float("nan")}
    assert bench_artifacts._recorded(stock, keep) == {"kind": "ort", "p50_ms": 1.5}
    assert bench_artifacts._recorded(edge, keep) == {"kind": "edge", "path": "x86-avx2::onnx-int8", "p50_ms": None}
    assert bench_artifacts._recorded(edge, None) == {"kind": "edge", "p50_ms": None}  # a temporary directory
    assert issubclass(ChildError, RuntimeError)
