"""Does onnxruntime's ARM64 build compute the INT4 artifact differently from x86? (correctness only)

MiniLM's rpi5 (and rpi4: the same file) onnx-int4 has no MatMulNBits. The converter's int4
kernel for these targets is "int8-gemm" (W4A8, converters/onnx/quantize_w4a8.py): 17 of the 24
MatMulInteger weights are stored as uint4 codes (block 32 along K, a uint4 zero point and an fp16
step per block and column, 6-8 rows kept in 8 bits) that Cast/Sub/Mul/Round/Clip/ScatterND decode
to int8 when the session starts; the word and position tables are GatherBlockQuantized (uint4,
block 128). At run time it is the INT8 artifact's DynamicQuantizeLinear -> MatMulInteger graph.
So KleidiAI's per-row 4-bit kernels do not take part, and this script checks, on x86, QEMU_CPU=
cortex-a76 and cortex-a72 (the aarch64 Python of tools/arm64-check):

0. the artifact's ops and the manifest's kernel and metrics;
1. what MatMulNBits *would* compute (the converter's int4.kernel = "matmulnbits" option): single
   nodes built from layer 0's real 4-bit codes (asymmetric, with the artifact's zero points, and
   symmetric), on activations captured from an x86 run of the artifact on tools/arm64-check's
   texts, at accuracy_level 0 and 4, with mlas.disable_kleidiai=1 and mlas.use_lut_gemm=1 too,
   against numpy models of each candidate arithmetic;
2. the artifact with optimizations off: the decoded int8 weights, the gathered embeddings, every
   DynamicQuantizeLinear and MatMulInteger against numpy, from each CPU's own inputs;
3. the whole artifact: pooled embeddings of each text against x86 onnx-fp32 and against x86's
   run of the same file, ARM and x86, optimizations off and on.

Finding (onnxruntime 1.32, see the printed tables):
- The artifact: ARM computes what x86 computes. The 4-bit decode gives numpy's int8 weights bit
  for bit on every CPU (17/17), GatherBlockQuantized equals (q - z) * s exactly, and all 336
  DynamicQuantizeLinear / MatMulInteger runs equal the exact reference on x86, A76 and A72 (the
  INT8 finding of arm64_int8_arithmetic.py). A76 and A72 outputs are bit-identical, and
  mlas.disable_kleidiai=1 changes no bit. ARM vs x86 on the same file: pooled cosine 0.99995 mean
  / 0.99977 min (optimizations on), float ulps amplified by dynamic quantization as for INT8.
  Against x86 onnx-fp32 ARM scores 0.99236 / 0.99078 and x86 0.99241 / 0.99078: the x86 scoring
  the converter records (manifest metrics, on its validation texts) holds on the device.
- MatMulNBits, were it used (it is not in this artifact):
  accuracy_level 0: float activations x dequantized weights on every CPU (ulps apart).
  accuracy_level 4: x86 (AVX-512 VNNI) = MLAS CompInt8, activations int8 per block of 32,
    symmetric, ties to even. Cortex-A72 (no dotprod) has no CompInt8 kernel and silently falls
    back to float (a) (~1e-2 of max |y| away from x86's per GEMM). Cortex-A76 (dotprod):
    weights with zero points (what converters/onnx/quantize_int4.py writes) -> the same
    per-block int8 as x86 (ulps apart); with mlas.disable_kleidiai=1, the same but ties rounded
    away from zero (<= 3e-4 of max |y|). Symmetric weights (no zero points) -> KleidiAI
    qai8dxp x qsi4c32p: activations int8 per ROW, asymmetric, block scales truncated to bfloat16
    (matches to ~1e-6, to 5e-5 on the [CLS] rows of the K=1536 GEMM; with fp32 scales it would be
    2e-3..4e-3 off), 1.5-4x further from the float result than the per-block path;
    mlas.disable_kleidiai=1 switches it back to per-block int8. mlas.use_lut_gemm=1 changes
    nothing here.

    .venv/bin/python benchmarks/arm64_int4_arithmetic.py --artifact /tmp/s11/all2/rpi5

Needs the aarch64 environments of tools/arm64-check (run it once). Reuses the launcher, the
numpy INT8 references and the texts of benchmarks/arm64_int8_arithmetic.py. qemu timings mean
nothing and are not reported. The whole run takes about 2.5 minutes here (2 vCPUs, one qemu
process at a time).
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _int8_module():
    spec = importlib.util.spec_from_file_location(
        "arm64_int8_arithmetic", ROOT / "benchmarks" / "arm64_int8_arithmetic.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


I8 = _int8_module()


def run_jobs(cpu: str, jobs: list[dict], work: Path) -> None:
    """arm64_int8_arithmetic.run_jobs, but a job that fails (an option or op the build lacks) is
    recorded (load_out gives None), not fatal."""
    I8.run_jobs(cpu, jobs, work, tolerate_failures=True)


def load_out(path: Path):
    if path.with_name(path.name + ".err").exists():
        return None
    return np.load(path)


# -- the artifact's 4-bit weights -------------------------------------------------------------


def w4_weights(model) -> dict[str, dict]:
    """{int8 weight tensor name: codes, zero points, steps, rows kept in 8 bits, per-channel scale}
    for every W4A8 weight (quantize_w4a8: Cast/Sub/Mul/Round/Clip/Reshape/ScatterND/Cast)."""
    from onnx import numpy_helper as nh

    inits = {i.name: i for i in model.graph.initializer}
    out = {}
    for n in model.graph.node:
        if n.op_type == "Cast" and n.name.endswith("_w4_to_int8"):
            p = n.name[: -len("_to_int8")]  # "{w}_w4"
            w = p[: -len("_w4")]
            codes = nh.to_array(inits[f"{p}_codes"]).astype(np.int64)  # (blocks, block, N)
            nb, blk, cols = codes.shape
            out[n.output[0]] = {
                "base": w,
                "q": codes.reshape(nb * blk, cols),
                "z": nh.to_array(inits[f"{p}_zero"]).astype(np.int64)[:, 0, :],  # (blocks, N)
                "f": nh.to_array(inits[f"{p}_step"]).astype(np.float32)[:, 0, :],  # fp16 -> f32
                "qmin": float(nh.to_array(inits[f"{p}_qmin"])),
                "qmax": float(nh.to_array(inits[f"{p}_qmax"])),
                "rows": nh.to_array(inits[f"{p}_rows"])[:, 0],
                "row_values": nh.to_array(inits[f"{p}_row_values"]),
                "scale": nh.to_array(inits[f"{w}_scale"]).astype(np.float32),
                "block": blk,
            }
    return out


def w4_decode(w: dict) -> np.ndarray:
    """The int8 weights the decode subgraph computes, in numpy (float32, round half to even)."""
    blk = w["block"]
    z = np.repeat(w["z"], blk, axis=0).astype(np.float32)
    f = np.repeat(w["f"], blk, axis=0)
    units = (w["q"].astype(np.float32) - z) * f
    w8 = np.clip(np.round(units), w["qmin"], w["qmax"])
    w8[w["rows"]] = w["row_values"]
    return w8.astype(np.int8)


def gbq_ref(table_q, scales, zps, ids, block):
    """GatherBlockQuantized (uint4 codes, float scales, uint4 zero points along axis 1)."""
    q = table_q[ids].astype(np.float32)
    s = np.repeat(scales[ids], block, axis=-1)
    z = np.repeat(zps[ids].astype(np.float32), block, axis=-1)
    return (q - z) * s


# -- MatMulNBits built from the artifact's 4-bit codes ----------------------------------------


def nbits_params(w: dict, symmetric: bool):
    """MatMulNBits parameters from a W4A8 weight: codes q, zero point z and scale
    s[n] * f[b, n] per block; weights (q - z) * scale (no rounding to int8, no 8-bit rows).
    symmetric: the same codes with the zero points left out (the op's default, 8)."""
    scale = (w["scale"][None, :] * w["f"]).astype(np.float32)  # (blocks, N)
    z = np.full_like(w["z"], 8) if symmetric else w["z"]
    return w["q"], z, scale


def nbits_model(q, z, scale, block, level, symmetric, path: Path) -> Path:
    import onnx
    from onnx import TensorProto as T
    from onnx import helper as h
    from onnx import numpy_helper as nh

    k, n = q.shape
    nb = k // block
    qt = q.T.reshape(n, nb, block).astype(np.uint8)
    packed = (qt[..., 0::2] | (qt[..., 1::2] << 4)).astype(np.uint8)  # low nibble first
    consts = [
        nh.from_array(packed, "B"),
        nh.from_array(np.ascontiguousarray(scale.T).reshape(-1), "scales"),
    ]
    inputs = ["x", "B", "scales"]
    if not symmetric:
        zt = z.T.astype(np.uint8)  # (N, blocks)
        if nb % 2:
            zt = np.concatenate([zt, np.zeros((n, 1), np.uint8)], axis=1)
        consts.append(nh.from_array((zt[:, 0::2] | (zt[:, 1::2] << 4)).reshape(-1), "zp"))
        inputs.append("zp")
    node = h.make_node(
        "MatMulNBits", inputs, ["y"], domain="com.microsoft",
        K=k, N=n, bits=4, block_size=block, accuracy_level=level,
    )
    g = h.make_graph(
        [node], "nbits",
        [h.make_tensor_value_info("x", T.FLOAT, [None, None, k])],
        [h.make_tensor_value_info("y", T.FLOAT, None)],
        consts,
    )
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 21), h.make_opsetid("com.microsoft", 1)])
    m.ir_version = 10
    onnx.save(m, str(path))
    return path


def ref_float(x, q, z, scale, block):
    """(a) accuracy_level 0/1: float activations x float32-dequantized weights (float64 sum)."""
    wd = (q.astype(np.float32) - np.repeat(z, block, 0).astype(np.float32)) * np.repeat(
        scale, block, 0
    )
    return x.astype(np.float64) @ wd.astype(np.float64)


def round_half_away(v):
    return np.sign(v) * np.floor(np.abs(v) + np.float32(0.5))


def ref_block_int8(x, q, z, scale, block, ties_even=True):
    """(b) MLAS SQNBit CompInt8: activations int8 per block of `block` along K, symmetric,
    scale = amax/127, codes round(x * (127/amax)), ties to even (vcvtn / cvtps) or, (b'), away
    from zero (vcvta: MLAS NEON QuantizeBlock); an exact int32 dot per block with (q - z);
    blocks summed with scale_a * scale_w (float64 here)."""
    m, k = x.shape
    xb = x.reshape(m, k // block, block).astype(np.float32)
    amax = np.abs(xb).max(-1)
    sa = (amax / np.float32(127)).astype(np.float32)
    inv = np.where(amax != 0, np.float32(127) / np.where(amax == 0, 1, amax), 0).astype(np.float32)
    v = xb * inv[..., None]
    qa = np.clip(np.rint(v) if ties_even else round_half_away(v), -127, 127).astype(np.int64)
    qw = (q - np.repeat(z, block, 0)).reshape(k // block, block, -1)  # (blocks, block, N)
    dots = np.einsum("mbi,bin->mbn", qa, qw)  # exact integers
    return (dots * sa[..., None].astype(np.float64) * scale[None].astype(np.float64)).sum(1)


def bf16_trunc(a):
    return (a.astype(np.float32).view(np.uint32) & np.uint32(0xFFFF0000)).view(np.float32)


def ref_row_kleidi(x, q, z, scale, block, bf16=True, zp_fp32_correction=True):
    """(c) KleidiAI qai8dxp x qsi4c32p (kai_lhs_quant_pack_qai8dxp_f32 +
    kai_rhs_pack_nxk_qsi4c32p_qsu4c32s1s0 as MLAS calls them): activations int8 per ROW,
    asymmetric (scale 255/(max-min) with 0 in range, nudged zero point); weights as signed
    (q - 8) with the block scale truncated to bfloat16; a weight zero point z != 8 through a
    float correction scale_fp32 * (8 - z) * sum of the float activations over the block.
    (In onnxruntime 1.32 a weight with zero points does not take this path; see the tables.)"""
    m, k = x.shape
    x = x.astype(np.float32)
    rmin = np.minimum(np.float32(0), x.min(1))
    rmax = np.maximum(np.float32(0), x.max(1))
    sc = np.where(rmin == rmax, np.float32(1), np.float32(255) / (rmax - rmin)).astype(np.float32)
    recip = (np.float32(1) / sc).astype(np.float32)
    dmin, dmax = rmin * sc, rmax * sc
    zp = np.where((-128 + dmin) + (127 + dmax) > 0, -128 - dmin, 127 - dmax).astype(np.float32)
    zp = np.rint(np.clip(zp, -128, 127)).astype(np.int64)
    v = x * sc[:, None]  # ties rounded away from zero: measured (a tie at 116.5 gave 117)
    qa = np.clip(np.clip(round_half_away(v), -32768, 32767) + zp[:, None], -128, 127)
    qa = qa.astype(np.int64) - zp[:, None]  # the kernel subtracts the row offset
    s = bf16_trunc(scale) if bf16 else scale
    qw = (q - 8).reshape(k // block, block, -1)
    dots = np.einsum("mbi,bin->mbn", qa.reshape(m, k // block, block), qw)
    y = (dots * s[None].astype(np.float64)).sum(1) * recip[:, None].astype(np.float64)
    if zp_fp32_correction:
        asum = x.reshape(m, k // block, block).astype(np.float64).sum(-1)  # (m, blocks)
        y += asum @ (scale.astype(np.float64) * (8 - z))
    else:
        y += (x.astype(np.float64) @ (np.repeat(s.astype(np.float64) * (8 - z), block, 0)))
    return y


# -- main ---------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--artifact", type=Path, default=Path("/tmp/s11/all2/rpi5"))
    ap.add_argument("--work", type=Path, default=Path("/tmp/armint4/run"))
    ap.add_argument("--cpus", default="x86,a76,a72", help="x86 and/or a76 (rpi5), a72 (rpi4)")
    args = ap.parse_args()
    import onnx
    import onnxruntime
    from onnx import helper as h
    from onnx import numpy_helper as nh

    import edge_runtime

    cpus = ["x86"] + [c for c in args.cpus.split(",") if c != "x86"]
    arm = [c for c in cpus if c != "x86"]
    work = args.work
    (work / "home").mkdir(parents=True, exist_ok=True)
    model_path = args.artifact / "onnx-int4.onnx"
    model = onnx.load(str(model_path))
    manifest = edge_runtime.read_manifest(args.artifact)
    entry = next(a for a in manifest["artifacts"] if a["name"] == "onnx-int4")

    # 0. what the artifact contains
    ops = collections.Counter(n.op_type for n in model.graph.node)
    weights = w4_weights(model)
    print(f"artifact {model_path}; onnxruntime {onnxruntime.__version__} on x86, aarch64 under "
          "qemu-user (" + ", ".join(f"{c}=cortex-{c}" for c in arm) + ")\n")
    print("0. the artifact")
    print(f"  manifest: quantization.kernel = {entry['quantization'].get('kernel')!r}, block_size "
          f"{entry['quantization']['config'].get('block_size')}, metrics {entry['metrics']} "
          f"({entry.get('metrics_texts')}, {entry.get('metrics_from')})")
    print(f"  MatMulNBits nodes: {ops.get('MatMulNBits', 0)}; MatMulInteger "
          f"{ops['MatMulInteger']}, DynamicQuantizeLinear {ops['DynamicQuantizeLinear']}, "
          f"GatherBlockQuantized {ops.get('GatherBlockQuantized', 0)}")
    init_names = {i.name for i in model.graph.initializer}
    mm_weights = {n.input[1] for n in model.graph.node if n.op_type == "MatMulInteger"}
    w8_inits = sum(1 for n in model.graph.node
                   if n.op_type == "MatMulInteger" and n.input[1] in init_names)
    rows8 = [len(w["rows"]) for w in weights.values()]
    print(f"  MatMulInteger weights: {len(mm_weights & set(weights))} decoded at load from 4-bit "
          f"codes (block {next(iter(weights.values()))['block']} along K, uint4 zero point + fp16 "
          f"step per block and column, {min(rows8)}-{max(rows8)} rows kept in 8 bits), "
          f"{len(mm_weights - set(weights))} int8 initializers ({w8_inits} MatMulIntegers)")
    for n in model.graph.node:
        if n.op_type == "GatherBlockQuantized":
            a = {x.name: h.get_attribute_value(x) for x in n.attribute}
            print(f"  {n.name}: {a}")

    # Inputs: tools/arm64-check's texts, as one padded batch ("b") and each alone ("s0".."s5").
    texts, batch, feeds, mask, lengths = I8.text_feeds(args.artifact, manifest)
    np.savez(work / "texts.npz", **feeds)
    np.savez(work / "batch.npz", **{k: v for k, v in feeds.items() if k.startswith("b__")})

    # Debug models: (w) decoded int8 weights and the gathered embeddings; (d) every DQL input /
    # output and MatMulInteger output. Optimizations off, so each CPU's kernels compute them.
    mmi = [n for n in model.graph.node if n.op_type == "MatMulInteger"]
    producer = {o: n for n in model.graph.node for o in n.output}
    gbq = [n for n in model.graph.node if n.op_type == "GatherBlockQuantized"]

    def with_outputs(name, pairs):
        m = onnx.ModelProto.FromString(model.SerializeToString())
        del m.graph.output[:]
        for o, t in pairs:
            m.graph.output.append(h.make_tensor_value_info(o, t, None))
        onnx.save(m, str(work / f"{name}.onnx"), save_as_external_data=True,
                  location=f"{name}.onnx.data")
        return str(work / f"{name}.onnx")

    T = onnx.TensorProto
    dbg_w = with_outputs(
        "debug_w", [(w, T.INT8) for w in weights] + [(n.output[0], T.FLOAT) for n in gbq]
    )
    pairs, seen = [("last_hidden_state", T.FLOAT)], set()
    for n in mmi:
        dq = producer[n.input[0]]
        for o, t in ((dq.input[0], T.FLOAT), (dq.output[0], T.UINT8), (dq.output[1], T.FLOAT),
                     (dq.output[2], T.UINT8), (n.output[0], T.INT32)):
            if o not in seen:
                seen.add(o)
                pairs.append((o, t))
    dbg_d = with_outputs("debug_d", pairs)

    # Single MatMulNBits nodes from layer 0's three 4-bit weights, on x86-captured activations.
    jobs = {c: [] for c in cpus}
    run_jobs("x86", [{"model": dbg_d, "inputs": str(work / "texts.npz"),
                      "out": str(work / "debug_d_x86.npz"), "level": "ORT_DISABLE_ALL"}], work)
    x86_d = np.load(work / "debug_d_x86.npz")
    layer0 = [n for n in mmi if "/layer.0/" in n.name and "tokens_quant" in n.name
              and n.input[1] in weights]
    single = []
    variants = [("asym", 0), ("asym", 4), ("sym", 4)]
    configs = {
        "": {},
        "nokleidi": {"mlas.disable_kleidiai": "1"},
        "lut": {"mlas.use_lut_gemm": "1"},
    }
    for i, n in enumerate(layer0):
        w = weights[n.input[1]]
        first = next(m for m in mmi if m.name == n.name.replace("tokens_quant", "token0_quant"))
        x = np.concatenate([x86_d["b__" + producer[first.input[0]].input[0]],
                            x86_d["b__" + producer[n.input[0]].input[0]]], axis=1)  # token 0, rest
        d = work / f"nbits{i}"
        d.mkdir(exist_ok=True)
        np.savez(d / "x.npz", b__x=x, one__x=np.ascontiguousarray(x[:1, :1]))
        entry_i = {"name": n.name, "w": w, "x": x, "dir": d}
        single.append(entry_i)
        for sym_tag, level in variants:
            qq, zz, ss = nbits_params(w, sym_tag == "sym")
            p = nbits_model(qq, zz, ss, w["block"], level, sym_tag == "sym",
                            d / f"{sym_tag}_l{level}.onnx")
            for c in cpus:
                for cfg, cv in configs.items():
                    if cfg == "nokleidi" and c == "x86":
                        continue
                    jobs[c].append({"model": str(p), "inputs": str(d / "x.npz"),
                                    "out": str(d / f"{c}_{sym_tag}_l{level}_{cfg}.npz"),
                                    "level": "ORT_ENABLE_ALL", "config": cv})

    for c in cpus:
        if c != "x86":
            jobs[c].append({"model": dbg_d, "inputs": str(work / "texts.npz"),
                            "out": str(work / f"debug_d_{c}.npz"), "level": "ORT_DISABLE_ALL"})
        jobs[c].append({"model": dbg_w, "inputs": str(work / "batch.npz"),
                        "out": str(work / f"debug_w_{c}.npz"), "level": "ORT_DISABLE_ALL"})
        for level in ("ORT_DISABLE_ALL", "ORT_ENABLE_ALL"):
            jobs[c].append({"model": str(model_path), "inputs": str(work / "texts.npz"),
                            "out": str(work / f"full_{c}_{level}.npz"), "level": level})
        if c != "x86":
            jobs[c].append({"model": str(model_path), "inputs": str(work / "texts.npz"),
                            "out": str(work / f"full_{c}_ORT_ENABLE_ALL_nokleidi.npz"),
                            "level": "ORT_ENABLE_ALL", "config": {"mlas.disable_kleidiai": "1"}})
    jobs["x86"].append({"model": str(args.artifact / "onnx-fp32.onnx"),
                        "inputs": str(work / "texts.npz"), "out": str(work / "fp32_x86.npz"),
                        "level": "ORT_DISABLE_ALL"})
    for c in cpus:
        run_jobs(c, jobs[c], work)

    # 1. single MatMulNBits nodes against the candidate arithmetics
    print("\n1. MatMulNBits (not in the artifact: built from its layer-0 4-bit codes, block 32, "
          "scale s[n]*f[b,n];\n   asym = the artifact's zero points, sym = none, i.e. 8), on "
          "x86-captured activations (batch 6x46 rows; M=1: one row):\n   max |ORT - reference| / "
          "max |y| for (a) float x dequantized W, (b) int8 per block of 32, symmetric,\n   ties to "
          "even (MLAS CompInt8), (b') the same with ties away from zero, (c) int8 per row, "
          "asymmetric,\n   x bf16-truncated block scales (KleidiAI qai8dxp_qsi4c32p), (c') (c) "
          "with fp32 scales. '*' marks the closest.")
    cols = ["(a) float", "(b) block", "(b') away", "(c) row", "(c') fp32"]
    print(f"{'node':30s} {'variant':10s} {'cpu / option':14s} {'M':>4s} "
          + " ".join(f"{c:>10s}" for c in cols))
    lut_same = True
    for e in single:
        w, d = e["w"], e["dir"]
        short = e["name"].replace("/inner/encoder/", "").replace("/MatMul_tokens_quant", "")
        for sym_tag, level in variants:
            qq, zz, ss = nbits_params(w, sym_tag == "sym")
            for grp in ("b", "one"):
                xx = e["x"] if grp == "b" else e["x"][:1, :1]
                x2 = xx.reshape(-1, xx.shape[-1])
                refs = [ref_float(x2, qq, zz, ss, w["block"]),
                        ref_block_int8(x2, qq, zz, ss, w["block"]),
                        ref_block_int8(x2, qq, zz, ss, w["block"], ties_even=False),
                        ref_row_kleidi(x2, qq, zz, ss, w["block"]),
                        ref_row_kleidi(x2, qq, zz, ss, w["block"], bf16=False)]
                scale_y = np.abs(refs[0]).max()
                for c in cpus:
                    for cfg in configs:
                        if cfg == "nokleidi" and c == "x86":
                            continue
                        r = load_out(d / f"{c}_{sym_tag}_l{level}_{cfg}.npz")
                        label = c + (" " + cfg if cfg else "")
                        if cfg == "lut":  # mlas.use_lut_gemm: compared with the default run
                            base = load_out(d / f"{c}_{sym_tag}_l{level}_.npz")
                            lut_same &= r is not None and np.array_equal(
                                r[f"{grp}__y"], base[f"{grp}__y"]
                            )
                            continue
                        if r is None:
                            print(f"{short:30s} {sym_tag + ' lvl' + str(level):10s} {label:14s} "
                                  f"{'1' if grp == 'one' else len(x2):>4} (session failed)")
                            continue
                        y = r[f"{grp}__y"].reshape(len(x2), -1).astype(np.float64)
                        errs = [np.abs(y - ref).max() / scale_y for ref in refs]
                        best = int(np.argmin(errs))
                        cells = [
                            f"{v:.1e}" + ("*" if j == best else " ") for j, v in enumerate(errs)
                        ]
                        print(f"{short:30s} {sym_tag + ' lvl' + str(level):10s} {label:14s} "
                              f"{'1' if grp == 'one' else len(x2):>4} "
                              + " ".join(f"{s:>10s}" for s in cells))
        print(f"{'':30s} (max |y| {scale_y:.3g}; "
              "fp32 rounding of the sum alone: ~1e-7..1e-6 relative)")
    print(f"mlas.use_lut_gemm=1 output bit-identical to the default in every run above: {lut_same}")

    # 2. the artifact itself: decode, gathers, DQL and MatMulInteger per CPU
    print("\n2. the artifact, optimizations off: every 4-bit step against numpy, per CPU")
    tables = {n.name: n for n in gbq}
    for c in cpus:
        dw = load_out(work / f"debug_w_{c}.npz")
        bad_w = sum(
            not np.array_equal(dw[f"b__{name}"], w4_decode(w)) for name, w in weights.items()
        )
        gdiff = 0.0
        for n in tables.values():
            if "word" not in n.name:
                continue  # position ids come from a Slice; the word table is the large one
            ids = batch["input_ids"]
            a = {x.name: h.get_attribute_value(x) for x in n.attribute}
            tq = nh.to_array(next(i for i in model.graph.initializer if i.name == n.input[0]))
            sc = nh.to_array(next(i for i in model.graph.initializer if i.name == n.input[2]))
            zp = nh.to_array(next(i for i in model.graph.initializer if i.name == n.input[3]))
            ref = gbq_ref(tq, sc, zp, ids, a["block_size"])
            gdiff = max(gdiff, float(np.abs(dw[f"b__{n.output[0]}"] - ref).max()))
        w86 = np.load(work / "debug_w_x86.npz")
        same_gbq = all(
            np.array_equal(dw[f"b__{n.output[0]}"], w86[f"b__{n.output[0]}"]) for n in gbq
        )
        dd = np.load(work / f"debug_d_{c}.npz")
        bad_dql = bad_mmi = total = 0
        for n in mmi:
            dq = producer[n.input[0]]
            wq = w4_decode(weights[n.input[1]]) if n.input[1] in weights else nh.to_array(
                next(i for i in model.graph.initializer if i.name == n.input[1]))
            wz = nh.to_array(next(i for i in model.graph.initializer if i.name == n.input[3]))
            for g in ["b"] + [f"s{r}" for r in range(len(texts))]:
                q, s, z = I8.dql_ref(dd[f"{g}__{dq.input[0]}"])
                bad_dql += not (
                    np.array_equal(q, dd[f"{g}__{dq.output[0]}"])
                    and s == dd[f"{g}__{dq.output[1]}"]
                    and z == dd[f"{g}__{dq.output[2]}"]
                )
                acc = I8.mmi_ref(dd[f"{g}__{dq.output[0]}"], dd[f"{g}__{dq.output[2]}"], wq, wz)
                bad_mmi += not np.array_equal(acc, dd[f"{g}__{n.output[0]}"])
                total += 1
        print(f"  {c}: decoded int8 weights != numpy decode: {bad_w}/{len(weights)}; "
              f"word-embedding GatherBlockQuantized max |diff| vs (q-z)*s {gdiff:.2g}, "
              f"gathers == x86: {same_gbq}; "
              f"DQL != reference {bad_dql}/{total}, MatMulInteger != exact int32 {bad_mmi}/{total}")

    # 3. whole artifact: ARM vs x86 on the same file, and each against the FP32 artifact
    fp32 = np.load(work / "fp32_x86.npz")
    post = manifest.get("postprocess") or {}

    def pooled(arrays):
        return I8.pooled_texts(arrays, len(texts), post.get("pooling", "mean"))

    want = pooled(fp32)
    ref86 = {
        lv: np.load(work / f"full_x86_{lv}.npz") for lv in ("ORT_DISABLE_ALL", "ORT_ENABLE_ALL")
    }
    print(f"\n3. whole artifact, pooled embeddings of each text alone ({len(texts)} texts): cosine "
          "mean / min\n   against x86 onnx-fp32, and against x86 onnx-int4 at the same level; "
          "last column: worst per-row\n   last_hidden_state cosine of the padded batch vs x86")
    print(f"{'run':36s} {'vs FP32':>19s} {'vs x86 int4':>19s} {'batched rows':>13s}")
    for c in cpus:
        extra = ("ORT_ENABLE_ALL_nokleidi",) if c != "x86" else ()
        for tag in ("ORT_DISABLE_ALL", "ORT_ENABLE_ALL") + extra:
            r = np.load(work / f"full_{c}_{tag}.npz")
            base = ref86[tag.replace("_nokleidi", "")]
            got = pooled(r)
            cf = (got * want).sum(1)
            cx = (got * pooled(base)).sum(1)
            cb = I8.worst_cos(r["b__last_hidden_state"] * mask[..., None],
                              base["b__last_hidden_state"] * mask[..., None])
            print(f"{c + ' ' + tag:36s} {cf.mean():.6f} / {cf.min():.6f} "
                  f"{cx.mean():.6f} / {cx.min():.6f} {cb:13.6f}")
    if "a76" in cpus and "a72" in cpus:
        same = all(
            np.array_equal(
                np.load(work / f"full_a76_{t}.npz")[k], np.load(work / f"full_a72_{t}.npz")[k]
            )
            for t in ("ORT_DISABLE_ALL", "ORT_ENABLE_ALL")
            for k in ref86["ORT_DISABLE_ALL"].files
        )
        print(f"a76 and a72 outputs bit-identical: {same}")
    m = entry["metrics"]
    print(f"manifest metrics (converter, x86, validation texts): cosine mean "
          f"{m['cosine_mean']:.6f} / min {m['cosine_min']:.6f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
