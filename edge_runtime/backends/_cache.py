"""What the backends' device caches share: naming by CPU, and checking a file against its hash.

Caches hold device-specific forms of an artifact (XNNPACK's packed weights for TFLite,
onnxruntime's optimized graph for ONNX). They are named after the artifact's content, the
runtime version, edge_runtime's version and the CPU, so a cache directory that outlives its
machine or runtime is never trusted by another one. Their files' sha256 are recorded when they
are published and checked before they are used (check_sha256), so a corrupted cache is rebuilt,
never used (issue 10).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import json
import os
import platform
import uuid
from pathlib import Path
from typing import Any

from edge_runtime._manifest import file_sha256

__all__ = ["check_sha256", "cpu_tag", "default_cache_dir", "make_cache_dir", "signature",
           "write_json"]


def default_cache_dir() -> Path:
    """Where device-specific caches live: $XDG_CACHE_HOME/edge_runtime, else ~/.cache/edge_runtime
    (the XDG base-directory convention). Not next to the artifact: artifact directories may be
    read-only or shared between devices, and caches are per runtime version and CPU.
    A relative XDG_CACHE_HOME is ignored, as the XDG spec says (it would put caches wherever the
    process happens to run)."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = xdg if os.path.isabs(xdg) else os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "edge_runtime"


def make_cache_dir(path: Path) -> None:
    """mkdir -p `path`, except that a home directory that does not exist is not created: a
    service account whose HOME is missing (or relative) gets the OSError an unwritable cache
    gives, which every cache handles by going without (a warning), not a new /home/<user>
    made by whoever runs the model (root, often, on a device)."""
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
    Path(path).mkdir(parents=True, exist_ok=True)


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
    never a partial one). The temporary file is `.<name>.<pid>.<random>.tmp` next to it, removed
    on failure; OSError propagates."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        tmp.write_text(json.dumps(data))
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise
