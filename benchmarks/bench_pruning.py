"""Pruning sweep (issue 11): head / FFN ratio -> accuracy -> p50 -> size for the default model.

Compares, at the same shapes and in the same run, the label-free criterion edge-convert uses (obs:
least-squares removal cost, layers weighted by their measured output sensitivity), the activation
criterion it replaced and the magnitude baseline (weight L2 norm, torch-pruning's default).

    .venv/bin/python benchmarks/bench_pruning.py --ratios 0.17/0.25,0.25/0.5,0.33/0.5,0.5/0.75 \\
        --out benchmarks/results/pruning_sweep

Every pruned model is sliced and re-fitted (converters/pruning/reconstruct.py, sequential least
squares) on the fit texts. Accuracy is the sentence-embedding cosine against the unpruned PyTorch
FP32 model, on the validation texts (what edge-convert's floors read) and on the benchmark's
held-out texts (benchmarks/data/heldout_en.txt; never used to choose anything). Speed: the FP32
ONNX export of each model (converters/export, no quantization: the INT8 figure comes from
bench_artifacts.py --prune), batch 1, --seq tokens, --threads threads, onnxruntime with default
session options; interleaved rounds (the variant order rotates each round, with a short pause
between two variants' blocks), each variant's p50 divided by the unpruned export's p50 of the same
round, median over rounds (the per-round ratios are recorded too). The share of the timed runs in
which a task waited for a CPU (Linux pressure-stall information: other jobs, or its own threads) is recorded and flagged.
--distill-steps N adds, for each obs-criterion model, a row distilled from the unpruned one
(converters/pruning/distill.py). Writes <out>.json, <out>.md and <out>.png (the suffixes are
appended: --out results/sweep_0.33_0.5 writes results/sweep_0.33_0.5.json). The exports go to a
temporary directory that is removed at the end, also after an error or Ctrl-C. Ctrl-C writes the
rows that finished to <out>.json and <out>.md, marked partial, and exits with status 130.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import textwrap
import time
from functools import partial
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edge_runtime._bench_config import DEFAULT_SHAPE  # noqa: E402 - after the sys.path line
from edge_runtime._bench_report import device_label  # noqa: E402
from edge_runtime._contention import busy_note, worst_share  # noqa: E402
from edge_runtime._rounds import SWITCH_PAUSE_S, Round, time_in_rounds  # noqa: E402

HELDOUT = ROOT / "benchmarks" / "data" / "heldout_en.txt"
CRITERIA = ("obs", "activation", "magnitude", "fisher")
DEFAULT_RATIOS = "0.17/0.25,0.25/0.5,0.33/0.5,0.5/0.75"
SUFFIXES = (".json", ".md", ".png")
BATCH = 1
BLOCK = 5  # timed runs per variant before the next variant takes its turn


class UsageError(Exception):
    """A user mistake found after parsing (e.g. --seq longer than the model's positions)."""


# -- arguments ---------------------------------------------------------------------------------
def parse_ratios(text: str) -> list[tuple[float, float]]:
    """"0.17/0.25,0.33/0.5" -> [(0.17, 0.25), (0.33, 0.5)]; ValueError with the reason."""
    pairs: list[tuple[float, float]] = []
    seen: dict[str, str] = {}
    for item in text.split(","):
        item = item.strip()
        parts = item.split("/")
        if len(parts) != 2:
            raise ValueError(f"{item!r} is not a HEADS/FFN pair (e.g. 0.33/0.5)")
        try:
            heads, ffn = (float(p) for p in parts)
        except ValueError:
            raise ValueError(f"{item!r}: both shares must be numbers (e.g. 0.33/0.5)") from None
        for name, share in (("heads", heads), ("FFN", ffn)):
            if not 0.0 <= share < 1.0:
                raise ValueError(f"{item!r}: the {name} share {share:g} must be in [0, 1) "
                                 "(the share of heads / FFN neurons removed)")
        if heads == 0.0 and ffn == 0.0:
            raise ValueError(f"{item!r} removes nothing (the unpruned model is always measured)")
        key = f"{heads:.2f}/{ffn:.2f}"  # the variant names use 2 decimals
        if key in seen:
            raise ValueError(f"{item!r} repeats {seen[key]!r} (both are {key} at 2 decimals)")
        seen[key] = item
        pairs.append((heads, ffn))
    return pairs


def parse_criteria(text: str) -> list[str]:
    """"obs,magnitude" -> ["obs", "magnitude"]; ValueError naming unknown or repeated ones."""
    names = [name.strip() for name in text.split(",")]
    unknown = [name for name in names if name not in CRITERIA]
    if unknown:
        raise ValueError(f"unknown criteria {', '.join(map(repr, unknown))}; known: {', '.join(CRITERIA)}")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"criteria named twice: {', '.join(repeated)}")
    return names


def output_paths(out: Path) -> dict[str, Path]:
    """<out>.json, <out>.md, <out>.png: suffixes appended, so a name with dots (sweep_0.33_0.5)
    keeps them; a --out already ending in one of these suffixes has it replaced."""
    base = str(out)
    for suffix in SUFFIXES:
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    return {suffix[1:]: Path(base + suffix) for suffix in SUFFIXES}


def output_problem(paths: dict[str, Path]) -> str | None:
    """Why the outputs could not be written (checked before any work), or None."""
    for path in paths.values():
        if path.is_dir():
            return f"--out: {path} is a directory"
    parent = paths["json"].parent
    existing = parent
    while not existing.exists():  # the nearest existing ancestor must be a writable directory
        existing = existing.parent
    if not existing.is_dir():
        return f"--out: {existing} is a file, not a directory, so {paths['json']} cannot be written"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"--out: cannot write in {existing} (permission denied)"
    for path in paths.values():
        if path.exists() and not os.access(path, os.W_OK):
            return f"--out: cannot overwrite {path} (permission denied)"
    return None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bench_pruning.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ratios", default=DEFAULT_RATIOS,
                        help="comma-separated HEADS/FFN pairs: the share of all attention heads and of all "
                        "FFN neurons removed, each in [0, 1), e.g. 0.33/0.5 [default: %(default)s]")
    parser.add_argument("--out", type=Path, required=True,
                        help="path prefix of the results: .json, .md and .png are appended")
    parser.add_argument("--replot", action="store_true",
                        help="only redraw <out>.png and <out>.md from an existing <out>.json")
    parser.add_argument("--rounds", type=int, default=5,
                        help="interleaved timing rounds, >= 1; the reported p50 ratio is the median over "
                        "rounds [default: %(default)s]")
    parser.add_argument("--runs", type=int, default=20,
                        help=f"timed runs per variant and round, >= 1, in blocks of {BLOCK} [default: %(default)s]")
    parser.add_argument("--threads", type=int, default=DEFAULT_SHAPE.threads,
                        help="onnxruntime intra-op threads, >= 1 [default: %(default)s]")
    parser.add_argument("--seq", type=int, default=DEFAULT_SHAPE.seq,
                        help="tokens of the timed input (batch 1), >= 1 and at most the model's positions "
                        "[default: %(default)s]")
    parser.add_argument("--criteria", default="obs,activation,magnitude",
                        help=f"comma-separated importance criteria to compare, of: {', '.join(CRITERIA)} "
                        "(obs is edge-convert's) [default: %(default)s]")
    parser.add_argument("--distill-steps", type=int, default=0,
                        help="also distill each obs-criterion model for up to N steps (a row of its own) "
                        "[default: 0, none]")
    parser.add_argument("--distill-lr", type=float, help="distillation learning rate, > 0 [default: DistillConfig's]")
    parser.add_argument("--no-distill-augment", dest="distill_augment", action="store_false",
                        help="distill on the fit batches as they are, without DistillConfig's default "
                        "augmentation (crops, word dropout: distill.augment_batch)")
    return parser


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, argparse.ArgumentParser]:
    """Parsed and checked arguments: every mistake exits (status 2) with one error line."""
    parser = _parser()
    args = parser.parse_args(argv)
    args.paths = output_paths(args.out)
    if args.replot:
        return args, parser
    try:
        args.pairs = parse_ratios(args.ratios)
    except ValueError as error:
        parser.error(f"--ratios: {error}")
    try:
        args.criteria_list = parse_criteria(args.criteria)
    except ValueError as error:
        parser.error(f"--criteria: {error}")
    for flag in ("rounds", "runs", "threads", "seq"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag} must be at least 1 (got {getattr(args, flag)})")
    if args.distill_steps < 0:
        parser.error(f"--distill-steps must be 0 (none) or more (got {args.distill_steps})")
    if args.distill_lr is not None and not args.distill_lr > 0:
        parser.error(f"--distill-lr must be a positive number (got {args.distill_lr})")
    if (args.distill_steps or args.distill_lr is not None or not args.distill_augment) \
            and "obs" not in args.criteria_list:
        parser.error("--distill-steps / --distill-lr / --no-distill-augment distill the obs-criterion "
                     "models: add obs to --criteria")
    if args.distill_steps == 0 and (args.distill_lr is not None or not args.distill_augment):
        parser.error("--distill-lr / --no-distill-augment need --distill-steps N (N > 0)")
    problem = output_problem(args.paths)
    if problem:
        parser.error(problem)
    return args, parser


# -- timing ------------------------------------------------------------------------------------
def _session(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _time(sessions: dict[str, object], feeds: dict[str, np.ndarray], rounds: int, runs: int,
          done: list[dict], pause_s: float = SWITCH_PAUSE_S) -> None:
    """Interleaved timing (edge_runtime._rounds), "unpruned" the baseline. Every round cycles
    through the variants (order rotated each round) in blocks of BLOCK timed runs, each block after
    a pause and one untimed run, until every variant has `runs` timings; CpuWait measures how much
    of the timed runs something else wanted the CPU. Each finished round is appended to `done` at
    once, so a Ctrl-C keeps the rounds that finished."""

    def keep(finished: Round) -> None:
        done.append({"order": finished.order, "busy_share": finished.wait.rounded_share,
                     "p50_ms": {name: statistics.median(t) * 1e3 for name, t in finished.times.items()}})
        print(f"timing round {finished.number}/{finished.total} done", file=sys.stderr, flush=True)

    timed = time_in_rounds({name: partial(session.run, None, feeds) for name, session in sessions.items()},
                           rounds * runs, rounds, block=BLOCK, warmup=3, pause_s=pause_s, rewarm=True,
                           on_round=keep)
    for name, exc in timed.failures.items():
        raise RuntimeError(f"timing {name}: {type(exc).__name__}: {exc}") from exc


def summarise(done: list[dict]) -> dict[str, dict]:
    """Per variant: median p50 over the rounds, median and per-round ratio to the unpruned p50."""
    if not done:
        return {}
    summary = {}
    for name in done[0]["p50_ms"]:
        p50s = [d["p50_ms"][name] for d in done]
        ratios = [d["p50_ms"][name] / d["p50_ms"]["unpruned"] for d in done]
        summary[name] = {"p50_ms": statistics.median(p50s), "ratio": statistics.median(ratios),
                         "round_ratios": [round(x, 3) for x in ratios],
                         "round_p50_ms": [round(x, 3) for x in p50s]}
    return summary


# -- report ------------------------------------------------------------------------------------
def _timed(row: dict, key: str, form: str) -> str:
    """A timing cell; "-" where a result file carries no timing (e.g. withdrawn: see its "timing")."""
    return form.format(row[key]) if row.get(key) is not None else "-"


def _ratio_cell(row: dict) -> str:
    cell = _timed(row, "p50_ratio", "{:.3f}x")
    spread = row.get("round_ratios") or []
    if len(spread) > 1:
        cell += f" ({min(spread):.3f}-{max(spread):.3f})"
    return cell


def cpu_label(result: dict) -> str:
    """CPU model and ISA flags: device_label's (edge_runtime) where the result records it, else
    (results written before it did) the CPU and the flags the file lists."""
    if result.get("cpu_label"):
        return result["cpu_label"]
    flags = result.get("cpu_flags") or []
    return f"{result.get('cpu', 'unknown CPU')} ({', '.join(flags) if flags else 'ISA flags not recorded'})"


def _rounds(result: dict) -> str:
    if result.get("interrupted"):
        return f"{result.get('rounds_completed', 0)} of {result.get('rounds', '?')}"
    return str(result.get("rounds_completed", result.get("rounds", "?")))


def setup_line(result: dict) -> str:
    """What every speed figure of the result was timed on."""
    line = (f"{cpu_label(result)}, {result.get('model', 'model not recorded')}, batch {result.get('batch', BATCH)}, "
            f"{result.get('seq', '?')} tokens, {result.get('threads', '?')} threads, FP32 ONNX exports, "
            f"{_rounds(result)} interleaved rounds")
    if result.get("unpruned_p50_ms") is not None:
        line += f"; unpruned p50 {result['unpruned_p50_ms']:.2f} ms"
    return line


def notes(result: dict) -> list[str]:
    """Warnings that belong next to the figures: partial run, withdrawn timing, busy CPU."""
    lines = []
    if result.get("interrupted"):
        lines.append(f"PARTIAL: {result['interrupted']}")
    if isinstance(result.get("timing"), str):
        lines.append(f"timing: {result['timing']}")
    note = busy_note(result.get("cpu_busy_share"))
    if note:
        lines.append(f"WARNING: {note}")
    return lines


def markdown(result: dict) -> str:
    lines = [setup_line(result), ""]
    lines += [f"**{note}**\n" for note in notes(result)]
    lines += ["| heads / FFN removed | criterion | parameters | FLOPs | validation cosine mean / min | "
              "held-out cosine mean / min | ONNX MB | p50 ms | p50 vs unpruned (min-max over rounds) |",
              "|---|---|---:|---:|---|---|---:|---:|---:|"]
    for row in result["rows"]:
        lines.append(f"| {row['heads']:.2f} / {row['ffn']:.2f} | {row['criterion']} | {row['parameters']:.3f}x | "
                     f"{row['flops']:.3f}x | {row['validation']['cosine_mean']:.4f} / "
                     f"{row['validation']['cosine_min']:.4f} | {row['heldout']['cosine_mean']:.4f} / "
                     f"{row['heldout']['cosine_min']:.4f} | {row['onnx_mb']:.1f} | {_timed(row, 'p50_ms', '{:.2f}')} | "
                     f"{_ratio_cell(row)} |")
    if result.get("cpu_busy_share") is not None:
        lines += ["", f"CPU busy (a task waiting for a CPU) during {result['cpu_busy_share']:.1%} of the timed runs "
                  f"(per round: {result.get('round_busy_shares')})"]
    return "\n".join(lines) + "\n"


_markdown = markdown  # the old name


def plot_title(result: dict) -> str:
    model = str(result.get("model", "model")).split(" ")[0].split("/")[-1]
    head = f"{model} pruning sweep{' (PARTIAL)' if result.get('interrupted') else ''}: {setup_line(result)}"
    lines = textwrap.wrap(head, 110)
    lines.append("labels: heads/FFN removed (p50 of the FP32 ONNX export vs the unpruned one)")
    for note in notes(result):
        lines += textwrap.wrap(note, 110)
    return "\n".join(lines)


def _plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7.2, 5.0))
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
    axis.set_title(plot_title(result), fontsize=6)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_results(result: dict, paths: dict[str, Path], png: bool = True) -> None:
    paths["json"].parent.mkdir(parents=True, exist_ok=True)
    paths["json"].write_text(json.dumps(result, indent=2) + "\n")
    paths["md"].write_text(markdown(result))
    if png:
        _plot(result, paths["png"])


def replot(paths: dict[str, Path]) -> str | None:
    """Redraw .md and .png from .json; the reason it cannot (one line), or None."""
    source = paths["json"]
    if not source.is_file():
        return f"--replot: {source} does not exist (--out is the prefix the sweep was written with)"
    try:
        result = json.loads(source.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        return f"--replot: cannot read {source}: {error}"
    if not isinstance(result, dict) or not isinstance(result.get("rows"), list) or "criterion" not in (
            result["rows"][0] if result["rows"] else {"criterion": None}):
        hint = " (a bench_artifacts.py result?)" if isinstance(result, dict) and "plain ORT FP32" in result else ""
        return f"--replot: {source} is not a bench_pruning.py result{hint}"
    paths["md"].write_text(markdown(result))
    _plot(result, paths["png"])
    return None


# -- the sweep ---------------------------------------------------------------------------------
@dataclasses.dataclass
class Progress:
    """What has finished so far: a Ctrl-C writes it."""

    stage: str = "loading the model"
    meta: dict = dataclasses.field(default_factory=dict)  # cpu, model, seq, ...: the result's header
    rows: list = dataclasses.field(default_factory=list)  # accuracy rows, one per finished model
    rounds: list = dataclasses.field(default_factory=list)  # finished timing rounds (_time's `done`)


def compose(progress: Progress, interrupted: str | None = None) -> dict:
    """The result document from what finished; `interrupted` says where a Ctrl-C stopped it."""
    timing = summarise(progress.rounds)
    rows = [dict(row) for row in progress.rows]
    for row in rows:
        if row["variant"] in timing:
            t = timing[row["variant"]]
            row.update(p50_ms=t["p50_ms"], p50_ratio=t["ratio"], round_ratios=t["round_ratios"],
                       round_p50_ms=t["round_p50_ms"])
    result = {**progress.meta, "rows": rows}
    if timing:
        shares = [d["busy_share"] for d in progress.rounds]
        result.update(unpruned_p50_ms=timing["unpruned"]["p50_ms"], rounds_completed=len(progress.rounds),
                      round_orders=[d["order"] for d in progress.rounds], round_busy_shares=shares,
                      cpu_busy_share=worst_share(shares))
        note = busy_note(result["cpu_busy_share"])
        if note:
            result["busy_note"] = note
    if interrupted:
        result["interrupted"] = interrupted
        if not timing:
            result["timing"] = "not measured: interrupted before the first timing round finished"
    return result


def _sweep(args: argparse.Namespace, work: Path, progress: Progress) -> None:
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

    base = load_source(None)
    positions = getattr(getattr(base.module, "config", None), "max_position_embeddings", None)
    if positions is not None and args.seq > positions:
        raise UsageError(f"--seq {args.seq} is longer than {base.name}'s {positions} positions")
    device = detect()
    progress.meta.update(
        cpu=device.cpu_model, cpu_flags=device.notable_features(), cpu_label=device_label(device.to_dict()),
        device=device.to_dict(), model=base.name, batch=BATCH, seq=args.seq, threads=args.threads,
        rounds=args.rounds, runs=args.runs, block=BLOCK, switch_pause_s=SWITCH_PAUSE_S,
        command=" ".join([Path(sys.argv[0]).name, *args.argv]))
    progress.stage = "computing the reference outputs"
    texts = split_texts(load_texts())
    heldout_texts = load_texts(HELDOUT, role="held-out").texts  # "#" lines are comments
    validation = reference_outputs(base, texts.validation.texts)
    heldout = reference_outputs(base, heldout_texts)
    fit = reference_outputs(base, texts.fit.texts)
    # obs as edge-convert runs it: layers weighted by their output sensitivity, measured at each
    # pair's own shares (so it is scored per pair, below); the others once, for every pair.
    progress.stage = "scoring importance"
    makers = {"obs": lambda: None,
              "activation": lambda: score(base.module, fit.batches, base.input_names),
              "magnitude": lambda: magnitude(base.module),
              "fisher": lambda: fisher(base.module, fit.batches, base.input_names,
                                       base.task == "text-classification")}
    criteria = {name: makers[name]() for name in args.criteria_list}
    params, flops = sum(p.numel() for p in base.module.parameters()), encoder_flops(base.module)
    exported = {"unpruned": export_onnx(base, work / "unpruned.onnx", ExportConfig())}
    for heads, ffn in args.pairs:
        for criterion, scores in criteria.items():
            name = f"{heads:.2f}-{ffn:.2f}-{criterion}"
            progress.stage = f"pruning {name}"
            if criterion == "obs":
                scores = obs_scores(base.module, fit.batches, base.input_names, heads, ffn,
                                    loss=output_loss(base, fit))
            module = copy.deepcopy(base.module)
            started = time.perf_counter()
            report = prune_and_reconstruct(module, plan(scores, heads, ffn), fit.batches, base.input_names)
            seconds = time.perf_counter() - started
            pruned = copy.copy(base)
            pruned.module = module
            exported[name] = export_onnx(pruned, work / f"{name}.onnx", ExportConfig())
            row = {"heads": heads, "ffn": ffn, "criterion": criterion, "refit_seconds": round(seconds, 1),
                   "parameters": report["parameters_after"] / params, "flops": encoder_flops(module) / flops,
                   "validation": compute_metrics(pruned, validation, torch_runner(base, module), name),
                   "heldout": compute_metrics(pruned, heldout, torch_runner(base, module), name),
                   "onnx_mb": sum(p.stat().st_size for p in work.glob(f"{name}.onnx*")) / 1e6, "variant": name}
            progress.rows.append(row)
            print(f"{name}: FLOPs {row['flops']:.3f}x, validation {row['validation']['cosine_mean']:.4f} / "
                  f"{row['validation']['cosine_min']:.4f}, held-out {row['heldout']['cosine_mean']:.4f} "
                  f"({seconds:.0f} s re-fit)", file=sys.stderr, flush=True)
            if criterion == "obs" and args.distill_steps:
                progress.stage = f"distilling {name}"
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
                progress.rows.append(
                    {**row, "criterion": f"obs + {report['steps_run']} distillation steps",
                     "variant": dname, "distill_seconds": round(time.perf_counter() - began, 1),
                     "distillation": {k: report[k] for k in ("steps_run", "best_step", "learning_rate")},
                     "validation": compute_metrics(distilled, validation, torch_runner(base, student), dname),
                     "heldout": compute_metrics(distilled, heldout, torch_runner(base, student), dname)})
    progress.stage = "timing the exports"
    rng = np.random.default_rng(0)
    feeds = {"input_ids": rng.integers(1000, 20000, (BATCH, args.seq), dtype=np.int64),
             "attention_mask": np.ones((BATCH, args.seq), np.int64)}
    if "token_type_ids" in base.input_names:
        feeds["token_type_ids"] = np.zeros((BATCH, args.seq), np.int64)
    _time({name: _session(path, args.threads) for name, path in exported.items()}, feeds,
          args.rounds, args.runs, progress.rounds)


def _interrupted(args: argparse.Namespace, progress: Progress) -> int:
    """Ctrl-C: write what finished (marked partial), say so in one line, status 130."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the files short
    try:
        return _write_partial(args, progress)
    finally:
        signal.signal(signal.SIGINT, previous)  # main() may be called in-process (the tests)


def _write_partial(args: argparse.Namespace, progress: Progress) -> int:
    where = (f"interrupted by Ctrl-C while {progress.stage}: {len(progress.rows)} of "
             f"{len(args.pairs) * len(args.criteria_list)} pruned models finished, "
             f"{len(progress.rounds)} of {args.rounds} timing rounds")
    if not progress.rows:
        print(f"bench_pruning.py: {where}; nothing written", file=sys.stderr)
        return 130
    write_results(compose(progress, interrupted=where), args.paths, png=False)
    print(f"bench_pruning.py: {where}; wrote {args.paths['json']} and {args.paths['md']} marked partial "
          f"(--replot draws the .png)", file=sys.stderr)
    return 130


def main(argv: list[str] | None = None) -> int:
    args, parser = parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.replot:
        problem = replot(args.paths)
        if problem:
            parser.error(problem)
        return 0
    work = Path(tempfile.mkdtemp(prefix="bench-pruning-"))
    progress = Progress()
    try:
        try:
            _sweep(args, work, progress)
        except UsageError as error:
            parser.error(str(error))
        except KeyboardInterrupt:
            return _interrupted(args, progress)
        progress.stage = "writing the results"
        result = compose(progress)
        write_results(result, args.paths)
        print(markdown(result))
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
