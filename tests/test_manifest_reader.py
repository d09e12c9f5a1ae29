"""The manifest reader refuses what it cannot use with ManifestError/ArtifactError, never a crash:
unknown schema versions, malformed JSON (with its position), missing or truncated files, paths
leaving the artifact directory. Hand-made directories, no torch, property-based (hypothesis)."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_runtime import ArtifactError, ManifestError, _compat, _model, _select, cli, read_manifest
from edge_runtime._manifest import (
    SUPPORTED_SCHEMA_VERSIONS,
    file_sha256,
    files_to_verify,
    resolve,
    verify_files,
)

_FIXTURE_OK = settings(max_examples=150, deadline=None,
                       suppress_health_check=[HealthCheck.function_scoped_fixture])


def _entry(root: Path, name: str, content: bytes) -> dict:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return {"path": name, "sha256": file_sha256(path), "bytes": len(content)}


def _valid(root: Path) -> dict:
    """A complete manifest (one artifact, golden sample, tokenizer) over real files."""
    golden = _entry(root, "golden/a.npz", b"golden")
    golden["tolerance"] = {"cosine_min": 0.999, "rel_l2_max": 0.01}
    return {
        "schema_version": 1, "target": {"id": "x86-avx2", "profile": {"int8": {"pair_sum_limit": 128}}},
        "source": {"name": "tiny"}, "task": "feature-extraction",
        "inputs": [{"name": "input_ids", "dtype": "int64", "shape": ["batch", "sequence"]}],
        "outputs": [{"name": "last_hidden_state", "dtype": "float32", "shape": ["batch", "sequence", 8]}],
        "tokenizer": {"files": [_entry(root, "tokenizer/tokenizer.json", b"{}"),
                                _entry(root, "tokenizer/tokenizer_config.json", b"{}")],
                      "max_length": 16, "pad_token_id": 0},
        "postprocess": {"pooling": "mean", "normalize": True, "output": "last_hidden_state"},
        "runtime": {"threads": {"intra_op": 0, "inter_op": 1}, "artifact_preference": ["int8", "fp32"],
                    "graph_optimization_level": "all",
                    "backends": [{"name": "onnxruntime", "execution_providers": ["CPUExecutionProvider"],
                                  "provider_options": {"CPUExecutionProvider": {}}}]},
        "artifacts": [{"name": "a", "format": "onnx", "precision": "int8", "metrics": {"cosine_mean": 0.99},
                       "requires": {"int8_gemm": ["int32", "s16-pairs"]},
                       "quantization": {"mode": "dynamic"}, "min_runtime": {"onnxruntime": "1.17"},
                       "files": [_entry(root, "m.onnx", b"model bytes")], "golden": golden}],
    }


def _write(root: Path, manifest) -> None:
    (root / "manifest.json").write_text(json.dumps(manifest))


# -- schema version ------------------------------------------------------------------------------


@pytest.mark.parametrize("version", [0, 2, 99, "1", 1.5, None, True, [1]])
def test_unknown_schema_version_lists_the_supported_ones(tmp_path, version):
    manifest = _valid(tmp_path)
    manifest["schema_version"] = version
    _write(tmp_path, manifest)
    with pytest.raises(ManifestError, match=r"schema_version .*; this edge_runtime reads schema_version 1"):
        read_manifest(tmp_path)
    assert SUPPORTED_SCHEMA_VERSIONS == (1,)


def test_valid_manifest_reads(tmp_path):
    manifest = _valid(tmp_path)
    _write(tmp_path, manifest)
    assert read_manifest(tmp_path) == manifest


# -- malformed JSON ------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["01", "int64,int64", "U8", "object", "complex64", "(2,)int64", "nonsense"])
def test_a_dtype_that_is_no_tensor_type_is_refused(tmp_path, dtype):
    """np.dtype() parses far more than tensor types ("01" made it raise SyntaxError, found by
    the fuzz test below): the reader refuses each with the field named."""
    manifest = _valid(tmp_path)
    manifest["inputs"][0]["dtype"] = dtype
    _write(tmp_path, manifest)
    with pytest.raises(ManifestError, match=r"inputs\[0\]: unknown dtype"):
        read_manifest(tmp_path)


def _bogus_pooling(m):
    m["postprocess"]["pooling"] = "bogus"


def _no_inputs(m):
    m["inputs"] = []


def _longer_than_positions(m):
    m["inputs"][0]["axis_max"] = {"sequence": 8}  # the tokenizer's max_length is 16


@pytest.mark.parametrize("edit, message", [
    (_bogus_pooling, r"postprocess.pooling 'bogus' is not one of \['mean', 'cls', 'max', 'mean_sqrt_len'\]"),
    (_no_inputs, r"inputs is empty"),
    (_longer_than_positions, r"tokenizer.max_length 16 is more than input 'input_ids' takes \(axis_max sequence 8\)"),
])
def test_values_every_run_would_fail_on_are_refused_at_load(tmp_path, edit, message):
    """Each passed the reader before, and then every embed() (or every long text) failed."""
    manifest = _valid(tmp_path)
    edit(manifest)
    _write(tmp_path, manifest)
    with pytest.raises(ManifestError, match=message):
        read_manifest(tmp_path)


# -- fields load() and classify() read: refused by the reader, naming the field ----------------


def _edit(where: tuple, value):
    """An edit setting the field at `where` (keys and list indices) to `value`."""
    def edit(manifest):
        parent = manifest
        for key in where[:-1]:
            parent = parent[key]
        parent[where[-1]] = value
    return edit


def _classifier(manifest, task: str, labels: list[str], last) -> None:
    """Make the valid manifest a classifier's whose logits' last axis is `last` (a size or a name)."""
    axes = ["batch", "sequence"] if task == "token-classification" else ["batch"]
    manifest["task"] = task
    manifest["outputs"] = [{"name": "logits", "dtype": "float32", "shape": [*axes, last]}]
    manifest["postprocess"] = {"labels": labels, "output": "logits"}


_BACKEND = ("runtime", "backends", 0)
_LEVELS_NAMED = r"is not one of \['disabled', 'basic', 'extended', 'all'\]"
_PROVIDERS = r"runtime.backends\[0\].execution_providers must be a list of provider names"
_OPTIONS = r"runtime.backends\[0\].provider_options must map provider names to objects of option values"
_QUANTIZATION = r"artifacts\[0\]: quantization must be an object \(with a string mode"
_MIN_RUNTIME = r"artifacts\[0\]: min_runtime must map package names to version strings"
_PROFILE = r"target.profile must be an object whose int8 and int4 are objects"


@pytest.mark.parametrize("where, value, message", [
    (("runtime", "graph_optimization_level"), "max", "graph_optimization_level 'max' " + _LEVELS_NAMED),
    (("runtime", "graph_optimization_level"), None, "graph_optimization_level None " + _LEVELS_NAMED),
    (("runtime", "graph_optimization_level"), 99, "graph_optimization_level 99 " + _LEVELS_NAMED),
    ((*_BACKEND, "execution_providers"), None, _PROVIDERS),
    ((*_BACKEND, "execution_providers"), "CPUExecutionProvider", _PROVIDERS),  # tuple() made it letters
    ((*_BACKEND, "execution_providers"), [1], _PROVIDERS),
    ((*_BACKEND, "provider_options"), [1], _OPTIONS),
    ((*_BACKEND, "provider_options"), {"CPUExecutionProvider": "fast"}, _OPTIONS),
    ((*_BACKEND, "provider_options"), {"TensorrtExecutionProvider": {"trt_fp16_enable": [True]}}, _OPTIONS),
    (("artifacts", 0, "quantization"), "dynamic", _QUANTIZATION),
    (("artifacts", 0, "quantization"), {"mode": 8}, _QUANTIZATION),
    (("artifacts", 0, "min_runtime"), "onnxruntime>=1.17", _MIN_RUNTIME),
    (("artifacts", 0, "min_runtime"), {"onnxruntime": 1.17}, _MIN_RUNTIME),
    (("target", "profile"), "x86-avx2", _PROFILE),
    (("target", "profile", "int8"), "dynamic", _PROFILE),
], ids=lambda v: ".".join(map(str, v)) if isinstance(v, tuple) else None)
def test_fields_loading_reads_are_checked_by_the_reader(tmp_path, capsys, where, value, message):
    """Each passed the reader and then crashed load() with a KeyError (backends/onnx.py's level
    table), TypeError (_model.py _backend_options, _compat.runtime_problem) or AttributeError
    (backends/onnx.py's provider options, Model.batch_dependent, _compat.required_int8_gemm):
    now a ManifestError naming the field, which edge-run prints as one line, exit status 1."""
    manifest = _valid(tmp_path)
    _edit(where, value)(manifest)
    _write(tmp_path, manifest)
    with pytest.raises(ManifestError, match=message):
        read_manifest(tmp_path)
    assert cli.main([str(tmp_path), "hi"]) == 1
    said = capsys.readouterr()
    assert said.out == "" and said.err.startswith("edge-run: error: ") and said.err.count("\n") == 1


@pytest.mark.parametrize("task, labels, last", [
    ("text-classification", ["negative", "positive"], 3),  # fewer: IndexError at a best index 2
    ("text-classification", ["a", "b", "c", "d"], 3),  # more: every name after the first wrong
    ("token-classification", ["O", "B-PER"], 5),
])
def test_labels_must_name_each_logit(tmp_path, task, labels, last):
    manifest = _valid(tmp_path)
    _classifier(manifest, task, labels, last)
    _write(tmp_path, manifest)
    with pytest.raises(ManifestError, match=rf"postprocess.labels has {len(labels)} names but the logits output "
                                            rf"gives {last} scores per row"):
        read_manifest(tmp_path)


@pytest.mark.parametrize("edit", [
    *(_edit(("runtime", "graph_optimization_level"), level) for level in ("disabled", "basic", "extended")),
    _edit((*_BACKEND, "provider_options"), {"TensorrtExecutionProvider": {"trt_fp16_enable": True,
                                                                          "trt_max_workspace_size": 2**30}}),
    _edit((*_BACKEND, "execution_providers"), []),
    _edit(("artifacts", 0, "quantization"), None),  # read as absent by Model.batch_dependent
    _edit(("artifacts", 0, "min_runtime"), None),
    _edit(("target", "profile"), None),
    lambda m: _classifier(m, "text-classification", ["negative", "neutral", "positive"], 3),
    lambda m: _classifier(m, "token-classification", ["O", "B-PER"], "labels"),  # classify() counts it
])
def test_well_formed_runtime_fields_still_read(tmp_path, edit):
    manifest = _valid(tmp_path)
    edit(manifest)
    _write(tmp_path, manifest)
    assert read_manifest(tmp_path) == manifest


def test_the_reader_knows_every_optimization_level_the_onnx_backend_maps():
    from edge_runtime._manifest import ONNX_OPTIMIZATION_LEVELS
    from edge_runtime.backends import onnx

    assert set(onnx._LEVELS) == set(ONNX_OPTIMIZATION_LEVELS)


def test_classify_counts_the_logits_of_an_axis_recorded_by_name(tmp_path):
    """The reader cannot count a last axis the manifest names instead of sizing: classify() checks
    the first batch's scores against the labels (an IndexError before: best score at index 2 of 2
    labels), and names the label of the best score when they match."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    tokenizer = Tokenizer(models.WordLevel({"[UNK]": 0, "hi": 1}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()

    class ThreeScores:  # a backend session whose logits favour the third class
        def run(self, feeds):
            return {"logits": np.tile(np.float32([0.0, 1.0, 5.0]), (len(feeds["input_ids"]), 1))}

    for labels in (["no", "yes"], ["a", "b", "c"]):
        manifest = _valid(tmp_path)
        _classifier(manifest, "text-classification", labels, "labels")
        manifest["tokenizer"]["files"][0] = _entry(tmp_path, "tokenizer/tokenizer.json", tokenizer.to_str().encode())
        _write(tmp_path, manifest)
        manifest = read_manifest(tmp_path)
        model = _model.Model(tmp_path, manifest, manifest["artifacts"][0], ThreeScores(), 1, 0.0)
        if len(labels) == 2:
            with pytest.raises(ManifestError, match=r"postprocess.labels has 2 names but the logits output gives 3 "
                                                    r"scores per row"):
                model.classify(["hi"])
        else:
            [result] = model.classify(["hi"])
            assert result["label"] == "c" and result["score"] == pytest.approx(np.exp(5) / (1 + np.e + np.exp(5)))


def test_classify_gives_the_k_best_labels_or_every_label_with_top_k(tmp_path):
    """classify() gave only the best label; top_k=k gives the k best per text, best first, and
    None every label's score (scores summing to 1); a bad top_k is an InputError naming it."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    tokenizer = Tokenizer(models.WordLevel({"[UNK]": 0, "hi": 1}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()

    class ThreeScores:
        def run(self, feeds):
            return {"logits": np.tile(np.float32([1.0, 0.0, 5.0]), (len(feeds["input_ids"]), 1))}

    manifest = _valid(tmp_path)
    _classifier(manifest, "text-classification", ["a", "b", "c"], "labels")
    manifest["tokenizer"]["files"][0] = _entry(tmp_path, "tokenizer/tokenizer.json", tokenizer.to_str().encode())
    _write(tmp_path, manifest)
    manifest = read_manifest(tmp_path)
    model = _model.Model(tmp_path, manifest, manifest["artifacts"][0], ThreeScores(), 1, 0.0)
    assert model.classify(["hi"])[0]["label"] == "c"
    [two] = model.classify(["hi"], top_k=2)
    assert [r["label"] for r in two] == ["c", "a"] and two[0]["score"] > two[1]["score"]
    [every] = model.classify(["hi"], top_k=None)
    assert [r["label"] for r in every] == ["c", "a", "b"] and sum(r["score"] for r in every) == pytest.approx(1.0)
    assert len(model.classify(["hi"], top_k=10)[0]) == 3
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(_model.InputError, match="top_k must be an int >= 1"):
            model.classify(["hi"], top_k=bad)


def _check_backend_options(options: dict) -> None:
    """What backends/onnx.py does with _backend_options' values, short of opening a session."""
    from edge_runtime.backends import onnx

    if not options:  # no onnxruntime entry in runtime.backends: the session's defaults
        return
    assert all(isinstance(name, str) for name in options["execution_providers"])
    assert options["graph_optimization_level"] in onnx._LEVELS
    for values in (options["provider_options"] or {}).values():
        {str(k): str(v) for k, v in values.items()}  # onnxruntime's set_provider_options


def test_malformed_json_gives_line_and_column(tmp_path):
    (tmp_path / "manifest.json").write_text('{\n  "schema_version": 1,\n  "task": oops\n}\n')
    with pytest.raises(ManifestError, match=r"not valid JSON: .* at line 3, column 11 \(character \d+\)"):
        read_manifest(tmp_path)


def test_non_utf8_manifest_gives_the_offset(tmp_path):
    (tmp_path / "manifest.json").write_bytes(b'{"schema_version": 1, "x": "\xff"}')
    with pytest.raises(ManifestError, match="not UTF-8 text .*offset 28"):
        read_manifest(tmp_path)


def test_truncated_manifest_is_a_manifest_error(tmp_path):
    """Every strict prefix of a manifest (a copy cut short): each is invalid JSON, the object
    never closes."""
    text = json.dumps(_valid(tmp_path), indent=1)
    for cut in range(len(text)):
        (tmp_path / "manifest.json").write_text(text[:cut])
        with pytest.raises(ManifestError, match=r"not valid JSON: .* at line \d+, column \d+"):
            read_manifest(tmp_path)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


@_FIXTURE_OK
@given(document=_json)
def test_any_json_document_reads_or_is_a_manifest_error(tmp_path, document):
    (tmp_path / "manifest.json").write_text(json.dumps(document))
    with pytest.raises(ManifestError):
        read_manifest(tmp_path)


def _paths(value, prefix=()):
    """Every (path of keys/indices) inside a JSON value."""
    yield prefix
    if isinstance(value, dict):
        for key, child in value.items():
            yield from _paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield from _paths(child, (*prefix, index))


@_FIXTURE_OK
@given(data=st.data())
def test_any_corrupted_field_is_refused_or_still_valid(tmp_path, data):
    """Replace or delete any one field of a valid manifest: the reader either accepts the result
    (whose every listed path then stays inside, and which selection and `edge-run --info` can use)
    or raises ManifestError; never another error."""
    manifest = _valid(tmp_path)
    where = data.draw(st.sampled_from([p for p in _paths(manifest) if p]))
    broken = copy.deepcopy(manifest)
    parent = broken
    for key in where[:-1]:
        parent = parent[key]
    if data.draw(st.booleans()):
        parent[where[-1]] = data.draw(_json | st.sampled_from(["../x", "/etc/passwd", "", -1, "zz"]))
    elif isinstance(parent, dict):
        del parent[where[-1]]
    else:
        parent.pop(where[-1])
    _write(tmp_path, broken)
    try:
        result = read_manifest(tmp_path)
    except ManifestError:
        return
    for entry in result["artifacts"]:
        for item in files_to_verify(result, entry):
            assert resolve(tmp_path, item["path"]).is_relative_to(tmp_path.resolve())
        _compat.required_int8_gemm(entry, result)
        _compat.runtime_problem(entry)
        _model.Model(tmp_path, result, entry, None, 1, 0.0).batch_dependent
    _check_backend_options(_model._backend_options(result, "onnx"))
    # what reads the manifest without opening a session: selection and `edge-run --info`
    _select.candidates(result)
    with contextlib.redirect_stdout(io.StringIO()):
        cli._print_info(cli._describe(str(tmp_path)))


# -- paths ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["../outside.onnx", "a/../../outside.onnx", "/etc/passwd", "",
                                 "a\x00b", "tokenizer/../../x"])
def test_paths_escaping_the_directory_are_refused(tmp_path, bad):
    root = tmp_path / "art"
    root.mkdir()
    manifest = _valid(root)
    manifest["tokenizer"]["files"][1]["path"] = bad
    _write(root, manifest)
    with pytest.raises(ManifestError, match="tokenizer.files\\[1\\]: manifest path .*(outside|relative)"):
        read_manifest(root)


def test_a_file_may_link_to_a_file_elsewhere_but_a_path_never_leaves_through_a_directory(tmp_path):
    """A file of the directory may be a symlink to a regular file anywhere (huggingface_hub's
    snapshots/REV/NAME -> ../../blobs/HASH; review item 7): its content is still hash-checked.
    A manifest path still cannot leave the directory through a linked directory, and a link to
    something that is not a regular file is refused; both say how to copy the directory."""
    root = tmp_path / "art"
    root.mkdir()
    (tmp_path / "elsewhere.onnx").write_bytes(b"model bytes")
    manifest = _valid(root)
    (root / "m.onnx").unlink()
    os.symlink(tmp_path / "elsewhere.onnx", root / "m.onnx")
    _write(root, manifest)
    files = read_manifest(root)["artifacts"][0]["files"]
    assert resolve(root, "m.onnx") == root.resolve() / "m.onnx"  # the link: data files are found next to it
    verify_files(root, files)
    (tmp_path / "elsewhere.onnx").write_bytes(b"model bytez")  # the content is what is checked
    with pytest.raises(ArtifactError, match="m.onnx: sha256"):
        verify_files(root, files)
    for target in (tmp_path, Path(os.devnull)):  # a directory, a device
        (root / "m.onnx").unlink()
        os.symlink(target, root / "m.onnx")
        with pytest.raises(ManifestError, match=r"'m.onnx' is a symlink to .*not a regular file.*cp -rL SRC DST"):
            read_manifest(root)
    # A directory symlink leading out is refused as a path leaving the directory.
    (root / "m.onnx").unlink()
    (root / "m.onnx").write_bytes(b"model bytes")
    os.symlink(tmp_path, root / "up")
    manifest["artifacts"][0]["files"][0]["path"] = "up/elsewhere.onnx"
    _write(root, manifest)
    with pytest.raises(ManifestError, match=r"'up/elsewhere.onnx' points outside .*cp -rL SRC DST"):
        read_manifest(root)


def test_a_huggingface_hub_snapshot_loads_and_runs(tmp_path):
    """`edge-run hub/snapshots/abc` on the layout snapshot_download leaves (every file a link
    into ../../blobs, the .onnx.data too, so onnxruntime must look for it next to the link):
    refused before; now the same numbers as the plain directory."""
    import edge_runtime
    import tiny_artifact

    plain = tmp_path / "plain"
    tiny_artifact.build(plain)
    snapshot, blobs = tmp_path / "hub" / "snapshots" / "abc", tmp_path / "hub" / "blobs"
    blobs.mkdir(parents=True)
    for path in sorted(p for p in plain.rglob("*") if p.is_file()):
        blob = blobs / file_sha256(path)
        blob.write_bytes(path.read_bytes())
        link = snapshot / path.relative_to(plain)
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(blob, link.parent), link)
    assert (snapshot / "onnx-fp32.onnx.data").is_symlink()
    with contextlib.redirect_stdout(io.StringIO()):
        assert cli.main([str(snapshot), "--info"]) == 0
    model = edge_runtime.load(snapshot, device_cache=tmp_path / "cache")
    got = model.run({"input_ids": tiny_artifact.IDS})["last_hidden_state"]
    np.testing.assert_array_equal(got, tiny_artifact.outputs(tiny_artifact.IDS))


def test_external_data_linked_alone_elsewhere_is_refused_up_front(tmp_path):
    """onnxruntime refuses a .onnx.data that links out of the directory its .onnx resolves into:
    the default load fell back to another artifact with exit 0 and onnxruntime's warnings, and
    --artifact failed with its raw text (a review, session 51). Now a layout error naming both
    ways out, before any load attempt; the .onnx linked too, into the data's directory, loads."""
    import edge_runtime
    import tiny_artifact

    root, elsewhere = tmp_path / "art", tmp_path / "disk2"
    tiny_artifact.build(root)
    elsewhere.mkdir()
    data = root / "onnx-fp32.onnx.data"
    os.replace(data, elsewhere / data.name)
    os.symlink(elsewhere / data.name, data)
    for cache in (tmp_path / "cache", False):
        with pytest.raises(ManifestError, match=r"onnx-fp32\.onnx\.data links to .*disk2/onnx-fp32\.onnx\.data, "
                           r"outside .*art \(where onnx-fp32\.onnx resolves\): onnxruntime reads .* link "
                           r"onnx-fp32\.onnx into .*disk2 too .* cp -rL SRC DST"):
            edge_runtime.load(root, device_cache=cache)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as err:
        assert cli.main([str(root), "hello"]) == 1
    assert "cp -rL SRC DST" in err.getvalue()
    model = root / "onnx-fp32.onnx"
    os.replace(model, elsewhere / model.name)
    os.symlink(elsewhere / model.name, model)
    got = edge_runtime.load(root, device_cache=False).run({"input_ids": tiny_artifact.IDS})["last_hidden_state"]
    np.testing.assert_array_equal(got, tiny_artifact.outputs(tiny_artifact.IDS))


def test_symlink_inside_the_directory_is_allowed(tmp_path):
    manifest = _valid(tmp_path)
    (tmp_path / "real.onnx").write_bytes(b"model bytes")
    (tmp_path / "m.onnx").unlink()
    os.symlink("real.onnx", tmp_path / "m.onnx")
    _write(tmp_path, manifest)
    verify_files(tmp_path, read_manifest(tmp_path)["artifacts"][0]["files"])


_segment = st.sampled_from(["..", ".", "a", "b", "", "m.onnx", "..."])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(parts=st.lists(_segment, min_size=1, max_size=6), absolute=st.booleans())
def test_resolve_never_returns_a_path_outside(tmp_path, parts, absolute):
    relative = ("/" if absolute else "") + "/".join(parts)
    try:
        path = resolve(tmp_path, relative)
    except ManifestError:
        return
    assert not absolute
    assert path.is_relative_to(tmp_path.resolve())


# -- files: missing, truncated, modified; tokenizer and golden included -------------------------


def test_every_loaded_file_is_listed_for_verification(tmp_path):
    manifest = _valid(tmp_path)
    listed = [item["path"] for item in files_to_verify(manifest, manifest["artifacts"][0])]
    assert listed == ["m.onnx", "golden/a.npz", "tokenizer/tokenizer.json", "tokenizer/tokenizer_config.json"]


def test_missing_truncated_and_modified_files_are_each_named(tmp_path):
    manifest = _valid(tmp_path)
    _write(tmp_path, manifest)
    items = files_to_verify(read_manifest(tmp_path), manifest["artifacts"][0])
    verify_files(tmp_path, items)  # intact
    (tmp_path / "m.onnx").write_bytes(b"model by")  # cut short
    (tmp_path / "tokenizer" / "tokenizer.json").write_bytes(b"[]")  # same size, other bytes
    (tmp_path / "golden" / "a.npz").unlink()
    (tmp_path / "golden" / "a.npz").mkdir()  # a directory where a file belongs: said so, not "missing"
    (tmp_path / "tokenizer" / "tokenizer_config.json").write_bytes(b"{}   ")  # bytes appended
    with pytest.raises(ArtifactError) as info:
        verify_files(tmp_path, items)
    message = str(info.value)
    assert "m.onnx: truncated: 8 bytes, manifest expects 11" in message
    assert "tokenizer/tokenizer_config.json: too long: 5 bytes, manifest expects 2" in message
    assert "golden/a.npz: a directory, not a file (manifest expects 6 bytes)" in message
    want = manifest["tokenizer"]["files"][0]["sha256"][:16]
    assert f"tokenizer/tokenizer.json: sha256 {file_sha256(tmp_path / 'tokenizer/tokenizer.json')[:16]}... " \
           f"differs from the manifest's {want}..." in message


@_FIXTURE_OK
@given(keep=st.integers(min_value=0, max_value=10))
def test_any_truncation_is_caught(tmp_path, keep):
    manifest = _valid(tmp_path)
    content = b"model bytes"
    (tmp_path / "m.onnx").write_bytes(content[:keep])
    with pytest.raises(ArtifactError, match=f"m.onnx: truncated: {keep} bytes, manifest expects 11"):
        verify_files(tmp_path, manifest["artifacts"][0]["files"])


@pytest.mark.parametrize("field,value,message", [
    ("sha256", "abc", "not 64 hexadecimal digits"),
    ("bytes", -1, "must be an integer >= 0"),
    ("bytes", "11", "must be an integer >= 0"),
])
def test_ill_formed_file_entries_are_refused(tmp_path, field, value, message):
    manifest = _valid(tmp_path)
    manifest["artifacts"][0]["golden"][field] = value
    _write(tmp_path, manifest)
    with pytest.raises(ManifestError, match=rf"artifacts\[0\].golden: .*{message}"):
        read_manifest(tmp_path)


@pytest.mark.parametrize("limits, message", [
    ({"values_below": 0}, "values_below must be an integer >= 1"),
    ({"values_below": "30522"}, "values_below must be an integer >= 1"),
    ({"axis_max": {"sequence": 0}}, "axis_max must map axis names to sizes >= 1"),
    ({"axis_max": [512]}, "axis_max must map axis names to sizes >= 1"),
])
def test_input_limits_are_checked(tmp_path, limits, message):
    manifest = _valid(tmp_path)
    manifest["inputs"][0].update(limits)
    _write(tmp_path, manifest)
    with pytest.raises(ManifestError, match=rf"inputs\[0\]: {message}"):
        read_manifest(tmp_path)
    manifest["inputs"][0].update({"values_below": 30522, "axis_max": {"sequence": 512}})
    _write(tmp_path, manifest)
    assert read_manifest(tmp_path)["inputs"][0]["values_below"] == 30522


def test_the_parent_of_several_targets_outputs_names_them(tmp_path):
    for target in ("rpi5", "x86-avx2"):
        (tmp_path / target).mkdir()
        _write(tmp_path / target, _valid(tmp_path / target))
    with pytest.raises(ManifestError, match=rf"holds the outputs of several targets; pass one of them: "
                                            rf"{tmp_path / 'rpi5'}, {tmp_path / 'x86-avx2'}"):
        read_manifest(tmp_path)
