"""Verified once per device (edge_runtime/_verified.py): a load of files that matched their sha256
before, unchanged since (stat signature), is not hashed again; a load on the same runtime, CPU,
threads and options as one whose golden samples all passed runs only the shortest sample. A
changed file, runtime, CPU, thread count or option means the full check again."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

import edge_runtime
from converters import ConvertConfig, convert
from edge_runtime import _golden, _manifest, _model, _verified
from edge_runtime._verified import Verifications, kernel_key, signatures_of

TEXTS = ["hello device", "a somewhat longer second sentence for the model"]


def _files(root: Path, count: int = 2) -> list[dict]:
    items = []
    for index in range(count):
        path = root / f"f{index}.bin"
        path.write_bytes(bytes([index]) * 1000)
        items.append({"path": path.name, "bytes": 1000, "sha256": _manifest.file_sha256(path)})
    return items


def _age(root: Path, items: list[dict], seconds: float = 10.0) -> None:
    """Backdate mtime (ctime cannot be: the records' settle rule is then lowered for the test)."""
    for item in items:
        path = root / item["path"]
        then = time.time() - seconds
        os.utime(path, (then, then))


# -- files (no conversion: milliseconds) ------------------------------------------------------


def test_settled_files_are_recorded_and_not_hashed_again(tmp_path, monkeypatch):
    items = _files(tmp_path)
    records = Verifications(tmp_path / "cache")
    assert records.unverified(tmp_path, items) == items  # nothing recorded yet
    monkeypatch.setattr(_verified, "SETTLE_SECONDS", 0.0)
    records.record_files(tmp_path, items, signatures_of(tmp_path, items))
    assert records.unverified(tmp_path, items) == []
    # Another Verifications on the same directory (another process) reads the same record.
    assert Verifications(tmp_path / "cache").unverified(tmp_path, items) == []


def test_fresh_files_are_not_recorded(tmp_path):
    """Written within SETTLE_SECONDS: a same-size write in the same timestamp tick could keep the
    signature, so the file is hashed again next time."""
    items = _files(tmp_path)
    records = Verifications(tmp_path / "cache")
    records.record_files(tmp_path, items, signatures_of(tmp_path, items))
    assert records.unverified(tmp_path, items) == items


@pytest.mark.parametrize("change", ["rewrite", "replace", "truncate", "delete", "manifest"])
def test_any_change_means_hashing_again(tmp_path, monkeypatch, change):
    items = _files(tmp_path)
    _age(tmp_path, items)
    monkeypatch.setattr(_verified, "SETTLE_SECONDS", 0.0)
    records = Verifications(tmp_path / "cache")
    records.record_files(tmp_path, items, signatures_of(tmp_path, items))
    path = tmp_path / items[0]["path"]
    stat = path.stat()
    if change == "rewrite":  # same size, mtime put back: ctime still moves
        time.sleep(0.01)
        path.write_bytes(b"\xff" * 1000)
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    elif change == "replace":
        (tmp_path / "new.bin").write_bytes(path.read_bytes())
        os.replace(tmp_path / "new.bin", path)
    elif change == "truncate":
        path.write_bytes(b"\x00" * 10)
    elif change == "delete":
        path.unlink()
    else:  # a re-converted artifact: the manifest expects another sha256
        items = [dict(items[0], sha256="0" * 64), items[1]]
    assert records.unverified(tmp_path, items) == [items[0]]


def test_unreadable_or_foreign_records_mean_a_full_check(tmp_path, monkeypatch):
    items = _files(tmp_path)
    monkeypatch.setattr(_verified, "SETTLE_SECONDS", 0.0)
    records = Verifications(tmp_path / "cache")
    records.record_files(tmp_path, items, signatures_of(tmp_path, items))
    assert records.unverified(tmp_path, items) == []  # the record works before it is damaged
    record = tmp_path / "cache" / "verified" / "files.json"
    for text in ("{not json", json.dumps({"format": 999, "files": {}}), json.dumps([1, 2])):
        record.write_text(text)
        assert records.unverified(tmp_path, items) == items
    assert Verifications(None).unverified(tmp_path, items) == items  # no cache: no records


def test_an_unwritable_cache_only_costs_a_full_check(tmp_path, monkeypatch):
    items = _files(tmp_path)
    monkeypatch.setattr(_verified, "SETTLE_SECONDS", 0.0)
    blocker = tmp_path / "cache"
    blocker.write_text("a file where the cache directory should be")
    records = Verifications(blocker)
    records.record_files(tmp_path, items, signatures_of(tmp_path, items))  # logged, not raised
    records.record_golden("k", {})
    assert records.unverified(tmp_path, items) == items and not records.golden_passed("k")


@pytest.mark.skipif(not hasattr(os, "geteuid"), reason="no POSIX owners here (Windows): nothing to check")
def test_records_under_a_device_cache_others_can_write_are_neither_kept_nor_trusted(tmp_path, monkeypatch, caplog):
    """Found by a review (session 49): the backends refused their entries under a device_cache
    folder writable by others, but the records that let a load skip hashing were still written
    and read there (only the record's own file and folder were checked, not the folder given)."""
    items = _files(tmp_path)
    monkeypatch.setattr(_verified, "SETTLE_SECONDS", 0.0)
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    records = Verifications(shared)
    records.record_files(tmp_path, items, signatures_of(tmp_path, items))
    records.record_golden("k", {})
    assert not (shared / "verified").exists()  # nothing made there
    # Records made while the folder was private are not trusted once others can write it.
    shared.chmod(0o700)
    records = Verifications(shared)
    records.record_files(tmp_path, items, signatures_of(tmp_path, items))
    records.record_golden("k", {})
    assert records.unverified(tmp_path, items) == [] and records.golden_passed("k")
    shared.chmod(0o777)
    records = Verifications(shared)
    assert records.unverified(tmp_path, items) == items and not records.golden_passed("k")
    # A folder between the root and the record: that record says so (the root is the backends' to report).
    shared.chmod(0o700)
    (shared / "verified").chmod(0o777)
    with caplog.at_level("WARNING", logger="edge_runtime"):
        assert Verifications(shared).unverified(tmp_path, items) == items
    assert "not using the verification record" in caplog.text and "writable by" in caplog.text


def test_kernel_key_covers_what_decides_the_numbers(tmp_path):
    items = _files(tmp_path)
    entry = {"name": "onnx-int8"}
    base = dict(entry=entry, items=items, backend="onnxruntime 1.32.0 (CPU)", cpu="abcd1234", threads=2,
                options={"graph_optimization_level": "all"})
    key = kernel_key(**base)
    assert key == kernel_key(**base)
    changed = [
        dict(base, entry={"name": "onnx-int4"}),
        dict(base, items=[dict(items[0], sha256="1" * 64), items[1]]),
        dict(base, backend="onnxruntime 1.33.0 (CPU)"),
        dict(base, cpu="ffff0000"),
        dict(base, threads=1),
        dict(base, options={"graph_optimization_level": "basic"}),
    ]
    assert len({kernel_key(**c) for c in changed} | {key}) == len(changed) + 1
    records = Verifications(tmp_path / "cache")
    assert not records.golden_passed(key)
    records.record_golden(key, {"samples": 4})
    assert records.golden_passed(key) and not records.golden_passed(kernel_key(**changed[4]))


def test_shortest_only_runs_the_sample_with_fewest_tokens(tmp_path):
    ran = []

    def run(feeds):
        ran.append(feeds["input_ids"].shape[1])
        return {"y": (2.0 * feeds["input_ids"]).astype(np.float32)}

    arrays = {}
    for prefix, n in (("", 40), ("sample1/", 3), ("sample2/", 12)):
        ids = np.arange(1, n + 1, dtype=np.int64)[None, :]
        arrays |= {f"{prefix}input:input_ids": ids, f"{prefix}output:y": 2.0 * ids.astype(np.float32)}
    np.savez(tmp_path / "g.npz", **arrays)
    tolerance = {"cosine_min": 0.9999, "rel_l2_max": 1e-4}
    golden = {"tolerance": tolerance, "samples": [{"prefix": p} for p in ("", "sample1/", "sample2/")]}
    entry = {"name": "a"}
    assert _golden.check_golden(run, tmp_path / "g.npz", golden, "a", "fake", entry) == 3
    assert ran == [40, 3, 12]
    ran.clear()
    assert _golden.check_golden(run, tmp_path / "g.npz", golden, "a", "fake", entry, shortest_only=True) == 1
    assert ran == [3]


def test_load_rejects_an_unknown_verify_mode(tmp_path):
    for verify in ("sometimes", 0, 1):  # 0 quietly turned verification off
        with pytest.raises(edge_runtime.InputError, match='verify must be True, False or "full"'):
            edge_runtime.load(tmp_path, verify=verify)


def test_load_rejects_a_memory_budget_it_cannot_split_by(tmp_path):
    """inf was accepted, then every call failed with numpy's 'cannot convert float NaN'."""
    for budget in (float("inf"), float("nan"), 0, -1, True):
        with pytest.raises(edge_runtime.InputError, match="memory_budget_mb must be a finite number"):
            edge_runtime.load(tmp_path, memory_budget_mb=budget)


# -- through load() on a converted tiny model ------------------------------------------------


@pytest.fixture(scope="module")
def artifact(tiny_model_factory, tmp_path_factory):
    out = tmp_path_factory.mktemp("once") / "bert"
    convert(ConvertConfig(model=tiny_model_factory("bert", "feature-extraction"), target="x86-avx2", out=out,
                          latency_runs=1))
    return out


class _Counting:
    """Counts the artifact files hashed and the golden samples run by each load."""

    def __init__(self, monkeypatch):
        self.hashed, self.samples = [], []
        real_hash, real_check = _manifest.file_sha256, _model.check_golden

        def file_sha256(path):
            self.hashed.append(Path(path).name)
            return real_hash(path)

        def check_golden(*args, **kwargs):
            count = real_check(*args, **kwargs)
            self.samples.append(count)
            return count

        monkeypatch.setattr(_manifest, "file_sha256", file_sha256)
        monkeypatch.setattr(_model, "check_golden", check_golden)

    def take(self) -> tuple[list[str], list[int]]:
        taken = (sorted(self.hashed), list(self.samples))
        self.hashed.clear()
        self.samples.clear()
        return taken


@pytest.mark.slow  # a converted tiny model
def test_second_load_skips_hashes_and_runs_the_shortest_sample(artifact, tmp_path, monkeypatch):
    monkeypatch.setattr(_verified, "SETTLE_SECONDS", 0.0)  # the tiny model was written just now
    cache = tmp_path / "cache"
    count = _Counting(monkeypatch)
    manifest = json.loads((artifact / "manifest.json").read_text())
    entry = next(a for a in manifest["artifacts"] if a["name"] == "onnx-int8")
    every_file = sorted(Path(i["path"]).name for i in _manifest.files_to_verify(manifest, entry))
    samples = len(entry["golden"]["samples"])
    assert samples > 1

    def load(**kwargs):
        options = dict(artifact="onnx-int8", threads=1, device_cache=cache) | kwargs
        return edge_runtime.load(artifact, **options)

    first = load()
    assert count.take() == (every_file, [samples])
    second = load()
    hashed, ran = count.take()
    assert [name for name in hashed if name in every_file] == [] and ran == [1]
    assert np.array_equal(first.embed(TEXTS), second.embed(TEXTS))
    # Another thread count: the files stay verified, the kernels are checked again (and recorded).
    load(threads=2)
    assert count.take() == ([], [samples])
    load(threads=2)
    assert count.take() == ([], [1])
    # verify="full": every file, every sample, whatever is recorded; verify=False: nothing.
    load(verify="full")
    hashed, ran = count.take()
    assert [name for name in hashed if name in every_file] == every_file and ran == [samples]
    load(verify=False)
    assert count.take()[1] == []
    # No device cache: no records, a full check every time.
    load(device_cache=False)
    load(device_cache=False)
    assert count.take()[1] == [samples, samples]


@pytest.mark.slow  # a converted tiny model
def test_a_changed_file_is_caught_after_records(artifact, tmp_path, monkeypatch):
    import shutil

    monkeypatch.setattr(_verified, "SETTLE_SECONDS", 0.0)
    out = tmp_path / "copy"
    shutil.copytree(artifact, out)
    cache = tmp_path / "cache"
    edge_runtime.load(out, artifact="onnx-int8", threads=1, device_cache=cache)
    edge_runtime.load(out, artifact="onnx-int8", threads=1, device_cache=cache)  # recorded, quick
    data = out / "onnx-int8.onnx.data"
    stat = data.stat()
    raw = bytearray(data.read_bytes())
    raw[-1] ^= 0xFF
    data.write_bytes(bytes(raw))
    os.utime(data, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # mtime put back: ctime tells
    with pytest.raises(edge_runtime.ArtifactError, match="onnx-int8.onnx.data: sha256"):
        edge_runtime.load(out, artifact="onnx-int8", threads=1, device_cache=cache)


@pytest.mark.slow  # a converted tiny model
def test_a_failing_short_check_falls_back_to_the_full_one(artifact, tmp_path, monkeypatch, caplog):
    import logging

    monkeypatch.setattr(_verified, "SETTLE_SECONDS", 0.0)
    cache = tmp_path / "cache"
    edge_runtime.load(artifact, artifact="onnx-int8", threads=1, device_cache=cache)
    real = _model.check_golden
    calls = []

    def flaky(*args, shortest_only=False, **kwargs):
        calls.append(shortest_only)
        if shortest_only:
            raise edge_runtime.GoldenMismatchError("as if the session computed wrong numbers")
        return real(*args, **kwargs)

    monkeypatch.setattr(_model, "check_golden", flaky)
    with caplog.at_level(logging.WARNING, logger="edge_runtime"):
        model = edge_runtime.load(artifact, artifact="onnx-int8", threads=1, device_cache=cache)
    assert "checking it in full" in caplog.text
    # The short check failed -> the same load again in full (every hash, every sample), which
    # passes here and says exactly what is wrong when it does not.
    assert calls[0] is True and calls[-1] is False and model.embed(TEXTS).shape[0] == 2

