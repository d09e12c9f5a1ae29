#!/usr/bin/env python3
"""Do a TFLite artifact's validation metrics depend on how the texts are batched? Each TFLite
artifact of an edge-convert output (the built-in MiniLM) is scored on the validation texts in
padded batches of 16 twice: in the texts' own order, and sorted by length
(converters/core/validate.metric_batches, what edge-convert records since run AL); the figures
and the seconds each takes, two rounds each, alternating.

    .venv/bin/python benchmarks/bench_metric_batches.py /tmp/rpi4
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edge_runtime._bench_config import DEFAULT_SHAPE  # noqa: E402 - after the sys.path line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="an edge-convert output of the built-in model with TFLite artifacts")
    parser.add_argument("--threads", type=int, default=DEFAULT_SHAPE.threads)
    args = parser.parse_args(argv)
    manifest = json.loads((args.out / "manifest.json").read_text())
    names = [a["name"] for a in manifest["artifacts"] if a["format"] == "tflite"]
    if not names:
        parser.error(f"{args.out} has no TFLite artifact")

    from converters.core.validate import compute_metrics, reference_outputs
    from converters.inputs.calibration import load_texts, split_texts
    from converters.inputs.source import load_source
    from edge_runtime.backends import open_session

    source = load_source(None)
    given = reference_outputs(source, split_texts(load_texts(None)).validation.texts)
    orders = {"texts' own order": given, "sorted by length": given.spread(None)}
    print("| artifact | batches | seconds (2 rounds) | cosine_mean | cosine_min |\n|---|---|---|---:|---:|")
    for name in names:
        entry = next(a for a in manifest["artifacts"] if a["name"] == name)
        session = open_session("tflite", args.out / entry["files"][0]["path"], threads=args.threads)
        session.run({k: v[:1] for k, v in given.batches[0].items()})  # the interpreter's first-run set-up
        seconds: dict[str, list[float]] = {label: [] for label in orders}
        metrics = {}
        for _ in range(2):
            for label, reference in orders.items():
                start = time.perf_counter()
                metrics[label] = compute_metrics(source, reference, session.run, name)
                seconds[label].append(time.perf_counter() - start)
        for label in orders:
            m = metrics[label]
            print(f"| {name} | {label} | {' / '.join(f'{s:.2f}' for s in seconds[label])} | "
                  f"{m['cosine_mean']:.12f} | {m['cosine_min']:.12f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
