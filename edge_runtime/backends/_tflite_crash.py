"""Crash isolation of ai-edge-litert's CompiledModel: what the death of the child process that
builds a weight cache says, and the marker that keeps a CPU from trying again.

Why a child process (issue 8): every LiteRT Environment -- ours and the ones CompiledModel creates
internally, whatever `runtime_path` says -- dlopens libLiteRtWebGpuAccelerator.so, which
ai-edge-litert 2.3's aarch64 wheel builds for ARMv8.1 atomics (LSE). On an ARMv8.0 core
(Cortex-A72: Raspberry Pi 4) its initializer stops the process with "This binary was compiled
with lse enabled, but this feature is not available on this processor" and SIGILL: measured under
qemu-aarch64 -cpu cortex-a72 (tools/arm64-check); cortex-a76 (Pi 5, with LSE) runs it. A crash
cannot be caught in-process, so the CompiledModel path is first taken in a child process
(edge_runtime.backends._tflite_cache builds the weight cache there); the Interpreter path never
loads the GPU accelerators and runs on ARMv8.0.

Which deaths are the CPU's: SIGILL only, an instruction this CPU does not have. It comes before
the model is read (the accelerator's initializer) and whatever the disk holds. The other signals
a process gets from its own code say nothing certain about the CPU: XNNPACK aborts (SIGABRT,
weight_cache.cc "Inserting data in the cache failed") when a write to the cache fails, e.g. on a
full disk; a damaged model file ends in SIGSEGV (measured: a truncated .tflite loaded with
verify=False), a mapped file cut short in SIGBUS; SIGFPE and SIGTRAP come from a model's values or
the runtime's own checks, SIGSYS from a seccomp filter. Taking them for the CPU's (as earlier
versions of this module did) turned the weight cache off for every model on the device, for good,
after one full disk. They are failed builds: this load goes without the cache and says why, the
next load tries again. SIGINT, SIGTERM and SIGKILL come from outside (a user, a service manager,
the out-of-memory killer): failed builds too.

After a SIGILL, a marker named after the runtime version and the CPU
(`compiled-model-litert<version>-<cpu>.crashed`, next to the caches, with the signal and the
runtime's last words) makes this CPU run TFLite artifacts with the Interpreter (no weight cache),
without trying again while the same runtime version is installed (another version is tried anew:
the version is in the name). Every load it stops says so in a warning; deleting it retries. A
marker that recorded another signal (written by an earlier edge_runtime) is deleted when found.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import signal
import subprocess
from pathlib import Path

from edge_runtime.backends._cache import cache_root, cpu_tag, private_problem, write_json
from edge_runtime.backends._tflite_log import _forward_native, native_log

__all__ = ["child_outcome", "crash_marker", "marker_in_effect", "record_crash"]

log = logging.getLogger("edge_runtime")

_CRASH_SUFFIX = ".crashed"
CPU_FAULT = "SIGILL"  # the one signal that is about the CPU (module docstring)


def crash_marker(cache_dir: Path, runtime_version: str) -> Path:
    """The file that records a CompiledModel crash on this CPU with this runtime version."""
    safe_version = "".join(c if c.isalnum() or c in ".-" else "_" for c in runtime_version)
    return Path(cache_dir) / f"compiled-model-litert{safe_version}-{cpu_tag()}{_CRASH_SUFFIX}"


def child_outcome(done: subprocess.CompletedProcess) -> tuple[str, str]:
    """("ok" | "failed" | "crashed", detail) of a finished cache build (_build_cache_main):
    "crashed" only when the CPU is at fault. Its stderr goes to the logger, all at DEBUG: a
    failure is summarized by the caller's own message, with the runtime's last words."""
    others: list[str] = []

    def other(line: str) -> None:
        native_log.debug("%s", line.rstrip())
        others.append(line.rstrip())

    native = _forward_native(done.stderr, other, logging.DEBUG)
    report = None
    for line in reversed(done.stdout.splitlines()):
        with contextlib.suppress(ValueError):
            report = json.loads(line)
            break
    if done.returncode == 0 and isinstance(report, dict) and report.get("ok"):
        return "ok", ""
    if isinstance(report, dict) and "error" in report:
        return "failed", str(report["error"])
    # Last words: the runtime's errors, else what is not the runtime's (a Python traceback);
    # never its INFO chatter ("XNNPACK CPU accelerator registered"), which explains nothing.
    last = [line for line in native if line.startswith(("FATAL", "ERROR"))] or others
    words = f": {' | '.join(line.rstrip('.') for line in last[-3:])}" if last else ""
    if done.returncode >= 0:
        # Python itself failed (an import error, say): a broken install, not this CPU's fault.
        return "failed", f"the child process exited with status {done.returncode}{words}"
    try:
        name = signal.Signals(-done.returncode).name
    except ValueError:
        name = f"signal {-done.returncode}"
    if name == CPU_FAULT:
        return "crashed", f"killed by {name}{words}"
    if name in ("SIGINT", "SIGTERM", "SIGKILL", "SIGHUP", "SIGQUIT"):
        outside = f"the child process was killed by {name} (from outside, not a CPU fault)"
        return "failed", outside + words
    return "failed", (
        f"the child process was killed by {name}{words}; not taken for a fault of this CPU: "
        f"a write that failed (a full disk) or a damaged model file ends this way too"
    )


def record_crash(marker: Path, model_name: str, detail: str) -> None:
    """Write the marker for a CPU fault (`detail` from child_outcome: "killed by SIGILL...")."""
    try:  # atomic and owner-only, like every cache record (a marker turns a code path off)
        write_json(marker, {"model": model_name, "signal": CPU_FAULT, "detail": detail})
    except OSError as exc:  # the next load will try (and crash in its child) again
        log.warning("could not record the CompiledModel crash in %s: %s", marker, exc)


def marker_in_effect(marker: Path) -> str | None:
    """What the marker recorded, while it stops CompiledModel on this CPU; None when there is no
    marker, or it recorded a signal that is not the CPU's (then it is deleted, with a warning), or
    it is where someone else could have written it (ignored, with a warning: the next build, in its
    child process, finds out again)."""
    problem = private_problem(marker, cache_root(marker.parent))
    if problem:
        log.warning("not using the CompiledModel crash marker %s: %s; CompiledModel is tried again "
                    "(in a child process)", marker, problem)
        return None
    try:
        text = marker.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"no details readable: {exc.strerror or exc}"
    try:
        recorded = json.loads(text)
        detail = str(recorded["detail"])
        name = recorded.get("signal")
    except (ValueError, KeyError, TypeError, AttributeError):
        return "no details recorded"
    if not isinstance(name, str):  # earlier versions' markers name it in the detail only
        found = re.match(r"killed by (SIG[A-Z0-9]+)", detail)
        name = found.group(1) if found else CPU_FAULT
    if name == CPU_FAULT:
        return detail
    try:
        marker.unlink(missing_ok=True)
        outcome = "deleted it"
    except OSError as exc:
        outcome = f"could not delete it ({exc.strerror or exc}), so it is ignored"
    log.warning(
        "%s recorded %s (%s), which an earlier edge_runtime took for a fault of this CPU; a full "
        "disk or a damaged model file ends that way too: %s, and the XNNPACK weight cache is tried "
        "again", marker, name, detail, outcome,
    )
    return None
