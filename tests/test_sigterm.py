"""SIGTERM is handled like Ctrl-C by edge-convert and edge-bench (edge_runtime/_sigterm.py): the
temporary directories go, nothing half-made is published, and the exit status is 143."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time

import pytest

from edge_runtime import _sigterm, cli_bench
from edge_runtime._sigterm import TERMINATED_EXIT, Terminated, sigterm_as_ctrl_c


@pytest.fixture(autouse=True)
def default_sigterm(default_signals):
    """Each test starts from SIGTERM's and SIGINT's defaults (conftest.py's default_signals)."""


def test_sigterm_raises_terminated_inside_and_the_default_comes_back():
    with pytest.raises(Terminated), sigterm_as_ctrl_c():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler runs at the next bytecode: never reached
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    assert issubclass(Terminated, KeyboardInterrupt)  # every Ctrl-C path handles it


def test_the_ctrl_c_exit_status_becomes_143_only_after_a_sigterm():
    with pytest.raises(SystemExit) as exited, sigterm_as_ctrl_c():
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        except KeyboardInterrupt:
            sys.exit(130)  # what the commands do after Ctrl-C
    assert exited.value.code == TERMINATED_EXIT == 143
    with pytest.raises(SystemExit) as exited, sigterm_as_ctrl_c():
        sys.exit(130)  # a real Ctrl-C: its own status
    assert exited.value.code == 130


def test_an_installed_handler_is_left_alone():
    seen = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
    try:
        with sigterm_as_ctrl_c():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)
        assert seen == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_edge_bench_stops_with_143_and_writes_nothing(monkeypatch, tmp_path, capsys):
    def measuring(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)

    monkeypatch.setattr(cli_bench, "run_bench", measuring)
    out = tmp_path / "bench.json"
    assert cli_bench.main([str(tmp_path), "--json", str(out)]) == 143
    assert "edge-bench: interrupted; no result written" in capsys.readouterr().err and not out.exists()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    assert _sigterm.INTERRUPTED_EXIT == 130


@pytest.mark.slow  # a real (tiny) conversion, stopped part way
def test_edge_convert_stopped_with_sigterm_removes_its_work_and_publishes_nothing(tiny_model_factory, tmp_path):
    model = tiny_model_factory("bert", "feature-extraction")
    out, temp = tmp_path / "out", tmp_path / "tmp"
    temp.mkdir()
    env = {**os.environ, "TMPDIR": str(temp)}
    command = [sys.executable, "-c", "from converters.cli import main; main()", str(model), "--target", "x86-avx2",
               "--out", str(out)]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stderr], daemon=True).start()
    seen: list[str] = []
    try:
        deadline = time.monotonic() + 600
        while not any("[onnx-int8] building" in line for line in seen):
            assert time.monotonic() < deadline and proc.poll() is None, f"never reached the INT8 build: {seen[-3:]}"
            try:
                seen.append(lines.get(timeout=1))
            except queue.Empty:
                pass
        assert list(temp.glob("edge-convert.work-*")), "the work directory exists while converting"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 143
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    time.sleep(0.5)  # the reader thread drains the last lines
    while not lines.empty():
        seen.append(lines.get())
    assert any(f"interrupted: nothing was written to {out}" in line for line in seen), seen[-3:]
    assert not list(temp.glob("edge-convert.work-*")) and not out.exists()
    assert not list(tmp_path.glob(".out.partial-*"))


class _Finalizer:
    """Sends `signum` to this process from its __del__ and waits there for the handler: the
    exception the handler raises is one Python drops ("Exception ignored in ...")."""

    def __init__(self, signum: int):
        self.signum = signum

    def __del__(self):
        os.kill(os.getpid(), self.signum)
        time.sleep(0.2)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize(("signum", "raised"), [(signal.SIGINT, KeyboardInterrupt), (signal.SIGTERM, Terminated)])
def test_a_stop_signal_python_dropped_in_a_finalizer_is_raised_again_at_the_next_safe_point(signum, raised):
    """A Ctrl-C landing in a library's __del__ (regex's, during a garbage collection) was lost:
    the conversion ran on, published and exited 0."""
    from edge_runtime._sigterm import check_interrupted, interrupt_handled

    with pytest.raises(raised), sigterm_as_ctrl_c():
        _Finalizer(signum)  # freed at once: the signal arrives inside __del__ and is dropped
        check_interrupted()
    check_interrupted()  # outside the block: nothing pending
    with sigterm_as_ctrl_c():
        _Finalizer(signal.SIGINT)
        interrupt_handled()  # e.g. the pruning stage packaging what it had built
        check_interrupted()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_dropped_ctrl_c_publishes_nothing(tmp_path):
    from converters.packaging import package

    out = tmp_path / "result"
    with pytest.raises(KeyboardInterrupt), sigterm_as_ctrl_c():
        with package.staging_dir(out, force=False) as stage:
            package.write_manifest(stage, {"schema_version": 0, "artifacts": []})
            _Finalizer(signal.SIGINT)
    assert not out.exists() and not list(tmp_path.iterdir())


LOST_CTRL_C = """
import gc, os, signal, sys, time
from converters.cli import main

def lose_one_ctrl_c(phase, info):  # once the command's handlers are in: a Ctrl-C in a collection
    if phase == "start" and signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        gc.callbacks.remove(lose_one_ctrl_c)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.2)

gc.callbacks.append(lose_one_ctrl_c)
sys.argv[0] = "edge-convert"
main()
"""


def test_edge_convert_stops_on_a_ctrl_c_python_dropped(tiny_model_factory, tmp_path):
    model = tiny_model_factory("bert", "feature-extraction")
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-c", LOST_CTRL_C, str(model), "--target", "x86-avx2", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 130, done.stderr[-2000:]
    assert f"interrupted: nothing was written to {out}" in done.stderr and not out.exists()
