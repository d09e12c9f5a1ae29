"""The measurement scripts that start child processes (tools/bench_cold_start.py,
bench_onnx_load.py, bench_tflite_load.py, measure_load_rss.py; benchmarks/bench_avx2_emulated.py,
bench_tflite_smoothing.py) and tools/bench_signing.py, as a user meets them (review 3, F5 and F9):
a path typed relative to the user's directory names that directory in the child too, although
the children run in the repository; a child that fails is one line with its exception, never
the script it ran; argument mistakes are one line, not a traceback. The children are faked
(subprocess.run), except bench_signing's in-process loads of a hand-built artifact."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import tiny_artifact

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(ROOT / "benchmarks"))
import bench_avx2_emulated  # noqa: E402
import bench_cold_start  # noqa: E402
import bench_onnx_load  # noqa: E402
import bench_signing  # noqa: E402
import bench_tflite_load  # noqa: E402
import bench_tflite_smoothing  # noqa: E402
import measure_load_rss  # noqa: E402
from _bench_child import ChildError, user_path  # noqa: E402

# What a child that cannot find its artifact directory prints (Python 3.11).
TRACEBACK = """Traceback (most recent call last):
  File "<string>", line 7, in <module>
  File "/work/main/edge_runtime/_load.py", line 96, in load
    manifest = read_manifest(root)
               ^^^^^^^^^^^^^^^^^^^
  File "/work/main/edge_runtime/_manifest.py", line 120, in read_manifest
    raise ManifestError(f"{root} does not exist (expected an edge-convert output directory)")
edge_runtime._errors.ManifestError: out1 does not exist (expected an edge-convert output directory)
"""
CAUSE = (
    "edge_runtime._errors.ManifestError: out1 does not exist (expected an edge-convert output "
    "directory)"
)


class FakeRun:
    """subprocess.run that records each command and its cwd and fails like a child that could not
    find its artifact directory."""

    def __init__(self, returncode: int = 1, stderr: str = TRACEBACK):
        self.returncode, self.stderr = returncode, stderr
        self.calls: list[tuple[list[str], dict]] = []

    def __call__(self, command, **kwargs):
        self.calls.append((list(command), kwargs))
        return subprocess.CompletedProcess(command, self.returncode, "", self.stderr)

    def seen_by_child(self, index: int, call: int = 0) -> Path:
        """What argument `index` of a child's command names from the child's working directory."""
        command, kwargs = self.calls[call]
        return Path(kwargs.get("cwd") or os.getcwd()) / command[index]


@pytest.fixture
def fake_run(monkeypatch):
    fake = FakeRun()
    monkeypatch.setattr(subprocess, "run", fake)
    return fake


@pytest.fixture
def out1(tmp_path, monkeypatch):
    """A loadable artifact directory `out1` in the current directory (tmp_path)."""
    tiny_artifact.build(tmp_path / "out1")
    monkeypatch.chdir(tmp_path)
    return tmp_path / "out1"


def _child_error(err: str, prog: str, what: str) -> list[str]:
    """The report of a failed child: one summary line quoting its exception, a few stderr lines
    under it, never the child's source or a traceback of the script itself."""
    lines = err.strip().splitlines()
    assert lines[0] == f"{prog}: error: {what}: {CAUSE}", lines[0]
    assert all(line.startswith("  | ") for line in lines[1:]) and len(lines) <= 5, lines
    assert "^^^" not in err and "CalledProcessError" not in err and "import json" not in err
    return lines


# -- the shared helper ---------------------------------------------------------------------------
def test_user_path_is_absolute_against_the_callers_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert user_path("out1") == tmp_path / "out1"
    assert user_path("/srv/out1") == Path("/srv/out1")
    assert user_path("~/out1") == Path.home() / "out1"


def test_a_child_error_quotes_the_exception_and_the_lines_before_it():
    done = subprocess.CompletedProcess([], 1, "", TRACEBACK)
    lines = str(ChildError.of("the load of out1", done)).splitlines()
    assert lines[0] == f"the load of out1 failed (exit 1): {CAUSE}"
    assert lines[1:] == [  # the traceback's last frames; no ^^^ markers
        '  |   File "/work/main/edge_runtime/_load.py", line 96, in load',
        "  |     manifest = read_manifest(root)",
        '  |   File "/work/main/edge_runtime/_manifest.py", line 120, in read_manifest',
        '  |     raise ManifestError(f"{root} does not exist (expected an edge-convert output '
        'directory)")',
    ]
    killed = subprocess.CompletedProcess([], -9, "", "")
    assert str(ChildError.of("probe", killed)) == (
        "probe failed (killed by SIGKILL): nothing on stderr"
    )
    silent = subprocess.CompletedProcess([], 0, "", "")
    assert str(ChildError.of("probe", silent, "no RESULT line")) == (
        "probe failed (exit 0): no RESULT line"
    )


# -- F5: relative paths, and failed children in one line -----------------------------------------
def test_bench_cold_start_gives_its_children_the_callers_directory(out1, fake_run, capsys):
    """`bench_cold_start.py out1` said "out1 does not exist" although it did (review 3, F5)."""
    assert bench_cold_start.main(["out1", "--artifact", "onnx-fp32", "--rounds", "1"]) == 1
    assert fake_run.calls[0][1]["cwd"] == bench_cold_start.ROOT  # the children still run there
    assert fake_run.seen_by_child(4) == out1  # the artifact directory
    assert fake_run.seen_by_child(6) == out1 / "onnx-fp32.onnx"  # the model file
    _child_error(capsys.readouterr().err, "bench_cold_start", "edge-first failed (exit 1)")


def test_bench_onnx_load_gives_its_children_the_callers_directory(out1, fake_run, capsys):
    assert bench_onnx_load.main(["out1", "--artifact", "onnx-fp32", "--rounds", "1"]) == 1
    assert fake_run.seen_by_child(3) == out1
    _child_error(capsys.readouterr().err, "bench_onnx_load",
                 f"the no-cache load of {out1}::onnx-fp32 failed (exit 1)")


def test_bench_tflite_smoothing_never_writes_into_the_repository(tmp_path, monkeypatch):
    """edge-convert runs with cwd=ROOT: a relative --out landed in the repository."""
    fake = FakeRun(returncode=3)
    monkeypatch.setattr(subprocess, "run", fake)
    monkeypatch.chdir(tmp_path)
    assert bench_tflite_smoothing.main(["--out", "rel", "--alphas", "none"]) == 3
    command, kwargs = fake.calls[0]
    assert command[command.index("--out") + 1] == str(tmp_path / "rel" / "rpi5-alpha-none")
    assert kwargs["cwd"] == bench_tflite_smoothing.ROOT


def _smoothing_run(int4_alpha):
    """A fake edge-convert that writes a manifest whose tflite-int4 was smoothed with `int4_alpha`."""

    def run(command, **kwargs):
        out = Path(command[command.index("--out") + 1])
        out.mkdir(parents=True)
        metrics = {"cosine_mean": 0.99, "cosine_min": 0.96}
        artifacts = [{"name": "tflite-int8", "format": "tflite", "precision": "int8", "metrics": metrics,
                      "quantization": {"recipe": "gptq_wi8_afp32", "smoothing": {"alpha": 0.5}}},
                     {"name": "tflite-int4", "format": "tflite", "precision": "int4", "metrics": metrics,
                      "quantization": {"recipe": "gptq_wi4b32_afp32",
                                       "smoothing": None if int4_alpha is None else {"alpha": int4_alpha}}}]
        (out / "manifest.json").write_text(json.dumps({"artifacts": artifacts}))
        return subprocess.CompletedProcess(command, 0, "", "")

    return run


def test_bench_tflite_smoothing_fails_when_its_setting_did_not_reach_the_recipe(tmp_path, monkeypatch, capsys):
    """A replaced setting that no recipe reads (it patched a module that no longer builds the
    INT4 config) must not pass for a measurement of that setting."""
    monkeypatch.setattr(subprocess, "run", _smoothing_run(int4_alpha=None))
    assert bench_tflite_smoothing.main(["--out", str(tmp_path / "a"), "--alphas", "0.5", "--recipes", "int4"]) == 1
    assert "tflite-int4 was smoothed with alpha None, not 0.5" in capsys.readouterr().err
    monkeypatch.setattr(subprocess, "run", _smoothing_run(int4_alpha=0.5))
    assert bench_tflite_smoothing.main(["--out", str(tmp_path / "b"), "--alphas", "0.5", "--recipes", "int4"]) == 0
    assert "| 0.5 | tflite-int4 | 0.9900 | 0.9600 |" in capsys.readouterr().out


def test_bench_tflite_smoothing_patches_what_the_pipeline_builds_its_int4_config_with():
    """The child's patch targets converters._artifacts_tflite.GptqInt4Config, which
    _int4_config reads at call time."""
    import functools
    from types import SimpleNamespace

    from converters import _artifacts_tflite

    assert "_artifacts_tflite.GptqInt4Config = functools.partial(" in bench_tflite_smoothing._CHILD
    original = _artifacts_tflite.GptqInt4Config
    step = SimpleNamespace(profile=SimpleNamespace(tflite=SimpleNamespace(int4_size_budget=0.16)))
    try:
        _artifacts_tflite.GptqInt4Config = functools.partial(original, smooth_alpha=0.3)
        assert _artifacts_tflite._int4_config(step).smooth_alpha == 0.3
    finally:
        _artifacts_tflite.GptqInt4Config = original


def test_bench_avx2_emulated_gives_its_children_the_callers_directory(
    tmp_path, monkeypatch, fake_run, capsys
):
    for name in ("a2", "v"):
        (tmp_path / name).mkdir()
        quantization = {"pair_sum_limit": None, "reduce_range": False, "promoted": {"weights": []}}
        (tmp_path / name / "manifest.json").write_text(
            json.dumps({"artifacts": [{"name": "onnx-int8", "quantization": quantization}]}))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(bench_avx2_emulated.shutil, "which", lambda name: "/usr/bin/qemu-x86_64")
    monkeypatch.setattr(bench_avx2_emulated, "_texts", lambda: ["a text"])
    monkeypatch.setattr(bench_avx2_emulated, "_reference", lambda texts: np.ones((1, 4)))
    monkeypatch.setattr(bench_avx2_emulated, "_code_stats", lambda root, artifact: {})
    assert bench_avx2_emulated.main(["--avx2", "a2", "--vnni", "v"]) == 1
    assert fake_run.seen_by_child(3) == tmp_path / "a2"  # native: python -c SCRIPT DIR ...
    _child_error(capsys.readouterr().err, "bench_avx2_emulated",
                 f"the native run of {tmp_path / 'a2'}::onnx-int8 failed (exit 1)")


def test_measure_load_rss_reports_a_failed_load_in_one_line(out1, fake_run, capsys):
    """Its probe ran with check=True: a CalledProcessError quoting the probe's source."""
    assert measure_load_rss.main(["out1"]) == 1
    assert fake_run.seen_by_child(3) == out1
    _child_error(
        capsys.readouterr().err, "measure_load_rss", f"loading {out1}::onnx-fp32 failed (exit 1)"
    )


def test_bench_tflite_load_reports_a_failed_load_in_one_line(
    tmp_path, monkeypatch, fake_run, capsys
):
    (tmp_path / "m.tflite").write_bytes(b"not a flatbuffer")
    monkeypatch.chdir(tmp_path)
    assert bench_tflite_load.main(["m.tflite", "--rounds", "1"]) == 1
    assert fake_run.seen_by_child(3) == tmp_path / "m.tflite"
    _child_error(capsys.readouterr().err, "bench_tflite_load",
                 f"the interpreter load of {tmp_path / 'm.tflite'} failed (exit 1)")


@pytest.mark.parametrize("script", [bench_cold_start, bench_onnx_load])
def test_a_directory_without_a_manifest_is_one_line_before_any_child(
    script, tmp_path, fake_run, capsys
):
    with pytest.raises(SystemExit) as exited:
        script.main([str(tmp_path), "--artifact", "onnx-fp32"])
    assert exited.value.code == 2 and not fake_run.calls
    err = capsys.readouterr().err
    assert f"{tmp_path}: no manifest.json; give an edge-convert output directory" in err


# -- F9: bench_signing ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("argv", "message"),
    [
        # once: statistics.StatisticsError, FileNotFoundError (copytree), ManifestError tracebacks
        (["out1", "--rounds", "0"], "--rounds must be at least 1, got 0"),
        (["nonexist"], "nonexist does not exist (expected an edge-convert output directory)"),
        (["model"], "model has no manifest.json: not an edge-convert artifact directory"),
    ],
)
def test_bench_signing_mistakes_are_one_line(argv, message, out1, capsys):
    (out1.parent / "model").mkdir()
    (out1.parent / "model" / "config.json").write_text("{}")  # a Hugging Face model directory
    with pytest.raises(SystemExit) as exited:
        bench_signing.main(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert message in err.strip().splitlines()[-1] and "Traceback" not in err


def test_bench_signing_measures_the_current_directory(out1, monkeypatch, capsys):
    """`bench_signing.py .` copied the directory onto the temporary directory itself."""
    monkeypatch.chdir(out1)
    assert bench_signing.main([".", "--rounds", "1"]) == 0
    assert "load+trusted / load" in capsys.readouterr().out


def test_bench_ranking_subset_patches_every_module_that_ranks():
    """Each builder reads its own imported copy of RANKING_TEXTS: the bench must reach the
    TFLite builders too (they moved to converters/_artifacts_tflite.py)."""
    import bench_ranking_subset

    names = {module.__name__ for module in bench_ranking_subset.MODULES}
    assert {"converters._artifacts", "converters._artifacts_tflite", "converters.onnx.mixed_precision"} <= names
    for module in sys.modules.values():
        if getattr(module, "__name__", "").startswith("converters.") and hasattr(module, "RANKING_TEXTS"):
            assert module.__name__ in names


def test_bench_cold_start_times_every_phase_where_the_loader_calls_it_today():
    """Each phase the child wraps resolves in this edge_runtime: a function that moved (the loader
    went to _load.py) must move in the tool too, or its phase silently reads '-'."""
    import ast
    import importlib
    import re

    source = (ROOT / "tools" / "bench_cold_start.py").read_text()
    calls = re.findall(r'^\s+timed\(("\w+"(?:, \("[\w.]+", "[\w.]+"\))+)\)$', source, re.M)
    assert len(calls) == 8  # verify, golden, session, entry check, tune, tuning lookup, detect, manifest
    for call in calls:
        phase, *places = ast.literal_eval(f"({call})")
        module_name, attr = places[0]  # today's place is the first
        owner = importlib.import_module(module_name)
        for part in attr.split("."):
            owner = getattr(owner, part)
        assert callable(owner), (phase, module_name, attr)
