"""The device-side review (s38, rev_device), items 2, 5, 6, 9 and 10: an artifact of a format or
precision this runtime does not know is left out with its reason instead of making the directory
unloadable; `edge-bench --json OUT` proves OUT writable before measuring (root included);
`edge-run` prints no model repr on stdout and speaks CLI when the directory has no tokenizer;
empty standard input and an empty directory argument are usage errors; a hash mismatch shows
digests that differ; a 0-d or 2-D string array is refused as what it is. Hand-built directories
(tests/tiny_artifact.py), no conversion."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import tiny_artifact

import edge_runtime
from edge_runtime import ManifestError, _device, _select, cli, cli_bench
from edge_runtime._inputs import check_texts
from edge_runtime._bench_schema import validate_bench
from edge_runtime._manifest import file_sha256, read_manifest, verify_files

# -- helpers -------------------------------------------------------------------------------------


def _file(root: Path, name: str, content: bytes) -> dict:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return {"path": name, "sha256": file_sha256(path), "bytes": len(content)}


def _listed(root: Path, name: str) -> dict:
    """The manifest's record of a file already written."""
    return {"path": name, "sha256": file_sha256(root / name), "bytes": (root / name).stat().st_size}


def _with_entry(root: Path, fmt: str = "coreml", precision: str = "int8", name: str = "coreml-int8",
                **changes) -> dict:
    """tiny_artifact's directory plus one artifact entry, well formed, of `fmt` / `precision`."""
    manifest = tiny_artifact.build(root)
    entry = {"name": name, "format": fmt, "precision": precision, "metrics": {"cosine_mean": 0.99},
             "files": [_file(root, f"{name}.bin", b"a model of a later format")],
             "golden": _file(root, f"golden/{name}.npz", b"golden"), **changes}
    manifest["artifacts"].append(entry)
    (root / "manifest.json").write_text(json.dumps(manifest))
    return manifest


def _text_artifact(root: Path, tokenizer: bool = True) -> dict:
    """tiny_artifact's directory with an attention_mask input (unused by the graph), mean pooling
    and a word-level tokenizer (tokenizer=False: none): embed() runs."""
    import onnx
    from onnx import TensorProto, helper
    from tokenizers import Tokenizer, models, pre_tokenizers

    manifest = tiny_artifact.build(root)
    graph = onnx.load(root / "onnx-fp32.onnx")  # its external data read along
    graph.graph.input.append(helper.make_tensor_value_info("attention_mask", TensorProto.INT64,
                                                           ["batch", "sequence"]))
    onnx.save(graph, root / "onnx-fp32.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
              location="onnx-fp32.onnx.data", size_threshold=0)
    ids = tiny_artifact.IDS
    np.savez(root / "golden" / "onnx-fp32.npz", **{"input:input_ids": ids, "input:attention_mask": (ids > 0) * 1,
                                                  "output:last_hidden_state": tiny_artifact.outputs(ids)})
    entry = manifest["artifacts"][0]
    entry["files"] = [_listed(root, name) for name in ("onnx-fp32.onnx", "onnx-fp32.onnx.data")]
    entry["golden"] = {**entry["golden"], **_listed(root, "golden/onnx-fp32.npz")}
    manifest["inputs"].append({"name": "attention_mask", "dtype": "int64", "shape": ["batch", "sequence"]})
    manifest["postprocess"] = {"pooling": "mean", "normalize": True, "output": "last_hidden_state"}
    if not tokenizer:
        (root / "manifest.json").write_text(json.dumps(manifest))
        return manifest
    words = Tokenizer(models.WordLevel({"[PAD]": 0, "[UNK]": 1, "hi": 2, "there": 3}, unk_token="[UNK]"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    manifest["tokenizer"] = {"files": [_file(root, "tokenizer/tokenizer.json", words.to_str().encode())],
                             "max_length": 16, "pad_token_id": 0}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return manifest


def _stdin(monkeypatch, data: bytes) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))


def _never_loaded(monkeypatch) -> None:
    def load(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(edge_runtime, "load", load)


UNKNOWN_FORMAT = (f"format 'coreml' is not known to edge_runtime {edge_runtime.__version__} "
                  "(it knows onnx, tflite): upgrade edge_runtime to use it")


# -- item 2: an artifact of a format (or precision) this runtime does not know --------------------


def test_an_unknown_format_is_left_out_and_the_known_artifacts_still_load(tmp_path):
    _with_entry(tmp_path)
    manifest = read_manifest(tmp_path)
    assert [a["name"] for a in manifest["artifacts"]] == ["onnx-fp32"]
    model = edge_runtime.load(tmp_path)
    assert model.name == "onnx-fp32"
    out = model.run({"input_ids": tiny_artifact.IDS})["last_hidden_state"]
    assert np.array_equal(out, tiny_artifact.outputs(tiny_artifact.IDS))
    # left out of automatic selection with its reason, as a missing backend is
    plan = _select.plan(tmp_path, manifest, _device.detect(), None)
    assert [c.name for c in plan.choices] == ["onnx-fp32"]
    assert plan.skipped == {"coreml-int8": UNKNOWN_FORMAT}


def test_an_unknown_precision_of_a_known_format_is_left_out_too(tmp_path):
    _with_entry(tmp_path, fmt="onnx", precision="fp8", name="onnx-fp8")
    manifest = read_manifest(tmp_path)
    assert [a["name"] for a in manifest["artifacts"]] == ["onnx-fp32"]
    plan = _select.plan(tmp_path, manifest, _device.detect(), None)
    assert plan.skipped["onnx-fp8"] == (f"precision 'fp8' is not known to edge_runtime {edge_runtime.__version__} "
                                        "(it knows fp32, fp16, int8, int4): upgrade edge_runtime to use it")
    assert edge_runtime.load(tmp_path).name == "onnx-fp32"


def test_edge_run_info_lists_an_unknown_format_with_its_reason(tmp_path, capsys):
    _with_entry(tmp_path)
    assert cli.main([str(tmp_path), "--info"]) == 0
    assert f"not tried: coreml-int8: {UNKNOWN_FORMAT}" in capsys.readouterr().out
    assert cli.main([str(tmp_path), "--info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["not_tried"]["coreml-int8"] == UNKNOWN_FORMAT
    assert info["selection"]["artifact"] == "onnx-fp32"


def test_an_unknown_format_asked_for_by_name_is_an_error_naming_the_reason(tmp_path, capsys):
    _with_entry(tmp_path)
    with pytest.raises(edge_runtime.InputError) as info:
        edge_runtime.load(tmp_path, artifact="coreml-int8")
    assert str(info.value) == f"artifact 'coreml-int8' in {tmp_path} cannot be loaded here: {UNKNOWN_FORMAT}"
    assert cli.main([str(tmp_path), "--artifact", "coreml-int8", "hi"]) == 1
    said = capsys.readouterr()
    assert said.err == f"edge-run: error: {info.value}\n" and said.out == ""
    assert cli.main([str(tmp_path), "--info", "--artifact", "coreml-int8"]) == 1
    assert UNKNOWN_FORMAT in capsys.readouterr().err
    # a name the directory does not have at all still lists what it has, and what it cannot read
    with pytest.raises(edge_runtime.InputError, match=r"no artifact 'nope' in .*; it has: onnx-fp32 "
                                                      r"\(and coreml-int8, which this edge_runtime cannot load\)"):
        edge_runtime.load(tmp_path, artifact="nope")


def test_only_unknown_artifacts_is_an_error_naming_each_reason(tmp_path):
    manifest = _with_entry(tmp_path)
    manifest["artifacts"] = manifest["artifacts"][1:]
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match="no artifact this edge_runtime can load:\n  coreml-int8: "
                                            + UNKNOWN_FORMAT.replace("(", r"\(").replace(")", r"\)")):
        read_manifest(tmp_path)


@pytest.mark.parametrize(("changes", "message"), [
    ({"files": []}, r"artifacts\[1\]: files must be a non-empty list"),
    ({"files": [{"path": "../outside.bin", "sha256": "0" * 64, "bytes": 1}]}, r"points outside"),
    ({"golden": None}, r"artifacts\[1\].golden must be an object"),
    ({"metrics": {"cosine_mean": "high"}}, r"metrics must map names to numbers"),
    ({"name": "onnx-fp32"}, r"duplicate artifact name 'onnx-fp32'"),
    ({"format": 5}, r"artifacts\[1\]: format must be a string, got 5"),
    ({"precision": ["int8"]}, r"artifacts\[1\]: precision must be a string, got \['int8'\]"),
])
def test_a_malformed_entry_is_still_an_error_whatever_its_format(tmp_path, changes, message):
    """Schema 1 fixes the shape of every artifact entry: only the values of format and precision
    are open to later converters."""
    _with_entry(tmp_path, **changes)
    with pytest.raises(ManifestError, match=message):
        read_manifest(tmp_path)


def test_a_malformed_known_entry_is_still_an_error(tmp_path):
    manifest = _with_entry(tmp_path)
    del manifest["artifacts"][0]["golden"]
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match=r"artifacts\[0\]: missing keys \['golden'\]"):
        read_manifest(tmp_path)


# -- item 5: edge-bench --json OUT proven writable before measuring --------------------------------


def _never_measured(monkeypatch) -> None:
    def run_bench(*args, **kwargs):
        raise AssertionError("measured before --json was checked")

    monkeypatch.setattr(cli_bench, "run_bench", run_bench)


def test_bench_json_whose_directory_cannot_be_made_is_refused_before_measuring(tmp_path, capsys, monkeypatch):
    """/proc/nope cannot be made, by root either (os.access said /proc was writable for root)."""
    _never_measured(monkeypatch)
    tiny_artifact.build(tmp_path / "art")
    out = Path("/proc/nope/x.json")
    assert cli_bench.main([str(tmp_path / "art"), "-q", "--json", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"edge-bench: error: --json {out}: cannot be written: ") and "/proc" in err
    assert err.count("\n") == 1


def test_bench_json_in_a_read_only_file_system_is_refused_before_measuring(tmp_path, capsys, monkeypatch):
    """A directory that exists but takes no new file (here /proc itself)."""
    _never_measured(monkeypatch)
    tiny_artifact.build(tmp_path / "art")
    assert cli_bench.main([str(tmp_path / "art"), "-q", "--json", "/proc/x.json"]) == 2
    assert "edge-bench: error: --json /proc/x.json: cannot be written: " in capsys.readouterr().err


def test_bench_json_check_creates_nothing_and_lets_a_writable_path_through(tmp_path, monkeypatch):
    class Measured(Exception):
        pass

    def run_bench(*args, **kwargs):
        raise Measured

    monkeypatch.setattr(cli_bench, "run_bench", run_bench)
    tiny_artifact.build(tmp_path / "art")
    (tmp_path / "results").mkdir()
    for out in (tmp_path / "results" / "x.json", tmp_path / "results" / "new" / "deeper" / "x.json"):
        with pytest.raises(Measured):
            cli_bench.main([str(tmp_path / "art"), "-q", "--json", str(out)])
    # the check left nothing behind: no probe file, no directory made before the result is written
    assert list((tmp_path / "results").iterdir()) == []


# -- item 6: edge-run's stdout and its no-tokenizer message ----------------------------------------


def test_edge_run_prints_one_line_per_text_and_no_model_repr(tmp_path, capsys):
    _text_artifact(tmp_path)
    assert cli.main([str(tmp_path), "hi", "hi there"]) == 0
    said = capsys.readouterr()
    lines = said.out.splitlines()
    assert len(lines) == 2 and all(line.startswith("  dim 8 norm 1.0000 [") for line in lines), said.out
    assert "<edge_runtime.Model" not in said.out + said.err


def test_edge_run_names_the_artifact_on_a_terminal_s_stderr(tmp_path, capsys, monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    _text_artifact(tmp_path)
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert cli.main([str(tmp_path), "hi", "--threads", "2"]) == 0
    model = edge_runtime.load(tmp_path)
    assert terminal.getvalue() == f"edge-run: onnx-fp32 (feature-extraction) on {model.backend}, 2 threads\n"
    assert model.backend.startswith("onnxruntime ")
    assert capsys.readouterr().out.startswith("  dim 8 ")


def test_edge_run_without_a_tokenizer_speaks_cli_and_the_api_its_own(tmp_path, capsys):
    _text_artifact(tmp_path, tokenizer=False)
    assert cli.main([str(tmp_path), "hi"]) == 1
    said = capsys.readouterr()
    assert said.out == ""
    assert said.err == (f"edge-run: error: {tmp_path} has no tokenizer (its manifest lists none), and edge-run "
                        "runs text: convert the model with its tokenizer, or run token ids through the "
                        "Python API (edge_runtime.load(DIR).run({...}))\n")
    with pytest.raises(edge_runtime.InputError, match=r"has no tokenizer .*: pass token ids to Model.run\(\)"):
        edge_runtime.load(tmp_path).embed(["hi"])


# -- item 9: edge-run input handling ---------------------------------------------------------------


def test_edge_run_empty_standard_input_is_an_error_also_beside_other_texts(tmp_path, capsys, monkeypatch):
    _text_artifact(tmp_path)
    _never_loaded(monkeypatch)
    for texts in (["-"], ["x", "-"], ["-", "x"]):
        _stdin(monkeypatch, b"")
        assert cli.main([str(tmp_path), *texts]) == 2
        said = capsys.readouterr()
        assert said.err == "edge-run: error: standard input has no lines\n" and said.out == ""


def test_edge_run_with_an_empty_directory_argument_is_a_usage_error(tmp_path, capsys, monkeypatch):
    tiny_artifact.build(tmp_path / "a" / "x86-avx2")  # what "" (the working directory) would list
    monkeypatch.chdir(tmp_path / "a")
    _never_loaded(monkeypatch)
    assert cli.main(["", "hi"]) == 2
    said = capsys.readouterr()
    assert said.err == ("edge-run: error: the artifact directory argument is empty (''); name an "
                        "edge-convert output directory, e.g. out/auto\n") and said.out == ""
    assert cli.main(["", "--info"]) == 2
    assert "argument is empty" in capsys.readouterr().err
    _never_measured(monkeypatch)
    assert cli_bench.main(["", "-q"]) == 2
    assert capsys.readouterr().err == ("edge-bench: error: the artifact directory argument is empty (''); "
                                       "name an edge-convert output directory, e.g. out/auto\n")


def test_an_empty_directory_is_refused_by_load_edge_tune_and_edge_serve(tmp_path, capsys, monkeypatch):
    """load("") loaded the working directory, and edge-tune / edge-serve "" read it as well."""
    from edge_runtime import cli_serve, cli_tune

    tiny_artifact.build(tmp_path)  # what "" would have loaded
    monkeypatch.chdir(tmp_path)
    with pytest.raises(edge_runtime.InputError, match="path is empty"):  # Path("") is "." already
        edge_runtime.load("")
    for main, prog in ((cli_tune.main, "edge-tune"), (cli_serve.main, "edge-serve")):
        assert main([""]) == 2
        assert capsys.readouterr().err.startswith(f"{prog}: error: the artifact directory argument is empty")


# -- item 10: hash-mismatch message; 0-d and 2-D string arrays ------------------------------------


def test_a_hash_mismatch_shows_digests_that_differ(tmp_path):
    path = tmp_path / "m.onnx"
    path.write_bytes(b"model bytes")
    actual = file_sha256(path)
    for same in (0, 16, 40, 63):  # the recorded digest agrees with the file's up to hex digit `same`
        wrong = actual[:same] + ("0" if actual[same] != "0" else "1") + actual[same + 1:]
        with pytest.raises(edge_runtime.ArtifactError) as info:
            verify_files(tmp_path, [{"path": "m.onnx", "sha256": wrong, "bytes": 11}])
        line = str(info.value).splitlines()[1]
        shown_actual = line.split("sha256 ")[1].split(" ")[0]
        shown_wrong = line.split("the manifest's ")[1].split(" ")[0]
        assert shown_actual != shown_wrong, line
        assert actual.startswith(shown_actual.removesuffix("...")) and wrong.startswith(shown_wrong.removesuffix("..."))
        assert f"first difference at hex digit {same + 1}" in line or same < 16


def test_a_zero_dimensional_string_array_is_refused_like_a_str(tmp_path):
    with pytest.raises(edge_runtime.InputError) as as_str:
        check_texts("a")
    with pytest.raises(edge_runtime.InputError) as as_array:
        check_texts(np.array("a"))
    assert str(as_array.value) == str(as_str.value)
    assert "wrap a single text in a list" in str(as_str.value)
    _text_artifact(tmp_path)
    with pytest.raises(edge_runtime.InputError, match="wrap a single text in a list"):
        edge_runtime.load(tmp_path).embed(np.array("hi"))


def test_a_two_dimensional_string_array_is_named_as_such():
    with pytest.raises(edge_runtime.InputError) as info:
        check_texts(np.array([["a", "b"], ["c", "d"]]))
    assert str(info.value) == "texts must be a list of str or a 1-D array of str, got a 2-D array"
    assert check_texts(np.array(["a", "b"])) == ["a", "b"]  # 1-D still reads


def test_edge_bench_all_and_edge_tune_all_name_an_unknown_format(tmp_path, monkeypatch, capsys):
    """--all runs every artifact of the manifest: one this edge_runtime cannot load was left out
    without a word."""
    from edge_runtime import _tune, cli_tune

    _with_entry(tmp_path)
    monkeypatch.setattr(_tune, "_sweep", lambda *a, **k: {"threads": 1, "spinning": None, "p50_ms": 1.0,
                                                          "p90_ms": 1.0, "cpu_wait_share": 0.0, "sweep": []})
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    cli_tune.main([str(tmp_path), "--all", "--rounds", "1"])
    assert f"edge-tune: not tuned: coreml-int8: {UNKNOWN_FORMAT}" in capsys.readouterr().err
    report = tmp_path.parent / f"{tmp_path.name}-bench.json"
    assert cli_bench.main([str(tmp_path), "--all", "--runs", "2", "--warmup", "0", "--rounds", "1",
                           "--seq", "8", "--json", str(report)]) == 0
    out, err = capsys.readouterr()
    assert f"coreml-int8: skipped: {UNKNOWN_FORMAT}" in err
    # ... and in what the run leaves behind, not only on stderr: the JSON and its table.
    doc = json.loads(report.read_text())
    assert doc["skipped_artifacts"] == {"coreml-int8": UNKNOWN_FORMAT} and not validate_bench(doc)
    assert f"- coreml-int8: {UNKNOWN_FORMAT}" in out
