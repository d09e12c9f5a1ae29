"""Resident memory each artifact of a directory needs once loaded and run: the origin of the
factors in edge_runtime/_memory.py (memory fit).

    python tools/measure_load_rss.py ARTIFACT_DIR [--json]

Each artifact is loaded in a fresh interpreter that has already imported numpy, the backend and
edge_runtime (their memory is there before any artifact is), with `edge_runtime.load(DIR,
artifact=NAME, tune=False)` (device caches as a user gets them at the first load), then runs one
batch-1 input at the converter's typical length. The growth of VmRSS (and its anonymous and
file-backed parts, /proc/self/status) is the artifact's need; printed with its ratio to the
artifact's file size.

The numbers behind edge_runtime/_memory.py's factors are in the comment above _FACTOR there.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_child import ChildError, run_child, user_path  # noqa: E402 - after the path

_PROBE = r"""
import json, sys
import numpy as np
def status():
    fields = {}
    for line in open("/proc/self/status"):
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024
    return fields
import edge_runtime
from edge_runtime import _tune
from edge_runtime.backends import open_session  # noqa: F401
fmt = sys.argv[3]
if fmt == "onnx":
    import onnxruntime  # noqa: F401
else:
    try:
        import ai_edge_litert.interpreter  # noqa: F401
    except ImportError:
        import tflite_runtime.interpreter  # noqa: F401
before = status()
model = edge_runtime.load(sys.argv[1], artifact=sys.argv[2], tune=False)
entry = model.artifact
feeds = _tune.representative_feeds(model.root, model.manifest, entry, _tune.sequence_length(model.manifest, entry))
model.run(feeds)
after = status()
print(json.dumps({"before": before, "after": after, "threads": model.threads}))
"""


def measure(root: Path, entry: dict) -> dict:
    done = run_child(
        f"loading {root}::{entry['name']}",
        [sys.executable, "-c", _PROBE, str(root), entry["name"], entry["format"]],
    )
    data = json.loads(done.stdout.strip().splitlines()[-1])
    file_mb = sum(f["bytes"] for f in entry["files"]) / 2**20
    grown = {k: data["after"][k] - data["before"][k] for k in ("VmRSS", "RssAnon", "RssFile")}
    return {
        "name": entry["name"],
        "format": entry["format"],
        "precision": entry["precision"],
        "file_mb": round(file_mb, 1),
        "rss_mb": round(grown["VmRSS"], 1),
        "anon_mb": round(grown["RssAnon"], 1),
        "file_backed_mb": round(grown["RssFile"], 1),
        "ratio": round(grown["VmRSS"] / file_mb, 2),
        "threads": data["threads"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("artifacts", type=user_path)  # absolute: the children are given it
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    import edge_runtime
    from edge_runtime import _device

    try:
        manifest = edge_runtime.read_manifest(args.artifacts)
    except edge_runtime.EdgeRuntimeError as exc:
        parser.error(str(exc))
    device = _device.detect()
    try:
        rows = [measure(args.artifacts, entry) for entry in manifest["artifacts"]]
    except ChildError as exc:
        print(f"measure_load_rss: error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"device": device.to_dict(), "rows": rows}, indent=1))
        return 0
    print(f"{device.cpu_model} ({' '.join(device.notable_features())}); backends {device.backends}")
    print(f"{'artifact':<22}{'file MB':>9}{'RSS +MB':>9}{'anon':>8}{'file':>8}{'ratio':>7}")
    for r in rows:
        print(
            f"{r['name']:<22}{r['file_mb']:>9}{r['rss_mb']:>9}{r['anon_mb']:>8}{r['file_backed_mb']:>8}{r['ratio']:>7}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
