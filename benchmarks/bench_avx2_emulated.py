#!/usr/bin/env python3
"""INT8 artifacts on the AVX2 kernel, on any x86 machine: MiniLM's x86-avx2 INT8 (8-bit codes,
adjacent pairs limited to 128) and x86-avx512-vnni INT8 (unconstrained 8-bit codes), each run
natively and on a Haswell emulated by qemu-user (AVX2, no AVX-512 / VNNI: onnxruntime's MLAS
then uses its VPMADDUBSW kernel, whose int16 pair sums saturate).

    python benchmarks/bench_avx2_emulated.py --json benchmarks/results/avx2_emulated.json

Accuracy only: emulated time means nothing. Cosine of the sentence embeddings against PyTorch
FP32 on the held-out texts (benchmarks/data/heldout_en.txt). Needs `qemu-x86_64` (Debian:
apt-get install qemu-user). --avx2 DIR / --vnni DIR reuse converted artifact directories.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))
from _bench_child import ChildError, run_child, user_path  # noqa: E402 - after the path
HELDOUT = ROOT / "benchmarks" / "data" / "heldout_en.txt"

_EMBED = r"""
import json, sys
import numpy as np
import edge_runtime
model = edge_runtime.load(sys.argv[1], artifact=sys.argv[2], threads=1)
np.save(sys.argv[4], model.embed(json.loads(open(sys.argv[3]).read())))
"""


def _texts() -> list[str]:
    return [t for t in HELDOUT.read_text().splitlines() if t.strip() and not t.startswith("#")]


def _reference(texts: list[str]) -> np.ndarray:
    from converters.core.validate import encode
    from converters.inputs.source import load_source
    from edge_runtime._text import sentence_vectors

    source = load_source(None)
    import torch

    feeds = encode(source, texts)
    with torch.no_grad():
        hidden = source.module(*[torch.from_numpy(feeds[n]) for n in source.input_names]).numpy()
    return sentence_vectors(hidden, feeds["attention_mask"], source.postprocess)


def _convert(target: str, out: Path) -> Path:
    from converters import ConvertConfig, convert

    print(f"converting MiniLM for {target} -> {out}", flush=True)
    convert(ConvertConfig(model=None, target=target, out=out, force=True, latency_runs=2),
            progress=lambda m: print("   ", m, flush=True))
    return out


def _embed(root: Path, artifact: str, texts_file: Path, emulator: list[str]) -> np.ndarray:
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "out.npy"
        command = [*emulator, sys.executable, "-c", _EMBED, str(root), artifact, str(texts_file),
                   str(result)]
        run_child(f"the {' '.join(emulator) or 'native'} run of {root}::{artifact}", command,
                  cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        return np.load(result)


def _code_stats(root: Path, artifact: str) -> dict[str, float]:
    """How much of the int8 range the MatMul weights use: per output column, the largest |code|
    and the largest adjacent pair sum |q[2k]| + |q[2k+1]|; medians and maxima over all columns."""
    import onnx
    from onnx import numpy_helper

    from converters.core.gptq import pair_sums

    graph = onnx.load(str(root / f"{artifact}.onnx")).graph
    peaks, pairs = [], []
    for init in graph.initializer:
        if init.name.endswith("_quantized") and init.data_type == onnx.TensorProto.INT8 and len(init.dims) == 2:
            codes = numpy_helper.to_array(init)
            peaks.append(np.abs(codes.astype(np.int32)).max(axis=0))
            pairs.append(pair_sums(codes).max(axis=0))
    peak, pair = np.concatenate(peaks), np.concatenate(pairs)
    return {"weights": len(peaks), "column_max_code_median": float(np.median(peak)),
            "pair_sum_max": int(pair.max()), "pair_sum_median": float(np.median(pair))}


def _cosines(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    return (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    # Paths are made absolute here: the runs under qemu have cwd=ROOT (tools/_bench_child.py).
    parser.add_argument("--avx2", type=user_path,
                        help="an x86-avx2 artifact directory (default: convert now)")
    parser.add_argument("--vnni", type=user_path,
                        help="an x86-avx512-vnni artifact directory (default: convert now)")
    parser.add_argument("--cpu", default="Haswell", help="qemu CPU model (default: Haswell)")
    parser.add_argument("--json", type=user_path, help="write the results here")
    args = parser.parse_args(argv)
    for flag, directory in (("--avx2", args.avx2), ("--vnni", args.vnni)):
        if directory is not None and not (directory / "manifest.json").is_file():
            parser.error(f"{flag} {directory}: no manifest.json; give an edge-convert output")
    try:
        return _run(args)
    except ChildError as exc:
        print(f"bench_avx2_emulated: error: {exc}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace) -> int:
    qemu = shutil.which("qemu-x86_64")
    if qemu is None:
        raise SystemExit("qemu-x86_64 not found: install qemu-user (Debian: apt-get install qemu-user)")

    texts = _texts()
    with tempfile.TemporaryDirectory(prefix="bench-avx2-") as tmp:
        work = Path(tmp)
        dirs = {"x86-avx2": args.avx2 or _convert("x86-avx2", work / "avx2"),
                "x86-avx512-vnni": args.vnni or _convert("x86-avx512-vnni", work / "vnni")}
        texts_file = work / "texts.json"
        texts_file.write_text(json.dumps(texts))
        print(f"PyTorch FP32 reference on {len(texts)} held-out texts", flush=True)
        want = _reference(texts)
        rows = []
        for target, root in dirs.items():
            manifest = json.loads((root / "manifest.json").read_text())
            entry = next(a for a in manifest["artifacts"] if a["name"] == "onnx-int8")
            row = {"target": target, "artifact": "onnx-int8",
                   "pair_sum_limit": entry["quantization"].get("pair_sum_limit"),
                   "reduce_range": entry["quantization"]["reduce_range"],
                   "kept_fp32": len(entry["quantization"]["promoted"]["weights"]), "codes": _code_stats(root, "onnx-int8")}
            for label, emulator in (("native", []), (f"emulated {args.cpu}", [qemu, "-cpu", args.cpu])):
                started = time.perf_counter()
                got = _embed(root, "onnx-int8", texts_file, emulator)
                cos = _cosines(got, want)
                row[label] = {"cosine_mean": round(float(cos.mean()), 5), "cosine_min": round(float(cos.min()), 5),
                              "seconds": round(time.perf_counter() - started, 1)}
                row.setdefault("_vectors", {})[label] = got
                print(f"  {target:16s} {label:18s} cosine mean {cos.mean():.4f} min {cos.min():.4f}", flush=True)
            native, emulated = row.pop("_vectors").values()
            row["native_vs_emulated_cosine_min"] = round(float(_cosines(native, emulated).min()), 6)
            rows.append(row)

    print("\n| artifact | weight codes | median column max code | max pair sum | native mean / min "
          "| emulated AVX2 mean / min | native vs emulated (min cos) |")
    print("|---|---|---:|---:|---|---|---|")
    for r in rows:
        codes = f"8-bit, pair sums <= {r['pair_sum_limit']}" if r["pair_sum_limit"] else (
            "7-bit" if r["reduce_range"] else "8-bit, unconstrained")
        n, e = r["native"], r[f"emulated {args.cpu}"]
        c = r["codes"]
        print(f"| {r['target']} onnx-int8 | {codes} | {c['column_max_code_median']:.0f} | {c['pair_sum_max']} | "
              f"{n['cosine_mean']:.4f} / {n['cosine_min']:.4f} | "
              f"{e['cosine_mean']:.4f} / {e['cosine_min']:.4f} | {r['native_vs_emulated_cosine_min']:.6f} |")
    if args.json:
        args.json.write_text(json.dumps({"command": " ".join(sys.argv), "texts": len(texts), "cpu": args.cpu,
                                         "rows": rows}, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
