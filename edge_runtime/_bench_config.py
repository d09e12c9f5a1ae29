"""What edge-bench measures: BenchConfig, BenchConfigError naming the field at fault, and
DEFAULT_SHAPE, the one home of the shape the project's speed figures are taken at.

Apart from the measurement (edge_runtime._bench) so that the CLI, the input builder, the report
and the converter can share the settings without importing the measurement loop.
"""

from __future__ import annotations

from dataclasses import dataclass

from edge_runtime._errors import InputError
from edge_runtime._select import max_threads

__all__ = ["DEFAULT_SHAPE", "BenchConfig", "BenchConfigError", "BenchShape"]


@dataclass(frozen=True)
class BenchShape:
    """One input shape and thread count a latency is measured at."""

    batch: int
    seq: int
    threads: int


# The shape a speed figure is taken at unless it says otherwise: benchmarks/RESULTS.md's tables,
# edge-bench's default batch and length, the converter's latency in the manifest
# (`measured_on_converter`), its printed latency line and the threads its scoring sessions use. One place, so
# a figure and the code that measured it cannot drift apart. On a device, edge-bench's threads
# default to the profile's (or tuned) count instead: what edge_runtime.load() runs with there.
DEFAULT_SHAPE = BenchShape(batch=1, seq=128, threads=2)


class BenchConfigError(InputError):
    """A benchmark setting is invalid; `parameter` names the BenchConfig field."""

    def __init__(self, parameter: str, message: str):
        super().__init__(f"{parameter}: {message}")
        self.parameter = parameter


@dataclass(frozen=True)
class BenchConfig:
    """What to benchmark. Serialized into the result as `settings`.

    artifacts: names from the manifest; empty: the one edge_runtime.load() picks here, or every
        artifact with all_artifacts=True.
    threads: intra-op thread counts; None: this device's cached tuning result, else the profile's
        default (edge_runtime.load(tune=None): no tuning sweep is started).
    runs: timed runs per artifact x shape x threads, split into `rounds` rounds (as many rounds
        as runs when runs < rounds: every round times every artifact at least once).
    verify: check hashes and the golden sample at every load (as edge_runtime.load()).
    """

    artifacts: tuple[str, ...] = ()
    all_artifacts: bool = False
    seqs: tuple[int, ...] = (DEFAULT_SHAPE.seq,)
    batches: tuple[int, ...] = (DEFAULT_SHAPE.batch,)
    threads: tuple[int | None, ...] = (None,)
    runs: int = 50
    warmup: int = 5
    rounds: int = 5
    verify: bool = True

    def check(self) -> None:
        for name in ("seqs", "batches"):
            values = getattr(self, name)
            if not values or any(not isinstance(v, int) or v < 1 for v in values):
                raise BenchConfigError(name, f"needs positive integers, got {list(values)}")
        if not self.threads or any(
            t is not None and (not isinstance(t, int) or not 0 <= t <= max_threads()) for t in self.threads
        ):
            raise BenchConfigError(
                "threads", f"needs integers from 0 (physical cores) to {max_threads()} (8x the usable CPUs, "
                f"at least 64), got {list(self.threads)}"
            )
        for name, low in (("runs", 1), ("warmup", 0), ("rounds", 1)):
            value = getattr(self, name)
            if not isinstance(value, int) or value < low:
                raise BenchConfigError(name, f"needs an integer >= {low}, got {value!r}")
        if self.artifacts and self.all_artifacts:
            raise BenchConfigError("artifacts", "name artifacts or ask for all of them, not both")
