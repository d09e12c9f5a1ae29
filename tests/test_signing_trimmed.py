"""What `edge-sign sign` accepts (review 3, F2 and F7): a device copy trimmed to whole artifacts
is signed exactly when an unsigned load would take it, and loads with trusted_keys; a partly
missing artifact is still refused; the signing key inside the directory, another private key,
and files manifest.json does not list are refused, each named (the last signed with
--include-extra)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import tiny_artifact
from click.testing import CliRunner

import edge_runtime
from converters import ConversionError, cli_sign
from converters.packaging import signing
from edge_runtime._manifest import file_sha256
from edge_runtime._signing import verify_directory


def _two_artifacts(root: Path) -> Path:
    """tiny_artifact's onnx-fp32 plus onnx-b: the same graph in one file (weights inside)."""
    manifest = tiny_artifact.build(root)
    onnx.save(onnx.load(root / "onnx-fp32.onnx"), root / "onnx-b.onnx")
    shutil.copy(root / "golden" / "onnx-fp32.npz", root / "golden" / "onnx-b.npz")
    second = json.loads(json.dumps(manifest["artifacts"][0]))
    second["name"] = "onnx-b"
    second["files"] = [{"path": "onnx-b.onnx", "sha256": file_sha256(root / "onnx-b.onnx"),
                        "bytes": (root / "onnx-b.onnx").stat().st_size}]
    second["golden"]["path"] = "golden/onnx-b.npz"
    manifest["artifacts"].append(second)
    (root / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return root


@pytest.fixture
def keys(tmp_path) -> tuple[Path, Path]:
    return signing.generate_key_pair(tmp_path / "keys" / "key.pem", tmp_path / "keys" / "key.pub")


def _sign(root: Path, key: Path, *flags: str):
    return CliRunner().invoke(cli_sign.main, ["sign", str(root), "--key", str(key), *flags])


def _drop_fp32(root: Path) -> None:
    for name in ("onnx-fp32.onnx", "onnx-fp32.onnx.data", "golden/onnx-fp32.npz"):
        (root / name).unlink()


def test_a_copy_trimmed_to_whole_artifacts_is_signed_and_loads_with_trusted_keys(tmp_path, keys):
    private, public = keys
    root = _two_artifacts(tmp_path / "device-copy")
    _drop_fp32(root)
    done = _sign(root, private)
    assert done.exit_code == 0, done.output
    assert "left out of the signature (loads skip them): onnx-fp32" in done.output
    assert verify_directory(root, [public]).files == 3  # manifest.json, onnx-b.onnx, its golden
    model = edge_runtime.load(root, trusted_keys=[public], threads=1, device_cache=False)
    assert model.name == "onnx-b"
    out = model.run({"input_ids": tiny_artifact.IDS})["last_hidden_state"]
    assert np.array_equal(out, tiny_artifact.outputs(tiny_artifact.IDS))


def test_the_trimmed_copy_is_what_an_unsigned_load_takes(tmp_path, keys):
    """The same rule on both sides: an unsigned load of the trimmed copy skips onnx-fp32."""
    root = _two_artifacts(tmp_path / "copy")
    _drop_fp32(root)
    assert edge_runtime.load(root, threads=1, device_cache=False).name == "onnx-b"
    assert signing.check_before_signing(root).absent == ["onnx-fp32"]


@pytest.mark.parametrize(
    "remove, message",
    [
        (["onnx-fp32.onnx.data"], r"onnx-fp32\.onnx\.data: missing \(manifest expects"),
        (["golden/onnx-fp32.npz"], r"golden/onnx-fp32\.npz: missing \(manifest expects"),
        (["onnx-fp32.onnx", "onnx-fp32.onnx.data"],
         r"artifact 'onnx-fp32' has none of its model files here but its golden sample "
         r"golden/onnx-fp32\.npz is"),
        (["onnx-fp32.onnx", "onnx-fp32.onnx.data", "golden/onnx-fp32.npz", "onnx-b.onnx",
          "golden/onnx-b.npz"], r"none of the artifacts its manifest lists is here"),
    ],
    ids=["model file", "golden sample", "golden left behind", "everything"],
)
def test_a_partly_missing_artifact_is_still_refused(tmp_path, keys, remove, message):
    root = _two_artifacts(tmp_path / "copy")
    for name in remove:
        (root / name).unlink()
    with pytest.raises(ConversionError, match=message):
        signing.check_before_signing(root)
    done = _sign(root, keys[0])
    assert done.exit_code == 1 and "not signing" in done.output, done.output
    assert not (root / "model.sig").exists()


def test_the_signing_key_inside_the_directory_is_refused(tmp_path):
    root = _two_artifacts(tmp_path / "out")
    private, _ = signing.generate_key_pair(root / "key.pem", tmp_path / "key.pub")
    done = _sign(root, private)
    assert done.exit_code == 2, done.output
    assert "Invalid value for --key" in done.output and "lies inside" in done.output
    assert "shipped to every device" in done.output
    assert not (root / "model.sig").exists()


def test_files_the_manifest_does_not_list_are_named_and_refused_unless_asked(tmp_path, keys):
    private, public = keys
    root = _two_artifacts(tmp_path / "out")
    (root / "notes.txt").write_text("bench run 3")
    (root / "golden" / "old.npz~").write_bytes(b"backup")
    done = _sign(root, private)
    assert done.exit_code == 1, done.output
    assert "manifest.json does not list golden/old.npz~, notes.txt" in done.output
    assert "--include-extra" in done.output and not (root / "model.sig").exists()
    done = _sign(root, private, "--include-extra")
    assert done.exit_code == 0, done.output
    assert "not listed in manifest.json: golden/old.npz~, notes.txt" in done.output
    assert verify_directory(root, [public]).files == 8


@pytest.mark.parametrize("flags", [[], ["--include-extra"]], ids=["plain", "include-extra"])
def test_a_private_key_in_the_directory_is_refused_even_with_include_extra(tmp_path, keys, flags):
    root = _two_artifacts(tmp_path / "out")
    signing.generate_key_pair(root / "backup.pem", tmp_path / "backup.pub")
    done = _sign(root, keys[0], *flags)
    assert done.exit_code == 1 and "backup.pem is a private key" in done.output, done.output
    assert not (root / "model.sig").exists()
