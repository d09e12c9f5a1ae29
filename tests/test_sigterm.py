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
def default_sigterm():
    """Each test starts from SIGTERM's default action (what a command run from a shell sees)."""
    previous = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    yield
    signal.signal(signal.SIGTERM, previous)


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
