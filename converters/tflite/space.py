"""A TFLite recipe's search candidates as the shared search sees them (converters/core/search.py).

Each candidate is the recipe's model with some FULLY_CONNECTED weights moved to the builder's
expensive form (INT8 instead of INT4, float instead of INT8), written to a probe file. When the
scorers can take a runner (core/search.py's LaneScorer.through), the ranking's candidates and the
walk's trials are scored from their first changed op on (prefix.py): the same metrics, bit for
bit, in less time.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from pathlib import Path

from converters.core.search import LaneScorer, ProbeSpace
from converters.tflite.prefix import PrefixCuts

__all__ = ["TfliteSpace"]

log = logging.getLogger(__name__)

Score = Callable[[Path], dict[str, float]]


class TfliteSpace(ProbeSpace):
    """A TFLite recipe's candidates as the shared search sees them (converters/core/search.py):
    FULLY_CONNECTED weights (FP32 buffer indices) moved to the builder's expensive form (INT8
    instead of INT4, or float instead of INT8), each candidate written to `probe`."""

    def __init__(self, builder, candidates: list[int], probe: Path, rank: Score, judge: Score):
        super().__init__(probe, rank, judge)
        self.builder, self._candidates = builder, candidates
        self._cuts: PrefixCuts | None = None  # while ranking or walking: candidates scored from where they differ

    def candidates(self) -> list[int]:
        return self._candidates

    def label(self, key: int) -> str:
        return self.builder.label(key)

    def write(self, moved: frozenset[int], path: Path) -> int:
        self.builder.build(path, set(moved))
        size = path.stat().st_size  # the whole candidate's: the cost the search weighs
        if self._cuts is not None:
            self._cuts.cut(path)
        return size

    def rank_each(self, moves, done=lambda n: None):
        """The shared ranking, each candidate scored from its first changed op on (prefix.py)
        when the ranking scorer can take a runner; the same metrics, bit for bit."""
        cuts = self._open_cuts(self._rank, "start", follow=False)
        if cuts is None:
            return super().rank_each(moves, done)
        return self.rank_cut(cuts, moves, done)

    @contextlib.contextmanager
    def walking(self):
        """The walk's trials judged from their first changed op on (prefix.py, its start moved to
        each accepted trial) when the judge can take a runner; the same metrics, bit for bit."""
        cuts = self._open_cuts(self._judge, "walk", follow=True)
        self._cuts = cuts
        try:
            yield
        finally:
            self._cuts = None
            if cuts is not None:
                cuts.close()

    def judge(self):
        if self._cuts is not None and self._cuts.is_cut(self.probe):
            return self._judge.through(self._cuts.runner(self.probe, None))
        return super().judge()

    def accept(self):
        if self._cuts is not None:
            self._cuts.accept(self.probe)

    def _open_cuts(self, scorer, name: str, follow: bool) -> PrefixCuts | None:
        """Cut points of the start model (nothing moved) for `scorer`, or None: it cannot take
        a runner, or this reader finds none (every candidate scored whole)."""
        if not isinstance(scorer, LaneScorer) or scorer.through is None:
            return None
        start = self.probe.with_name(f"{self.probe.stem}.{name}.tflite")
        self.builder.build(start, set())
        try:
            cuts = PrefixCuts(start, start.parent, follow)
        except Exception as exc:  # noqa: BLE001 -- a model this reader does not know: score whole
            log.info("scoring every candidate whole (no cut points read from %s: %s)", start.name, exc)
            return None
        finally:
            start.unlink(missing_ok=True)
        if not cuts.active:
            cuts.close()
            return None
        return cuts
