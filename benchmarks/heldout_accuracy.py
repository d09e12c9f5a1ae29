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
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] + " Prints a Markdown table on stdout.")
    parser.add_argument("artifacts", nargs="+", metavar="DIR:ARTIFACT", help="an edge-convert output and an artifact name")
    parser.add_argument("--model", type=Path, default=None,
                        help="the source model directory the artifacts were converted from (default: the built-in MiniLM)")
    args = parser.parse_args(argv)

    import edge_runtime
    from edge_runtime._bench_config import DEFAULT_SHAPE
    from converters.core.validate import compute_metrics, reference_outputs
    from converters.inputs.calibration import load_texts
    from converters.inputs.source import SourceModelError, _weights_sha256, default_model_dir, load_source

    # Everything that can be wrong with the arguments is said before the PyTorch reference pass.
    try:
        model_dir = args.model if args.model is not None else default_model_dir()
        if not Path(model_dir).is_dir():
            raise SourceModelError(f"{model_dir} is not a model directory")
        weights = _weights_sha256(model_dir)
    except SourceModelError as exc:
        parser.error(f"--model: {exc}")
    pairs = []
    for spec in args.artifacts:
        folder, _, name = spec.rpartition(":")
        if not folder or not name or not (Path(folder) / "manifest.json").is_file():
            parser.error(f"{spec}: expected DIR:ARTIFACT with DIR an edge-convert output (manifest.json)")
        try:
            manifest = edge_runtime.read_manifest(folder)
        except edge_runtime.EdgeRuntimeError as exc:
            parser.error(f"{spec}: {exc}")
        names = [entry["name"] for entry in manifest["artifacts"]]
        if name not in names:
            parser.error(f"{spec}: no artifact {name!r} in {folder} (it has {', '.join(names)})")
        # Scored against another model's outputs, the figures are noise (a reviewer got 0.136).
        recorded = manifest.get("source") or {}
        if recorded.get("sha256") != weights:
            parser.error(f"{spec}: {folder} was converted from {recorded.get('name', 'a nameless model')!r}, not from "
                         f"{model_dir} (weights sha256 {str(recorded.get('sha256'))[:12]} vs {weights[:12]}); "
                         "give that model with --model")
        pairs.append((Path(folder), name))

    # the converter's own reader of text files: comment lines and blank lines are no texts
    texts = load_texts(HELDOUT, role="held-out").texts
    source = load_source(model_dir)
    reference = reference_outputs(source, texts)
    print(f"| artifact | held-out ({len(texts)} texts) |\n|---|---|")
    for folder, name in pairs:
        model = edge_runtime.load(folder, artifact=name, threads=DEFAULT_SHAPE.threads)
        metrics = compute_metrics(source, reference, model.run, name)
        print(f"| {folder}:{name} | " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
