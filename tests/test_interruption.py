"""SIGKILL at any point of a conversion leaves no directory that looks complete, and a re-run
succeeds (issue 10, "Interruption and concurrency"; converters/packaging/package.py says how)."""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

import edge_runtime
from converters import ConversionError, ConvertConfig, convert
from converters.packaging import package
from edge_runtime._errors import ManifestError

HOLD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from converters.packaging import package
    kind, where = sys.argv[1], Path(sys.argv[2])
    if kind == "stage":
        context = package.staging_dir(where, force=False)
    else:
        import tempfile
        tempfile.tempdir = str(where)
        context = package.work_dir()
    with context as path:
        (path / "half-written.onnx").write_bytes(b"x" * 1000)
        print(path, flush=True)
        time.sleep(600)
""")


def _hold(kind: str, where: Path) -> tuple[subprocess.Popen, Path]:
    """A process inside staging_dir / work_dir, paused with a file written: (process, its dir)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, kind, str(where)], stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline().strip()
    assert line, "the holding process died"
    return proc, Path(line)


def _kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)


def test_a_killed_runs_staging_dir_is_removed_a_live_ones_kept(tmp_path):
    out = tmp_path / "result"
    dead, dead_stage = _hold("stage", out)
    live, live_stage = _hold("stage", out)
    try:
        _kill(dead)
        assert dead_stage.exists() and dead_stage.name.startswith(".result.partial-")
        with pytest.raises(ManifestError, match="no manifest.json"):
            edge_runtime.load(dead_stage)
        with package.staging_dir(out, force=False) as stage:
            assert not dead_stage.exists(), "the killed run's staging directory is removed"
            assert live_stage.exists(), "a running conversion's staging directory is left alone"
            package.write_manifest(stage, {"schema_version": 0})
        assert json.loads((out / "manifest.json").read_text()) == {"schema_version": 0}
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["result", live_stage.name])
    finally:
        _kill(live)
    assert package.remove_leftovers(tmp_path, package.staging_prefix(out)) == [live_stage]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result"]


def test_a_killed_runs_work_dir_is_removed(tmp_path, monkeypatch):
    dead, dead_work = _hold("work", tmp_path)
    _kill(dead)
    unrelated = tmp_path / "edge-convert-abc123"  # an earlier version's (unlocked) work dir
    unrelated.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    with package.work_dir() as work:
        assert not dead_work.exists() and unrelated.exists()
        assert work.name.startswith(package.WORK_PREFIX)
    assert sorted(p.name for p in tmp_path.iterdir()) == [unrelated.name]


def test_an_output_that_appears_meanwhile_is_not_replaced(tmp_path):
    out = tmp_path / "result"
    appeared = r"result appeared while this conversion ran .*pass force=True"
    with pytest.raises(ConversionError, match=appeared), package.staging_dir(out, force=False) as stage:
        package.write_manifest(stage, {"run": "mine"})
        out.mkdir()
        (out / "manifest.json").write_text('{"run": "theirs"}')
    assert json.loads((out / "manifest.json").read_text()) == {"run": "theirs"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result"]


def test_a_mount_point_or_an_unwritable_parent_is_refused_before_any_work(tmp_path, monkeypatch):
    """The result is renamed into place from a hidden sibling: neither can work there, and the whole
    conversion ran before the rename said so (a traceback, the result lost)."""
    out = tmp_path / "volume"
    out.mkdir()
    real_ismount = os.path.ismount
    monkeypatch.setattr(os.path, "ismount", lambda path: Path(path) == out or real_ismount(path))
    with pytest.raises(ConversionError, match=r"volume is a mount point: .* e\.g\. .*volume/model"):
        package.check_output(out, force=True)
    monkeypatch.setattr(os.path, "ismount", real_ismount)
    # A parent the user cannot write (os.access, so that the test means the same under root).
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != tmp_path and real_access(path, mode))
    with pytest.raises(ConversionError, match=r"cannot replace .*volume: .* is not writable"):
        package.check_output(out, force=True)

def test_a_result_that_cannot_be_put_in_place_is_kept_beside_it(tmp_path, monkeypatch):
    out = tmp_path / "result"
    out.mkdir()
    package.write_manifest(out, {"schema_version": 0, "artifacts": [], "run": "earlier"})
    real_rename = os.rename

    def rename(source, target):
        if Path(target) == out and ".partial-" in Path(source).name and not Path(source).name.endswith(".old"):
            raise OSError(16, "Device or resource busy")
        real_rename(source, target)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(ConversionError, match=r"could not put the result at .*result \(Device or resource busy\); "
                                              r"it is kept in .*result\.edge-convert-"):
        with package.staging_dir(out, force=True) as stage:
            package.write_manifest(stage, {"run": "new"})
    kept = [p for p in tmp_path.iterdir() if p.name.startswith("result.edge-convert-")]
    assert len(kept) == 1 and json.loads((kept[0] / "manifest.json").read_text()) == {"run": "new"}
    assert json.loads((out / "manifest.json").read_text())["run"] == "earlier"  # put back
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["result", kept[0].name])


# --- real conversions killed with SIGKILL ---------------------------------------------------

CONVERT = textwrap.dedent("""
    import sys
    from pathlib import Path
    from converters import ConvertConfig, convert
    convert(ConvertConfig(model=Path(sys.argv[1]), target="x86-avx2", out=Path(sys.argv[2]), latency_runs=2),
            progress=lambda message: print(message, flush=True))
    print("DONE", flush=True)
""")


def _stages(out: Path) -> list[Path]:
    return sorted(out.parent.glob(package.staging_prefix(out) + "*"))


def _kill_conversion(model: Path, out: Path, env: dict, when, timeout: float = 900) -> list[str]:
    """Run a conversion in a subprocess and SIGKILL it as soon as when(lines, out) holds."""
    proc = subprocess.Popen([sys.executable, "-c", CONVERT, str(model), str(out)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    lines: list[str] = []
    arrived: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [arrived.put(line.rstrip("\n")) for line in proc.stdout], daemon=True).start()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            while not arrived.empty():
                lines.append(arrived.get())
            if when(lines, out):
                proc.send_signal(signal.SIGKILL)
                proc.wait(timeout=60)
                return lines
            assert proc.poll() is None, f"the conversion ended before the kill point: {lines[-3:]}"
            time.sleep(0.02)
        raise AssertionError(f"kill point never reached; last progress: {lines[-3:]}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _after_first_line(lines, out):
    return len(lines) >= 1


def _first_file_in_stage(lines, out):
    return any(any(stage.iterdir()) for stage in _stages(out))


def _second_artifact_packaged(lines, out):
    return any((stage / "golden" / "onnx-int8.npz").exists() for stage in _stages(out))


def _manifest_written(lines, out):
    return any((stage / "manifest.json").exists() for stage in _stages(out)) or out.exists()


@pytest.mark.slow  # three killed conversions of a tiny model and a complete one
def test_sigkill_leaves_nothing_that_looks_complete_and_a_rerun_succeeds(tiny_model_factory, tmp_path, monkeypatch):
    model = tiny_model_factory("bert", "feature-extraction")
    out = tmp_path / "results" / "tiny"
    temp = tmp_path / "tmp"
    temp.mkdir()
    env = {**os.environ, "TMPDIR": str(temp), "HF_HUB_OFFLINE": "1"}
    for when in (_after_first_line, _first_file_in_stage, _second_artifact_packaged):
        _kill_conversion(model, out, env, when)
        assert not out.exists(), f"killed ({when.__name__}): {out} must not exist"
        for stage in _stages(out):
            # A staging directory gets its manifest last, once every file it lists is written;
            # killed before that, nothing can mistake it for an artifact directory.
            assert not (stage / "manifest.json").exists(), f"killed ({when.__name__}) before the manifest"
            with pytest.raises(ManifestError, match="no manifest.json: not an edge-convert artifact directory"):
                edge_runtime.load(stage)
        if when is not _after_first_line:
            assert _stages(out), "the kill was meant to land while the staging directory was written"

    # The killed runs' work directories (locked ones, package.work_dir) are in the temp dir.
    killed_work = sorted(temp.glob(package.WORK_PREFIX + "*"))
    assert killed_work, "killed runs leave their work directories in TMPDIR: the re-run must remove them"

    # A fourth run, killed once the staging directory has its manifest (between that write and the
    # rename, or just after the rename): whatever carries a manifest is complete and loads, checks
    # included. It is a re-run too: it removes the three runs' leftovers, as the last one checks.
    _kill_conversion(model, out, env, _manifest_written)
    for complete in [out] * out.exists() + [s for s in _stages(out) if (s / "manifest.json").exists()]:
        edge_runtime.load(complete, artifact="onnx-fp32")  # verify=True: hashes and golden samples
    shutil.rmtree(out, ignore_errors=True)  # a finished result: the re-run below starts without one

    # The re-run needs no force and removes what the killed runs left next to the output and in
    # the temp dir.
    monkeypatch.setattr("tempfile.tempdir", str(temp))
    result = convert(ConvertConfig(model=model, target="x86-avx2", out=out, latency_runs=2))
    assert not list(temp.glob(package.WORK_PREFIX + "*"))
    # (the tiny random model may miss the INT4 floor: refused and recorded, as for any model)
    built = [a.name for a in result.artifacts] + [r["name"] for r in result.refused]
    assert sorted(built) == ["onnx-fp32", "onnx-int4", "onnx-int8"] and "onnx-int8" in built[: len(result.artifacts)]
    assert sorted(p.name for p in out.parent.iterdir()) == ["tiny"]
    loaded = edge_runtime.load(out, artifact="onnx-int8")  # hashes and golden sample verified
    assert loaded.embed(["a sentence after three interrupted conversions"]).shape[0] == 1
