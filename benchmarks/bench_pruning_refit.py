"""Pruning ablation (issue 11): how the allocation across layers and the re-fit's regularizer
change accuracy at fixed head / FFN shares, for the default model.

    .venv/bin/python benchmarks/bench_pruning_refit.py --ratios 0.08/0.1,0.33/0.5 \\
        --damps 0.1,0.3,1.0 --out benchmarks/results/pruning_refit

Per ratio pair, two allocations of the same obs criterion (converters/pruning/obs.py):
- "equal layers": every layer's removal costs weigh 1 (edge-convert before run W)
- "sensitivity": each layer's costs weighted by its measured output loss on the fit texts
  (obs_scores' loss=, what edge-convert uses)
and, for each, the model sliced without any re-fit (how much the *choice* of units alone over-fits
the fit texts), then the re-fit (converters/pruning/reconstruct.py) with the former ridge toward
zero (damp 0.01) and pulled toward the kept weights at each --damps value (the FFN output's pull;
the attention output's is each --attention-damps value, default edge-convert's ATTENTION_DAMP; the
Q/K/V and FFN-input projections' each --input-damps value, default INPUT_DAMP, "none" keeps them sliced). Cosine of the pooled
embedding against the unpruned PyTorch FP32 model on the fit texts (what everything was fitted
on), the validation texts (what settings are chosen on) and the benchmark's held-out texts
(benchmarks/data/heldout_en.txt: reported, never used to choose).

What the re-fit sees can be varied too (ranking always on all fit texts, with obs's ridge or each
--obs-damps value): --fit-fractions re-fits on an evenly spread share of the fit texts (how the
validation score grows with more texts), --augment on the fit texts plus copies made from them
alone (words shuffled, random word spans, pairs joined, words substituted). No timing: the shapes, and so
the speed, are the same for every row of a ratio pair except through the allocation (FLOPs are
equal by construction: heads and neurons cost the same in every layer).
--steps K prunes in K equal steps too (each step re-ranks the pruned, re-fitted model and re-fits
toward the unpruned one: `stepped`), against the one-shot rows. Each one-shot row records how long
its prune_and_reconstruct took (`refit_seconds`; a busy machine makes it longer). Writes <out>.json
and <out>.md.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
HELDOUT = ROOT / "benchmarks" / "data" / "heldout_en.txt"
AUGMENTS = ("shuffle", "spans", "concat", "substitute")


def spread_share(texts: tuple[str, ...], fraction: float) -> tuple[str, ...]:
    """`fraction` of `texts`, picked evenly along the file (which groups texts by domain)."""
    count = max(1, round(len(texts) * fraction))
    return tuple(texts[int(i * len(texts) / count)] for i in range(count))


def augmented(texts: tuple[str, ...], kinds: list[str], seed: int = 0,
              vocabulary: tuple[str, ...] = ()) -> tuple[str, ...]:
    """New texts made from `texts` alone, one per text and kind: its words shuffled ("shuffle"), a
    random span of its words ("spans"), it joined with another fit text ("concat"), 30 % of its
    words replaced by random whole words of the tokenizer's `vocabulary` ("substitute": tokens
    the fit texts never show)."""
    import random

    rng = random.Random(seed)
    out = []
    for kind in kinds:
        for text in texts:
            words = text.split()
            if kind == "shuffle":
                rng.shuffle(words)
                out.append(" ".join(words))
            elif kind == "substitute":
                out.append(" ".join(rng.choice(vocabulary) if rng.random() < 0.3 else w for w in words))
            elif kind == "spans":
                length = rng.randint(1, max(1, len(words)))
                start = rng.randint(0, len(words) - length)
                out.append(" ".join(words[start:start + length]))
            else:
                out.append(text + " " + rng.choice(texts))
    return tuple(out)


def stepped(base, fit, heads: float, ffn: float, steps: int, damp: float, attention_damp, obs_damp: float,
            input_damp=None):
    """`base`'s module pruned to (heads, ffn) in `steps` equal steps instead of one: each step ranks
    the current (pruned, re-fitted) model with the sensitivity allocation and removes its share of
    what is left, and every re-fit targets the *unpruned* model (reconstruct's `teacher`), so errors
    are corrected against the original, not against the previous step. Returns (module, keep
    shares removed per step)."""
    import dataclasses

    from converters.pruning.importance import plan
    from converters.pruning.obs import obs_scores
    from converters.pruning.prune_model import output_loss
    from converters.pruning.reconstruct import prune_and_reconstruct

    module = copy.deepcopy(base.module)
    done = (0.0, 0.0)
    for step in range(1, steps + 1):
        goal = (heads * step / steps, ffn * step / steps)
        share = tuple((g - d) / (1 - d) for g, d in zip(goal, done))  # of what is left
        current = dataclasses.replace(base, module=module)
        scores = obs_scores(module, fit.batches, base.input_names, *share, damp=obs_damp,
                            loss=output_loss(current, fit), calibrate_at=share)
        prune_and_reconstruct(module, plan(scores, *share), fit.batches, base.input_names, damp=damp,
                              attention_damp=attention_damp, teacher=base.module, input_damp=input_damp)
        done = goal
    return module


def _whole_words(tokenizer) -> tuple[str, ...]:
    """The vocabulary's whole, alphabetic words of 3+ letters (no "##" pieces, no specials)."""
    return tuple(sorted(w for w in tokenizer.get_vocab() if w.isalpha() and w.isascii() and len(w) >= 3))


def _markdown(result: dict) -> str:
    lines = [f"{result['model']}: cosine of the pooled embedding vs the unpruned PyTorch FP32 model "
             f"(mean / min); {result['fit_texts']} fit, {result['validation_texts']} validation, "
             f"{result['heldout_texts']} held-out texts", "",
             "| heads / FFN removed | allocation | obs ridge | re-fit | re-fit texts | neurons removed per layer "
             "| fit | validation | held-out | re-fit s |",
             "|---|---|---|---|---|---|---|---|---|---:|"]
    for row in result["rows"]:
        cells = [f"{row[k]['cosine_mean']:.4f} / {row[k]['cosine_min']:.4f}" for k in ("fit", "validation", "heldout")]
        lines.append(f"| {row['heads']:.2f} / {row['ffn']:.2f} | {row['allocation']} | {row['obs_damp']:g} | "
                     f"{row['refit']} | {row['refit_texts']} | {row['neurons_removed']} | " + " | ".join(cells)
                     + f" | {'-' if row.get('refit_seconds') is None else format(row['refit_seconds'], '.1f')} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratios", default="0.08/0.1,0.33/0.5", help="heads/ffn pairs")
    parser.add_argument("--damps", default="0.1,0.3,1.0", help="pulls toward the kept weights to compare")
    parser.add_argument("--attention-damps", default=None,
                        help="pulls of the attention-output projection toward its kept weights, each combined "
                             "with every --damps value (default: reconstruct.ATTENTION_DAMP; 'same': --damps' own)")
    parser.add_argument("--input-damps", default=None,
                        help="pulls of the Q/K/V and FFN-input projections toward their kept weights, each "
                             "combined with every other pull ('none': not re-fitted; default: "
                             "reconstruct.INPUT_DAMP)")
    parser.add_argument("--allocations", default="equal layers,sensitivity",
                        help="comma-separated subset of: equal layers, sensitivity")
    parser.add_argument("--obs-damps", default=None,
                        help="ridges of obs's ranking to compare (default: obs.DAMP alone)")
    parser.add_argument("--fit-fractions", default="1",
                        help="shares of the fit texts the re-fit sees (e.g. 0.25,0.5,1)")
    parser.add_argument("--augment", default="",
                        help=f"also re-fit on all fit texts plus copies: any of {', '.join(AUGMENTS)} "
                             "(each alone, and all together)")
    parser.add_argument("--steps", default="1",
                        help="also prune in K equal steps (re-ranked and re-fitted to the unpruned model after "
                             "each; sensitivity allocation, fit texts, each --damps pull), e.g. 1,3")
    parser.add_argument("--out", type=Path, required=True, help="path prefix of the .json and .md")
    args = parser.parse_args()

    from converters.core.validate import compute_metrics, reference_outputs
    from converters.inputs.calibration import load_texts, split_texts
    from converters.inputs.source import load_source
    from converters.pruning.importance import plan
    from converters.pruning.obs import DAMP as OBS_DAMP
    from converters.pruning.obs import obs_scores
    from converters.pruning.prune_model import output_loss, torch_runner
    from converters.pruning.reconstruct import ATTENTION_DAMP, INPUT_DAMP, prune_and_reconstruct
    from converters.pruning.surgery import prune

    allocations = [a.strip() for a in args.allocations.split(",") if a.strip()]
    unknown = sorted(set(allocations) - {"equal layers", "sensitivity"})
    if unknown or not allocations:
        parser.error(f"--allocations: unknown {unknown}; choose from 'equal layers', 'sensitivity'")
    kinds = [k.strip() for k in args.augment.split(",") if k.strip()]
    if set(kinds) - set(AUGMENTS):
        parser.error(f"--augment: unknown {sorted(set(kinds) - set(AUGMENTS))}; choose from {', '.join(AUGMENTS)}")
    obs_damps = [float(d) for d in args.obs_damps.split(",")] if args.obs_damps else [OBS_DAMP]
    fractions = sorted({float(f) for f in args.fit_fractions.split(",")} | {1.0})  # all fit texts always
    if not all(0 < f <= 1 for f in fractions):
        parser.error("--fit-fractions: shares in (0, 1]")

    texts = split_texts(load_texts())
    base = load_source(None)
    heldout_texts = load_texts(HELDOUT, role="held-out").texts  # "#" lines are comments
    references = {"fit": reference_outputs(base, texts.fit.texts),
                  "validation": reference_outputs(base, texts.validation.texts),
                  "heldout": reference_outputs(base, heldout_texts)}
    fit = references["fit"]
    # What each re-fit sees: (label, number of texts, batches); the ranking always sees all fit texts.
    seen = []
    for fraction in fractions:
        share = spread_share(texts.fit.texts, fraction)
        batches = fit.batches if fraction == 1 else reference_outputs(base, share).batches
        seen.append(("fit" if fraction == 1 else f"{fraction:g} of fit", len(share), batches))
    for group in [[kind] for kind in kinds] + ([kinds] if len(kinds) > 1 else []):
        extra = augmented(texts.fit.texts, group, vocabulary=_whole_words(base.tokenizer))
        seen.append((f"fit + {'+'.join(group)}", len(texts.fit.texts) + len(extra),
                     fit.batches + reference_outputs(base, extra).batches))
    # (label, FFN damp, toward the kept weights, attention damp: None = the FFN's, input damp: None = sliced)
    attention = ([None] if args.attention_damps == "same" else
                 [float(a) for a in (args.attention_damps or str(ATTENTION_DAMP)).split(",")])
    inputs = [None if i.strip() == "none" else float(i) for i in (args.input_damps or str(INPUT_DAMP)).split(",")]
    refits = [("none (sliced only)", None, False, None, None),
              ("toward zero, damp 0.01", 0.01, False, None, None)] + [
        (f"toward kept, damp {float(d):g}" + ("" if a is None else f", attention {a:g}")
         + (", inputs sliced" if i is None else f", inputs {i:g}"), float(d), True, a, i)
        for d in args.damps.split(",") for a in attention for i in inputs]
    rows = []
    for pair in args.ratios.split(","):
        heads, ffn = (float(v) for v in pair.split("/"))
        for allocation in allocations:
            loss = output_loss(base, fit) if allocation == "sensitivity" else None
            for obs_damp in obs_damps:
                began = time.perf_counter()
                scores = obs_scores(base.module, fit.batches, base.input_names, heads, ffn, damp=obs_damp, loss=loss)
                keep = plan(scores, heads, ffn)
                print(f"{heads:.2f}/{ffn:.2f} {allocation}, obs ridge {obs_damp:g}: scored in "
                      f"{time.perf_counter() - began:.0f} s", file=sys.stderr, flush=True)
                for (refit, damp, toward_kept, attention_damp, input_damp), (label, count, batches) in \
                        itertools.product(refits, seen):
                    if not toward_kept and label != "fit":
                        continue  # the data variants are for edge-convert's re-fit (toward the kept weights)
                    module = copy.deepcopy(base.module)
                    seconds = None
                    if damp is None:
                        prune(module, keep)
                    else:
                        began = time.perf_counter()  # the re-fit's cost (the slicing is in it too)
                        prune_and_reconstruct(module, keep, batches, base.input_names, damp=damp,
                                              toward_kept=toward_kept, attention_damp=attention_damp,
                                              input_damp=input_damp)
                        seconds = time.perf_counter() - began
                    row = {"heads": heads, "ffn": ffn, "allocation": allocation, "obs_damp": obs_damp,
                           "refit": refit, "damp": damp, "toward_kept": toward_kept,
                           "attention_damp": damp if attention_damp is None else attention_damp,
                           "input_damp": input_damp,
                           "refit_texts": "-" if damp is None else f"{label} ({count})", "refit_seconds": seconds,
                           "neurons_removed": [len(scores.neurons[i]) - len(keep[i].neurons) for i in sorted(keep)],
                           "heads_removed": [len(scores.heads[i]) - len(keep[i].heads) for i in sorted(keep)],
                           "sensitivity": {k: {str(i): w for i, w in v.items()} for k, v in scores.sensitivity.items()}}
                    for name, reference in references.items():
                        row[name] = compute_metrics(base, reference, torch_runner(base, module), name)
                    rows.append(row)
                    print(f"  {refit}, {row['refit_texts']}: fit {row['fit']['cosine_mean']:.4f}, validation "
                          f"{row['validation']['cosine_mean']:.4f}, held-out {row['heldout']['cosine_mean']:.4f}"
                          + ("" if seconds is None else f" (re-fit {seconds:.1f} s)"), file=sys.stderr, flush=True)
    for steps in sorted({int(k) for k in args.steps.split(",")} - {1}):
        for pair in args.ratios.split(","):
            heads, ffn = (float(v) for v in pair.split("/"))
            for (refit, damp, toward_kept, attention_damp, input_damp) in refits:
                if not toward_kept:
                    continue
                for obs_damp in obs_damps:
                    began = time.perf_counter()
                    module = stepped(base, fit, heads, ffn, steps, damp, attention_damp, obs_damp, input_damp)
                    row = {"heads": heads, "ffn": ffn, "allocation": f"sensitivity, {steps} steps",
                           "obs_damp": obs_damp, "refit": refit, "damp": damp, "toward_kept": True,
                           "attention_damp": damp if attention_damp is None else attention_damp,
                           "input_damp": input_damp,
                           "refit_texts": f"fit ({len(texts.fit.texts)})", "steps": steps,
                           "neurons_removed": [], "heads_removed": [], "sensitivity": {}}
                    for name, reference in references.items():
                        row[name] = compute_metrics(base, reference, torch_runner(base, module), name)
                    rows.append(row)
                    print(f"  {heads:.2f}/{ffn:.2f} in {steps} steps, {refit}: fit {row['fit']['cosine_mean']:.4f}, "
                          f"validation {row['validation']['cosine_mean']:.4f}, held-out "
                          f"{row['heldout']['cosine_mean']:.4f} ({time.perf_counter() - began:.0f} s)",
                          file=sys.stderr, flush=True)
    from edge_runtime._device import detect

    device = detect()
    result = {"cpu": device.cpu_model, "model": base.name, "fit_texts": len(texts.fit.texts),
              "validation_texts": len(texts.validation.texts), "heldout_texts": len(heldout_texts), "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(_markdown(result))
    print(_markdown(result))


if __name__ == "__main__":
    main()
