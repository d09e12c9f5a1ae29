"""Signed loads after the signing review (/tmp/s37/review-signing.md, items 1-11): a write while
load() reads the files never reaches the device cache; a directory swapped in after the check is
refused; the files must stay unwritable by others (warned); a malformed, huge, special or
unlistable input is a SignatureError saying what is wrong, never a traceback or hours of hashing;
and edge-sign names its hints, its tool, and leaves nothing behind when interrupted.

Every test uses tests/tiny_artifact.py's hand-built directory (milliseconds); permission and
listing failures are simulated (the tests may run as root, who reads anything)."""

from __future__ import annotations

import base64
import errno
import io
import json
import logging
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import tiny_artifact
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

import edge_runtime
from converters import ConversionError, cli_sign
from converters.packaging import signing
from edge_runtime import ArtifactError, SignatureError, _manifest, _model, _signing, _signing_files
from edge_runtime import cli as run_cli
from edge_runtime._signing import key_hint, verify_directory

DATA = "onnx-fp32.onnx.data"


@pytest.fixture
def signed(tmp_path) -> tuple[Path, Path, Path]:
    """(signed tiny artifact directory, private key, public key)"""
    root = tmp_path / "art"
    tiny_artifact.build(root)
    private, public = signing.generate_key_pair(tmp_path / "keys" / "key.pem", tmp_path / "keys" / "key.pub")
    signing.sign_directory(root, signing.load_signing_key(private))
    return root, private, public


def _outputs(model) -> np.ndarray:
    return model.run({"input_ids": tiny_artifact.IDS})["last_hidden_state"]


def _weights_bytes(scale: float) -> bytes:
    return (np.arange(1, tiny_artifact.WIDTH + 1, dtype=np.float32) * scale).astype(np.float32).tobytes()


# --- item 1: a write during the first verified load ----------------------------------------------


def _onnx_entries(cache: Path) -> list[Path]:
    """onnxruntime's device-cache entries (backends/onnx.py _entry_dir: "<sha>-ort<version>-...")."""
    return [path for path in cache.glob("*-ort*") if path.is_dir()]


@pytest.mark.parametrize("how", ["in place", "renamed in"])
def test_a_write_while_the_first_verified_load_reads_is_refused_and_its_cache_dropped(
        signed, tmp_path, monkeypatch, how):
    """The attacker writes other weights right after the hash check (the race made exact by a
    hook) and the golden samples miss it (a targeted change: self_check stubbed to pass, as for a
    token no golden sample holds). The cache built from those bytes would be named after the
    signed hashes and run by every later load: it is discarded and the load refused."""
    root, _, public = signed
    cache = tmp_path / "cache"
    data = root / DATA
    real_verify = _model.verify_files

    def write_after_hashing(where, items):
        real_verify(where, items)
        if how == "in place":  # same inode; grows too, so the change is seen whatever the tick
            with open(data, "r+b") as handle:
                handle.write(_weights_bytes(3.0) + b"\0" * 8)
        else:  # a replacement file: another inode
            (root / "evil").write_bytes(_weights_bytes(3.0))
            os.replace(root / "evil", data)

    monkeypatch.setattr(_model, "verify_files", write_after_hashing)
    monkeypatch.setattr(_model.Model, "self_check", lambda self, shortest_only=False: 1)
    with pytest.raises(ArtifactError, match=rf"{DATA} of .* changed while load\(\) read it") as caught:
        edge_runtime.load(root, trusted_keys=[public], threads=1, device_cache=cache)
    assert "was discarded" in str(caught.value)
    assert not _onnx_entries(cache)

    monkeypatch.undo()  # the attacker restores the file: the directory verifies again
    data.write_bytes(_weights_bytes(1.0))
    model = edge_runtime.load(root, trusted_keys=[public], threads=1, device_cache=cache)
    assert np.array_equal(_outputs(model), tiny_artifact.outputs(tiny_artifact.IDS))


def test_an_unchanged_verified_load_keeps_its_cache(signed, tmp_path):
    root, _, public = signed
    cache = tmp_path / "cache"
    for _ in range(2):
        model = edge_runtime.load(root, trusted_keys=[public], threads=1, device_cache=cache)
        assert np.array_equal(_outputs(model), tiny_artifact.outputs(tiny_artifact.IDS))
    assert len(_onnx_entries(cache)) == 1


# --- item 3: a directory swapped in after the check ----------------------------------------------


def _swap_after_check(monkeypatch, root: Path, evil: Path, names: list[str]) -> None:
    real = _signing.verify_directory

    def verify_then_swap(where, keys):
        result = real(where, keys)
        for name in names:  # atomic renames, as a real attacker would
            shutil.copy(evil / name, root / f"{name}.new")
            os.replace(root / f"{name}.new", root / name)
        return result

    monkeypatch.setattr(_signing, "verify_directory", verify_then_swap)


def test_files_swapped_in_after_the_signature_check_are_refused(signed, tmp_path, monkeypatch):
    root, _, public = signed
    evil = tmp_path / "evil"
    tiny_artifact.build(evil, scale=3.0)
    _swap_after_check(monkeypatch, root, evil,
                      ["manifest.json", "onnx-fp32.onnx", DATA, "golden/onnx-fp32.npz"])
    with pytest.raises(SignatureError, match="replaced or written since its signature was checked"):
        edge_runtime.load(root, trusted_keys=[public], threads=1, device_cache=False)


@pytest.mark.parametrize("name", ["tokenizer/tokenizer.json", "golden/onnx-fp32.npz"])
def test_a_signed_file_removed_after_the_check_is_refused_without_hashing(tmp_path, monkeypatch, name):
    """Found by a review (session 49): with verify=False a signed file moved away right after the
    signature check was skipped (both stat checks saw it missing), and the tokenizer was then read
    at the first embed(): any file put back later, unverified."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    root = tmp_path / "art"
    tiny_artifact.build(root)
    words = Tokenizer(models.WordLevel(vocab={"[PAD]": 0, "[UNK]": 1, "hello": 2}, unk_token="[UNK]"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    (root / "tokenizer").mkdir()
    words.save(str(root / "tokenizer" / "tokenizer.json"))
    manifest = json.loads((root / "manifest.json").read_text())
    path = root / "tokenizer" / "tokenizer.json"
    manifest["tokenizer"] = {"files": [{"path": "tokenizer/tokenizer.json", "bytes": path.stat().st_size,
                                        "sha256": _manifest.file_sha256(path)}], "max_length": 8, "pad_token_id": 0}
    (root / "manifest.json").write_text(json.dumps(manifest))
    private, public = signing.generate_key_pair(tmp_path / "keys" / "key.pem", tmp_path / "keys" / "key.pub")
    signing.sign_directory(root, signing.load_signing_key(private))
    edge_runtime.load(root, trusted_keys=[public], verify=False, device_cache=False)  # signed and whole: loads
    real = _signing.verify_directory

    def verify_then_remove(where, keys):
        result = real(where, keys)
        os.rename(root / name, tmp_path / "stash")
        return result

    monkeypatch.setattr(_signing, "verify_directory", verify_then_remove)
    with pytest.raises(SignatureError, match=f"{name} .* was removed since its signature was checked"):
        edge_runtime.load(root, trusted_keys=[public], verify=False, device_cache=False)


def test_the_manifest_is_parsed_from_the_bytes_that_were_verified(signed, tmp_path, monkeypatch):
    root, _, public = signed
    evil = tmp_path / "evil"
    evil.mkdir()
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["artifacts"][0]["name"] = "evil"
    (evil / "manifest.json").write_text(json.dumps(manifest))
    _swap_after_check(monkeypatch, root, evil, ["manifest.json"])
    model = edge_runtime.load(root, trusted_keys=[public], threads=1, device_cache=False)
    assert model.name == "onnx-fp32"  # the signer's manifest, not the one renamed in


# --- item 2: the files must stay unwritable by others --------------------------------------------


@pytest.mark.parametrize("target, mode, says", [
    ("", 0o757, "is writable by others (mode 0757)"),
    (DATA, 0o664, "is writable by its group (mode 0664)"),
])
def test_a_signed_directory_others_can_write_is_warned_about_once(signed, caplog, target, mode, says):
    root, _, public = signed
    os.chmod(root / target, mode)
    with caplog.at_level(logging.WARNING, logger="edge_runtime"):
        edge_runtime.load(root, trusted_keys=[public], threads=1, device_cache=False)
    warned = [r.getMessage() for r in caplog.records if "signed artifact directory" in r.getMessage()]
    assert len(warned) == 1, warned
    assert f"{root / target if target else root} {says}" in warned[0]
    assert "follows later writes" in warned[0] and "chmod -R go-w" in warned[0]


def test_a_private_signed_directory_is_not_warned_about(signed, caplog):
    root, _, public = signed
    with caplog.at_level(logging.WARNING, logger="edge_runtime"):
        edge_runtime.load(root, trusted_keys=[public], threads=1, device_cache=False)
    assert not [r for r in caplog.records if "signed artifact directory" in r.getMessage()]


@pytest.mark.parametrize("mode, warned", [(0o777, True), (0o1777, False), (0o755, False)])
def test_a_parent_others_can_write_is_warned_about_unless_sticky(signed, caplog, tmp_path, mode, warned):
    """docs/signing.md asks the directories above a signed one to be writable by no one else, and
    says a signed load warns when they are not; only the directory and its files were checked.
    Whoever can write a parent can rename another directory into the signed one's place after the
    check. A sticky parent (/tmp's mode) lets only an entry's owner do that: not warned."""
    root, _, public = signed
    os.chmod(tmp_path, mode)
    try:
        with caplog.at_level(logging.WARNING, logger="edge_runtime"):
            edge_runtime.load(root, trusted_keys=[public], threads=1, device_cache=False)
    finally:
        os.chmod(tmp_path, 0o700)
    said = [r.getMessage() for r in caplog.records if "signed artifact directory" in r.getMessage()]
    if warned:
        assert len(said) == 1 and f"{tmp_path} is writable by its group and others (mode {mode:04o})" in said[0], said
        assert "put another directory in its place" in said[0]
    else:
        assert not said, said


# --- item 4: malformed model.sig and keys --------------------------------------------------------


def _unknown_curve_pem() -> bytes:
    """An EC public key on a made-up named curve (OID 1.2.3.4): cryptography's UnsupportedAlgorithm."""
    def seq(body: bytes) -> bytes:
        return b"\x30" + bytes([len(body)]) + body
    algorithm = seq(bytes.fromhex("06072a8648ce3d0201") + bytes.fromhex("06032a0304"))
    point = b"\x04" + b"\x01" * 64
    spki = seq(algorithm + b"\x03" + bytes([len(point) + 1]) + b"\x00" + point)
    return b"-----BEGIN PUBLIC KEY-----\n" + base64.encodebytes(spki) + b"-----END PUBLIC KEY-----\n"


def test_a_signature_file_with_a_huge_integer_is_a_signature_error(signed):
    root, _, public = signed
    text = (root / "model.sig").read_text().rstrip().rstrip("}")
    (root / "model.sig").write_text(text + ', "x": ' + "9" * 5000 + "}")
    with pytest.raises(SignatureError, match="is not a JSON Sigstore bundle: Exceeds the limit"):
        edge_runtime.load(root, trusted_keys=[public], device_cache=False)


def test_edge_run_info_describes_the_manifest_its_signature_covers(signed, tmp_path, monkeypatch, capsys):
    """Found by a review (session 49): `edge-run --info --trusted-key` checked the signature, then
    read manifest.json from disk again: a manifest swapped in after the check was described as
    signed."""
    root, _, public = signed
    evil = tmp_path / "evil"
    evil.mkdir()
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["target"]["id"] = "unsigned-target"
    (evil / "manifest.json").write_text(json.dumps(manifest))
    _swap_after_check(monkeypatch, root, evil, ["manifest.json"])
    assert run_cli.main([str(root), "--info", "--json", "--trusted-key", str(public)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["signature"]["files"] > 0
    assert "unsigned-target" not in json.dumps(info)


def test_a_signed_payload_with_a_huge_integer_is_a_signature_error(signed):
    """Found by a review (session 49): signed by the trusted key, a statement holding an integer
    past Python's 4300-digit limit raised a bare ValueError from json.loads."""
    root, private, public = signed
    key = signing.load_signing_key(private)
    bundle = json.loads((root / "model.sig").read_text())
    payload = b'{"_type": "https://in-toto.io/Statement/v1", "x": ' + b"1" * 5000 + b"}"
    bundle["dsseEnvelope"]["payload"] = base64.b64encode(payload).decode()
    bundle["dsseEnvelope"]["signatures"][0]["sig"] = base64.b64encode(
        signing._sign(key, _signing.pae(_signing.PAYLOAD_TYPE, payload))).decode()
    (root / "model.sig").write_text(json.dumps(bundle))
    with pytest.raises(SignatureError, match="the signed payload is not JSON"):
        edge_runtime.load(root, trusted_keys=[public], device_cache=False)


def test_a_trusted_key_path_with_a_nul_byte_is_a_signature_error(signed):
    root, _, _ = signed
    with pytest.raises(SignatureError, match="is not a usable path"):
        edge_runtime.load(root, trusted_keys=["key\x00.pub"], device_cache=False)


def test_raw_bytes_on_an_unknown_curve_is_a_signature_error(signed):
    root, _, public = signed
    bundle = json.loads((root / "model.sig").read_text())
    bundle["verificationMaterial"]["publicKey"] = {"rawBytes": base64.b64encode(_unknown_curve_pem()).decode()}
    (root / "model.sig").write_text(json.dumps(bundle))
    with pytest.raises(SignatureError, match="rawBytes is not a PEM public key this device can use"):
        verify_directory(root, [public])


def test_a_trusted_key_on_an_unknown_curve_is_a_signature_error(signed, tmp_path):
    root, _, _ = signed
    (tmp_path / "odd.pub").write_bytes(_unknown_curve_pem())
    with pytest.raises(SignatureError, match=r"odd.pub is a public key this device cannot use"):
        verify_directory(root, [tmp_path / "odd.pub"])


# --- item 5: a directory that cannot be listed ---------------------------------------------------


def test_a_directory_that_cannot_be_listed_is_refused(signed, monkeypatch):
    """An added file in golden/, which the loading user may not list (simulated: root lists
    anything): the check cannot see the directory whole, so it refuses it."""
    root, _, public = signed
    (root / "golden" / "unsigned.bin").write_bytes(b"attacker")
    real = os.scandir

    def scandir(path="."):
        if Path(path) == root / "golden":
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(SignatureError, match=r"golden cannot be listed \(Permission denied\)"):
        edge_runtime.load(root, trusted_keys=[public], threads=1, device_cache=False)


# --- item 6: a file that cannot be read ----------------------------------------------------------


def _unreadable(monkeypatch, module, name: str) -> None:
    real = module.file_sha256

    def file_sha256(path, *args):
        if Path(path).name == name:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real(path, *args)

    monkeypatch.setattr(module, "file_sha256", file_sha256)


def test_an_unreadable_signed_file_is_named_on_the_device(signed, monkeypatch):
    root, _, public = signed
    _unreadable(monkeypatch, _signing_files, "onnx-fp32.onnx")
    with pytest.raises(SignatureError, match=r"cannot be checked against its signature") as caught:
        verify_directory(root, [public])
    assert "onnx-fp32.onnx: cannot be read (Permission denied)" in str(caught.value)


def test_an_unreadable_file_is_an_artifact_error_unsigned(signed, monkeypatch):
    root, _, _ = signed
    _unreadable(monkeypatch, _manifest, "onnx-fp32.onnx")
    with pytest.raises(ArtifactError, match=r"onnx-fp32.onnx: cannot be read \(Permission denied\)"):
        edge_runtime.load(root, threads=1, device_cache=False)


def test_an_unreadable_file_is_named_by_edge_sign(signed, monkeypatch):
    root, private, _ = signed
    _unreadable(monkeypatch, _manifest, "onnx-fp32.onnx")
    done = CliRunner().invoke(cli_sign.main, ["sign", str(root), "--key", str(private)])
    assert done.exit_code == 1, done.output
    assert "onnx-fp32.onnx: cannot be read (Permission denied)" in done.output
    _unreadable(monkeypatch, signing, "onnx-fp32.onnx")  # the statement's own hashing
    with pytest.raises(ConversionError, match=r"onnx-fp32.onnx cannot be read \(Permission denied\)"):
        signing.statement(root, "art")


def test_a_directory_where_edge_sign_writes_its_signature_first_is_named(signed):
    """Found by a review (session 49): a directory named .model.sig.tmp gave a traceback."""
    root, private, _ = signed
    (root / ".model.sig.tmp").mkdir()
    done = CliRunner().invoke(cli_sign.main, ["sign", str(root), "--key", str(private)])
    assert done.exit_code == 1, done.output
    assert ".model.sig.tmp cannot be removed" in done.output and "Traceback" not in done.output


# --- item 7: bounded work for huge files ---------------------------------------------------------


def test_a_huge_signature_file_is_refused_unread(signed):
    root, _, public = signed
    with open(root / "model.sig", "r+b") as handle:  # sparse: no disk used
        handle.truncate(_signing_files.MAX_SIGNATURE_BYTES + 1)
    with pytest.raises(SignatureError, match=r"model.sig is \d+ bytes, more than the \d+ bytes"):
        verify_directory(root, [public])


def test_a_file_whose_size_differs_from_the_signed_manifest_is_not_hashed(signed, monkeypatch):
    root, _, public = signed
    (root / DATA).unlink()
    with open(root / DATA, "wb") as handle:
        handle.truncate(1 << 30)  # a sparse gigabyte: seconds to hash, no disk
    hashed = []
    real = _signing_files.file_sha256
    monkeypatch.setattr(_signing_files, "file_sha256", lambda path: hashed.append(Path(path).name) or real(path))
    with pytest.raises(SignatureError, match=rf"{DATA}: modified \(1073741824 bytes; the signed "
                                             r"manifest.json records 32\), not read"):
        verify_directory(root, [public])
    assert DATA not in hashed


# --- item 8: edge-run DIR - --trusted-key --------------------------------------------------------


def test_edge_run_from_stdin_checks_the_signature_before_the_manifest(signed, monkeypatch, capsys):
    root, _, public = signed
    (root / "manifest.json").write_text('{"schema_version": 99}')
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"hi\n")))
    assert run_cli.main([str(root), "-", "--trusted-key", str(public)]) == 1
    err = capsys.readouterr().err
    assert "does not match its signature" in err and "manifest.json: modified" in err
    assert "schema_version" not in err


def test_edge_run_from_stdin_hashes_a_signed_directory_once(signed, monkeypatch, capsys):
    """The early check of the `-` path parses nothing unsigned and leaves the signature to
    load(): one pass over the directory's files, not two."""
    from edge_runtime import _signing

    root, _, public = signed
    checks = []
    real = _signing.verify_directory
    monkeypatch.setattr(_signing, "verify_directory", lambda *a, **k: checks.append(a) or real(*a, **k))
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"hi\n")))
    run_cli.main([str(root), "-", "--trusted-key", str(public)])  # the tiny model has no text head:
    assert "signature" not in capsys.readouterr().err  # it fails after the load, which is enough here
    assert len(checks) == 1
    missing = root.parent / "no-such-directory"
    assert run_cli.main([str(missing), "-", "--trusted-key", str(public)]) == 1
    assert "does not exist" in capsys.readouterr().err


# --- items 10 and 11: messages and edge-sign -----------------------------------------------------


def test_a_key_file_with_two_keys_is_refused_saying_give_each(signed, tmp_path):
    root, _, public = signed
    other = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    both = tmp_path / "both.pub"
    both.write_bytes(other + public.read_bytes())
    with pytest.raises(SignatureError, match=r"both.pub holds 2 PEM blocks; give each public key separately"):
        verify_directory(root, [both])


def test_a_signature_that_is_a_fifo_is_named_so(signed):
    root, _, public = signed
    (root / "model.sig").unlink()
    os.mkfifo(root / "model.sig")
    with pytest.raises(SignatureError, match=r"model.sig is not a regular file") as caught:
        verify_directory(root, [public])
    assert "not signed" not in str(caught.value)


def test_the_listed_problems_are_capped_and_counted(signed):
    root, _, public = signed
    (root / "junk").mkdir()
    for number in range(30):
        (root / "junk" / f"{number:02d}").write_bytes(b"")
    (root / "golden" / "onnx-fp32.npz").write_bytes(b"changed")
    with pytest.raises(SignatureError) as caught:
        verify_directory(root, [public])
    lines = str(caught.value).splitlines()
    assert len([line for line in lines if line.startswith("  ")]) == _signing_files.SHOWN_PROBLEMS + 1
    assert "  ... and 11 more: 11 added" in lines  # 30 added + 1 modified, 20 shown
    assert lines[1].startswith("  golden/onnx-fp32.npz: modified")  # never hidden by added files


def test_edge_sign_prints_the_hint_the_device_quotes(signed, tmp_path):
    root, private, public = signed
    other_private, other_public = signing.generate_key_pair(tmp_path / "o.pem", tmp_path / "o.pub")
    done = CliRunner().invoke(cli_sign.main, ["hint", str(public)])
    assert done.exit_code == 0, done.output
    hint = done.output.strip()
    assert hint == key_hint(signing.load_signing_key(private).public_key())
    assert CliRunner().invoke(cli_sign.main, ["hint", str(private)]).output.strip() == hint
    done = CliRunner().invoke(cli_sign.main, ["sign", str(root), "--key", str(private)])
    assert f"(key hint {hint})" in done.output, done.output
    done = CliRunner().invoke(cli_sign.main, ["keygen", str(tmp_path / "n.pem"), str(tmp_path / "n.pub")])
    assert "key hint    " in done.output, done.output
    with pytest.raises(SignatureError, match=rf"names key hint {hint[:16]}… as its signer") as caught:
        verify_directory(root, [other_public])
    assert "edge-sign hint KEY.pub" in str(caught.value)


def test_an_encrypted_key_names_edge_sign_when_edge_sign_reads_it(signed, tmp_path):
    root, _, _ = signed
    key = ec.generate_private_key(ec.SECP256R1())
    encrypted = tmp_path / "enc.pem"
    encrypted.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.BestAvailableEncryption(b"secret")))
    done = CliRunner().invoke(cli_sign.main, ["sign", str(root), "--key", str(encrypted)])
    assert done.exit_code == 2 and "edge-sign signs with unencrypted keys only" in done.output, done.output
    assert "edge-convert" not in done.output
    with pytest.raises(ConversionError, match="edge-convert signs with unencrypted keys only"):
        signing.load_signing_key(encrypted)


def test_an_interrupted_edge_sign_leaves_no_temporary_file(signed, monkeypatch):
    root, private, public = signed
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd) or real_fsync(fd))

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(signing.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        signing.sign_directory(root, signing.load_signing_key(private))
    assert synced, "the temporary signature is fsynced before the rename"
    assert not (root / ".model.sig.tmp").exists()
    verify_directory(root, [public])  # the old signature is still there, still valid


def test_a_leftover_temporary_signature_is_named_as_one(signed):
    root, _, public = signed
    (root / ".model.sig.tmp").write_text("{}")
    with pytest.raises(SignatureError, match=r"\.model\.sig\.tmp: added, left by an interrupted `edge-sign sign`"):
        verify_directory(root, [public])


# --- a signed first use with tune=True ----------------------------------------------------------


def test_a_signed_first_use_sweep_runs_what_the_signature_covered(signed, monkeypatch):
    """load(trusted_keys=..., tune=True)'s thread sweep read manifest.json from disk again and
    opened every setting without the checked stat signatures: a directory swapped in after the
    check had its files run by the sweep. Now the sweep gets the verified manifest and holds
    every opening to the signed files' stats."""
    from edge_runtime import _tune

    root, _, public = signed
    monkeypatch.setattr(_tune, "FIRST_USE", {"rounds": 1, "budget_s": 0.2})

    def reread(*args, **kwargs):
        raise AssertionError("the sweep read the manifest from disk again")

    opened = []
    real_open = _tune.open_entry

    def recording_open(*args, **kwargs):
        opened.append(kwargs.get("signed_stats"))
        return real_open(*args, **kwargs)

    monkeypatch.setattr(_tune, "read_manifest", reread)
    monkeypatch.setattr(_tune, "open_entry", recording_open)
    model = edge_runtime.load(root, trusted_keys=[public], tune=True)
    assert np.isfinite(_outputs(model)).all()
    assert opened and all(stats for stats in opened), opened
    assert json.loads(_tune.cache_file(root).read_text())["artifacts"], "the sweep's result was not cached"
