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
zero (damp 0.01) and pulled toward the kept weights at each --damps value. Cosine of the pooled
embedding against the unpruned PyTorch FP32 model on the fit texts (what everything was fitted
on), the validation texts (what settings are chosen on) and the benchmark's held-out texts
(benchmarks/data/heldout_en.txt: reported, never used to choose). No timing: the shapes, and so
the speed, are the same for every row of a ratio pair except through the allocation (FLOPs are
equal by construction: heads and neurons cost the same in every layer).
Writes <out>.json and <out>.md.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
HELDOUT = ROOT / "benchmarks" / "data" / "heldout_en.txt"



def _markdown(result: dict) -> str:
    lines = [f"{result['model']}: cosine of the pooled embedding vs the unpruned PyTorch FP32 model "
             f"(mean / min); {result['fit_texts']} fit, {result['validation_texts']} validation, "
             f"{result['heldout_texts']} held-out texts", "",
             "| heads / FFN removed | allocation | re-fit | neurons removed per layer | fit | validation | held-out |",
             "|---|---|---|---|---|---|---|"]
    for row in result["rows"]:
        cells = [f"{row[k]['cosine_mean']:.4f} / {row[k]['cosine_min']:.4f}" for k in ("fit", "validation", "heldout")]
        lines.append(f"| {row['heads']:.2f} / {row['ffn']:.2f} | {row['allocation']} | {row['refit']} | "
                     f"{row['neurons_removed']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratios", default="0.08/0.1,0.33/0.5", help="heads/ffn pairs")
    parser.add_argument("--damps", default="0.1,0.3,1.0", help="pulls toward the kept weights to compare")
    parser.add_argument("--allocations", default="equal layers,sensitivity",
                        help="comma-separated subset of: equal layers, sensitivity")
    parser.add_argument("--out", type=Path, required=True, help="path prefix of the .json and .md")
    args = parser.parse_args()

    from converters.core.validate import compute_metrics, reference_outputs
    from converters.inputs.calibration import load_texts, split_texts
    from converters.inputs.source import load_source
    from converters.pruning.importance import plan
    from converters.pruning.obs import obs_scores
    from converters.pruning.prune_model import output_loss, torch_runner
    from converters.pruning.reconstruct import prune_and_reconstruct
    from converters.pruning.surgery import prune

    allocations = [a.strip() for a in args.allocations.split(",") if a.strip()]
    unknown = sorted(set(allocations) - {"equal layers", "sensitivity"})
    if unknown or not allocations:
        parser.error(f"--allocations: unknown {unknown}; choose from 'equal layers', 'sensitivity'")

    texts = split_texts(load_texts())
    base = load_source(None)
    heldout_texts = tuple(t for t in HELDOUT.read_text().splitlines() if t.strip())
    references = {"fit": reference_outputs(base, texts.fit.texts),
                  "validation": reference_outputs(base, texts.validation.texts),
                  "heldout": reference_outputs(base, heldout_texts)}
    fit = references["fit"]
    refits = [("none (sliced only)", None, False), ("toward zero, damp 0.01", 0.01, False)] + [
        (f"toward kept, damp {float(d):g}", float(d), True) for d in args.damps.split(",")]
    rows = []
    for pair in args.ratios.split(","):
        heads, ffn = (float(v) for v in pair.split("/"))
        for allocation in allocations:
            loss = output_loss(base, fit) if allocation == "sensitivity" else None
            began = time.perf_counter()
            scores = obs_scores(base.module, fit.batches, base.input_names, heads, ffn, loss=loss)
            keep = plan(scores, heads, ffn)
            print(f"{heads:.2f}/{ffn:.2f} {allocation}: scored in {time.perf_counter() - began:.0f} s",
                  file=sys.stderr, flush=True)
            for refit, damp, toward_kept in refits:
                module = copy.deepcopy(base.module)
                if damp is None:
                    prune(module, keep)
                else:
                    prune_and_reconstruct(module, keep, fit.batches, base.input_names, damp=damp,
                                          toward_kept=toward_kept)
                row = {"heads": heads, "ffn": ffn, "allocation": allocation, "refit": refit, "damp": damp,
                       "toward_kept": toward_kept,
                       "neurons_removed": [len(scores.neurons[i]) - len(keep[i].neurons) for i in sorted(keep)],
                       "heads_removed": [len(scores.heads[i]) - len(keep[i].heads) for i in sorted(keep)],
                       "sensitivity": {k: {str(i): w for i, w in v.items()} for k, v in scores.sensitivity.items()}}
                for name, reference in references.items():
                    row[name] = compute_metrics(base, reference, torch_runner(base, module), name)
                rows.append(row)
                print(f"  {refit}: fit {row['fit']['cosine_mean']:.4f}, validation "
                      f"{row['validation']['cosine_mean']:.4f}, held-out {row['heldout']['cosine_mean']:.4f}",
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
