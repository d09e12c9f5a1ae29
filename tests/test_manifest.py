"""Manifest reading and file verification on hand-made directories. No torch."""

import json

import pytest

from edge_runtime import ArtifactError, ManifestError, read_manifest
from edge_runtime._manifest import file_sha256, resolve, verify_files


def _write(root, manifest):
    (root / "manifest.json").write_text(json.dumps(manifest))


def _minimal(root):
    (root / "m.onnx").write_bytes(b"abc")
    (root / "g.npz").write_bytes(b"g")
    entry = {"path": "m.onnx", "sha256": file_sha256(root / "m.onnx"), "bytes": 3}
    return {
        "schema_version": 1, "target": {"id": "x86-avx2"}, "source": {}, "task": "feature-extraction",
        "inputs": [{"name": "input_ids", "dtype": "int64", "shape": ["batch", "sequence"]}],
        "outputs": [{"name": "last_hidden_state", "dtype": "float32", "shape": ["batch", "sequence", 8]}],
        "artifacts": [{"name": "a", "format": "onnx", "precision": "int8", "files": [entry], "metrics": {},
                       "golden": {"path": "g.npz", "sha256": file_sha256(root / "g.npz"), "bytes": 1}}],
    }


def test_missing_manifest_is_explained(tmp_path):
    with pytest.raises(ManifestError, match="did not finish"):
        read_manifest(tmp_path)


def test_paths_must_stay_inside(tmp_path):
    with pytest.raises(ManifestError, match="outside"):
        resolve(tmp_path, "../etc/passwd")
    with pytest.raises(ManifestError, match="relative"):
        resolve(tmp_path, "/etc/passwd")
    manifest = _minimal(tmp_path)
    manifest["artifacts"][0]["files"][0]["path"] = "../../x.onnx"
    _write(tmp_path, manifest)
    with pytest.raises(ManifestError, match="outside"):
        read_manifest(tmp_path)


def test_schema_version_mismatch(tmp_path):
    manifest = _minimal(tmp_path)
    manifest["schema_version"] = 99
    _write(tmp_path, manifest)
    with pytest.raises(ManifestError, match="schema_version 99"):
        read_manifest(tmp_path)


def test_unknown_precision_and_duplicates(tmp_path):
    manifest = _minimal(tmp_path)
    manifest["artifacts"].append(dict(manifest["artifacts"][0]))
    _write(tmp_path, manifest)
    with pytest.raises(ManifestError, match="duplicate"):
        read_manifest(tmp_path)
    manifest["artifacts"] = [dict(manifest["artifacts"][0], precision="int3")]
    _write(tmp_path, manifest)
    with pytest.raises(ManifestError, match="int3"):
        read_manifest(tmp_path)


def test_verify_files_reports_every_problem(tmp_path):
    manifest = _minimal(tmp_path)
    _write(tmp_path, manifest)
    files = read_manifest(tmp_path)["artifacts"][0]["files"]
    verify_files(tmp_path, files)  # intact
    (tmp_path / "m.onnx").write_bytes(b"abd")  # same size, other bytes
    with pytest.raises(ArtifactError, match="sha256"):
        verify_files(tmp_path, files)
    (tmp_path / "m.onnx").unlink()
    with pytest.raises(ArtifactError, match="missing"):
        verify_files(tmp_path, files)
