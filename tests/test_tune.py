"""Thread/artifact tuning (edge_runtime/_tune.py), the selection order with memory fit
(edge_runtime/_select.py, _memory.py), `edge-tune` and `edge-run --info`, on a tiny model."""

from __future__ import annotations

import copy
import dataclasses
import json
import re
import logging
import os
from pathlib import Path

import pytest

import edge_runtime
from converters import ConvertConfig, convert
from edge_runtime import _device, _memory, _model, _select, _tune, _tuning_cache, cli, cli_tune

DEVICES = Path(__file__).resolve().parent / "data" / "devices"


@pytest.fixture(scope="module")
def converted(tiny_model_factory, tmp_path_factory):
    out = tmp_path_factory.mktemp("tune") / "out"
    convert(
        ConvertConfig(
            model=tiny_model_factory("bert", "feature-extraction"),
            target="x86-avx2",
            out=out,
            latency_runs=2,
        )
    )
    return out


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    """Every test starts without tuning results (default_cache_dir() follows XDG_CACHE_HOME)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))


def _few_rounds(monkeypatch):
    monkeypatch.setattr(_tune, "FIRST_USE", {"rounds": 2, "budget_s": 0.5})


def _no_sweep(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a sweep ran although a valid tuning result was cached")

    monkeypatch.setattr(_tune, "_sweep", refuse)


def _edit_cache(root: Path, change) -> dict:
    path = _tune.cache_file(root)
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))
    return data


@pytest.mark.slow  # a converted tiny model
def test_first_use_sweeps_then_the_cache_is_used(converted, monkeypatch):
    _few_rounds(monkeypatch)
    assert not _tune.cache_file(converted).exists()
    first = edge_runtime.load(converted, tune=True)
    cached = json.loads(_tune.cache_file(converted).read_text())
    best = cached["artifacts"][first.name]
    candidates = _tune.thread_candidates(_device.detect(), first.manifest)
    # every setting was timed: threads x spinning on/off for onnxruntime
    assert sorted((r["threads"], r["spinning"]) for r in best["sweep"]) == sorted(
        (t, s) for t in candidates for s in (True, False)
    )
    assert all(r["runs"] == 2 * 3 and r["p50_ms"] > 0 for r in best["sweep"])
    assert first.threads == best["threads"] and best["input"] == {"batch": 1, "sequence": 128}
    assert cached["fastest"] is None, "first use tunes threads only, it does not compare artifacts"

    _no_sweep(monkeypatch)
    _edit_cache(converted, lambda d: d["artifacts"][first.name].update(threads=3, spinning=False))
    monkeypatch.setattr(_select, "usable_cpus", lambda: 8)  # 3 threads are within them (else capped)
    again = edge_runtime.load(converted)  # the default uses the cache
    assert again.threads == 3, "the cached setting is used"
    assert (
        again._session._session.get_session_options().get_session_config_entry(
            "session.intra_op.allow_spinning"
        )
        == "0"
    )


@pytest.mark.slow  # a converted tiny model
def test_explicit_threads_win_over_the_cache(converted, monkeypatch):
    _few_rounds(monkeypatch)
    edge_runtime.load(converted, tune=True)
    _edit_cache(converted, lambda d: [a.update(threads=3) for a in d["artifacts"].values()])
    _no_sweep(monkeypatch)
    assert edge_runtime.load(converted, threads=1).threads == 1
    assert edge_runtime.load(converted, artifact="onnx-fp32", threads=2).threads == 2
    assert edge_runtime.load(converted, tune=False).threads == _model.physical_cores(), (
        "tune=False: defaults"
    )


@pytest.mark.slow  # a converted tiny model
def test_by_default_load_never_sweeps(converted, monkeypatch):
    _no_sweep(monkeypatch)
    model = edge_runtime.load(converted)
    assert model.threads == _model.physical_cores() and not _tune.cache_file(converted).exists()


@pytest.mark.slow  # a converted tiny model
def test_corrupted_cache_is_ignored_and_rebuilt(converted, monkeypatch, caplog):
    _few_rounds(monkeypatch)
    path = _tune.cache_file(converted)
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    with caplog.at_level(logging.WARNING, logger="edge_runtime"):
        model = edge_runtime.load(converted)
    assert "corrupted" in caplog.text and str(path) in caplog.text
    assert model.threads == _model.physical_cores(), "defaults, as without a cache"
    model = edge_runtime.load(converted, tune=True)
    assert json.loads(path.read_text())["artifacts"][model.name]["threads"] == model.threads
    # valid JSON of the wrong shape is corruption too
    path.write_text(json.dumps({"schema_version": 1, "artifacts": {model.name: {"threads": 0}}}))
    assert _tune.read_cached(converted, model.manifest) is None


@pytest.mark.slow  # a converted tiny model
def test_cache_made_for_other_artifacts_or_versions_is_stale(converted, monkeypatch, caplog):
    _few_rounds(monkeypatch)
    manifest = edge_runtime.load(converted, tune=True).manifest
    assert _tune.read_cached(converted, manifest) is not None

    changed = copy.deepcopy(manifest)  # an artifact rebuilt in place: other hashes
    changed["artifacts"][0]["files"][0]["sha256"] = "0" * 64
    with caplog.at_level(logging.WARNING, logger="edge_runtime"):
        assert _tune.read_cached(converted, changed) is None
    assert "made for other artifacts" in caplog.text

    version = edge_runtime.__version__
    monkeypatch.setattr(edge_runtime, "__version__", "99.0")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="edge_runtime"):
        assert _tune.read_cached(converted, manifest) is None
    assert "made for other edge_runtime" in caplog.text
    monkeypatch.setattr(edge_runtime, "__version__", version)

    real = _device.detect()
    newer = dataclasses.replace(real, backends={**real.backends, "onnxruntime": "9.0.0"})
    monkeypatch.setattr(_device, "detect", lambda root="/", measure_int8=True: newer)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="edge_runtime"):
        assert _tune.read_cached(converted, manifest) is None
    assert "made for other backends" in caplog.text

    # and load() then measures again and replaces the stale file
    _few_rounds(monkeypatch)
    edge_runtime.load(converted, tune=True)
    assert _tune.read_cached(converted, manifest)["identity"]["backends"]["onnxruntime"] == "9.0.0"


@pytest.mark.slow  # a converted tiny model
def test_full_tune_compares_artifacts_and_load_follows_it(converted, monkeypatch):
    result = _tune.tune(converted, rounds=2)
    names = {"onnx-fp32", "onnx-int8"}
    assert set(result["artifacts"]) == names and set(result["compared"]) == names
    assert result["fastest"] in names and not result["refused"]
    # Which is faster is the machine's business; that load() follows the cache is ours: make the
    # profile's second choice the recorded fastest one.
    _edit_cache(converted, lambda d: d.update(fastest="onnx-fp32"))
    _no_sweep(monkeypatch)
    assert edge_runtime.load(converted).name == "onnx-fp32"
    assert edge_runtime.load(converted, tune=False).name == "onnx-int8", (
        "profile order without tuning"
    )
    info = cli._describe(str(converted))
    assert (
        info["selection"]["artifact"] == "onnx-fp32"
        and "fastest here" in info["selection"]["reason"]
    )
    # the memory it quotes first is the pick's own, then the profile's pick with its own
    from edge_runtime import _memory

    manifest = edge_runtime.read_manifest(converted)
    need = {e["name"]: _memory.fit(e, 10**6, 10**6)[1] for e in manifest["artifacts"]}
    reason = info["selection"]["reason"]
    own, _, profiles = reason.partition("; otherwise onnx-int8: ")
    assert need["onnx-fp32"].split(" of ")[0] in own and need["onnx-int8"].split(" of ")[0] in profiles, reason
    # a name the profile does not allow here is ignored
    _edit_cache(converted, lambda d: d.update(fastest="onnx-int4"))
    assert edge_runtime.load(converted).name == "onnx-int8"


@pytest.mark.slow  # a converted tiny model
def test_an_artifact_failing_its_golden_sample_is_refused_not_tuned(converted, monkeypatch):
    real_check = _model.Model.self_check

    def fail_int8(self, shortest_only=False):
        if self.name == "onnx-int8":
            raise edge_runtime.GoldenMismatchError("onnx-int8 computes wrong numbers here (test)")
        return real_check(self, shortest_only)

    monkeypatch.setattr(_model.Model, "self_check", fail_int8)
    result = _tune.tune(converted, rounds=1)
    assert (
        list(result["artifacts"]) == ["onnx-fp32"]
        and "wrong numbers" in result["refused"]["onnx-int8"]
    )
    assert result["fastest"] == "onnx-fp32" and result["compared"] is None


@pytest.mark.slow  # a converted tiny model
def test_representative_input_is_batch_one_at_the_typical_length(converted):
    manifest = edge_runtime.read_manifest(converted)
    entry = manifest["artifacts"][0]
    feeds = _tune.representative_feeds(converted, manifest, entry, 128)
    assert {k: v.shape for k, v in feeds.items()} == {
        i["name"]: (1, 128) for i in manifest["inputs"]
    }
    assert feeds["attention_mask"].min() == 1 and feeds["input_ids"].max() > 0


def test_scoring_p50_then_p90():
    a, b, c = _tune.Setting(1, True), _tune.Setting(2, True), _tune.Setting(2, False)
    assert _tune._best({a: (10.0, 30.0), b: (10.2, 12.0), c: (12.0, 12.0)}) == b  # p50 tie: p90
    assert _tune._best({a: (10.0, 30.0), b: (11.0, 12.0)}) == a  # 10% apart: p50 decides


@pytest.mark.parametrize(
    "device, profile_threads, want",
    [
        ("rk3588", 0, [1, 2, 4, 8]),  # 1, 2, the 4 big cores, all 8
        ("rpi4", 4, [1, 2, 4]),
        ("x86-epyc-7r32", 0, [1, 2]),  # 2 physical cores (4 logical)
        ("jetson-agx-orin", 0, [1, 2, 12]),
    ],
)
def test_thread_candidates(device, profile_threads, want, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)))
    info = _device.detect(DEVICES / device)
    manifest = {"runtime": {"threads": {"intra_op": profile_threads}}}
    assert _tune.thread_candidates(info, manifest) == want
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2})  # taskset -c 0-2
    assert _tune.thread_candidates(info, manifest) == sorted({min(t, 3) for t in want})


def test_profile_threads_are_capped_at_this_devices_cores(monkeypatch):
    entry = {"name": "onnx-int8"}
    manifest = {"runtime": {"threads": {"intra_op": 4}}}  # rpi4/rpi5: a Pi's 4 cores
    monkeypatch.setattr(_select, "physical_cores", lambda: 2)
    assert _select.threads_for(entry, manifest, None) == (2, None, "profile default 4, capped at this device's 2 cores")
    monkeypatch.setattr(_select, "physical_cores", lambda: 4)
    assert _select.threads_for(entry, manifest, None) == (4, None, "profile default")
    assert _select.threads_for(entry, {"runtime": {}}, None)[0] == 4  # no profile count: the cores
    # The directory's target is named: on an x86 box "profile default" read as this machine's profile.
    made_for = {**manifest, "target": {"id": "rpi5"}}
    monkeypatch.setattr(_select, "physical_cores", lambda: 2)
    assert _select.threads_for(entry, made_for, None)[2] == "rpi5 profile default 4, capped at this device's 2 cores"


def test_default_threads_count_the_big_cluster(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    monkeypatch.setattr(
        _device, "detect", lambda root="/", measure_int8=True: _device._detect(DEVICES / "rk3588", real=False)
    )
    assert _select.physical_cores() == 4, "4 Cortex-A76, not the 4 little A55 as well"


def _with_sizes(manifest: dict, mb: dict[str, float]) -> dict:
    changed = copy.deepcopy(manifest)
    for entry in changed["artifacts"]:
        entry["files"] = [{**entry["files"][0], "bytes": int(mb[entry["name"]] * 2**20)}]
    return changed


def test_a_weight_only_tflite_is_estimated_as_a_float_copy_per_signature():
    """tflite-int8-legacy (weight_only_wi8_afp32) is dequantized to float at load, once per
    signature: MiniLM's 23.9 MB file took 358-405 MB (edge_runtime/_memory.py). A review found it
    estimated like a GPTQ INT8 file (64 MB) and ranked as fitting a small board."""
    def entry(recipe, signatures):
        return {"format": "tflite", "precision": "int8", "files": [{"bytes": 24 * 2**20}],
                "quantization": {"recipe": recipe}, "tflite": {"signatures": signatures}}

    buckets = {"seq32": 32, "seq64": 64, "seq128": 128, "seq256": 256}
    assert _memory.estimate_mb(entry("gptq_wi8_afp32", buckets)) == 24 * 2.0 + 16
    assert _memory.estimate_mb(entry("weight_only_wi8_afp32", buckets)) == 24 * 4.5 * 4 + 16 > 405
    assert _memory.estimate_mb(entry("weight_only_wi8_afp32", {"seq128": 128})) == 24 * 4.5 + 16
    assert _memory.estimate_mb(entry("weight_only_wi8_afp32", None)) == 24 * 4.5 + 16  # unknown: one


@pytest.mark.slow  # a converted tiny model
def test_memory_fit_ranks_artifacts_that_do_not_fit_last(converted):
    manifest = _with_sizes(
        edge_runtime.read_manifest(converted), {"onnx-fp32": 90, "onnx-int8": 400}
    )
    pi = dataclasses.replace(_device.detect(DEVICES / "rpi4"), ram_total_mb=1024)  # a 1 GB board
    need = {e["name"]: _memory.estimate_mb(e) for e in manifest["artifacts"]}
    assert need == {"onnx-fp32": 90 * 1.0 + 16, "onnx-int8": 400 * 1.5 + 16}
    # 700 MB available, 102 MB kept free: fp32 (106 MB) fits, int8 (616 MB) does not
    plan = _select.plan(converted, manifest, pi, None, available_mb=700)
    assert [c.name for c in plan.choices] == ["onnx-fp32", "onnx-int8"]
    assert [c.fits for c in plan.choices] == [True, False]
    assert "needs ~616 MB but only 700 MB are available (102 MB kept free)" in plan.choices[1].notes
    assert plan.reason.endswith("ranked last for memory: onnx-int8")
    plenty = _select.plan(converted, manifest, pi, None, available_mb=4000)
    assert [c.name for c in plenty.choices] == ["onnx-int8", "onnx-fp32"], "the profile's order"
    neither = _select.plan(converted, manifest, pi, None, available_mb=100)
    assert [c.name for c in neither.choices] == [
        "onnx-int8",
        "onnx-fp32",
    ] and "none fits" in neither.reason


@pytest.mark.slow  # a converted tiny model
def test_load_ranks_by_available_memory(converted, monkeypatch, caplog):
    # the real artifacts are tiny: pretend only 60 MB are free, so int8's estimate cannot fit,
    # and fp32 is made to look small enough
    monkeypatch.setattr(_memory, "_FACTOR", {**_memory._FACTOR, ("onnx", "int8"): 1000.0})
    monkeypatch.setattr(_memory, "_OVERHEAD_MB", 0.0)
    monkeypatch.setattr(_memory, "headroom_mb", lambda total: 0.0)
    monkeypatch.setattr(_device, "available_mb", lambda root="/": 60)
    with caplog.at_level(logging.WARNING, logger="edge_runtime"):
        model = edge_runtime.load(converted, tune=False)
    assert model.name == "onnx-fp32"
    assert "artifact onnx-int8 may not fit this device's memory" in caplog.text


@pytest.mark.slow  # a converted tiny model
def test_edge_tune_cli(converted, capsys):
    assert (
        cli_tune.main([str(converted), "--artifact", "onnx-fp32", "--rounds", "1", "--json"]) == 0
    )
    result = json.loads(capsys.readouterr().out)
    assert list(result["artifacts"]) == ["onnx-fp32"] and result["fastest"] is None
    assert (
        Path(result["cache_file"]).exists()
        and result["device_info"]["arch"] == _device.detect().arch
    )
    assert cli_tune.main([str(converted), "--rounds", "1"]) == 0
    text = capsys.readouterr().out
    # "kept first here" when a faster one won by less than the tie (timing decides which)
    assert re.search(r"(fastest here|kept first here): onnx-", text) and "side by side" in text
    assert cli_tune.main([str(converted), "--artifact", "nope"]) == 1
    assert "no artifact 'nope'" in capsys.readouterr().err


@pytest.mark.slow  # a converted tiny model
def test_edge_run_info(converted, capsys, monkeypatch):
    assert cli.main([str(converted), "--info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    device = _device.detect()
    assert info["device"]["cpu_model"] == device.cpu_model
    assert info["device"]["features_of_interest"] == device.notable_features()
    assert info["profile"]["detected"] == _device.match_profile(device)[0]
    assert info["selection"]["artifact"] == "onnx-int8" and info["tuning"]["present"] is False
    assert info["selection"]["threads_from"] == "physical cores of the fastest cluster"
    assert [a["name"] for a in info["artifacts"]] == ["onnx-fp32", "onnx-int8"]
    _few_rounds(monkeypatch)
    assert edge_runtime.load(converted, tune=True).name == info["selection"]["artifact"], (
        "--info says what load() does"
    )
    assert cli.main([str(converted), "--info"]) == 0
    text = capsys.readouterr().out
    assert (
        "load()   picks onnx-int8" in text and "(tuning cache)" in text and device.cpu_model in text
    )


@pytest.mark.slow  # a converted tiny model
def test_artifacts_that_cannot_be_open_together_are_compared_by_their_sweeps(
    converted, monkeypatch, caplog
):
    # each tiny artifact needs ~16 MB: 20 MB free fits one, not both side by side
    monkeypatch.setattr(_memory, "headroom_mb", lambda total: 0.0)
    monkeypatch.setattr(_device, "available_mb", lambda root="/": 20)

    def refuse(*args, **kwargs):
        raise AssertionError("both artifacts were opened at once")

    monkeypatch.setattr(_tune, "_compare", refuse)
    with caplog.at_level(logging.WARNING, logger="edge_runtime"):
        result = _tune.tune(converted, rounds=1)
    assert "comparing their sweeps" in caplog.text
    assert set(result["compared"]) == {"onnx-fp32", "onnx-int8"}
    assert result["compared"]["onnx-int8"]["p50_ms"] == result["artifacts"]["onnx-int8"]["p50_ms"]
    assert result["fastest"] in result["compared"]


@pytest.mark.slow  # a converted tiny model
def test_a_sweep_on_a_busy_cpu_is_recorded_and_warned_of(converted, monkeypatch, caplog):
    from edge_runtime import _contention

    stalled = iter(range(0, 10**12, 10**7))  # +10 s stalled per reading: busy all the time
    monkeypatch.setattr(_contention, "_stalled_us", lambda path: next(stalled))
    with caplog.at_level(logging.WARNING, logger="edge_runtime"):
        busy = _tune.tune(converted, ["onnx-int8"], compare=False, rounds=2, write=False)
    assert busy["artifacts"]["onnx-int8"]["cpu_wait_share"] == 1.0
    assert "the CPU was busy during 100% of the timed runs" in caplog.text
    assert f"run `edge-tune {converted}` again" in caplog.text
    caplog.clear()
    monkeypatch.setattr(_contention, "_stalled_us", lambda path: 5)  # nothing waited
    with caplog.at_level(logging.WARNING, logger="edge_runtime"):
        quiet = _tune.tune(converted, ["onnx-int8"], compare=False, rounds=2, write=False)
    assert quiet["artifacts"]["onnx-int8"]["cpu_wait_share"] == 0.0 and "busy" not in caplog.text


def test_edge_tune_with_nothing_to_measure_says_why_and_keeps_the_cache(converted, monkeypatch, capsys):
    """A TFLite-only environment tuning an ONNX-only directory (the same cache directory as the
    ONNX environment's): one error with each artifact's reason, exit 1, the ONNX tuning kept.
    Every artifact refused: reported, exit 1, the cache unchanged too."""
    _few_rounds(monkeypatch)
    _tune.tune(converted, ["onnx-int8"], compare=False, rounds=2, budget_s=0.3)
    cached = _tune.cache_file(converted).read_bytes()

    real = _select.backends.backend_available
    monkeypatch.setattr(_select.backends, "backend_available", lambda fmt: fmt != "onnx" and real(fmt))
    assert cli_tune.main([str(converted), "--rounds", "2"]) == 1
    out, err = capsys.readouterr()
    assert "edge-tune: error: none of the artifacts in" in err and "need an onnx backend; install onnxruntime" in err
    assert "cached in" not in out
    assert _tune.cache_file(converted).read_bytes() == cached
    monkeypatch.setattr(_select.backends, "backend_available", real)

    def refused(*args, **kwargs):
        raise edge_runtime.GoldenMismatchError("computes wrong numbers here")

    monkeypatch.setattr(_tune, "_sweep", refused)
    assert cli_tune.main([str(converted), "--artifact", "onnx-fp32", "--rounds", "2"]) == 1
    out = capsys.readouterr().out
    assert "onnx-fp32: refused: computes wrong numbers here" in out
    assert "nothing was measured" in out and "is unchanged" in out
    assert _tune.cache_file(converted).read_bytes() == cached


@pytest.mark.slow  # a converted tiny model
def test_pruned_twins_are_never_chosen_automatically(converted):
    """A twin meets only the (lower) pruning floor: load() without artifact= never serves it, not
    as a fallback and not when a tuning result (edge-tune --all) found it fastest."""
    manifest = copy.deepcopy(edge_runtime.read_manifest(converted))
    int8 = next(a for a in manifest["artifacts"] if a["name"] == "onnx-int8")
    manifest["artifacts"].insert(0, {**copy.deepcopy(int8), "name": "onnx-int8-pruned",
                                     "pruning": {"request": "heads=0.33,ffn=0.5"}})
    assert [e["name"] for e in _select.candidates(manifest)][:2] == ["onnx-int8", "onnx-int8-pruned"]
    plan = _select.plan(converted, manifest, _device.detect(), {"fastest": "onnx-int8-pruned"})
    assert "onnx-int8-pruned" not in [c.name for c in plan.choices]
    assert plan.choices[0].name == "onnx-int8" and "loaded only by name" in plan.skipped["onnx-int8-pruned"]


def test_a_faster_pruned_twin_is_not_recorded_as_the_fastest(converted, tmp_path, monkeypatch, capsys):
    """edge-tune --all times twins too, but load() never picks one by itself: the recorded fastest
    (what load() reads) is the fastest artifact it may pick, and the table says how to get the twin.
    (The twin was recorded as fastest, and load() then fell back to the profile's order.)"""
    import shutil

    root = Path(shutil.copytree(converted, tmp_path / "with-twin"))
    manifest = json.loads((root / "manifest.json").read_text())
    int8 = next(a for a in manifest["artifacts"] if a["name"] == "onnx-int8")
    manifest["artifacts"].append({**copy.deepcopy(int8), "name": "onnx-int8-pruned",
                                  "pruning": {"request": "heads=0.33,ffn=0.5"}})
    (root / "manifest.json").write_text(json.dumps(manifest))
    p50 = {"onnx-fp32": 9.0, "onnx-int8": 5.0, "onnx-int8-pruned": 2.0}  # no timing: scores given

    def sweep(root, manifest, entry, settings, rounds, budget_s, verify, signed_stats=None):
        return {"threads": 1, "spinning": None, "p50_ms": p50[entry["name"]], "p90_ms": p50[entry["name"]],
                "cpu_wait_share": 0.0, "sweep": []}

    monkeypatch.setattr(_tune, "_sweep", sweep)
    monkeypatch.setattr(_tune, "_compare", lambda root, manifest, tuned, order, rounds, budget_s, signed_stats=None: {
        n: {"p50_ms": p50[n], "p90_ms": p50[n]} for n in order})
    result = _tune.tune(root, ["onnx-fp32", "onnx-int8-pruned", "onnx-int8"])
    assert set(result["compared"]) == set(p50) and result["fastest"] == "onnx-int8"
    assert cli_tune.main([str(root), "--all", "--rounds", "1"]) == 0
    out = capsys.readouterr().out
    assert "fastest here that load() may pick: onnx-int8 " in out
    assert "onnx-int8-pruned is faster, but load() never picks it by itself" in out
    assert "artifact='onnx-int8-pruned'" in out


def _cache_holding(root: Path, manifest: dict, threads: int) -> None:
    path = _tune.cache_file(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    row = {"threads": threads, "spinning": None, "p50_ms": 1.0, "p90_ms": 1.0, "runs": 3}  # as a sweep writes it
    path.write_text(json.dumps({"schema_version": _tune.SCHEMA_VERSION, "identity": _tuning_cache.identity(manifest),
                                "artifacts": {"onnx-int8": {**row, "sweep": [row]}}}))


def test_a_cached_thread_count_above_the_cap_is_ignored_like_corruption(tmp_path, caplog):
    """load(threads=) refuses more than _select.max_threads() (a typo grew past 16 GB while the
    backend started); a count read from the tuning cache is held to the same cap."""
    manifest = {"artifacts": [{"name": "onnx-int8", "format": "onnx", "files": [{"sha256": "ab" * 32}]}]}
    _cache_holding(tmp_path, manifest, _select.max_threads())
    assert _tune.setting_for(_tune.read_cached(tmp_path, manifest), "onnx-int8").threads == _select.max_threads()
    _cache_holding(tmp_path, manifest, _select.max_threads() + 1)
    with caplog.at_level(logging.WARNING, logger="edge_runtime"):
        assert _tune.read_cached(tmp_path, manifest) is None
    assert "is corrupted (bad entry for 'onnx-int8')" in caplog.text


def test_the_tuning_cache_takes_a_directory_whose_name_is_not_utf8(tmp_path):
    root = tmp_path / os.fsdecode(b"model-\xff")  # a name from a FAT card or another locale
    root.mkdir()
    path = _tune.cache_file(root)  # str(path).encode() raised UnicodeEncodeError
    assert path != _tune.cache_file(tmp_path / os.fsdecode(b"model-\xfe")), "named by the path's own bytes"
    manifest = {"artifacts": [{"name": "onnx-int8", "format": "onnx", "files": [{"sha256": "ab" * 32}]}]}
    assert _tune.read_cached(root, manifest) is None
    _cache_holding(root, manifest, 1)
    assert _tune.read_cached(root, manifest)["artifacts"]["onnx-int8"]["threads"] == 1
