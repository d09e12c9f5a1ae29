"""Reviewed in session 39 (a user of the Python API and the CLIs): load() never writes into the
artifact directory, also when told to keep its device cache there; edge-run's plain output
shows a label as it is written."""

from __future__ import annotations

import pytest
import tiny_artifact

import edge_runtime


@pytest.mark.parametrize("inside", [".cache", "."])
def test_a_device_cache_inside_the_artifact_directory_is_refused(tmp_path, inside):
    out = tmp_path / "art"
    tiny_artifact.build(out)
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    with pytest.raises(edge_runtime.InputError, match="inside the artifact directory .* never writes"):
        edge_runtime.load(out, device_cache=out / inside)
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before  # nothing written there


def test_the_default_cache_inside_the_artifact_directory_names_xdg_cache_home(tmp_path, monkeypatch):
    out = tmp_path / "art"
    tiny_artifact.build(out)
    monkeypatch.setenv("XDG_CACHE_HOME", str(out / "cache"))
    with pytest.raises(edge_runtime.InputError, match=r"the default device cache \(XDG_CACHE_HOME\)"):
        edge_runtime.load(out)
    edge_runtime.load(out, device_cache=False)  # no cache: nothing to refuse


def test_a_tuning_cache_inside_the_artifact_directory_is_refused_before_measuring(tmp_path, monkeypatch, capsys):
    """Found by a review (session 49): load() refused a default device cache inside the artifact,
    but a first-use sweep (tune=True, with device_cache=False) and edge-tune wrote their result
    there, and the next signed load failed (a file not covered by the signature)."""
    from edge_runtime import _tune, cli_tune

    out = tmp_path / "art"
    tiny_artifact.build(out)
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(out / ".cache"))
    with pytest.raises(edge_runtime.InputError, match=r"the default tuning cache \(XDG_CACHE_HOME\) .* never writes"):
        edge_runtime.load(out, device_cache=False, tune=True)
    assert cli_tune.main([str(out), "--rounds", "1"]) == 1
    assert "the default tuning cache (XDG_CACHE_HOME)" in capsys.readouterr().err
    with pytest.raises(edge_runtime.InputError, match="cache_dir .* inside the artifact directory"):
        _tune.tune(out, cache_dir=out / "tuning")
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before  # nothing written there
    _tune.tune(out, rounds=1, write=False)  # nothing to write: nothing refused


def test_a_device_cache_beside_the_artifact_directory_is_used(tmp_path):
    out = tmp_path / "art"
    tiny_artifact.build(out)
    edge_runtime.load(out, device_cache=tmp_path / "art-cache")  # "art-cache" starts like "art"
    assert (tmp_path / "art-cache").is_dir()


def test_model_memory_budget_mb_set_later_is_checked_like_loads(tmp_path):
    """Documented as settable, it was not checked: "x" failed at the next call with a bare
    ValueError, NaN / 0 / -5 silently ran one row per backend call."""
    import numpy as np

    out = tmp_path / "art"
    tiny_artifact.build(out)
    model = edge_runtime.load(out, device_cache=False)
    feeds = {"input_ids": np.ones((2, 4), np.int64)}
    for bad in ("x", float("nan"), 0, -5, True):
        model.memory_budget_mb = bad
        with pytest.raises(edge_runtime.InputError, match=r"Model\.memory_budget_mb must be a finite number"):
            model.run(feeds)
    model.memory_budget_mb = np.float32(64)  # numpy's numbers are numbers
    model.run(feeds)


def test_numpy_scalars_are_taken_where_python_ones_are(tmp_path):
    import numpy as np

    out = tmp_path / "art"
    tiny_artifact.build(out)
    edge_runtime.load(out, device_cache=False, spinning=np.bool_(True), tune=np.bool_(False),
                      memory_budget_mb=np.int64(100))


def test_edge_sign_hint_and_load_name_keys_that_cannot_sign(tmp_path):
    """`edge-sign hint` printed a hint for an RSA key and for the first of two keys in a file (both
    refused by load()); load() called an RSA key "a RSAPublicKey" and named P-256 alone."""
    from click.testing import CliRunner
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    from converters import cli_sign

    def public_pem(key) -> bytes:
        return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)

    rsa_pub, ed_pub, two = tmp_path / "rsa.pub", tmp_path / "ed.pub", tmp_path / "two.pub"
    rsa_pub.write_bytes(public_pem(rsa.generate_private_key(public_exponent=65537, key_size=2048)))
    ed_pub.write_bytes(public_pem(ed25519.Ed25519PrivateKey.generate()))
    two.write_bytes(public_pem(ec.generate_private_key(ec.SECP256R1())) * 2)
    for path, said in ((rsa_pub, "is an RSA public key, which cannot sign or verify"),
                       (ed_pub, "is an Ed25519 public key, which cannot sign or verify"),
                       (two, "holds 2 PEM blocks; a key file holds one key")):
        done = CliRunner().invoke(cli_sign.main, ["hint", str(path)])
        assert done.exit_code != 0 and said in done.output, done.output
    out = tmp_path / "art"
    tiny_artifact.build(out)
    with pytest.raises(edge_runtime.SignatureError, match=r"is an RSA public key; model signing uses elliptic-curve "
                                                          r"keys on P-256 \(or P-384 / P-521\)"):
        edge_runtime.load(out, trusted_keys=[rsa_pub])
