"""How an artifact's accuracy depends on how the texts are run: in the padded batches of 16 that
edge-convert scores and records with, or each text alone and unpadded, as `Model.embed` runs
batch-dependent artifacts by default (docs/guarantees.md). Validation texts only (the split no
fitting step sees); the manifest's metrics are the batched ones.

    .venv/bin/python benchmarks/bench_scoring_batches.py ARTIFACT_DIR [ARTIFACT_DIR ...] [--json OUT]

Dynamically quantized ONNX computes one activation scale per tensor, i.e. per batch: padding
and batch mates change a text's numbers. TFLite runs rows one at a time and quantizes per row,
so its two figures agree.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from converters.core.validate import compute_metrics, reference_outputs, rows_alone, sequence_outputs
from converters.inputs.calibration import load_texts, split_texts
from converters.inputs.source import load_source
from edge_runtime._bench_config import DEFAULT_SHAPE
from edge_runtime._device import detect
from edge_runtime.backends import open_session


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="+", type=Path, help="edge-convert output directories of the default model")
    parser.add_argument("--json", type=Path, help="write the rows here")
    args = parser.parse_args()
    source = load_source(None)
    reference = reference_outputs(source, tuple(split_texts(load_texts()).validation.texts))
    rows = []
    for directory in args.dirs:
        manifest = json.loads((directory / "manifest.json").read_text())
        for entry in manifest["artifacts"]:
            if entry["precision"] == "fp32":
                continue
            session = open_session(entry["format"], directory / entry["files"][0]["path"], threads=DEFAULT_SHAPE.threads)
            batched = compute_metrics(source, reference, session.run, entry["name"])
            alone = compute_metrics(source, reference, rows_alone(session.run, sequence_outputs(source)), entry["name"])
            rows.append({"target": manifest["target"]["id"], "artifact": entry["name"],
                         "batched_16": batched, "each_text_alone": alone})
            print(f"{manifest['target']['id']:<16} {entry['name']:<14} batched {batched['cosine_mean']:.4f} / "
                  f"{batched['cosine_min']:.4f}   alone {alone['cosine_mean']:.4f} / {alone['cosine_min']:.4f}",
                  flush=True)
    if args.json:
        args.json.write_text(json.dumps({"cpu": detect().cpu_model, "texts": len(reference.texts), "rows": rows},
                                        indent=2) + "\n")


if __name__ == "__main__":
    main()
