"""Writing the artifact directory: staged in a hidden sibling, renamed into place at the end.

What an interruption leaves (issue 10, "Interruption and concurrency"; tests/test_interruption.py
kills real conversions with SIGKILL):
- `out` only ever appears by one rename(2) of a finished staging directory: it is absent, or the
  previous result (force), or the new complete one. Never a half-written directory.
- A staging directory is hidden and named `.NAME.partial-*`. The manifest is written last (via
  rename), so a staging directory holds a manifest only once every file it lists is complete.
- The renames that put a finished result in place and the removal of the previous output run
  whole: a Ctrl-C or SIGTERM arriving meanwhile is held and delivered right after them
  (_signals_held), so an interrupted run has either published nothing (`out` as it was) or
  published the new output with the previous one removed, never a half-way state in between, and
  the caller's "interrupted" path can tell which by looking at `out` (converters/cli.py).
- Every staging and work directory is locked (flock on the directory) by the process that made
  it; the kernel drops the lock when that process dies, however it dies. The next run removes
  the unlocked leftovers (remove_leftovers) and leaves a live run's directories alone.
"""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from converters._errors import ConversionError
from edge_runtime._manifest import MANIFEST_NAME, file_sha256
from edge_runtime._sigterm import check_interrupted

__all__ = [
    "WORK_PREFIX",
    "check_not_inside_output",
    "check_output",
    "enclosing_output",
    "file_entry",
    "is_output",
    "previous_left",
    "remove_leftovers",
    "restore_interrupted",
    "save_onnx",
    "staging_dir",
    "staging_prefix",
    "work_dir",
    "write_manifest",
]

log = logging.getLogger(__name__)

# Offsets of tensors of 1 MiB and more start on a 4 KiB page boundary, so each maps onto whole
# pages. Smaller tensors are packed densely: aligning every one (an INT4 model has hundreds of
# small scale/weight blocks) to 64 KiB once added 30% to the file. ORT maps unaligned offsets
# too, rounding down to the page, so this is about tidy mappings, not correctness.
EXTERNAL_DATA_ALIGNMENT = 4096
ALIGN_THRESHOLD = 1 << 20

# Work directories (temporary ONNX graphs, several times the model's size) in the temp dir. The
# "." cannot occur in mkdtemp's random part, so the prefix never matches the unlocked
# "edge-convert-XXXX" directories of earlier versions, which may belong to a live run.
WORK_PREFIX = "edge-convert.work-"


def staging_prefix(out: Path) -> str:
    return f".{Path(out).name}.partial-"


def _lock(path: Path, wait: bool) -> int | None:
    """An exclusive flock on directory `path`: its fd, or None if another process holds it (or
    the directory cannot be opened). Where flock does not exist, None: nothing is removed."""
    try:
        import fcntl
    except ImportError:  # not POSIX: leftovers are kept, never removed under a live run
        return None
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except OSError:
        os.close(fd)
        return None
    return fd


def _locked_tempdir(parent: Path, prefix: str) -> tuple[Path, int | None]:
    """mkdtemp, then lock it. Between the two another run's remove_leftovers may see it unlocked
    and delete it; the lock then holds a deleted directory, so check and make a new one."""
    for _ in range(5):
        path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
        fd = _lock(path, wait=True)
        try:
            if fd is None or os.path.samestat(os.fstat(fd), os.stat(path)):
                return path, fd
        except FileNotFoundError:
            pass
        os.close(fd)
    raise ConversionError(f"internal: could not create a locked directory {prefix}* in {parent}")


def _unlock(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)  # closing the last descriptor releases the flock


def remove_leftovers(parent: Path, prefix: str) -> list[Path]:
    """Remove the directories `parent/prefix*` that no live process holds: what a killed run left.
    A directory whose lock is held (a conversion in progress) is left alone."""
    removed = []
    try:
        entries = sorted(Path(parent).iterdir())
    except OSError:
        return removed
    for entry in entries:
        if not entry.name.startswith(prefix) or entry.is_symlink() or not entry.is_dir():
            continue
        fd = _lock(entry, wait=False)
        if fd is None:
            continue
        try:
            shutil.rmtree(entry, ignore_errors=True)
        finally:
            _unlock(fd)
        if not entry.exists():
            removed.append(entry)
    if removed:
        log.info("removed %d leftover(s) of interrupted conversions: %s", len(removed),
                 ", ".join(str(p) for p in removed))
    return removed


def check_output(out: Path, force: bool, inputs: Mapping[str, Path | None] | None = None) -> None:
    """Raise ConversionError unless a conversion may write `out`: it does not exist, or `force`
    is set and `out` is what force replaces, an earlier output (a directory with a manifest) or
    an empty directory. Never the working directory, any of the conversion's `inputs` (what ->
    path: the source model, the texts, the signing key; None entries ignored) or anything holding
    them, and never a file or a directory of someone else's files: force replaces a result, it
    does not clear a path. A symbolic link is followed: what it points to is checked and replaced."""
    try:
        out = Path(out).resolve()
    except OSError as exc:  # a relative path under a working directory that was deleted
        raise ConversionError(f"cannot resolve the output path {out}: {exc}") from None
    check_not_inside_output(out)
    check_not_inside_inputs(out, inputs)
    restore_interrupted(out)
    if not out.exists():
        # The output and the staging directory are made next to it: a parent that is a file, or
        # that cannot be made or written, fails here rather than after the model has loaded.
        parent = next((p for p in out.parents if p.exists()), None)
        if parent is not None and not parent.is_dir():
            raise ConversionError(f"cannot create {out}: {parent} is a file, not a directory")
        if parent is not None and not os.access(parent, os.W_OK | os.X_OK):
            raise ConversionError(f"cannot create {out}: {parent} is not writable; choose another output path")
        return
    # The result is staged in a hidden sibling and renamed into place: a mount point (a container
    # volume, an SD card) cannot be renamed, and a parent that cannot be written holds no sibling.
    # Both said now, not after the whole conversion has run.
    if os.path.ismount(out):
        raise ConversionError(f"{out} is a mount point: the result is written next to it and renamed into place, "
                              f"which a mount point cannot be; give a directory inside it, e.g. {out / 'model'}")
    if not os.access(out.parent, os.W_OK | os.X_OK):
        raise ConversionError(f"cannot replace {out}: {out.parent} is not writable (the result is written next "
                              "to it first, then renamed into place); choose another output path")
    # What force=True would never replace is said first, whether or not it was passed: "pass
    # force=True" in front of the model directory read like an offer to delete it.
    if not out.is_dir():
        raise ConversionError(f"{out} is a file, not an earlier output directory: force=True replaces only "
                              "a directory edge-convert wrote; choose another output path")
    protected = {}
    with contextlib.suppress(OSError):  # a working directory that was deleted has nothing to protect
        protected["the current directory"] = Path.cwd().resolve()
    for what, path in (inputs or {}).items():
        if path is not None:
            with contextlib.suppress(OSError):
                protected[what] = Path(path).resolve()
    for what, path in protected.items():
        if path == out or out in path.parents:
            raise ConversionError(f"{out} holds {what} ({path}): force=True would delete it; choose another "
                                  "output path")
    if not is_output(out) and any(out.iterdir()):
        raise ConversionError(f"{out} is not an earlier output (no edge-convert {MANIFEST_NAME}) and is not "
                              "empty: force=True replaces only a directory edge-convert wrote; choose another "
                              "output path or remove it yourself")
    if not force:
        raise ConversionError(f"{out} already exists; pass force=True to replace it")


def restore_interrupted(out: Path) -> Path | None:
    """Put back the previous output a replacing conversion moved aside and was killed (SIGKILL,
    power loss) before it renamed its result in: `out` is then missing and the previous output
    waits in `.NAME.partial-*.old`, which remove_leftovers would delete. Restored: the directory
    it came from; None when there is nothing to restore, or while a live conversion holds a
    staging directory of `out` (it may be between its two renames right now)."""
    out = Path(out)
    if os.path.lexists(out):
        return None
    prefix = staging_prefix(out)
    try:
        entries = [e for e in out.parent.iterdir() if e.name.startswith(prefix) and e.is_dir() and not e.is_symlink()]
    except OSError:
        return None
    olds = [e for e in entries if e.name.endswith(".old") and is_output(e)]
    if not olds:
        return None
    for entry in entries:
        if entry not in olds:
            fd = _lock(entry, wait=False)
            if fd is None:  # held by a live conversion (or unreadable): leave everything as it is
                return None
            _unlock(fd)
    previous = max(olds, key=lambda p: p.stat().st_mtime)
    try:
        os.rename(previous, out)
    except OSError:
        return None
    log.warning("%s was missing: a conversion replacing it was stopped between its two renames; the previous "
                "output it had moved aside (%s) is back in place", out, previous.name)
    return previous


def enclosing_output(out: Path) -> Path | None:
    """The nearest ancestor of `out` (resolved) that is an earlier output, or None."""
    return next((parent for parent in Path(out).resolve().parents if is_output(parent)), None)


def check_not_inside_output(out: Path) -> None:
    """Raise ConversionError if `out` lies inside an earlier output, at any depth: its manifest
    (and signature) list every file of that directory, so one written inside it would break its
    hashes and signature (convert_targets refuses DIR/<target> inside an output for this reason)."""
    parent = enclosing_output(out)
    if parent is not None:
        raise ConversionError(f"{Path(out).resolve()} is inside {parent}, the output of an earlier conversion "
                              f"(it holds an edge-convert {MANIFEST_NAME}): a directory written inside it would "
                              "break its hashes and signature; choose an output path outside it")


def check_not_inside_inputs(out: Path, inputs: Mapping[str, Path | None] | None) -> None:
    """Raise ConversionError if `out` lies inside a directory the conversion reads (the source
    model's): its files would be mixed with the model's (and a `cd MODEL && edge-convert .`
    leaves out/ in the model directory with the default output path)."""
    try:
        resolved = Path(out).resolve()
    except OSError:  # said by check_output
        return
    for what, path in (inputs or {}).items():
        if path is None or not Path(path).is_dir():
            continue
        with contextlib.suppress(OSError):
            directory = Path(path).resolve()
            if directory in resolved.parents:
                raise ConversionError(f"{resolved} is inside {what} ({directory}): edge-convert writes nothing "
                                      "into the directories it reads; choose an output path outside it")


def is_output(path: Path) -> bool:
    """Whether `path` holds an edge-convert manifest: a JSON object with a schema version and an
    artifact list (a web app's or a browser extension's manifest.json is not one)."""
    try:
        manifest = json.loads((path / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and "schema_version" in manifest and isinstance(manifest.get("artifacts"), list)


def _keep(stage: Path, out: Path, exc: OSError) -> None:
    """The result could not be put at `out`: keep it under a visible name beside it (the staging
    prefix would have it removed by the next run) and raise ConversionError saying where."""
    kept = out.with_name(f"{out.name}.edge-convert-{time.strftime('%Y%m%d-%H%M%S')}")
    try:
        os.rename(stage, kept)
    except OSError as again:
        raise ConversionError(f"could not put the result at {out} ({exc.strerror or exc}), nor beside it at "
                              f"{kept} ({again.strerror or again}); nothing was written") from None
    raise ConversionError(f"could not put the result at {out} ({exc.strerror or exc}); it is kept in {kept}: "
                          "move it where you want it") from None


@contextlib.contextmanager
def staging_dir(out: Path, force: bool, inputs: Mapping[str, Path | None] | None = None) -> Iterator[Path]:
    """Yield an empty hidden directory next to `out`; on success it replaces `out` atomically
    (check_output decides whether an existing `out` may be replaced, before and after the work)."""
    out = Path(out).resolve()
    check_output(out, force, inputs)
    out.parent.mkdir(parents=True, exist_ok=True)
    prefix = staging_prefix(out)
    remove_leftovers(out.parent, prefix)
    stage, lock = _locked_tempdir(out.parent, prefix)
    stage.chmod(0o755)  # mkdtemp makes it owner-only; the result is an ordinary directory
    try:
        yield stage
        check_interrupted()  # a Ctrl-C Python dropped (edge_runtime/_sigterm.py) publishes nothing
        if not (stage / MANIFEST_NAME).is_file():
            raise ConversionError("internal: the manifest was not written")
        replace = out.exists()
        if replace and not force:
            raise ConversionError(
                f"{out} appeared while this conversion ran (another conversion?); it was left "
                "as it is and this result discarded; pass force=True to replace it"
            )
        if replace:
            check_output(out, force, inputs)  # it may have changed while the conversion ran
        with _signals_held():  # from here on the result is published whole (module docstring)
            _publish(stage, out, replace)
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)
        _unlock(lock)


def _publish(stage: Path, out: Path, replace: bool) -> None:
    """Put the finished `stage` at `out`; `replace`: the output there is replaced (and removed)."""
    if not replace:
        try:
            os.rename(stage, out)
        except OSError as exc:
            if out.exists():  # made by someone else after the check above
                raise ConversionError(
                    f"{out} appeared while this conversion ran (another conversion?); it was "
                    f"left as it is and this result discarded ({exc})"
                ) from None
            _keep(stage, out, exc)
        return
    # Killed (SIGKILL) between these two renames, `out` is absent and both directories carry the
    # staging prefix: the next run's check_output puts the previous output back (restore_interrupted)
    # and removes the unfinished one.
    old = stage.with_name(stage.name + ".old")
    try:
        os.rename(out, old)
    except OSError as exc:
        _keep(stage, out, exc)
    try:
        os.rename(stage, out)
    except OSError as exc:
        os.rename(old, out)  # the earlier output back where it was
        _keep(stage, out, exc)
    shutil.rmtree(old, ignore_errors=True)
    if old.exists():  # the next run removes it (an unlocked leftover) if it can
        log.warning("the previous output of %s could not be removed: it is left in %s; remove it", out, old)


def previous_left(out: Path) -> list[Path]:
    """Previous outputs a replacing run moved aside and could not remove (`.NAME.partial-*.old`)."""
    try:
        return sorted(Path(out).parent.glob(glob.escape(staging_prefix(out)) + "*.old"))
    except OSError:
        return []


# The stop signals held while a result is published: Ctrl-C and SIGTERM (`kill`, timeout(1)).
_STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM") if hasattr(signal, name))


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Ctrl-C and SIGTERM arriving within the block are held and delivered when it ends, to the
    handlers installed before it (edge_runtime/_sigterm.py's, Python's, or the default action).
    Python runs signal handlers in the main thread only, and only there can they be swapped: in
    another thread the block runs as it is (no KeyboardInterrupt can arise there). A handler not
    installed from Python (getsignal() is None) cannot be put back, so its signal is not held.
    When the block fails, its error goes on and the held signal is dropped: the run ends either
    way, and the error says where the result went (_keep), which the signal's "interrupted"
    message would have replaced."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    failed = False

    def hold(signum, frame) -> None:
        held.append(signum)

    previous = {}
    try:
        for signum in _STOP_SIGNALS:
            handler = signal.getsignal(signum)
            if handler is not None:
                previous[signum] = handler
                signal.signal(signum, hold)
        yield
    except BaseException:
        failed = True
        raise
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if held and not failed:  # the first one, as it would have been delivered: raises here, or ends the process
            signal.raise_signal(held[0])


@contextlib.contextmanager
def work_dir() -> Iterator[Path]:
    """A locked temporary directory for intermediate models, removed on exit; the leftovers of
    killed conversions in the temp dir are removed first."""
    parent = Path(tempfile.gettempdir())
    remove_leftovers(parent, WORK_PREFIX)
    path, lock = _locked_tempdir(parent, WORK_PREFIX)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        _unlock(lock)


def file_entry(root: Path, path: Path) -> dict[str, Any]:
    return {
        "path": path.relative_to(root).as_posix(),
        "sha256": file_sha256(path),
        "bytes": path.stat().st_size,
    }


def save_onnx(model_path: Path, root: Path, name: str) -> list[dict[str, Any]]:
    """Copy an ONNX model into `root` as NAME.onnx + NAME.onnx.data (aligned external weights)."""
    import onnx_ir as ir

    model = ir.load(str(model_path))
    target = root / f"{name}.onnx"
    data_name = f"{name}.onnx.data"
    ir.save(
        model,
        str(target),
        external_data=data_name,
        size_threshold_bytes=1024,
        alignment=EXTERNAL_DATA_ALIGNMENT,
        align_threshold=ALIGN_THRESHOLD,
    )
    files = [file_entry(root, target)]
    if (root / data_name).exists():
        files.append(file_entry(root, root / data_name))
    return files


def write_manifest(root: Path, manifest: dict[str, Any]) -> Path:
    """Written last, via a temporary file and rename, so a manifest is never half-written."""
    path = root / MANIFEST_NAME
    tmp = root / f".{MANIFEST_NAME}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path
