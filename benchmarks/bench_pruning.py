"""Pruning sweep (issue 11): head / FFN ratio -> accuracy -> p50 -> size for the default model,
with the label-free criterion edge-convert uses (obs: least-squares removal cost, layers weighted
by their measured output sensitivity), the activation
criterion it replaced and the magnitude baseline (weight L2 norm, torch-pruning's default) at the
same shapes, in the same run.

    .venv/bin/python benchmarks/bench_pruning.py --ratios 0.17/0.25,0.25/0.5,0.33/0.5,0.5/0.75 \\
        --out benchmarks/results/pruning_sweep

Every pruned model is sliced and re-fitted (converters/pruning/reconstruct.py, sequential least
squares) on the fit texts. Accuracy is the sentence-embedding cosine against the unpruned PyTorch
FP32 model, on the validation texts (what edge-convert's floors read) and on the benchmark's
held-out texts (benchmarks/data/heldout_en.txt; never used to choose anything). Speed: the FP32
ONNX export of each model (converters/export, no quantization: the INT8 figure comes from
bench_artifacts.py --prune), batch 1, --seq tokens, --threads threads, onnxruntime with default
session options; interleaved rounds, each variant's p50 divided by the unpruned export's p50 of
the same round, median over rounds. --distill-steps N adds, for each obs-criterion model,
a row distilled from the unpruned one (converters/pruning/distill.py). Writes <out>.json,
<out>.md and <out>.png.
"""

from __future__ import annotations

import argparse
import dataclasses
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
HELDOUT = ROOT / "benchmarks" / "data" / "heldout_en.txt"



def _session(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _time(sessions: dict[str, object], feeds: dict[str, np.ndarray], rounds: int, runs: int) -> dict[str, dict]:
    """Interleaved: every round times each variant `runs` times in blocks of 5, round-robin."""
    ratios: dict[str, list[float]] = {name: [] for name in sessions}
    p50s: dict[str, list[float]] = {name: [] for name in sessions}
    for session in sessions.values():  # warm-up
        for _ in range(3):
            session.run(None, feeds)
    for r in range(rounds):
        times: dict[str, list[float]] = {name: [] for name in sessions}
        while any(len(t) < runs for t in times.values()):
            for name, session in sessions.items():
                for _ in range(min(5, runs - len(times[name]))):
                    start = time.perf_counter()
                    session.run(None, feeds)
                    times[name].append(time.perf_counter() - start)
        base = statistics.median(times["unpruned"])
        for name, t in times.items():
            p50s[name].append(statistics.median(t) * 1e3)
            ratios[name].append(statistics.median(t) / base)
        print(f"timing round {r + 1}/{rounds} done", file=sys.stderr, flush=True)
    return {name: {"p50_ms": statistics.median(p50s[name]), "ratio": statistics.median(ratios[name]),
                   "round_ratios": [round(r, 3) for r in ratios[name]]} for name in sessions}


def _timed(row: dict, key: str, form: str) -> str:
    """A timing cell; "-" where a result file carries no timing (e.g. withdrawn: see its "timing")."""
    return form.format(row[key]) if row.get(key) is not None else "-"


def _markdown(result: dict) -> str:
    lines = [f"{result['cpu']} ({', '.join(result['cpu_flags'])}), {result['model']}, batch 1, {result['seq']} tokens, "
             f"{result['threads']} threads, FP32 ONNX exports, {result['rounds']} interleaved rounds",
             "",
             "| heads / FFN removed | criterion | parameters | FLOPs | validation cosine mean / min | "
             "held-out cosine mean / min | ONNX MB | p50 ms | p50 vs unpruned |",
             "|---|---|---:|---:|---|---|---:|---:|---:|"]
    for row in result["rows"]:
        lines.append(f"| {row['heads']:.2f} / {row['ffn']:.2f} | {row['criterion']} | {row['parameters']:.3f}x | "
                     f"{row['flops']:.3f}x | {row['validation']['cosine_mean']:.4f} / "
                     f"{row['validation']['cosine_min']:.4f} | {row['heldout']['cosine_mean']:.4f} / "
                     f"{row['heldout']['cosine_min']:.4f} | {row['onnx_mb']:.1f} | {_timed(row, 'p50_ms', '{:.2f}')} | "
                     f"{_timed(row, 'p50_ratio', '{:.3f}x')} |")
    return "\n".join(lines) + "\n"


def _plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6.4, 4.2))
    for criterion, marker in (("obs", "v"), ("activation", "o"), ("magnitude", "s"), ("fisher", "D"),
                              ("distillation", "^")):
        rows = sorted((r for r in result["rows"] if r["criterion"] == criterion
                       or (criterion == "distillation" and "distillation" in r)), key=lambda r: r["flops"])
        if not rows:
            continue
        axis.plot([r["flops"] for r in rows], [r["validation"]["cosine_mean"] for r in rows], marker=marker,
                  label="obs + distillation" if criterion == "distillation" else f"{criterion} importance")
        for r in rows:
            axis.annotate(f"{r['heads']:.2f}/{r['ffn']:.2f}" + (f" ({r['p50_ratio']:.2f}x p50)" if r.get("p50_ratio") else ""),
                          (r["flops"], r["validation"]["cosine_mean"]),
                          fontsize=7, textcoords="offset points", xytext=(4, 4))
    axis.axhline(0.97, color="grey", linestyle="--", linewidth=0.8, label="pruning floor 0.97")
    axis.set_xlabel("encoder FLOPs vs unpruned")
    axis.set_ylabel("validation cosine vs unpruned (mean)")
    axis.set_title(f"MiniLM pruning sweep ({result['cpu']}); labels: heads/FFN removed,\n"
                   "p50 of the FP32 ONNX export vs the unpruned one", fontsize=8)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratios", default="0.17/0.25,0.25/0.5,0.33/0.5,0.5/0.75", help="heads/ffn pairs")
    parser.add_argument("--out", type=Path, required=True, help="path prefix of the .json, .md and .png")
    parser.add_argument("--replot", action="store_true", help="only redraw <out>.png and <out>.md from <out>.json")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--criteria", default="obs,activation,magnitude",
                        help="importance criteria to compare: obs (edge-convert's), activation, magnitude, fisher")
    parser.add_argument("--distill-steps", type=int, default=0,
                        help="also distill each obs-criterion model for up to N steps (a row of its own)")
    parser.add_argument("--distill-lr", type=float, help="distillation learning rate [default: DistillConfig's]")
    parser.add_argument("--no-distill-augment", dest="distill_augment", action="store_false",
                        help="distill on the fit batches as they are, without DistillConfig's default "
                        "augmentation (crops, word dropout: distill.augment_batch)")
    args = parser.parse_args()
    if args.replot:
        result = json.loads(args.out.with_suffix(".json").read_text())
        args.out.with_suffix(".md").write_text(_markdown(result))
        _plot(result, args.out.with_suffix(".png"))
        return

    import tempfile

    from converters.core.validate import compute_metrics, reference_outputs
    from converters.export.export_onnx import ExportConfig, export_onnx
    from converters.inputs.calibration import load_texts, split_texts
    from converters.inputs.source import load_source
    from converters.pruning.distill import DistillConfig, distill
    from converters.pruning.fisher import fisher
    from converters.pruning.importance import magnitude, plan, score
    from converters.pruning.obs import obs_scores
    from converters.pruning.prune_model import encoder_flops, output_loss, torch_runner
    from converters.pruning.reconstruct import prune_and_reconstruct
    from edge_runtime._device import detect

    work = Path(tempfile.mkdtemp(prefix="bench-pruning-"))
    texts = split_texts(load_texts())
    base = load_source(None)
    heldout_texts = load_texts(HELDOUT, role="held-out").texts  # "#" lines are comments
    validation = reference_outputs(base, texts.validation.texts)
    heldout = reference_outputs(base, heldout_texts)
    fit = reference_outputs(base, texts.fit.texts)
    wanted = args.criteria.split(",")
    pairs = [tuple(float(v) for v in pair.split("/")) for pair in args.ratios.split(",")]
    # obs as edge-convert runs it: layers weighted by their output sensitivity, measured at each
    # pair's own shares (so it is scored per pair, below); the others once, for every pair.
    criteria = {name: make() for name, make in (
        ("obs", lambda: None),
        ("activation", lambda: score(base.module, fit.batches, base.input_names)),
        ("magnitude", lambda: magnitude(base.module)),
        ("fisher", lambda: fisher(base.module, fit.batches, base.input_names,
                                  base.task == "text-classification"))) if name in wanted}
    params, flops = sum(p.numel() for p in base.module.parameters()), encoder_flops(base.module)
    exported = {"unpruned": export_onnx(base, work / "unpruned.onnx", ExportConfig())}
    rows = []
    for heads, ffn in pairs:
        for criterion, scores in criteria.items():
            if criterion == "obs":
                scores = obs_scores(base.module, fit.batches, base.input_names, heads, ffn,
                                    loss=output_loss(base, fit))
            module = copy.deepcopy(base.module)
            started = time.perf_counter()
            report = prune_and_reconstruct(module, plan(scores, heads, ffn), fit.batches, base.input_names)
            seconds = time.perf_counter() - started
            pruned = copy.copy(base)
            pruned.module = module
            name = f"{heads:.2f}-{ffn:.2f}-{criterion}"
            exported[name] = export_onnx(pruned, work / f"{name}.onnx", ExportConfig())
            row = {"heads": heads, "ffn": ffn, "criterion": criterion, "refit_seconds": round(seconds, 1),
                   "parameters": report["parameters_after"] / params, "flops": encoder_flops(module) / flops,
                   "validation": compute_metrics(pruned, validation, torch_runner(base, module), name),
                   "heldout": compute_metrics(pruned, heldout, torch_runner(base, module), name),
                   "onnx_mb": sum(p.stat().st_size for p in work.glob(f"{name}.onnx*")) / 1e6, "variant": name}
            rows.append(row)
            if criterion == "obs" and args.distill_steps:
                student, began = copy.deepcopy(module), time.perf_counter()
                settings = DistillConfig(args.distill_steps, augment=args.distill_augment)
                if args.distill_lr is not None:
                    settings = dataclasses.replace(settings, learning_rate=args.distill_lr)
                report = distill(student, base.module, base, fit, validation, settings,
                                 lambda m: print(f"  {m}", file=sys.stderr, flush=True))
                distilled = copy.copy(pruned)
                distilled.module = student
                dname = f"{name}-distilled"
                exported[dname] = export_onnx(distilled, work / f"{dname}.onnx", ExportConfig())
                rows.append({**row, "criterion": f"obs + {report['steps_run']} distillation steps",
                             "variant": dname, "distill_seconds": round(time.perf_counter() - began, 1),
                             "distillation": {k: report[k] for k in ("steps_run", "best_step", "learning_rate")},
                             "validation": compute_metrics(distilled, validation, torch_runner(base, student), dname),
                             "heldout": compute_metrics(distilled, heldout, torch_runner(base, student), dname)})
            print(f"{name}: FLOPs {row['flops']:.3f}x, validation {row['validation']['cosine_mean']:.4f} / "
                  f"{row['validation']['cosine_min']:.4f}, held-out {row['heldout']['cosine_mean']:.4f} "
                  f"({seconds:.0f} s re-fit)", file=sys.stderr, flush=True)
    rng = np.random.default_rng(0)
    feeds = {"input_ids": rng.integers(1000, 20000, (1, args.seq), dtype=np.int64),
             "attention_mask": np.ones((1, args.seq), np.int64)}
    if "token_type_ids" in base.input_names:
        feeds["token_type_ids"] = np.zeros((1, args.seq), np.int64)
    timing = _time({name: _session(path, args.threads) for name, path in exported.items()}, feeds,
                   args.rounds, args.runs)
    for row in rows:
        row["p50_ms"], row["p50_ratio"] = timing[row["variant"]]["p50_ms"], timing[row["variant"]]["ratio"]
        row["round_ratios"] = timing[row["variant"]]["round_ratios"]
    device = detect()
    flags = sorted(device.isa_features & {"avx2", "fma", "avx512f", "avx512_vnni", "asimd", "asimddp"})
    result = {"cpu": device.cpu_model, "cpu_flags": flags, "model": base.name, "seq": args.seq,
              "threads": args.threads, "rounds": args.rounds, "unpruned_p50_ms": timing["unpruned"]["p50_ms"],
              "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(_markdown(result))
    _plot(result, args.out.with_suffix(".png"))
    print(_markdown(result))


if __name__ == "__main__":
    main()
