"""Caches never change the artifact directory (README "What is guaranteed"): an rpi5 directory
(ONNX and TFLite artifacts) is snapshotted (every file and directory: size, mode, mtime, ctime,
sha256) before and after load() with its default arguments (device caches on: the ONNX
optimized graph, the XNNPACK weight cache, the verified records; the tuning cache read), each
artifact's first load with its tuning sweep (tune=True writes the tuning cache), the second
loads that map what the first ones built, and edge-tune. Nothing in it may change, while the
caches are shown to have been built and used (else the test would prove nothing)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

import edge_runtime

# slow tier: a converted tiny model (TFLite export included)
pytestmark = pytest.mark.slow

# a short text and one past the first TFLite bucket: both signatures run
TEXTS = ["hi", " ".join(["a rather long sentence that needs the larger bucket of the two"] * 3)]


@pytest.fixture(scope="module")
def rpi5(tiny_rpi5):
    return tiny_rpi5  # conftest.py: one rpi5 conversion per session (this test only reads it)


def _snapshot(root: Path) -> dict[str, tuple]:
    """Every entry under `root` (and root itself): directories by mode, mtime and ctime (a file
    made and removed again changes its directory's mtime), files also by size and sha256."""
    entries = {}
    for path in [root, *sorted(root.rglob("*"))]:
        st = path.lstat()
        key = str(path.relative_to(root)) + ("/" if path.is_dir() else "")
        facts: tuple = (st.st_mode, st.st_nlink, st.st_mtime_ns, st.st_ctime_ns)
        if path.is_file() and not path.is_symlink():
            facts += (st.st_size, hashlib.sha256(path.read_bytes()).hexdigest())
        entries[key] = facts
    return entries


def _cache_files(cache: Path) -> list[str]:
    return sorted(str(p.relative_to(cache)) for p in cache.rglob("*") if p.is_file())


def test_loads_tuning_and_edge_tune_never_write_the_artifact_directory(rpi5, tmp_path, monkeypatch):
    from edge_runtime import cli_tune
    from edge_runtime.backends import tflite

    # This test's own cache root: every cache is built here (created), not found from another test.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    cache = tmp_path / "xdg" / "edge_runtime"
    names = [a["name"] for a in json.loads((rpi5 / "manifest.json").read_text())["artifacts"]]
    assert {"onnx-fp32", "onnx-int8", "tflite-fp32", "tflite-int8"} <= set(names), names
    before = _snapshot(rpi5)

    def unchanged(after_what: str) -> None:
        after = _snapshot(rpi5)
        changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
        assert not changed, f"{after_what} changed the artifact directory: {changed}"

    default = edge_runtime.load(rpi5)  # every default: automatic choice, device cache on, tuning read
    default.embed(TEXTS)
    unchanged("load() with default arguments")

    states = {}
    for name in names:  # each artifact's first use: its thread sweep (tuning cache), its device cache
        model = edge_runtime.load(rpi5, artifact=name, tune=True)
        want = model.embed(TEXTS)
        session = model._session
        states[name] = [getattr(session, "optimized_cache_state", None) or getattr(session, "weight_cache_state")]
        unchanged(f"the first load of {name} (tune=True)")
        again = edge_runtime.load(rpi5, artifact=name)  # the second load: maps what the first built
        assert np.array_equal(want, again.embed(TEXTS)), name
        session = again._session
        states[name].append(getattr(session, "optimized_cache_state", None) or getattr(session, "weight_cache_state"))
        unchanged(f"the second load of {name}")

    # The caches were really built and then used, outside the directory.
    for name in names:
        if name.startswith("onnx"):
            assert states[name][1] == "reused", states
        elif tflite.weight_cache_supported():
            assert states[name][1] == "reused", states
    files = _cache_files(cache)
    assert any(f.startswith("tuning/") for f in files), files
    assert any("verified" in f for f in files), files

    (tuning,) = [cache / f for f in files if f.startswith("tuning/") and f.endswith(".json")]
    swept = json.loads(tuning.read_text())
    assert cli_tune.main([str(rpi5), "--all", "--rounds", "1"]) == 0
    unchanged("edge-tune --all")
    assert json.loads(tuning.read_text()) != swept  # edge-tune wrote its result there
    tuned = edge_runtime.load(rpi5)  # defaults again, now with the device's tuning result
    tuned.embed(TEXTS)
    unchanged("load() after edge-tune")
