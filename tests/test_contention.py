"""CpuWait: the share of timed runs during which a task waited for a CPU (Linux PSI), and the
notes that flag timings taken on a busy machine (edge-convert's table, edge-bench, edge-tune)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from edge_runtime import _contention
from edge_runtime._contention import BUSY_SHARE, CpuWait, busy_note, worst_share

_PSI_LINES = "some avg10=1.00 avg60=2.00 avg300=3.00 total={}\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"


class _Clock:
    def __init__(self, *readings: float) -> None:
        self.readings = list(readings)

    def __call__(self) -> float:
        return self.readings.pop(0)


def test_share_is_stalled_time_over_wall_time_summed_over_blocks(tmp_path, monkeypatch):
    psi = tmp_path / "cpu"
    monkeypatch.setattr(_contention.time, "perf_counter", _Clock(10.0, 12.0, 20.0, 22.0))
    wait = CpuWait(psi)
    psi.write_text(_PSI_LINES.format(5_000_000))
    with wait:
        psi.write_text(_PSI_LINES.format(5_500_000))  # 0.5 s stalled in 2 s
    with wait:
        psi.write_text(_PSI_LINES.format(7_000_000))  # 1.5 s stalled in 2 s
    assert wait.share == pytest.approx(0.5) and wait.rounded_share == 0.5


def test_share_is_unknown_without_pressure_stall_information(tmp_path):
    for content in (None, "garbage\n", "some avg10=1 total=notanumber\n"):
        psi = tmp_path / "cpu"
        if content is None:
            psi.unlink(missing_ok=True)
        else:
            psi.write_text(content)
        with CpuWait(psi) as wait:
            pass
        assert wait.share is None and wait.rounded_share is None
    assert busy_note(None) == ""


def test_busy_note_and_worst_share():
    assert busy_note(BUSY_SHARE) == "" and busy_note(0.0) == ""
    note = busy_note(0.42)
    assert note.startswith("the CPU was busy during 42% of the timed runs")
    assert worst_share([None, 0.1, 0.3, None]) == 0.3 and worst_share([None]) is None and worst_share([]) is None


def _spin(seconds: float) -> None:
    stop = time.perf_counter() + seconds
    while time.perf_counter() < stop:
        pass


@pytest.mark.skipif(
    _contention._stalled_us(Path("/proc/pressure/cpu")) is None,
    reason="this kernel reports no CPU pressure-stall information (/proc/pressure/cpu)",
)
def test_real_pressure_is_high_with_more_busy_processes_than_cpus():
    """Two spinning processes per CPU we may use, plus one: something waits for a CPU nearly
    all the time, whatever else the machine runs (processes: threads would wait for the GIL,
    which is not a CPU wait)."""
    import multiprocessing
    import os

    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_spin, args=(0.6,)) for _ in range(2 * len(os.sched_getaffinity(0)) + 1)]
    with CpuWait() as wait:
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    assert wait.share is not None and wait.share > 0.3, wait.share


def test_edge_convert_prints_the_busy_note(capsys):
    from converters import cli
    from converters.pipeline import ConvertResult

    result = ConvertResult(Path("/tmp/out"), "x86-avx2", "feature-extraction", "tiny", [], 1.0)
    cli._print_result(result)
    assert "busy" not in capsys.readouterr().err
    result.timing_cpu_wait = 0.75
    cli._print_result(result)
    err = capsys.readouterr().err
    assert "note: the CPU was busy during 75% of the timed runs" in err
    assert "edge-bench /tmp/out --all" in err
