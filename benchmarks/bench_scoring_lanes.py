#!/usr/bin/env python3
"""One scorer with the project's scoring threads against two single-thread scorers at once.

    python benchmarks/bench_scoring_lanes.py out/rpi4/tflite-int4.tflite --texts 64 --rounds 3

The searches' rankings (converters/core/search.py, `ranking_lanes`) score two candidates at once,
each with half of the scoring threads, where the machine has two cores or more. This times what
that choice rests on, for one artifact (.onnx or .tflite, opened by edge_runtime as the searches
open their candidates): a candidate scored on --texts of the built-in calibration texts (each
text alone, unpadded, as the TFLite searches run them; the artifact directory's tokenizer), per
candidate including the session start, as medians over --rounds of

- "one scorer": one session with DEFAULT_SHAPE.threads threads, the texts in turn;
- "two lanes": two sessions with one thread each, in two threads, each scoring all the texts
  (per candidate: the pair's wall time / 2).

Scoring only: a ranking's builds (Python, one at a time) overlap the other lane's scoring on top
of this. Prints one line per mode; --json writes them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _feeds(artifact: Path, count: int) -> list[dict]:
    import numpy as np
    from tokenizers import Tokenizer

    from converters.inputs.calibration import load_texts

    tokenizer = Tokenizer.from_file(str(artifact.parent / "tokenizer" / "tokenizer.json"))
    texts = load_texts().texts
    step = max(1, len(texts) // count)
    feeds = []
    for text in texts[::step][:count]:
        ids = tokenizer.encode(text).ids[:256]
        n = len(ids)
        feeds.append({"input_ids": np.array([ids], np.int64), "attention_mask": np.ones((1, n), np.int64),
                      "token_type_ids": np.zeros((1, n), np.int64)})
    return feeds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("artifact", type=Path, help="an .onnx or .tflite file inside an edge-convert directory")
    parser.add_argument("--texts", type=int, default=64, help="texts per candidate (default 64, RANKING_TEXTS)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if not args.artifact.is_file() or args.artifact.suffix not in (".onnx", ".tflite"):
        parser.error(f"{args.artifact}: not an .onnx or .tflite file")
    if not (args.artifact.parent / "tokenizer" / "tokenizer.json").is_file():
        parser.error(f"{args.artifact.parent}: no tokenizer/tokenizer.json (an edge-convert output directory)")

    from edge_runtime._bench_config import DEFAULT_SHAPE
    from edge_runtime.backends import open_session

    fmt = "tflite" if args.artifact.suffix == ".tflite" else "onnx"
    feeds = _feeds(args.artifact, args.texts)

    def score(threads: int) -> None:
        session = open_session(fmt, args.artifact, threads=threads)
        for feed in feeds:
            session.run(feed)

    def one_scorer() -> float:
        started = time.perf_counter()
        score(DEFAULT_SHAPE.threads)
        return time.perf_counter() - started

    def two_lanes() -> float:
        started = time.perf_counter()
        lanes = [threading.Thread(target=score, args=(1,)) for _ in range(2)]
        for lane in lanes:
            lane.start()
        for lane in lanes:
            lane.join()
        return (time.perf_counter() - started) / 2

    score(DEFAULT_SHAPE.threads)  # warm-up: file cache, lazy imports
    times: dict[str, list[float]] = {f"one scorer, {DEFAULT_SHAPE.threads} threads": [], "two lanes, 1 thread each": []}
    for _ in range(args.rounds):  # interleaved rounds
        times[f"one scorer, {DEFAULT_SHAPE.threads} threads"].append(one_scorer())
        times["two lanes, 1 thread each"].append(two_lanes())
    tokens = sum(f["input_ids"].shape[1] for f in feeds)
    from edge_runtime._device import detect

    device = detect(measure_int8=False)
    cpu = f"{device.cpu_model} ({' '.join(device.notable_features())})"
    print(f"{args.artifact.name}: {len(feeds)} texts ({tokens} tokens) per candidate; {cpu}")
    rows = {}
    for mode, values in times.items():
        rows[mode] = {"seconds_per_candidate": statistics.median(values), "rounds": values}
        print(f"  {mode:28s} {statistics.median(values):.3f} s per candidate (rounds: "
              + ", ".join(f"{v:.3f}" for v in values) + ")")
    if args.json:
        args.json.write_text(json.dumps({"artifact": str(args.artifact), "cpu": cpu, "texts": len(feeds),
                                         "tokens": tokens, "modes": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
