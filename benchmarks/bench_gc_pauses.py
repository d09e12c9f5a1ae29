"""How long Python's cyclic garbage collector pauses an edge-convert run, per generation.

Runs edge-convert in this process with a gc callback that times every collection, and prints the
count and seconds of each generation's collections with the conversion's own result. `--no-freeze`
turns off what converters/_shared.py does once the model is loaded (gc.freeze until the run ends),
to measure the run as it was before. The export's second process is not counted (its own
interpreter, which does not freeze).

    .venv/bin/python benchmarks/bench_gc_pauses.py [--no-freeze] -- --target rpi4 --out /tmp/gc --force
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


class Pauses:
    """Count and seconds of collections per generation (gc.callbacks; a collection runs in the
    thread that triggered it, and only one at a time)."""

    def __init__(self):
        self.count = [0, 0, 0]
        self.seconds = [0.0, 0.0, 0.0]
        self._started: dict[int, float] = {}

    def __call__(self, phase: str, info: dict) -> None:
        now, thread = time.perf_counter(), threading.get_ident()
        if phase == "start":
            self._started[thread] = now
        elif thread in self._started:
            generation = info["generation"]
            self.count[generation] += 1
            self.seconds[generation] += now - self._started.pop(thread)

    def to_dict(self) -> dict:
        return {f"generation {g}": {"collections": self.count[g], "seconds": round(self.seconds[g], 2)}
                for g in range(3)}


def add_convert_arguments(parser: argparse.ArgumentParser) -> None:
    """--json and edge-convert's arguments after --: what the in-process conversion benchmarks
    take (this one, bench_walk_judges.py)."""
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("convert_args", nargs=argparse.REMAINDER, help="edge-convert's arguments, after --")


def convert_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[str]:
    convert_args = args.convert_args[1:] if args.convert_args[:1] == ["--"] else args.convert_args
    if not convert_args:
        parser.error("give edge-convert's arguments after --, e.g. -- --target rpi4 --out /tmp/bench --force")
    return convert_args


def report(figures: dict, json_path: Path | None) -> None:
    print(json.dumps(figures, indent=1))
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(figures, indent=1) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-freeze", action="store_true", help="do not freeze the loaded heap (the run before)")
    add_convert_arguments(parser)
    args = parser.parse_args(argv)
    convert_args = convert_arguments(parser, args)

    import converters._shared as shared
    from converters.cli import main as edge_convert

    if args.no_freeze:
        shared._freeze_loaded_heap = lambda: False
    pauses = Pauses()
    gc.callbacks.append(pauses)
    started = time.perf_counter()
    try:
        code = edge_convert(convert_args, standalone_mode=False)
    finally:
        gc.callbacks.remove(pauses)
    figures = {"command": sys.argv, "freeze": not args.no_freeze, "wall_seconds": round(time.perf_counter() - started, 1),
               **pauses.to_dict()}
    report(figures, args.json)
    return code or 0


if __name__ == "__main__":
    sys.exit(main())
