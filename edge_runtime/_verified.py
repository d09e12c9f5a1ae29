"""Verified once per device: what a load may skip after a full check of the same files passed.

A verified load (`load(verify=True)`) hashes every file the artifact reads and runs every golden
sample. On a device that loads the same artifact again and again (a service restarting, a CLI
called per request), both repeat work whose answer cannot have changed: measured on MiniLM INT8
(tools/bench_cold_start.py) they were 60 % of a load from the device cache. Two records, under
the device cache directory, let later loads skip that work:

- **Files** (`files.json`): a file is not hashed again while its stat signature (size, mtime,
  ctime, inode, device: backends/_cache.signature) equals the one recorded when it last matched
  its sha256. Any write through the file system changes mtime and ctime (ctime cannot be set by
  a process), and a replaced file has another inode or ctime, so an equal signature means the
  content the hash was taken of. Timestamps are coarse (a clock tick, FAT's 2 s): a same-size write
  in the same tick as the signature would keep it, so only files *settled* for SETTLE_SECONDS
  (mtime and ctime that old when recorded; git's "racily clean" rule) are recorded; fresher
  files are simply hashed again next time.
- **Kernels** (`golden/<key>.json`): the golden samples are there to prove this device's kernels
  compute the converter's numbers (issue 10: wrong kernels load and run, and give wrong
  numbers). That is a property of the files, the runtime and its version, the CPU, the thread
  count and the session options: the record's key. With a record and a reused device cache, a
  load runs only the shortest golden sample, which still catches a broken session or corrupted
  data feeding every layer; anything else in the key changed and every sample runs again.

Not seen: corruption below the file system (bit rot on an SD card, raw writes to the block
device) of a file whose signature is recorded, unless the short golden sample shows it.
`load(verify="full")` hashes and runs every sample at every load; `device_cache=False` keeps no
records. Records are written atomically; a lost or unreadable record only means a full check.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

from edge_runtime._manifest import resolve
from edge_runtime.backends._cache import cache_root, make_cache_dir, private_problem, signature, write_json

__all__ = ["SETTLE_SECONDS", "Verifications", "kernel_key", "signatures_of"]

log = logging.getLogger("edge_runtime")

# A file whose mtime or ctime is younger than this when it is hashed is not recorded (see above).
SETTLE_SECONDS = 2.0
_FORMAT = 1  # bump when the records' meaning changes: older records are then ignored


def kernel_key(entry: dict[str, Any], items: list[dict[str, Any]], backend: str, cpu: str, threads: int,
               options: dict[str, Any]) -> str:
    """What decides the numbers a loaded artifact computes on this device, as one hex key."""
    from edge_runtime import __version__  # at call time: the package is initialized by then

    parts = {
        "format": _FORMAT,
        "edge_runtime": __version__,
        "artifact": entry["name"],
        "files": sorted(item["sha256"].lower() for item in items),
        "backend": backend,
        "cpu": cpu,
        "threads": threads,
        "options": {key: str(value) for key, value in sorted(options.items())},
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


class Verifications:
    """The records of one device cache directory (None: no records, every check in full)."""

    def __init__(self, directory: Path | None):
        self.directory = None if directory is None else Path(directory) / "verified"
        # Where the ownership check of a record starts: the device cache directory given to load()
        # (or the default cache root), as for the backends' entries in it, not the record's own
        # folder: no record is kept or trusted under a folder others can write (backends/_cache.py).
        self._root = None if directory is None else cache_root(Path(directory))
        problem = "" if self._root is None else private_problem(self._root, self._root)
        if problem:  # the backends warn about this cache root already: once is enough
            log.info("keeping no verification records in %s: %s", self._root, problem)
            self.directory = None

    # -- files --------------------------------------------------------------------------------
    def unverified(self, root: Path, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The items of `items` that must be hashed: all but those whose recorded signature and
        sha256 equal the file's now and the manifest's."""
        known = self._read_files()
        if not known:
            return list(items)
        todo = []
        for item in items:
            path = resolve(root, item["path"])
            record = known.get(_path_key(path))
            try:
                same = (isinstance(record, dict) and record.get("sha256") == item["sha256"].lower()
                        and record.get("stat") == signature(path))
            except OSError:  # missing: verify_files says so
                same = False
            if not same:
                todo.append(item)
        return todo

    def record_files(self, root: Path, items: list[dict[str, Any]], signatures: dict[str, list[int]]) -> None:
        """Remember that `items` matched their sha256 with the signatures taken before hashing
        (a write while hashing then leaves a signature that no longer matches). Only settled
        files are recorded; failing to write the record is logged, never raised."""
        if self.directory is None or not items:
            return
        now_ns = time.time_ns()
        settled = SETTLE_SECONDS * 1e9
        known = self._read_files()
        changed = False
        for item in items:
            path = resolve(root, item["path"])
            stat = signatures.get(str(path))
            if stat is None or now_ns - max(stat[1], stat[2]) < settled:
                continue
            known[_path_key(path)] = {"sha256": item["sha256"].lower(), "stat": stat}
            changed = True
        if changed:
            self._write(self.directory / "files.json", {"format": _FORMAT, "files": known})

    # -- kernels ------------------------------------------------------------------------------
    def golden_passed(self, key: str) -> bool:
        if self.directory is None or not self._private(self.directory / "golden" / f"{key}.json"):
            return False
        try:
            record = json.loads((self.directory / "golden" / f"{key}.json").read_text())
        except (OSError, ValueError):
            return False
        return isinstance(record, dict) and record.get("format") == _FORMAT and record.get("key") == key

    def record_golden(self, key: str, details: dict[str, Any]) -> None:
        if self.directory is not None:
            self._write(self.directory / "golden" / f"{key}.json", {"format": _FORMAT, "key": key} | details)

    # -- storage ------------------------------------------------------------------------------
    def _private(self, path: Path) -> bool:
        """A record lets a load skip work (hashing a file, all but one golden sample): trusted only
        where no one but this user (or root) could have written it (backends/_cache.py)."""
        problem = private_problem(path, self._root)
        if problem:
            log.warning("not using the verification record %s: %s; its checks run in full", path, problem)
        return not problem

    def _read_files(self) -> dict[str, Any]:
        if self.directory is None or not self._private(self.directory / "files.json"):
            return {}
        try:
            data = json.loads((self.directory / "files.json").read_text())
        except (OSError, ValueError):
            return {}
        files = data.get("files") if isinstance(data, dict) and data.get("format") == _FORMAT else None
        return files if isinstance(files, dict) else {}

    def _write(self, path: Path, data: dict[str, Any]) -> None:
        if private_problem(path.parent, self._root):  # said when read; not written where others could change it
            return
        try:
            make_cache_dir(path.parent, self._root)
            write_json(path, data)
        except OSError as exc:  # a read-only cache costs a full check next time, nothing else
            log.info("could not record a verification in %s: %s", path, exc)


def signatures_of(root: Path, items: list[dict[str, Any]]) -> dict[str, list[int]]:
    """Each existing item's stat signature, by resolved path (taken before hashing)."""
    found = {}
    for item in items:
        path = resolve(root, item["path"])
        try:
            found[str(path)] = signature(path)
        except OSError:
            pass
    return found


def _path_key(path: Path) -> str:
    return str(Path(path).resolve())
