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
    parser.add_argument(
        "--trusted-key", action="append", metavar="PEM",
        help="public key (PEM) whose signature (model.sig) the directory must carry; repeat to "
        "trust several keys; needs edge_runtime[verify] (docs/signing.md)",
    )
    return parser


def _describe(root: str) -> dict:
    """The device, its profile, what load() would pick and why, and the artifact table."""
    from pathlib import Path

    from edge_runtime import _device, _memory, _select, _tune

    path = Path(root)
    manifest = edge_runtime.read_manifest(path)
    device = _device.detect()
    profile_id, profile_reason = _device.match_profile(device)
    tuning = _tune.read_cached(path, manifest)
    plan = _select.plan(path, manifest, device, tuning)
    selection = None
    if plan.choices:
        first = plan.choices[0]
        threads, spinning, source = _select.threads_for(first.entry, manifest, tuning)
        selection = {
            "artifact": first.name,
            "reason": plan.reason,
            "threads": threads,
            "spinning": spinning,
            "threads_from": source,
            "order": [
                {"name": c.name, "fits_memory": c.fits, "notes": c.notes} for c in plan.choices
            ],
        }
    info = device.to_dict()
    info["features_of_interest"] = device.notable_features()
    return {
        "device": info,
        "profile": {
            "detected": profile_id,
            "reason": profile_reason,
            "artifacts_made_for": manifest["target"]["id"],
        },
        "selection": selection,
        "not_tried": plan.skipped,
        "tuning": {
            "cache_file": str(_tune.cache_file(path)),
            "present": tuning is not None,
            "fastest": (tuning or {}).get("fastest"),
        },
        "target": manifest["target"]["id"],
        "task": manifest["task"],
        "source": manifest["source"].get("name"),
        "artifacts": [
            {
                "name": a["name"],
                "format": a["format"],
                "precision": a["precision"],
                "bytes": sum(f["bytes"] for f in a["files"]),
                "estimated_mb": round(_memory.estimate_mb(a), 1),
                "metrics": a["metrics"],
            }
            for a in manifest["artifacts"]
        ],
    }


def _print_info(info: dict) -> None:
    d = info["device"]
    clusters = ", ".join(
        f"{len(c['cpus'])}x {c['core'] or 'cpu'}"
        + (f" @ {c['max_khz'] / 1e6:.2f} GHz" if c["max_khz"] else "")
        for c in d["clusters"]
    )
    print(f"device   {d['cpu_model']} ({d['arch']}), board {d['board'] or 'unknown'}")
    print(f"         ISA {' '.join(d['features_of_interest']) or '-'}; INT8 GEMM {d['int8_gemm']} "
          f"({d.get('int8_gemm_source', 'CPU flags')})")
    print(f"         {d['logical_cores']} logical / {d['physical_cores']} physical cores "
          f"({clusters}); big cores {d['big_cores']}")
    print(f"         RAM {d['ram_total_mb']} MB, {d['ram_available_mb']} MB available")
    backends = ", ".join(f"{k} {v}" for k, v in d["backends"].items()) or "none installed"
    print(f"         backends: {backends}")
    p = info["profile"]
    print(f"profile  {p['detected'] or 'none'}: {p['reason']}")
    if p["detected"] != p["artifacts_made_for"]:
        print(f"         (these artifacts were made for {p['artifacts_made_for']})")
    sel = info["selection"]
    if sel is None:
        print("load()   picks nothing: no artifact can run here")
    else:
        spin = {None: "", True: ", spinning", False: ", no spinning"}[sel["spinning"]]
        count = f"{sel['threads']} thread{'s' if sel['threads'] != 1 else ''}"
        print(f"load()   picks {sel['artifact']} with {count}{spin} ({sel['threads_from']})")
        print(f"         because {sel['reason']}")
        order = [c["name"] + ("" if c["fits_memory"] else " (may not fit)") for c in sel["order"]]
        print(f"         order: {' > '.join(order)}")
    for name, why in info["not_tried"].items():
        print(f"         not tried: {name}: {why}")
    t = info["tuning"]
    state = "none yet (edge-tune DIR)"
    if t["present"]:
        state = f"present (fastest: {t['fastest'] or 'not compared'})"
    print(f"tuning   {state}: {t['cache_file']}")
    print(f"\ntarget {info['target']}, task {info['task']}, source {info['source']}")
    for a in info["artifacts"]:
        metrics = ", ".join(f"{k} {v:.4f}" for k, v in a["metrics"].items())
        print(f"  {a['name']:<20} {a['format']:<6} {a['precision']:<5} "
              f"{a['bytes'] / 1e6:8.1f} MB  ~{a['estimated_mb']:6.0f} MB resident  {metrics}")


def _main(argv: list[str] | None) -> int:
    # Intermixed: texts may follow options ("edge-run DIR --json 'a text'"), as users type them.
    args = _parser().parse_intermixed_args(argv)
    try:
        if args.info:
            info = _describe(args.artifacts)
            if args.json:
                print(json.dumps(info, indent=2))
            else:
                _print_info(info)
            return 0
        if not args.texts:
            print("edge-run: give texts to run, or --info", file=sys.stderr)
            return 2
        model = edge_runtime.load(args.artifacts, artifact=args.artifact, threads=args.threads,
                                  trusted_keys=args.trusted_key)
        if model.task == "feature-extraction":
            vectors = model.embed(args.texts)
            result = {"artifact": model.name, "embeddings": vectors.tolist()}
            if not args.json:
                print(f"{model!r}")
                for text, vec in zip(args.texts, vectors):
                    head = ", ".join(f"{v:.4f}" for v in vec[:6])
                    print(f"  dim {vec.shape[0]} norm {np.linalg.norm(vec):.4f} [{head}, ...]  {text!r}")
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
    except edge_runtime.SignatureError as exc:  # the library names its parameter; say our flag
        message = str(exc).replace("trusted_keys=None", "no --trusted-key")
        print(f"edge-run: error: {message.replace('trusted_keys', '--trusted-key')}", file=sys.stderr)
        return 1
    except edge_runtime.EdgeRuntimeError as exc:
        print(f"edge-run: error: {exc}", file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> int:
    """The console script. A reader that stops early (`edge-run DIR text | head`) ends it quietly,
    as it does any Unix tool."""
    try:
        code = _main(argv)
        sys.stdout.flush()  # inside the try: buffered output meets a closed pipe here, not at exit
        return code
    except BrokenPipeError:
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 141


if __name__ == "__main__":
    sys.exit(main())
