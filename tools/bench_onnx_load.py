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
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
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


def _child(root: Path, name: str, threads: int, cache: str) -> dict:
    done = subprocess.run([sys.executable, "-c", CHILD, str(root), name, str(threads), cache],
                          capture_output=True, text=True, cwd=ROOT)
    if done.returncode:
        raise SystemExit(f"child failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, help="an edge-convert output directory")
    parser.add_argument("--artifact", default="onnx-int4")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    results: dict[str, list[dict]] = {mode: [] for mode in MODES}
    for r in range(args.rounds):
        cache = Path(tempfile.mkdtemp(prefix="bench-onnx-load-"))
        try:
            results["no-cache"].append(_child(args.root, args.artifact, args.threads, "-"))
            results["cache-create"].append(_child(args.root, args.artifact, args.threads, str(cache)))
            results["cache-reuse"].append(_child(args.root, args.artifact, args.threads, str(cache)))
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
    main()
