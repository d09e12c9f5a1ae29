#!/usr/bin/env python3
"""Build the device wheel: edge_runtime plus the target profiles it reads, nothing else.

    python tools/build_runtime_wheel.py [--out dist]
    pip install dist/edge_runtime-0.1.0-py3-none-any.whl[onnx]     # or [tflite]

The wheel is assembled directly (it is a zip with a fixed layout, PEP 427), so building it needs
only the standard library: no setuptools run, no network, byte-for-byte reproducible.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import re
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NAME = "edge_runtime"
# Fixed timestamp so the same sources give the same wheel bytes.
EPOCH = (2020, 1, 1, 0, 0, 0)

# tokenizers depends on huggingface_hub (with httpx, hf-xet, pyyaml, fsspec, ...), none of which
# edge_runtime uses: it only calls Tokenizer.from_file. Requires-Dist cannot say "without its
# dependencies", so the extras stay complete (one `pip install`), and the slim device install
# is documented and checked instead (docs/arm64.md): the wheel and its backend installed with
# `--no-deps`, then `pip install --no-deps tokenizers`, saves 22.5 MB of 153 MB ([onnx]) and 22.7 MB of 137 MB ([tflite])
# on aarch64 (tools/arm64-check --sizes); tools/arm64-check's legacy environment is installed
# that way and its embeddings match x86.
REQUIRES = [
    "numpy>=1.24",
    "psutil>=5.9",
    # targets/ parses its profiles at run time (edge-run --info, edge-bench: the device's profile
    # by its [detect] rules) with tomllib, which Python 3.11 added; 3.10 (Jetson Orin's JetPack
    # 6, Ubuntu 22.04) gets the same parser from PyPI (targets/__init__.py imports either).
    'tomli>=1.1; python_version < "3.11"',
    # 1.17's wheels do not bound numpy below 2 yet fail to import with it (pip pairs them with
    # numpy 2 today); from 1.18 on pip resolves a numpy they import with. Artifacts state their
    # own minimum (manifest min_runtime: 1.17 FP32/INT8, 1.23 INT4), checked before a load.
    'onnxruntime>=1.18; extra == "onnx"',
    'tokenizers>=0.15; extra == "onnx"',
    # every TFLite artifact's min_runtime (the version the converter validates them with);
    # aarch64 wheels for Python 3.10 and 3.11 exist
    'ai-edge-litert>=2.3; extra == "tflite"',
    'tokenizers>=0.15; extra == "tflite"',
    # load(trusted_keys=...) checks model.sig with cryptography alone (docs/signing.md)
    'cryptography>=41; extra == "verify"',
    # edge-serve (edge_runtime/serve/): starlette + uvicorn, pure Python (uvicorn uses h11 when
    # httptools is absent): they install on aarch64 and Python 3.10 without a compiler; the C
    # parser and loop only where PyPI has wheels (setup.cfg's serve extra says why).
    'starlette>=0.37; extra == "serve"',
    'uvicorn>=0.29; extra == "serve"',
    'httptools>=0.6; sys_platform == "linux" and platform_machine in "x86_64 aarch64" and extra == "serve"',
    'uvloop>=0.19; sys_platform == "linux" and platform_machine in "x86_64 aarch64" and extra == "serve"',
]


def _version() -> str:
    text = (ROOT / "edge_runtime" / "__init__.py").read_text()
    return re.search(r'^__version__ = "([^"]+)"', text, re.M).group(1)


def _sources() -> list[tuple[str, bytes]]:
    files = []
    for package, patterns in (("edge_runtime", ("**/*.py",)), ("targets", ("*.py", "*.toml"))):
        for pattern in patterns:
            for path in sorted((ROOT / package).glob(pattern)):
                if "__pycache__" not in path.parts:
                    files.append((path.relative_to(ROOT).as_posix(), path.read_bytes()))
    return files


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"sha256={digest}"


def build(out_dir: Path) -> Path:
    version = _version()
    dist_info = f"{NAME}-{version}.dist-info"
    metadata = "\n".join(
        [
            "Metadata-Version: 2.1",
            f"Name: {NAME.replace('_', '-')}",
            f"Version: {version}",
            "Summary: Slim on-device runtime for edge-convert artifacts (ONNX / TFLite).",
            # tests/test_python310.py checks the sources against 3.10 and runs them there
            "Requires-Python: >=3.10",
            "Provides-Extra: onnx",
            "Provides-Extra: tflite",
            "Provides-Extra: verify",
            "Provides-Extra: serve",
            *[f"Requires-Dist: {req}" for req in REQUIRES],
            "",
            "Loads an edge-convert artifact directory, verifies hashes and a golden sample, and",
            "runs it with onnxruntime or ai-edge-litert. Never imports torch.",
            "",
        ]
    )
    meta_files = {
        f"{dist_info}/METADATA": metadata.encode(),
        f"{dist_info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: edge-runtime tools/build_runtime_wheel.py\n"
        b"Root-Is-Purelib: true\nTag: py3-none-any\n",
        f"{dist_info}/entry_points.txt": b"[console_scripts]\nedge-run = edge_runtime._entry:edge_run\n"
        b"edge-bench = edge_runtime._entry:edge_bench\nedge-tune = edge_runtime._entry:edge_tune\n"
        b"edge-serve = edge_runtime._entry:edge_serve\n",
        f"{dist_info}/top_level.txt": b"edge_runtime\ntargets\n",
    }
    entries = _sources() + list(meta_files.items())
    record = "".join(f"{name},{_record_hash(data)},{len(data)}\n" for name, data in entries)
    record += f"{dist_info}/RECORD,,\n"

    out_dir.mkdir(parents=True, exist_ok=True)
    wheel = out_dir / f"{NAME}-{version}-py3-none-any.whl"
    tmp = wheel.with_suffix(".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries + [(f"{dist_info}/RECORD", record.encode())]:
            info = zipfile.ZipInfo(name, date_time=EPOCH)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, data)
    tmp.replace(wheel)
    return wheel


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "dist", help="output directory")
    args = parser.parse_args(argv)
    existing = next((p for p in [args.out, *args.out.resolve().parents] if p.exists()), None)
    if existing is not None and not existing.is_dir():
        parser.error(f"--out {args.out}: {existing} is a file, not a directory")
    try:
        wheel = build(args.out)
    except OSError as exc:
        parser.error(f"--out {args.out}: cannot write the wheel there ({exc.strerror or exc})")
    print(wheel)
    # Every build has the same version: pip keeps an installed copy of the same version, so an
    # update on a device needs --force-reinstall (--no-deps: the dependencies stay as they are).
    print(f"install: pip install '{wheel}[onnx]'   (or [tflite]; add ,serve / ,verify)\n"
          f"update an installed copy: pip install --force-reinstall --no-deps '{wheel}'", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
