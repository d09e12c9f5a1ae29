#!/usr/bin/env python3
"""The shared search's ranking direction, measured: the built-in MiniLM converted for the given
targets once per direction (converters/core/search.py RANK_FROM: "start" ranks each candidate moved
alone from the start, "full" each left out of all moved), then every artifact a search decided
(its quantization record has search steps) scored on the held-out texts. Prints a Markdown table:
validation metrics (what the search chose on), held-out metrics, candidates moved, the cap where
a floor search has one, and the bytes.

    .venv/bin/python benchmarks/bench_search_policy.py --targets jetson-orin,rpi5 --out /tmp/policy
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DIRECTIONS = ("start", "full")

# One conversion in a child process, with the direction set before anything runs.
_CHILD = r"""
import sys
import converters.core.search as search
search.RANK_FROM = sys.argv[1]
from converters.cli import main
main(["--target", sys.argv[2], "--out", sys.argv[3], "--force", "--quiet"])
"""


def _searched(manifest: dict) -> list[dict]:
    """The artifacts whose content a search decided: a non-empty list of search steps in their
    quantization record (a floor met at the start records none)."""
    found = []
    for entry in manifest["artifacts"]:
        quantization = entry.get("quantization") or {}
        steps = quantization.get("search") or (quantization.get("int4") or {}).get("search") or []
        if len(steps) > 1:
            found.append({"name": entry["name"], "steps": steps, "metrics": entry["metrics"],
                          "bytes": sum(f["bytes"] for f in entry["files"])})
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", default="jetson-orin,rpi5", help="comma-separated profile ids")
    parser.add_argument("--out", type=Path, required=True, help="a folder for the conversions (OUT/DIRECTION/TARGET)")
    parser.add_argument("--reuse", action="store_true", help="score conversions already in --out")
    args = parser.parse_args(argv)
    targets = [t for t in args.targets.split(",") if t]
    for direction in DIRECTIONS:
        for target in targets:
            out = args.out / direction / target
            if args.reuse and (out / "manifest.json").is_file():
                continue
            print(f"converting for {target}, ranking from {direction!r} ...", file=sys.stderr, flush=True)
            subprocess.run([sys.executable, "-c", _CHILD, direction, target, str(out)], check=True, cwd=ROOT)

    rows, pairs = [], []
    for direction in DIRECTIONS:
        for target in targets:
            out = args.out / direction / target
            for found in _searched(json.loads((out / "manifest.json").read_text())):
                rows.append((direction, target, out, found))
                pairs.append(f"{out}:{found['name']}")
    if not pairs:
        print("no artifact of these targets was decided by a search", file=sys.stderr)
        return 1
    held = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "heldout_accuracy.py"), *pairs],
                          check=True, capture_output=True, text=True, cwd=ROOT).stdout
    scored = {line.split("|")[1].strip(): line.split("|")[2].strip() for line in held.splitlines()
              if line.startswith("| /")}
    print("| target | artifact | ranked from | validation | held-out | moved | bytes |\n|---|---|---|---|---|---|---:|")
    for direction, target, out, found in rows:
        moved = [s for s in found["steps"] if s.get("accepted")]
        ranked = [s for s in found["steps"] if s.get("candidate")]
        cap = next((s["why"] for s in found["steps"] if str(s.get("why", "")).startswith("cap reached")), "")
        validation = ", ".join(f"{k} {v:.4f}" for k, v in found["metrics"].items() if "cosine" in k or "top1" in k)
        held_out = scored.get(f"{out}:{found['name']}", "?")
        capped = f" ({cap})" if cap else ""
        print(f"| {target} | {found['name']} | {direction} | {validation} | {held_out} "
              f"| {len(moved)} of {len(ranked)}{capped} | {found['bytes']:,} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
