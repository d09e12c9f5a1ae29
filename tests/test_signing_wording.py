"""Signing errors say what is wrong with which file, in the words of whoever reads them (review 3,
F6 and F8): trusted keys are named whatever is wrong with them, and the private-key hint goes only
to private keys; edge-serve's reload errors name --trusted-key; keygen names a dangling link;
edge-bench will not write its result into a signed artifact directory."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import tiny_artifact
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

import edge_runtime
from converters import cli_sign
from converters.packaging import signing
from edge_runtime import SignatureError, cli_bench
from edge_runtime._signing import verify_directory
from edge_runtime.serve import ServeConfig
from edge_runtime.serve._reload import Reloader


@pytest.fixture
def signed(tmp_path) -> tuple[Path, Path, Path]:
    """(signed tiny artifact directory, private key, public key)"""
    root = tmp_path / "art"
    tiny_artifact.build(root)
    private, public = signing.generate_key_pair(tmp_path / "key.pem", tmp_path / "key.pub")
    signing.sign_directory(root, signing.load_signing_key(private))
    return root, private, public


def test_a_trusted_key_on_an_unsupported_curve_is_named(signed, tmp_path):
    root, _, _ = signed
    k1 = tmp_path / "k1.pub"
    k1.write_bytes(ec.generate_private_key(ec.SECP256K1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    with pytest.raises(SignatureError,
                       match=rf"^trusted key {k1}: EC curve secp256k1 is not supported"):
        verify_directory(root, [k1])


@pytest.mark.parametrize(
    "content, says",
    [
        (b"", "is not a PEM public key: it is empty"),
        (b"\x30\x59\x30\x13\x06\x07", "a DER key converts with openssl pkey -pubin -inform DER"),
        (b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n", "but a certificate"),
    ],
    ids=["empty", "DER", "certificate"],
)
def test_only_a_private_key_gets_the_private_key_hint(signed, tmp_path, content, says):
    root, private, _ = signed
    key = tmp_path / "given.pub"
    key.write_bytes(content)
    with pytest.raises(SignatureError, match=rf"^trusted key {key} ") as caught:
        verify_directory(root, [key])
    assert says in str(caught.value) and "must never be copied" not in str(caught.value)
    with pytest.raises(SignatureError,
                       match=r"but a private key, which must never be copied to a device"):
        verify_directory(root, [private])


def test_a_trusted_key_text_after_other_lines_is_taken_as_pem_not_as_a_path(signed):
    root, _, public = signed
    assert verify_directory(root, ["# the release key\n" + public.read_text()]).files == 4


def test_edge_serve_reload_errors_name_its_flag(signed, tmp_path):
    """A reload to an unsigned directory: the error (log and /admin/reload's answer) says
    --trusted-key, not load()'s trusted_keys=None."""
    _, _, public = signed
    unsigned = tmp_path / "unsigned"
    tiny_artifact.build(unsigned)
    failures = []
    old = SimpleNamespace(generation=1, name="onnx-fp32", path=tmp_path / "art", info=lambda: {},
                          where=lambda: str(tmp_path / "art"))
    reloader = Reloader(
        ServeConfig(tmp_path / "art", trusted_keys=(str(public),)),
        SimpleNamespace(current=old),
        SimpleNamespace(reloads=SimpleNamespace(inc=lambda result: failures.append(result))),
        on_swap=None,
    )
    answer = reloader.reload(unsigned)
    assert answer["ok"] is False and failures == ["failure"]
    assert "restart edge-serve without --trusted-key" in answer["error"], answer["error"]
    assert "load with trusted_keys=None" not in answer["error"]


def test_keygen_onto_a_dangling_link_says_so(tmp_path):
    link = tmp_path / "link.pem"
    link.symlink_to(tmp_path / "gone" / "key.pem")
    done = CliRunner().invoke(cli_sign.main, ["keygen", str(link), str(tmp_path / "k.pub")])
    assert done.exit_code == 2, done.output
    assert f"{link} is a dangling symbolic link" in done.output
    assert "on the way" not in done.output and "File exists" not in done.output
    assert not (tmp_path / "gone").exists() and not (tmp_path / "k.pub").exists()


def test_edge_bench_refuses_to_write_into_a_signed_directory(signed, capsys):
    root, _, public = signed
    assert cli_bench.main([str(root), "--runs", "1", "-q", "--json", str(root / "bench.json")]) == 2
    err = capsys.readouterr().err
    assert f"--json {root / 'bench.json'}: is inside the signed artifact directory" in err
    assert "signed loads would refuse the directory" in err and f"{root}-bench.json" in err
    assert not (root / "bench.json").exists()
    verify_directory(root, [public])  # still what was signed


def test_edge_bench_warns_before_writing_into_an_unsigned_directory(tmp_path, capsys, monkeypatch):
    root = tmp_path / "art"
    tiny_artifact.build(root)

    def stop(*args, **kwargs):  # the warning comes before any measuring
        raise edge_runtime.EdgeRuntimeError("stopped here")

    monkeypatch.setattr(cli_bench, "run_bench", stop)
    assert cli_bench.main([str(root), "--runs", "1", "-q", "--json", str(root / "bench.json")]) == 1
    err = capsys.readouterr().err
    assert f"warning: --json {root / 'bench.json'} is inside the artifact directory" in err
