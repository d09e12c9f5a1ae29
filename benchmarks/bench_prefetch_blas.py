#!/usr/bin/env python3
"""What a nice-19 process gets of the second core while the TFLite statistics are prefetched.

    python benchmarks/bench_prefetch_blas.py --seconds 15

While a conversion waits for its background TFLite export (a nice-19 process, single-threaded),
it computes the GPTQ input statistics of the TFLite recipes from the plain ONNX export
(converters/_artifacts_tflite.py, HessianCache.prefetch) with one onnxruntime thread, so that
the export keeps the other core. This times that computation for MiniLM's fit texts twice, with
numpy's BLAS at its default threads and held to one (threadpoolctl), each time beside a nice-19
single-thread spinner started a second earlier for --seconds, and prints the prefetch's wall and
CPU time and the CPU time the spinner got: what the export's process would get. The plain ONNX
export is written to --twin (exported there first when the file does not exist).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _spin(seconds: float, answer) -> None:
    os.nice(19)
    started, end = time.process_time(), time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass
    answer.put(time.process_time() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=15.0, help="how long the nice-19 spinner runs")
    parser.add_argument("--twin", type=Path, default=None,
                        help="the plain FP32 ONNX export of the built-in model (default: exported to a temporary folder)")
    args = parser.parse_args(argv)

    from threadpoolctl import threadpool_limits

    from converters.core.gptq import GPTQ_POLICY
    from converters.core.validate import make_batches
    from converters.export.export_onnx import ExportConfig, export_onnx
    from converters.inputs.calibration import load_texts, split_texts
    from converters.inputs.source import load_source
    from converters.tflite.hessians import OnnxTwin, hessian_rows

    source = load_source(None, "feature-extraction")
    folder = tempfile.TemporaryDirectory()
    twin_path = args.twin or Path(folder.name) / "plain.onnx"
    if not twin_path.exists():
        export_onnx(source, twin_path, ExportConfig())
    twin = OnnxTwin(twin_path)
    texts = split_texts(load_texts(None), None)
    _, rows = hessian_rows(make_batches(source, texts.fit.texts), 256, GPTQ_POLICY["int8"])
    print(f"{len(rows)} rows, {len(twin.inputs)} ONNX MatMul inputs")
    context = multiprocessing.get_context("spawn")
    for limited in (False, True):
        answer = context.Queue()
        spinner = context.Process(target=_spin, args=(args.seconds, answer))
        spinner.start()
        time.sleep(1.0)
        wall, cpu = time.perf_counter(), time.process_time()
        if limited:
            with threadpool_limits(limits=1, user_api="blas"):
                twin.gram_sums(rows, "row", None, threads=1)
        else:
            twin.gram_sums(rows, "row", None, threads=1)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        spinner.join()
        print(f"BLAS {'one thread' if limited else 'default threads'}: prefetch {wall:.1f} s wall, {cpu:.1f} s CPU; "
              f"the nice-19 spinner got {answer.get():.1f} s of CPU in its {args.seconds:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
