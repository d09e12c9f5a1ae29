#!/usr/bin/env python3
"""Load time of an ONNX artifact with and without edge_runtime's optimized-model cache.

    python tools/bench_onnx_load.py ARTIFACT_DIR --artifact onnx-int4 [--rounds 7] [--threads 2]

Every measurement is a new Python process (nothing warm but the OS page cache), modes interleaved
round by round so drifting load on a shared machine hits them alike:
- no-cache:      edge_runtime.load(..., device_cache=False)
- cache-create:  an empty cache directory: the first load saves the optimized graph
- cache-reuse:   the same directory again: the load opens the saved graph
Each child reports edge_runtime.load's time (hash check, session, golden sample) and its RSS
after one 128-token run. Medians over rounds are printed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
from _bench_child import ChildError, run_child, user_path  # noqa: E402 - after the path

MODES = ("no-cache", "cache-create", "cache-reuse")

CHILD = r"""
import json, sys, time
import numpy as np, psutil
import edge_runtime
root, name, threads, cache = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
started = time.perf_counter()
model = edge_runtime.load(root, artifact=name, threads=threads, device_cache=False if cache == "-" else cache)
load_s = time.perf_counter() - started
ids = np.full((1, 128), 1000, np.int64)
feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
if any(i["name"] == "token_type_ids" for i in model.manifest["inputs"]):
    feeds["token_type_ids"] = np.zeros_like(ids)
model.run(feeds)
print(json.dumps({"load_ms": load_s * 1000, "rss_mb": psutil.Process().memory_info().rss / 1e6,
                  "state": getattr(model._session, "optimized_cache_state", None)}))
"""


def _child(mode: str, root: Path, name: str, threads: int, cache: str) -> dict:
    done = run_child(f"the {mode} load of {root}::{name}",
                     [sys.executable, "-c", CHILD, str(root), name, str(threads), cache], cwd=ROOT)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(ROOT))  # this checkout's edge_runtime
    from edge_runtime._bench_config import DEFAULT_SHAPE

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    # Made absolute here: the children run with cwd=ROOT (tools/_bench_child.py).
    parser.add_argument("root", type=user_path, help="an edge-convert output directory")
    parser.add_argument("--artifact", default="onnx-int4")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=DEFAULT_SHAPE.threads)
    args = parser.parse_args(argv)
    if not (args.root / "manifest.json").is_file():
        parser.error(f"{args.root}: no manifest.json; give an edge-convert output directory")
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, got {args.rounds}")
    try:
        _run(args)
    except ChildError as exc:
        print(f"bench_onnx_load: error: {exc}", file=sys.stderr)
        return 1
    return 0


def _run(args: argparse.Namespace) -> None:
    results: dict[str, list[dict]] = {mode: [] for mode in MODES}
    for r in range(args.rounds):
        cache = Path(tempfile.mkdtemp(prefix="bench-onnx-load-"))
        try:
            for mode in MODES:
                where = "-" if mode == "no-cache" else str(cache)
                results[mode].append(_child(mode, args.root, args.artifact, args.threads, where))
        finally:
            shutil.rmtree(cache, ignore_errors=True)
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)

    print(f"\n{args.root.name} {args.artifact}, {args.threads} threads, medians of {args.rounds} rounds\n")
    print("| mode | cache state | load ms | RSS MB after one run |")
    print("|---|---|---:|---:|")
    for mode, rows in results.items():
        states = sorted({str(row["state"]) for row in rows})
        print(f"| {mode} | {', '.join(states)} | {statistics.median(r['load_ms'] for r in rows):.0f} | "
              f"{statistics.median(r['rss_mb'] for r in rows):.0f} |")


if __name__ == "__main__":
    sys.exit(main())
