"""The device caches are trusted as this user's private directory, and checked to be one (review 3,
F1). A signature covers the artifact directory, not the ONNX entry or XNNPACK file built from it,
whose hash records sit beside them: whoever can write the cache can change what runs. So caches
are made owner-only (0700 / 0600, whatever the umask), and an entry, or a directory from the cache
root down to it, that another account could have written (owned by someone else, writable by
group or others) is not used, signed load or not: the load goes without it with one warning
naming the path and why, and leaves it alone (backends/_cache.py, private_problem).

Another owner is made with chown when the tests run as root; otherwise this process is told it
runs as another user (os.geteuid), which makes the whole cache someone else's."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tiny_artifact

import edge_runtime
from converters.packaging import signing
from edge_runtime.backends import _cache, _tflite_cache, tflite
from targets import load_profile

STRANGER = 4242  # a uid that is neither this process's user nor root


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def _make_foreign(path: Path, monkeypatch) -> None:
    """`path` owned by someone else, as this process sees it."""
    if os.geteuid() == 0:
        os.chown(path, STRANGER, STRANGER, follow_symlinks=False)
    else:  # cannot give a file away: be someone else instead (the whole cache is then foreign)
        monkeypatch.setattr(os, "geteuid", lambda: STRANGER)


def _load(root: Path, cache: Path, **kwargs) -> edge_runtime.Model:
    return edge_runtime.load(root, threads=1, device_cache=cache, **kwargs)


def _sign(root: Path, keys: Path) -> Path:
    """Sign `root` with a new key pair under `keys`; the public key."""
    private, public = signing.generate_key_pair(keys / "key.pem", keys / "key.pub")
    signing.sign_directory(root, signing.load_signing_key(private))
    return public


@pytest.fixture
def artifact(tmp_path) -> Path:
    root = tmp_path / "art"
    tiny_artifact.build(root)
    return root


def test_caches_are_made_owner_only_whatever_the_umask(artifact, tmp_path):
    """A umask of 002 (Debian/Ubuntu users' default) made every cache directory and file
    group-writable; now directories are 0700 and files 0600, and the entry is reused."""
    cache = tmp_path / "xdg" / "cache"
    old = os.umask(0o002)
    try:
        first = _load(artifact, cache)
        second = _load(artifact, cache)
    finally:
        os.umask(old)
    assert first._session.optimized_cache_state == "created"
    assert second._session.optimized_cache_state == "reused"
    made = [cache.parent, cache, *cache.rglob("*")]
    assert len(made) > 5, made  # the entry, its files, the verification records
    modes = {str(p.relative_to(tmp_path)): oct(_mode(p)) for p in made}
    assert all(_mode(p) == (0o700 if p.is_dir() else 0o600) for p in made), modes


def _entry_parts(entry: Path, cache: Path) -> dict:
    return {"entry file": entry / "model.onnx", "entry": entry, "cache root": cache}


@pytest.mark.parametrize("signed", [False, True], ids=["unsigned", "signed"])
@pytest.mark.parametrize("part", ["entry file", "entry", "cache root"])
@pytest.mark.parametrize("how", ["group-writable", "others-writable", "foreign owner"])
def test_an_onnx_entry_others_could_write_is_not_used(artifact, tmp_path, caplog, monkeypatch,
                                                       signed, part, how):
    keys = [_sign(artifact, tmp_path)] if signed else None
    cache = tmp_path / "cache"
    built = _load(artifact, cache, trusted_keys=keys)._session.optimized_cache
    target = _entry_parts(built, cache)[part]
    if how == "foreign owner":
        _make_foreign(target, monkeypatch)
    else:
        bit = stat.S_IWGRP if how == "group-writable" else stat.S_IWOTH
        os.chmod(target, _mode(target) | bit)
    before = sorted((p, p.stat().st_mtime_ns) for p in cache.rglob("*"))
    with caplog.at_level(logging.WARNING, logger="edge_runtime"):
        model = _load(artifact, cache, trusted_keys=keys)
    assert model._session.optimized_cache_state == "refused"
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, warnings
    reason = {"foreign owner": "; this process runs as", "group-writable": "writable by its group",
              "others-writable": "writable by others"}[how]
    assert "not using the device cache entry" in warnings[0] and reason in warnings[0], warnings
    assert str(cache) in warnings[0] and "device_cache=False" in warnings[0]
    assert sorted((p, p.stat().st_mtime_ns) for p in cache.rglob("*")) == before, "left alone"
    out = model.run({"input_ids": tiny_artifact.IDS})["last_hidden_state"]
    assert np.array_equal(out, tiny_artifact.outputs(tiny_artifact.IDS))


def test_nothing_is_built_under_a_cache_root_others_can_write(artifact, tmp_path, caplog):
    cache = tmp_path / "shared"
    cache.mkdir(mode=0o777)
    os.chmod(cache, 0o777)
    with caplog.at_level(logging.WARNING, logger="edge_runtime"):
        model = _load(artifact, cache)
    assert model._session.optimized_cache_state == "refused"
    assert f"{cache} is writable by its group and others (mode 0777)" in caplog.text
    assert not [p for p in cache.iterdir() if "-ort" in p.name], "no entry built there"


def test_a_symbolic_link_in_the_cache_is_not_followed(artifact, tmp_path, caplog):
    """An entry replaced by a link (to a directory someone else controls) is refused."""
    cache = tmp_path / "cache"
    entry = _load(artifact, cache)._session.optimized_cache
    elsewhere = tmp_path / "elsewhere"
    entry.rename(elsewhere)
    entry.symlink_to(elsewhere, target_is_directory=True)
    with caplog.at_level(logging.WARNING, logger="edge_runtime"):
        assert _load(artifact, cache)._session.optimized_cache_state == "refused"
    assert f"{entry} is a symbolic link" in caplog.text


def test_make_cache_dir_refuses_a_root_others_can_write(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    root = _cache.default_cache_dir()
    _cache.make_cache_dir(root / "tuning")
    assert _mode(tmp_path / "xdg") == _mode(root) == _mode(root / "tuning") == 0o700
    os.chmod(root, 0o770)
    with pytest.raises(_cache.UnsafeCacheError,
                       match=r"edge_runtime is writable by its group \(mode 0770\)"):
        _cache.make_cache_dir(root / "verified")


@pytest.fixture
def trt_sessions(monkeypatch, tmp_path):
    """The providers of every session load() opens, as tests/test_tensorrt_cache.py records them
    (onnxruntime told TensorRT is installed; the sessions run on the CPU)."""
    opened, real = [], ort.InferenceSession

    def recording(path, sess_options=None, providers=None):
        opened.append(dict(providers))
        return real(path, sess_options=sess_options, providers=["CPUExecutionProvider"])

    trt = "TensorrtExecutionProvider"
    monkeypatch.setattr(ort, "get_available_providers", lambda: [trt, "CPUExecutionProvider"])
    monkeypatch.setattr(ort, "InferenceSession", recording)
    monkeypatch.chdir(tmp_path)
    return opened


def test_no_tensorrt_engine_cache_in_a_directory_others_can_write(trt_sessions, tmp_path, caplog):
    trt = "TensorrtExecutionProvider"
    options = load_profile("jetson-orin").backends[0].provider_options[trt]
    runtime = {"backends": [{"name": "onnxruntime",
                             "execution_providers": [trt, "CPUExecutionProvider"],
                             "provider_options": {trt: options}}]}
    root = tmp_path / "art"
    tiny_artifact.build(root, runtime=runtime)
    cache = tmp_path / "cache"
    cache.mkdir()
    _load(root, cache)
    assert trt_sessions[-1][trt]["trt_engine_cache_path"].startswith(str(cache / "tensorrt"))
    os.chmod(cache, 0o775)
    with caplog.at_level(logging.WARNING, logger="edge_runtime"):
        _load(root, cache)
    placed = trt_sessions[-1][trt]
    assert placed["trt_engine_cache_enable"] is False and "trt_engine_cache_path" not in placed
    assert f"no TensorRT engine cache: {cache} is writable by its group" in caplog.text


needs_cache_api = pytest.mark.skipif(
    not tflite.weight_cache_supported(),
    reason="installed ai-edge-litert has no CompiledModel xnnpack_weight_cache_path",
)


@needs_cache_api
@pytest.mark.parametrize("what", ["cache file", "its record", "cache directory"])
def test_an_xnnpack_cache_others_could_write_is_not_used(tmp_path, caplog, what):
    """Checked before the file is mapped or anything is built: a stand-in model file suffices."""
    import ai_edge_litert

    model = tmp_path / "m.tflite"
    model.write_bytes(b"not read before the check")
    cache = tmp_path / "xnnpack"
    cache.mkdir(mode=0o700)
    final = _tflite_cache.weight_cache_file(cache, "ab" * 32, ai_edge_litert.__version__)
    final.write_bytes(b"\x01" * 64)  # looks finished (a non-zero version word)
    record = final.with_name(final.name + ".verified.json")
    record.write_text("{}")
    target = {"cache file": final, "its record": record, "cache directory": cache}[what]
    os.chmod(target, _mode(target) | stat.S_IWGRP)
    with caplog.at_level(logging.WARNING, logger="edge_runtime"):
        opened = _tflite_cache.open_with_cache(model, 1, cache, "ab" * 32)
    assert opened.engine is None and opened.weight_cache_state == "failed"
    assert f"{target} is writable by its group" in opened.weight_cache_note
    assert "not using the XNNPACK weight cache for m.tflite" in caplog.text
    assert final.read_bytes() == b"\x01" * 64 and record.exists(), "left alone, not rebuilt"


def test_verification_records_another_account_could_write_are_not_trusted(artifact, tmp_path, caplog, monkeypatch):
    """A record lets a load skip hashing a file and all but one golden sample: a forged one would
    let a changed artifact through an unsigned verified load."""
    from edge_runtime._verified import Verifications

    cache = tmp_path / "cache"
    from edge_runtime import _verified

    monkeypatch.setattr(_verified, "SETTLE_SECONDS", -1.0)  # the files were just written: record them anyway
    _load(artifact, cache)  # records the files and the golden pass
    records = Verifications(cache)
    items = [{"path": p.name, "sha256": _cache.file_sha256(p)} for p in sorted(artifact.glob("*.onnx*"))]
    assert items and records.unverified(artifact, items) == []  # trusted: nothing to hash again
    (cache / "verified" / "files.json").chmod(0o666)
    with caplog.at_level(logging.WARNING, logger="edge_runtime"):
        assert records.unverified(artifact, items) == items
    assert "not using the verification record" in caplog.text and "writable by" in caplog.text
