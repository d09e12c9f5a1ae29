#!/usr/bin/env python3
"""How steady are edge-convert's latency ratios on this machine? Repeats the converter's own timing
(converters/packaging/timing.py: every artifact of DIR timed together in interleaved rounds, each
ratio the median of the per-round ratios against the FP32 artifact of its format) with several round shapes
(rounds x runs per round), the shapes taking turns within every repetition so they share the
machine's noise, and reports each shape's spread of ratios over the repetitions.

    .venv/bin/python benchmarks/bench_timing_rounds.py OUT_DIR --reps 30 --shapes 4x5,8x5,10x2 \
        --json benchmarks/results/timing_rounds.json

Only this machine's kernels (the figures name its CPU and flags); nothing here decides anything for
a device.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from converters.packaging.timing import baselines, time_together, timing_feeds
from edge_runtime import backends
from edge_runtime._bench_config import DEFAULT_SHAPE
from edge_runtime._device import detect
from edge_runtime._manifest import read_manifest


def _shape(text: str) -> tuple[int, int]:
    try:
        rounds, per_round = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected ROUNDSxRUNS, e.g. 4x5") from None
    if rounds < 1 or per_round < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: rounds and runs per round must be at least 1")
    return rounds, per_round


def _summary(values: list[float]) -> dict[str, float]:
    return {"median": float(np.median(values)), "p10": float(np.percentile(values, 10)),
            "p90": float(np.percentile(values, 90)), "max": float(max(values))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dir", type=Path, help="an edge-convert output directory with an ONNX FP32 artifact")
    parser.add_argument("--reps", type=int, default=30, help="repetitions of every shape (default 30)")
    parser.add_argument("--shapes", default="4x5,8x5", help="ROUNDSxRUNS per round, comma-separated")
    parser.add_argument("--seq", type=int, default=DEFAULT_SHAPE.seq, help="tokens per input (batch 1)")
    parser.add_argument("--json", type=Path, help="write every repetition's figures here")
    args = parser.parse_args(argv)
    try:
        shapes = [_shape(s) for s in args.shapes.split(",") if s.strip()]
    except argparse.ArgumentTypeError as exc:
        parser.error(f"--shapes {exc}")
    if args.reps < 1:
        parser.error("--reps must be at least 1")
    manifest = read_manifest(args.dir)
    entries = [e for e in manifest["artifacts"] if backends.backend_available(e["format"])]
    against = baselines(entries)
    if not any(against.values()):
        parser.error(f"{args.dir} has no FP32 artifact this machine can run: nothing to take ratios against")
    tokenizer = next((f["path"] for f in manifest.get("tokenizer", {}).get("files", [])
                      if f["path"].endswith("tokenizer.json")), None)
    vocab = json.loads((args.dir / tokenizer).read_text()).get("model", {}).get("vocab", {}) if tokenizer else {}
    feeds = timing_feeds([i["name"] for i in manifest["inputs"]], max(len(vocab), 1000), args.seq)
    sessions = {e["name"]: backends.open_session(e["format"], args.dir / e["files"][0]["path"],
                                                 threads=DEFAULT_SHAPE.threads) for e in entries}
    reps: list[dict] = []
    try:
        for rep in range(args.reps):
            shift = rep % len(shapes)
            row = {}
            for rounds, per_round in shapes[shift:] + shapes[:shift]:
                timed = time_together(sessions, feeds, rounds * per_round, rounds, against)
                row[f"{rounds}x{per_round}"] = {
                    name: {"vs_fp32": t.vs_baseline, "baseline": t.baseline, "p50_ms": t.p50_ms,
                           "p50_ratio": t.p50_ms / timed[t.baseline].p50_ms if t.baseline else None,
                           "round_p50_ms": t.round_p50_ms}
                    for name, t in timed.items()}
            reps.append(row)
            print(f"repetition {rep + 1}/{args.reps} done", file=sys.stderr)
    except KeyboardInterrupt:
        print(f"interrupted: {len(reps)} repetition(s) kept", file=sys.stderr)
        if not reps:
            return 130
    device = detect(measure_int8=False)
    print(f"{device.cpu_model} ({' '.join(device.notable_features())}), {len(reps)} repetitions, "
          f"batch 1 x {args.seq} tokens, {DEFAULT_SHAPE.threads} threads; ratios vs the FP32 artifact of each format")
    print("| shape (rounds x runs) | artifact | vs | median-of-round-ratios: median / p10-p90 / max "
          "| ratio of p50s: median / p10-p90 / max |")
    print("|---|---|---|---|---|")
    summary = {}
    for key in reps[0]:
        for name in reps[0][key]:
            if against[name] in (None, name):
                continue
            ratio = _summary([r[key][name]["vs_fp32"] for r in reps])
            p50 = _summary([r[key][name]["p50_ratio"] for r in reps])
            summary.setdefault(key, {})[name] = {"vs_fp32": ratio, "p50_ratio": p50}
            print(f"| {key} | {name} | {against[name]} | {ratio['median']:.3f} / {ratio['p10']:.3f}-{ratio['p90']:.3f} / "
                  f"{ratio['max']:.3f} | {p50['median']:.3f} / {p50['p10']:.3f}-{p50['p90']:.3f} / {p50['max']:.3f} |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"command": sys.argv, "device": device.to_dict(), "baselines": against,
                                         "summary": summary, "repetitions": reps}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
