#!/usr/bin/env python3
"""Memory over many runs: RSS of one loaded model after warm-up and every --every calls.

    .venv/bin/python benchmarks/bench_rss_growth.py OUT_DIR --artifact onnx-int8 --runs 10000

A leak shows as growth that keeps climbing with the call count; allocator arenas settle during
the warm-up. Texts are the benchmark's held-out sentences, cycled, each call embedding one text
(the device case: batch 1, the text's own length). Prints a Markdown table; --json writes the
samples. The tiny-model version with a bound is tests/test_runtime_concurrency.py.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import sys
import time
from pathlib import Path

import psutil

import edge_runtime

ROOT = Path(__file__).resolve().parents[1]


def rss_mb() -> tuple[float, float]:
    """(RSS, anonymous RSS) in MB, from /proc/self/status where readable."""
    anon = float("nan")
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                anon = int(line.split()[1]) / 1024
    except OSError:
        pass
    return psutil.Process().memory_info().rss / 2**20, anon


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path, help="artifact directory (edge-convert's output)")
    parser.add_argument("--artifact", default=None, help="artifact name (default: load()'s choice)")
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--every", type=int, default=1000, help="sample RSS every N calls")
    parser.add_argument("--texts", type=Path, default=ROOT / "benchmarks" / "data" / "heldout_en.txt")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    texts = [t for t in args.texts.read_text(encoding="utf-8").splitlines() if t.strip()]
    model = edge_runtime.load(args.root, artifact=args.artifact)
    for i in range(args.warmup):
        model.embed([texts[i % len(texts)]])
    gc.collect()
    start = time.perf_counter()
    samples = [{"calls": 0, "rss_mb": rss_mb()[0], "rss_anon_mb": rss_mb()[1]}]
    for i in range(1, args.runs + 1):
        model.embed([texts[i % len(texts)]])
        if i % args.every == 0 or i == args.runs:
            gc.collect()
            rss, anon = rss_mb()
            samples.append({"calls": i, "rss_mb": rss, "rss_anon_mb": anon})
            print(f"{i}/{args.runs} calls, RSS {rss:.1f} MB", file=sys.stderr, flush=True)
    seconds = time.perf_counter() - start

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    name = model.artifact["name"]
    print(f"{args.root} {name}, {cpu}, {args.runs} calls after {args.warmup} warm-up "
          f"({seconds:.0f} s)\n")
    print("| calls | RSS MB | RssAnon MB | growth since warm-up MB |")
    print("|---:|---:|---:|---:|")
    for s in samples:
        print(f"| {s['calls']} | {s['rss_mb']:.1f} | {s['rss_anon_mb']:.1f} | "
              f"{s['rss_mb'] - samples[0]['rss_mb']:+.1f} |")
    if args.json:
        args.json.write_text(json.dumps({"artifact": name, "cpu": cpu, "samples": samples}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
