"""model.sig files that are not a bundle at all: each is a SignatureError saying what is wrong,
never another exception and never "not signed" (test_signing.py covers bundles that parse)."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

import edge_runtime
from edge_runtime import SignatureError
from edge_runtime._signing import verify_directory


@pytest.fixture(scope="module")
def public_pem() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def test_a_deeply_nested_signature_file_is_a_signature_error(tmp_path, public_pem):
    (tmp_path / "manifest.json").write_text("{}")
    (tmp_path / "model.sig").write_text("[" * 100_000 + "]" * 100_000)  # RecursionError in json
    with pytest.raises(SignatureError, match="is not a JSON Sigstore bundle: JSON nested too deeply"):
        edge_runtime.load(tmp_path, trusted_keys=[public_pem])


def test_a_signature_that_is_a_directory_is_named_so(tmp_path, public_pem):
    (tmp_path / "model.sig").mkdir()
    with pytest.raises(SignatureError, match=r"model.sig is a directory; the signature must be a file") as caught:
        verify_directory(Path(tmp_path), [public_pem])
    assert "not signed" not in str(caught.value)
