"""Was the CPU free while we timed? Linux's pressure-stall information answers it.

`/proc/pressure/cpu`'s "some" line counts the microseconds during which at least one runnable task
waited for a CPU (Linux 4.20+ with PSI on). Read before and after a timed stretch, the difference
over the wall time is the share of that stretch in which something was queued for a CPU: about 0
when the timed work had the cores to itself, near 1 when other jobs (or more threads than cores)
competed with it. The load average cannot say this: it is smoothed over a minute and counts our
own threads as load.

Used around the converter's latency figures and edge-bench's timed runs, so a number taken on a
busy machine says so instead of passing for the device's speed.
"""

from __future__ import annotations

import time
from pathlib import Path

__all__ = ["BUSY_SHARE", "CpuWait", "busy_note", "worst_share"]

# Above this share of the timed stretch with a task queued for a CPU, p50s are flagged. Measured
# with benchmarks/cpu_wait_probe.py on a 2-vCPU AMD EPYC Zen 4 (AVX-512 VNNI; MiniLM x86-avx2
# INT8, 2 threads, batch 1, 128 tokens, 40 runs): alone, shares 0.002-0.008 (p50 10.5-13.7 ms);
# next to two spinning processes, 0.91-1.00 (p50 38-40 ms).
BUSY_SHARE = 0.10

_PSI = Path("/proc/pressure/cpu")


def _stalled_us(path: Path) -> int | None:
    try:
        for line in path.read_text().splitlines():
            if line.startswith("some "):
                return int(line.rsplit("total=", 1)[1])
    except (OSError, ValueError, IndexError):  # no PSI (old kernel, psi=0, not Linux)
        return None
    return None


class CpuWait:
    """Adds up, over every `with` block, the time something waited for a CPU and the wall time.

    `share` is None where the kernel does not report pressure stalls."""

    def __init__(self, path: str | Path = _PSI) -> None:
        self._path = Path(path)
        self._stalled_us = 0
        self._wall_s = 0.0
        self._readable = True
        self._start: tuple[int | None, float] | None = None

    def __enter__(self) -> CpuWait:
        self._start = (_stalled_us(self._path), time.perf_counter())
        return self

    def __exit__(self, *exc) -> None:
        stalled, wall = _stalled_us(self._path), time.perf_counter()
        assert self._start is not None, "__exit__ without __enter__"
        before, start = self._start
        self._start = None
        if before is None or stalled is None:
            self._readable = False
            return
        self._stalled_us += max(0, stalled - before)
        self._wall_s += wall - start

    @property
    def share(self) -> float | None:
        """Share of the timed wall time during which a task waited for a CPU (0-1)."""
        if not self._readable or self._wall_s <= 0:
            return None
        return min(1.0, self._stalled_us / 1e6 / self._wall_s)

    @property
    def rounded_share(self) -> float | None:
        """`share` to 3 decimals, for JSON records."""
        share = self.share
        return None if share is None else round(share, 3)


def worst_share(shares) -> float | None:
    """The largest of several `share`s, ignoring unknown ones (None when all are)."""
    known = [share for share in shares if share is not None]
    return max(known) if known else None


def busy_note(share: float | None, what: str = "p50s") -> str:
    """A warning line when timings (`what`) were taken on a busy CPU, else ""."""
    if share is None or share <= BUSY_SHARE:
        return ""
    # Not only other jobs: artifacts timed together (edge-bench --all, the converter's table) leave
    # their threads spinning into each other's turns; on an idle 2-vCPU Zen 4 three ONNX artifacts
    # timed together measured 0.15-0.17 where each alone measured 0.002-0.003.
    return (
        f"the CPU was busy during {share:.0%} of the timed runs (a task waited for a CPU, Linux "
        f"pressure-stall information: other jobs, or the threads of artifacts timed together): these "
        f"{what} may be slower than this machine is when quiet; time again without other jobs "
        "running, or one artifact at a time"
    )
