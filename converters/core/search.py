"""The one greedy search behind every "fit under an accuracy floor or a size budget" decision.

Every quantizer that mixes precisions asks the same question: which of its weights should take
the more expensive form (kept float instead of INT8, 8 bits instead of 4) so that the artifact
meets an accuracy floor, or is as accurate as it can be within a byte budget? ONNX INT8's FP32
fallback, the ONNX INT4 8-bit upgrades (W4A8 and MatMulNBits) and both TFLite recipes answer it
here, through a `Space` (their adapter), with one policy:

1. Start: nothing moved; judged on the validation texts. A floor already met ends the search.
2. Rank: each candidate moved alone, scored on a length-spread subset of the FIT texts (ranking
   is fitting, so validation texts never take part): gain = loss(start) - loss(moved alone),
   cost = the bytes the move adds (measured on the built candidate). Candidates without a gain
   are dropped; the rest are ordered by gain per added byte ("most error removed per byte").
3. Walk the ranking: a move that cannot fit the budget is skipped without being built; every
   other move is built on top of the accepted ones and judged on the validation texts, and
   kept only when the validation loss drops (a move that does not measurably help is never
   paid for, in bytes or in float compute).
4. Stop: a floor stops at the first accepted move that meets it; at most `Floor.cap` of the
   candidates may move (beyond half of its weights an "INT8" artifact is mostly float): the
   cap or the end of the ranking with the floor unmet raises SearchExhausted, naming what was
   tried. A budget walks the whole ranking (it only ever adds accuracy).

Every step is recorded in one shape (see `_step`) for the manifest: the start, then one entry
per ranked candidate with `accepted` and, when not, `why`.

Structured pruning's `prune=auto` is not such a choice of independent moves (each step prunes
further from the last): it walks the core's other strategy, converters/core/descent.py.

Why one policy: before issue 9 the five searches disagreed (ONNX ranked "quantize only this",
TFLite "keep only this float"; ONNX capped the fallback at 50 %, TFLite had no cap; floor searches
kept moves that did not help). Ranking in the direction the search moves measures exactly what a
step will buy; the measurements behind the choice are in benchmarks/RESULTS.md (runs N and BM).
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from converters._console import count
from converters._errors import AccuracyError

__all__ = ["RANKING_TEXTS", "Budget", "Floor", "ProbeSpace", "SearchExhausted", "SearchResult", "Space", "greedy_search",
           "LaneScorer", "ranking_lanes", "search_loss"]

K = TypeVar("K", bound=Hashable)
Metrics = dict[str, float]
Progress = Callable[[str], None]

# Beyond half of its candidates in the expensive form, the artifact is no longer what its
# name says (an "INT8" model mostly FP32): the floor search gives up and says so. A definition:
# no search of MiniLM's comes near it (7-8 moved in each; benchmarks/RESULTS.md run BM).
DEFAULT_CAP = 0.5
# A budget search's weight of a floor miss against search_loss: a minimum cosine 0.01 under its
# floor costs 0.04, more than the whole loss of a typical INT4 candidate (~0.03). Measured on
# rpi5's TFLite INT4 (benchmarks/RESULTS.md run N): without it, the search spent the budget on
# the mean and left the artifact 0.012 under its floor.
SHORTFALL_WEIGHT = 4.0
# How many fit texts (spread evenly along the length order: Reference.spread) rank the
# candidates. Chosen on the validation split (benchmarks/RESULTS.md run N).
RANKING_TEXTS = 64
# Which way step 2 ranks: "start" moves each candidate alone from the start (what a step of the
# walk will buy from there); "full" leaves each alone in the cheap form with every other moved
# (what skipping it costs at the other end). Measured on MiniLM (benchmarks/RESULTS.md run BM):
# "start" reached jetson-orin's INT8 floor with 1.77 MB less kept float and both rpi5 INT4
# budgets at a lower validation loss (held-out agreeing); "full" stays for measuring only.
RANK_FROM = "start"
# The GIL switch interval while ranking lanes run (seconds; Python's default is 0.005): see
# _rank_in_lanes.
LANE_SWITCH_INTERVAL = 0.001


def search_loss(metrics: Metrics) -> float:
    """What every search minimises: mean loss plus a quarter of the worst sample's (floors check
    both; the worst sample alone is too noisy to rank on). NaN compares as the worst loss."""
    mean = metrics.get("cosine_mean", metrics.get("logits_cosine_mean", 1.0))
    worst = metrics.get("cosine_min", metrics.get("logits_cosine_min", 1.0))
    value = (1.0 - mean) + 0.25 * (1.0 - worst)
    return value if math.isfinite(value) else math.inf


class Space(Protocol[K]):
    """One quantizer's candidates, as the search sees them. `build` writes the candidate with
    the keys in `moved` in their expensive form (where it is scored from) and returns its size
    in bytes; `rank` and `judge` score the candidate built last: `rank` on the fit texts'
    ranking subset, `judge` on the validation texts. A Space may also offer
    `rank_each(moves, done) -> [(bytes, metrics)]` to rank many candidates at once
    (ProbeSpace's lanes); without it they are built and ranked in turn. And `walking()`, a
    context the walk runs in, with `accept()` called after each trial the walk keeps: a Space
    that judges trials from where they differ from the last accepted one (TFLite's)."""

    def candidates(self) -> Sequence[K]: ...

    def label(self, key: K) -> str: ...

    def build(self, moved: frozenset[K]) -> int: ...

    def rank(self) -> Metrics: ...

    def judge(self) -> Metrics: ...


@dataclass(frozen=True)
class LaneScorer:
    """A ranking scorer that may score `lanes` candidates at once: `score(path, threads)`, with
    `threads` the scoring threads one call may use (None: the scorer's default). Called like a
    plain scorer, `scorer(path)`, it uses its default. `through(run)`, when given: the same
    metrics of the same texts through a runner the caller supplies (feeds -> outputs, as the
    file's session would answer), for a Space that can answer them faster than the whole file
    (converters/tflite/prefix.py, converters/onnx/prefix.py). `opener(path, threads)`, when given:
    that runner for a file, the session `score` would run it with (the target's arithmetic), for
    a Space that runs parts of files (converters/onnx/prefix.py)."""

    score: Callable[[Path, int | None], Metrics]
    lanes: int = 1
    through: Callable[[Callable[[dict], dict]], Metrics] | None = None
    opener: Callable[[Path, int | None], Callable[[dict], dict]] | None = None

    def __post_init__(self):
        if self.lanes < 1:
            raise ValueError(f"lanes must be >= 1, got {self.lanes}")

    def __call__(self, path: Path) -> Metrics:
        return self.score(path, None)


class ProbeSpace:
    """What the Spaces of the quantizers share: each candidate is written to a probe file and
    scored there, `rank` on the fit texts' ranking subset, `judge` on the validation texts (both
    callables path -> metrics). Subclasses give `candidates` and `write(moved, path)`.

    A `rank` that is a LaneScorer with `lanes` > 1: the ranking builds and scores that many
    candidates at once (`rank_each`), each lane in its own probe file, the scorer called with
    the scoring threads split between the lanes. Builds hold the GIL (protobuf, ai-edge-quantizer) and run
    one at a time under a lock; scoring runs in onnxruntime / the interpreter, which release it,
    so one lane builds while the other scores. Every candidate's metrics are the same numbers
    as with one lane: the kernels' results do not depend on their thread count (checked by
    tests/test_search_lanes.py), so the ranking and every artifact are too."""

    def __init__(self, probe: Path, rank: Callable[[Path], Metrics], judge: Callable[[Path], Metrics]):
        self.probe, self._rank, self._judge = Path(probe), rank, judge
        self.lanes = rank.lanes if isinstance(rank, LaneScorer) else 1

    def label(self, key: Hashable) -> str:
        return str(key)

    def write(self, moved: frozenset, path: Path) -> int:
        """Write the candidate with `moved` in the expensive form to `path`; its size in bytes."""
        raise NotImplementedError

    def build(self, moved: frozenset) -> int:
        return self.write(moved, self.probe)

    def rank(self) -> Metrics:
        return self._rank(self.probe)

    def judge(self) -> Metrics:
        return self._judge(self.probe)

    def walking(self) -> contextlib.AbstractContextManager:
        """The context the walk runs in: a subclass may judge its trials from where they differ
        from the last accepted one there (converters/tflite/prefix.py)."""
        return contextlib.nullcontext()

    def accept(self) -> None:
        """The walk accepted the candidate last built (called inside `walking`)."""

    def rank_each(self, moves: Sequence[frozenset], done: Callable[[int], None] = lambda n: None
                  ) -> list[tuple[int, Metrics]]:
        """(bytes, ranking metrics) of each of `moves`, in their order; `done(n)` after each."""
        if self.lanes == 1 or len(moves) < 2:
            return _rank_in_turn(self, moves, done)
        return _rank_in_lanes(self, moves, done)

    def rank_cut(self, cuts, moves: Sequence[frozenset], done: Callable[[int], None] = lambda n: None
                 ) -> list[tuple[int, Metrics]]:
        """rank_each with the candidates scored from their first change (a prefix scorer `cuts`:
        converters/tflite/prefix.py, converters/onnx/prefix.py): while it runs, `self._cuts` is
        `cuts` (a subclass's `write` cuts what it writes), and a file `cuts.is_cut` is scored
        through `cuts.runner(path, threads)`; `cuts` is closed after."""
        whole = self._rank

        def score(path: Path, threads: int | None) -> Metrics:
            if cuts.is_cut(path):
                return whole.through(cuts.runner(path, threads))
            return whole.score(path, threads)

        self._rank, self._cuts = LaneScorer(score, whole.lanes), cuts
        try:
            return ProbeSpace.rank_each(self, moves, done)
        finally:
            self._rank, self._cuts = whole, None
            cuts.close()


def _rank_in_turn(space: Space, moves: Sequence[frozenset], done: Callable[[int], None]) -> list[tuple[int, Metrics]]:
    results = []
    for move in moves:
        results.append((space.build(move), space.rank()))
        done(len(results))
    return results


def _lane_threads(lanes: int) -> int:
    """The threads each lane's scorer gets: the project's scoring threads (DEFAULT_SHAPE) split
    between the lanes, at least one."""
    from edge_runtime._bench_config import DEFAULT_SHAPE

    return max(1, DEFAULT_SHAPE.threads // lanes)


def _rank_in_lanes(space: ProbeSpace, moves: Sequence[frozenset], done: Callable[[int], None]
                   ) -> list[tuple[int, Metrics]]:
    import queue
    import threading
    from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

    lanes = min(space.lanes, len(moves))
    threads = _lane_threads(lanes)
    probes: queue.SimpleQueue[Path] = queue.SimpleQueue()
    paths = [space.probe.with_name(f"{space.probe.stem}.lane{i}{space.probe.suffix}") for i in range(lanes)]
    for path in paths:
        probes.put(path)
    building, counting = threading.Lock(), threading.Lock()
    stop = threading.Event()
    finished = [0]

    def one(move: frozenset) -> tuple[int, Metrics]:
        if stop.is_set():  # an earlier candidate failed, or the user interrupted
            raise _Cancelled
        path = probes.get()
        try:
            with building:
                size = space.write(move, path)
            metrics = space._rank.score(path, threads)
        except BaseException:
            stop.set()  # before this lane could take another candidate
            raise
        finally:
            probes.put(path)
        with counting:
            finished[0] += 1
            done(finished[0])
        return size, metrics

    pool = ThreadPoolExecutor(max_workers=lanes, thread_name_prefix="rank-lane")
    # A lane whose scorer returns from native code waits for the GIL while the other lane builds
    # (Python): beside builds without pause a 1-thread scorer of MiniLM's TFLite INT4 took 1.79x
    # its time alone at the default switch interval (5 ms), 1.52x at 1 ms, the builds as fast
    # (benchmarks/bench_lane_gil.py, RESULTS.md run BE). Shorter while the lanes run.
    switch = sys.getswitchinterval()
    sys.setswitchinterval(min(switch, LANE_SWITCH_INTERVAL))
    # numpy's BLAS on one thread while lanes run: a lane's build (the W4A8 8-bit GPTQ: Cholesky
    # factors, block updates) ran OpenBLAS on both cores beside the other lane's scorer, and its idle
    # threads spin. One thread: the ONNX INT4 ranking 13.6 -> 10.8-11.5 s in masked rpi4 conversions,
    # every file byte-identical (benchmarks/RESULTS.md run BK).
    from threadpoolctl import threadpool_limits

    blas = threadpool_limits(limits=1, user_api="blas")
    try:
        futures = [pool.submit(one, move) for move in moves]
        wait(futures, return_when=FIRST_EXCEPTION)
    finally:
        stop.set()  # on an error or Ctrl-C: no lane starts another candidate
        pool.shutdown(wait=True, cancel_futures=True)
        sys.setswitchinterval(switch)
        blas.restore_original_limits()
        for path in paths:
            path.unlink(missing_ok=True)
    # The first failure in the candidates' order, as the sequential ranking would raise it.
    for future in futures:
        if not future.cancelled() and future.exception() is not None \
                and not isinstance(future.exception(), _Cancelled):
            raise future.exception()
    return [future.result() for future in futures]


class _Cancelled(Exception):
    """A lane's candidate not started because the ranking is stopping."""


def ranking_lanes() -> int:
    """How many candidates the pipeline's rankings score at once on this machine: two where
    there are two cores or more. On MiniLM's TFLite INT4 ranking (a 2-vCPU Xeon, AVX2 code),
    two 1-thread interpreters score a candidate in 0.54 s against 0.63 s for one 2-thread
    interpreter (a row at a time, short rows: little for a second thread to share), and one
    lane's build (~0.3 s of Python) runs while the other scores; benchmarks/RESULTS.md run AK."""
    from edge_runtime._select import physical_cores

    return 2 if physical_cores() >= 2 else 1


@dataclass(frozen=True)
class Floor:
    """Stop rule: the validation metrics meet a floor. `failures(metrics)` lists what misses
    (empty: met; NaN never meets); at most `cap` of the candidates may move. `shortfall`, as
    Budget's: a floor on a metric search_loss does not see (a classifier's top-1 agreement)
    must weigh in the objective, or the walk accepts moves that polish the logits' cosine while
    flipping labels, and ends further from the floor than it started."""

    failures: Callable[[Metrics], list[str]]
    cap: float = DEFAULT_CAP
    shortfall: Callable[[Metrics], float] | None = None


@dataclass(frozen=True)
class Budget:
    """Stop rule: the artifact stays within `bytes`; every move that fits and helps is taken.
    `shortfall(metrics)`: how far the artifact's accuracy floor is missed (0 when met): while
    it is missed, the miss counts SHORTFALL_WEIGHT times in the loss, so that moves lifting the
    metric the floor checks win over moves that only polish the mean."""

    bytes: int
    shortfall: Callable[[Metrics], float] | None = None


@dataclass
class SearchResult(Generic[K]):
    moved: list[K]  # in the order they were accepted
    metrics: Metrics  # validation metrics of start + moved
    bytes: int
    steps: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


class SearchExhausted(AccuracyError):
    """A floor search tried what its policy allows and the floor is still not met."""

    def __init__(self, message: str, result: SearchResult):
        self.result = result
        super().__init__(message)


def _step(label: str, *, gain: float, added_bytes: int, accepted: bool, why: str | None = None,
          bytes_: int | None = None, metrics: Metrics | None = None) -> dict[str, Any]:
    step: dict[str, Any] = {"candidate": label, "gain": gain, "added_bytes": added_bytes, "accepted": accepted}
    if bytes_ is not None:
        step["bytes"] = bytes_
    if metrics is not None:
        step["metrics"] = metrics
    if why is not None:
        step["why"] = why
    return step


def _summary(metrics: Metrics) -> str:
    return ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())


def greedy_search(
    space: Space[K],
    goal: Floor | Budget,
    *,
    move: str,
    progress: Progress = lambda message: None,
    start_metrics: Metrics | None = None,
) -> SearchResult[K]:
    """Run the policy of this module's docstring over `space` toward `goal`. `move` names the
    expensive form in messages and records ("kept float", "8-bit"). `start_metrics`: the start's
    validation metrics when the caller has them already (saves one evaluation)."""
    started = time.perf_counter()
    keys = list(space.candidates())
    shortfall = goal.shortfall

    def objective(m: Metrics) -> float:
        return search_loss(m) + (SHORTFALL_WEIGHT * shortfall(m) if shortfall is not None else 0.0)

    start_bytes = space.build(frozenset())
    metrics = space.judge() if start_metrics is None else start_metrics
    steps: list[dict[str, Any]] = [{"candidate": None, "moved": [], "bytes": start_bytes, "metrics": metrics}]
    result = SearchResult([], metrics, start_bytes, steps)
    if isinstance(goal, Floor) and not goal.failures(metrics):
        result.seconds = time.perf_counter() - started
        return result

    # Rank on the fit texts. The start is re-scored there: the gains must compare like with like.
    full = RANK_FROM == "full"
    everything = frozenset(keys)
    full_bytes = space.build(everything) if full else start_bytes
    base = objective(space.rank())
    gains: dict[K, tuple[float, int]] = {}
    label = f"ranking {len(keys)} candidates ({move} alone)" if not full else \
        f"ranking {len(keys)} candidates (each left out of all {move})"
    def done(n: int) -> None:
        progress(count(f"  {label}", n, len(keys)))

    done(0)
    moves = [everything - {key} if full else frozenset({key}) for key in keys]
    rank_each = getattr(space, "rank_each", None)  # a Space that can score candidates at once
    ranked_alone = rank_each(moves, done) if rank_each else _rank_in_turn(space, moves, done)
    for key, (size, scored) in zip(keys, ranked_alone):
        # gain: the loss a move removes (from the start), or that leaving it out adds (to all moved)
        gains[key] = ((objective(scored) - base, full_bytes - size) if full
                      else (base - objective(scored), size - start_bytes))
    ranked = sorted((k for k in keys if gains[k][0] > 0),
                    key=lambda k: gains[k][0] / max(gains[k][1], 1), reverse=True)
    for key in keys:
        if gains[key][0] <= 0:
            steps.append(_step(space.label(key), gain=gains[key][0], added_bytes=gains[key][1],
                               accepted=False, why="no gain when ranked"))

    cap = max(1, int(len(keys) * goal.cap)) if isinstance(goal, Floor) else len(keys)
    walk = _Walk(space, goal, objective, metrics, start_bytes, steps)
    walking = getattr(space, "walking", None) if ranked else None  # nothing to walk: nothing to set up
    with walking() if walking else contextlib.nullcontext():
        walk.run(ranked, gains, cap, len(keys), move, progress)

    result = SearchResult(walk.moved, walk.metrics, walk.size, steps, time.perf_counter() - started)
    if isinstance(goal, Floor):
        failures = goal.failures(walk.metrics)
        if failures:
            raise SearchExhausted(
                f"still below the accuracy floor ({'; '.join(failures)}) after the {move} search: "
                f"{len(keys)} candidates ranked, {len(ranked)} helped alone on the fit texts, "
                f"{walk.tried} tried on the validation texts, {len(walk.moved)} accepted (cap {cap}): "
                + (", ".join(space.label(k) for k in walk.moved) or "none"),
                result,
            )
    return result


class _Walk(Generic[K]):
    """Step 3 of the policy: the ranked moves built on the accepted ones and judged; the state
    the search reports (moved, metrics and bytes of the accepted model, moves tried)."""

    def __init__(self, space: Space[K], goal: Floor | Budget, objective: Callable[[Metrics], float],
                 metrics: Metrics, size: int, steps: list[dict[str, Any]]):
        self.space, self.goal, self.objective, self.steps = space, goal, objective, steps
        self.moved: list[K] = []
        self.metrics, self.loss, self.size, self.tried = metrics, objective(metrics), size, 0

    def run(self, ranked: list[K], gains: dict[K, tuple[float, int]], cap: int, candidates: int, move: str,
            progress: Progress) -> None:
        space, goal, steps = self.space, self.goal, self.steps
        walk = f"trying {move} moves"
        for index, key in enumerate(ranked):
            progress(count(f"  {walk}", index, len(ranked)))
            gain, added = gains[key]
            name = space.label(key)
            if isinstance(goal, Budget) and self.size + added > goal.bytes:
                steps.append(_step(name, gain=gain, added_bytes=added, accepted=False, why="over the size budget"))
                continue
            if len(self.moved) >= cap:
                steps.append({"candidate": None, "why": f"cap reached: {cap} of {candidates} candidates moved, "
                                                        f"{len(ranked) - index} ranked ones not tried"})
                break
            trial_size = space.build(frozenset(self.moved) | {key})
            if isinstance(goal, Budget) and trial_size > goal.bytes:
                steps.append(_step(name, gain=gain, added_bytes=added, accepted=False, why="over the size budget",
                                   bytes_=trial_size))
                continue
            self.tried += 1
            trial = space.judge()
            accepted = self.objective(trial) < self.loss
            steps.append(_step(name, gain=gain, added_bytes=added, accepted=accepted, bytes_=trial_size,
                               metrics=trial, why=None if accepted else "no gain on the validation texts"))
            if not accepted:
                continue
            getattr(space, "accept", lambda: None)()
            self.moved.append(key)
            self.metrics, self.loss, self.size = trial, self.objective(trial), trial_size
            progress(f"  {move} {len(self.moved)}: {name} -> {_summary(trial)}, {self.size / 1e6:.2f} MB")
            if isinstance(goal, Floor) and not goal.failures(self.metrics):
                break
        if ranked:
            progress(count(f"  {walk}", len(ranked), len(ranked)))
