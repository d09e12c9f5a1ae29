"""What GPTQ's Hessian sums cost in float32 or float64 products, and what the choice does to the artifacts.

Runs edge-convert in this process with converters.core._activations.GRAM_PRODUCT set to
`--product` (float64 is edge-convert's own), and times every Hessian pass: the ONNX writers'
(core/gptq.input_hessians), the TFLite writers' read from the ONNX twin
(tflite/hessians.OnnxTwin.gram_sums) or tapped from the interpreter (collect_hessians), each with
the seconds its products took (GramSums._flush). Prints those with every artifact's metrics from
the manifest; compare two runs' artifacts on held-out texts with benchmarks/heldout_accuracy.py.

    .venv/bin/python benchmarks/bench_gram_precision.py --product float64 -- --target rpi4 --out /tmp/g64 --force
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_gc_pauses import add_convert_arguments, convert_arguments, report  # noqa: E402 - after the path


class Passes:
    """Per Hessian pass: its name, seconds, and the seconds of the products inside it."""

    def __init__(self):
        self.passes: list[dict] = []
        self.products = 0.0  # seconds of GramSums products so far

    def timed(self, owner, attribute: str, label: str) -> None:
        original = getattr(owner, attribute)
        passes = self

        def run(*args, **kwargs):
            started, products = time.perf_counter(), passes.products
            try:
                return original(*args, **kwargs)
            finally:
                passes.passes.append({"pass": label, "seconds": round(time.perf_counter() - started, 2),
                                      "product_seconds": round(passes.products - products, 2)})

        setattr(owner, attribute, run)

    def count_products(self, gram_class) -> None:
        flush = gram_class._flush
        passes = self

        def timed_flush(grams, only=None):
            started = time.perf_counter()
            try:
                return flush(grams, only)
            finally:
                passes.products += time.perf_counter() - started

        gram_class._flush = timed_flush


def _metrics(out: Path) -> dict:
    """{artifact: metrics} of every manifest under `out` (one target or several)."""
    found = {}
    for manifest in sorted(out.glob("**/manifest.json")):
        data = json.loads(manifest.read_text())
        for artifact in data["artifacts"]:
            found[f"{data['target']['id']}/{artifact['name']}"] = artifact["metrics"]
    return found


def main(argv: list[str] | None = None) -> int:
    import numpy as np

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--product", choices=["float32", "float64"], default="float64",
                        help="the dtype of each block's product (sums are float64 either way)")
    add_convert_arguments(parser)
    args = parser.parse_args(argv)
    convert_args = convert_arguments(parser, args)

    import converters.core._activations as activations
    import converters.core.gptq as gptq
    import converters.tflite.hessians as hessians
    from converters.cli import main as edge_convert

    activations.GRAM_PRODUCT = getattr(np, args.product)
    passes = Passes()
    passes.count_products(activations.GramSums)
    passes.timed(gptq, "input_hessians", "onnx input_hessians")
    passes.timed(hessians.OnnxTwin, "gram_sums", "tflite twin gram_sums")
    passes.timed(hessians, "collect_hessians", "tflite collect_hessians")
    started = time.perf_counter()
    code = edge_convert(convert_args, standalone_mode=False)
    out = Path(convert_args[convert_args.index("--out") + 1]) if "--out" in convert_args else None
    figures = {"command": sys.argv, "product": args.product, "wall_seconds": round(time.perf_counter() - started, 1),
               "max_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 3),
               "hessian_passes": passes.passes,
               "hessian_seconds": round(sum(p["seconds"] for p in passes.passes), 2),
               "product_seconds": round(passes.products, 2),
               "metrics": _metrics(out) if out else "give --out to read the manifests"}
    report(figures, args.json)
    return code or 0


if __name__ == "__main__":
    sys.exit(main())
