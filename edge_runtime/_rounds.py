"""Interleaved timing rounds: the one loop behind every latency ratio this project reports.

Several runners (sessions, artifacts, benchmark variants) are timed in turns: `rounds` rounds, each
giving every runner its share of the runs in blocks, the order rotated every round so nobody always
follows the same neighbour. On a shared host a burst of load from another tenant then slows every
runner of a round alike, and a ratio taken round by round (`Rounds.ratio`: the median of the
per-round p50 ratios) survives it where a ratio of two p50s taken minutes apart does not
(benchmarks/RESULTS.md runs AA and AB).

Used by edge-bench (edge_runtime._bench), edge-tune's sweeps (edge_runtime._tune), edge-convert's
final timing (converters/packaging/timing.py) and the benchmark scripts; it needs only the standard
library.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from edge_runtime._contention import CpuWait

__all__ = ["SWITCH_PAUSE_S", "Round", "Rounds", "rotated", "rounds_for", "runs_in_round", "time_in_rounds"]

# Before each block. onnxruntime's intra-op threads spin for a while after a run: without a pause
# the previous runner's threads take a core from the next one (measured on MiniLM INT8: p50 10.1 ms
# right after another session, 8.5 ms after 50 ms), and the converter's busy-CPU note fired.
SWITCH_PAUSE_S = 0.05

K = TypeVar("K", bound=Hashable)


def rotated(keys: list[K], round_no: int) -> list[K]:
    """The order of round `round_no` (from 0): shifted by one each round."""
    if not keys:
        return []
    shift = round_no % len(keys)
    return keys[shift:] + keys[:shift]


def rounds_for(runs: int, rounds: int) -> int:
    """How many rounds `runs` runs make: `rounds`, or fewer when runs < rounds (every round times
    every runner at least once)."""
    return min(rounds, runs)


def runs_in_round(runs: int, rounds: int, round_no: int) -> int:
    """How many of `runs` runs fall in round `round_no`: spread evenly, the first rounds take the
    remainder."""
    return runs // rounds + (1 if round_no < runs % rounds else 0)


@dataclass
class Round(Generic[K]):
    """One finished round, for progress callbacks and per-round records."""

    number: int  # from 1
    total: int  # rounds in all
    order: list[K]
    times: dict[K, list[float]]  # seconds of each timed run in this round
    wait: CpuWait  # this round's timed blocks, every runner's


@dataclass
class Rounds(Generic[K]):
    """Seconds of every timed run, per runner, one list per round (empty for a round in which the
    runner did not run: it had failed, or had no run left)."""

    times: dict[K, list[list[float]]]
    waits: dict[K, CpuWait]  # per runner, over all its timed blocks
    failures: dict[K, Exception] = field(default_factory=dict)  # runners that raised, and what

    def round_p50_ms(self, key: K) -> list[float]:
        return [statistics.median(t) * 1e3 for t in self.times[key] if t]

    def p50_ms(self, key: K) -> float:
        """The median over every timed run of `key` (not the median of its round medians)."""
        return statistics.median(t for r in self.times[key] for t in r) * 1e3

    def ratio(self, key: K, baseline: K) -> float | None:
        """Median over the rounds of (key's round p50 / baseline's round p50), over the rounds in
        which both ran; None when there is none."""
        pairs = [(statistics.median(a), statistics.median(b))
                 for a, b in zip(self.times[key], self.times[baseline]) if a and b]
        return statistics.median(a / b for a, b in pairs) if pairs else None


def time_in_rounds(
    runners: Mapping[K, Callable[[], Any]],
    runs: int,
    rounds: int,
    *,
    block: int | None = None,
    warmup: int = 0,
    pause_s: float = SWITCH_PAUSE_S,
    rewarm: bool = False,
    spins: Callable[[K], bool] | None = None,
    budget_s: float | None = None,
    on_round: Callable[[Round[K]], None] | None = None,
) -> Rounds[K]:
    """Time each runner (a call that runs its model once) `runs` times in all, spread over
    `rounds` rounds (fewer when runs < rounds: every round times every runner at least once).

    block: timed runs per turn; None = a runner's whole share of the round in one turn.
    warmup: untimed runs of each runner before the first round.
    pause_s: sleep before each turn; rewarm: one untimed run after it (reloads the caches the
    previous runner evicted). spins(key) False: that runner's threads do not spin after a run
    (e.g. spinning switched off), so the turn after it needs no pause.
    budget_s: stop after the first round that ends past this many seconds (at least 2 rounds run).
    A runner that raises (an Exception, not Ctrl-C) is recorded in `failures` and not run again;
    the others go on. `on_round` is called after every round (e.g. to keep finished rounds when
    a later one is interrupted).
    """
    if runs < 1 or rounds < 1:
        raise ValueError(f"runs and rounds must be at least 1 (got runs={runs}, rounds={rounds})")
    if block is not None and block < 1:
        raise ValueError(f"block must be at least 1 (got {block})")
    rounds = rounds_for(runs, rounds)
    keys = list(runners)
    result: Rounds[K] = Rounds({k: [] for k in keys}, {k: CpuWait() for k in keys})

    def attempt(key: K) -> bool:
        try:
            runners[key]()
        except Exception as exc:  # noqa: BLE001 - the backend's own error types; recorded, not hidden
            result.failures[key] = exc
            return False
        return True

    for key in keys:
        for _ in range(warmup):
            if not attempt(key):
                break
    started, previous = time.perf_counter(), None
    for round_no in range(rounds):
        order = rotated(keys, round_no)
        times: dict[K, list[float]] = {k: [] for k in keys}
        wanted = runs_in_round(runs, rounds, round_no)
        wait = CpuWait()
        while True:
            turns = [k for k in order if k not in result.failures and len(times[k]) < wanted]
            if not turns:
                break
            for key in turns:
                count = min(block or wanted, wanted - len(times[key]))
                if previous is None or spins is None or spins(previous):
                    time.sleep(pause_s)
                previous = key
                if rewarm and not attempt(key):
                    continue
                with wait, result.waits[key]:
                    for _ in range(count):
                        start = time.perf_counter()
                        if not attempt(key):
                            break
                        times[key].append(time.perf_counter() - start)
        for key in keys:
            result.times[key].append(times[key])
        if on_round is not None:
            on_round(Round(round_no + 1, rounds, order, times, wait))
        if budget_s is not None and round_no >= 1 and time.perf_counter() - started > budget_s:
            break
    return result
