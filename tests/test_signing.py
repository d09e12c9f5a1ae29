"""Signed artifact directories (issue 10): edge-convert --sign-key writes model.sig in the OpenSSF
model-signing format; the real model_signing package accepts it, edge_runtime accepts
model_signing's own signatures, and edge_runtime.load(..., trusted_keys=[...]) refuses unsigned,
re-signed and modified directories.

The fast tests use the model-signing of the test extra (1.0.x: 1.1.x cannot be installed beside
litert-torch, see setup.cfg); a slow test installs 1.1.x into a venv of its own and checks both
directions there, and across the two versions."""

from __future__ import annotations

import base64
import importlib.metadata
import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import edge_runtime
from converters import ConversionError, ConvertConfig, cli_sign, convert
from converters import cli as convert_cli
from converters.packaging import signing
from edge_runtime import SignatureError
from edge_runtime import cli as run_cli
from edge_runtime._signing import key_hint, verify_directory

ROOT = Path(__file__).resolve().parents[1]
MODEL_SIGNING = Path(sys.executable).parent / "model_signing"
# The model-signing the test extra installs; a failing pin shows here first.
MS_VERSION = importlib.metadata.version("model-signing")


def test_test_extra_installs_model_signing_1_0():
    assert re.match(r"1\.0\.\d+$", MS_VERSION), MS_VERSION


def _keys(directory: Path, name: str = "key") -> tuple[Path, Path]:
    return signing.generate_key_pair(directory / f"{name}.pem", directory / f"{name}.pub")


def _manifest_over(root: Path) -> dict:
    """A manifest edge_runtime reads, listing _tree's files with their real sizes and hashes."""
    from edge_runtime._manifest import file_sha256

    def entry(name: str) -> dict:
        return {"path": name, "sha256": file_sha256(root / name), "bytes": (root / name).stat().st_size}

    golden = {**entry("golden/a.npz"), "tolerance": {"cosine_min": 0.999, "rel_l2_max": 0.01}}
    return {
        "schema_version": 1, "target": {"id": "x86-avx2"}, "source": {"name": "tiny"}, "task": "feature-extraction",
        "inputs": [{"name": "input_ids", "dtype": "int64", "shape": ["batch", "sequence"]}],
        "outputs": [{"name": "last_hidden_state", "dtype": "float32", "shape": ["batch", "sequence", 8]}],
        "tokenizer": {"files": [entry("tokenizer/tokenizer.json")], "max_length": 16, "pad_token_id": 0},
        "postprocess": {"pooling": "mean", "normalize": True, "output": "last_hidden_state"},
        "runtime": {"threads": {"intra_op": 0, "inter_op": 1}, "artifact_preference": ["int8"],
                    "backends": [{"name": "onnxruntime", "execution_providers": ["CPUExecutionProvider"]}]},
        "artifacts": [{"name": "a", "format": "onnx", "precision": "int8", "metrics": {"cosine_mean": 0.99},
                       "files": [entry("model.onnx")], "golden": golden}],
    }


def _tree(root: Path, git: bool = False) -> Path:
    """A small directory shaped like an artifact: nested files, a dotfile; git metadata if `git`
    (which model_signing 1.0.x and 1.1.x treat differently)."""
    (root / "golden").mkdir(parents=True)
    (root / "tokenizer").mkdir()
    (root / "model.onnx").write_bytes(bytes(range(256)) * 40)
    (root / "golden" / "a.npz").write_bytes(b"\x00golden")
    (root / "tokenizer" / "tokenizer.json").write_text("{}")
    (root / ".hidden").write_text("dotfiles are covered too")
    (root / "manifest.json").write_text(json.dumps(_manifest_over(root)) + "\n")  # what edge-sign checks
    if git:
        (root / ".git").mkdir()
        (root / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    return root


# model_signing's own key signer, as its `sign key` runs it (hashing.Config().hash, Payload,
# sign_ec_key.Signer, Signature.write), in a subprocess of a given venv's python. Driven below
# the public signing.Config because 1.0.x's Config() sets up a Sigstore signer in its
# constructor, which fetches Sigstore's TUF root over the network: 1.0.x's `sign key` and
# signing.Config fail offline (1.1.x defers it; the slow test runs 1.1.x's real CLI).
_MS_SIGN = """
import pathlib, sys
from model_signing import hashing
from model_signing._signing import sign_ec_key, signing
model, key, sig, *ignore = map(pathlib.Path, sys.argv[1:])
manifest = hashing.Config().set_ignored_paths(paths=[sig, *ignore]).hash(model)
sign_ec_key.Signer(key).sign(signing.Payload(manifest)).write(sig)
"""


def _model_signing_sign(root: Path, private: Path, *ignore: Path, python: str = sys.executable):
    """Sign `root` into root/model.sig with model_signing's EC-key signer, offline."""
    command = [python, "-c", _MS_SIGN, str(root), str(private), str(root / "model.sig")]
    done = subprocess.run([*command, *map(str, ignore)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def _model_signing_verify(root: Path, public: Path) -> None:
    """model_signing's API verifier on root/model.sig; raises ValueError on a mismatch.

    The hashing config is explicit because 1.0.x's verifier reads no ignore list from the
    signature and would hash model.sig itself (1.1.x's guess skips it: the slow test)."""
    import model_signing

    sig = root / "model.sig"
    hashing = model_signing.hashing.Config().set_ignored_paths(paths=[sig])
    verifier = model_signing.verifying.Config().use_elliptic_key_verifier(public_key=public)
    verifier.set_hashing_config(hashing).verify(root, sig)


@pytest.fixture
def signed(tmp_path):
    """(directory signed by us, private key, public key)."""
    private, public = _keys(tmp_path)
    root = _tree(tmp_path / "model")
    signing.sign_directory(root, signing.load_signing_key(private))
    return root, private, public


def _statement(root: Path) -> dict:
    bundle = json.loads((root / "model.sig").read_text())
    return json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))


# --- the format, checked against the real model_signing package --------------------------------


def test_statement_lists_every_file_but_the_signature(signed):
    root, _, _ = signed
    statement = _statement(root)
    names = [r["name"] for r in statement["predicate"]["resources"]]
    assert names == [
        ".hidden",
        "golden/a.npz",
        "manifest.json",
        "model.onnx",
        "tokenizer/tokenizer.json",
    ]
    assert statement["predicateType"] == "https://model_signing/signature/v1.0"
    assert statement["subject"][0]["name"] == "model"
    assert statement["predicate"]["serialization"] == {
        "method": "files",
        "hash_type": "sha256",
        "allow_symlinks": False,
        "ignore_paths": [".git", ".gitattributes", ".github", ".gitignore", "model.sig"],
    }


def test_model_signing_api_accepts_our_signature(signed):
    root, _, public = signed
    _model_signing_verify(root, public)  # raises on any mismatch
    (root / "model.onnx").write_bytes(b"changed")
    with pytest.raises(ValueError, match="Signature mismatch"):
        _model_signing_verify(root, public)


def _offline(command: list[str]) -> list[str]:
    """`command` in a fresh network namespace (no interface but loopback), proving no service
    is contacted; skipped with the reason where user namespaces are not allowed."""
    probe = subprocess.run(["unshare", "-rn", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot cut the network off (unshare -rn: {probe.stderr.strip()})")
    return ["unshare", "-rn", *command]


def _cli_verify(
    model_signing: Path, root: Path, public: Path, cwd: Path | None = None
) -> subprocess.CompletedProcess:
    """`model_signing verify key` on root/model.sig, offline. With `cwd`, the directory and the
    signature are given relative to it (1.0.x skips the signature file only when --signature is
    spelled with the directory's own prefix)."""
    where = (lambda p: os.path.relpath(p, cwd)) if cwd else str
    command = [str(model_signing), "verify", "key", where(root)]
    command += ["--signature", where(root / "model.sig"), "--public_key", str(public)]
    return subprocess.run(_offline(command), capture_output=True, text=True, cwd=cwd)


def test_model_signing_cli_verifies_ours_offline(signed):
    root, _, public = signed
    for cwd in (None, root.parent, root):  # absolute, relative, and "." (see _cli_verify)
        done = _cli_verify(MODEL_SIGNING, root, public, cwd)
        assert done.returncode == 0 and "Verification succeeded" in done.stdout, (cwd, done.stderr)
    (root / "golden" / "a.npz").write_bytes(b"changed")
    done = _cli_verify(MODEL_SIGNING, root, public)
    assert done.returncode == 1 and "Signature mismatch" in done.stderr, done.stderr


def test_model_signing_signature_verified_by_edge_runtime(tmp_path):
    """1.0.x's bundle names its key by rawBytes (the PEM) and writes keyid null: accepted."""
    private, public = _keys(tmp_path)
    root = _tree(tmp_path / "model")
    _model_signing_sign(root, private)
    bundle = json.loads((root / "model.sig").read_text())
    assert bundle["dsseEnvelope"]["signatures"][0]["keyid"] is None
    raw = base64.b64decode(bundle["verificationMaterial"]["publicKey"]["rawBytes"])
    assert raw == public.read_bytes()
    result = verify_directory(root, [public])
    assert result.files == 5 and result.key == str(public)
    (root / "tokenizer" / "tokenizer.json").write_text('{"x": 1}')
    with pytest.raises(SignatureError, match=r"tokenizer/tokenizer.json: modified"):
        verify_directory(root, [public])


def test_key_named_by_model_signing_1_0_bundle_is_checked(tmp_path):
    """1.0.x's rawBytes is unsigned: a bundle naming another key than the one whose signature
    verifies was edited, and an unverifiable one names its signer by that key's hint."""
    private, public = _keys(tmp_path)
    _, other_public = _keys(tmp_path, "other")
    root = _tree(tmp_path / "model")
    _model_signing_sign(root, private)
    signer_hint = key_hint(signing.load_signing_key(private).public_key())
    with pytest.raises(SignatureError, match=rf"The bundle names key hint {signer_hint[:16]}… as"):
        verify_directory(root, [other_public])

    def swap(bundle):
        material = bundle["verificationMaterial"]["publicKey"]
        material["rawBytes"] = base64.b64encode(other_public.read_bytes()).decode()

    _edit_bundle(root, swap)
    with pytest.raises(SignatureError, match=r"publicKey.rawBytes is another key \(hint"):
        verify_directory(root, [public])
    _edit_bundle(root, lambda b: b["verificationMaterial"]["publicKey"].update(rawBytes="AAAA"))
    with pytest.raises(SignatureError, match=r"rawBytes is not a PEM public key"):
        verify_directory(root, [public])


def test_a_file_the_signer_left_out_is_refused(tmp_path):
    """model_signing may sign with --ignore-paths and then accepts the unsigned file; we never
    trust an unsigned byte of an artifact."""
    private, public = _keys(tmp_path)
    root = _tree(tmp_path / "model")
    _model_signing_sign(root, private, root / "model.onnx")
    assert "model.onnx" not in [r["name"] for r in _statement(root)["predicate"]["resources"]]
    with pytest.raises(SignatureError, match=r"model.onnx: added \(not covered by the signature\)"):
        verify_directory(root, [public])


def test_git_metadata_is_refused_when_signing(tmp_path):
    """No statement over a directory with root-level git metadata verifies with both 1.0.x and
    1.1.x (the slow test shows both sides of that), so we do not write one."""
    private, _ = _keys(tmp_path)
    root = _tree(tmp_path / "model", git=True)
    (root / ".gitignore").write_text("*.tmp\n")
    with pytest.raises(
        ConversionError, match=r"holds git metadata at its root \(\.git, \.gitignore\)"
    ):
        signing.sign_directory(root, signing.load_signing_key(private))
    assert not (root / "model.sig").exists()
    done = CliRunner().invoke(cli_sign.main, ["sign", str(root), "--key", str(private)])
    assert done.exit_code == 1 and "holds git metadata" in done.output, done.output


def test_git_metadata_on_the_device(signed, tmp_path):
    """Unsigned root-level git metadata is never read by edge_runtime, so it may appear after
    signing; git metadata a 1.0.x signer did cover (directory given by a path other than ".")
    is checked like any other file."""
    root, _, public = signed
    (root / ".git").mkdir()
    (root / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    assert verify_directory(root, [public]).files == 5

    private, public = _keys(tmp_path, "k10")
    other = _tree(tmp_path / "by-1.0", git=True)
    _model_signing_sign(other, private)
    names = [r["name"] for r in _statement(other)["predicate"]["resources"]]
    assert ".git/HEAD" in names  # what 1.0.x does for an absolute model path
    assert verify_directory(other, [public]).files == 6
    (other / ".git" / "HEAD").write_text("ref: refs/heads/evil\n")
    with pytest.raises(SignatureError, match=r"\.git/HEAD: modified"):
        verify_directory(other, [public])


def test_signature_is_deterministic(signed):
    root, private, public = signed
    first = (root / "model.sig").read_bytes()
    signing.sign_directory(root, signing.load_signing_key(private))  # replaces model.sig
    assert (root / "model.sig").read_bytes() == first
    assert verify_directory(root, [public]).files == 5


# --- refusals ---------------------------------------------------------------------------------


def test_unsigned_directory_is_refused(tmp_path):
    _, public = _keys(tmp_path)
    root = _tree(tmp_path / "model")
    with pytest.raises(SignatureError, match=r"is not signed \(no model.sig\)"):
        verify_directory(root, [public])


def test_signature_by_another_key_is_refused(signed, tmp_path):
    root, _, public = signed
    mallory_private, mallory_public = _keys(tmp_path, "mallory")
    signing.sign_directory(root, signing.load_signing_key(mallory_private))  # re-signed
    with pytest.raises(SignatureError, match=rf"no trusted key verifies.*checked against {public}"):
        verify_directory(root, [public])
    # Trusting several keys: any one of them suffices.
    assert verify_directory(root, [public, mallory_public.read_bytes()]).key == "trusted_keys[1]"


@pytest.mark.parametrize(
    "change, message",
    [
        (
            lambda r: (r / "model.onnx").write_bytes(b"\x01" + (r / "model.onnx").read_bytes()[1:]),
            r"model.onnx: modified",
        ),
        (lambda r: (r / "golden" / "b.npz").write_bytes(b"new"), r"golden/b.npz: added"),
        (
            lambda r: (r / "tokenizer" / "tokenizer.json").unlink(),
            r"tokenizer/tokenizer.json: removed",
        ),
        (lambda r: (r / ".hidden").unlink(), r"\.hidden: removed"),
    ],
    ids=["modified", "added", "removed", "removed-dotfile"],
)
def test_changed_directory_is_refused(signed, change, message):
    root, _, public = signed
    change(root)
    with pytest.raises(SignatureError, match=message):
        verify_directory(root, [public])


def test_every_change_is_named(signed):
    root, _, public = signed
    (root / "manifest.json").write_text("{}")
    (root / "extra.bin").write_bytes(b"x")
    (root / "golden" / "a.npz").unlink()
    with pytest.raises(SignatureError) as caught:
        verify_directory(root, [public])
    lines = str(caught.value).splitlines()[1:-1]  # the last line says what to do
    assert str(caught.value).splitlines()[-1].startswith("Restore it from the signed original")
    assert [line.strip() for line in lines] == [  # added files last: they must hide nothing
        "golden/a.npz: removed (the signature lists it)",
        "manifest.json: modified (sha256 differs from the signed one)",
        "extra.bin: added (not covered by the signature)",
    ]


def _edit_bundle(root: Path, edit) -> None:
    bundle = json.loads((root / "model.sig").read_text())
    edit(bundle)
    (root / "model.sig").write_text(json.dumps(bundle))


def _swap_digest(bundle: dict) -> None:
    """An attacker's edit: the statement re-pointed at other bytes, the signature kept."""
    envelope = bundle["dsseEnvelope"]
    statement = json.loads(base64.b64decode(envelope["payload"]))
    statement["predicate"]["resources"][0]["digest"] = "0" * 64
    envelope["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()


@pytest.mark.parametrize(
    "edit, message",
    [
        # made by the trusted key (the bundle names it), no longer verifying: a damaged model.sig,
        # not "another key"
        (_swap_digest, "the signature by .* \\(the key this bundle names\\) does not verify: model.sig was corrupted"),
        (
            lambda b: b["dsseEnvelope"]["signatures"][0].update(
                sig=base64.b64encode(b"0" * 70).decode()
            ),
            "does not verify: model.sig was corrupted or edited",
        ),
        (
            lambda b: b["verificationMaterial"]["publicKey"].update(hint="ab" * 32),
            "hint abababababababab… is not the hint of",
        ),
        (lambda b: b.update(mediaType="application/json"), "mediaType 'application/json'"),
        (lambda b: b["dsseEnvelope"].update(payloadType="text/plain"), "payloadType 'text/plain'"),
    ],
    ids=["payload", "signature", "hint", "media-type", "payload-type"],
)
def test_tampered_signature_file_is_refused(signed, edit, message):
    root, _, public = signed
    _edit_bundle(root, edit)
    with pytest.raises(SignatureError, match=message):
        verify_directory(root, [public])


def test_unreadable_signature_file_is_refused(signed):
    root, _, public = signed
    (root / "model.sig").write_text("not json")
    with pytest.raises(SignatureError, match="is not a JSON Sigstore bundle"):
        verify_directory(root, [public])


def test_symlink_in_directory_is_refused(signed, tmp_path):
    root, _, public = signed
    (tmp_path / "outside.bin").write_bytes(b"x")
    os.symlink(tmp_path / "outside.bin", root / "link.bin")
    with pytest.raises(SignatureError, match="link.bin is a symbolic link"):
        verify_directory(root, [public])


def test_bad_trusted_keys_are_clear_errors(signed, tmp_path):
    root, private, public = signed
    with pytest.raises(SignatureError, match="trusted_keys is empty"):
        verify_directory(root, [])
    with pytest.raises(SignatureError, match="must be a list of keys"):
        verify_directory(root, str(public))
    with pytest.raises(SignatureError, match=rf"trusted key {private} is not a PEM public key"):
        verify_directory(root, [private])
    with pytest.raises(SignatureError, match="cannot be read"):
        verify_directory(root, [tmp_path / "missing.pub"])


def test_a_trusted_key_may_be_given_as_its_pem_text(signed):
    """A path, the PEM bytes or the PEM text as a str (it was read as a path: "cannot be read")."""
    root, private, public = signed
    for key in (public, public.read_bytes(), public.read_text(), "\n" + public.read_text()):
        assert verify_directory(root, [key]).files > 0
    with pytest.raises(SignatureError, match=r"trusted_keys\[0\] is not a PEM public key"):
        verify_directory(root, [private.read_text()])


def test_bad_signing_keys_are_clear_errors(tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    _, public = _keys(tmp_path)
    with pytest.raises(
        signing.SigningKeyError,
        match=r"sign_key=.*key.pub: not a PEM private key \(this is a public key",
    ):
        signing.load_signing_key(public)
    with pytest.raises(signing.SigningKeyError, match="cannot be read"):
        signing.load_signing_key(tmp_path / "missing.pem")
    rsa_key = tmp_path / "rsa.pem"
    rsa_key.write_bytes(
        rsa.generate_private_key(65537, 2048).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(
        signing.SigningKeyError, match="an RSA key; model signing uses elliptic-curve keys .*edge-sign keygen"
    ):
        signing.load_signing_key(rsa_key)
    encrypted = tmp_path / "encrypted.pem"
    encrypted.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    with pytest.raises(signing.SigningKeyError, match="password-protected"):
        signing.load_signing_key(encrypted)
    k1 = tmp_path / "k1.pem"
    k1.write_bytes(
        ec.generate_private_key(ec.SECP256K1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(signing.SigningKeyError, match="curve secp256k1 is not supported"):
        signing.load_signing_key(k1)


def test_edge_convert_names_its_flag_for_a_bad_key(tmp_path):
    """The key is read before the conversion starts, and the CLI says --sign-key."""
    done = CliRunner().invoke(
        convert_cli.main,
        [
            "--target",
            "x86-avx2",
            "--out",
            str(tmp_path / "o"),
            "--sign-key",
            str(tmp_path / "missing.pem"),
            "-q",
        ],
    )
    assert done.exit_code == 1, done.output  # a value refused (the epilog's 1), like a missing --calibration file
    assert "Error: --sign-key: cannot be read" in done.output
    assert not (tmp_path / "o").exists()


# --- keys -------------------------------------------------------------------------------------


def test_keygen_round_trip(tmp_path):
    done = CliRunner().invoke(
        cli_sign.main, ["keygen", str(tmp_path / "k.pem"), str(tmp_path / "k.pub")]
    )
    assert done.exit_code == 0, done.output
    assert stat.S_IMODE((tmp_path / "k.pem").stat().st_mode) == 0o600
    assert (tmp_path / "k.pub").read_text().startswith("-----BEGIN PUBLIC KEY-----")
    root = _tree(tmp_path / "model")  # its .hidden is a file the manifest does not list
    done = CliRunner().invoke(
        cli_sign.main, ["sign", str(root), "--key", str(tmp_path / "k.pem"), "--include-extra"]
    )
    assert done.exit_code == 0, done.output
    assert "also signed (--include-extra), not listed in manifest.json: .hidden" in done.output
    assert verify_directory(root, [tmp_path / "k.pub"]).files == 5
    again = CliRunner().invoke(
        cli_sign.main, ["keygen", str(tmp_path / "k.pem"), str(tmp_path / "k.pub")]
    )
    assert again.exit_code == 2 and "already exists (--force replaces it)" in again.output
    with pytest.raises(signing.SigningKeyError, match="already exists; pass overwrite=True"):
        signing.generate_key_pair(tmp_path / "k.pem", tmp_path / "other.pub")
    # --force makes a new pair: the old public key no longer verifies a new signature.
    assert (
        CliRunner()
        .invoke(
            cli_sign.main, ["keygen", "--force", str(tmp_path / "k.pem"), str(tmp_path / "k2.pub")]
        )
        .exit_code
        == 0
    )
    shutil.copy(tmp_path / "k.pub", tmp_path / "old.pub")
    signing.sign_directory(root, signing.load_signing_key(tmp_path / "k.pem"))
    with pytest.raises(SignatureError, match="no trusted key verifies"):
        verify_directory(root, [tmp_path / "old.pub"])


# --- device side: lean, and a clear error without cryptography ---------------------------------


def _fresh_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)


def test_verification_imports_no_signing_framework(signed):
    root, _, public = signed
    done = _fresh_python(
        "import sys\n"
        "import edge_runtime\n"
        "before = 'cryptography' in sys.modules\n"
        "from edge_runtime._signing import verify_directory\n"
        f"verify_directory(__import__('pathlib').Path({str(root)!r}), [{str(public)!r}])\n"
        "names = ('model_signing', 'sigstore', 'sigstore_models', 'in_toto_attestation',"
        " 'OpenSSL', 'torch', 'onnx')\n"
        "heavy = sorted(m for m in names if m in sys.modules)\n"
        "print(before, heavy)\n"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False []"


def test_missing_cryptography_is_a_clear_error(signed):
    root, _, public = signed
    done = _fresh_python(
        "import sys\n"
        "sys.modules['cryptography'] = None  # as if not installed\n"
        "import edge_runtime\n"
        "try:\n"
        f"    edge_runtime.load({str(root)!r}, trusted_keys=[{str(public)!r}])\n"
        "except edge_runtime.SignatureError as exc:\n"
        "    print(exc)\n"
    )
    assert done.returncode == 0, done.stderr
    assert "pip install cryptography (the device wheel's [verify] extra)" in done.stdout


def test_device_wheel_has_a_verify_extra(tmp_path):
    import zipfile

    sys.path.insert(0, str(ROOT / "tools"))
    import build_runtime_wheel

    wheel = build_runtime_wheel.build(tmp_path)
    metadata = next(
        zipfile.ZipFile(wheel).read(n).decode()
        for n in zipfile.ZipFile(wheel).namelist()
        if n.endswith("/METADATA")
    )
    assert "Provides-Extra: verify" in metadata
    assert any(
        line.startswith("Requires-Dist: cryptography") and 'extra == "verify"' in line
        for line in metadata.splitlines()
    )


# --- end to end: a converted model ------------------------------------------------------------


@pytest.fixture(scope="module")
def converted(tiny_model_factory, tmp_path_factory):
    """A tiny model converted with --sign-key, plus its keys."""
    base = tmp_path_factory.mktemp("signed-convert")
    private, public = _keys(base)
    out = base / "artifacts"
    convert(
        ConvertConfig(
            model=tiny_model_factory("bert", "feature-extraction"),
            target="x86-avx2",
            out=out,
            latency_runs=2,
            sign_key=private,
        )
    )
    return out, private, public


@pytest.mark.slow  # a real conversion (~50 s on a shared 2-core EPYC)
def test_converted_directory_is_signed_and_loads(converted, tmp_path):
    out, _, public = converted
    _model_signing_verify(out, public)
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    signed = [r["name"] for r in _statement(out)["predicate"]["resources"]]
    assert sorted(signed) == [f for f in files if f != "model.sig"]
    assert "manifest.json" in signed and _statement(out)["subject"][0]["name"] == "artifacts"

    texts = ["signed artifacts load", "and compute the same numbers"]
    plain = edge_runtime.load(out, weight_cache=False).embed(texts)
    trusted = edge_runtime.load(out, weight_cache=False, trusted_keys=[public]).embed(texts)
    np.testing.assert_array_equal(plain, trusted)

    assert run_cli.main([str(out), "hello", "--json", "--trusted-key", str(public)]) == 0


@pytest.mark.slow  # a real conversion (~50 s on a shared 2-core EPYC)
def test_converted_directory_checked_before_anything_is_read(converted, tmp_path, capsys):
    out, _, public = converted
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    (copy / "manifest.json").write_text("{ broken")  # would be a ManifestError unsigned
    with pytest.raises(SignatureError, match="manifest.json: modified"):
        edge_runtime.load(copy, trusted_keys=[public])
    with pytest.raises(edge_runtime.ManifestError):
        edge_runtime.load(copy)

    shutil.rmtree(copy)
    shutil.copytree(out, copy)
    (copy / "model.sig").unlink()
    with pytest.raises(SignatureError, match="is not signed"):
        edge_runtime.load(copy, trusted_keys=[public])
    assert run_cli.main([str(copy), "hello", "--trusted-key", str(public)]) == 1
    assert "or load with no --trusted-key to accept unsigned" in capsys.readouterr().err


@pytest.mark.slow  # a fresh venv and a pip install
def test_device_wheel_verifies_with_cryptography_only(converted, tmp_path):
    """The device wheel with [onnx,verify], in a clean venv: edge-run checks model.sig with no
    model_signing, sigstore or pyOpenSSL installed."""
    import venv

    sys.path.insert(0, str(ROOT / "tools"))
    import build_runtime_wheel

    out, _, public = converted
    wheel = build_runtime_wheel.build(tmp_path / "dist")
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", f"{wheel}[onnx,verify]"], check=True)
    listed = subprocess.run(
        [str(python), "-m", "pip", "list", "--format=json"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    names = {p["name"].lower() for p in json.loads(listed)}
    assert "cryptography" in names
    assert not names & {"model-signing", "sigstore", "pyopenssl", "torch", "onnx"}, names

    edge_run = str(env_dir / "bin" / "edge-run")
    done = subprocess.run(
        [edge_run, str(out), "hello", "--json", "--trusted-key", str(public)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["artifact"] == "onnx-int8"
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    (copy / "tokenizer" / "tokenizer.json").write_text("{}")
    done = subprocess.run(
        [edge_run, str(copy), "hello", "--trusted-key", str(public)], capture_output=True, text=True
    )
    assert done.returncode == 1
    assert "tokenizer/tokenizer.json: modified" in done.stderr


# --- model-signing 1.1.x, in a venv of its own --------------------------------------------------

# pip's messages when it cannot reach the index: the one reason to skip the 1.1.x tests.
_NO_NETWORK = re.compile(
    r"NewConnectionError|NameResolutionError|Temporary failure in name resolution|"
    r"Name or service not known|Network is unreachable|ConnectTimeout|ReadTimeout|ProxyError"
)

_MS_API_VERIFY = """
import pathlib, sys, model_signing
root, public = map(pathlib.Path, sys.argv[1:])
try:
    model_signing.verifying.Config().use_elliptic_key_verifier(public_key=public).verify(
        root, root / "model.sig"
    )
except ValueError as exc:
    sys.exit(f"refused: {exc}")
print("verified")
"""


@pytest.fixture(scope="module")
def model_signing_11(tmp_path_factory) -> Path:
    """bin/ of a venv with model-signing 1.1.x from PyPI (plus pyOpenSSL, which it imports
    without declaring). 1.1.x cannot join the test extra (setup.cfg says why), so it gets a venv
    of its own; skipped, with the reason printed, only when pip cannot reach the index."""
    import venv

    env_dir = tmp_path_factory.mktemp("model-signing-1.1") / "venv"
    venv.create(env_dir, with_pip=True)
    python = str(env_dir / "bin" / "python")
    done = subprocess.run(
        [python, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        + ["model-signing>=1.1,<1.2", "pyopenssl"],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        output = done.stdout + done.stderr
        found = _NO_NETWORK.search(output)
        # Offline, pip retries with connection errors, then finds no version at all; a
        # connection hiccup before a real failure (a conflict, a build error) is no skip.
        if found and "No matching distribution found" in output:
            reason = f"cannot install model-signing 1.1.x, no network to the index ({found[0]})"
            print(reason)
            pytest.skip(reason)
        pytest.fail(f"pip install model-signing 1.1.x failed:\n{output[-3000:]}")
    version = subprocess.run(
        [python, "-c", "import importlib.metadata as m; print(m.version('model-signing'))"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    assert re.match(r"1\.1\.\d+$", version), version
    print(f"model-signing {version} in {env_dir}")
    return env_dir / "bin"


@pytest.mark.slow  # a venv and a pip install of model-signing 1.1.x (~1-2 min)
def test_model_signing_1_1_verifies_ours(model_signing_11, signed, tmp_path):
    root, _, public = signed
    ms11 = model_signing_11 / "model_signing"
    for cwd in (None, root.parent, root):
        done = _cli_verify(ms11, root, public, cwd)
        assert done.returncode == 0 and "Verification succeeded" in done.stdout, (cwd, done.stderr)
    # 1.1.x's API takes the hashing config from the statement: our ignore_paths skip model.sig.
    api = [str(model_signing_11 / "python"), "-c", _MS_API_VERIFY, str(root), str(public)]
    done = subprocess.run(_offline(api), capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "verified", done.stderr

    # 1.1.x checks the (unsigned) key hint, as edge_runtime does.
    copy = tmp_path / "hint-edited"
    shutil.copytree(root, copy)
    _edit_bundle(copy, lambda b: b["verificationMaterial"]["publicKey"].update(hint="ab" * 32))
    done = _cli_verify(ms11, copy, public)
    assert done.returncode == 1 and "Key mismatch" in done.stderr, done.stderr

    (root / "model.onnx").write_bytes(b"changed")
    done = _cli_verify(ms11, root, public)
    assert done.returncode == 1 and "Hash mismatch for 'model.onnx'" in done.stderr, done.stderr
    done = subprocess.run(_offline(api), capture_output=True, text=True)
    assert done.returncode == 1 and "Hash mismatch for 'model.onnx'" in done.stderr, done.stderr


@pytest.mark.slow  # a venv and a pip install of model-signing 1.1.x (~1-2 min)
def test_model_signing_1_1_cli_signature_verified_by_edge_runtime_and_1_0(
    model_signing_11, tmp_path
):
    """1.1.x's real `sign key`, offline: edge_runtime and 1.0.x's verifier accept it."""
    private, public = _keys(tmp_path)
    root = _tree(tmp_path / "model")
    sign = [str(model_signing_11 / "model_signing"), "sign", "key", str(root)]
    sign += ["--signature", str(root / "model.sig"), "--private_key", str(private)]
    done = subprocess.run(_offline(sign), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr

    bundle = json.loads((root / "model.sig").read_text())
    hint = key_hint(signing.load_signing_key(private).public_key())
    assert bundle["verificationMaterial"] == {"publicKey": {"hint": hint}, "tlogEntries": []}
    assert "model.sig" in _statement(root)["predicate"]["serialization"]["ignore_paths"]
    result = verify_directory(root, [public])
    assert result.files == 5 and result.key_hint == hint
    done = _cli_verify(MODEL_SIGNING, root, public)  # the test extra's 1.0.x
    assert done.returncode == 0 and "Verification succeeded" in done.stdout, done.stderr

    (root / ".hidden").unlink()
    with pytest.raises(SignatureError, match=r"\.hidden: removed"):
        verify_directory(root, [public])


@pytest.mark.slow  # a venv and a pip install of model-signing 1.1.x (~1-2 min)
def test_model_signing_1_1_verifies_1_0_signatures(model_signing_11, tmp_path):
    private, public = _keys(tmp_path)
    root = _tree(tmp_path / "model")
    _model_signing_sign(root, private)  # the test extra's 1.0.x: rawBytes, no ignore_paths
    done = _cli_verify(model_signing_11 / "model_signing", root, public)
    assert done.returncode == 0 and "Verification succeeded" in done.stdout, done.stderr
    assert "older verification material format" in done.stdout  # 1.1.x's warning, not an error


@pytest.mark.slow  # a venv and a pip install of model-signing 1.1.x (~1-2 min)
def test_git_metadata_splits_the_two_versions(model_signing_11, tmp_path):
    """Why edge-convert refuses to sign a directory with git metadata at its root: 1.0.x's
    signature covers .git/HEAD and 1.1.x refuses it, 1.1.x's leaves it out and 1.0.x refuses
    that. edge_runtime accepts both (and checks .git/HEAD where it is signed)."""
    private, public = _keys(tmp_path)
    ms11 = model_signing_11 / "model_signing"
    by_10 = _tree(tmp_path / "by-1.0", git=True)
    _model_signing_sign(by_10, private)
    done = _cli_verify(ms11, by_10, public)
    assert done.returncode == 1 and "Missing files" in done.stderr, done.stderr
    assert ".git/HEAD" in done.stderr
    assert verify_directory(by_10, [public]).files == 6

    by_11 = _tree(tmp_path / "by-1.1", git=True)
    sign = [str(ms11), "sign", "key", str(by_11), "--signature", str(by_11 / "model.sig")]
    done = subprocess.run(
        _offline([*sign, "--private_key", str(private)]), capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    done = _cli_verify(MODEL_SIGNING, by_11, public)
    assert done.returncode == 1 and "Signature mismatch" in done.stderr, done.stderr
    assert verify_directory(by_11, [public]).files == 5


def test_edge_sign_refuses_a_directory_whose_files_moved_on_from_its_manifest(tmp_path):
    """A signature attests to the directory as it is: files that no longer match the manifest
    (an edited weight, a missing golden sample) are refused before anything is written."""
    private, _ = _keys(tmp_path)
    root = _tree(tmp_path / "model")
    (root / "model.onnx").write_bytes(b"edited")
    done = CliRunner().invoke(cli_sign.main, ["sign", str(root), "--key", str(private)])
    assert done.exit_code == 1 and "not signing" in done.output and "model.onnx" in done.output, done.output
    assert "Traceback" not in done.output and not (root / "model.sig").exists()
    root = _tree(tmp_path / "model2")
    (root / "golden" / "a.npz").unlink()
    with pytest.raises(ConversionError, match=r"(?s)not signing .*golden/a\.npz: missing"):
        signing.check_before_signing(root)


def test_edge_sign_refuses_what_it_should_not_sign_and_says_why(tmp_path):
    """Not an artifact directory, a multi-target parent, a place it cannot write: one line each,
    no traceback; nothing half-written left behind."""
    private, _ = _keys(tmp_path)
    other = tmp_path / "notart"
    other.mkdir()
    (other / "readme.txt").write_text("hi")
    done = CliRunner().invoke(cli_sign.main, ["sign", str(other), "--key", str(private)])
    assert done.exit_code == 2 and "not an edge-convert artifact directory" in done.output
    parent = tmp_path / "out"
    _tree(parent / "rpi5")
    done = CliRunner().invoke(cli_sign.main, ["sign", str(parent), "--key", str(private)])
    assert done.exit_code == 2 and "several targets; sign each" in done.output and "rpi5" in done.output
    root = _tree(tmp_path / "model")
    (root / "model.sig").mkdir()  # the signature's place is taken by a directory
    done = CliRunner().invoke(
        cli_sign.main, ["sign", str(root), "--key", str(private), "--include-extra"]
    )
    assert done.exit_code == 1 and "cannot write" in done.output and "Traceback" not in done.output
    assert not (root / ".model.sig.tmp").exists()
    (tmp_path / "afile").write_text("x")
    done = CliRunner().invoke(cli_sign.main, ["keygen", str(tmp_path / "afile" / "k.pem"), str(tmp_path / "k.pub")])
    assert done.exit_code == 1 and "cannot write the key pair" in done.output
    assert not (tmp_path / "k.pub").exists()


def test_the_unsigned_and_changed_errors_say_how_to_sign(signed, tmp_path):
    root, _, public = signed
    (root / "model.onnx").write_bytes(b"changed")
    with pytest.raises(SignatureError, match=r"(?s)changed after signing.*edge-sign sign DIR --key KEY\.pem"):
        verify_directory(root, [public])
    (root / "model.sig").unlink()
    with pytest.raises(SignatureError, match=r"is not signed .*edge-sign sign DIR --key KEY\.pem"):
        verify_directory(root, [public])


def test_edge_run_info_checks_the_signature_first(signed, tmp_path, capsys):
    from edge_runtime import cli

    root, _, _ = signed
    _, stranger = _keys(tmp_path / "stranger")
    assert cli.main([str(root), "--info", "--trusted-key", str(stranger)]) == 1
    err = capsys.readouterr().err
    assert "no trusted key verifies" in err and "--trusted-key" in err
