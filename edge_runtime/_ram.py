"""The memory this process may use: /proc/meminfo's MemAvailable, or less when its cgroup's limit
(a systemd unit's MemoryMax=, docker --memory, a Kubernetes limit) leaves less room.

MemAvailable is the host's: under MemoryMax=600M on a 22 GB host it says 22 GB, so a batch
sized to it got the service OOM-killed instead of split (Model.run), and selection ranked
artifacts against memory the process could never have. cgroup_limit() finds the process's
cgroup in /proc/self/cgroup and walks from it up to the hierarchy's root, because a limit may
be set on any ancestor (a slice; from inside a container, the mount's root is the container's
own cgroup) and the tightest one applies. Every path is read under `root` (_sysfs.py), so
recorded files test it; a file that is absent or unreadable means no limit there, never an error.
"""

from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass
from pathlib import Path

from edge_runtime._sysfs import read_int, read_text

__all__ = ["CgroupLimit", "available_mb", "cgroup_limit", "memory"]

# Where each version's memory files are (relative to the root), and their names: the limit, the
# usage, and the memory.stat key of the inactive file cache (hierarchical in both). Linux
# Documentation/admin-guide/cgroup-v2.rst and cgroup-v1/memory.rst.
_MOUNT = {2: "sys/fs/cgroup", 1: "sys/fs/cgroup/memory"}
_FILES = {
    2: ("memory.max", "memory.current", "inactive_file"),
    1: ("memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file"),
}

# cgroup v1 shows "no limit" as the largest page-aligned signed 64-bit count (PAGE_COUNTER_MAX
# pages: 9223372036854771712 with 4 KiB pages, 0x7FFFFFFFFFFF0000 with 64 KiB); v2 writes "max".
# No machine has 2**62 bytes.
_NO_LIMIT = 2**62


@dataclass(frozen=True)
class CgroupLimit:
    limit_mb: int  # the limit of the level with the least room
    available_mb: int  # that level's limit minus its usage (< 0 when over it), in MiB
    source: str  # the limit's file: "/sys/fs/cgroup/system.slice/edge-serve.service/memory.max"


def _own_cgroup(root: Path) -> tuple[int, str] | None:
    """(version, path inside the hierarchy) of this process's memory cgroup. /proc/self/cgroup
    has "ID:controllers:/path" lines: v1 hierarchies name theirs (memory among them), the v2 one
    is "0::/path". A v1 memory line wins: on a hybrid system the v2 tree has no memory controller."""
    v2 = None
    for line in (read_text(root, "proc/self/cgroup") or "").splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if "memory" in parts[1].split(","):
            return 1, parts[2].strip()
        if parts[0] == "0" and parts[1] == "":
            v2 = parts[2].strip()
    return None if v2 is None else (2, v2)


def _inactive_file(root: Path, rel: str, key: str) -> int:
    for line in (read_text(root, rel) or "").splitlines():
        name, _, value = line.partition(" ")
        if name == key and value.strip().isdigit():
            return int(value)
    return 0


def cgroup_limit(root: Path) -> CgroupLimit | None:
    """The tightest memory limit over this process's cgroup and its ancestors, with the room it
    leaves; None without one (no cgroup file, "max", v1's "unlimited", unreadable files).

    Usage leaves out the inactive file cache (memory.stat), as `docker stats` and the kubelet's
    working set do: the kernel reclaims it as the cgroup nears its limit, before any OOM kill,
    and a service that read its model files would otherwise count that cache as used for as long
    as it runs. memory.high (systemd MemoryHigh=) is not read: past it the kernel throttles and
    reclaims, it does not kill."""
    own = _own_cgroup(root)
    if own is None:
        return None
    version, path = own
    limit_file, usage_file, inactive_key = _FILES[version]
    # '..' parts (a cgroup outside this process's cgroup namespace) are dropped: the walk stays
    # under the mount. A level whose directory is not there (v1 in a container shows the host's
    # path, the mount holds only the container's own cgroup) reads as no limit.
    parts = [p for p in path.split("/") if p and p not in (".", "..")]
    best: CgroupLimit | None = None
    for depth in range(len(parts), -1, -1):
        level = posixpath.join(_MOUNT[version], *parts[:depth])
        limit = read_int(root, f"{level}/{limit_file}")
        if limit is None or limit >= _NO_LIMIT:
            continue
        usage = read_int(root, f"{level}/{usage_file}") or 0  # unreadable: the limit alone
        usage -= min(usage, _inactive_file(root, f"{level}/memory.stat", inactive_key))
        room_mb = (limit - usage) // 2**20
        if best is None or room_mb < best.available_mb:
            best = CgroupLimit(limit // 2**20, room_mb, f"/{level}/{limit_file}")
    return best


def _meminfo(root: Path) -> dict[str, int]:
    values = {}
    for line in (read_text(root, "proc/meminfo") or "").splitlines():
        key, _, rest = line.partition(":")
        fields = rest.split()
        if fields and fields[0].isdigit():
            values[key.strip()] = int(fields[0])  # kB
    return values


def _psutil_memory() -> tuple[int, int]:
    try:
        import psutil

        vm = psutil.virtual_memory()
        return vm.total // 2**20, vm.available // 2**20
    except ImportError:
        return 0, 0


def _capped(host_mb: int, limit: CgroupLimit | None) -> int:
    """The host's available MB or the cgroup's room, whichever is less. At least 1 under a limit:
    callers read 0 as "unknown" (_memory.fit, Model._budget_bytes) and would then not split a
    batch at all, exactly when the cgroup is full."""
    if limit is None:
        return host_mb
    room = max(1, limit.available_mb)
    return min(host_mb, room) if host_mb > 0 else room


def memory(root: Path, real: bool) -> tuple[int, int, CgroupLimit | None]:
    """(RAM MB, available MB, cgroup limit) as detect() records them. On the real root psutil
    stands in for what /proc/meminfo does not say (unreadable, or no MemAvailable: kernels
    before 3.14); under a recorded root a missing value stays 0, "unknown"."""
    mem = _meminfo(root)
    total_mb = mem.get("MemTotal", 0) // 1024
    host_mb = mem.get("MemAvailable", 0) // 1024
    if real and not (total_mb and "MemAvailable" in mem):
        psutil_total, psutil_available = _psutil_memory()
        total_mb = total_mb or psutil_total
        host_mb = psutil_available if "MemAvailable" not in mem else host_mb
    limit = cgroup_limit(root)
    return total_mb, _capped(host_mb, limit), limit


def available_mb(root: str | os.PathLike = "/") -> int:
    """The memory available now (not the cached snapshot of detect()): MemAvailable, or the room
    this process's cgroup limit leaves when that is less. 0 when neither is known."""
    path = Path(root)
    return memory(path, real=path.resolve() == Path("/"))[1]
