#!/usr/bin/env python3
"""A ranking lane's scorer beside the other lane's candidate builds, at several GIL switch intervals.

    python benchmarks/bench_lane_gil.py out/rpi4 --texts 64 --rounds 3 --intervals 0.005,0.001

The searches' rankings (converters/core/search.py, `_rank_in_lanes`) score a candidate in one lane
(a single-thread session: native code, the GIL released) while the other lane builds the next one
(ai-edge-quantizer: Python, the GIL held). Each time the scorer returns from native code it waits
for the GIL, up to the interpreter's switch interval (5 ms by default) while the build runs. This
times one 1-thread scorer of the directory's tflite-int4.tflite on --texts built-in texts (each
alone, as the TFLite rankings run them), per candidate, as medians over interleaved --rounds:
alone, and beside a thread that builds INT4 candidates from the directory's tflite-fp32.tflite
without pause (more build time than a ranking has, so an upper bound of the wait), at each
--intervals value; it also counts the builds done meanwhile. Prints a Markdown table; --json
writes the figures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_scoring_lanes import _feeds  # noqa: E402 - after the path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("directory", type=Path, help="an edge-convert output directory of a Pi target (rpi4, rpi5)")
    parser.add_argument("--texts", type=int, default=64, help="texts per candidate (default 64, RANKING_TEXTS)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--intervals", default="0.005,0.001", help="switch intervals in seconds, comma-separated")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    scored, source = args.directory / "tflite-int4.tflite", args.directory / "tflite-fp32.tflite"
    for path in (scored, source, args.directory / "tokenizer" / "tokenizer.json"):
        if not path.is_file():
            parser.error(f"{path}: missing (give the output directory of an rpi4 or rpi5 conversion)")
    try:
        intervals = [float(v) for v in args.intervals.split(",")]
    except ValueError:
        parser.error(f"--intervals: comma-separated seconds, got {args.intervals!r}")
    if not intervals or min(intervals) <= 0:
        parser.error("--intervals: give positive seconds")

    from converters.tflite import gptq_int4
    from converters.tflite.config import GptqInt4Config
    from converters.tflite.flatbuffer import compact_copy
    from edge_runtime._device import detect
    from edge_runtime.backends import open_session

    feeds = _feeds(scored, args.texts)

    def score() -> float:
        started = time.perf_counter()
        session = open_session("tflite", scored, threads=1)
        for feed in feeds:
            session.run(feed)
        return time.perf_counter() - started

    default = sys.getswitchinterval()
    times: dict[str, list[float]] = {"alone": []}
    builds: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-lane-gil-") as tmp:
        work = Path(tmp)
        compact_copy(source, work / "compact.tflite")
        builder = gptq_int4.Int4Builder(work / "compact.tflite", GptqInt4Config(), source=source)
        weights = sorted(w.buffer for w in builder.int4)
        builder.build(work / "warm.tflite", set())
        score()  # warm-up: file cache, lazy imports

        def beside_builds(interval: float) -> tuple[float, float]:
            stop, done = threading.Event(), [0]

            def build_loop() -> None:
                while not stop.is_set():
                    builder.build(work / "candidate.tflite", {weights[done[0] % len(weights)]})
                    done[0] += 1

            sys.setswitchinterval(interval)
            thread = threading.Thread(target=build_loop)
            try:
                thread.start()
                seconds = score()
            finally:
                stop.set()
                thread.join()
                sys.setswitchinterval(default)
            return seconds, done[0] / seconds

        try:
            for round_ in range(args.rounds):  # interleaved, the order turned every other round
                order = intervals if round_ % 2 == 0 else intervals[::-1]
                times["alone"].append(score())
                for interval in order:
                    key = f"beside builds, switch interval {interval * 1000:g} ms"
                    seconds, rate = beside_builds(interval)
                    times.setdefault(key, []).append(seconds)
                    builds.setdefault(key, []).append(rate)
        finally:
            sys.setswitchinterval(default)
    device = detect(measure_int8=False)
    cpu = f"{device.cpu_model} ({' '.join(device.notable_features())})"
    tokens = sum(f["input_ids"].shape[1] for f in feeds)
    print(f"{scored}: {len(feeds)} texts ({tokens} tokens) per candidate, 1 scoring thread; {cpu}; "
          f"medians of {args.rounds} interleaved rounds")
    print("| scorer | s per candidate | x alone | builds per second meanwhile |")
    print("|---|---:|---:|---:|")
    alone = statistics.median(times["alone"])
    rows = {}
    for mode, values in times.items():
        median = statistics.median(values)
        rate = statistics.median(builds[mode]) if mode in builds else None
        rows[mode] = {"seconds_per_candidate": median, "rounds": values, "builds_per_second": rate}
        print(f"| {mode} | {median:.3f} | {median / alone:.2f}x | {'-' if rate is None else f'{rate:.2f}'} |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"command": sys.argv, "cpu": cpu, "texts": len(feeds), "tokens": tokens,
                                         "modes": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
