"""Choose the shared GPTQ policy per precision (converters/core/gptq.py, GPTQ_POLICY) on the
validation split: how H is estimated (row or token weighting, short prefix rows) and damped.

Converts the default model for one target (rpi5: ONNX and TFLite, INT8 and INT4) once per
candidate policy, with the precision searches switched off so that each number shows the
rounding alone: all-INT8 and all-4-bit artifacts, scored on the validation texts. The held-out
benchmark texts are never read here.

    .venv/bin/python benchmarks/bench_gptq_policy.py --target rpi5 --json benchmarks/results/gptq_policy.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import converters.core.gptq as gptq
import converters.core.search as search
from converters import ConvertConfig, convert
from converters.core.gptq import HessianPolicy
from edge_runtime._device import detect

CANDIDATES = {
    "row+prefix, damp 0.05 / 0.1": {"int8": HessianPolicy(0.05), "int4": HessianPolicy(0.1)},
    "row+prefix, damp 0.05 / 0.2": {"int8": HessianPolicy(0.05), "int4": HessianPolicy(0.2)},
    "row+prefix, damp 0.03 / 0.03": {"int8": HessianPolicy(0.03), "int4": HessianPolicy(0.03)},
    "token, no prefix, damp 0.05 / 0.2": {"int8": HessianPolicy(0.05, "token", ()),
                                          "int4": HessianPolicy(0.2, "token", ())},
}


def _start_only(space, goal, *, move, progress=lambda m: None, start_metrics=None):
    """No search: the start (nothing promoted), judged on the validation texts."""
    size = space.build(frozenset())
    metrics = space.judge() if start_metrics is None else start_metrics
    return search.SearchResult([], metrics, size, [{"candidate": None, "moved": [], "bytes": size,
                                                    "metrics": metrics}])



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="rpi5")
    parser.add_argument("--only", help="comma-separated candidate names (default: all)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/gptq-policy"))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    # Every module that runs a search reads greedy_search by name at call time.
    import converters.onnx.quantize_w4a8 as w4a8
    import converters.tflite.quantize as tflite_quantize

    w4a8.greedy_search = tflite_quantize.greedy_search = _start_only
    names = args.only.split(",") if args.only else list(CANDIDATES)
    rows = []
    for index, name in enumerate(names):
        gptq.GPTQ_POLICY.update(CANDIDATES[name])
        out = args.work / f"{args.target}-{index}"
        started = time.perf_counter()
        convert(ConvertConfig(model=None, target=args.target, out=out, force=True, latency_runs=3))
        manifest = json.loads((out / "manifest.json").read_text())
        row = {"policy": name, "seconds": round(time.perf_counter() - started, 1),
               "validation": {a["name"]: a["metrics"] for a in manifest["artifacts"] if a["precision"] != "fp32"},
               "refused": {r["name"]: r["reason"] for r in manifest["refused"]}}
        rows.append(row)
        print(f"{name:<36} " + "  ".join(f"{k} {v['cosine_mean']:.4f}/{v['cosine_min']:.4f}"
                                         for k, v in row["validation"].items()), flush=True)
    if args.json:
        args.json.write_text(json.dumps({"cpu": detect().cpu_model, "target": args.target, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
