#!/usr/bin/env python3
"""INT4 weight-only ONNX (converters/onnx/quantize_int4.py) vs the FP32 export, on the built-in MiniLM.

    python benchmarks/bench_onnx_int4.py --size-budget 0.16 --rounds 5 --json benchmarks/results/onnx_int4.json

Exports all-MiniLM-L6-v2 without Attention fusion (as the x86 profiles do), quantizes it with the
calibration texts, then reports: size vs FP32; sentence-embedding cosine against PyTorch FP32
(converters.core.validate.compute_metrics) on the calibration texts and on held-out texts
(benchmarks/data/heldout_en.txt); and p50 latency as the median over interleaved rounds of
(INT4 p50 / FP32 p50) in the same round, batch 1, `--seq` tokens, plain ORT sessions (default
options, `--threads` intra-op threads). The machine may be shared: only ratios mean anything.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edge_runtime._bench_config import DEFAULT_SHAPE  # noqa: E402 - after the sys.path line
HELDOUT = ROOT / "benchmarks" / "data" / "heldout_en.txt"


def _ort_run(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return lambda feeds: dict(zip(names, session.run(names, feeds)))


def _latency(runners: dict, feeds: dict, rounds: int, runs: int) -> dict[str, dict]:
    names = list(runners)
    p50 = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:  # rotate the order
            run = runners[name]
            for _ in range(3):
                run(feeds)
            times = []
            for _ in range(runs):
                start = time.perf_counter()
                run(feeds)
                times.append((time.perf_counter() - start) * 1000)
            p50[name].append(float(np.median(times)))
    base = p50[names[0]]
    return {
        name: {
            "p50_ms": statistics.median(p50[name]),
            "ratio_p50": statistics.median(a / b for a, b in zip(p50[name], base)),
            "ratio_rounds": [round(a / b, 3) for a, b in zip(p50[name], base)],
        }
        for name in names
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algorithm", default="auto", choices=("rtn", "clip_search", "auto"))
    parser.add_argument("--block-size", type=int, default=32)
    parser.add_argument("--embedding-block-size", type=int, default=128)
    parser.add_argument(
        "--size-budget", type=float, default=None, help="max bytes vs FP32, e.g. 0.16"
    )
    parser.add_argument(
        "--int8-node", action="append", default=[], help="MatMul to keep 8-bit (repeatable)"
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--threads", type=int, default=DEFAULT_SHAPE.threads)
    parser.add_argument("--seq", type=int, default=DEFAULT_SHAPE.seq)
    parser.add_argument("--keep", type=Path, help="copy the INT4 model here")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from converters.core.validate import compute_metrics, make_batches, reference_outputs
    from converters.export.export_onnx import ExportConfig, export_onnx
    from converters.inputs.calibration import load_texts
    from converters.inputs.source import load_source
    from converters.onnx.quantize_int4 import Int4Config, quantize_int4

    source = load_source(None)
    calibration = load_texts().texts
    heldout = tuple(
        t for t in HELDOUT.read_text().splitlines() if t.strip() and not t.startswith("#")
    )
    work = Path(tempfile.mkdtemp(prefix="bench-int4-"))
    fp32 = export_onnx(source, work / "fp32.onnx", ExportConfig())
    config = Int4Config(
        block_size=args.block_size,
        algorithm=args.algorithm,
        embedding_block_size=args.embedding_block_size,
        int8_nodes=tuple(args.int8_node),
        size_budget=args.size_budget,
    )
    start = time.perf_counter()
    report = quantize_int4(fp32, work / "int4.onnx", config, make_batches(source, calibration))
    seconds = time.perf_counter() - start
    int4 = work / "int4.onnx"
    if args.keep:
        args.keep.write_bytes(int4.read_bytes())

    runners = {"FP32": _ort_run(fp32, args.threads), "INT4": _ort_run(int4, args.threads)}
    accuracy = {}
    for name, texts in (("calibration", calibration), ("heldout", heldout)):
        reference = reference_outputs(source, texts)
        accuracy[name] = {v: compute_metrics(source, reference, run) for v, run in runners.items()}
    rng = np.random.default_rng(0)
    seq = min(args.seq, source.max_length)
    feeds = {
        "input_ids": rng.integers(5, source.tokenizer.vocab_size, (1, seq), dtype=np.int64),
        "attention_mask": np.ones((1, seq), np.int64),
        "token_type_ids": np.zeros((1, seq), np.int64),
    }
    latency = _latency(runners, feeds, args.rounds, args.runs)

    eight = sorted(n for n, v in report["nodes"].items() if v["bits"] == 8)
    result = {
        "config": config.describe(),
        "quantize_seconds": round(seconds, 1),
        "algorithm": report["algorithm"],
        "candidates": report["candidates"],
        "bytes_fp32": report["bytes_before"],
        "bytes_int4": report["bytes_after"],
        "size_ratio": report["size_ratio"],
        "int8_nodes": eight,
        "accuracy": accuracy,
        "latency": latency,
        "setup": {
            "batch": 1,
            "sequence": seq,
            "threads": args.threads,
            "rounds": args.rounds,
            "runs": args.runs,
        },
    }
    print(
        f"\nMiniLM-L6 INT4 ({report['algorithm']}, block {args.block_size}, embeddings block "
        f"{args.embedding_block_size}, {len(eight)} MatMul(s) 8-bit), quantized in {seconds:.0f} s"
    )
    print(
        "| variant | size MB | size vs FP32 | cosine mean / min (calibration) | cosine mean / min (held-out) "
        "| p50 ms | p50 vs FP32 |"
    )
    print("|---|---:|---:|---|---|---:|---:|")
    for name, size in (("FP32", report["bytes_before"]), ("INT4", report["bytes_after"])):
        cal, held = accuracy["calibration"][name], accuracy["heldout"][name]
        print(
            f"| {name} | {size / 1e6:.2f} | {size / report['bytes_before']:.3f}x | "
            f"{cal['cosine_mean']:.4f} / {cal['cosine_min']:.4f} | {held['cosine_mean']:.4f} / {held['cosine_min']:.4f} "
            f"| {latency[name]['p50_ms']:.1f} | {latency[name]['ratio_p50']:.2f}x |"
        )
    print(f"\nper-round INT4/FP32 p50 ratios: {latency['INT4']['ratio_rounds']}")
    print("candidates on calibration (pass's own metric): " + json.dumps(report["candidates"]))
    if eight:
        print("8-bit MatMuls: " + ", ".join(eight))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
