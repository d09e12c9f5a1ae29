"""TFLite backend: crash isolation of ai-edge-litert's CompiledModel, and the runtime's log lines.

ai-edge-litert 2.3's CompiledModel dlopens a GPU accelerator built for ARMv8.1 atomics, which
kills the process with SIGILL on a Raspberry Pi 4's Cortex-A72 (reproduced by tools/arm64-check
under qemu). The backend therefore builds its weight cache in a child process and, when the child
dies, records that for this CPU and runtime version and runs the Interpreter from then on. Here a
child that kills itself stands in for the A72; tools/arm64-check (tests/test_arm64.py) runs the
real one. The runtime's native INFO lines are kept off stderr and passed to the logger
"edge_runtime.litert".
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge_runtime import backends
from edge_runtime.backends import _tflite_cache, _tflite_log, tflite

ROOT = Path(__file__).resolve().parents[1]

needs_cache_api = pytest.mark.skipif(
    not tflite.weight_cache_supported(),
    reason="installed ai-edge-litert has no CompiledModel xnnpack_weight_cache_path",
)

# What the A72 child printed before dying (tools/arm64-check, qemu-aarch64 -cpu cortex-a72).
FATAL = (
    "FATAL ERROR: This binary was compiled with lse enabled, but this feature is not available "
    "on this processor (go/sigill-fail-fast)."
)


@pytest.fixture(scope="module")
def model(tiny_model_factory, tmp_path_factory) -> Path:
    from converters.inputs.source import load_source
    from converters.tflite import TfliteExportConfig, export_tflite, quantize_tflite

    out = tmp_path_factory.mktemp("tflite-isolation")
    export_tflite(
        load_source(tiny_model_factory("bert", "feature-extraction")),
        out / "fp32.tflite",
        TfliteExportConfig((16, 32)),
    )
    quantize_tflite(out / "fp32.tflite", out / "int8.tflite", "dynamic_wi8_afp32")
    return out / "int8.tflite"


def _feeds() -> dict[str, np.ndarray]:
    ids = np.random.default_rng(0).integers(5, 300, (2, 20))
    return {
        "input_ids": ids,
        "attention_mask": np.ones_like(ids),
        "token_type_ids": np.zeros_like(ids),
    }


def _dying_child(signal_name: str = "SIGILL"):
    """A _child_command stand-in: prints the runtime's last words, then kills itself."""
    code = (
        f"import os, signal, sys; sys.stderr.write({FATAL!r} + '\\n'); sys.stderr.flush(); "
        f"os.kill(os.getpid(), signal.{signal_name})"
    )
    return lambda model_path, cache_path, threads: [sys.executable, "-c", code]


@pytest.mark.slow  # a TFLite export
@needs_cache_api
@pytest.mark.parametrize("signal_name", ["SIGINT", "SIGTERM", "SIGKILL"])
def test_a_child_killed_from_outside_is_a_failed_build_not_a_cpu_crash(model, tmp_path, monkeypatch, signal_name):
    """A user, a service manager or the out-of-memory killer: nothing about this CPU, no marker."""
    monkeypatch.setattr(_tflite_cache, "_child_command", _dying_child(signal_name))
    cache_dir = tmp_path / "cache"
    session = backends.open_session("tflite", model, threads=1, weight_cache_dir=cache_dir)
    assert session.weight_cache_state == "failed"
    assert not tflite.crash_marker(cache_dir, _litert_version()).exists()
    assert list(cache_dir.iterdir()) == []


@pytest.mark.slow  # a TFLite export
@needs_cache_api
def test_a_crashing_compiled_model_falls_back_to_the_interpreter_and_is_not_retried(
    model, tmp_path, monkeypatch, caplog
):
    cache_dir = tmp_path / "cache"
    monkeypatch.setattr(_tflite_cache, "_child_command", _dying_child())
    with caplog.at_level(logging.WARNING, logger="edge_runtime"):
        session = backends.open_session("tflite", model, threads=1, weight_cache_dir=cache_dir)
    assert session.weight_cache_state == "unsupported" and session.weight_cache is None
    assert "killed by SIGILL" in session.weight_cache_note
    assert "compiled with lse enabled" in session.weight_cache_note
    assert "killed by SIGILL" in caplog.text and "Interpreter" in caplog.text
    marker = tflite.crash_marker(cache_dir, _litert_version())
    assert json.loads(marker.read_text())["detail"].startswith("killed by SIGILL")
    assert [p.name for p in cache_dir.iterdir()] == [marker.name], "no cache, no temporary"
    want = backends.open_session("tflite", model, threads=1).run(_feeds())["last_hidden_state"]
    np.testing.assert_array_equal(session.run(_feeds())["last_hidden_state"], want)

    def must_not_run(*args):
        raise AssertionError("a CPU that crashed once is not tried again")

    monkeypatch.setattr(_tflite_cache, "_child_command", must_not_run)
    again = backends.open_session("tflite", model, threads=1, weight_cache_dir=cache_dir)
    assert again.weight_cache_state == "unsupported"
    assert "crashed on this CPU before" in again.weight_cache_note
    assert str(marker) in again.weight_cache_note, "says which file to delete to retry"

    marker.unlink()  # e.g. after upgrading ai-edge-litert: the real child builds the cache
    monkeypatch.undo()
    retried = backends.open_session("tflite", model, threads=1, weight_cache_dir=cache_dir)
    assert retried.weight_cache_state == "created"
    np.testing.assert_array_equal(retried.run(_feeds())["last_hidden_state"], want)


@needs_cache_api
@pytest.mark.parametrize(
    "code",
    [
        f"print({json.dumps({'ok': False, 'error': 'RuntimeError: no space'})!r}); "
        "raise SystemExit(1)",
        "raise ImportError('a broken install')",  # Python's own failure: status 1, no report
    ],
    ids=["reported-error", "no-report"],
)
@pytest.mark.slow  # a TFLite export
def test_a_child_that_fails_without_a_signal_is_a_failed_build_not_a_crash(
    model, tmp_path, monkeypatch, code
):
    monkeypatch.setattr(_tflite_cache, "_child_command", lambda *args: [sys.executable, "-c", code])
    cache_dir = tmp_path / "cache"
    session = backends.open_session("tflite", model, threads=1, weight_cache_dir=cache_dir)
    assert session.weight_cache_state == "failed"
    assert not tflite.crash_marker(cache_dir, _litert_version()).exists()
    assert list(cache_dir.iterdir()) == []


@pytest.mark.slow  # a TFLite export
@needs_cache_api
def test_only_a_child_process_builds_the_cache(model, tmp_path, monkeypatch):
    """This process opens CompiledModel only on a finished cache file a child has built."""
    opened = []
    real = _tflite_cache._CompiledEngine

    def spy(api, model_path, threads, cache_path):
        opened.append(Path(cache_path))
        return real(api, model_path, threads, cache_path)

    monkeypatch.setattr(_tflite_cache, "_CompiledEngine", spy)
    cache_dir = tmp_path / "cache"
    built = backends.open_session("tflite", model, threads=1, weight_cache_dir=cache_dir)
    reused = backends.open_session("tflite", model, threads=1, weight_cache_dir=cache_dir)
    assert (built.weight_cache_state, reused.weight_cache_state) == ("created", "reused")
    assert opened == [built.weight_cache, built.weight_cache]
    assert not built.weight_cache.name.endswith(".tmp")


def test_forwarding_splits_runtime_lines_from_everything_else(caplog):
    passed = []
    text = (
        "INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n"
        "WARNING: [npu_registry.cc:34] NPU accelerator could not be loaded\n"
        "an application's own line\n"
        "\n"
        "WARNING:root:a Python logging line (no space before the colon)\n"
        f"{FATAL}\n"
    )
    with caplog.at_level(logging.DEBUG, logger="edge_runtime.litert"):
        native = _tflite_log._forward_native(text, passed.append)
    assert passed == [
        "an application's own line\n",
        "WARNING:root:a Python logging line (no space before the colon)\n",
    ]
    assert len(native) == 3
    levels = {
        r.getMessage()[:8]: r.levelno for r in caplog.records if r.name == "edge_runtime.litert"
    }
    assert levels == {
        "INFO: Cr": logging.DEBUG,
        "WARNING:": logging.INFO,
        "FATAL ER": logging.WARNING,
    }


def test_capture_keeps_other_writers_output(capfd, caplog):
    with caplog.at_level(logging.DEBUG, logger="edge_runtime.litert"):
        with _tflite_log._native_log_to_logger() as lines:
            os.write(2, b"INFO: [environment.cc:36] Creating LiteRT environment\n")
            os.write(2, b"someone else's line\n")
            print("python-level stderr line", file=sys.stderr)
    err = capfd.readouterr().err
    assert "someone else's line" in err and "python-level stderr line" in err
    assert "Creating LiteRT environment" not in err
    assert lines == ["INFO: [environment.cc:36] Creating LiteRT environment"]
    assert "Creating LiteRT environment" in caplog.text
    os.write(2, b"after\n")
    assert capfd.readouterr().err == "after\n", "fd 2 is restored"


_SCRIPT = """
import logging, sys
sys.path.insert(0, {root!r})
if {debug!r}:
    logging.basicConfig(level=logging.DEBUG, format="%(name)s|%(message)s")
import numpy as np
from edge_runtime.backends import tflite
feeds = {{n: np.ones((1, 8), np.int64) for n in ("input_ids", "attention_mask", "token_type_ids")}}
for cache in ({cache!r}, {cache!r}, None):  # built in a child, mapped, no cache (Interpreter)
    session = tflite.TfliteSession({model!r}, threads=1, weight_cache_dir=cache)
    session.run(feeds)
    print(session.weight_cache_state)
"""


@pytest.mark.slow  # a TFLite export
@needs_cache_api
@pytest.mark.parametrize("debug", [False, True], ids=["default", "logging-debug"])
def test_runtime_info_lines_stay_off_stderr_unless_asked_for(model, tmp_path, debug):
    """In a fresh process, through to its exit (LiteRT prints teardown lines from a static
    destructor after Python has finalized)."""
    script = _SCRIPT.format(
        root=str(ROOT), debug=debug, cache=str(tmp_path / "c"), model=str(model)
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["created", "reused", "off"]
    raw = [line for line in done.stderr.splitlines() if line.startswith(("INFO: ", "WARNING: "))]
    assert raw == [], raw
    logged = [line for line in done.stderr.splitlines() if line.startswith("edge_runtime.litert|")]
    if debug:
        text = "\n".join(logged)
        assert "Created TensorFlow Lite XNNPACK delegate" in text  # the Interpreter
        assert "Creating LiteRT environment" in text  # CompiledModel, child and this process
    else:
        assert done.stderr.strip() == ""


def _litert_version() -> str:
    import ai_edge_litert

    return ai_edge_litert.__version__


@pytest.mark.skipif(not hasattr(os, "geteuid"), reason="no POSIX owners here (Windows): nothing to check")
def test_the_crash_marker_is_owner_only_and_one_others_could_write_is_ignored(tmp_path, caplog):
    """Found by a review (session 49): the marker, which turns CompiledModel and the weight cache
    off on this CPU, was written with the umask's mode and read whoever could have written it."""
    from edge_runtime.backends import _tflite_crash

    cache_dir = tmp_path / "cache"
    cache_dir.mkdir(mode=0o700)
    marker = tflite.crash_marker(cache_dir, _litert_version())
    old = os.umask(0o002)
    try:
        _tflite_crash.record_crash(marker, "m.tflite", "killed by SIGILL")
    finally:
        os.umask(old)
    assert marker.stat().st_mode & 0o777 == 0o600
    assert _tflite_crash.marker_in_effect(marker) == "killed by SIGILL"
    assert [p.name for p in cache_dir.iterdir()] == [marker.name]  # atomic: no temporary left
    marker.chmod(0o666)
    with caplog.at_level(logging.WARNING, logger="edge_runtime"):
        assert _tflite_crash.marker_in_effect(marker) is None
    assert "not using the CompiledModel crash marker" in caplog.text
