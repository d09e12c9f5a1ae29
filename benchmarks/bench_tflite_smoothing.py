"""The TFLite recipes' smoothing strength chosen on the validation texts: edge-convert for one
target once per alpha (and once without smoothing), both recipes (gptq_wi8_afp32 and
gptq_wi4b32_afp32) smoothed alike, or only one of them (`--recipes int4`: the other keeps
edge-convert's own setting), each run in a fresh process, then the TFLite artifacts'
validation metrics (what the floors and searches use; the benchmark's held-out texts
take no part) from each manifest. A run whose manifest does not record the smoothing asked for
fails (the replaced setting did not reach the recipe).

    .venv/bin/python benchmarks/bench_tflite_smoothing.py --target rpi5 --alphas none 0.3 0.5 0.7 --out /tmp/alpha

Each run converts the whole profile (ONNX artifacts too: only the TFLite ones depend on alpha).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
from _bench_child import user_path  # noqa: E402 - after the path

# Runs edge-convert with the smoothing strength of the named TFLite recipes replaced (none: off):
# quantize_tflite's default (gptq_wi8_afp32) and the GptqInt4Config the pipeline's TFLite builders
# make (gptq_wi4b32_afp32, converters/_artifacts_tflite.py).
_CHILD = """
import functools, sys
from converters import _artifacts_tflite
from converters.tflite import quantize
alpha = None if sys.argv[1] == "none" else float(sys.argv[1])
recipes = sys.argv[2].split(",")
if "int8" in recipes:
    quantize.quantize_tflite.__kwdefaults__["smooth_alpha"] = alpha
if "int4" in recipes:
    _artifacts_tflite.GptqInt4Config = functools.partial(_artifacts_tflite.GptqInt4Config, smooth_alpha=alpha)
from converters.cli import main
sys.argv = ["edge-convert"] + sys.argv[3:]
sys.exit(main())
"""
RECIPES = {"both": "int8,int4", "int8": "int8", "int4": "int4"}


def smoothing_alpha(artifact: dict):
    """The alpha an artifact's manifest says its FC inputs were smoothed with (None: not)."""
    return ((artifact.get("quantization") or {}).get("smoothing") or {}).get("alpha")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", default="rpi5")
    parser.add_argument("--alphas", nargs="+", default=["none", "0.3", "0.5", "0.7"])
    parser.add_argument("--recipes", choices=sorted(RECIPES), default="both",
                        help="which TFLite recipes get each alpha (the others keep edge-convert's own)")
    # Absolute here: edge-convert runs with cwd=ROOT, where a relative --out meant the repository.
    parser.add_argument("--out", type=user_path, required=True,
                        help="one artifact directory per alpha goes here")
    args = parser.parse_args(argv)
    rows = []
    for alpha in args.alphas:
        out = args.out / f"{args.target}-alpha-{alpha}"
        print(f"converting {args.target} with alpha {alpha} into {out}", flush=True)
        done = subprocess.run([sys.executable, "-c", _CHILD, alpha, RECIPES[args.recipes], "--target", args.target,
                               "--out", str(out), "--force"], cwd=ROOT, stdout=subprocess.DEVNULL)
        if done.returncode:
            print(f"edge-convert failed for alpha {alpha} (exit {done.returncode})", file=sys.stderr)
            return done.returncode
        manifest = json.loads((out / "manifest.json").read_text())
        wanted = None if alpha == "none" else float(alpha)
        for artifact in manifest["artifacts"]:
            if artifact["format"] == "tflite" and artifact["precision"] in RECIPES[args.recipes].split(",") \
                    and (artifact.get("quantization") or {}).get("recipe", "").startswith("gptq") \
                    and smoothing_alpha(artifact) != wanted:
                print(f"{artifact['name']} was smoothed with alpha {smoothing_alpha(artifact)}, not {alpha}: "
                      "the setting did not reach its recipe", file=sys.stderr)
                return 1
        for artifact in manifest["artifacts"]:
            if artifact["format"] == "tflite" and artifact["precision"] != "fp32":
                quantization = artifact.get("quantization") or {}
                rows.append((alpha, artifact["name"], artifact["metrics"],
                             len((quantization.get("promoted") or {}).get("weights", []))))
    print("| alpha | artifact | validation cosine mean | min | promoted |")
    print("|---|---|---:|---:|---:|")
    for alpha, name, metrics, promoted in rows:
        print(f"| {alpha} | {name} | {metrics['cosine_mean']:.4f} | {metrics['cosine_min']:.4f} | {promoted} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
