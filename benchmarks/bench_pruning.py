"""Structured pruning of the default model without labels: accuracy against the unpruned PyTorch
model for head / FFN ratios, label-free activation importance vs the magnitude baseline, with and
without the least-squares reconstruction (converters/pruning/). PyTorch FP32 only: no export, no
quantization, no timing yet (issue 11's first part).

Importance and reconstruction use the fit texts; accuracy is the sentence-embedding cosine on the
validation texts (the held-out benchmark texts are not read).

    .venv/bin/python benchmarks/bench_pruning.py --ratios 0.25/0.25,0.33/0.5,0.5/0.5 --json benchmarks/results/pruning_minilm.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from edge_runtime._device import detect


def _runner(source):
    import torch

    def run(feeds):
        with torch.no_grad():
            out = source.module(*[torch.from_numpy(feeds[n]) for n in source.input_names])
        return {source.output_names[0]: out.numpy()}

    return run


def main() -> None:

    from converters.core.validate import compute_metrics, reference_outputs
    from converters.inputs.calibration import load_texts, split_texts
    from converters.inputs.source import load_source
    from converters.pruning.importance import magnitude, plan, score
    from converters.pruning.reconstruct import prune_and_reconstruct
    from converters.pruning.surgery import prune

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratios", default="0.25/0.25,0.33/0.5,0.5/0.5", help="heads/ffn pairs")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    texts = split_texts(load_texts())
    base = load_source(None)
    validation = reference_outputs(base, texts.validation.texts)
    fit = reference_outputs(base, texts.fit.texts)
    activation_scores = score(base.module, fit.batches, base.input_names)
    magnitude_scores = magnitude(base.module)
    params = sum(p.numel() for p in base.module.parameters())
    rows = []
    for pair in args.ratios.split(","):
        heads, ffn = (float(v) for v in pair.split("/"))
        for criterion, scores in (("activation", activation_scores), ("magnitude", magnitude_scores)):
            for refit in (False, True):
                source = load_source(None)
                keep = plan(scores, heads, ffn)
                started = time.perf_counter()
                report = (prune_and_reconstruct(source.module, keep, fit.batches, source.input_names) if refit
                          else prune(source.module, keep))
                seconds = time.perf_counter() - started
                metrics = compute_metrics(source, validation, _runner(source), "pruned")
                row = {"heads": heads, "ffn": ffn, "criterion": criterion, "reconstruction": refit,
                       "parameters": report["parameters_after"] / params, "validation": metrics,
                       "seconds": round(seconds, 1)}
                rows.append(row)
                print(f"heads {heads:.2f} ffn {ffn:.2f} {criterion:<10} {'refit' if refit else 'slice':<5} "
                      f"params {row['parameters']:.3f}x  cosine {metrics['cosine_mean']:.4f} / "
                      f"{metrics['cosine_min']:.4f}  ({seconds:.0f} s)", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"cpu": detect().cpu_model, "model": base.name, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
