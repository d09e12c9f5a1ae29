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

Crash isolation (issue 8): the CompiledModel path is first taken in a child process
(_build_cache_main), since on some CPUs it kills the process (a Raspberry Pi 4: SIGILL). The
child builds the weight cache and runs the smallest signature once; this process maps the finished
file. What the child's death says, and the marker that then keeps the CPU on the Interpreter, are
in edge_runtime.backends._tflite_crash: only an illegal instruction is the CPU's; a full disk or a
damaged model is a failed build, tried again at the next load.

The session (edge_runtime.backends.tflite) calls open_with_cache and runs whatever engine it
returns, or the Interpreter when it returns none; this module owns the files (naming,
finalization and hash checks, publishing, orphan sweep) and the child process
(_build_cache_main).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
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
                                          signature, sweep_entries, touch, write_json)
from edge_runtime.backends._cache import cpu_tag as _cpu_tag
from edge_runtime.backends._tflite_crash import (child_outcome, crash_marker, marker_in_effect,
                                                 record_crash)
from edge_runtime.backends._tflite_engines import _compiled_model_api, _CompiledEngine

__all__ = ["CacheOpen", "open_with_cache", "weight_cache_file"]

log = logging.getLogger("edge_runtime")

_CACHE_SUFFIX = ".xnnpack"
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

    version = ai_edge_litert.__version__
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
        return _failed(result, f"the cache directory is unusable ({exc})",
                       "XNNPACK weight cache unusable (%s); loading without it", exc)
    marker = crash_marker(cache_dir, version)
    recorded = marker_in_effect(marker)
    if recorded is not None:
        return _unsupported(
            result, model_path,
            f"ai-edge-litert {version}'s CompiledModel crashed on this CPU before ({recorded}; "
            f"recorded in {marker}, delete it to retry)",
            logging.WARNING,  # each load: the cache's memory and load-time savings are lost
        )
    final = weight_cache_file(cache_dir, sha256, version)
    problem = _unsafe(final, cache_dir)
    if problem:  # someone else could have written it: its record proves nothing then
        return _refused(result, model_path, problem, cache_dir)
    _remove_orphans(final)
    touch(_record(final))  # used now: a sweep by another process leaves it (backends/_cache.py)
    stale = None
    if _looks_finalized(final):
        stale = _integrity_problem(final)
        if stale is None:
            return _open_mapped(result, api, model_path, threads, final, "reused")
        kept = _discard(final)
        if kept is not None:  # a read-only directory: a rebuild could not replace it either
            note = f"{final} {stale}, and it cannot be deleted ({kept.strerror or kept})"
            return _failed(result, note, "XNNPACK weight cache not used: %s; loading without it. "
                           "Delete it, or load with device_cache=False", note)
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
        # Made here first: a directory this user cannot write costs a failed open(), not seconds
        # in a child process whose build could never be kept (and a misleading reason after).
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
    except OSError as exc:
        note = f"cannot create files in {cache_dir} ({exc.strerror or exc})"
        return _failed(result, note, "not building an XNNPACK weight cache for %s: %s; loading "
                       "without it. Make the directory writable by this user, or load with "
                       "device_cache=False", model_path.name, note)
    try:
        if free < needed:
            note = f"{free >> 20} MB free in {cache_dir}, want {needed >> 20} MB"
            return _failed(result, note, "not building an XNNPACK weight cache for %s: %s",
                           model_path.name, note)
        if stale:
            log.warning("XNNPACK weight cache %s not used: %s; rebuilding it", final, stale)
        # In a child process: the first use of CompiledModel on a CPU may kill the process
        # (module docstring, "Crash isolation").
        outcome, detail = _build_in_child(model_path, tmp, threads)
        if outcome == "crashed":
            record_crash(marker, model_path.name, detail)
            note = f"ai-edge-litert {version}'s CompiledModel crashed on this CPU ({detail})"
            result.weight_cache_state, result.weight_cache_note = "unsupported", note
            log.warning(
                "%s: %s. TFLite artifacts run with the Interpreter here, without the XNNPACK "
                "weight cache; recorded in %s (delete it to try again)",
                model_path.name, note, marker,
            )
            return result
        if outcome != "ok":
            raise RuntimeError(detail)
        _publish(tmp, final)
        touch(_record(final))  # the newest: the sweep keeps it among KEEP_ENTRIES
        sweep_entries(final.parent, f"-litert*{_CACHE_SUFFIX}", lambda f: [f, _record(f)])
    except (RuntimeError, ValueError, OSError) as exc:
        return _failed(result, str(exc), "could not build the XNNPACK weight cache for %s (%s); "
                       "loading without it (the next load tries again)", model_path.name, exc)
    finally:
        # Gone after a successful rename; otherwise (error, crash, KeyboardInterrupt) never
        # left behind. A SIGKILL can still leave it: _remove_orphans sweeps it later.
        tmp.unlink(missing_ok=True)
    return _open_mapped(result, api, model_path, threads, final, "created")


def _open_mapped(result, api, model_path: Path, threads: int, final: Path, state: str):
    """This process's CompiledModel on the finished cache file `final`."""
    try:
        before = signature(final)
        engine = _CompiledEngine(api, model_path, threads, final)
        rewritten = signature(final) != before
    except (RuntimeError, ValueError, OSError) as exc:
        # Whether the cache or the model is at fault, a fresh cache costs one rebuild.
        _discard(final)
        return _failed(result, f"could not load it with its weight cache ({exc})",
                       "could not load %s with its weight cache %s (%s); loading without it",
                       model_path.name, final, exc)
    if rewritten:
        # XNNPACK rebuilds a file whose header it rejects (bit rot under a matching record) at
        # its final name, in this process: not the checked file, and written outside the child
        # and the tmp+rename that keep a file another process has mapped from being clobbered.
        del engine
        _discard(final)
        note = (f"XNNPACK rejected {final} and rewrote it in place; deleted it, the next load "
                "rebuilds it")
        return _failed(result, note, "XNNPACK weight cache not used for %s: %s",
                       model_path.name, note)
    result.weight_cache, result.weight_cache_state, result.engine = final, state, engine
    return result


# -- crash isolation ----------------------------------------------------------------------------


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
    """("ok" | "failed" | "crashed", detail): the cache build run in a child process
    (_tflite_crash.child_outcome says what its end means)."""
    done = subprocess.run(
        _child_command(model_path.resolve(), cache_path, threads),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        errors="replace",
        check=False,
    )
    return child_outcome(done)


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


def _unsupported(result, model_path: Path, note: str, level: int = logging.INFO):
    """The cache cannot be used on this device: say why, and load with the Interpreter."""
    result.weight_cache_state = "unsupported"
    result.weight_cache_note = note
    log.log(level, "%s: %s; using the Interpreter, without the XNNPACK weight cache",
            model_path.name, note)
    return result


def _failed(result, note: str, message: str, *args):
    """The cache was asked for and is supported but not usable this time: a warning (`message`
    % args) and weight_cache_note (`note`) say why; the load goes without it."""
    result.weight_cache_state, result.weight_cache_note = "failed", note
    log.warning(message, *args)
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


def _integrity_problem(final: Path) -> str | None:
    """Why the finished cache file `final` must not be used (no record, an unreadable one,
    another hash), or None when it has the content recorded when it was published. A re-hash
    that matched records the file's new signature (best effort: in a read-only directory the
    file is hashed at every load)."""
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
    if problem is None and new_signature is not None:
        try:
            write_json(record, {"sha256": digest, "stat": new_signature})
        except OSError as exc:
            log.debug("could not record the signature of %s: %s", final, exc)
    return problem


def _discard(final: Path) -> OSError | None:
    """Delete a cache file and its record; the error when the file stays (a read-only
    directory: it is then checked, and refused, at every load)."""
    for path in (final, _record(final)):
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            if path == final:
                return exc
    return None


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
