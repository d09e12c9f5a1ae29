"""Reading manifest.json's bytes before anything is checked: bounded and non-blocking."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from edge_runtime._errors import ManifestError

__all__ = ["MAX_MANIFEST_BYTES", "read_manifest_bytes"]

# manifest.json is read whole to be parsed; a real one is a few kB (every artifact's files, golden
# samples and settings), so 16 MiB is no limit on a manifest edge-convert writes, and a bound on
# what a replaced file can make a device read before anything is checked (edge-serve reads it
# before its load; a signed load reads it before its signature is checked: _signing_files.py).
MAX_MANIFEST_BYTES = 16 << 20


def read_manifest_bytes(path: Path) -> bytes:
    """The bytes of the manifest file `path`, ManifestError unless it is a regular file of at most
    MAX_MANIFEST_BYTES: opened without blocking (a FIFO put there would hang the reader) and
    checked before it is read whole (a huge file would exhaust a small device's memory)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise ManifestError(f"cannot read {path}: {exc}") from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise ManifestError(f"{path} is not a regular file: not an edge-convert manifest")
        if info.st_size > MAX_MANIFEST_BYTES:
            raise ManifestError(f"{path} is {info.st_size} bytes; a manifest is at most {MAX_MANIFEST_BYTES} "
                                "(edge-convert's are a few kB): not an edge-convert manifest")
        try:
            return handle.read(MAX_MANIFEST_BYTES + 1)
        except OSError as exc:
            raise ManifestError(f"cannot read {path}: {exc}") from None
