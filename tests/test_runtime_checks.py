"""edge_runtime refuses what it cannot trust; edge-convert never leaves a half-written result."""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import edge_runtime
from converters import ConversionError, ConvertConfig, convert
from converters.packaging import package
from converters.packaging.package import file_entry

# slow tier: every test works on a converted tiny model
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def converted(tiny_model_factory, tmp_path_factory):
    out = tmp_path_factory.mktemp("conv") / "bert"
    convert(ConvertConfig(model=tiny_model_factory("bert", "feature-extraction"), target="x86-avx2",
                          out=out, latency_runs=2))
    return out


def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_tampered_weights_are_refused(converted, tmp_path):
    out = _copy(converted, tmp_path / "a")
    data = out / "onnx-int8.onnx.data"
    raw = bytearray(data.read_bytes())
    raw[-1] ^= 0xFF
    data.write_bytes(bytes(raw))
    with pytest.raises(edge_runtime.ArtifactError, match="onnx-int8.onnx.data: sha256"):
        edge_runtime.load(out)


def test_a_copy_trimmed_to_one_artifact_loads_it_and_an_incomplete_one_is_refused(converted, tmp_path):
    """A device copy may keep only the artifact it runs: the others' absent files skip them (and
    --info says so). An artifact with only some of its files is an incomplete copy: named, not
    skipped (it was: a trimmed copy failed to load because the profile's first choice was gone)."""
    out = _copy(converted, tmp_path / "trimmed")
    manifest = json.loads((out / "manifest.json").read_text())
    keep = "onnx-fp32"  # the profile prefers onnx-int8
    for entry in manifest["artifacts"]:
        if entry["name"] != keep:
            for f in [*entry["files"], entry["golden"]]:
                (out / f["path"]).unlink()
    assert edge_runtime.load(out).name == keep
    info = subprocess.run([sys.executable, "-m", "edge_runtime.cli", str(out), "--info"], capture_output=True,
                          text=True, check=True).stdout
    assert f"picks {keep}" in info and "onnx-int8: none of its model files is in this directory" in info
    (out / f"{keep}.onnx.data").unlink()
    with pytest.raises(edge_runtime.ArtifactError, match=rf"{keep}.onnx.data: missing"):
        edge_runtime.load(out)


def _break_golden(out, name):
    """Rewrite an artifact's golden outputs (and their hash) as if computed by a broken kernel."""
    manifest = json.loads((out / "manifest.json").read_text())
    entry = next(a for a in manifest["artifacts"] if a["name"] == name)
    path = out / entry["golden"]["path"]
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    for key in arrays:
        if key.startswith("output:"):
            arrays[key] = np.zeros_like(arrays[key]) + 0.5  # like an all-constant wrong answer
    np.savez(path, **arrays)
    entry["golden"].update(file_entry(out, path))
    (out / "manifest.json").write_text(json.dumps(manifest))


def test_wrong_numbers_are_refused(converted, tmp_path, caplog):
    out = _copy(converted, tmp_path / "b")
    _break_golden(out, "onnx-int8")
    with pytest.raises(edge_runtime.GoldenMismatchError, match="last_hidden_state: cosine"):
        edge_runtime.load(out, artifact="onnx-int8")
    # Automatic selection skips the refused artifact, says so, and takes the next one.
    with caplog.at_level(logging.WARNING, logger="edge_runtime"):
        model = edge_runtime.load(out)
    assert model.name == "onnx-fp32"
    assert "skipping artifact onnx-int8" in caplog.text


def test_input_errors_are_actionable(converted):
    model = edge_runtime.load(converted)
    with pytest.raises(edge_runtime.InputError, match="missing"):
        model.run({"input_ids": np.ones((1, 4), np.int64)})
    with pytest.raises(edge_runtime.InputError, match="list of strings"):
        model.embed("not a list")
    with pytest.raises(edge_runtime.InputError, match="classify"):
        model.classify(["x"])
    with pytest.raises(edge_runtime.InputError, match="no artifact 'nope'"):
        edge_runtime.load(converted, artifact="nope")


def test_threads_default_and_override(converted):
    assert edge_runtime.load(converted, threads=1).threads == 1
    assert edge_runtime.load(converted).threads >= 1


def test_import_and_use_stay_lean(converted):
    code = (
        "import sys, edge_runtime\n"
        f"m = edge_runtime.load({str(converted)!r})\n"
        "v = m.embed(['hello there'])\n"
        "assert v.shape[0] == 1\n"
        "heavy = [n for n in ('torch', 'transformers', 'onnx', 'onnx_ir', 'litert_torch') if n in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "HEAVY []" in done.stdout, done.stdout + done.stderr


def test_existing_output_needs_force(converted, tiny_model_factory):
    with pytest.raises(ConversionError, match="force=True"):
        convert(ConvertConfig(model=tiny_model_factory("bert", "feature-extraction"), target="x86-avx2",
                              out=converted))


def test_interrupted_conversion_leaves_nothing(tiny_model_factory, tmp_path, monkeypatch):
    calls = []
    original = package.save_onnx

    def interrupt_second_artifact(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(package, "save_onnx", interrupt_second_artifact)
    out = tmp_path / "result"
    with pytest.raises(KeyboardInterrupt):
        convert(ConvertConfig(model=tiny_model_factory("bert", "feature-extraction"), target="x86-avx2",
                              out=out, latency_runs=2))
    assert list(tmp_path.iterdir()) == [], "an interrupted run must leave no directory behind"


def test_force_replaces_a_previous_result(converted, tiny_model_factory, tmp_path):
    out = _copy(converted, tmp_path / "c")
    (out / "stale.txt").write_text("from an earlier run")
    convert(ConvertConfig(model=tiny_model_factory("bert", "feature-extraction"), target="rpi5",
                          out=out, force=True, latency_runs=2))
    assert not (out / "stale.txt").exists()
    assert json.loads((out / "manifest.json").read_text())["target"]["id"] == "rpi5"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux /proc to see mappings")
def test_weights_are_memory_mapped(tmp_path):
    # The tiny model's weights are below the external-data threshold, so use one with a table
    # big enough to be stored externally: the word embedding of a 4000 x 64 model.
    out = tmp_path / "mapped"
    convert(ConvertConfig(model=_wide_model(tmp_path), target="x86-avx2", out=out, latency_runs=1))
    model = edge_runtime.load(out, artifact="onnx-fp32")
    data_file = str((out / "onnx-fp32.onnx.data").resolve())
    assert data_file in Path("/proc/self/maps").read_text(), "ORT must map external weights, not copy them"
    del model


def _wide_model(tmp_path):
    import transformers
    from tiny_models import _tokenizer

    tokenizer = _tokenizer("wordpiece")
    config = transformers.BertConfig(vocab_size=4000, hidden_size=64, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=128, max_position_embeddings=64,
                                     pad_token_id=tokenizer.pad_token_id)
    directory = tmp_path / "wide"
    transformers.AutoModel.from_config(config).eval().save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def test_artifact_below_the_floor_is_refused_not_shipped(tiny_model_factory, tmp_path):
    # An unreachable floor: the FP32 fallback search keeps up to half of the weights in FP32
    # (the shared search's cap), then INT8 must be refused.
    out = tmp_path / "strict"
    result = convert(ConvertConfig(model=tiny_model_factory("bert", "feature-extraction"), target="x86-avx2",
                                   out=out, accuracy_floor=0.9999999, latency_runs=1))
    assert [a.name for a in result.artifacts] == ["onnx-fp32"]
    reasons = {r["name"]: r["reason"] for r in result.refused}
    assert set(reasons) == {"onnx-int8", "onnx-int4"}  # INT4: a tiny model misses the size budget
    assert "still below the accuracy floor" in reasons["onnx-int8"] and "(cap " in reasons["onnx-int8"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert [a["name"] for a in manifest["artifacts"]] == ["onnx-fp32"]
    assert {r["name"] for r in manifest["refused"]} == set(reasons)
    assert not list(out.glob("onnx-int8*")), "a refused artifact leaves no files"


def test_load_uses_and_heals_the_xnnpack_weight_cache(tiny_model_factory, tmp_path, caplog):
    """edge_runtime.load builds the TFLite weight cache at the first load, maps it at the next,
    and, when a cached file computes wrong numbers (bit rot), drops and rebuilds it instead of
    refusing a good artifact."""
    from edge_runtime.backends import tflite

    if not tflite.weight_cache_supported():
        pytest.skip("the installed TFLite runtime has no weight-cache option")
    out = tmp_path / "out"
    convert(ConvertConfig(model=tiny_model_factory("bert", "feature-extraction"), target="rpi4", out=out,
                          latency_runs=1))
    cache = tmp_path / "cache"
    texts = ["hello device", "a somewhat longer second sentence for the model"]
    plain = edge_runtime.load(out, artifact="tflite-int8", weight_cache=False)
    first = edge_runtime.load(out, artifact="tflite-int8", weight_cache=cache)
    second = edge_runtime.load(out, artifact="tflite-int8", weight_cache=cache)
    assert (plain._session.weight_cache_state, first._session.weight_cache_state,
            second._session.weight_cache_state) == ("off", "created", "reused")
    want = plain.embed(texts)
    assert np.array_equal(want, first.embed(texts)) and np.array_equal(want, second.embed(texts))

    raw = bytearray(second._session.weight_cache.read_bytes())
    for i in range(4096, len(raw) - 4096, 7):  # keep the header: only the packed data rots
        raw[i] ^= 0x55
    second._session.weight_cache.write_bytes(bytes(raw))
    # Rot below the file system: the sidecar still vouches for the bytes (its sha256 check is
    # tests/test_tflite_runtime.py's), so the golden sample is what catches the wrong numbers.
    cache_file = second._session.weight_cache
    record = cache_file.with_name(cache_file.name + ".verified.json")
    record.write_text(json.dumps({"sha256": hashlib.sha256(bytes(raw)).hexdigest(), "stat": None}))
    with caplog.at_level("WARNING", logger="edge_runtime"):
        healed = edge_runtime.load(out, artifact="tflite-int8", weight_cache=cache)
    assert healed._session.weight_cache_state == "created"
    assert "rebuilding the cache" in caplog.text
    assert np.array_equal(want, healed.embed(texts))


def test_load_uses_and_heals_the_onnx_optimized_model_cache(converted, tmp_path, caplog, monkeypatch):
    """Every ONNX artifact has its optimized graph (with prepacked weights) cached: built at the
    first load, opened at the next; a cache entry whose files changed is rebuilt, and one that
    computes wrong numbers with matching hashes (put there by hand) is dropped by the golden check.
    (tests/test_onnx_cold_start.py covers what the entry holds and when files are re-hashed.)"""
    import hashlib

    out = _copy(converted, tmp_path / "a")
    cache = tmp_path / "cache"
    texts = ["hello device", "a somewhat longer second sentence for the model"]

    def load(**kwargs):
        model = edge_runtime.load(out, artifact="onnx-int8", **kwargs)
        return model, model._session.optimized_cache_state

    plain, state = load(weight_cache=False)
    assert state is None
    want = plain.embed(texts)
    first, state_first = load(weight_cache=cache)
    second, state_second = load(weight_cache=cache)
    assert (state_first, state_second) == ("created", "reused")
    entry = second._session.optimized_cache
    assert entry.parent == cache and "-ort" in entry.name and not list(cache.glob(".*.tmp"))
    assert np.array_equal(want, first.embed(texts)) and np.array_equal(want, second.embed(texts))
    assert load(weight_cache=cache, verify=False)[1] is None, "unverified files never name a cache entry"

    # Files changed after the entry was made: hashes no longer match, the entry is rebuilt.
    data = entry / "model.onnx.data"
    raw = data.read_bytes()
    data.write_bytes(raw[:-1] + bytes([raw[-1] ^ 1]))
    rebuilt, state = load(weight_cache=cache)
    assert state == "created" and np.array_equal(want, rebuilt.embed(texts))

    # Wrong numbers behind matching hashes: the golden sample catches them, the entry is rebuilt.
    raw = bytearray(data.read_bytes())
    for i in range(0, len(raw), 3):
        raw[i] ^= 0x40
    data.write_bytes(bytes(raw))
    (entry / "complete.json").write_text(json.dumps(
        {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in entry.iterdir() if p.name != "complete.json"}))
    with caplog.at_level("WARNING", logger="edge_runtime"):
        healed, state = load(weight_cache=cache)
    assert state == "created" and "rebuilding the cache" in caplog.text
    assert np.array_equal(want, healed.embed(texts))

    # A cached graph onnxruntime cannot parse (hashes recorded for it): rebuilt at load.
    entry = healed._session.optimized_cache
    (entry / "model.onnx").write_bytes(b"not a model")
    (entry / "complete.json").write_text(json.dumps(
        {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in entry.iterdir() if p.name != "complete.json"}))
    with caplog.at_level("WARNING", logger="edge_runtime"):
        reparsed, state = load(weight_cache=cache)
    assert state == "created" and "does not load" in caplog.text
    assert np.array_equal(want, reparsed.embed(texts))

    # A cache location that cannot be written: the artifact loads without it.
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("")
    unwritable, state = load(weight_cache=blocked)
    assert state == "unavailable" and np.array_equal(want, unwritable.embed(texts))

    # onnxruntime cannot write the graph while it creates the session (disk full, directory
    # gone): the load still succeeds, without the cache.
    import shutil

    from edge_runtime.backends import onnx as onnx_backend

    start_entry = onnx_backend._start_entry

    def vanishing(entry, options):
        tmp = start_entry(entry, options)
        shutil.rmtree(tmp)
        return tmp

    monkeypatch.setattr(onnx_backend, "_start_entry", vanishing)
    fallback, state = load(weight_cache=tmp_path / "fresh-cache")
    assert state == "unavailable" and np.array_equal(want, fallback.embed(texts))
    monkeypatch.undo()

    # A bad entry that cannot be deleted (read-only cache): one retry, then the error, no loop.
    from edge_runtime.backends.onnx import OnnxSession

    entry = reparsed._session.optimized_cache
    raw = bytearray((entry / "model.onnx.data").read_bytes())
    for i in range(0, len(raw), 3):
        raw[i] ^= 0x40
    (entry / "model.onnx.data").write_bytes(bytes(raw))
    (entry / "complete.json").write_text(json.dumps(
        {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in entry.iterdir() if p.name != "complete.json"}))
    monkeypatch.setattr(OnnxSession, "discard_optimized_cache", lambda self: None)
    with pytest.raises(Exception) as failure:
        load(weight_cache=cache)
    assert not isinstance(failure.value, RecursionError)


def test_a_damaged_tokenizer_or_golden_file_is_an_artifact_error_even_unverified(converted, tmp_path, capsys):
    """verify=False skips the hashes; a damaged file must still be named, not surface as the
    tokenizers library's bare Exception or numpy's pickle advice."""
    from edge_runtime import cli_bench

    out = _copy(converted, tmp_path / "t")
    (out / "tokenizer" / "tokenizer.json").write_text("{not json")
    model = edge_runtime.load(out, verify=False)
    with pytest.raises(edge_runtime.ArtifactError, match=r"tokenizer.json: the artifact's tokenizer cannot be read"):
        model.embed(["a text"])
    assert cli_bench.main([str(out), "--runs", "2", "--rounds", "1", "-q", "--no-verify"]) == 1
    err = capsys.readouterr().err
    assert "edge-bench: error:" in err and "tokenizer cannot be read" in err and "Traceback" not in err
    # verified (the default), the hashes name the file first
    assert cli_bench.main([str(out), "--runs", "2", "--rounds", "1", "-q"]) == 1
    err = capsys.readouterr().err
    assert "edge-bench: error:" in err and "tokenizer/tokenizer.json: truncated" in err and "Traceback" not in err
    golden = out / json.loads((out / "manifest.json").read_text())["artifacts"][0]["golden"]["path"]
    golden.write_bytes(b"\x93NUMPY garbage")
    unverified = edge_runtime.load(out, artifact="onnx-fp32", verify=False)
    with pytest.raises(edge_runtime.ArtifactError, match="golden samples cannot be read"):
        unverified.self_check()


def test_the_tokenizer_used_is_the_one_verified_at_load(converted, tmp_path):
    """The tokenizer was read at the first embed(): a file rewritten after load was used unchecked,
    and a directory moved away after load (an update swapping versions) broke embed()."""
    out = _copy(converted, tmp_path / "v1")
    reference = edge_runtime.load(out)
    texts = ["hello world", "the quick brown fox"]
    expected = reference.embed(texts)
    count = len(reference._text().tokens(texts[0]))
    word = next(token for token, special in reference._text().tokens(texts[0]) if not special)
    model = edge_runtime.load(out, verify="full")  # its tokenizer not used yet
    tokenizer = out / "tokenizer" / "tokenizer.json"
    spec = json.loads(tokenizer.read_text())
    vocab = spec["model"]["vocab"]
    other = next(token for token in vocab if token != word and not token.startswith("["))
    vocab[word], vocab[other] = vocab[other], vocab[word]
    tokenizer.write_text(json.dumps(spec))  # rewritten in place after the load
    out.rename(tmp_path / "v1-old")  # and the directory moved away
    np.testing.assert_array_equal(model.embed(texts), expected)
    assert model._text().token_count(texts[0]) == (count, True)  # the untruncated copy too (truncate=False)

def test_threads_loading_one_artifact_at_once_share_one_cache_entry(converted, tmp_path, caplog):
    """Each thread builds in its own temporary directory; the first to finish publishes, the
    others keep theirs out of the way: no false "could not store" warnings, one entry."""
    import threading

    cache = tmp_path / "cache"
    models, errors = [], []

    def load() -> None:
        try:
            models.append(edge_runtime.load(converted, artifact="onnx-fp32", device_cache=cache))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    with caplog.at_level(logging.WARNING, logger="edge_runtime"):
        threads = [threading.Thread(target=load) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors and len(models) == 4
    assert "could not store" not in caplog.text, caplog.text
    assert not list(cache.glob(".*.tmp")), "no temporary build left behind"
    states = sorted(m._session.optimized_cache_state for m in models)
    assert states.count("created") >= 1 and set(states) <= {"created", "reused"}, states
    again = edge_runtime.load(converted, artifact="onnx-fp32", device_cache=cache)
    assert again._session.optimized_cache_state == "reused"


def test_edge_tune_says_when_its_result_could_not_be_cached(converted, tmp_path, capsys, monkeypatch, caplog):
    from edge_runtime import cli_tune

    blocker = tmp_path / "xdg"
    blocker.mkdir()
    (blocker / "edge_runtime").write_text("a file where the cache directory should be")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    with caplog.at_level(logging.WARNING, logger="edge_runtime"):
        assert cli_tune.main([str(converted), "--artifact", "onnx-int8", "--rounds", "1"]) == 1
    captured = capsys.readouterr()
    assert "NOT cached" in captured.out and "cached in" not in captured.out
    assert "could not write the tuning cache" in caplog.text and "XDG_CACHE_HOME" in caplog.text


@pytest.mark.parametrize("identity", [5, "x", None, []])
def test_a_tuning_cache_with_a_damaged_identity_is_ignored(converted, tmp_path, monkeypatch, caplog, identity):
    from edge_runtime import _tune

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    path = _tune.cache_file(converted)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"schema_version": _tune.SCHEMA_VERSION, "identity": identity,
                                "artifacts": {"onnx-int8": {"threads": 1}}}))
    with caplog.at_level(logging.WARNING, logger="edge_runtime"):
        assert _tune.read_cached(converted, edge_runtime.read_manifest(converted)) is None
        assert edge_runtime.load(converted).name == "onnx-int8"
    assert "is corrupted" in caplog.text


def test_a_runtime_older_than_an_artifacts_minimum_is_named_before_any_load(converted, monkeypatch):
    """onnxruntime 1.19-1.22 load an INT4 artifact and then fail on a UINT4 Cast as a missing
    kernel: the manifest's min_runtime says it first, for a named artifact and for the automatic
    choice alike."""
    import dataclasses

    from edge_runtime import _compat, _device
    from edge_runtime._errors import BackendUnavailableError

    assert _compat._release("1.22.1") == (1, 22, 1) and _compat._release("1.23.0.dev20250101+cpu") == (1, 23, 0)
    assert _compat._release("2.3") < _compat._release("2.10")  # numbers, not strings
    manifest = edge_runtime.read_manifest(converted)
    entry = next(a for a in manifest["artifacts"] if a["name"] == "onnx-int8")
    assert entry["min_runtime"] == {"onnxruntime": "1.17"}
    real = _device.detect(measure_int8=False).backends.get("onnxruntime")
    assert real is not None and _compat.runtime_problem(entry) is None  # this machine's

    here = _device.detect()
    older = dataclasses.replace(here, backends={**here.backends, "onnxruntime": "1.16.3"})
    monkeypatch.setattr(_device, "detect", lambda *args, **kwargs: older)
    problem = _compat.runtime_problem(entry)
    assert problem == ("onnx-int8 needs onnxruntime >= 1.17 (installed here: 1.16.3); "
                       "upgrade it: pip install -U 'onnxruntime>=1.17'")
    with pytest.raises(BackendUnavailableError, match=r"needs onnxruntime >= 1\.17 \(installed here: 1\.16\.3\)"):
        edge_runtime.load(converted, artifact="onnx-int8")
    # every ONNX artifact is too old here: the error lists each with its reason (not "install a backend")
    with pytest.raises(BackendUnavailableError) as caught:
        edge_runtime.load(converted)
    message = str(caught.value)
    assert "onnx-fp32: onnx-fp32 needs onnxruntime >= 1.17" in message and "install onnxruntime" not in message
    # an artifact for another package of the format is not judged by this one's version
    assert _compat.runtime_problem({**entry, "min_runtime": {"some-other-runtime": "9"}}) is None
