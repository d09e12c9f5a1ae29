"""Writing the artifact directory: staged in a hidden sibling, renamed into place at the end.

An interrupted or failed run leaves at most a `.NAME.partial-*` directory without a manifest,
never a directory that looks complete.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from converters._errors import ConversionError
from edge_runtime._manifest import MANIFEST_NAME, file_sha256

__all__ = ["file_entry", "save_onnx", "staging_dir", "write_golden", "write_manifest"]

# Offsets of tensors of 1 MiB and more start on a 4 KiB page boundary, so each maps onto whole
# pages. Smaller tensors are packed densely: aligning every one (an INT4 model has hundreds of
# small scale/weight blocks) to 64 KiB once added 30% to the file. ORT maps unaligned offsets
# too, rounding down to the page, so this is about tidy mappings, not correctness.
EXTERNAL_DATA_ALIGNMENT = 4096
ALIGN_THRESHOLD = 1 << 20


@contextlib.contextmanager
def staging_dir(out: Path, force: bool) -> Iterator[Path]:
    """Yield an empty hidden directory next to `out`; on success it replaces `out` atomically."""
    out = out.resolve()
    if out.exists() and not force:
        raise ConversionError(f"{out} already exists; pass --force to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    stage.chmod(0o755)  # mkdtemp makes it owner-only; the result is an ordinary directory
    try:
        yield stage
        if not (stage / MANIFEST_NAME).is_file():
            raise ConversionError("internal: the manifest was not written")
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.rename(out, old / "previous")
            os.rename(stage, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(stage, out)
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)


def file_entry(root: Path, path: Path) -> dict[str, Any]:
    return {
        "path": path.relative_to(root).as_posix(),
        "sha256": file_sha256(path),
        "bytes": path.stat().st_size,
    }


def save_onnx(model_path: Path, root: Path, name: str) -> list[dict[str, Any]]:
    """Copy an ONNX model into `root` as NAME.onnx + NAME.onnx.data (aligned external weights)."""
    import onnx_ir as ir

    model = ir.load(str(model_path))
    target = root / f"{name}.onnx"
    data_name = f"{name}.onnx.data"
    ir.save(
        model,
        str(target),
        external_data=data_name,
        size_threshold_bytes=1024,
        alignment=EXTERNAL_DATA_ALIGNMENT,
        align_threshold=ALIGN_THRESHOLD,
    )
    files = [file_entry(root, target)]
    if (root / data_name).exists():
        files.append(file_entry(root, root / data_name))
    return files


def write_golden(root: Path, name: str, inputs: dict[str, np.ndarray], outputs: dict[str, np.ndarray], tolerance: dict[str, float]) -> dict[str, Any]:
    """Store a small input/output pair the device re-runs at load time."""
    golden_dir = root / "golden"
    golden_dir.mkdir(exist_ok=True)
    path = golden_dir / f"{name}.npz"
    arrays = {f"input:{k}": v for k, v in inputs.items()}
    arrays.update({f"output:{k}": v for k, v in outputs.items()})
    np.savez(path, **arrays)
    return {**file_entry(root, path), "tolerance": tolerance}


def write_manifest(root: Path, manifest: dict[str, Any]) -> Path:
    """Written last, via a temporary file and rename, so a manifest is never half-written."""
    path = root / MANIFEST_NAME
    tmp = root / f".{MANIFEST_NAME}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path
