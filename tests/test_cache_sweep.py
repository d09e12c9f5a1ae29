"""The device caches do not grow without end (a review, session 51: each artifact version left an
onnxruntime entry of ~1.3x its FP32 files, forever). Writing an entry deletes the others beyond
the KEEP_ENTRIES most recently used that were idle for IDLE_S; a reused entry is marked used."""

from __future__ import annotations

import os
import time

import numpy as np

import tiny_artifact
from edge_runtime.backends import _cache


def test_sweep_keeps_the_recent_and_the_busy(tmp_path):
    now = 1_000_000.0
    entries = {}
    for i, age in enumerate([10, 20, 30, 7200, 9000, 30]):  # seconds since last use
        path = tmp_path / f"e{i}"
        path.mkdir()
        (path / "model.onnx").write_bytes(b"x")
        entries[path] = (now - age, [path])
    removed = _cache.sweep(entries, keep=2, idle=3600, now=now)
    # The two most recent stay; of the rest only the idle ones (over an hour) go.
    assert sorted(p.name for p in removed) == ["e3", "e4"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e0", "e1", "e2", "e5"]
    assert _cache.sweep({}, now=now) == []


def test_a_new_onnx_entry_sweeps_old_ones_and_a_reused_one_is_touched(tmp_path, monkeypatch):
    import edge_runtime

    cache = tmp_path / "cache"
    versions = []
    for scale in (1.0, 2.0, 3.0):  # three versions of one artifact: three entries
        root = tmp_path / f"v{scale}"
        tiny_artifact.build(root, scale=scale)
        versions.append(root)
    edge_runtime.load(versions[0], device_cache=cache)
    entries = cache  # an explicit device_cache path holds the entries and the verification records
    first = [d for d in entries.iterdir() if d.name != "verified"]
    assert len(first) == 1
    old = time.time() - 2 * _cache.IDLE_S
    os.utime(first[0], (old, old))
    monkeypatch.setattr(_cache, "KEEP_ENTRIES", 1)
    model = edge_runtime.load(versions[1], device_cache=cache)  # writes a second: the idle first goes
    names = [d.name for d in entries.iterdir() if d.name != "verified"]
    assert len(names) == 1 and names[0] != first[0].name
    np.testing.assert_array_equal(model.run({"input_ids": tiny_artifact.IDS})["last_hidden_state"],
                                  tiny_artifact.outputs(tiny_artifact.IDS, 2.0))
    # A reused entry is marked used now, so a sweep within the hour leaves it.
    second = entries / names[0]
    os.utime(second, (old, old))
    edge_runtime.load(versions[1], device_cache=cache)
    assert time.time() - second.stat().st_mtime < 60
    edge_runtime.load(versions[2], device_cache=cache)  # a third: the second was used just now, it stays
    kept = sorted(d.name for d in entries.iterdir())
    assert len(kept) == 3 and names[0] in kept and "verified" in kept, kept  # the records are never swept
    assert any((cache / "verified").rglob("*.json"))
