"""The tuning cache as read back on a device (edge_runtime/_tuning_cache.py, _select.threads_for)
and what edge-run --info and edge-tune say about it: a damaged file (not UTF-8, or JSON of the
wrong shape) is ignored with one warning, never a traceback; a cached thread count is held to the
CPUs this process may use now; a cache another account could write is not read; --info follows
--threads and --artifact as loading does; edge-tune tells a 5% tie from an artifact load() never
picks. On a hand-built artifact (tests/tiny_artifact.py): milliseconds, no conversion."""

from __future__ import annotations

import copy
import json
import logging
import os
from pathlib import Path

import pytest

import edge_runtime
import tiny_artifact
from edge_runtime import _select, _tune, _tuning_cache, cli, cli_tune
from edge_runtime.backends._cache import default_cache_dir, make_cache_dir

_RUNTIME = {"backends": [{"name": "onnxruntime", "execution_providers": ["CPUExecutionProvider"]}],
            "artifact_preference": ["fp16", "fp32"]}


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))


@pytest.fixture
def artifacts(tmp_path) -> Path:
    """onnx-fp32, and onnx-fp16 (the same files; the profile's first choice), and their pruned twin
    onnx-fp16-pruned: all three load."""
    root = tmp_path / "art"
    manifest = tiny_artifact.build(root, runtime=_RUNTIME)
    fp32 = manifest["artifacts"][0]
    manifest["artifacts"] += [{**copy.deepcopy(fp32), "name": "onnx-fp16", "precision": "fp16"},
                              {**copy.deepcopy(fp32), "name": "onnx-fp16-pruned", "precision": "fp16",
                               "pruning": {"request": "heads=0.33,ffn=0.5"}}]
    (root / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return root


def _manifest(root: Path) -> dict:
    return json.loads((root / "manifest.json").read_text())


def _entry(threads: int = 1, spinning: bool | None = True, p50: float = 5.0) -> dict:
    row = {"threads": threads, "spinning": spinning, "p50_ms": p50, "p90_ms": p50 + 1, "runs": 6}
    return {**row, "cpu_wait_share": 0.0, "sweep": [row], "input": {"batch": 1, "sequence": 3}}


def _valid(root: Path, **fields) -> dict:
    """A tuning result as a sweep writes it (with `fields` changed)."""
    names = [a["name"] for a in _manifest(root)["artifacts"]][:2]
    data = {"schema_version": _tune.SCHEMA_VERSION, "identity": _tuning_cache.identity(_manifest(root)),
            "device": {}, "artifacts": {n: _entry() for n in names}, "refused": {}, "fastest": names[1],
            "compared": {n: {"p50_ms": 5.0, "p90_ms": 6.0} for n in names}, "created": "now"}
    return {**data, **fields}


def _store(root: Path, content: bytes | dict) -> Path:
    path = _tune.cache_file(root)
    make_cache_dir(path.parent)  # owner-only, whatever the umask
    path.write_bytes(content if isinstance(content, bytes) else json.dumps(content).encode())
    return path


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def _fake_timing(monkeypatch, p50: dict[str, float]) -> None:
    """tune() without timing anything: each artifact's sweep and comparison scores are `p50`."""
    def sweep(root, manifest, entry, settings, rounds, budget_s, verify, signed_stats=None):
        return _entry(p50=p50[entry["name"]])

    monkeypatch.setattr(_tune, "_sweep", sweep)
    monkeypatch.setattr(_tune, "_compare", lambda root, manifest, tuned, order, rounds, budget_s, signed_stats=None: {
        n: {"p50_ms": p50[n], "p90_ms": p50[n]} for n in order})


# -- defects 1 and 2: a damaged file is ignored with one warning, replaced by the next tuning ------


def test_the_valid_shape_is_read(artifacts):
    _store(artifacts, _valid(artifacts))
    assert _tune.read_cached(artifacts, _manifest(artifacts))["fastest"] == "onnx-fp16"


_DAMAGED = {
    "not utf-8": b"\xff\xfe\x00garbage",  # an SD card after a power cut: UnicodeDecodeError
    "nested too deep": b"[" * 100_000,  # RecursionError inside json
    "compared of floats": {"compared": {"onnx-fp32": 31.9, "onnx-fp16": 13.4}},
    "compared a list": {"compared": ["onnx-fp16"]},
    "compared without p90": {"compared": {"onnx-fp16": {"p50_ms": 1.0}}},
    "compared p50 a string": {"compared": {"onnx-fp16": {"p50_ms": "fast", "p90_ms": 1.0}}},
    "threads a string": {"artifacts": {"onnx-fp16": {**_entry(), "threads": "2"}}},
    "threads a bool": {"artifacts": {"onnx-fp16": {**_entry(), "threads": True}}},
    "spinning a number": {"artifacts": {"onnx-fp16": {**_entry(), "spinning": 1}}},
    "entry without timings": {"artifacts": {"onnx-fp16": {"threads": 1, "spinning": True}}},
    "entry a list": {"artifacts": {"onnx-fp16": [1]}},
    "sweep row without runs": {"artifacts": {"onnx-fp16": {**_entry(), "sweep": [{"threads": 1, "spinning": None,
                                                                                  "p50_ms": 1.0, "p90_ms": 1.0}]}}},
    "input a list": {"artifacts": {"onnx-fp16": {**_entry(), "input": [1, 3]}}},
    "artifacts a list": {"artifacts": ["onnx-fp16"]},
    "refused a list": {"refused": ["onnx-fp32"]},
}


@pytest.mark.parametrize("damage", list(_DAMAGED), ids=list(_DAMAGED))
def test_a_damaged_tuning_file_is_ignored_with_one_warning(artifacts, caplog, damage):
    content = _DAMAGED[damage]
    path = _store(artifacts, content if isinstance(content, bytes) else _valid(artifacts, **content))
    with caplog.at_level(logging.WARNING, logger="edge_runtime"):
        assert _tune.read_cached(artifacts, _manifest(artifacts)) is None
    assert len(_warnings(caplog)) == 1, _warnings(caplog)
    assert f"tuning cache {path} is corrupted" in caplog.text and "the next tuning replaces it" in caplog.text


@pytest.mark.parametrize("damage", ["not utf-8", "compared of floats", "compared a list"])
def test_edge_run_and_edge_tune_go_on_past_a_damaged_file(artifacts, monkeypatch, capsys, damage):
    """edge-run --info, load() and edge-tune (the command that replaces the file) all crashed."""
    content = _DAMAGED[damage]
    path = _store(artifacts, content if isinstance(content, bytes) else
                  _valid(artifacts, fastest="onnx-fp32", **content))
    assert cli.main([str(artifacts), "--info"]) == 0
    assert "picks onnx-fp16 with" in capsys.readouterr().out, "the profile's order, as without a cache"
    _fake_timing(monkeypatch, {"onnx-fp32": 5.0, "onnx-fp16": 5.0})
    assert cli_tune.main([str(artifacts), "--artifact", "onnx-fp16", "--rounds", "1"]) == 0
    assert f"cached in {path}" in capsys.readouterr().out
    assert list(_tune.read_cached(artifacts, _manifest(artifacts))["artifacts"]) == ["onnx-fp16"], "replaced"


# -- defect 3: a cached thread count above the CPUs this process may use ---------------------------


def test_a_cached_thread_count_is_capped_at_the_usable_cpus(monkeypatch, caplog):
    """Tuned with 2 CPUs, run under taskset -c 0 / CPUAffinity= / a cpuset (the CPU tag the cache
    is named by does not change): 2 threads on 1 CPU ran 2x slower, without a word."""
    entry, manifest = {"name": "onnx-int8"}, {"runtime": {"threads": {"intra_op": 0}}}
    tuning = {"artifacts": {"onnx-int8": {"threads": 2, "spinning": True}}}
    monkeypatch.setattr(_select, "usable_cpus", lambda: 2)
    with caplog.at_level(logging.WARNING, logger="edge_runtime"):
        assert _select.threads_for(entry, manifest, tuning) == (2, True, "tuning cache")
    assert not _warnings(caplog)
    monkeypatch.setattr(_select, "usable_cpus", lambda: 1)
    with caplog.at_level(logging.WARNING, logger="edge_runtime"):
        assert _select.threads_for(entry, manifest, tuning) == (
            1, True, "tuning cache 2, capped at the 1 CPU this process may use")
    assert len(_warnings(caplog)) == 1
    assert "2 threads for onnx-int8 are more than the 1 CPU this process may use" in caplog.text
    assert "edge-tune" in caplog.text


def test_info_and_load_cap_a_cached_thread_count(artifacts, monkeypatch, capsys):
    _store(artifacts, _valid(artifacts, artifacts={"onnx-fp16": _entry(threads=16)}))
    monkeypatch.setattr(_select, "usable_cpus", lambda: 1)
    assert cli.main([str(artifacts), "--info"]) == 0
    out = capsys.readouterr().out
    assert ("load()   picks onnx-fp16 with 1 thread, spinning (tuning cache 16, capped at the 1 CPU this "
            "process may use)") in out, out
    assert edge_runtime.load(artifacts).threads == 1


# -- defect 4: --info --threads N --------------------------------------------------------------


def test_info_says_the_threads_given_with_the_flag(artifacts, capsys):
    _store(artifacts, _valid(artifacts))  # tuned: 1 thread
    assert cli.main([str(artifacts), "--info", "--threads", "3", "--json"]) == 0
    selection = json.loads(capsys.readouterr().out)["selection"]
    assert selection["threads"] == 3 and selection["threads_from"].startswith("given with --threads")
    assert selection["spinning"] is None, "load(threads=) leaves spinning to the backend"
    assert cli.main([str(artifacts), "--info", "--threads", "0", "--json"]) == 0
    selection = json.loads(capsys.readouterr().out)["selection"]
    assert selection["threads"] == _select.physical_cores() and "--threads 0" in selection["threads_from"]


# -- defect 5: --info --artifact <pruned twin> -------------------------------------------------


def test_info_describes_a_pruned_twin_asked_for_by_name(artifacts, capsys):
    assert cli.main([str(artifacts), "--info"]) == 0
    assert "not tried: onnx-fp16-pruned: a pruned twin" in capsys.readouterr().out, "never picked unasked"
    assert cli.main([str(artifacts), "--info", "--artifact", "onnx-fp16-pruned"]) == 0
    out = capsys.readouterr().out
    assert "load()   picks onnx-fp16-pruned with" in out and "not tried: onnx-fp16-pruned" not in out, out
    assert edge_runtime.load(artifacts, artifact="onnx-fp16-pruned").name == "onnx-fp16-pruned", "as loading does"
    # a real block is still said
    manifest = _manifest(artifacts)
    manifest["artifacts"][2]["min_runtime"] = {"onnxruntime": "99.0"}
    (artifacts / "manifest.json").write_text(json.dumps(manifest))
    assert cli.main([str(artifacts), "--info", "--artifact", "onnx-fp16-pruned"]) == 0
    out = capsys.readouterr().out
    assert "cannot run onnx-fp16-pruned here" in out and "needs onnxruntime >= 99.0" in out


# -- defect 6: edge-tune's 5% tie --------------------------------------------------------------


def test_edge_tune_tells_a_tie_from_an_artifact_load_never_picks(artifacts, monkeypatch, capsys):
    _fake_timing(monkeypatch, {"onnx-fp32": 5.0, "onnx-fp16": 5.1, "onnx-fp16-pruned": 2.0})
    assert cli_tune.main([str(artifacts), "--rounds", "1"]) == 0
    out = capsys.readouterr().out
    assert "kept first here: onnx-fp16 " in out and "never picks" not in out, out
    assert "onnx-fp32 is 2.0% faster than onnx-fp16, less than the 5%" in out, out
    assert "edge-run DIR --artifact onnx-fp32" in out
    assert cli_tune.main([str(artifacts), "--all", "--rounds", "1"]) == 0  # the twin: never picked
    out = capsys.readouterr().out
    assert "onnx-fp16-pruned is faster, but load() never picks it by itself" in out, out


# -- defect 8: a tuning cache another account could write ------------------------------------


@pytest.mark.parametrize("loose", ["directory", "file"])
def test_a_tuning_cache_others_can_write_is_not_read(artifacts, caplog, loose):
    path = _store(artifacts, _valid(artifacts))
    os.chmod(path.parent if loose == "directory" else path, 0o777 if loose == "directory" else 0o666)
    with caplog.at_level(logging.WARNING, logger="edge_runtime"):
        assert _tune.read_cached(artifacts, _manifest(artifacts)) is None
        assert edge_runtime.load(artifacts).name == "onnx-fp16"
    warned = _warnings(caplog)
    assert len(warned) == 2 and warned[0] == warned[1], "one warning per read"
    loose_path = path.parent if loose == "directory" else path
    assert f"not using the tuning cache {path}: {loose_path} is writable by its group and others" in warned[0]
    assert f"chmod -R go-w {default_cache_dir()}" in warned[0], warned[0]


def test_a_refused_write_names_the_real_fix(tmp_path, caplog):
    make_cache_dir(default_cache_dir())
    os.chmod(default_cache_dir(), 0o775)
    with caplog.at_level(logging.WARNING, logger="edge_runtime"):
        assert not _tuning_cache.write_atomic(_tuning_cache.cache_file(tmp_path), {"a": 1})
    assert f"{default_cache_dir()} is writable by its group (mode 0775)" in caplog.text
    assert f"chmod -R go-w {default_cache_dir()}" in caplog.text
    assert "to a writable directory" not in caplog.text, "it is writable: it is not private"
    caplog.clear()
    os.chmod(default_cache_dir(), 0o700)
    assert _tuning_cache.write_atomic(_tuning_cache.cache_file(tmp_path), {"a": 1})


# -- a damaged directory is not tuned past ---------------------------------------------------------


def test_edge_tune_stops_on_a_damaged_artifact_as_load_does(artifacts, capsys):
    """A hash that does not match made edge-tune record the artifact as refused, cache another as
    fastest and exit 0; load() then ran that other artifact without a word, where it had stopped
    on the damage before. Now the tuning stops on it too: exit 1, nothing cached, load() fails."""
    manifest = _manifest(artifacts)
    entry = next(a for a in manifest["artifacts"] if a["name"] == "onnx-fp16")
    digest = entry["files"][0]["sha256"]
    entry["files"][0]["sha256"] = digest[:-1] + ("0" if digest[-1] != "0" else "1")
    (artifacts / "manifest.json").write_text(json.dumps(manifest, indent=1))
    assert cli_tune.main([str(artifacts), "--rounds", "1"]) == 1
    out, err = capsys.readouterr()
    assert "do not match" in err and "cached in" not in out, (out, err)
    assert not _tune.cache_file(artifacts).exists()
    with pytest.raises(edge_runtime.ArtifactError):
        edge_runtime.load(artifacts)
