"""The ONNX device cache (edge_runtime/backends/onnx.py): every ONNX artifact's optimized graph and
prepacked weights are saved at its first load and memory-mapped by later ones; the artifact is
never written; entries are named by what they depend on; a file is re-hashed only when its stat
signature changed; an entry onnxruntime cannot load back is saved without prepacked weights."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import edge_runtime
from converters import ConvertConfig, convert
from edge_runtime.backends import _cache
from edge_runtime.backends import onnx as onnx_backend
from edge_runtime.backends.onnx import OnnxSession

TEXTS = ["hello device", "a somewhat longer second sentence for the model"]
LINUX_PROC = pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux /proc")


@pytest.fixture(scope="module")
def artifact(tiny_model_factory, tmp_path_factory):
    out = tmp_path_factory.mktemp("cold") / "bert"
    convert(
        ConvertConfig(
            model=tiny_model_factory("bert", "feature-extraction"),
            target="x86-avx2",
            out=out,
            latency_runs=1,
        )
    )
    return out


def _load(root: Path, name: str, cache, **kwargs):
    # threads given: no first-use thread sweep (edge_runtime/_tune.py), which is not under test here
    return edge_runtime.load(root, artifact=name, threads=1, weight_cache=cache, **kwargs)


def _snapshot(root: Path) -> dict[str, tuple[int, str]]:
    return {
        str(p.relative_to(root)): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.mark.slow  # a converted tiny model
@pytest.mark.parametrize("name", ["onnx-fp32", "onnx-int8"])
def test_every_onnx_artifact_is_cached_and_mapped_from_the_second_load(artifact, tmp_path, name):
    manifest = json.loads((artifact / "manifest.json").read_text())
    assert "load_cache" not in next(a for a in manifest["artifacts"] if a["name"] == name), (
        "the cache must not depend on a converter mark"
    )
    before = _snapshot(artifact)
    cache = tmp_path / "cache"
    plain, first, second = (_load(artifact, name, c) for c in (False, cache, cache))
    states = [m._session.optimized_cache_state for m in (plain, first, second)]
    assert states == [None, "created", "reused"]
    assert first._session.prepacked_weights_cached is True
    want = plain.embed(TEXTS)
    assert np.array_equal(want, first.embed(TEXTS)) and np.array_equal(want, second.embed(TEXTS))

    entry = second._session.optimized_cache
    # Next to the entry: only the records of passed checks (edge_runtime/_verified.py).
    assert entry.parent == cache and sorted(p.name for p in cache.iterdir()) == [entry.name, "verified"]
    data = entry / "model.onnx.data"
    # The artifact's weights plus the prepacked copies onnxruntime would otherwise make on the heap.
    assert data.stat().st_size > (artifact / f"{name}.onnx.data").stat().st_size
    if Path("/proc/self/maps").exists():
        assert str(data.resolve()) in Path("/proc/self/maps").read_text(), (
            "the entry's weights must be mapped"
        )
    assert _snapshot(artifact) == before, "the artifact directory must never be written"


def test_entry_name_covers_what_the_saved_form_depends_on(monkeypatch, tmp_path):
    cpu = [("CPUExecutionProvider", {})]
    base = onnx_backend._entry_dir(tmp_path, "ab" * 32, "1.32.0", "all", cpu)
    assert (
        base.parent == tmp_path and base.name.startswith("ab" * 16) and "-ort1.32.0-" in base.name
    )
    assert f"-er{edge_runtime.__version__}.{onnx_backend._ENTRY_FORMAT}-" in base.name
    variants = {
        "artifact": onnx_backend._entry_dir(tmp_path, "cd" * 32, "1.32.0", "all", cpu),
        "onnxruntime": onnx_backend._entry_dir(tmp_path, "ab" * 32, "1.33.0", "all", cpu),
        "level": onnx_backend._entry_dir(tmp_path, "ab" * 32, "1.32.0", "extended", cpu),
        "provider options": onnx_backend._entry_dir(
            tmp_path, "ab" * 32, "1.32.0", "all", [("CPUExecutionProvider", {"x": "1"})]
        ),
    }
    monkeypatch.setattr(onnx_backend, "cpu_tag", lambda: "00000000")
    variants["cpu"] = onnx_backend._entry_dir(tmp_path, "ab" * 32, "1.32.0", "all", cpu)
    monkeypatch.undo()
    monkeypatch.setattr(edge_runtime, "__version__", "9.9.9")
    variants["edge_runtime"] = onnx_backend._entry_dir(tmp_path, "ab" * 32, "1.32.0", "all", cpu)
    assert len({base, *variants.values()}) == 1 + len(variants), variants


@pytest.mark.slow  # a converted tiny model
def test_entry_files_are_rehashed_only_when_their_signature_changes(
    artifact, tmp_path, monkeypatch
):
    cache = tmp_path / "cache"
    want = _load(artifact, "onnx-int8", False).embed(TEXTS)
    entry = _load(artifact, "onnx-int8", cache)._session.optimized_cache
    hashed: list[str] = []
    # Loads check entries with backends/_cache.py's check_sha256, which hashes through this name.
    real_sha256 = _cache.file_sha256
    monkeypatch.setattr(
        _cache, "file_sha256", lambda path: hashed.append(path.name) or real_sha256(path)
    )

    def load_again() -> str:
        hashed.clear()
        model = _load(artifact, "onnx-int8", cache)
        assert np.array_equal(want, model.embed(TEXTS))
        return model._session.optimized_cache_state

    assert load_again() == "reused" and hashed == [], "signed, unchanged files are not read again"

    # Kernel timestamps are coarse (a clock tick of a few ms): let one pass, so the changes below
    # get a ctime that differs from the recorded one, as any later change would.
    time.sleep(0.05)
    data = entry / "model.onnx.data"
    stat = data.stat()
    os.utime(data, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same content and mtime, new ctime
    assert load_again() == "reused" and hashed == ["model.onnx.data"]
    assert load_again() == "reused" and hashed == [], "the new signature was recorded"

    # Same size and mtime restored by hand, different content: ctime gives it away.
    time.sleep(0.05)
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    data.write_bytes(bytes(raw))
    os.utime(data, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert data.stat().st_size == stat.st_size and data.stat().st_mtime_ns == stat.st_mtime_ns
    assert load_again() == "created", "a changed entry is rebuilt"

    # A record that vouches for another hash than complete.json's is not trusted.
    signed = json.loads((entry / "verified.json").read_text())
    signed["model.onnx"]["sha256"] = "0" * 64
    (entry / "verified.json").write_text(json.dumps(signed))
    assert load_again() == "reused" and hashed == ["model.onnx"]


@pytest.mark.slow  # a converted tiny model
def test_entry_without_prepacked_weights_when_onnxruntime_cannot_load_them_back(
    artifact, tmp_path, monkeypatch, caplog
):
    want = _load(artifact, "onnx-int8", False).embed(TEXTS)
    packed = (
        _load(artifact, "onnx-int8", tmp_path / "packed")._session.optimized_cache
        / "model.onnx.data"
    )
    real = onnx_backend._loads_back
    calls: list[int] = []

    def fails_first(*args):
        calls.append(1)  # a kernel without shared prepacked buffers fails like this on load
        return (
            "The kernel ... doesn't have an implementation that can consume provided "
            "pre-packed weights"
            if len(calls) == 1
            else real(*args)
        )

    monkeypatch.setattr(onnx_backend, "_loads_back", fails_first)
    cache = tmp_path / "cache"
    with caplog.at_level("WARNING", logger="edge_runtime"):
        first = _load(artifact, "onnx-int8", cache)
    assert (
        "cannot load the optimized model" in caplog.text and "with prepacked weights" in caplog.text
    )
    assert (first._session.optimized_cache_state, first._session.prepacked_weights_cached) == (
        "created",
        False,
    )
    entry = first._session.optimized_cache
    assert (entry / "model.onnx.data").stat().st_size < packed.stat().st_size, (
        "no prepacked copies in it"
    )
    second = _load(artifact, "onnx-int8", cache)
    assert second._session.optimized_cache_state == "reused"
    assert np.array_equal(want, first.embed(TEXTS)) and np.array_equal(want, second.embed(TEXTS))

    # Neither form loads back: no entry, no leftovers, the artifact still loads.
    monkeypatch.setattr(onnx_backend, "_loads_back", lambda *args: "does not load")
    other = tmp_path / "other"
    model = _load(artifact, "onnx-int8", other)
    assert model._session.optimized_cache_state == "unavailable"
    assert [p.name for p in other.iterdir()] == ["verified"] and np.array_equal(want, model.embed(TEXTS))


@pytest.mark.slow  # a converted tiny model
def test_sessions_with_other_providers_get_no_entry(artifact, tmp_path):
    import onnxruntime as ort

    # AzureExecutionProvider ships in the plain onnxruntime wheel: a non-CPU provider at hand.
    if "AzureExecutionProvider" not in ort.get_available_providers():
        pytest.skip(f"onnxruntime {ort.__version__} here has no provider besides the CPU's")
    session = OnnxSession(
        artifact / "onnx-int8.onnx",
        threads=1,
        execution_providers=("AzureExecutionProvider", "CPUExecutionProvider"),
        optimized_cache_dir=tmp_path / "cache",
        model_sha256="ab" * 32,
    )
    assert session.optimized_cache is None and session.optimized_cache_state is None
    assert not (tmp_path / "cache").exists()


CHILD = r"""
import sys
import numpy as np
from edge_runtime.backends.onnx import OnnxSession

def anon_mb():
    with open("/proc/self/status") as status:
        return next(int(l.split()[1]) / 1024 for l in status if l.startswith("RssAnon"))

cache = sys.argv[2]
before = anon_mb()
session = OnnxSession(sys.argv[1], threads=1, optimized_cache_dir=None if cache == "-" else cache,
                      model_sha256="ab" * 32)
session.run({"x": np.ones((4, 512), np.float32)})
print(session.optimized_cache_state, anon_mb() - before)
"""


@pytest.mark.slow  # a converted tiny model
@LINUX_PROC
def test_reused_entry_keeps_prepacked_weights_off_the_heap(tmp_path):
    """In fresh processes: onnxruntime prepacks 8 MB of MatMul weights into heap buffers at every
    plain start; opened from the entry, the packed weights are mapped from the file instead."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = [
        numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
        for name, shape in (("w1", (512, 2048)), ("w2", (2048, 512)))
    ]
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w1"], ["h"]),
            helper.make_node("Relu", ["h"], ["r"]),
            helper.make_node("MatMul", ["r", "w2"], ["y"]),
        ],
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 512])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 512])],
        weights,
    )
    path = tmp_path / "mlp.onnx"
    onnx.save(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]),
        path,
        save_as_external_data=True,
        location="mlp.onnx.data",
        size_threshold=1024,
    )

    def child(cache: str) -> tuple[str, float]:
        done = subprocess.run(
            [sys.executable, "-c", CHILD, str(path), cache],
            capture_output=True,
            text=True,
            check=True,
        )
        state, added = done.stdout.split()
        return state, float(added)

    cache = str(tmp_path / "cache")
    plain, created, reused = child("-"), child(cache), child(cache)
    assert (plain[0], created[0], reused[0]) == ("None", "created", "reused")
    weights_mb = 8.0
    assert plain[1] > 0.75 * weights_mb, (
        f"plain start: {plain[1]:.1f} MB anonymous (prepacked on the heap)"
    )
    assert reused[1] < plain[1] - 0.75 * weights_mb, (
        f"from the entry {reused[1]:.1f} MB vs plain {plain[1]:.1f} MB"
    )
