"""TFLite backend: what the weight cache does when something other than the CPU goes wrong.

A child process builds the XNNPACK weight cache (backends/_tflite_cache.py); only a fault that is
about the CPU marks it as unable to run CompiledModel (backends/_tflite_crash.py). A stand-in
model file suffices wherever the child is replaced: nothing else reads it. Unwritable directories
are simulated (os.open and Path.unlink refuse), since root ignores file modes.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edge_runtime._errors import BackendUnavailableError
from edge_runtime.backends import _cache, _tflite_cache, _tflite_engines, _tflite_log, tflite

ROOT = Path(__file__).resolve().parents[1]
SHA = "ab" * 32

needs_cache_api = pytest.mark.skipif(
    not tflite.weight_cache_supported(),
    reason="installed ai-edge-litert has no CompiledModel xnnpack_weight_cache_path",
)


def _litert_version() -> str:
    import ai_edge_litert

    return ai_edge_litert.__version__


@pytest.fixture
def stand_in(tmp_path) -> tuple[Path, Path]:
    model = tmp_path / "m.tflite"
    model.write_bytes(b"a stand-in: the child process that would read it is replaced")
    return model, tmp_path / "xnnpack"


def _child(monkeypatch, stderr: str = "", signal_name: str | None = None, error: str = "") -> list:
    """Replace the cache build's child process: it writes `stderr`, then kills itself with
    `signal_name`, or reports `error` (exit status 1). Returns the list of builds started."""
    code = f"import json, os, signal, sys; sys.stderr.write({stderr!r}); sys.stderr.flush(); "
    if signal_name:
        code += f"os.kill(os.getpid(), signal.{signal_name})"
    else:
        code += f"print(json.dumps({{'ok': False, 'error': {error!r}}})); sys.exit(1)"
    started = []

    def command(model_path, cache_path, threads):
        started.append(cache_path)
        return [sys.executable, "-c", code]

    monkeypatch.setattr(_tflite_cache, "_child_command", command)
    return started


def _no_child(monkeypatch) -> None:
    def command(*args):
        raise AssertionError("no child process may be started here")

    monkeypatch.setattr(_tflite_cache, "_child_command", command)


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


# -- defect 1: only the CPU's own faults mark the CPU -------------------------------------------

WRITE_FAILED = (
    "ERROR: [weight_cache.cc:118] XNNPack weight cache: cannot append buffer to cache file\n"
    "ERROR: [weight_cache.cc:402] Inserting data in the cache failed.\n"
)
CHATTER = "INFO: [accelerator_registry.cc:54] XNNPACK CPU accelerator registered.\n"


@needs_cache_api
@pytest.mark.parametrize(
    "signal_name, stderr, words",
    [
        ("SIGABRT", CHATTER + WRITE_FAILED, "Inserting data in the cache failed"),  # a full disk
        ("SIGSEGV", CHATTER, ""),  # a damaged model file (measured: a truncated .tflite)
        ("SIGBUS", CHATTER, ""),  # a mapped file cut short
    ],
)
def test_a_fault_a_full_disk_or_a_damaged_model_causes_is_a_failed_build_tried_again(
    stand_in, monkeypatch, caplog, signal_name, stderr, words
):
    model, cache = stand_in
    started = _child(monkeypatch, stderr, signal_name)
    with caplog.at_level(logging.WARNING, logger="edge_runtime"):
        opened = _tflite_cache.open_with_cache(model, 1, cache, None)
    assert opened.engine is None and opened.weight_cache_state == "failed"
    assert not tflite.crash_marker(cache, _litert_version()).exists()
    assert f"killed by {signal_name}" in opened.weight_cache_note and words in opened.weight_cache_note
    assert "registered" not in opened.weight_cache_note, "INFO chatter is not the runtime's last words"
    (warning,) = _warnings(caplog)
    assert f"killed by {signal_name}" in warning and words in warning and "next load" in warning
    again = _tflite_cache.open_with_cache(model, 1, cache, None)
    assert again.weight_cache_state == "failed" and len(started) == 2, "retried at the next load"
    assert list(cache.iterdir()) == []


@needs_cache_api
def test_an_illegal_instruction_marks_the_cpu_and_every_later_load_warns_how_to_clear_it(
    stand_in, monkeypatch, caplog
):
    model, cache = stand_in
    _child(monkeypatch, "FATAL ERROR: This binary was compiled with lse enabled\n", "SIGILL")
    with caplog.at_level(logging.WARNING, logger="edge_runtime"):
        opened = _tflite_cache.open_with_cache(model, 1, cache, SHA)
    marker = tflite.crash_marker(cache, _litert_version())
    assert opened.weight_cache_state == "unsupported" and marker.exists()
    assert "killed by SIGILL" in opened.weight_cache_note
    assert len(_warnings(caplog)) == 1
    _no_child(monkeypatch)
    for _ in range(2):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="edge_runtime"):
            again = _tflite_cache.open_with_cache(model, 1, cache, SHA)
        assert again.weight_cache_state == "unsupported"
        (warning,) = _warnings(caplog)  # WARNING, once per load: docs/arm64.md promises it
        assert str(marker) in warning and "delete" in warning and "killed by SIGILL" in warning


@needs_cache_api
def test_a_marker_an_older_version_wrote_for_a_fault_not_the_cpus_is_dropped(
    stand_in, monkeypatch, caplog
):
    """Markers written for SIGABRT (a full disk) kept the cache off for good: no longer honoured."""
    model, cache = stand_in
    cache.mkdir(mode=0o700)
    marker = tflite.crash_marker(cache, _litert_version())
    marker.write_text(json.dumps({"model": "x.tflite", "detail": "killed by SIGABRT: " + WRITE_FAILED}))
    started = _child(monkeypatch, error="RuntimeError: stand-in model")
    with caplog.at_level(logging.WARNING, logger="edge_runtime"):
        opened = _tflite_cache.open_with_cache(model, 1, cache, SHA)
    assert len(started) == 1 and opened.weight_cache_state == "failed"
    assert not marker.exists()
    assert any(str(marker) in w and "SIGABRT" in w for w in _warnings(caplog))


# -- defect 2: a broken ai-edge-litert is reported, not replaced ------------------------------


@pytest.fixture
def shim(tmp_path, monkeypatch):
    """A directory put first on sys.path, for stand-in runtime packages; the real ones are
    restored after the test and the stand-ins forgotten."""
    names = ("ai_edge_litert", "tflite_runtime")

    def ours(name):
        return name.split(".")[0] in names

    saved = {name: module for name, module in sys.modules.items() if ours(name)}
    for name in saved:
        del sys.modules[name]
    directory = tmp_path / "shim"
    directory.mkdir()
    monkeypatch.syspath_prepend(str(directory))
    yield directory
    for name in [name for name in sys.modules if ours(name)]:
        del sys.modules[name]
    sys.modules.update(saved)


BROKEN = "raise ImportError('libLiteRt.so: cannot open shared object file: No such file or directory')\n"


def _fake_tflite_runtime(directory: Path) -> None:
    (directory / "tflite_runtime").mkdir()
    (directory / "tflite_runtime" / "__init__.py").write_text("__version__ = '2.14.0'\n")
    (directory / "tflite_runtime" / "interpreter.py").write_text(
        "class Interpreter: pass\nclass OpResolverType: AUTO = 0\n"
    )


def test_an_ai_edge_litert_that_fails_to_import_is_reported_not_replaced_by_tflite_runtime(shim, tmp_path):
    (shim / "ai_edge_litert").mkdir()
    (shim / "ai_edge_litert" / "__init__.py").write_text(BROKEN)
    _fake_tflite_runtime(shim)
    assert tflite.available() and tflite.installed_package() == "ai-edge-litert"
    with pytest.raises(BackendUnavailableError) as raised:
        _tflite_engines._interpreter_api()
    message = str(raised.value)
    assert "ai-edge-litert is installed but cannot be imported" in message
    assert "libLiteRt.so: cannot open shared object file" in message
    assert "tflite-runtime" in message, "says why the other runtime is not used in its place"
    with pytest.raises(BackendUnavailableError, match="cannot be imported"):
        tflite.open_session(tmp_path / "m.tflite", threads=1)


def test_a_tflite_runtime_that_fails_to_import_is_reported_with_its_error(shim, monkeypatch):
    monkeypatch.setitem(sys.modules, "ai_edge_litert", None)  # not installed
    (shim / "tflite_runtime").mkdir()
    (shim / "tflite_runtime" / "__init__.py").write_text(BROKEN)
    with pytest.raises(BackendUnavailableError) as raised:
        _tflite_engines._interpreter_api()
    assert "tflite-runtime is installed but cannot be imported" in str(raised.value)
    assert "libLiteRt.so" in str(raised.value)


# -- defect 3: edge_runtime's own log records are never taken for the runtime's lines ----------


@pytest.mark.parametrize(
    "fmt", ["%(levelname)s: %(message)s", "%(levelname)s:%(name)s:%(message)s", "%(message)s"]
)
def test_log_records_made_during_the_capture_reach_the_applications_handler(capfd, fmt):
    handler = logging.StreamHandler(open(2, "w", closefd=False))  # noqa: SIM115 - fd 2 itself
    handler.setFormatter(logging.Formatter(fmt))
    logger = logging.getLogger("edge_runtime")
    logger.addHandler(handler)
    try:
        with _tflite_log._native_log_to_logger():
            logger.warning("XNNPACK weight cache unusable (stand-in); loading without it")
            logging.getLogger("edge_runtime.litert").warning("WARNING: a runtime line, already logged")
            os.write(2, b"INFO: [environment.cc:36] Creating LiteRT environment\n")
    finally:
        logger.removeHandler(handler)
        handler.stream.close()
    err = capfd.readouterr().err
    assert "XNNPACK weight cache unusable (stand-in); loading without it" in err
    assert "a runtime line, already logged" in err
    assert "Creating LiteRT environment" not in err


# -- defect 4: an unwritable cache directory --------------------------------------------------


def _refuse_writes(monkeypatch, directory: Path) -> None:
    """Files cannot be made or removed in `directory`, as in a read-only one (root ignores modes)."""
    real_open, real_unlink = os.open, Path.unlink

    def refusing_open(path, flags, *args, **kwargs):
        if Path(path).parent == directory and flags & os.O_CREAT:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, flags, *args, **kwargs)

    def refusing_unlink(self, missing_ok=False):
        if self.parent == directory:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(os, "open", refusing_open)
    monkeypatch.setattr(Path, "unlink", refusing_unlink)


@needs_cache_api
def test_an_unwritable_cache_directory_is_named_and_no_child_is_started(stand_in, monkeypatch, caplog):
    model, cache = stand_in
    cache.mkdir(mode=0o700)
    _refuse_writes(monkeypatch, cache)
    _no_child(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="edge_runtime"):
        opened = _tflite_cache.open_with_cache(model, 1, cache, SHA)
    assert opened.engine is None and opened.weight_cache_state == "failed"
    assert "Permission denied" in opened.weight_cache_note and str(cache) in opened.weight_cache_note
    (warning,) = _warnings(caplog)
    assert "Permission denied" in warning and str(cache) in warning and "device_cache=False" in warning


@needs_cache_api
def test_a_damaged_cache_that_cannot_be_deleted_is_not_rebuilt(stand_in, monkeypatch, caplog):
    model, cache = stand_in
    cache.mkdir(mode=0o700)
    final = _tflite_cache.weight_cache_file(cache, SHA, _litert_version())
    final.write_bytes(b"\x01" * 64)  # looks finished, but its record says otherwise
    _cache.write_json(final.with_name(final.name + ".verified.json"), {"sha256": "00" * 32, "stat": None})
    _refuse_writes(monkeypatch, cache)
    _no_child(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="edge_runtime"):
        opened = _tflite_cache.open_with_cache(model, 1, cache, SHA)
    assert opened.weight_cache_state == "failed" and final.exists()
    assert "Permission denied" in opened.weight_cache_note
    text = "\n".join(_warnings(caplog))
    assert "rebuilding" not in text and "Permission denied" in text and str(final) in text


# -- defect 5: a cache file XNNPACK rewrites while this process maps it -----------------------


@needs_cache_api
def test_a_cache_rewritten_in_place_while_loading_is_not_reported_reused(stand_in, monkeypatch, caplog):
    """XNNPACK rebuilds a cache whose header it rejects at its final name, in this process
    (measured: a flipped version word with a matching record)."""
    model, cache = stand_in
    cache.mkdir(mode=0o700)
    final = _tflite_cache.weight_cache_file(cache, SHA, _litert_version())
    final.write_bytes(b"\x01" * 64)
    record = final.with_name(final.name + ".verified.json")
    digest = hashlib.sha256(final.read_bytes()).hexdigest()
    _cache.write_json(record, {"sha256": digest, "stat": _cache.signature(final)})

    def rewriting_engine(api, model_path, threads, cache_path):
        with open(cache_path, "r+b") as handle:
            handle.write(b"\x02" * 64)
        return object()

    monkeypatch.setattr(_tflite_cache, "_CompiledEngine", rewriting_engine)
    _no_child(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="edge_runtime"):
        opened = _tflite_cache.open_with_cache(model, 1, cache, SHA)
    assert opened.weight_cache_state == "failed" and opened.engine is None
    assert "rewrote" in opened.weight_cache_note
    assert not final.exists() and not record.exists(), "the next load builds it afresh, in a child"
    assert any(str(final) in w for w in _warnings(caplog))


# -- defect 6: the application's own output at exit -------------------------------------------

_EXIT_SCRIPT = """
import atexit, ctypes, os, subprocess, sys
sys.path.insert(0, {root!r})

def report():  # registered before edge_runtime is imported: runs after edge_runtime's handler
    sys.stderr.write("app: sys.stderr at exit\\n"); sys.stderr.flush()
    os.write(2, b"app: fd 2 at exit\\n")
    subprocess.run([sys.executable, "-c", "import os; os.write(2, b'app: a child at exit\\\\n')"])

atexit.register(report)
import numpy as np
from edge_runtime.backends import tflite

libc = ctypes.CDLL(None)
libc.strdup.restype = ctypes.c_void_p
libc.__cxa_atexit.argtypes = [ctypes.c_void_p] * 3


def make_environment(**feeds):
    # As LiteRT at the first CompiledModel tensor write: a process-wide object whose C++
    # destructor, run by exit() after Python has finalized, prints on fd 2.
    line = libc.strdup(b"INFO: [accelerator_registry.cc:43] DestroyAccelerator")
    libc.__cxa_atexit(ctypes.cast(libc.perror, ctypes.c_void_p), line, None)
    return {{}}


tflite._start_process_environment(
    tflite._Bucket("seq8", 8, make_environment, {{"input_ids": np.dtype(np.int32)}}, {{}})
)
print("ran")
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="libc's __cxa_atexit stands in for LiteRT")
def test_the_applications_own_stderr_survives_exit_and_the_runtime_teardown_does_not_show(tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", _EXIT_SCRIPT.format(root=str(ROOT))],
        capture_output=True, text=True, check=False, timeout=120,
    )
    assert done.returncode == 0 and done.stdout == "ran\n", done.stderr
    for line in ("app: sys.stderr at exit", "app: fd 2 at exit", "app: a child at exit"):
        assert line in done.stderr, done.stderr
    assert "DestroyAccelerator" not in done.stderr


# -- a stop signal while the child builds (a review, session 51) ----------------------------------


@needs_cache_api
def test_sigterm_during_a_build_stops_the_child_and_leaves_no_temporary(stand_in, monkeypatch, tmp_path):
    """edge-run had no SIGTERM handler: `kill` ended it at once and left the cache-building child
    running with its temporary file. Under sigterm_as_ctrl_c (edge-run, edge-bench, edge-convert)
    the signal raises Terminated in the parent; subprocess.run kills the child on the way out."""
    import signal
    import threading
    import time

    from edge_runtime._sigterm import Terminated, sigterm_as_ctrl_c

    model, cache = stand_in
    pid_file = tmp_path / "child.pid"
    code = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    monkeypatch.setattr(_tflite_cache, "_child_command", lambda *args: [sys.executable, "-c", code])

    def stop_when_started():
        for _ in range(400):
            if pid_file.exists() and pid_file.read_text():
                os.kill(os.getpid(), signal.SIGTERM)
                return
            time.sleep(0.025)

    threading.Thread(target=stop_when_started, daemon=True).start()
    with pytest.raises(Terminated), sigterm_as_ctrl_c():
        _tflite_cache.open_with_cache(model, 1, cache, SHA)
    child = int(pid_file.read_text())
    for _ in range(100):  # reaped by subprocess.run before it re-raised; allow the kernel a moment
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        raise AssertionError(f"the child {child} still runs")
    assert not [p for p in cache.iterdir() if p.name.endswith(".tmp")], list(cache.iterdir())


def test_edge_run_exits_143_after_sigterm(monkeypatch, capsys):
    """edge-run handles SIGTERM as Ctrl-C (its help promised 143; the process died of the signal)."""
    import signal
    import time

    from edge_runtime import cli

    def slow_main(argv):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises here
        return 0

    monkeypatch.setattr(cli, "_main", slow_main)
    assert cli.main(["dir", "text"]) == 143
    assert capsys.readouterr().err == "edge-run: interrupted\n"
    assert signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None), "the handler is not left behind"


class _Signatures:
    """An engine whose file has the given signatures ({key: {input name: shape}})."""

    def __init__(self, signatures: dict[str, dict[str, tuple[int, ...]]]):
        self.signatures = signatures

    def signature_keys(self) -> list[str]:
        return list(self.signatures)

    def signature(self, key: str):
        import numpy as np

        inputs = {name: (shape, np.int64) for name, shape in self.signatures[key].items()}
        return inputs, {"last_hidden_state": ((1, 8, 4), np.float32)}, None


@pytest.mark.parametrize("signatures, message", [
    ({}, r"m\.tflite has no signatures"),
    ({"s": {"input_ids": (2, 8)}}, r"m\.tflite is not a bucketed edge-convert model: s: inputs"),
    ({"a": {"input_ids": (1, 8)}, "b": {"input_ids": (1, 8)}}, r"m\.tflite: two signatures share a sequence length"),
], ids=["none", "not-bucketed", "same-length"])
def test_a_file_the_backend_cannot_use_is_a_model_load_error(signatures, message):
    """A file the installed backend reads but edge_runtime cannot run is ModelLoadError (issue 9:
    BackendUnavailableError read as "the backend is missing"); still a BackendUnavailableError, so
    load() goes on to the next artifact as before."""
    from edge_runtime._errors import ModelLoadError

    session = object.__new__(tflite.TfliteSession)
    session._engine = _Signatures(signatures)
    with pytest.raises(ModelLoadError, match=message) as raised:
        session._read_signatures(Path("m.tflite"))
    assert isinstance(raised.value, BackendUnavailableError)
