"""Time one TFLite INT4 search candidate's build: the recipe as the converter writes it (one entry
per op kind and precision, an alternation of exact scopes) against one entry per op (the form
before benchmarks/RESULTS.md run AC), in interleaved repetitions; every pair of outputs must be
byte-identical.

    .venv/bin/python benchmarks/bench_tflite_build.py OUT/tflite-fp32.tflite --reps 8 [--json F]

OUT is an `edge-convert --target rpi5` (or rpi4) output directory. Each repetition moves a
different FULLY_CONNECTED weight to INT8, as the search's ranking does; the INT4 values are
ai-edge-quantizer's round-to-nearest (GPTQ codes change values, not the build's work).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from converters.tflite import gptq_int4  # noqa: E402 - after the path
from converters.tflite.config import GptqInt4Config  # noqa: E402
from converters.tflite.edge_quantizer import op_entry  # noqa: E402
from converters.tflite.flatbuffer import compact_copy  # noqa: E402
from edge_runtime._device import detect  # noqa: E402

PREFIX, SUFFIX = "^(?:", ")$"


def one_entry_per_op(entries: list[dict]) -> list[dict]:
    """The same choices with one recipe entry per scope (as _mixed_recipe wrote them before)."""
    split = []
    for entry in entries:
        config = entry["op_config"]["weight_tensor_config"]
        scopes = entry["regex"][len(PREFIX) : -len(SUFFIX)].split("|")
        split += [op_entry("^" + scope + "$", entry["operation"], config["num_bits"], config["block_size"])
                  for scope in scopes]
    return split


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tflite", type=Path, help="an FP32 .tflite export (an artifact directory's tflite-fp32.tflite)")
    parser.add_argument("--reps", type=int, default=8)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.reps < 2:
        parser.error("--reps must be at least 2 (the first of each form is a warm-up)")
    if not args.tflite.is_file():
        parser.error(f"{args.tflite}: no such file")
    grouped_recipe = gptq_int4._mixed_recipe
    forms = {"grouped": grouped_recipe, "one entry per op": lambda *a: one_entry_per_op(grouped_recipe(*a))}
    seconds: dict[str, list[float]] = {name: [] for name in forms}
    with tempfile.TemporaryDirectory(prefix="bench-tflite-build-") as tmp:
        work = Path(tmp)
        compact_copy(args.tflite, work / "compact.tflite")
        builder = gptq_int4.Int4Builder(work / "compact.tflite", GptqInt4Config(), source=args.tflite)
        fcs = sorted(w.buffer for w in builder.int4)
        entries = {name: len(form(builder.weights, set(), GptqInt4Config().embedding_min_elements))
                   for name, form in forms.items()}
        try:
            for rep in range(args.reps):
                order = list(forms) if rep % 2 == 0 else list(forms)[::-1]
                for name in order:
                    gptq_int4._mixed_recipe = forms[name]
                    start = time.perf_counter()
                    builder.build(work / f"{rep}-{name}.tflite", {fcs[rep % len(fcs)]})
                    seconds[name].append(time.perf_counter() - start)
                built = [(work / f"{rep}-{name}.tflite").read_bytes() for name in forms]
                if built[0] != built[1]:
                    print(f"repetition {rep + 1}: the two recipe forms built different models", file=sys.stderr)
                    return 1
                print(f"repetition {rep + 1}/{args.reps} done (outputs byte-identical)", file=sys.stderr)
        finally:
            gptq_int4._mixed_recipe = grouped_recipe
    device = detect(measure_int8=False)
    medians = {name: statistics.median(t[1:]) for name, t in seconds.items()}
    print(f"{device.cpu_model} ({' '.join(device.notable_features())}); {args.tflite}; "
          f"{args.reps} repetitions, the first of each form not counted")
    print("| recipe form | entries | build median s | x one entry per op |")
    print("|---|---:|---:|---:|")
    for name in forms:
        print(f"| {name} | {entries[name]} | {medians[name]:.3f} | {medians[name] / medians['one entry per op']:.2f}x |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"command": sys.argv, "device": device.to_dict(), "entries": entries,
                                         "seconds": seconds, "median_s": medians}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
