"""Where does onnxruntime's ARM64 dynamic-INT8 path depart from x86's? (correctness, not speed)

tools/arm64-check measured MiniLM's rpi4/rpi5 onnx-int8 (DynamicQuantizeLinear -> MatMulInteger
-> Cast -> Mul -> Add, weights int8 per channel with zero points 0, activations uint8 per tensor)
at cosine 0.9974 between an emulated Cortex-A72/A76 and this x86 host (whose run equals the exact
int32 reference). This script runs the same things on x86 and, through the aarch64 Python that
tools/arm64-check builds (qemu-user, QEMU_CPU=cortex-a76 for rpi5 / cortex-a72 for rpi4), on ARM,
with identical inputs saved as .npz, and compares everything with a numpy reference:

1. Single ops on the artifact's real weights and real activations (captured from an x86 run of the
   artifact on the check's texts, as one padded batch): DynamicQuantizeLinear alone,
   MatMulInteger alone, the artifact's DQL->MatMulInteger->Cast->Mul->Add subgraph unfused
   (ORT_DISABLE_ALL) and fused (ORT_ENABLE_ALL: DynamicQuantizeMatMul, on both ISAs), and
   com.microsoft MatMulIntegerToFloat, on each CPU, also with mlas.disable_kleidiai=1.
   Reference: ONNX DynamicQuantizeLinear in float32 (round half to even), int32 GEMM computed
   exactly in int64, then float32(acc) * float32(x_scale * w_scale) + bias.
2. The whole artifact with every DQL and MatMulInteger output exposed (optimizations off): each
   node checked against the reference *from that CPU's own inputs*, and the first tensor where
   the CPUs' values part.
3. The whole artifact, batched and text by text, optimizations off and on: the worst per-row
   cosine of the last hidden state against x86 with optimizations off.

4. Accuracy of each run against the FP32 artifact on x86 (pooled embeddings, each text alone).

Finding (onnxruntime 1.32, MiniLM rpi4/rpi5 onnx-int8, which are the same file; see the printed
tables): ARM's integer arithmetic is exact and is x86's. DynamicQuantizeLinear (one scale and zero
point per tensor, round half to even) and MatMulInteger (int32, per-column weight zero points)
equal the numpy reference bit for bit on x86, Cortex-A76 (UDOT kernel) and Cortex-A72 (plain NEON)
alike, in single-op models and at every one of the artifact's 48 nodes from each CPU's own inputs:
no per-row activation scales, no u8->s8 shift error, no int16/fp16 accumulation. KleidiAI does
not take part (its int8-per-channel kernels are SME-only in this build; mlas.disable_kleidiai=1
changes no bit). The only difference inside the INT8 ops is the fused epilogue: with
optimizations on, both ISAs fuse DQL->MatMulInteger->Cast->Mul->Add into DynamicQuantizeMatMul,
and ARM computes its output as fma(float(acc), x_scale*w_scale, bias) with one rounding where x86
(and the unfused graph) rounds twice: <= 1 ulp. Unfused, the first tensor where ARM and x86 part
is the output of the first float op, the embeddings' LayerNormalization (identical input, outputs
apart by an ulp or two); Softmax, Erf/GELU and the fp32 attention MatMuls round differently too.
Such ulps flip a uint8 activation code now and then, each flip moves a value by a whole
quantization step, and the flips compound through the six layers (ARM's and x86's runs are two
realisations of the same quantization noise: equally accurate against FP32). In a padded batch
they spread further: most token-row DQL scales are set by a padding position, whose values drift
first, so a flip there rescales the whole batch; that is the 0.9974 (worst row, batched), against
0.9994 with each text alone; x86 itself, batched vs alone, differs by as much (0.9973).
So there is no ARM integer arithmetic to emulate: the exact int32 reference already is it. What
cannot be reproduced bit for bit on x86 is fp32 rounding of the float kernels (the LayerNorm
kernel's rounding was not matched by simple numpy models of it).

    .venv/bin/python benchmarks/arm64_int8_arithmetic.py --artifact /tmp/s11/all2/rpi5

Needs the aarch64 environments of tools/arm64-check (run it once). qemu timings mean nothing and
are not reported.
"""

from __future__ import annotations

import argparse
import importlib.machinery
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ARM_WORK = Path.home() / ".cache" / "edge-runtime-arm64"
CPUS = {"a76": "rpi5", "a72": "rpi4"}  # qemu CPU -> tools/arm64-check venv profile

# Runs inside every process (x86 and the emulated aarch64 Python, which has numpy and onnxruntime
# but no onnx): a list of jobs, each a model, an .npz of feeds ("group__input") and options. A job
# that fails (an option or op the build lacks) leaves OUT.err with its traceback instead of OUT.
RUNNER = r"""
import json, sys, traceback, numpy as np, onnxruntime as ort
for job in json.load(open(sys.argv[1])):
    try:
        so = ort.SessionOptions()
        so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, job["level"])
        so.intra_op_num_threads = 1
        so.log_severity_level = 3
        for k, v in job.get("config", {}).items():
            so.add_session_config_entry(k, v)
        s = ort.InferenceSession(job["model"], so, providers=["CPUExecutionProvider"])
        names = [o.name for o in s.get_outputs()]
        wanted = {i.name for i in s.get_inputs()}
        feeds = np.load(job["inputs"])
        res = {}
        for g in sorted({k.split("__")[0] for k in feeds.files}):
            feed = {k.split("__", 1)[1]: feeds[k] for k in feeds.files
                    if k.startswith(g + "__") and k.split("__", 1)[1] in wanted}
            res.update({g + "__" + n: v for n, v in zip(names, s.run(None, feed))})
        np.savez(job["out"], **res)
    except Exception:
        open(job["out"] + ".err", "w").write(traceback.format_exc())
"""


def load_arm64_check():
    loader = importlib.machinery.SourceFileLoader("arm64_check", str(ROOT / "tools/arm64-check"))
    spec = importlib.util.spec_from_loader("arm64_check", loader)
    module = importlib.util.module_from_spec(spec)
    sys.modules["arm64_check"] = module
    loader.exec_module(module)
    return module


def python_for(cpu: str) -> list[str]:
    if cpu == "x86":
        return [sys.executable]
    wrapper = ARM_WORK / "venv" / f"{CPUS[cpu]}-main" / "bin" / "python"
    if not wrapper.is_file():
        sys.exit(f"{wrapper} missing: run tools/arm64-check once to build the aarch64 environments")
    return [str(wrapper)]  # sets QEMU_CPU and QEMU_LD_PREFIX itself


def text_feeds(artifact: Path, manifest: dict) -> tuple[list[str], dict, dict, np.ndarray, np.ndarray]:
    """tools/arm64-check's texts; their padded batch; feeds of it ("b__INPUT") and of each text
    alone ("sR__INPUT"); the batch's attention mask and the texts' token counts."""
    from edge_runtime._text import TextEncoder

    texts = load_arm64_check().TEXTS
    tok = manifest["tokenizer"]
    encoder = TextEncoder(artifact / tok["files"][0]["path"], tok, [i["name"] for i in manifest["inputs"]])
    dtypes = {i["name"]: i["dtype"] for i in manifest["inputs"]}
    batch = {k: np.ascontiguousarray(v, dtype=dtypes[k]) for k, v in encoder.encode(list(texts)).items()}
    mask = batch["attention_mask"]
    lengths = mask.sum(1)
    feeds = {f"b__{k}": v for k, v in batch.items()}
    for r, n in enumerate(lengths):
        feeds.update({f"s{r}__{k}": np.ascontiguousarray(v[r : r + 1, :n]) for k, v in batch.items()})
    return list(texts), batch, feeds, mask, lengths


def pooled_texts(arrays, count: int, pooling: str) -> np.ndarray:
    """Unit-length pooled embeddings of the texts run alone ("sR__last_hidden_state", R < count)."""
    out = []
    for r in range(count):
        h = arrays[f"s{r}__last_hidden_state"][0].astype(np.float64)
        e = h.mean(0) if pooling == "mean" else h[0]
        out.append(e / np.linalg.norm(e))
    return np.array(out)


def run_jobs(cpu: str, jobs: list[dict], work: Path, tolerate_failures: bool = False) -> None:
    (work / "runner.py").write_text(RUNNER)
    spec = work / f"jobs_{cpu}.json"
    spec.write_text(json.dumps(jobs))
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "QEMU_"))
    }
    env.update(PYTHONNOUSERSITE="1", HOME=str(work / "home"))
    done = subprocess.run(
        python_for(cpu) + [str(work / "runner.py"), str(spec)],
        env=env,
        capture_output=True,
        check=False,
        text=True,
    )
    if done.returncode:
        sys.exit(f"{cpu} runner failed:\n{done.stderr[-3000:]}")
    if not tolerate_failures:
        failed = [job["out"] for job in jobs if Path(job["out"] + ".err").exists()]
        if failed:
            sys.exit(f"{cpu}: {failed[0]} failed:\n" + Path(failed[0] + ".err").read_text()[-3000:])


# -- the numpy reference ----------------------------------------------------------------------


def dql_ref(x):
    """ONNX DynamicQuantizeLinear (uint8), float32 throughout, round half to even."""
    x = x.astype(np.float32)
    lo, hi = min(np.float32(0), x.min()), max(np.float32(0), x.max())
    scale = np.float32((hi - lo) / np.float32(255))
    zp = np.float32(np.clip(np.round(-lo / scale), 0, 255)) if scale else np.float32(0)
    q = np.clip(np.round(x / scale) + zp, 0, 255).astype(np.uint8)
    return q, scale, np.uint8(zp)


def mmi_ref(a, a_zp, w, w_zp):
    """MatMulInteger exactly: int64 products and sums (int32 cannot overflow here)."""
    acc = (a.astype(np.int64) - int(a_zp)) @ (w.astype(np.int64) - w_zp.astype(np.int64))
    return acc.astype(np.int32)


def float_ref(acc, x_scale, w_scale, bias):
    """What the unfused graph computes: Cast, Mul by (x_scale * w_scale) in float32, Add."""
    return acc.astype(np.float32) * np.float32(x_scale * w_scale) + bias


def float_ref_fma(acc, x_scale, w_scale, bias):
    """The same with one rounding: fma(float(acc), x_scale * w_scale, bias) (the float64 product
    of two float32 is exact; the float64 sum's own rounding can in rare cases differ)."""
    sw = np.float32(x_scale * w_scale).astype(np.float64)
    return (acc.astype(np.float32).astype(np.float64) * sw + bias.astype(np.float64)).astype(
        np.float32
    )


# -- building the models ----------------------------------------------------------------------


def artifact_nodes(model):
    """{matmulinteger name: dict of its DQL input, weight, scales, bias}."""
    from onnx import numpy_helper as nh

    inits = {i.name: i for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    nodes = {}
    for n in model.graph.node:
        if n.op_type != "MatMulInteger":
            continue
        dql = producer[n.input[0]]
        cast = consumers[n.output[0]][0]
        mul = consumers[cast.output[0]][0]
        scales = producer[next(i for i in mul.input if i != cast.output[0])]
        w_scale = next(i for i in scales.input if i in inits)
        add = consumers[mul.output[0]][0]
        bias = next(i for i in add.input if i in inits)
        nodes[n.name] = {
            "x": dql.input[0],
            "dql": dql,
            "mmi": n,
            "w": nh.to_array(inits[n.input[1]]),
            "w_zp": nh.to_array(inits[n.input[3]]),
            "w_scale": nh.to_array(inits[w_scale]),
            "bias": nh.to_array(inits[bias]),
        }
    return nodes


def single_op_models(node, path: Path) -> dict[str, Path]:
    import onnx
    from onnx import TensorProto as T
    from onnx import helper as h
    from onnx import numpy_helper as nh

    k = node["w"].shape[0]
    consts = [
        nh.from_array(node["w"], "W"),
        nh.from_array(node["w_zp"], "W_zp"),
        nh.from_array(node["w_scale"].astype(np.float32), "W_scale"),
        nh.from_array(node["bias"].astype(np.float32), "bias"),
    ]
    x = h.make_tensor_value_info("x", T.FLOAT, [None, None, k])
    q = h.make_tensor_value_info("q", T.UINT8, [None, None, k])
    zp = h.make_tensor_value_info("x_zp", T.UINT8, [])
    xs = h.make_tensor_value_info("x_scale", T.FLOAT, [])

    def save(name, nodes, inputs, outputs, ms=False):
        opsets = [h.make_opsetid("", 17)] + ([h.make_opsetid("com.microsoft", 1)] if ms else [])
        g = h.make_graph(nodes, name, inputs, outputs, consts)
        m = h.make_model(g, opset_imports=opsets)
        m.ir_version = 8
        onnx.save(m, str(path / f"{name}.onnx"))
        return path / f"{name}.onnx"

    out_f = h.make_tensor_value_info("y", T.FLOAT, None)
    return {
        "DynamicQuantizeLinear": save(
            "dql",
            [h.make_node("DynamicQuantizeLinear", ["x"], ["q", "s", "z"])],
            [x],
            [
                h.make_tensor_value_info(o, t, None)
                for o, t in (("q", T.UINT8), ("s", T.FLOAT), ("z", T.UINT8))
            ],
        ),
        "MatMulInteger": save(
            "mmi",
            [h.make_node("MatMulInteger", ["q", "W", "x_zp", "W_zp"], ["y"])],
            [q, zp],
            [h.make_tensor_value_info("y", T.INT32, None)],
        ),
        "subgraph": save(
            "sub",
            [
                h.make_node("DynamicQuantizeLinear", ["x"], ["q", "s", "z"]),
                h.make_node("MatMulInteger", ["q", "W", "z", "W_zp"], ["acc"]),
                h.make_node("Cast", ["acc"], ["accf"], to=T.FLOAT),
                h.make_node("Mul", ["s", "W_scale"], ["sw"]),
                h.make_node("Mul", ["accf", "sw"], ["yb"]),
                h.make_node("Add", ["yb", "bias"], ["y"]),
            ],
            [x],
            [out_f],
        ),
        "MatMulIntegerToFloat": save(
            "mitf",
            [
                h.make_node(
                    "MatMulIntegerToFloat",
                    ["q", "W", "x_scale", "W_scale", "x_zp", "W_zp", "bias"],
                    ["y"],
                    domain="com.microsoft",
                )
            ],
            [q, xs, zp],
            [out_f],
            ms=True,
        ),
    }


def debug_model(model, path: Path) -> Path:
    """The artifact with every DQL input/output, MatMulInteger output and LayerNorm input/output
    as graph outputs."""
    import onnx
    from onnx import TensorProto as T
    from onnx import helper as h

    model = onnx.ModelProto.FromString(model.SerializeToString())
    seen = {o.name for o in model.graph.output}
    for n in model.graph.node:
        pairs = []
        if n.op_type == "DynamicQuantizeLinear":
            pairs = [
                (n.input[0], T.FLOAT),
                (n.output[0], T.UINT8),
                (n.output[1], T.FLOAT),
                (n.output[2], T.UINT8),
            ]
        elif n.op_type == "MatMulInteger":
            pairs = [(n.output[0], T.INT32)]
        elif n.op_type == "LayerNormalization":
            pairs = [(n.input[0], T.FLOAT), (n.output[0], T.FLOAT)]
        for name, t in pairs:
            if name not in seen:
                seen.add(name)
                model.graph.output.append(h.make_tensor_value_info(name, t, None))
    onnx.save(
        model, str(path / "debug.onnx"), save_as_external_data=True, location="debug.onnx.data"
    )
    return path / "debug.onnx"


# -- comparing ------------------------------------------------------------------------------------


def worst_cos(a, b):
    a = a.reshape(len(a), -1).astype(np.float64)
    b = b.reshape(len(b), -1).astype(np.float64)
    return float(((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).min())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--artifact", type=Path, default=Path("/tmp/s11/all2/rpi5"))
    ap.add_argument("--work", type=Path, default=Path("/tmp/armint8/run"))
    ap.add_argument("--cpus", default="x86,a76,a72", help="x86 and/or a76 (rpi5), a72 (rpi4)")
    args = ap.parse_args()
    import onnx
    import onnxruntime

    import edge_runtime

    ort_version = onnxruntime.__version__
    cpus = ["x86"] + [c for c in args.cpus.split(",") if c != "x86"]  # x86 is the reference
    work = args.work
    (work / "home").mkdir(parents=True, exist_ok=True)
    model_path = args.artifact / "onnx-int8.onnx"
    model = onnx.load(str(model_path))

    manifest = edge_runtime.read_manifest(args.artifact)
    texts, batch, feeds, mask, lengths = text_feeds(args.artifact, manifest)
    np.savez(work / "texts.npz", **feeds)

    dbg = debug_model(model, work)
    nodes = artifact_nodes(model)
    picked = [n for n in nodes if "/layer.0/" in n or "/layer.5/output/" in n]
    picked = [n for n in picked if "tokens_quant" in n] + [
        next(n for n in picked if "token0_quant" in n)
    ]

    # Every CPU runs: the debug model (no optimizations) and the artifact at two levels.
    jobs = {c: [] for c in cpus}
    for c in cpus:
        jobs[c].append(
            {
                "model": str(dbg),
                "inputs": str(work / "texts.npz"),
                "out": str(work / f"debug_{c}.npz"),
                "level": "ORT_DISABLE_ALL",
            }
        )
        for level in ("ORT_DISABLE_ALL", "ORT_ENABLE_ALL"):
            jobs[c].append(
                {
                    "model": str(model_path),
                    "inputs": str(work / "texts.npz"),
                    "out": str(work / f"full_{c}_{level}.npz"),
                    "level": level,
                }
            )
        if c != "x86":
            jobs[c].append(
                {
                    "model": str(model_path),
                    "inputs": str(work / "texts.npz"),
                    "out": str(work / f"full_{c}_ORT_ENABLE_ALL_nokleidi.npz"),
                    "level": "ORT_ENABLE_ALL",
                    "config": {"mlas.disable_kleidiai": "1"},
                }
            )

    jobs["x86"].append(
        {
            "model": str(args.artifact / "onnx-fp32.onnx"),
            "inputs": str(work / "texts.npz"),
            "out": str(work / "fp32_x86.npz"),
            "level": "ORT_DISABLE_ALL",
        }
    )
    # Single-op inputs need the x86 activations first.
    run_jobs("x86", jobs["x86"][:1], work)
    jobs["x86"] = jobs["x86"][1:]
    x86_dbg = np.load(work / "debug_x86.npz")
    single = {}
    for i, name in enumerate(picked):
        node = nodes[name]
        d = work / f"node{i}"
        d.mkdir(exist_ok=True)
        paths = single_op_models(node, d)
        x = x86_dbg["b__" + node["x"]]
        q, s, z = dql_ref(x)
        np.savez(d / "x.npz", b__x=x)
        np.savez(d / "q.npz", b__q=q, b__x_zp=z, b__x_scale=s)
        single[name] = {"dir": d, "x": x, "q": q, "s": s, "z": z, "node": node}
        for c in cpus:
            for op, p in paths.items():
                inp = d / ("x.npz" if op in ("DynamicQuantizeLinear", "subgraph") else "q.npz")
                levels = (
                    ("ORT_DISABLE_ALL", "ORT_ENABLE_ALL")
                    if op == "subgraph"
                    else ("ORT_ENABLE_ALL",)
                )
                for level in levels:
                    for nk in (False, True) if c != "x86" else (False,):
                        tag = f"{op}_{level}{'_nokleidi' if nk else ''}"
                        jobs[c].append(
                            {
                                "model": str(p),
                                "inputs": str(inp),
                                "out": str(d / f"{c}_{tag}.npz"),
                                "level": level,
                                "config": {"mlas.disable_kleidiai": "1"} if nk else {},
                            }
                        )
    for c in cpus:
        run_jobs(c, jobs[c], work)

    # 1. single ops against the reference
    emulated = ", ".join(f"{c}=cortex-{c}" for c in cpus if c != "x86")
    print(
        f"artifact {model_path} ({len(texts)} texts, batch {tuple(mask.shape)}); "
        f"onnxruntime {ort_version} on x86, aarch64 under qemu-user ({emulated})\n"
    )
    print(
        "1. single ops, artifact weights, x86-captured batched activations: "
        "max |ORT - numpy reference|"
    )
    cols = [c for c in cpus] + [f"{c} nokleidi" for c in cpus if c != "x86"]
    print("   (integer outputs: codes / int32 values differing; float outputs: max abs difference")
    print("    from float32(acc) * float32(x_scale*w_scale) + bias; '=fma': bit-equal to the")
    print("    single-rounding fma(float32(acc), x_scale*w_scale, bias))")
    print(f"{'node':44s} {'op':32s} " + " ".join(f"{c:>12s}" for c in cols))
    for name, info in single.items():
        node, d = info["node"], info["dir"]
        acc = mmi_ref(info["q"], info["z"], node["w"], node["w_zp"])
        args3 = (info["s"], node["w_scale"].astype(np.float32), node["bias"].astype(np.float32))
        yref, yfma = float_ref(acc, *args3), float_ref_fma(acc, *args3)
        short = name.replace("/inner/encoder/", "").replace("/MatMul", "")[:44]
        for op in ("DynamicQuantizeLinear", "MatMulInteger", "subgraph", "MatMulIntegerToFloat"):
            for level in (
                ("ORT_DISABLE_ALL", "ORT_ENABLE_ALL") if op == "subgraph" else ("ORT_ENABLE_ALL",)
            ):
                cells = []
                for col in cols:
                    c, nk = col.split()[0], col.endswith("nokleidi")
                    r = np.load(d / f"{c}_{op}_{level}{'_nokleidi' if nk else ''}.npz")
                    if op == "DynamicQuantizeLinear":
                        codes = int((r["b__q"] != info["q"]).sum())
                        ok = r["b__s"] == info["s"] and r["b__z"] == info["z"]
                        cells.append(f"{codes} codes" + ("" if ok else " scale!"))
                    elif op == "MatMulInteger":
                        cells.append(f"{np.abs(r['b__y'].astype(np.int64) - acc).max()}")
                    else:
                        y = r["b__y"]
                        fused = (
                            " =fma"
                            if np.array_equal(y, yfma) and not np.array_equal(y, yref)
                            else ""
                        )
                        cells.append(f"{np.abs(y - yref).max():.2g}{fused}")
                label = {
                    "subgraph": "DQL+MMI+Cast+Mul+Add "
                    + ("unfused" if level == "ORT_DISABLE_ALL" else "fused->DQMatMul")
                }.get(op, op)
                print(f"{short:44s} {label:32s} " + " ".join(f"{x:>12s}" for x in cells))
        rel = np.abs(yref).max()
        print(
            f"{'':44s} (|output| max {rel:.3g}; an ulp there: ~{np.spacing(np.float32(rel)):.1g})"
        )

    # 2. the whole graph, every DQL / MatMulInteger against the reference from the CPU's own inputs
    print(
        "\n2. whole artifact, optimizations off, every node checked against the reference "
        "from its own inputs"
    )
    dbgs = {c: np.load(work / f"debug_{c}.npz") for c in cpus}
    for c in cpus:
        d = dbgs[c]
        bad_dql = bad_mmi = total = 0
        for info in nodes.values():
            for g in ["b"] + [f"s{r}" for r in range(len(texts))]:
                dq = info["dql"]
                q, s, z = dql_ref(d[f"{g}__{dq.input[0]}"])
                bad_dql += not (
                    np.array_equal(q, d[f"{g}__{dq.output[0]}"])
                    and s == d[f"{g}__{dq.output[1]}"]
                    and z == d[f"{g}__{dq.output[2]}"]
                )
                m = info["mmi"]
                acc = mmi_ref(
                    d[f"{g}__{m.input[0]}"], d[f"{g}__{dq.output[2]}"], info["w"], info["w_zp"]
                )
                bad_mmi += not np.array_equal(acc, d[f"{g}__{m.output[0]}"])
                total += 1
        print(
            f"  {c}: DynamicQuantizeLinear != reference in {bad_dql}/{total} runs, "
            f"MatMulInteger != exact int32 in {bad_mmi}/{total}"
        )
    rest = [i["dql"] for i in nodes.values() if "x_rest" in i["dql"].input[0]]
    at_pad = 0
    for (
        dq
    ) in rest:  # tokens 1.. of the padded batch: is the tensor's min or max at a padding position?
        x = dbgs["x86"][f"b__{dq.input[0]}"]
        pad = ~mask[:, 1:].astype(bool)
        at_pad += bool(
            pad[np.unravel_index(x.argmax(), x.shape)[:2]]
            or pad[np.unravel_index(x.argmin(), x.shape)[:2]]
        )
    print(
        f"  batched run: {at_pad} of {len(rest)} token-row DQL scales set by a padding position "
        "(x86)"
    )
    for c in cpus:
        if c == "x86":
            continue
        a, b = dbgs["x86"], dbgs[c]
        for n in model.graph.node:  # topological order
            outs = [o for o in n.output if f"b__{o}" in a.files]
            diff = [o for o in outs if not np.array_equal(a[f"b__{o}"], b[f"b__{o}"])]
            if diff:
                o = diff[0]
                inp = n.input[0]
                same_in = f"b__{inp}" in a.files and np.array_equal(a[f"b__{inp}"], b[f"b__{inp}"])
                dd = np.abs(a[f"b__{o}"].astype(np.float64) - b[f"b__{o}"]).max()
                print(
                    f"  first tensor {c} != x86: {n.op_type} {n.name} "
                    f"(input {'identical' if same_in else 'differs'}), "
                    f"max |diff| {dd:.3g} ({int((a[f'b__{o}'] != b[f'b__{o}']).sum())} elements)"
                )
                break
        flips = sum(
            int((a[f"b__{i['dql'].output[0]}"] != b[f"b__{i['dql'].output[0]}"]).sum())
            for i in nodes.values()
        )
        codes = sum(a[f"b__{i['dql'].output[0]}"].size for i in nodes.values())
        print(f"  uint8 activation codes {c} != x86 over the batched run: {flips} of {codes}")

    # 3. whole artifact, cosine against x86 with optimizations off
    print(
        "\n3. last_hidden_state, worst per-row cosine against x86 ORT_DISABLE_ALL "
        "(padded positions masked)"
    )
    ref = np.load(work / "full_x86_ORT_DISABLE_ALL.npz")
    print(f"{'run':40s} {'batched':>10s} {'each alone':>11s}")
    for c in cpus:
        for tag in ("ORT_DISABLE_ALL", "ORT_ENABLE_ALL") + (
            ("ORT_ENABLE_ALL_nokleidi",) if c != "x86" else ()
        ):
            r = np.load(work / f"full_{c}_{tag}.npz")
            cb = worst_cos(
                r["b__last_hidden_state"] * mask[..., None],
                ref["b__last_hidden_state"] * mask[..., None],
            )
            cs = min(
                worst_cos(r[f"s{i}__last_hidden_state"], ref[f"s{i}__last_hidden_state"])
                for i in range(len(texts))
            )
            print(f"{c + ' ' + tag:40s} {cb:10.6f} {cs:11.6f}")
    own = np.load(work / "full_x86_ORT_DISABLE_ALL.npz")
    cbs = min(
        worst_cos(
            own["b__last_hidden_state"][r : r + 1, : lengths[r]], own[f"s{r}__last_hidden_state"]
        )
        for r in range(len(texts))
    )
    print(
        f"{'x86 ORT_DISABLE_ALL: batched vs each alone':40s} {cbs:10.6f}   "
        "(same CPU, same graph: the batch's shared scales)"
    )

    # 4. accuracy: pooled embeddings of each text alone against the FP32 artifact on x86
    fp32 = np.load(work / "fp32_x86.npz")
    post = manifest.get("postprocess") or {}
    print(
        "\n4. pooled embeddings (each text alone) against x86 onnx-fp32: cosine mean / min "
        f"over {len(texts)} texts"
    )

    def pooled(arrays):
        return pooled_texts(arrays, len(texts), post.get("pooling", "mean"))

    want = pooled(fp32)
    for c in cpus:
        for tag in ("ORT_DISABLE_ALL", "ORT_ENABLE_ALL"):
            got = pooled(np.load(work / f"full_{c}_{tag}.npz"))
            cos = (got * want).sum(1)
            print(f"  {c + ' onnx-int8 ' + tag:40s} {cos.mean():.6f} / {cos.min():.6f}")
    if "a76" in cpus and "a72" in cpus:
        same = all(
            np.array_equal(
                np.load(work / f"full_a76_{t}.npz")[k], np.load(work / f"full_a72_{t}.npz")[k]
            )
            for t in ("ORT_DISABLE_ALL", "ORT_ENABLE_ALL")
            for k in ref.files
        )
        print(f"a76 and a72 outputs bit-identical: {same}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
