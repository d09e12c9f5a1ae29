"""What the TFLite searches' walks spend judging their trials, cut or whole.

Runs edge-convert in this process and times, inside every TFLite search's walk (the trials built
on the accepted moves and judged on the validation texts: converters/core/search.py), each
trial's build and judge, and counts the trials judged from their first changed op on
(converters/tflite/prefix.py, `follow`), and reads the resident memory before and after each
walk. `--whole` judges every trial whole, as before the walk followed its accepted moves, to
compare the same code both ways. The export's second process is
not involved (the walks run in this one).

    .venv/bin/python benchmarks/bench_walk_judges.py [--whole] [--json F] -- --target rpi4 --out /tmp/w --force
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_gc_pauses import add_convert_arguments, convert_arguments, report  # noqa: E402 - after the path


def _rss_gb() -> float:
    """This process's resident memory now (Linux)."""
    import os

    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e9


class Walks:
    """Per walk: trials, the seconds of their builds and judges, and how many were judged cut."""

    def __init__(self):
        self.walks: list[dict] = []
        self.inside = False

    def patch(self, space_class, whole: bool) -> None:
        walking, judge, write = space_class.walking, space_class.judge, space_class.write
        walks = self

        @contextlib.contextmanager
        def timed_walking(space):
            walks.walks.append({"trials": 0, "cut": 0, "build_seconds": 0.0, "judge_seconds": 0.0,
                                "rss_gb_before": _rss_gb()})
            started, walks.inside = time.perf_counter(), True
            try:
                with (contextlib.nullcontext() if whole else walking(space)):
                    yield
            finally:
                walks.inside = False
                walks.walks[-1].update(walk_seconds=time.perf_counter() - started, rss_gb_after=_rss_gb())

        def timed_judge(space):
            if not walks.inside:
                return judge(space)
            cut = space._cuts is not None and space._cuts.is_cut(space.probe)
            started = time.perf_counter()
            try:
                return judge(space)
            finally:
                walk = walks.walks[-1]
                walk["trials"] += 1
                walk["cut"] += cut
                walk["judge_seconds"] += time.perf_counter() - started

        def timed_write(space, moved, path):
            if not walks.inside:
                return write(space, moved, path)
            started = time.perf_counter()
            try:
                return write(space, moved, path)
            finally:
                walks.walks[-1]["build_seconds"] += time.perf_counter() - started

        space_class.walking, space_class.judge, space_class.write = timed_walking, timed_judge, timed_write

    def to_list(self) -> list[dict]:
        return [{k: round(v, 2) if isinstance(v, float) else v for k, v in walk.items()} for walk in self.walks]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--whole", action="store_true", help="judge every trial whole (the walk before it followed)")
    add_convert_arguments(parser)
    args = parser.parse_args(argv)
    convert_args = convert_arguments(parser, args)

    from converters.cli import main as edge_convert
    from converters.tflite.space import TfliteSpace

    walks = Walks()
    walks.patch(TfliteSpace, args.whole)
    started = time.perf_counter()
    code = edge_convert(convert_args, standalone_mode=False)
    figures = {"command": sys.argv, "whole": args.whole, "wall_seconds": round(time.perf_counter() - started, 1),
               "max_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 3), "walks": walks.to_list()}
    report(figures, args.json)
    return code or 0


if __name__ == "__main__":
    sys.exit(main())
