"""Would per-row activation scales make dynamic INT8 batch-invariant *and* batchable? (issue 12)

onnxruntime's dynamic INT8 (DynamicQuantizeLinear -> MatMulInteger, fused into
DynamicQuantizeMatMul) takes one activation scale per tensor, i.e. per batch: a sentence's vector
depends on its batch neighbours, so edge-serve's batch-invariant default runs such artifacts one
input at a time. onnxruntime's integer GEMMs (MatMulInteger, MatMulIntegerToFloat,
DynamicQuantizeMatMul) accept only a scalar activation scale and zero point, so a per-row scheme
has to be built from plain ops. This script builds the cheapest one we found and measures it
against the artifact it was made from:

    a   = max(|x|) per row (ReduceMax, ReduceMin, Neg, Max on [batch, seq, 1])
    x_q = QuantizeLinear(x / a, 1/127, zero point 127)        # every row on the same fixed grid
    y   = MatMulInteger(x_q, W_q) * (w_scale / 127) * a       # Cast + Mul fused, one more Mul

Each row's codes depend on that row only, so batched outputs equal the one-by-one outputs
exactly. Reported: accuracy against the FP32 artifact (mean/min cosine of pooled embeddings on
held-out sentences), the largest batch-vs-alone difference, and time (interleaved rounds,
medians): the held-out sentences one by one and length-sorted in batches of 16, and one
128-token input, for the artifact, its per-row rewrite and FP32; and, the other batch-invariant
way to keep every core busy, the sentences one by one but --threads of them at once, each call
on one thread.

    python benchmarks/bench_per_row_int8.py DIR --json benchmarks/results/per_row_int8.json

DIR: an edge-convert output directory with onnx-fp32 and a dynamic onnx-int8 (e.g. x86-avx2 or
x86-avx512-vnni). The rewrite is a measurement, not a converter pass: see RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edge_runtime._bench_config import DEFAULT_SHAPE  # noqa: E402 - after the sys.path line

HELDOUT = ROOT / "benchmarks" / "data" / "heldout_en.txt"


def per_row_rewrite(src: Path, dst: Path) -> int:
    """Rewrite every DynamicQuantizeLinear of `src` into the per-row scheme above; returns how
    many. Precondition: each DQL feeds MatMulInteger -> Cast -> Mul(scale) chains (what
    onnxruntime's quantize_dynamic writes)."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    graph.initializer.extend([
        numpy_helper.from_array(np.array(1 / 127, np.float32), "per_row_grid"),
        numpy_helper.from_array(np.array(127, np.uint8), "per_row_zero_point"),
        numpy_helper.from_array(np.array(1e-12, np.float32), "per_row_eps"),
        numpy_helper.from_array(np.array([-1], np.int64), "per_row_axes"),
    ])

    def reduce(op: str, x: str, out: str):
        if opset >= 18:
            return helper.make_node(op, [x, "per_row_axes"], [out], keepdims=1)
        return helper.make_node(op, [x], [out], axes=[-1], keepdims=1)

    nodes, row_scale = [], {}
    for node in graph.node:
        if node.op_type != "DynamicQuantizeLinear":
            nodes.append(node)
            continue
        x, (xq, xs, xzp), p = node.input[0], node.output, node.name + "_per_row"
        nodes += [
            reduce("ReduceMax", x, p + "_max"),
            reduce("ReduceMin", x, p + "_min"),
            helper.make_node("Neg", [p + "_min"], [p + "_neg_min"]),
            helper.make_node("Max", [p + "_max", p + "_neg_min", "per_row_eps"], [p + "_a"]),
            helper.make_node("Div", [x, p + "_a"], [p + "_unit"]),
            helper.make_node("QuantizeLinear", [p + "_unit", "per_row_grid", "per_row_zero_point"], [xq]),
            helper.make_node("Identity", ["per_row_grid"], [xs]),
            helper.make_node("Identity", ["per_row_zero_point"], [xzp]),
        ]
        for matmul in consumers.get(xq, []):
            cast = consumers[matmul.output[0]][0]
            scale_mul = consumers[cast.output[0]][0]
            row_scale[scale_mul.name] = p + "_a"
    rewritten = []
    for node in nodes:
        rewritten.append(node)
        if node.name in row_scale:
            out = node.output[0]
            node.output[0] = out + "_per_row_unscaled"
            rewritten.append(helper.make_node("Mul", [node.output[0], row_scale[node.name]], [out],
                                              name=node.name + "_per_row_scale"))
    del graph.node[:]
    graph.node.extend(rewritten)
    onnx.save(model, str(dst), save_as_external_data=True, location=dst.name + ".data")
    return len(row_scale)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dir", type=Path)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--threads", type=int, default=DEFAULT_SHAPE.threads)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    import onnxruntime as ort

    from edge_runtime import load
    from edge_runtime._device import detect

    texts = [line.strip() for line in HELDOUT.read_text().splitlines() if line.strip() and not line.startswith("#")]
    encoder = load(args.dir, artifact="onnx-fp32", verify=False)._text()
    work = Path(tempfile.mkdtemp(prefix="per-row-"))
    per_row = work / "onnx-int8-per-row.onnx"
    count = per_row_rewrite(args.dir / "onnx-int8.onnx", per_row)

    def session(path: Path):
        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    sessions = {"fp32": session(args.dir / "onnx-fp32.onnx"), "int8": session(args.dir / "onnx-int8.onnx"),
                "int8 per-row": session(per_row)}
    # The other batch-invariant way to use every core: inputs one by one, but `threads` of them at
    # once, each on one thread (onnxruntime's run() may be called from several threads).
    single = ort.SessionOptions()
    single.intra_op_num_threads = 1
    lanes = ort.InferenceSession(str(args.dir / "onnx-int8.onnx"), single, providers=["CPUExecutionProvider"])
    output = sessions["fp32"].get_outputs()[0].name

    def feeds(group: list[str]) -> dict[str, np.ndarray]:
        return encoder.pad(encoder.encode_texts(group, truncate=True))

    def embed(name: str, groups: list[list[str]]) -> np.ndarray:
        vectors = []
        for group in groups:
            f = feeds(group)
            hidden = sessions[name].run([output], f)[0]
            mask = f["attention_mask"][..., None]
            v = (hidden * mask).sum(1) / mask.sum(1)
            vectors.append(v / np.linalg.norm(v, axis=1, keepdims=True))
        return np.concatenate(vectors)

    order = sorted(texts, key=lambda t: int(feeds([t])["attention_mask"].sum()))
    alone_groups = [[t] for t in order]
    batch_groups = [order[i : i + args.batch] for i in range(0, len(order), args.batch)]
    reference = embed("fp32", alone_groups)
    accuracy = {}
    for name in ("int8", "int8 per-row"):
        alone, batched = embed(name, alone_groups), embed(name, batch_groups)
        cos = (alone * reference).sum(1)
        accuracy[name] = {"cosine_mean": float(cos.mean()), "cosine_min": float(cos.min()),
                          "batch_vs_alone_max_abs_diff": float(np.abs(batched - alone).max())}

    long = feeds([" ".join(texts)])
    long = {k: v[:, :128] for k, v in long.items()}
    workloads = {"alone": [feeds(g) for g in alone_groups], f"batches of {args.batch}": [feeds(g) for g in batch_groups],
                 "one 128-token input x20": [long] * 20}
    variants = [(n, w) for w in workloads for n in (("int8", "int8 per-row", "fp32") if "128" in w else ("int8", "int8 per-row"))]
    def run_lanes(inputs: list[dict[str, np.ndarray]]) -> None:
        def part(k: int) -> None:
            for f in inputs[k :: args.threads]:
                lanes.run([output], f)
        workers = [threading.Thread(target=part, args=(k,)) for k in range(args.threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()

    for name, workload in variants:  # warm-up
        for f in workloads[workload][:3]:
            sessions[name].run([output], f)
    run_lanes(workloads["alone"])
    times: dict[str, list[float]] = {}
    lanes_key = f"int8, alone, {args.threads} at once on 1 thread each"
    for _ in range(args.rounds):
        for name, workload in variants:
            start = time.perf_counter()
            for f in workloads[workload]:
                sessions[name].run([output], f)
            times.setdefault(f"{name}, {workload}", []).append(time.perf_counter() - start)
        start = time.perf_counter()
        run_lanes(workloads["alone"])
        times.setdefault(lanes_key, []).append(time.perf_counter() - start)
    medians = {k: float(np.median(v)) for k, v in times.items()}
    base = medians["int8, alone"]

    device = detect()
    result = {
        "device": {"cpu": device.cpu_model, "isa": device.notable_features(), "threads": args.threads,
                   "python": platform.python_version(), "onnxruntime": ort.__version__},
        "artifact_dir": str(args.dir), "rewritten_quantizers": count, "sentences": len(texts),
        "accuracy_vs_fp32": accuracy, "seconds_median": medians,
        "rounds": {k: v for k, v in times.items()},
    }
    print(f"{device.cpu_model}; {', '.join(device.notable_features())}; {args.threads} threads; {count} quantizers rewritten\n")
    print("| variant | cosine mean / min vs FP32 | batch vs alone max abs diff |")
    print("|---|---|---|")
    for name, a in accuracy.items():
        print(f"| {name} | {a['cosine_mean']:.4f} / {a['cosine_min']:.4f} | {a['batch_vs_alone_max_abs_diff']:.2e} |")
    print(f"\n| variant and workload | median ms | vs int8 alone ({len(texts)} sentences) |")
    print("|---|---:|---:|")
    for key, value in medians.items():
        print(f"| {key} | {value * 1000:.1f} | {value / base:.3f}x |")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
