#!/usr/bin/env python3
"""What the exact int32 rewrite of one ONNX INT8/INT4 model costs, part by part.

    python benchmarks/bench_exact_rewrite.py out/rpi4/onnx-int4.onnx --repeats 9

On a machine whose INT8 GEMM is not the target's arithmetic (AVX2 without VNNI, or
tools/avx2-only), every candidate a Pi or VNNI search scores is first rewritten by
converters/core/exact_integer_ops.py. This times, as medians over --repeats: ONNX shape
inference on the model as the rewriter receives it (its "full" cost before the weights were left
out) and on the copy the rewriter infers on now (converters.core.exact_integer_ops.
_without_weight_values), whether both give the same shapes, and the whole rewrite
(exact_integer_ops, load to save) of the model into a temporary directory.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _shapes(model) -> dict:
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    return {info.name: ([d.dim_value if d.HasField("dim_value") else None for d in info.type.tensor_type.shape.dim],
                        info.type.tensor_type.elem_type)
            for info in list(inferred.graph.value_info) + list(inferred.graph.output) + list(inferred.graph.input)}


def _median_ms(work, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        times.append((time.perf_counter() - started) * 1e3)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("model", type=Path, help="an ONNX INT8/INT4 model with integer GEMMs (e.g. onnx-int4.onnx)")
    parser.add_argument("--repeats", type=int, default=9, help="timed repeats per part (median)")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    if not args.model.is_file():
        parser.error(f"model {args.model}: no such file")

    import onnx

    from converters.core.exact_integer_ops import _without_weight_values, exact_integer_ops

    model = onnx.load(str(args.model))
    full, light = _shapes(model), _shapes(_without_weight_values(model))
    full_ms = _median_ms(lambda: _shapes(model), args.repeats)
    light_ms = _median_ms(lambda: _shapes(_without_weight_values(model)), args.repeats)
    with tempfile.TemporaryDirectory() as tmp:
        rewrite_ms = _median_ms(lambda: exact_integer_ops(args.model, Path(tmp) / "exact.onnx"), args.repeats)
    print(f"{args.model} ({model.ByteSize() / 1e6:.1f} MB with its weights, {len(model.graph.node)} nodes)")
    print(f"shape inference, whole model:          {full_ms:8.1f} ms")
    print(f"shape inference, weights left out:     {light_ms:8.1f} ms  (same {len(full)} shapes: {full == light})")
    print(f"exact_integer_ops, load to save:       {rewrite_ms:8.1f} ms")
    return 0 if full == light else 1


if __name__ == "__main__":
    sys.exit(main())
