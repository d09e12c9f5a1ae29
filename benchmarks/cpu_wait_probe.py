"""How the CPU-wait share (edge_runtime/_contention.py) reads on a quiet and on a busy machine.

Times batch-1 runs of an ONNX artifact and prints the p50 with the share of the timed wall time
during which some task waited for a CPU (Linux pressure-stall information). Run it alone, then
next to other jobs, to see where edge-convert / edge-bench / edge-tune's busy note (share above
BUSY_SHARE) comes from:

    .venv/bin/python benchmarks/cpu_wait_probe.py out/x86-avx2/onnx-int8.onnx --runs 40
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main(argv: list[str] | None = None) -> int:
    import onnxruntime as ort

    from edge_runtime._bench_config import DEFAULT_SHAPE
    from edge_runtime._contention import BUSY_SHARE, CpuWait

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="an .onnx artifact taking input_ids / attention_mask (/ token_type_ids)")
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--threads", type=int, default=DEFAULT_SHAPE.threads)
    parser.add_argument("--seq", type=int, default=DEFAULT_SHAPE.seq)
    args = parser.parse_args(argv)
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    session = ort.InferenceSession(args.model, options, providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    feeds = {"input_ids": np.full((1, args.seq), 100, np.int64), "attention_mask": np.ones((1, args.seq), np.int64),
             "token_type_ids": np.zeros((1, args.seq), np.int64)}
    feeds = {k: v for k, v in feeds.items() if k in names}
    for _ in range(3):
        session.run(None, feeds)
    times = []
    with CpuWait() as waited:
        for _ in range(args.runs):
            started = time.perf_counter()
            session.run(None, feeds)
            times.append(time.perf_counter() - started)
    share = waited.share
    print(f"p50 {np.median(times) * 1e3:.2f} ms over {args.runs} runs, {args.threads} threads; CPU-wait share "
          + ("unknown (no /proc/pressure/cpu)" if share is None else f"{share:.3f}")
          + f" (flagged above {BUSY_SHARE})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
