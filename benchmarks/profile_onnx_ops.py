#!/usr/bin/env python3
"""Where does an ONNX model's time go? onnxruntime's per-operator profile, per op type.

    python benchmarks/profile_onnx_ops.py --plain fp32=out/x86-avx2/onnx-fp32.onnx \
        int8=out/x86-avx2/onnx-int8.onnx --runs 60 --rounds 3 --optimized-dir /tmp/opt

Each MODEL is NAME=PATH; --plain adds "plain" first: a plain torch.onnx.export of the built-in
MiniLM (benchmarks/bench_artifacts.py's baseline), and the first model is the ratio baseline.
Every model gets a session with `enable_profiling` (2 intra-op threads,
graph optimization "all", as edge_runtime opens it) and runs one 128-token input (batch 1) `--runs`
times per round; the rounds alternate between the models so a busy machine slows all of them
alike. onnxruntime's trace lists each kernel run ("cat": "Node", "dur" in microseconds); this
script sums them per op type (after onnxruntime's fusions: the optimized graph's op types) and
divides by the number of runs. "model_run" is onnxruntime's own whole-run time. With
--optimized-dir each model's optimized graph is also saved there (`optimized_model_filepath`)
and its op counts printed, to see which fusions happened.

Profiling adds a few microseconds per kernel; only the split between op types and the
comparison between models in the same run mean anything. With --timing no profile is taken: the
models take turns in blocks of 5 runs (50 ms pause between blocks, as bench_artifacts.py does),
and each model's p50 and process CPU time per run are reported as the median over rounds of the
ratio to the first model measured in the same round.
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from edge_runtime._bench_config import DEFAULT_SHAPE  # noqa: E402 - after the sys.path lines


def _session(
    path: Path, threads: int, profile_prefix: str | None, optimized: Path | None, config: dict
):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    for key, value in config.items():
        options.add_session_config_entry(key, value)
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    if optimized is not None:
        options.optimized_model_filepath = str(optimized)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _feeds(session, seq: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    feeds = {}
    for i in session.get_inputs():
        if i.name == "input_ids":
            feeds[i.name] = rng.integers(1000, 20000, (1, seq), dtype=np.int64)
        elif i.name == "attention_mask":
            feeds[i.name] = np.ones((1, seq), np.int64)
        else:
            feeds[i.name] = np.zeros((1, seq), np.int64)
    return feeds


def op_counts(path: Path) -> collections.Counter:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return collections.Counter(n.op_type for n in model.graph.node)


def summarize(trace: list[dict], runs: int) -> dict[str, float]:
    """Microseconds per run by op type over the last `runs` runs (the earlier ones are warm-up),
    plus "model_run" (median whole run) and "nodes" (sum of kernels)."""
    starts = sorted(
        e["ts"] for e in trace if e.get("cat") == "Session" and e["name"] == "model_run"
    )
    if len(starts) < runs:
        raise ValueError(f"the profile holds {len(starts)} runs, fewer than the {runs} asked for")
    first = starts[-runs]
    per_op: dict[str, float] = collections.defaultdict(float)
    model_run = []
    for event in trace:
        if event["ts"] < first:
            continue
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            per_op[event["args"]["op_name"]] += event["dur"]
        elif event.get("cat") == "Session" and event["name"] == "model_run":
            model_run.append(event["dur"])
    out = {op: total / runs for op, total in per_op.items()}
    out["nodes"] = sum(per_op.values()) / runs
    out["model_run"] = float(np.median(model_run))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", help="NAME=PATH")
    parser.add_argument(
        "--plain",
        action="store_true",
        help="profile a plain torch.onnx.export of the built-in MiniLM too, as the first model",
    )
    parser.add_argument("--runs", type=int, default=100, help="profiled runs per model per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=DEFAULT_SHAPE.threads)
    parser.add_argument("--seq", type=int, default=DEFAULT_SHAPE.seq)
    parser.add_argument(
        "--config",
        action="append",
        default=[],
        help="KEY=VALUE session config entry "
        "for every model (e.g. session.intra_op.allow_spinning=0)",
    )
    parser.add_argument("--optimized-dir", type=Path, help="save each optimized graph here")
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--timing", action="store_true", help="interleaved p50 / CPU-time A/B instead of a profile"
    )
    args = parser.parse_args(argv)
    config = dict(c.split("=", 1) for c in args.config)
    work = Path(tempfile.mkdtemp(prefix="profile-ops-"))
    models = {}
    if args.plain:
        from bench_artifacts import PlainExport

        from converters.inputs.source import default_model_dir

        models["plain"] = str(PlainExport(default_model_dir(), work).path)
    for spec in args.models:
        name, sep, path = spec.partition("=")
        if not sep or not name or not Path(path).is_file():
            parser.error(f"model {spec!r}: expected NAME=PATH of an existing .onnx file")
        models[name] = path
    if not models:
        parser.error("give NAME=PATH models and/or --plain")

    if args.timing:
        return _timing(models, args, config)
    if args.optimized_dir:
        args.optimized_dir.mkdir(parents=True, exist_ok=True)
        for name, path in models.items():
            out = args.optimized_dir / f"{name}.optimized.onnx"
            _session(Path(path), args.threads, None, out, config)
            counts = op_counts(out)
            print(
                f"{name}: optimized graph {out}: "
                + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
            )

    rounds: dict[str, list[dict[str, float]]] = {name: [] for name in models}
    for r in range(args.rounds):
        order = list(models)[r % len(models) :] + list(models)[: r % len(models)]
        for name in order:
            session = _session(
                Path(models[name]), args.threads, str(work / f"{name}-{r}"), None, config
            )
            feeds = _feeds(session, args.seq)
            for _ in range(10):
                session.run(None, feeds)
            for _ in range(args.runs):
                session.run(None, feeds)
            trace_path = session.end_profiling()
            rounds[name].append(summarize(json.loads(Path(trace_path).read_text()), args.runs))
            Path(trace_path).unlink()
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)

    # Median over rounds of each op type's per-run time.
    table = {}
    for name, results in rounds.items():
        keys = set().union(*results)
        table[name] = {k: statistics.median(res.get(k, 0.0) for res in results) for k in keys}
    ops = sorted(
        set().union(*table.values()) - {"nodes", "model_run"},
        key=lambda op: -max(t.get(op, 0.0) for t in table.values()),
    )
    names = list(models)
    print(
        f"\nms per run (median of {args.rounds} rounds x {args.runs} runs), batch 1, "
        f"{args.seq} tokens, {args.threads} threads\n"
    )
    print("| op type | " + " | ".join(names) + " |")
    print("|---|" + "---:|" * len(names))
    for op in ops:
        print(
            f"| {op} | " + " | ".join(f"{table[n].get(op, 0.0) / 1000:.3f}" for n in names) + " |"
        )
    for key in ("nodes", "model_run"):
        print(
            f"| **{key}** | " + " | ".join(f"**{table[n][key] / 1000:.3f}**" for n in names) + " |"
        )
    base = names[0]
    print(
        "\nmodel_run per round vs "
        + base
        + ": "
        + "; ".join(
            f"{n}: "
            + ", ".join(
                f"{a['model_run'] / b['model_run']:.3f}" for a, b in zip(rounds[n], rounds[base])
            )
            for n in names[1:]
        )
    )
    if args.json:
        args.json.write_text(json.dumps({"table": table, "rounds": rounds}, indent=2))
    return 0


def _timing(models: dict[str, str], args, config: dict) -> int:
    import time

    sessions = {
        name: _session(Path(path), args.threads, None, None, config)
        for name, path in models.items()
    }
    feeds = {name: _feeds(s, args.seq) for name, s in sessions.items()}
    names = list(sessions)
    for name in names:
        for _ in range(5):
            sessions[name].run(None, feeds[name])
    p50: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    for r in range(args.rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        wall: dict[str, list[float]] = {n: [] for n in names}
        used: dict[str, list[float]] = {n: [] for n in names}
        while any(len(t) < args.runs for t in wall.values()):
            for name in order:
                time.sleep(0.05)  # onnxruntime's threads spin after a run: let them stop
                sessions[name].run(None, feeds[name])
                count = min(5, args.runs - len(wall[name]))
                start_cpu = time.process_time()
                for _ in range(count):
                    start = time.perf_counter()
                    sessions[name].run(None, feeds[name])
                    wall[name].append((time.perf_counter() - start) * 1000)
                used[name].append((time.process_time() - start_cpu) * 1000 / count)
        for name in names:
            p50[name].append(float(np.median(wall[name])))
            cpu[name].append(float(np.median(used[name])))
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    base = names[0]
    print(
        f"\n{args.rounds} rounds x {args.runs} runs, batch 1, {args.seq} tokens, "
        f"{args.threads} threads\n"
    )
    print(f"| model | p50 ms | p50 vs {base} | CPU ms per run | CPU vs {base} | per-round p50 |")
    print("|---|---:|---:|---:|---:|---|")
    for name in names:
        ratios = [a / b for a, b in zip(p50[name], p50[base])]
        cpu_ratio = statistics.median(a / b for a, b in zip(cpu[name], cpu[base]))
        rounds = " ".join(f"{x:.3f}" for x in ratios)
        print(
            f"| {name} | {statistics.median(p50[name]):.2f} | {statistics.median(ratios):.3f} | "
            f"{statistics.median(cpu[name]):.2f} | {cpu_ratio:.3f} | {rounds} |"
        )
    if args.json:
        args.json.write_text(json.dumps({"p50_ms": p50, "cpu_ms": cpu}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
