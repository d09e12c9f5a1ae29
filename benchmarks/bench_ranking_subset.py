"""Choose how many fit texts rank the shared search's candidates (RANKING_TEXTS in
converters/core/search.py), on the validation split only.

Converts the default model for one target once per ranking size and records, per artifact that
searched, the validation metrics the manifest reports and the search's wall time. The held-out
benchmark texts are never read here: settings are chosen on validation (issue 10).

    .venv/bin/python benchmarks/bench_ranking_subset.py --target x86-avx2 --sizes 32,64,all
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import converters.pipeline  # noqa: F401 - imports every builder, so MODULES finds them all
from converters import ConvertConfig, convert
from edge_runtime._device import detect

# Every module of the converter that imported RANKING_TEXTS (each reads its own copy at call time:
# the ONNX and TFLite builders, the ONNX INT8 fallback). Found, not listed: a builder moved to a
# new module must not keep ranking on the old count unnoticed.
MODULES = tuple(module for name, module in sorted(sys.modules.items())
                if name.startswith("converters.") and hasattr(module, "RANKING_TEXTS"))



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="x86-avx2")
    parser.add_argument("--sizes", default="32,64,all", help="comma-separated counts; 'all' = every fit text")
    parser.add_argument("--work", type=Path, default=Path("/tmp/ranking-subset"))
    parser.add_argument("--json", type=Path, help="write the rows here")
    args = parser.parse_args()
    rows = []
    for size in args.sizes.split(","):
        count = None if size == "all" else int(size)
        for module in MODULES:
            module.RANKING_TEXTS = count
        out = args.work / f"{args.target}-{size}"
        started = time.perf_counter()
        convert(ConvertConfig(model=None, target=args.target, out=out, force=True, latency_runs=3))
        seconds = time.perf_counter() - started
        manifest = json.loads((out / "manifest.json").read_text())
        for entry in manifest["artifacts"]:
            quantization = entry.get("quantization", {})
            if "search_seconds" not in quantization:
                continue
            rows.append({"ranking_texts": size, "artifact": entry["name"], "validation": entry["metrics"],
                         "search_seconds": quantization["search_seconds"], "conversion_seconds": round(seconds, 1)})
            m = entry["metrics"]
            print(f"ranking {size:>4}: {entry['name']:<12} validation {m.get('cosine_mean', 0):.4f} / "
                  f"{m.get('cosine_min', 0):.4f}  search {quantization['search_seconds']:.0f} s  "
                  f"conversion {seconds:.0f} s", flush=True)
    result = {"cpu": detect().cpu_model, "target": args.target, "rows": rows}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
