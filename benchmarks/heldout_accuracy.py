#!/usr/bin/env python3
"""Held-out accuracy of artifacts already converted, without timing them: each DIR:ARTIFACT is
loaded through edge_runtime (hashes and golden samples checked) and scored against PyTorch FP32
on benchmarks/data/heldout_en.txt (texts the converter never saw) with the converter's own
metrics, in padded batches of 16 (bench_artifacts.py's held-out column, without its timing and
stock rows). The model is the built-in MiniLM unless --model names another.

    .venv/bin/python benchmarks/heldout_accuracy.py /tmp/rpi4:tflite-int4 /tmp/rpi4-other:tflite-int4
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
HELDOUT = ROOT / "benchmarks" / "data" / "heldout_en.txt"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("artifacts", nargs="+", metavar="DIR:ARTIFACT", help="an edge-convert output and an artifact name")
    parser.add_argument("--model", type=Path, default=None, help="the source model directory (default: built-in)")
    args = parser.parse_args(argv)
    pairs = []
    for spec in args.artifacts:
        folder, _, name = spec.rpartition(":")
        if not folder or not name or not (Path(folder) / "manifest.json").is_file():
            parser.error(f"{spec}: expected DIR:ARTIFACT with DIR an edge-convert output (manifest.json)")
        pairs.append((Path(folder), name))

    import edge_runtime
    from converters.core.validate import compute_metrics, reference_outputs
    from converters.inputs.calibration import load_texts
    from converters.inputs.source import load_source

    # the converter's own reader of text files: comment lines and blank lines are no texts
    texts = load_texts(HELDOUT, role="held-out").texts
    source = load_source(args.model)
    reference = reference_outputs(source, texts)
    print(f"| artifact | held-out ({len(texts)} texts) |\n|---|---|")
    for folder, name in pairs:
        model = edge_runtime.load(folder, artifact=name, threads=2)
        metrics = compute_metrics(source, reference, model.run, name)
        print(f"| {folder}:{name} | " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
