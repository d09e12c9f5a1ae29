"""Reading /proc and /sys files under a root directory, never raising.

Device detection (_device.py), sensors (_sensors.py) and the cgroup memory limit (_cgroup.py)
read through these, so that recorded samples of real devices (tests/data/devices/<name>/) and
qemu-user's sysroot stand in for the host's files, and a missing or unreadable file is None
(the caller falls back) instead of an error.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["read_int", "read_text"]


def read_text(root: Path, rel: str) -> str | None:
    try:
        return (root / rel).read_text(encoding="utf-8", errors="replace")
    except (OSError, ValueError):  # ValueError: an embedded NUL in a crafted path
        return None


def read_int(root: Path, rel: str) -> int | None:
    """The file's text as a decimal integer; None when absent, unreadable or not a number
    (cgroup v2 writes "max" for no limit)."""
    text = read_text(root, rel)
    try:
        return int(text.strip()) if text is not None else None
    except ValueError:
        return None
