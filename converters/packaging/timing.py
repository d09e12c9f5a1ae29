"""Latency of the delivered artifacts on this machine, timed together at the end of a conversion.

Timed one artifact after the other, as each was built, the p50s of one conversion disagreed with
themselves: INT8 18.5 ms next to FP32 18.6 ms in the table, 10.6 vs 18.9 ms under edge-bench's
interleaved rounds minutes later (benchmarks/RESULTS.md run AA, a 2-vCPU Zen 4 VM): other tenants of
a shared host slow one pass and not the next, invisibly to this VM. So every delivered artifact's
session stays open and the artifacts take turns: `rounds` rounds, a few runs each, the order rotated
every round, a short pause between two artifacts' blocks (edge_runtime._rounds.SWITCH_PAUSE_S). A burst of
load then hits every artifact of a round alike, and each artifact's ratio against its FP32 baseline
(the FP32 artifact of its format) is the median of its per-round ratios, like edge-bench's.

The figures stay this machine's (its kernels, its ISA), batch 1 and one sequence length: what a
device does is edge-bench's job on the device.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime import backends
from edge_runtime._bench_config import DEFAULT_SHAPE
from edge_runtime._rounds import rounds_for, time_in_rounds

__all__ = ["Timing", "baselines", "time_delivered", "time_together", "timing_feeds"]

WARMUP_RUNS = 3  # untimed runs per artifact before the first round (allocations, weight packing)


@dataclass(frozen=True)
class Timing:
    p50_ms: float  # median over every timed run of the artifact
    round_p50_ms: list[float]  # median of each round
    # median over the rounds of (this artifact's round p50 / its baseline's round p50); None
    # without a baseline
    vs_baseline: float | None
    cpu_wait_share: float | None  # share of its timed runs with a task queued for a CPU
    baseline: str | None = None  # the artifact `vs_baseline` is taken against
    runs: int = 0  # timed runs in all
    rounds: int = 0  # rounds they were spread over

    def record(self, seq: int) -> dict[str, Any]:
        """The manifest's `measured_on_converter` (batch 1, `seq` tokens, DEFAULT_SHAPE.threads)."""
        return {"latency_ms_p50": round(self.p50_ms, 3),
                "vs_fp32": None if self.vs_baseline is None else round(self.vs_baseline, 3),
                "baseline": self.baseline, "batch": 1, "sequence": seq, "threads": DEFAULT_SHAPE.threads,
                "runs": self.runs, "rounds": self.rounds, "timed": "all artifacts together, interleaved rounds",
                "cpu_wait_share": None if self.cpu_wait_share is None else round(self.cpu_wait_share, 3)}


def timing_feeds(input_names: list[str], vocab_size: int, seq: int) -> dict[str, np.ndarray]:
    """Batch 1, `seq` tokens of fixed random ids (no padding): the same tensors for every artifact."""
    rng = np.random.default_rng(0)
    feeds = {"input_ids": rng.integers(5, vocab_size, (1, seq), dtype=np.int64),
             "attention_mask": np.ones((1, seq), np.int64)}
    if "token_type_ids" in input_names:
        feeds["token_type_ids"] = np.zeros((1, seq), np.int64)
    return feeds


def time_together(sessions: Mapping[str, Any], feeds: dict[str, np.ndarray], runs: int, rounds: int,
                  baselines: Mapping[str, str | None] | None = None,
                  progress: Callable[[str], None] = lambda message: None) -> dict[str, Timing]:
    """Time each of `sessions` (name -> an object with `.run(feeds)`) `runs` times in all, spread
    over `rounds` interleaved rounds (edge_runtime._rounds, edge-bench's loop); each one's ratio
    against its baseline (`baselines`: name -> one of the names, or None) round by round."""
    baselines = dict(baselines or {})
    unknown = sorted({b for b in baselines.values() if b is not None and b not in sessions})
    if unknown:
        raise ValueError(f"baseline {unknown[0]!r} is not one of the timed artifacts {sorted(sessions)}")
    timed = time_in_rounds({name: partial(session.run, feeds) for name, session in sessions.items()},
                           runs, rounds, warmup=WARMUP_RUNS,
                           on_round=lambda done: progress(f"timing round {done.number}/{done.total} done"))
    for name, exc in timed.failures.items():  # a delivered artifact that cannot run is a bug: say which
        raise RuntimeError(f"timing {name}: its run failed: {type(exc).__name__}: {exc}") from exc
    return {name: Timing(timed.p50_ms(name), timed.round_p50_ms(name),
                         None if baselines.get(name) is None else timed.ratio(name, baselines[name]),
                         timed.waits[name].share, baselines.get(name), runs, len(timed.times[name]))
            for name in sessions}


def baselines(entries: list[dict[str, Any]]) -> dict[str, str | None]:
    """Each artifact's baseline: the unpruned FP32 artifact of its own format (what quantizing or
    pruning buys in that runtime, as the issues' figures are stated: INT8 vs plain onnxruntime FP32,
    TFLite INT8 vs TFLite FP32), else the unpruned ONNX FP32 one, else any unpruned FP32 one."""
    fp32 = [e for e in entries if e["precision"] == "fp32" and not e.get("pruning")]
    fallback = next((e["name"] for e in fp32 if e["format"] == "onnx"), fp32[0]["name"] if fp32 else None)
    return {e["name"]: next((f["name"] for f in fp32 if f["format"] == e["format"]), fallback) for e in entries}


def time_delivered(stage: Path, entries: list[dict[str, Any]], feeds: dict[str, np.ndarray], runs: int,
                   rounds: int, progress: Callable[[str], None] = lambda message: None) -> dict[str, Timing]:
    """Open each packaged artifact of `entries` (its first file, in `stage`) with this machine's
    device backend and DEFAULT_SHAPE.threads, all at once, and time them together."""
    sessions = {e["name"]: backends.open_session(e["format"], stage / e["files"][0]["path"],
                                                 threads=DEFAULT_SHAPE.threads) for e in entries}
    against = baselines(entries)
    named = sorted({b for b in against.values() if b is not None})
    progress(f"timing {len(sessions)} artifact(s) together: {runs} runs each in {rounds_for(runs, rounds)} "
             f"interleaved rounds" + (f", ratios against {', '.join(named)}" if named else ""))
    return time_together(sessions, feeds, runs, rounds, against, progress)
