#!/usr/bin/env python3
"""Which onnxruntime kernel should run INT4 weights? The encoder's GEMM shapes, one run.

    python benchmarks/bench_gemm_kernels.py --rounds 7 --json benchmarks/results/gemm_kernels.json

A stack of 6 FFN blocks (MatMul [128 x 384] x [384 x 1536], ReLU, MatMul x [1536 x 384]) with
random weights, batch 1, 128 tokens, `--threads` intra-op threads, run as:
- FP32 MatMul (MLAS SGEMM), the baseline;
- dynamic INT8 (quantize_dynamic, per-channel, 7-bit weights) -> DynamicQuantizeMatMul;
- W4A8: the INT8 graph with its weights stored as 4-bit codes (converters/onnx/quantize_w4a8.py),
  unpacked by onnxruntime at session start, so the same INT8 GEMM runs;
- MatMulNBits (onnxruntime's weight-only kernels, accuracy_level 4: activations quantized per
  block) at 4 and 8 bits, blocks of 32 and 128.
Reported: p50 per variant and the median over interleaved rounds of (variant / FP32) measured
in the same round; the machine may be shared, only the ratios mean anything.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edge_runtime._bench_config import DEFAULT_SHAPE  # noqa: E402 - after the sys.path line

K, N, M, LAYERS = 384, 1536, 128, 6


def _fp32_model(path: Path, rng) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits, x = [], [], "x"
    for layer in range(LAYERS):
        up = rng.standard_normal((K, N)).astype(np.float32) * 0.05
        down = rng.standard_normal((N, K)).astype(np.float32) * 0.05
        inits += [numpy_helper.from_array(up, f"up{layer}"), numpy_helper.from_array(down, f"down{layer}")]
        nodes += [
            helper.make_node("MatMul", [x, f"up{layer}"], [f"h{layer}"], name=f"up{layer}"),
            helper.make_node("Relu", [f"h{layer}"], [f"r{layer}"], name=f"relu{layer}"),
            helper.make_node("MatMul", [f"r{layer}", f"down{layer}"], [f"y{layer}"], name=f"down{layer}"),
        ]
        x = f"y{layer}"
    graph = helper.make_graph(nodes, "ffn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, M, K])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, M, K])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    onnx.save(model, str(path))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--threads", type=int, default=DEFAULT_SHAPE.threads)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    from converters.onnx.quantize_w4a8 import W4A8Weights

    logging.getLogger("onnxruntime.quantization").setLevel(logging.WARNING)
    rng = np.random.default_rng(0)
    work = Path(tempfile.mkdtemp(prefix="bench-gemm-"))
    fp32 = work / "fp32.onnx"
    _fp32_model(fp32, rng)
    x = rng.standard_normal((1, M, K)).astype(np.float32)
    paths = {"FP32 MatMul": fp32}

    paths["dynamic INT8 (DynamicQuantizeMatMul)"] = work / "int8.onnx"
    quantize_dynamic(str(fp32), str(paths["dynamic INT8 (DynamicQuantizeMatMul)"]), weight_type=QuantType.QInt8,
                     per_channel=True, reduce_range=True)
    # W4A8 from that INT8 graph; the Hessians come from random activations of the right shape.
    batches = [{"x": rng.standard_normal((1, M, K)).astype(np.float32), "attention_mask": np.ones((1, M), np.int64)}]
    weights = W4A8Weights(paths["dynamic INT8 (DynamicQuantizeMatMul)"], fp32, _stats_model(fp32, work), batches,
                          (-64, 64))
    paths["W4A8 (4-bit storage, INT8 GEMM)"] = work / "w4a8.onnx"
    onnx.save(weights.build(set(weights.weights)), str(paths["W4A8 (4-bit storage, INT8 GEMM)"]))
    for bits, block in ((4, 32), (4, 128), (8, 32), (8, 128)):
        quantizer = MatMulNBitsQuantizer(onnx.load(str(fp32)), bits=bits, block_size=block, is_symmetric=False,
                                         accuracy_level=4)
        quantizer.process()
        path = work / f"nbits{bits}_{block}.onnx"
        quantizer.model.save_model_to_file(str(path))
        paths[f"MatMulNBits {bits}-bit block {block} (accuracy_level 4)"] = path

    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    sessions = {name: ort.InferenceSession(str(p), options, providers=["CPUExecutionProvider"])
                for name, p in paths.items()}
    times: dict[str, list[float]] = {name: [] for name in sessions}
    names = list(sessions)
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            session = sessions[name]
            for _ in range(3):
                session.run(None, {"x": x})
            samples = []
            for _ in range(args.runs):
                start = time.perf_counter()
                session.run(None, {"x": x})
                samples.append(time.perf_counter() - start)
            times[name].append(float(np.median(samples)) * 1000)
    base = times["FP32 MatMul"]
    results = {name: {"p50_ms": statistics.median(t), "ratio": statistics.median(a / b for a, b in zip(t, base))}
               for name, t in times.items()}
    print(f"\n{LAYERS} x FFN ([{M} x {K}] x [{K} x {N}] and back), {args.threads} threads, onnxruntime "
          f"{ort.__version__}, {args.rounds} interleaved rounds x {args.runs} runs\n")
    print("| kernel | p50 ms | vs FP32 |\n|---|---:|---:|")
    for name, r in results.items():
        print(f"| {name} | {r['p50_ms']:.2f} | {r['ratio']:.3f}x |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
    return 0


def _stats_model(fp32: Path, work: Path) -> Path:
    """The FP32 graph with an attention_mask input, so the activation statistics code (which
    keeps real tokens only) can read it: the mask is not used by any node. Any sequence length."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(fp32))
    # GPTQ's policy adds short prefix rows (converters/core/gptq.py): the sequence axis is free here
    for value in list(model.graph.input) + list(model.graph.output):
        value.type.tensor_type.shape.dim[1].dim_param = "sequence"
    model.graph.input.append(helper.make_tensor_value_info("attention_mask", TensorProto.INT64, [1, "sequence"]))
    path = work / "stats.onnx"
    onnx.save(model, str(path))
    return path


if __name__ == "__main__":
    sys.exit(main())
