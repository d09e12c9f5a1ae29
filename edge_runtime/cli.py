"""edge-run: run an artifact directory on text (or describe it). Thin: parse, call, print."""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

import edge_runtime


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edge-run", description="Run an edge-convert artifact directory on this device."
    )
    parser.add_argument("artifacts", help="artifact directory (with manifest.json)")
    parser.add_argument("texts", nargs="*", help="texts to embed or classify")
    parser.add_argument("--artifact", help="artifact name (default: best for this device)")
    parser.add_argument("--threads", type=int, help="intra-op threads (default: profile)")
    parser.add_argument("--info", action="store_true", help="describe the artifacts and exit")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


def _describe(root: str) -> dict:
    manifest = edge_runtime.read_manifest(__import__("pathlib").Path(root))
    return {
        "target": manifest["target"]["id"],
        "task": manifest["task"],
        "source": manifest["source"].get("name"),
        "artifacts": [
            {
                "name": a["name"],
                "format": a["format"],
                "precision": a["precision"],
                "bytes": sum(f["bytes"] for f in a["files"]),
                "metrics": a["metrics"],
            }
            for a in manifest["artifacts"]
        ],
    }


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.info:
            info = _describe(args.artifacts)
            if args.json:
                print(json.dumps(info, indent=2))
            else:
                print(f"target {info['target']}, task {info['task']}, source {info['source']}")
                for a in info["artifacts"]:
                    metrics = ", ".join(f"{k} {v:.4f}" for k, v in a["metrics"].items())
                    print(f"  {a['name']:<12} {a['format']:<6} {a['precision']:<5} "
                          f"{a['bytes'] / 1e6:8.1f} MB  {metrics}")
            return 0
        if not args.texts:
            print("edge-run: give texts to run, or --info", file=sys.stderr)
            return 2
        model = edge_runtime.load(args.artifacts, artifact=args.artifact, threads=args.threads)
        if model.task == "feature-extraction":
            vectors = model.embed(args.texts)
            result = {"artifact": model.name, "embeddings": vectors.tolist()}
            if not args.json:
                print(f"{model!r}")
                for text, vec in zip(args.texts, vectors):
                    head = np.array2string(vec[:6], precision=4, separator=", ")
                    print(f"  dim {vec.shape[0]} norm {np.linalg.norm(vec):.4f} {head[:-1]}, ...]  {text!r}")
                return 0
        else:
            result = {"artifact": model.name, "results": model.classify(args.texts)}
            if not args.json:
                print(f"{model!r}")
                for text, res in zip(args.texts, result["results"]):
                    print(f"  {json.dumps(res)}  {text!r}")
                return 0
        print(json.dumps(result))
        return 0
    except edge_runtime.EdgeRuntimeError as exc:
        print(f"edge-run: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
