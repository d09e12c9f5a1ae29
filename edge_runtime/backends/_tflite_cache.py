"""XNNPACK weight cache files for TFLite artifacts, built in a child process.

XNNPACK weight cache (`weight_cache_dir`): XNNPACK repacks every weight matrix into its kernel
layout when a model is loaded, once per signature. With a cache file the packed weights are
written once and memory-mapped by later loads; the buckets also share one packed copy instead
of one each (docs/notes/tflite-findings.md has the measurements). Only ai-edge-litert's
CompiledModel API exposes it (`CpuOptions.xnnpack_weight_cache_path`, a *file* path: a
directory is rejected by XNNPACK with "Is a directory" and nothing is cached). Where that API
is missing (tflite-runtime, older ai-edge-litert) the Interpreter runs the model as before.

XNNPACK does not check that a cache file belongs to the model: it looks packed weights up by
(tensor id, packing parameters), so a cache built for another model with the same structure is
used silently and gives wrong numbers (measured: NaN). Nor does it check the file's content
beyond its header. Cache files are therefore named after the model's sha256, the runtime version,
edge_runtime's version and the CPU's feature flags, built under a temporary name and renamed into
place only once XNNPACK has finished writing them. Before the rename, the file's sha256 and stat
signature are recorded in a sidecar next to it (`<cache file>.verified.json`); before a cache
file is used it is checked against that record (backends/_cache.py, check_sha256: re-hashed only
when its stat signature changed, the new signature then recorded; a read-only cache directory
is hashed at every load). A cache file without a readable record, or whose content does not
match it, is deleted and rebuilt, never mapped (issue 10). Two processes publishing the same
cache at once can leave one's file with the other's record; the next load then rebuilds it.
The record sits beside the file, so it catches accidents, not someone who can write the cache:
a cache file is used only while it, its record and every directory from the cache root down to
them are private to this user (backends/_cache.py, private_problem); otherwise the load goes
without it, with a warning, and leaves it alone. Files are published owner-only (0600).

Crash isolation (issue 8): every LiteRT Environment -- ours and the ones CompiledModel creates
internally, whatever `runtime_path` says -- dlopens libLiteRtWebGpuAccelerator.so, which
ai-edge-litert 2.3's aarch64 wheel builds for ARMv8.1 atomics (LSE). On an ARMv8.0 core
(Cortex-A72: Raspberry Pi 4) its initializer stops the process with "This binary was compiled
with lse enabled, but this feature is not available on this processor" and SIGILL: measured under
qemu-aarch64 -cpu cortex-a72 (tools/arm64-check); cortex-a76 (Pi 5, with LSE) runs it. A crash
cannot be caught in-process, so the CompiledModel path is first taken in a child process: it
builds the weight cache (and runs the smallest signature once) there, and this process maps the
finished file. A child killed by a CPU fault (SIGILL, SIGSEGV, SIGBUS, SIGFPE, SIGABRT, SIGSYS,
SIGTRAP; not SIGINT/SIGTERM/SIGKILL, which come from outside) leaves a marker named after the runtime version and
the CPU (`compiled-model-litert<version>-<cpu>.crashed`, next to the caches, with the signal and
the runtime's last words); from then on this CPU runs TFLite artifacts with the Interpreter (no
weight cache), without trying again while the same runtime version is installed (another
version is tried anew: the version is in the marker's name). Delete the marker to retry.
The Interpreter path never loads the GPU accelerators and runs on ARMv8.0.

The session (edge_runtime.backends.tflite) calls open_with_cache and runs whatever engine it
returns, or the Interpreter when it returns none; this module owns the files (naming,
finalization and hash checks, publishing, orphan sweep) and the child process
(_build_cache_main).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_runtime._errors import BackendUnavailableError
from edge_runtime._manifest import file_sha256 as _sha256
from edge_runtime.backends._cache import (UnsafeCacheError, cache_root, check_sha256,
                                          make_cache_dir, make_private, private_problem,
                                          signature, write_json)
from edge_runtime.backends._cache import cpu_tag as _cpu_tag
from edge_runtime.backends._tflite_engines import _compiled_model_api, _CompiledEngine
from edge_runtime.backends._tflite_log import _forward_native, native_log

__all__ = ["CacheOpen", "crash_marker", "open_with_cache", "weight_cache_file"]

log = logging.getLogger("edge_runtime")

_CACHE_SUFFIX = ".xnnpack"
_CRASH_SUFFIX = ".crashed"
# Signals a process gets from its own instructions (an unsupported one, a bad access, an abort
# in the runtime's own checks): the ones that say this CPU cannot run the CompiledModel path.
_CPU_FAULTS = {
    int(getattr(signal, name)) for name in ("SIGILL", "SIGSEGV", "SIGBUS", "SIGFPE", "SIGABRT", "SIGSYS", "SIGTRAP")
    if hasattr(signal, name)
}
_RECORD_SUFFIX = ".verified.json"  # {"sha256", "stat"}: the cache file's content when published


@dataclass
class CacheOpen:
    """What open_with_cache did: the engine to run (None: the session falls back to the
    Interpreter) and the values of the session's weight_cache_* attributes (their states are
    listed in TfliteSession.__init__)."""

    engine: _CompiledEngine | None = None
    weight_cache_state: str = "off"
    weight_cache_note: str | None = None
    weight_cache: Path | None = None


def open_with_cache(
    model_path: Path, threads: int, cache_dir: Path, model_sha256: str | None
) -> CacheOpen:
    """A CompiledModel that maps (or first builds) the weight cache, and what happened;
    engine None: fall back to the Interpreter."""
    result = CacheOpen()
    api = _compiled_model_api()
    if api is None:
        result.weight_cache_state = "unsupported"
        return result
    import ai_edge_litert

    try:
        make_cache_dir(cache_dir)
        sha256 = model_sha256 or _sha256(model_path)
        # XNNPACK aborts the whole process (SIGABRT, weight_cache.cc "Inserting data in the
        # cache failed") when a write fails, e.g. on a full disk: build only with room to
        # spare. Packed weights measured 0.4x (INT8) to 1.6x (weight-only INT8, unpacked to
        # FP32) the file; 4x covers both.
        needed = 4 * model_path.stat().st_size + (64 << 20)
        free = shutil.disk_usage(cache_dir).free
    except UnsafeCacheError as exc:
        return _refused(result, model_path, str(exc), cache_dir)
    except OSError as exc:
        result.weight_cache_state = "failed"
        log.warning("XNNPACK weight cache unusable (%s); loading without it", exc)
        return result
    marker = crash_marker(cache_dir, ai_edge_litert.__version__)
    if marker.exists():
        return _unsupported(
            result, model_path,
            f"ai-edge-litert {ai_edge_litert.__version__}'s CompiledModel crashed on this "
            f"CPU before ({_read_marker(marker)}; recorded in {marker}, delete it to retry)",
        )
    final = weight_cache_file(cache_dir, sha256, ai_edge_litert.__version__)
    problem = _unsafe(final, cache_dir)
    if problem:  # someone else could have written it: its record proves nothing then
        return _refused(result, model_path, problem, cache_dir)
    _remove_orphans(final)
    if _looks_finalized(final) and _is_intact(final):
        try:
            engine = _CompiledEngine(api, model_path, threads, final)
        except (RuntimeError, ValueError) as exc:
            # Whether the cache or the model is at fault, a fresh cache costs one rebuild.
            _discard(final)
            result.weight_cache_state = "failed"
            log.warning("could not load %s with its weight cache (%s)", model_path.name, exc)
            return result
        result.weight_cache, result.weight_cache_state = final, "reused"
        result.engine = engine
        return result
    if free < needed:
        result.weight_cache_state = "failed"
        log.warning(
            "not building an XNNPACK weight cache for %s: %d MB free in %s, want %d MB",
            model_path.name,
            free >> 20,
            cache_dir,
            needed >> 20,
        )
        return result
    if not _can_isolate():
        # Without an interpreter to start, a crash could not be told from a result.
        return _unsupported(
            result, model_path,
            f"no Python executable to build the cache in a child process "
            f"(sys.executable is {sys.executable!r})",
        )
    # Build under a name no other process uses; XNNPACK truncates and rewrites the file it
    # is given, so building in place could clobber a file another process has mapped.
    tmp = final.with_name(f".{final.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        # In a child process: the first use of CompiledModel on a CPU may kill the process
        # (module docstring, "Crash isolation").
        outcome, detail = _build_in_child(model_path, tmp, threads)
        if outcome == "crashed":
            _record_crash(marker, model_path.name, detail)
            result.weight_cache_state = "unsupported"
            result.weight_cache_note = (
                f"ai-edge-litert {ai_edge_litert.__version__}'s CompiledModel crashed on this "
                f"CPU ({detail})"
            )
            log.warning(
                "%s: %s. TFLite artifacts run with the Interpreter here, without the XNNPACK "
                "weight cache; recorded in %s (delete it to try again)",
                model_path.name,
                result.weight_cache_note,
                marker,
            )
            return result
        if outcome != "ok":
            raise RuntimeError(detail)
        _publish(tmp, final)
    except (RuntimeError, ValueError, OSError) as exc:
        result.weight_cache_state = "failed"
        log.warning(
            "could not build the XNNPACK weight cache for %s (%s); loading without it",
            model_path.name,
            exc,
        )
        return result
    finally:
        # Gone after a successful rename; otherwise (error, crash, KeyboardInterrupt) never
        # left behind. A SIGKILL can still leave it: _remove_orphans sweeps it later.
        tmp.unlink(missing_ok=True)
    try:
        engine = _CompiledEngine(api, model_path, threads, final)
    except (RuntimeError, ValueError) as exc:
        _discard(final)
        result.weight_cache_state = "failed"
        log.warning(
            "could not load %s with the weight cache it just built (%s); loading without it",
            model_path.name,
            exc,
        )
        return result
    result.weight_cache, result.weight_cache_state = final, "created"
    result.engine = engine
    return result


# -- crash isolation ----------------------------------------------------------------------------


def crash_marker(cache_dir: Path, runtime_version: str) -> Path:
    """The file that records a CompiledModel crash on this CPU with this runtime version."""
    safe_version = "".join(c if c.isalnum() or c in ".-" else "_" for c in runtime_version)
    return Path(cache_dir) / f"compiled-model-litert{safe_version}-{_cpu_tag()}{_CRASH_SUFFIX}"


def _child_command(model_path: Path, cache_path: Path, threads: int) -> list[str]:
    # The child imports this very package: where it is installed, its directory is on the child's
    # sys.path already and nothing changes; a source tree the parent put on sys.path goes first,
    # as the parent has it.
    package_root = str(Path(__file__).resolve().parents[2])
    code = (
        "import sys; root = sys.argv.pop(1); "
        "sys.path.insert(0, root) if root not in sys.path else None; "
        "from edge_runtime.backends._tflite_cache import _build_cache_main; "
        "sys.exit(_build_cache_main(sys.argv[1:]))"
    )
    return [
        sys.executable,
        "-c",
        code,
        package_root,
        str(model_path),
        str(cache_path),
        str(threads),
    ]


def _build_cache_main(argv: list[str]) -> int:
    """Child process: build the weight cache argv[1] for the model argv[0] with argv[2] threads,
    run the shortest signature once, print one JSON line. Killed by a signal, it prints nothing."""
    model_path, cache_path, threads = Path(argv[0]), Path(argv[1]), int(argv[2])
    try:
        api = _compiled_model_api()
        if api is None:
            raise BackendUnavailableError("this ai-edge-litert has no CompiledModel weight cache")
        engine = _CompiledEngine(api, model_path, threads, cache_path)
        if not _looks_finalized(cache_path):
            raise RuntimeError(f"XNNPACK did not write a complete cache to {cache_path}")
        # The kernels XNNPACK picked for this CPU run once here too, not first in the parent.
        shortest = None
        for key in engine.signature_keys():
            inputs, _, runner = engine.signature(key)
            size = sum(int(np.prod(shape)) for shape, _ in inputs.values())
            if shortest is None or size < shortest[0]:
                shortest = (size, inputs, runner)
        if shortest is not None:
            shortest[2](
                **{name: np.zeros(shape, dtype) for name, (shape, dtype) in shortest[1].items()}
            )
    except Exception as exc:  # noqa: BLE001 - any failure is reported to the parent, which falls back
        print(json.dumps({"ok": False, "error": f"{type(exc).__name__}: {exc}"}), flush=True)
        return 1
    print(json.dumps({"ok": True}), flush=True)
    return 0


def _build_in_child(model_path: Path, cache_path: Path, threads: int) -> tuple[str, str]:
    """("ok" | "failed" | "crashed", detail): the cache build run in a child process."""
    done = subprocess.run(
        _child_command(model_path.resolve(), cache_path, threads),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        errors="replace",
        check=False,
    )
    # All at DEBUG: a failure is summarized by the caller's own message, with the last words.
    native = _forward_native(
        done.stderr, lambda line: native_log.debug("%s", line.rstrip()), logging.DEBUG
    )
    report = None
    for line in reversed(done.stdout.splitlines()):
        with contextlib.suppress(ValueError):
            report = json.loads(line)
            break
    if done.returncode == 0 and isinstance(report, dict) and report.get("ok"):
        return "ok", ""
    if isinstance(report, dict) and "error" in report:
        return "failed", str(report["error"])
    last = [line for line in native if line.startswith(("FATAL", "ERROR"))]
    last = last or [line for line in done.stderr.splitlines() if line.strip()]
    words = f": {' | '.join(line.rstrip('.') for line in last[-3:])}" if last else ""
    if done.returncode >= 0:
        # Python itself failed (an import error, say): a broken install, not this CPU's fault.
        return "failed", f"the child process exited with status {done.returncode}{words}"
    try:
        how = f"killed by {signal.Signals(-done.returncode).name}"
    except ValueError:
        how = f"killed by signal {-done.returncode}"
    if -done.returncode not in _CPU_FAULTS:
        # Sent from outside (a user, a service manager, the out-of-memory killer): says nothing
        # about this CPU, so no marker; the next load tries again.
        return "failed", f"the child process was {how} (not a CPU fault){words}"
    return "crashed", how + words


def _can_isolate() -> bool:
    return bool(sys.executable) and os.access(sys.executable, os.X_OK)


# -- weight cache files -------------------------------------------------------------------------


def _unsafe(final: Path, cache_dir: Path) -> str:
    """Why the cache file `final` or its record may have been written by someone else ("": not)."""
    root = cache_root(cache_dir)
    return private_problem(final, root) or private_problem(_record(final), root)


def _refused(result, model_path: Path, problem: str, cache_dir: Path):
    """The cache is not private to this user: go without it, say why once, touch nothing."""
    result.weight_cache_state, result.weight_cache_note = "failed", problem
    log.warning(
        "not using the XNNPACK weight cache for %s: %s. A device cache is trusted as this "
        "user's private directory (docs/signing.md, 'What a signature covers'): delete %s (the "
        "next load rebuilds it owner-only), or load with device_cache=False",
        model_path.name, problem, cache_root(cache_dir),
    )
    return result


def _unsupported(result, model_path: Path, note: str):
    """The cache cannot be used on this device: say why once, and load with the Interpreter."""
    result.weight_cache_state = "unsupported"
    result.weight_cache_note = note
    log.info("%s: %s; using the Interpreter", model_path.name, note)
    return result


def weight_cache_file(cache_dir: Path, model_sha256: str, runtime_version: str) -> Path:
    """The cache file for a model (by content) on this runtime, this edge_runtime and this CPU,
    inside cache_dir. edge_runtime's version is in the name because how a cache is built,
    checked and published can change with it."""
    from edge_runtime import __version__ as edge_version  # at call time: the package is initialized

    def safe(text: str) -> str:
        return "".join(c if c.isalnum() or c in ".-" else "_" for c in text)

    name = (
        f"{model_sha256[:32]}-litert{safe(runtime_version)}-er{safe(edge_version)}"
        f"-{_cpu_tag()}{_CACHE_SUFFIX}"
    )
    return Path(cache_dir) / name


def _looks_finalized(path: Path) -> bool:
    """XNNPACK writes an all-zero version word first and the real header only after the last
    packed buffer (tflite/delegates/xnnpack/weight_cache.cc, WeightCacheBuilder::Start and
    StopBuildStep), so a non-zero first word means the build step completed."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(8)
    except OSError:
        return False
    return len(head) == 8 and head != b"\0" * 8


def _remove_orphans(final: Path) -> None:
    """Delete temporary builds of `final`, and of its record, left by processes that no longer
    exist."""
    for stem in (final.name, _record(final).name):
        # The record's temporaries match the first pattern too; their "pid" is not a number
        # there (ValueError), and the second pattern parses them.
        for tmp in final.parent.glob(f".{stem}.*.tmp"):
            try:
                pid = int(tmp.name[len(stem) + 2 :].split(".")[0])
                os.kill(pid, 0)  # raises ProcessLookupError when no such process exists
            except ProcessLookupError:
                try:
                    tmp.unlink(missing_ok=True)
                except OSError:
                    pass  # read-only or raced with another sweep: it is never trusted anyway
            except (ValueError, OSError):
                continue  # not ours to judge: a foreign name, or another user's live process


def _record(final: Path) -> Path:
    """The sidecar holding the sha256 and stat signature of the cache file `final`."""
    return final.with_name(final.name + _RECORD_SUFFIX)


def _is_intact(final: Path) -> bool:
    """Whether the finished cache file `final` has the content recorded when it was published.
    When not (no record, an unreadable one, another hash), it is deleted with its record and
    this load rebuilds it. A re-hash that matched records the file's new signature (best effort:
    in a read-only directory the file is hashed at every load)."""
    record = _record(final)
    new_signature = None
    try:
        recorded = json.loads(record.read_text())
        digest = recorded["sha256"]
        if not isinstance(digest, str):
            raise TypeError(f"sha256 is {digest!r}")
        matches, new_signature = check_sha256(final, digest, recorded.get("stat"))
        problem = None if matches else "its content does not match its recorded sha256"
    except FileNotFoundError as exc:
        problem = f"no record of its content ({exc.filename} is missing)"
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        problem = f"its record {record.name} is unreadable ({type(exc).__name__}: {exc})"
    if problem is None:
        if new_signature is not None:
            try:
                write_json(record, {"sha256": digest, "stat": new_signature})
            except OSError as exc:
                log.debug("could not record the signature of %s: %s", final, exc)
        return True
    log.warning("XNNPACK weight cache %s not used: %s; rebuilding it", final, problem)
    _discard(final)
    return False


def _discard(final: Path) -> None:
    """Delete a cache file and its record."""
    for path in (final, _record(final)):
        try:
            path.unlink(missing_ok=True)
        except OSError:
            pass  # read-only: the file stays, but it is checked (and refused) at every load


def _publish(tmp: Path, final: Path) -> None:
    """Make a finished cache visible under its final name, durably (fsync before and after the
    rename: on an SD card a crash could otherwise leave the new name with unwritten data), with
    its record written first, so no other load sees the file without one. OSError: not
    published (a cache file that cannot be recorded would only be rebuilt by the next load)."""
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    make_private(tmp)  # XNNPACK wrote it with the umask's mode; before the signature (ctime)
    # Signature first, hash second (check_sha256); the file is private until the rename.
    before = signature(tmp)
    digest = _sha256(tmp)
    record = _record(final)
    write_json(record, {"sha256": digest, "stat": before})
    os.replace(tmp, final)
    try:
        fd = os.open(final.parent, os.O_RDONLY)
    except OSError:
        fd = None
    if fd is not None:
        try:
            os.fsync(fd)
        except OSError:
            pass  # some filesystems refuse fsync on directories; the rename itself is atomic
        finally:
            os.close(fd)
    # The rename sets the file's ctime (ext4, tmpfs); when nothing else about it moved, record
    # the signature it has now, so the first load does not hash it again. Otherwise the old
    # signature stays and the next load hashes the file.
    try:
        after = signature(final)
        if after[:2] + after[3:] == before[:2] + before[3:] and after != before:
            write_json(record, {"sha256": digest, "stat": after})
    except OSError as exc:
        log.debug("could not record the signature of %s: %s", final, exc)


def _record_crash(marker: Path, model_name: str, detail: str) -> None:
    try:
        marker.write_text(json.dumps({"model": model_name, "detail": detail}) + "\n")
    except OSError as exc:  # the next load will try (and crash in its child) again
        log.warning("could not record the CompiledModel crash in %s: %s", marker, exc)


def _read_marker(marker: Path) -> str:
    try:
        return str(json.loads(marker.read_text())["detail"])
    except (OSError, ValueError, KeyError, TypeError):
        return "no details recorded"
