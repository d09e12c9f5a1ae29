"""TFLite runtime side: the XNNPACK weight cache, fallbacks, and the legacy tflite-runtime 2.14.

Tiny random BERT models are exported once per session (buckets 16 and 32) and run with
edge_runtime's TFLite session with and without a weight cache; outputs must be bit-identical
(same XNNPACK kernels, packed once vs mapped from the cache). The slow test at the end installs
the device wheel next to tflite-runtime 2.14 + numpy<2 in a fresh venv and shows that
`edge_runtime.load` runs the FP32 TFLite artifact and refuses the per-channel INT8 one, which
that runtime computes wrongly without raising.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import platform
import subprocess
import sys
import textwrap
import time
import types
import venv
from pathlib import Path

import numpy as np
import pytest

# Required dependencies (setup.cfg): imported, never skipped, so a broken install fails here.
import ai_edge_litert  # noqa: E402,F401
import ai_edge_quantizer  # noqa: E402,F401
import litert_torch  # noqa: E402,F401

import edge_runtime
from edge_runtime import backends
from edge_runtime.backends import _cache, _tflite_cache, tflite

# slow tier: exports and quantizes TFLite models
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
BUCKETS = (16, 32)

needs_cache_api = pytest.mark.skipif(
    not tflite.weight_cache_supported(),
    reason="installed ai-edge-litert has no CompiledModel xnnpack_weight_cache_path",
)


def _export(source_dir: Path, out: Path) -> dict[str, Path]:
    from converters.inputs.source import load_source
    from converters.tflite import TfliteExportConfig, export_tflite, quantize_tflite

    out.mkdir(parents=True, exist_ok=True)
    export_tflite(load_source(source_dir), out / "fp32.tflite", TfliteExportConfig(BUCKETS))
    quantize_tflite(out / "fp32.tflite", out / "int8.tflite", "dynamic_wi8_afp32")
    return {"fp32": out / "fp32.tflite", "int8": out / "int8.tflite"}


@pytest.fixture(scope="module")
def models(tiny_model_factory, tmp_path_factory):
    """{precision: path} for a tiny BERT, and the same for a second one with other weights."""
    from tiny_models import build_tiny_model

    root = tmp_path_factory.mktemp("tflite-runtime")
    first = _export(tiny_model_factory("bert", "feature-extraction"), root / "a")
    # Same architecture and vocabulary, different random weights: what a re-trained model
    # converted again looks like to XNNPACK.
    other_dir = build_tiny_model(root / "src-b", "bert", "feature-extraction", seed=1)
    second = _export(other_dir, root / "b")
    return first, second


def _feeds(batch: int = 3, seq: int = 20) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seq)
    ids = rng.integers(5, 300, (batch, seq))
    mask = np.ones_like(ids)
    mask[1:, seq // 2 :] = 0  # padded rows, like a tokenized batch
    ids[mask == 0] = 0
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}


def _all_buckets(session) -> list[np.ndarray]:
    """Outputs for a batch in every bucket (seq 16 exactly, and 20 padded to 32)."""
    return [session.run(_feeds(seq=seq))["last_hidden_state"] for seq in (5, 16, 20, 32)]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@needs_cache_api
@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_weight_cache_is_created_then_reused_with_identical_outputs(models, tmp_path, precision):
    path = models[0][precision]
    plain = backends.open_session("tflite", path, threads=2)
    assert plain.weight_cache_state == "off" and plain.weight_cache is None
    want = _all_buckets(plain)

    cache_dir = tmp_path / "cache"
    built = backends.open_session("tflite", path, threads=2, weight_cache_dir=cache_dir)
    assert built.weight_cache_state == "created"
    assert built.backend_name == "ai-edge-litert" and built.buckets == [16, 32]
    files = sorted(p.name for p in cache_dir.iterdir())
    record = built.weight_cache.name + ".verified.json"
    assert files == [built.weight_cache.name, record], "cache and record, no temporary left"
    assert built.weight_cache.name.startswith(_sha(path)[:32])
    assert built.weight_cache.stat().st_size > 0
    for got, expected in zip(_all_buckets(built), want):
        np.testing.assert_array_equal(got, expected)
    # Every bucket's weights were packed at load: running them does not touch the file.
    digest = _sha(built.weight_cache)

    reused = backends.open_session("tflite", path, threads=1, weight_cache_dir=cache_dir)
    assert reused.weight_cache_state == "reused" and reused.weight_cache == built.weight_cache
    for got, expected in zip(_all_buckets(reused), want):
        np.testing.assert_array_equal(got, expected)  # also across thread counts
    assert _sha(reused.weight_cache) == digest
    assert sorted(p.name for p in cache_dir.iterdir()) == files


@needs_cache_api
def test_a_new_weight_cache_sweeps_idle_old_ones(models, tmp_path, monkeypatch):
    """XNNPACK caches of older artifact versions are deleted with their records when a new one
    is written, beyond the KEEP_ENTRIES most recently used and idle for IDLE_S (a review, session
    51: they were kept forever); a recently used one and foreign files stay."""
    import os
    import time

    from edge_runtime.backends import _cache

    cache_dir = tmp_path / "cache"
    cache_dir.mkdir()
    old, recent = time.time() - 2 * _cache.IDLE_S, time.time() - 60
    stale = {}
    for i, used in enumerate((old, old, recent)):
        name = f"{i:032x}-litert2.3.0-er0.1.0-cpu.xnnpack"
        for path in (cache_dir / name, cache_dir / (name + ".verified.json")):
            path.write_bytes(b"{}")
            os.utime(path, (used, used))
        stale[name] = used
    (cache_dir / "notes.txt").write_text("not a cache file")
    monkeypatch.setattr(_cache, "KEEP_ENTRIES", 2)
    built = backends.open_session("tflite", models[0]["fp32"], threads=1, weight_cache_dir=cache_dir)
    assert built.weight_cache_state == "created"
    left = sorted(p.name for p in cache_dir.iterdir())
    recent_name = [n for n, used in stale.items() if used == recent][0]
    assert left == sorted([built.weight_cache.name, built.weight_cache.name + ".verified.json", recent_name,
                           recent_name + ".verified.json", "notes.txt"]), left


@needs_cache_api
def test_buckets_share_one_packed_copy(models, tmp_path):
    """Without a cache XNNPACK packs every weight once per signature (bucket). Through the cache
    file packed weights are looked up by tensor, so all buckets map one copy."""
    session = backends.open_session(
        "tflite", models[0]["fp32"], threads=1, weight_cache_dir=tmp_path / "cache"
    )
    assert session.buckets == [16, 32]
    # 2 layers x (Q, K, V, O: 32x32; FFN in and out: 32x64), fp32; biases and alignment on top
    fc_bytes = 2 * (4 * 32 * 32 + 2 * 32 * 64) * 4
    assert fc_bytes <= session.weight_cache.stat().st_size < 1.5 * fc_bytes


@needs_cache_api
def test_cache_of_another_model_is_never_picked(models, tmp_path):
    """XNNPACK looks packed weights up by tensor id: a cache from a model with the same
    structure but other weights would be used silently. The file name carries the sha256."""
    cache_dir = tmp_path / "cache"
    (a, b) = (models[0]["int8"], models[1]["int8"])
    first = backends.open_session("tflite", a, threads=1, weight_cache_dir=cache_dir)
    second = backends.open_session("tflite", b, threads=1, weight_cache_dir=cache_dir)
    assert first.weight_cache_state == second.weight_cache_state == "created"
    assert first.weight_cache != second.weight_cache
    want_b = _all_buckets(backends.open_session("tflite", b, threads=1))
    for got, expected in zip(_all_buckets(second), want_b):
        np.testing.assert_array_equal(got, expected)


@needs_cache_api
def test_foreign_cache_would_give_wrong_numbers(models, tmp_path):
    """Why the key matters (a check of XNNPACK's behaviour, not of ours): handing model B the
    cache built for model A, by claiming A's sha256, silently computes with A's weights. If this
    starts failing, XNNPACK validates caches itself; the keying stays correct either way."""
    cache_dir = tmp_path / "cache"
    (a, b) = (models[0]["fp32"], models[1]["fp32"])
    backends.open_session("tflite", a, threads=1, weight_cache_dir=cache_dir)
    lied = backends.open_session(
        "tflite", b, threads=1, weight_cache_dir=cache_dir, model_sha256=_sha(a)
    )
    assert lied.weight_cache_state == "reused"
    got = lied.run(_feeds())["last_hidden_state"]
    want = backends.open_session("tflite", b, threads=1).run(_feeds())["last_hidden_state"]
    assert not np.allclose(got, want, atol=1e-3)


@needs_cache_api
def test_unfinished_cache_files_are_not_trusted(models, tmp_path):
    path = models[0]["int8"]
    cache_dir = tmp_path / "cache"
    final = tflite.weight_cache_file(cache_dir, _sha(path), _litert_version())
    cache_dir.mkdir()
    # What XNNPACK leaves when killed mid-build: the header's version word is still zero.
    final.write_bytes(b"\0" * 4096)
    # A temporary build of a process that died (pid 2**22 + 1 is above Linux's pid_max).
    orphan = final.with_name(f".{final.name}.{2**22 + 1}.deadbeef.tmp")
    orphan.write_bytes(b"\0" * 64)
    session = backends.open_session("tflite", path, threads=1, weight_cache_dir=cache_dir)
    assert session.weight_cache_state == "created"
    assert not orphan.exists()
    assert final.read_bytes()[:8] != b"\0" * 8
    want = backends.open_session("tflite", path, threads=1).run(_feeds())["last_hidden_state"]
    np.testing.assert_array_equal(session.run(_feeds())["last_hidden_state"], want)


@needs_cache_api
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs POSIX processes")
def test_process_killed_while_publishing_leaves_no_trusted_cache(models, tmp_path):
    """SIGKILL between XNNPACK's last write and our rename: only a temporary file remains,
    which the next load ignores and removes; that load builds and publishes its own."""
    path = models[0]["int8"]
    cache_dir = tmp_path / "cache"
    code = textwrap.dedent(
        f"""
        import os, signal, sys
        sys.path.insert(0, {str(ROOT)!r})
        from edge_runtime.backends import _tflite_cache, tflite
        _tflite_cache._publish = lambda tmp, final: os.kill(os.getpid(), signal.SIGKILL)
        tflite.TfliteSession({str(path)!r}, threads=1, weight_cache_dir={str(cache_dir)!r})
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, check=False)
    assert done.returncode == -9, done.stderr.decode()[-2000:]
    leftovers = list(cache_dir.iterdir())
    assert len(leftovers) == 1 and leftovers[0].name.endswith(".tmp")

    session = backends.open_session("tflite", path, threads=1, weight_cache_dir=cache_dir)
    assert session.weight_cache_state == "created"
    name = session.weight_cache.name
    assert sorted(p.name for p in cache_dir.iterdir()) == [name, name + ".verified.json"]


@needs_cache_api
def test_interrupted_build_in_process_removes_its_temporary(models, tmp_path, monkeypatch):
    def interrupt(tmp, final):
        raise KeyboardInterrupt

    monkeypatch.setattr(_tflite_cache, "_publish", interrupt)
    cache_dir = tmp_path / "cache"
    with pytest.raises(KeyboardInterrupt):
        backends.open_session("tflite", models[0]["int8"], threads=1, weight_cache_dir=cache_dir)
    assert list(cache_dir.iterdir()) == []


@needs_cache_api
def test_discarded_cache_is_rebuilt(models, tmp_path):
    path = models[0]["int8"]
    cache_dir = tmp_path / "cache"
    session = backends.open_session("tflite", path, threads=1, weight_cache_dir=cache_dir)
    session.discard_weight_cache()
    assert not session.weight_cache.exists()
    session.run(_feeds())  # still runs from its own mapping
    again = backends.open_session("tflite", path, threads=1, weight_cache_dir=cache_dir)
    assert again.weight_cache_state == "created"


@needs_cache_api
def test_cache_edited_after_publishing_is_rebuilt_not_used(models, tmp_path, monkeypatch, caplog):
    """Issue 10: a cache file is checked against the sha256 recorded when it was published. An
    edit that keeps size and mtime (restored with utime) still changes ctime, so it is hashed,
    refused and rebuilt; an untouched one is not even read."""
    path = models[0]["int8"]
    cache_dir = tmp_path / "cache"
    want = _all_buckets(backends.open_session("tflite", path, threads=1))
    built = backends.open_session("tflite", path, threads=1, weight_cache_dir=cache_dir)
    assert built.weight_cache_state == "created"
    final = built.weight_cache
    record = json.loads(final.with_name(final.name + ".verified.json").read_text())
    assert record["sha256"] == _sha(final)
    del built  # unmaps the file before it is edited below

    hashed: list[str] = []
    real_sha256 = _cache.file_sha256
    monkeypatch.setattr(
        _cache, "file_sha256", lambda p: hashed.append(Path(p).name) or real_sha256(p)
    )
    reused = backends.open_session("tflite", path, threads=1, weight_cache_dir=cache_dir)
    assert reused.weight_cache_state == "reused" and hashed == [], "signed after the rename"
    del reused

    # Kernel timestamps are coarse: let a tick pass so the edit gets a new ctime.
    time.sleep(0.05)
    stat = final.stat()
    with open(final, "r+b") as handle:  # in place: same inode, same size
        handle.seek(stat.st_size // 2)
        byte = handle.read(1)
        handle.seek(stat.st_size // 2)
        handle.write(bytes([byte[0] ^ 0xFF]))
    os.utime(final, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert final.stat().st_size == stat.st_size and final.stat().st_mtime_ns == stat.st_mtime_ns
    assert _tflite_cache._looks_finalized(final), "the header alone does not give it away"
    with caplog.at_level(logging.WARNING, logger="edge_runtime"):
        again = backends.open_session("tflite", path, threads=1, weight_cache_dir=cache_dir)
    assert hashed == [final.name]
    assert "does not match its recorded sha256" in caplog.text
    assert again.weight_cache_state == "created" and again.weight_cache == final
    rebuilt = json.loads(final.with_name(final.name + ".verified.json").read_text())
    assert rebuilt["sha256"] == _sha(final)
    for got, expected in zip(_all_buckets(again), want):
        np.testing.assert_array_equal(got, expected)


@needs_cache_api
def test_cache_without_its_record_is_rebuilt(models, tmp_path, caplog):
    path = models[0]["int8"]
    cache_dir = tmp_path / "cache"
    built = backends.open_session("tflite", path, threads=1, weight_cache_dir=cache_dir)
    record = built.weight_cache.with_name(built.weight_cache.name + ".verified.json")
    record.unlink()
    del built
    with caplog.at_level(logging.WARNING, logger="edge_runtime"):
        again = backends.open_session("tflite", path, threads=1, weight_cache_dir=cache_dir)
    assert again.weight_cache_state == "created" and "no record of its content" in caplog.text
    assert record.exists()
    # An unreadable record is no better than none.
    del again
    record.write_text("{not json")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="edge_runtime"):
        third = backends.open_session("tflite", path, threads=1, weight_cache_dir=cache_dir)
    assert third.weight_cache_state == "created" and "is unreadable" in caplog.text
    want = backends.open_session("tflite", path, threads=1).run(_feeds())["last_hidden_state"]
    np.testing.assert_array_equal(third.run(_feeds())["last_hidden_state"], want)


@needs_cache_api
def test_cache_of_another_edge_runtime_version_is_not_used(models, tmp_path, monkeypatch):
    path = models[0]["int8"]
    cache_dir = tmp_path / "cache"
    first = backends.open_session("tflite", path, threads=1, weight_cache_dir=cache_dir)
    monkeypatch.setattr(edge_runtime, "__version__", "9.9.9")
    second = backends.open_session("tflite", path, threads=1, weight_cache_dir=cache_dir)
    assert second.weight_cache_state == "created"
    assert second.weight_cache != first.weight_cache and "-er9.9.9-" in second.weight_cache.name


@needs_cache_api
def test_cache_path_stays_lean(models, tmp_path):
    """The CompiledModel path imports no torch, transformers or onnx either."""
    code = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(ROOT)!r})
        from edge_runtime import backends
        s = backends.open_session(
            "tflite", {str(models[0]["int8"])!r}, threads=1, weight_cache_dir={str(tmp_path)!r}
        )
        assert s.weight_cache_state == "created", s.weight_cache_state
        heavy = sorted(m for m in ("torch", "transformers", "onnx", "litert_torch") if m in sys.modules)
        assert not heavy, heavy
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-3000:]


def test_runtime_without_the_cache_option_falls_back_to_the_interpreter(
    models, tmp_path, monkeypatch
):
    """An ai-edge-litert whose CpuOptions lacks xnnpack_weight_cache_path (older releases)."""
    from ai_edge_litert import compiled_model

    @dataclasses.dataclass
    class OldCpuOptions:
        num_threads: int = 0

    monkeypatch.setattr(compiled_model, "CpuOptions", OldCpuOptions)
    assert not tflite.weight_cache_supported()
    path = models[0]["int8"]
    session = backends.open_session("tflite", path, threads=1, weight_cache_dir=tmp_path / "c")
    assert session.weight_cache_state == "unsupported" and session.weight_cache is None
    assert not (tmp_path / "c").exists()
    want = backends.open_session("tflite", path, threads=1).run(_feeds())["last_hidden_state"]
    np.testing.assert_array_equal(session.run(_feeds())["last_hidden_state"], want)


@needs_cache_api
def test_unusable_cache_dir_falls_back_with_a_warning(models, tmp_path, caplog):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the cache directory should be")
    with caplog.at_level(logging.WARNING, logger="edge_runtime"):
        session = backends.open_session(
            "tflite", models[0]["int8"], threads=1, weight_cache_dir=blocker / "cache"
        )
    assert session.weight_cache_state == "failed"
    assert "weight cache unusable" in caplog.text
    assert session.run(_feeds())["last_hidden_state"].shape == (3, 20, 32)


@needs_cache_api
def test_no_cache_build_without_disk_space(models, tmp_path, monkeypatch, caplog):
    """XNNPACK aborts the process when a cache write fails (measured on a 2 MB tmpfs: SIGABRT),
    so a build needs room first."""
    one_mb_free = types.SimpleNamespace(total=1 << 30, used=(1 << 30) - (1 << 20), free=1 << 20)
    monkeypatch.setattr(_tflite_cache.shutil, "disk_usage", lambda path: one_mb_free)
    with caplog.at_level(logging.WARNING, logger="edge_runtime"):
        session = backends.open_session(
            "tflite", models[0]["int8"], threads=1, weight_cache_dir=tmp_path / "cache"
        )
    assert session.weight_cache_state == "failed" and "1 MB free" in caplog.text
    assert list((tmp_path / "cache").iterdir()) == []
    assert session.run(_feeds())["last_hidden_state"].shape == (3, 20, 32)


def test_cache_ignored_without_xnnpack(models, tmp_path):
    session = backends.open_session(
        "tflite", models[0]["fp32"], threads=1, xnnpack=False, weight_cache_dir=tmp_path / "c"
    )
    assert session.providers == ["builtin"] and session.weight_cache_state == "off"
    assert not (tmp_path / "c").exists()


def test_cache_file_name_is_keyed_by_model_runtime_edge_runtime_and_cpu(tmp_path, monkeypatch):
    a = tflite.weight_cache_file(tmp_path, "ab" * 32, "2.3.0")
    assert a.parent == tmp_path and a.suffix == ".xnnpack"
    assert a.name.startswith("ab" * 16 + "-litert2.3.0-er" + edge_runtime.__version__ + "-")
    assert a != tflite.weight_cache_file(tmp_path, "cd" * 32, "2.3.0")
    assert a != tflite.weight_cache_file(tmp_path, "ab" * 32, "2.4.0")
    assert a == tflite.weight_cache_file(tmp_path, "ab" * 32, "2.3.0")
    assert tflite.weight_cache_file(tmp_path, "ab" * 32, "2.3.0/../x").parent == tmp_path
    monkeypatch.setattr(_tflite_cache, "_cpu_tag", lambda: "00000000")
    assert a != tflite.weight_cache_file(tmp_path, "ab" * 32, "2.3.0")
    monkeypatch.undo()
    monkeypatch.setattr(edge_runtime, "__version__", "9.9.9/../x")
    other = tflite.weight_cache_file(tmp_path, "ab" * 32, "2.3.0")
    assert other != a and other.parent == tmp_path and "-er9.9.9_.._x-" in other.name


def _litert_version() -> str:
    return ai_edge_litert.__version__


# -- tflite-runtime 2.14 (numpy<2) in a fresh venv ------------------------------------------------

LEGACY_SUPPORTED = (
    sys.platform == "linux"
    and platform.machine() in ("x86_64", "aarch64")
    and (3, 9) <= sys.version_info[:2] <= (3, 11)  # the last tflite-runtime has no cp312 wheels
)


@pytest.mark.slow
@pytest.mark.skipif(
    not LEGACY_SUPPORTED, reason="tflite-runtime 2.14 wheels: Linux x86_64/aarch64, Python 3.9-3.11"
)
def test_legacy_tflite_runtime_runs_fp32_and_refuses_per_channel_int8(tiny_model_factory, tmp_path):
    sys.path.insert(0, str(ROOT / "tools"))
    import build_runtime_wheel

    from converters import ConvertConfig, convert

    out = tmp_path / "artifacts"
    convert(
        ConvertConfig(
            model=tiny_model_factory("bert", "feature-extraction"),
            target="rpi4",
            out=out,
            latency_runs=2,
        )
    )
    names = {a["name"] for a in json.loads((out / "manifest.json").read_text())["artifacts"]}
    assert {"tflite-fp32", "tflite-int8", "tflite-int8-legacy"} <= names
    reference = {name: _embed(out, name) for name in ("tflite-fp32", "tflite-int8")}

    wheel = build_runtime_wheel.build(tmp_path / "dist")
    env_dir = tmp_path / "legacy"
    venv.create(env_dir, with_pip=True)
    python = str(env_dir / "bin" / "python")
    pip = [python, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "--no-deps", str(wheel)], check=True)
    subprocess.run([*pip, "tflite-runtime==2.14.0", "numpy<2", "tokenizers", "psutil"], check=True)

    code = textwrap.dedent(
        f"""
        import json, logging, sys
        import numpy, tflite_runtime
        import edge_runtime
        logging.basicConfig(level=logging.WARNING, format="%(message)s")
        out = {str(out)!r}
        result = {{"numpy": numpy.__version__, "tflite_runtime": tflite_runtime.__version__}}
        model = edge_runtime.load(out, artifact="tflite-fp32")
        result["fp32_backend"] = model.backend
        # XNNPACK took part (tflite-runtime applies it only in allocate_tensors())
        ops = model._session._engine._interpreter._get_ops_details()
        result["delegate_nodes"] = sum(op["op_name"] == "DELEGATE" for op in ops)
        result["fp32"] = model.embed(["hello device", "a second sentence"]).tolist()
        try:
            edge_runtime.load(out, artifact="tflite-int8")
            result["int8"] = "loaded"
        except edge_runtime.GoldenMismatchError as exc:
            result["int8"] = "refused: " + str(exc)
        auto = edge_runtime.load(out)  # no onnxruntime here: TFLite only, INT8 preferred,
        # and the variant made for tflite-runtime ahead of the one that needs ai-edge-litert
        result["auto"] = auto.name
        heavy = [m for m in ("torch", "transformers", "onnx", "ai_edge_litert") if m in sys.modules]
        result["heavy"] = heavy
        print("RESULT " + json.dumps(result))
        """
    )
    done = subprocess.run(
        [python, "-c", code], capture_output=True, text=True, check=False, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.split("RESULT ", 1)[1])

    assert result["numpy"].startswith("1.") and result["tflite_runtime"] == "2.14.0"
    assert result["fp32_backend"].startswith("tflite-runtime 2.14.0")
    assert result["delegate_nodes"] > 0
    got = np.array(result["fp32"])
    want = reference["tflite-fp32"]
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert result["int8"].startswith("refused: ") and "last_hidden_state: cosine" in result["int8"]
    assert result["auto"] == "tflite-int8-legacy"
    assert result["heavy"] == []


def _embed(out: Path, name: str) -> np.ndarray:
    import edge_runtime

    return edge_runtime.load(out, artifact=name).embed(["hello device", "a second sentence"])


def test_the_installed_ai_edge_litert_offers_the_weight_cache():
    """ai-edge-litert is a required dependency, and the XNNPACK weight-cache tests skip when
    weight_cache_supported() says no: a release that renamed the API, or a probe that broke,
    would turn them all into skips while load() quietly ran without the cache. Every release
    the artifacts allow (min_runtime 2.3 and later) has it."""
    from importlib.metadata import version

    from edge_runtime.backends import tflite as tflite_backend

    assert tflite_backend.weight_cache_supported(), f"ai-edge-litert {version('ai-edge-litert')}"
