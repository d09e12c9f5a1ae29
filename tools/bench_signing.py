#!/usr/bin/env python3
"""What signing and checking model.sig cost on an artifact directory.

    .venv/bin/python tools/bench_signing.py out/x86-avx2 [--rounds 5]

Copies DIR to a temporary directory, signs the copy with a fresh key (converters/packaging/signing.py),
then, in interleaved rounds, times verify_directory() alone and edge_runtime.load() without and
with trusted_keys. Prints medians and the load ratio, with the CPU they were measured on.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import edge_runtime
from converters import ConversionError
from converters.packaging import signing
from edge_runtime._device import detect
from edge_runtime._signing import verify_directory


def _seconds(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path, help="an edge-convert artifact directory")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    # Mistakes in one line before the copy (they were tracebacks from copytree, read_manifest
    # or statistics.median of no rounds).
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, got {args.rounds}")
    try:
        edge_runtime.read_manifest(args.directory)
    except edge_runtime.EdgeRuntimeError as exc:
        parser.error(str(exc))
    try:
        return _bench(args)
    except (edge_runtime.EdgeRuntimeError, ConversionError, OSError) as exc:  # e.g. cannot sign
        print(f"bench_signing: error: {exc}", file=sys.stderr)
        return 1


def _bench(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="bench-signing-") as tmp:
        root = Path(tmp) / (args.directory.resolve().name or "artifacts")  # "." has no name
        shutil.copytree(args.directory, root)
        (root / "model.sig").unlink(missing_ok=True)
        private, public = signing.generate_key_pair(Path(tmp) / "k.pem", Path(tmp) / "k.pub")
        key = signing.load_signing_key(private)
        size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
        sign_s = _seconds(lambda: signing.sign_directory(root, key))
        edge_runtime.load(root)  # warm the device caches and the page cache once, untimed
        times: dict[str, list[float]] = {"verify_directory": [], "load": [], "load+trusted": []}
        for _ in range(args.rounds):
            times["verify_directory"].append(_seconds(lambda: verify_directory(root, [public])))
            times["load"].append(_seconds(lambda: edge_runtime.load(root)))
            times["load+trusted"].append(
                _seconds(lambda: edge_runtime.load(root, trusted_keys=[public]))
            )

    device = detect()
    flags = " ".join(device.notable_features()) or "-"
    print(f"{args.directory}: {size / 1e6:.1f} MB in files; CPU {device.cpu_model} ({flags})")
    print(f"sign_directory          {sign_s * 1e3:8.1f} ms (once)")
    medians = {name: statistics.median(values) for name, values in times.items()}
    for name, value in medians.items():
        print(f"{name:<23} {value * 1e3:8.1f} ms (median of {args.rounds})")
    print(f"load+trusted / load     {medians['load+trusted'] / medians['load']:8.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
