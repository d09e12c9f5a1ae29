"""What the backends' device caches share: naming by CPU, and checking a file against its hash.

Caches hold device-specific forms of an artifact (XNNPACK's packed weights for TFLite,
onnxruntime's optimized graph for ONNX). They are named after the artifact's content, the
runtime version, edge_runtime's version and the CPU, so a cache directory that outlives its
machine or runtime is never trusted by another one. Their files' sha256 are recorded when they
are published and checked before they are used (check_sha256), so a corrupted cache is rebuilt,
never used (issue 10).

Those records live in the cache too, so they catch accidents, not someone who can write the
cache: no secret kept on the device could do better, since the runtime itself would have to read
it. What runs from a cache is therefore trusted as the user's own private directory, and checked
to be one (private_problem): every directory from the cache root down to an entry, and the
entry's files, must be owned by this process's user (or root, who can change the runtime itself)
and writable by no one else. Caches are created owner-only (directories 0700, files 0600,
whatever the umask). Anything else is not used: the load goes without the cache and says why
(docs/signing.md, "What a signature covers").
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import json
import os
import platform
import stat as stat_module
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge_runtime._manifest import file_sha256

__all__ = ["IDLE_S", "KEEP_ENTRIES", "UnsafeCacheError", "cache_root", "check_sha256", "cpu_tag",
           "default_cache_dir", "last_used", "make_cache_dir", "make_private", "path_problem",
           "private_problem", "signature", "sweep", "sweep_entries", "touch", "write_json"]

PRIVATE_DIR, PRIVATE_FILE = 0o700, 0o600  # modes of what a cache creates


class UnsafeCacheError(PermissionError):
    """A cache directory that someone other than this user could have written (private_problem
    says why); an OSError, so every cache that goes without an unwritable directory goes
    without this one too."""

    def __str__(self) -> str:
        return str(self.strerror)


def default_cache_dir() -> Path:
    """Where device-specific caches live: $XDG_CACHE_HOME/edge_runtime, else ~/.cache/edge_runtime
    (the XDG base-directory convention). Not next to the artifact: artifact directories may be
    read-only or shared between devices, and caches are per runtime version and CPU.
    A relative XDG_CACHE_HOME is ignored, as the XDG spec says (it would put caches wherever the
    process happens to run)."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = xdg if os.path.isabs(xdg) else os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "edge_runtime"


def make_cache_dir(path: Path, root: Path | None = None) -> None:
    """mkdir -p `path`, each directory it makes owner-only (0700), then UnsafeCacheError unless
    the directories from its cache root (`root`, default cache_root(path)) down to it are private
    (private_problem). A home
    directory that does not exist is not created: a service account whose HOME is missing (or
    relative) gets the OSError an unwritable cache gives, which every cache handles by going
    without (a warning), not a new /home/<user> made by whoever runs the model (root, often, on
    a device)."""
    home = Path(os.path.expanduser("~"))
    if home.is_absolute():
        refused = not home.is_dir() and Path(path).is_relative_to(home)
    else:  # HOME="" or relative: ~/.cache would land in the working directory
        refused = Path(path).is_relative_to(default_cache_dir())
    if refused:
        raise FileNotFoundError(
            errno.ENOENT,
            f"the home directory {str(home)!r} does not exist or is not absolute; not creating "
            "a cache there (set XDG_CACHE_HOME to a writable absolute path)",
            str(path),
        )
    path = Path(path)
    missing = [p for p in (path, *path.parents) if not os.path.lexists(p)]
    for directory in reversed(missing):  # owner-only from the start, whatever the umask
        try:
            directory.mkdir(mode=PRIVATE_DIR)
        except FileExistsError:  # made by a parallel load meanwhile: checked below like any
            pass
    if not path.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "not a directory", str(path))
    problem = private_problem(path, root)
    if problem:
        raise UnsafeCacheError(errno.EPERM, problem)


def cache_root(directory: Path) -> Path:
    """Where the ownership check of a cache directory starts: default_cache_dir() for the
    default caches (every backend's directory is below it), else `directory` itself (a
    device_cache directory given to load() is the backends' directory)."""
    directory, default = Path(directory), default_cache_dir()
    return default if directory.is_relative_to(default) else directory


def _owner(uid: int) -> str:
    try:
        import pwd

        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except (ImportError, KeyError):
        return f"uid {uid}"


def path_problem(path: Path, follow: bool = False) -> str:
    """Why the one file or directory `path` could have been written by someone other than this
    process's user, "" when it could not: owned by this user or root, not writable by its group
    or others, a regular file or directory (a link is refused: caches make none; `follow`: the
    cache root itself may be reached through one). FileNotFoundError propagates."""
    if not hasattr(os, "geteuid"):  # no POSIX owners (Windows): nothing to check
        return ""
    info = os.stat(path) if follow else os.lstat(path)
    if stat_module.S_ISLNK(info.st_mode):
        return f"{path} is a symbolic link (a device cache holds none)"
    if not (stat_module.S_ISDIR(info.st_mode) or stat_module.S_ISREG(info.st_mode)):
        return f"{path} is not a regular file or directory"
    me = os.geteuid()
    if info.st_uid not in (me, 0):
        return f"{path} is owned by {_owner(info.st_uid)}; this process runs as {_owner(me)}"
    bits = (("its group", stat_module.S_IWGRP), ("others", stat_module.S_IWOTH))
    writers = [who for who, bit in bits if info.st_mode & bit]
    if writers:
        return (f"{path} is writable by {' and '.join(writers)} "
                f"(mode {stat_module.S_IMODE(info.st_mode):04o})")
    return ""


def private_problem(path: Path, root: Path | None = None, contents: bool = False) -> str:
    """Why the cache entry or directory `path` must not be used, "" when it may: every
    directory from `root` (default: cache_root(path)) down to `path`, and `path` itself, pass
    path_problem; with `contents`, so does everything inside `path` (an entry's files). Parts not
    made yet are fine (make_cache_dir makes them owner-only). A same-user process passes: the
    cache is trusted as this user's private directory, no more (module docstring)."""
    path = Path(path)
    root = cache_root(path) if root is None else Path(root)
    if not path.is_relative_to(root):
        root = path
    parts = path.relative_to(root).parts
    chain = [root, *(root.joinpath(*parts[: i + 1]) for i in range(len(parts)))]
    try:
        for index, step in enumerate(chain):
            problem = path_problem(step, follow=index == 0)
            if problem:
                return problem
        if contents and path.is_dir():
            for current, dirs, files in os.walk(path):
                for name in sorted([*dirs, *files]):
                    problem = path_problem(Path(current) / name)
                    if problem:
                        return problem
    except (FileNotFoundError, NotADirectoryError):
        # Not made yet (or removed meanwhile), or a file where a directory goes: nothing there to
        # trust, and making the entry fails as for any unwritable cache ("unavailable").
        return ""
    except OSError as exc:
        return f"{exc.filename or path} cannot be checked ({exc.strerror or exc})"
    return ""


def make_private(path: Path) -> None:
    """Take group and others' access away from a file a cache just wrote (a runtime writes with
    the process's umask); before its signature is taken, since chmod changes ctime."""
    os.chmod(path, PRIVATE_DIR if Path(path).is_dir() else PRIVATE_FILE)


@functools.cache  # the CPU does not change under a running process; loads ask several times
def cpu_tag() -> str:
    """8 hex digits naming what kernels (and so packed layouts) are picked by.

    Runtimes check their own build identifier, not the CPU. A cache directory can outlive the
    CPU it was made on (a home directory on NFS, an SD card moved from a Pi 4 to a Pi 5), so the
    machine and CPU feature flags go into the cache's name."""
    parts = {platform.machine()}
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo:
            for line in cpuinfo:
                key = line.partition(":")[0].strip().lower()
                # x86 "flags"; ARM "Features", "CPU implementer", "CPU part" (one set per core
                # type on big.LITTLE; the set keeps each once)
                if key in ("flags", "features", "cpu implementer", "cpu part"):
                    parts.add(" ".join(line.split()))
    except OSError:
        parts.add(platform.processor())
    return hashlib.sha256("\n".join(sorted(parts)).encode()).hexdigest()[:8]


def signature(path: Path) -> list[int]:
    """What changes when a file's content changes through the file system (check_sha256):
    size, mtime, ctime, inode and device. A list, so it compares equal to itself read back
    from JSON."""
    stat = Path(path).stat()
    return [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino, stat.st_dev]


def check_sha256(path: Path, sha256: str, known: Any) -> tuple[bool, list[int] | None]:
    """Whether the file at `path` has content `sha256`, and the signature to record for it.

    `known` is the signature recorded when the file was last hashed (anything else, such as
    None or a hand-edited record, counts as none). When it equals the file's signature now, the
    file is not read: (True, None). Otherwise the file is hashed: (True, signature) when it
    matches (the caller records that signature with `sha256`), (False, None) when it does not.
    The signature is taken before the hash, so a write while hashing leaves a signature that no
    longer matches and the next check hashes again. OSError (a missing file) propagates.

    Safe for caches whose files are written once, in a private temporary place, and signed after
    their writer closed them (both caches here). Any later write through the file system changes
    size or mtime *and* ctime (ctime cannot be set by a process: utime() sets it to now), and a
    replacement file (copy, rename, restore from backup) has another inode or ctime, so a
    matching signature means no write since the hash was taken. Not seen: corruption below the
    file system (bit rot on the medium); the golden sample every verified load runs catches the
    wrong numbers that would come from it, and the cache is then rebuilt. Hashing every load
    instead cost more than the rest of an ONNX load (tools/bench_cold_start.py, 'entry check')."""
    current = signature(path)
    if known == current:
        return True, None
    if file_sha256(path) != sha256:
        return False, None
    return True, current


def write_json(path: Path, data: Any) -> None:
    """Replace `path` with `data` as JSON atomically (readers see the old or the new record,
    never a partial one), mode 0600. The temporary file is `.<name>.<pid>.<random>.tmp` next to
    it, removed on failure; OSError propagates."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        # Owner-only from the start (a cache's records are checked like its entries)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(json.dumps(data))
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise


# -- keeping a cache from growing without end --------------------------------------------------------

# Every artifact version, runtime version, optimization level and CPU gets an entry of its own, so a
# board updated over the air gained one per update and never lost any (a review, session 51: the
# ~1.3x of the FP32 files an onnxruntime entry weighs, once more per update, until the SD card is
# full). When an entry is written, the others of its cache directory beyond the KEEP_ENTRIES most
# recently used are deleted, unless used within IDLE_S: a load touches the entry it reuses before
# reading it (touch), so no process loses an entry while it loads from it, and a device that loads
# more than KEEP_ENTRIES artifacts in turn (edge-tune, a server of several models) keeps them.
KEEP_ENTRIES = 16
IDLE_S = 3600.0


def touch(path: Path) -> None:
    """Mark a cache entry used now (its mtime; never a file a signature covers)."""
    with contextlib.suppress(OSError):
        os.utime(path)


def sweep(entries: dict[Path, tuple[float, list[Path]]], keep: int | None = None,
          idle: float | None = None, now: float | None = None) -> list[Path]:
    """Delete the entries beyond the `keep` most recently used that were idle for `idle` s.
    `entries`: entry -> (last use, the paths it consists of), the one just written included
    (touched: the most recent); returns the entries deleted."""
    import shutil
    import time

    now = time.time() if now is None else now
    keep, idle = KEEP_ENTRIES if keep is None else keep, IDLE_S if idle is None else idle
    ranked = sorted(entries.items(), key=lambda item: item[1][0], reverse=True)
    removed = []
    for entry, (used, paths) in ranked[keep:]:
        if now - used < idle:
            continue
        for path in paths:
            with contextlib.suppress(OSError):  # raced with another sweep, or read-only: left
                shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
        removed.append(entry)
    return removed


def sweep_entries(directory: Path, pattern: str, parts: Callable[[Path], list[Path]]) -> list[Path]:
    """sweep() over the entries of `directory` named by a 32-hex-digit artifact hash then `pattern`
    (entries only: a device_cache directory also holds the verification records), each made of
    `parts(entry)` and last used when the latest of them was (touch)."""
    found = {entry: parts(entry) for entry in directory.glob("[0-9a-f]" * 32 + pattern)}
    return sweep({entry: (last_used(*paths), paths) for entry, paths in found.items()})


def last_used(*paths: Path) -> float:
    """The latest mtime of `paths` that exist (0.0 when none does)."""
    times = []
    for path in paths:
        with contextlib.suppress(OSError):
            times.append(path.stat().st_mtime)
    return max(times, default=0.0)
