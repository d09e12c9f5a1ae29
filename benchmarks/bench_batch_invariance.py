"""What batch invariance costs: embed() throughput with batch_invariant=True (the default) vs
False, and how far a text's vector moves with its batch in each mode (issue 10).

    python benchmarks/bench_batch_invariance.py ARTIFACT_DIR [--artifact onnx-int8] \
        [--texts benchmarks/data/heldout_en.txt] [--batch-size 32] [--repeats 3] [--threads N]

Prints the CPU it ran on, texts/s in each mode and their ratio, and the largest per-element
difference between a text embedded alone and in batches of --batch-size. The ratio is the figure;
texts/s on a shared machine are noise (the script says how loaded the machine was).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

import edge_runtime


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def _rate(model, texts, batch_size, invariant, repeats) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        model.embed(texts, batch_size=batch_size, batch_invariant=invariant)
        best = min(best, time.perf_counter() - started)
    return len(texts) / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("artifacts", type=Path)
    parser.add_argument("--artifact", default="onnx-int8")
    parser.add_argument("--texts", type=Path, default=Path(__file__).parent / "data" / "heldout_en.txt")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args()

    # "#" lines are comments, as in every other reader of the held-out file (it opens with one).
    texts = [t for t in args.texts.read_text(encoding="utf-8").splitlines()
             if t.strip() and not t.lstrip().startswith("#")]
    model = edge_runtime.load(args.artifacts, artifact=args.artifact, threads=args.threads,
                              device_cache=False)
    model.embed(texts[: args.batch_size])  # warm-up
    alone = np.concatenate([model.embed([t]) for t in texts])
    drift = {}
    for invariant in (True, False):
        batched = model.embed(texts, batch_size=args.batch_size, batch_invariant=invariant)
        drift[invariant] = float(np.abs(batched - alone).max())
    load_before = os.getloadavg()[0]
    rate = {inv: _rate(model, texts, args.batch_size, inv, args.repeats) for inv in (True, False)}
    result = {
        "cpu": _cpu(),
        "cores": os.cpu_count(),
        "loadavg_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "artifact": args.artifact,
        "batch_dependent": model.batch_dependent,
        "threads": model.threads,
        "texts": len(texts),
        "batch_size": args.batch_size,
        "texts_per_s": {"batch_invariant": round(rate[True], 1), "batch_dependent": round(rate[False], 1)},
        "invariant_over_dependent_throughput": round(rate[True] / rate[False], 3),
        "max_abs_diff_vs_alone": {"batch_invariant": drift[True], "batch_dependent": drift[False]},
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
