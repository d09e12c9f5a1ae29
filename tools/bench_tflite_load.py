#!/usr/bin/env python3
"""Cold load of a bucketed .tflite with and without the XNNPACK weight cache, fresh processes.

    python tools/bench_tflite_load.py MODEL.tflite [--rounds 7] [--threads 2] [--seq 128]

Every measurement is a new Python process (nothing warm but the OS page cache), modes
interleaved round by round so drifting load on a shared machine hits them alike:
- interpreter:   edge_runtime's TFLite session without a cache (ai-edge-litert Interpreter)
- compiled:      ai-edge-litert CompiledModel without a cache (tells the API from the cache)
- cache-create:  session with weight_cache_dir set, empty directory: builds the cache
- cache-reuse:   the same again: maps the cache the previous step built
Each child reports open time (construction), first run (batch 1, --seq tokens, one bucket),
a steady-state run (median of 5), and memory after one run of every bucket (VmRSS, and its
anonymous part: heap, where repacked weights live, vs file-backed: mapped model and cache).
Medians over rounds are printed, with ratios against `interpreter`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
from _bench_child import ChildError, user_path  # noqa: E402 - after the path

MODES = ("interpreter", "compiled", "cache-create", "cache-reuse")

# Runs in the child. argv: model, mode, threads, seq, cache_dir, sha256
CHILD = r"""
import json, statistics, sys, time
t_start = time.perf_counter()
import numpy as np
model, mode, threads, seq, cache_dir, sha256 = sys.argv[1:7]
threads, seq = int(threads), int(seq)

def memory():
    fields = {}
    with open("/proc/self/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile"):
                fields[key + "_mb"] = int(value.split()[0]) / 1024
    return fields

def feeds(length, used):
    ids = np.zeros((1, length), np.int32)
    ids[0, :used] = 1000 + np.arange(used)
    mask = (ids != 0).astype(np.int32)
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": 0 * ids}

if mode == "compiled":
    from ai_edge_litert.compiled_model import CompiledModel, CpuOptions, Options
    t0 = time.perf_counter()
    cm = CompiledModel.from_file(model, options=Options(cpu_options=CpuOptions(num_threads=threads)))
    sigs = cm.get_signature_list()
    buffers = {
        key: ({n: cm.create_input_buffer_by_name(key, n) for n in spec["inputs"]},
              {n: cm.create_output_buffer_by_name(key, n) for n in spec["outputs"]})
        for key, spec in sigs.items()
    }
    lengths = {key: cm.get_input_tensor_details(key)[sigs[key]["inputs"][0]]["shape"][1] for key in sigs}
    t1 = time.perf_counter()
    def run(length):
        key = min((k for k in lengths if lengths[k] >= length), key=lengths.get)
        ins, outs = buffers[key]
        for name, value in feeds(lengths[key], length).items():
            if name in ins:
                ins[name].write(value)
        cm.run_by_name(key, ins, outs)
    all_lengths = sorted(lengths.values())
else:
    sys.path.insert(0, ROOT)
    from edge_runtime.backends.tflite import TfliteSession
    t0 = time.perf_counter()
    options = {} if mode == "interpreter" else {"weight_cache_dir": cache_dir, "model_sha256": sha256}
    session = TfliteSession(model, threads=threads, **options)
    t1 = time.perf_counter()
    def run(length):
        session.run({k: v[:, :length] for k, v in feeds(length, length).items() if k in session.input_names})
    all_lengths = session.buckets
    state = getattr(session, "weight_cache_state", "n/a")
run(seq)
t2 = time.perf_counter()
steady = []
for _ in range(5):
    s = time.perf_counter(); run(seq); steady.append(time.perf_counter() - s)
for length in all_lengths:
    run(length)
print("RESULT " + json.dumps({
    "import_s": t0 - t_start, "open_s": t1 - t0, "first_run_s": t2 - t1, "open_first_s": t2 - t0,
    "steady_s": statistics.median(steady), "cache_state": state if mode != "compiled" else "none",
    **memory()}))
""".replace("ROOT", repr(str(ROOT)))


def _child(model: Path, mode: str, threads: int, seq: int, cache_dir: Path, sha256: str) -> dict:
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            CHILD,
            str(model),
            mode,
            str(threads),
            str(seq),
            str(cache_dir),
            sha256,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        missing = None if done.returncode else "no RESULT line"
        raise ChildError.of(f"the {mode} load of {model}", done, missing)
    return json.loads(lines[-1][len("RESULT ") :])


def measure(model: Path, rounds: int, threads: int, seq: int) -> dict[str, list[dict]]:
    sha256 = hashlib.sha256(model.read_bytes()).hexdigest()
    results: dict[str, list[dict]] = {mode: [] for mode in MODES}
    # cache-reuse must follow the cache-create of its round: they move as one unit
    units = [["interpreter"], ["compiled"], ["cache-create", "cache-reuse"]]
    for index in range(rounds):
        with tempfile.TemporaryDirectory(prefix="bench-xnnpack-") as cache_dir:
            # rotate the order so no mode always runs right after the same other one
            shift = index % len(units)
            for unit in units[shift:] + units[:shift]:
                for mode in unit:
                    results[mode].append(_child(model, mode, threads, seq, Path(cache_dir), sha256))
        print(f"round {index + 1}/{rounds} done", file=sys.stderr)
    return results


def summarize(results: dict[str, list[dict]]) -> dict[str, dict[str, float]]:
    keys = (
        "open_s",
        "first_run_s",
        "open_first_s",
        "steady_s",
        "VmRSS_mb",
        "RssAnon_mb",
        "RssFile_mb",
    )
    summary = {}
    for mode, runs in results.items():
        summary[mode] = {key: statistics.median(r[key] for r in runs) for key in keys}
        summary[mode]["cache_states"] = sorted({r["cache_state"] for r in runs})
    base = summary["interpreter"]
    for row in summary.values():
        for key in ("open_first_s", "steady_s", "VmRSS_mb", "RssAnon_mb"):
            row[f"{key}_x_interpreter"] = row[key] / base[key]
    return summary


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(ROOT))  # this checkout's edge_runtime, as the child's
    from edge_runtime._bench_config import DEFAULT_SHAPE

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # absolute: the children are given it
    parser.add_argument(
        "model", type=user_path, help="bucketed .tflite (edge-convert / export_tflite)"
    )
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=DEFAULT_SHAPE.threads)
    parser.add_argument("--seq", type=int, default=DEFAULT_SHAPE.seq, help="tokens in the first run")
    parser.add_argument(
        "--json", action="store_true", help="print the raw runs and summary as JSON"
    )
    args = parser.parse_args(argv)
    if not args.model.is_file():
        parser.error(f"{args.model}: no such file")
    try:
        results = measure(args.model, args.rounds, args.threads, args.seq)
    except ChildError as exc:
        print(f"bench_tflite_load: error: {exc}", file=sys.stderr)
        return 1
    summary = summarize(results)
    if args.json:
        print(json.dumps({"runs": results, "summary": summary}, indent=1))
        return 0
    print(
        f"{args.model.name}: {args.rounds} rounds, {args.threads} threads, first run {args.seq} tokens"
    )
    print(
        f"{'mode':14s} {'open ms':>8s} {'1st run':>8s} {'open+1st':>9s} {'x interp':>8s} "
        f"{'steady':>7s} {'RSS MB':>7s} {'anon MB':>8s} {'file MB':>8s} {'anon x':>7s}  cache"
    )
    for mode, row in summary.items():
        print(
            f"{mode:14s} {row['open_s'] * 1e3:8.1f} {row['first_run_s'] * 1e3:8.1f} "
            f"{row['open_first_s'] * 1e3:9.1f} {row['open_first_s_x_interpreter']:8.2f} "
            f"{row['steady_s'] * 1e3:7.1f} {row['VmRSS_mb']:7.1f} {row['RssAnon_mb']:8.1f} "
            f"{row['RssFile_mb']:8.1f} {row['RssAnon_mb_x_interpreter']:7.2f}  "
            f"{','.join(row['cache_states'])}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
