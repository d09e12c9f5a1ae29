"""Reading and checking manifest.json: the contract between edge-convert and the device."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from edge_runtime._errors import ArtifactError, ManifestError

__all__ = [
    "MANIFEST_NAME",
    "MANIFEST_SCHEMA_VERSION",
    "file_sha256",
    "read_manifest",
    "resolve",
    "verify_files",
]

MANIFEST_NAME = "manifest.json"
MANIFEST_SCHEMA_VERSION = 1
_REQUIRED = ("schema_version", "target", "source", "task", "inputs", "outputs", "artifacts")
_ARTIFACT_REQUIRED = ("name", "format", "precision", "files", "metrics", "golden")
FORMATS = ("onnx", "tflite")
PRECISIONS = ("fp32", "fp16", "int8", "int4")


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def resolve(root: Path, relative: str) -> Path:
    """`root / relative`, refusing absolute paths and paths that leave the artifact directory."""
    if not isinstance(relative, str) or not relative or Path(relative).is_absolute():
        raise ManifestError(f"manifest path {relative!r} must be a non-empty relative path")
    path = (root / relative).resolve()
    if not path.is_relative_to(root.resolve()):
        raise ManifestError(f"manifest path {relative!r} points outside {root}")
    return path


def read_manifest(root: Path) -> dict[str, Any]:
    """Parse and structurally check `root/manifest.json`."""
    path = root / MANIFEST_NAME
    if not root.is_dir():
        raise ManifestError(f"{root} is not a directory (expected an edge-convert output)")
    if not path.is_file():
        raise ManifestError(
            f"{root} has no {MANIFEST_NAME}: not an edge-convert artifact directory, "
            "or the conversion did not finish"
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(manifest, dict):
        raise ManifestError(f"{path}: top level must be an object")
    missing = [key for key in _REQUIRED if key not in manifest]
    if missing:
        raise ManifestError(f"{path}: missing keys {missing}")
    version = manifest["schema_version"]
    if version != MANIFEST_SCHEMA_VERSION:
        raise ManifestError(
            f"{path}: schema_version {version!r}; this edge_runtime reads "
            f"{MANIFEST_SCHEMA_VERSION}. Re-convert, or install the matching edge_runtime."
        )
    names = set()
    for index, entry in enumerate(manifest["artifacts"]):
        where = f"{path}: artifacts[{index}]"
        if not isinstance(entry, dict):
            raise ManifestError(f"{where} must be an object")
        missing = [key for key in _ARTIFACT_REQUIRED if key not in entry]
        if missing:
            raise ManifestError(f"{where}: missing keys {missing}")
        if entry["name"] in names:
            raise ManifestError(f"{where}: duplicate artifact name {entry['name']!r}")
        names.add(entry["name"])
        if entry["format"] not in FORMATS or entry["precision"] not in PRECISIONS:
            raise ManifestError(
                f"{where}: format {entry['format']!r} / precision {entry['precision']!r}; "
                f"known formats {FORMATS}, precisions {PRECISIONS}"
            )
        for item in [*entry["files"], entry["golden"]]:
            resolve(root, item["path"])
    if not manifest["artifacts"]:
        raise ManifestError(f"{path}: lists no artifacts")
    return manifest


def verify_files(root: Path, items: list[dict[str, Any]]) -> None:
    """Check every listed file exists with the recorded size and sha256."""
    problems = []
    for item in items:
        path = resolve(root, item["path"])
        if not path.is_file():
            problems.append(f"{item['path']}: missing")
            continue
        size = path.stat().st_size
        if size != item["bytes"]:
            problems.append(f"{item['path']}: {size} bytes, manifest says {item['bytes']}")
        elif file_sha256(path) != item["sha256"]:
            problems.append(f"{item['path']}: sha256 differs from the manifest")
    if problems:
        raise ArtifactError(
            f"artifact files in {root} do not match manifest.json (copied incompletely or "
            "modified?):\n  " + "\n  ".join(problems)
        )
