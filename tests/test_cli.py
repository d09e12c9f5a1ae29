"""The two command-line tools, through their real entry points."""

from __future__ import annotations

import io
import json
import re
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import edge_runtime
from converters.cli import main as edge_convert
from edge_runtime._device import detect
from edge_runtime.cli import main as edge_run


def test_list_targets():
    result = CliRunner().invoke(edge_convert, ["--list-targets"])
    assert result.exit_code == 0
    for target in ("x86-avx2", "x86-avx512-vnni", "rpi4", "rpi5", "jetson-orin"):
        assert target in result.output
    assert "* = detected" in result.output


def test_unknown_target_is_a_clean_error(tmp_path):
    result = CliRunner().invoke(edge_convert, ["--target", "vax", "--out", str(tmp_path / "o")])
    assert result.exit_code == 1
    assert "unknown target 'vax'" in result.output and "rpi4" in result.output


def test_unsupported_architecture_names_the_supported_ones(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(json.dumps({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}))
    result = CliRunner().invoke(edge_convert, [str(tmp_path / "m"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 1
    assert "'gpt2' is not supported" in result.output and "distilbert" in result.output


def test_not_a_model_directory(tmp_path):
    (tmp_path / "m").mkdir()
    result = CliRunner().invoke(edge_convert, [str(tmp_path / "m"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 1 and "no config.json" in result.output


@pytest.mark.slow  # a real conversion
def test_convert_json_then_run(tiny_model_factory, tmp_path, capsys, monkeypatch):
    model = tiny_model_factory("roberta", "text-classification")
    out = tmp_path / "art"
    result = CliRunner().invoke(edge_convert, [str(model), "--target", "rpi4", "--out", str(out), "--json", "-q"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["target"] == "rpi4"
    assert [a["name"] for a in summary["artifacts"]] == ["onnx-fp32", "onnx-int8", "tflite-fp32", "tflite-int8",
                                                             "tflite-int8-legacy"]
    assert [r["name"] for r in summary["refused"]] == ["onnx-int4", "tflite-int4"]

    assert edge_run([str(out), "a nice day", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    # rpi4's INT8 weights need a 32-bit accumulating GEMM; on an x86 CPU without VNNI the
    # runtime skips that artifact (edge_runtime/_compat.py) and takes the next in the profile order.
    expected = "onnx-int8" if detect().int8_gemm == "int32" else "onnx-fp32"
    assert printed["artifact"] == expected
    assert printed["results"][0]["label"] in ("negative", "neutral", "positive")
    assert edge_run([str(out), "--info"]) == 0
    assert "onnx-int8" in capsys.readouterr().out
    # A text longer than the model takes runs on its first tokens: said on stderr, echoed cut short.
    limit = edge_runtime.read_manifest(out)["tokenizer"]["max_length"]
    long_text = "fine " * (3 * limit)
    assert edge_run([str(out), "a nice day", long_text]) == 0
    shown = capsys.readouterr()
    assert f"({len(long_text)} characters)" in shown.out and long_text not in shown.out
    said = re.fullmatch(f"edge-run: 1 text is longer than the {limit} tokens this model takes and ran on "
                        rf"the first {limit} only: text 2 \((\d+) tokens\)\n", shown.err)
    assert said and int(said[1]) >= 3 * limit
    # Labels are printed as written, not JSON-escaped (a reviewer's "\u4e2d\u6027" for 中性).
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["postprocess"]["labels"] = ["négatif", "中性", "positif"]
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert edge_run([str(out), "a nice day"]) == 0
    assert re.search(r'"label": "(négatif|中性|positif)"', capsys.readouterr().out)
    assert edge_run([str(out), "--json", long_text]) == 0
    assert json.loads(capsys.readouterr().out)["results"] == edge_runtime.load(out).classify([long_text])
    assert edge_run([str(tmp_path / "missing"), "text"]) == 1
    assert edge_run([str(out)]) == 2  # nothing to do: usage error
    # A refused artifact asked for by name: the converter's reason, not only "no artifact".
    assert edge_run([str(out), "--artifact", "onnx-int4", "text"]) == 1
    err = capsys.readouterr().err
    assert "the converter refused 'onnx-int4': " + summary["refused"][0]["reason"] in err

    # "-": one text per line of standard input, in place among the other texts.
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO("a nice day\nnot good at all\n".encode())))
    assert edge_run([str(out), "--json", "-", "fine"]) == 0
    from_stdin = json.loads(capsys.readouterr().out)["results"]
    assert edge_run([str(out), "--json", "a nice day", "not good at all", "fine"]) == 0
    assert from_stdin == json.loads(capsys.readouterr().out)["results"]
    # Longer input runs and prints a chunk at a time: still one JSON object, one row per line.
    lines = [f"review {i}: " + "fine " * (i % 7) for i in range(300)]
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO("\n".join(lines).encode())))
    assert edge_run([str(out), "--json", "-"]) == 0
    streamed = json.loads(capsys.readouterr().out)
    assert streamed["artifact"] == printed["artifact"] and len(streamed["results"]) == 300
    assert streamed["results"] == edge_runtime.load(out).classify(lines)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"ok\ncaf\xe9\n")))
    assert edge_run([str(out), "-"]) == 1
    assert "standard input is not valid UTF-8 (line 2, byte 0xe9)" in capsys.readouterr().err
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"")))
    assert edge_run([str(out), "-"]) == 2
    assert "standard input has no lines" in capsys.readouterr().err
    assert edge_run([str(out), "-", "-"]) == 2
    # The text "-" itself comes through standard input (what --help says).
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"-\n")))
    assert edge_run([str(out), "--json", "-"]) == 0
    assert json.loads(capsys.readouterr().out)["results"] == edge_runtime.load(out).classify(["-"])


def test_library_errors_name_parameters_and_the_cli_names_flags(tmp_path):
    """convert() speaks Python (force=True), edge-convert speaks flags (--force)."""
    from converters import ConversionError, ConvertConfig, convert
    from converters.cli import as_flags

    with pytest.raises(ConversionError, match=r"accuracy_floor must be above 0 and below 1, got 2"):
        convert(ConvertConfig(model=None, target="x86-avx2", out=tmp_path / "o", accuracy_floor=2.0))
    with pytest.raises(ConversionError, match=r"latency_rounds=0: each must be at least 1"):
        convert(ConvertConfig(model=None, target="x86-avx2", out=tmp_path / "o", latency_rounds=0))
    assert as_flags("o already exists; pass force=True to replace it") == "o already exists; pass --force to replace it"
    # paths may be str (out="dir" used to write the whole output, then fail); other wrong types are named
    assert ConvertConfig(model="m", target="x86-avx2", out="o").out == Path("o")
    for wrong, message in (({"prune": 0.5}, r"prune must be str or None, got 0\.5"),
                           ({"accuracy_floor": "0.9"}, r"accuracy_floor must be a number or None, got '0\.9'"),
                           ({"distill_steps": None}, r"distill_steps must be an integer, got None"),
                           ({"out": None}, r"out must be a path \(str or os\.PathLike\), got None")):
        with pytest.raises(ConversionError, match=message):
            ConvertConfig(**{"model": None, "target": "x86-avx2", "out": tmp_path / "o", **wrong})
    with pytest.raises(ConversionError, match=r"target='rpi9': unknown target 'rpi9'; known targets: "):
        convert(ConvertConfig(model=None, target="rpi9", out=tmp_path / "o"))  # was targets.UnknownTargetError
    assert as_flags("calibration texts (validation_texts)") == "calibration texts (--validation-texts)"
    result = CliRunner().invoke(edge_convert, ["--target", "x86-avx2", "--accuracy-floor", "2", "--out", str(tmp_path / "o")])
    assert result.exit_code == 1 and "--accuracy-floor must be above 0 and below 1, got 2" in result.output
    assert as_flags("distill_steps=5 distils a pruned model: pass prune=... too") == (
        "--distill-steps 5 distils a pruned model: pass --prune ... too")
    assert as_flags("sign_key=nokey.pem: cannot be read") == "--sign-key nokey.pem: cannot be read"
    assert as_flags("convert it with task='feature-extraction'") == "convert it with --task 'feature-extraction'"
    assert as_flags("Lower the floor (accuracy_floor)") == "Lower the floor (--accuracy-floor)"


def test_force_replaces_an_earlier_output_and_nothing_else(tmp_path, monkeypatch):
    from converters import ConversionError
    from converters.packaging.package import check_output

    earlier = tmp_path / "earlier"
    earlier.mkdir()
    (earlier / "manifest.json").write_text('{"schema_version": 1, "artifacts": []}')
    webapp = tmp_path / "webapp"  # another program's manifest.json does not make it ours
    webapp.mkdir()
    (webapp / "manifest.json").write_text('{"name": "my app"}')
    (webapp / "index.html").write_text("<html>")
    empty = tmp_path / "empty"
    empty.mkdir()
    for out in (earlier, empty, tmp_path / "absent"):
        check_output(out, force=True)
    with pytest.raises(ConversionError, match="already exists; pass force=True"):
        check_output(earlier, force=False)

    project = tmp_path / "project"
    (project / "model").mkdir(parents=True)
    (project / "model" / "config.json").write_text("{}")
    (project / "notes.txt").write_text("mine")
    (tmp_path / "file.txt").write_text("mine")
    monkeypatch.chdir(empty)
    refused = {
        project: "holds the source model",
        project / "model": "holds the source model",
        empty: "holds the current directory",
        tmp_path: "holds the current directory",
        tmp_path / "file.txt": "is a file, not an earlier output",
    }
    for out, reason in refused.items():
        for force in (True, False):  # without force too: never "pass force=True" for these
            with pytest.raises(ConversionError, match=reason):
                check_output(out, force=force, inputs={"the source model": project / "model"})
    for other in (project, webapp):
        for force in (True, False):
            with pytest.raises(ConversionError, match="is not an earlier output .no edge-convert manifest.json. "
                                                      "and is not empty"):
                check_output(other, force=force)

    # Through the CLI: refused before any work, with the flag's name, nothing deleted.
    result = CliRunner().invoke(edge_convert, [str(project / "model"), "--target", "rpi4", "--out", str(project),
                                               "--force"])
    assert result.exit_code == 1 and "holds the source model" in result.output and "--force would" in result.output
    assert (project / "notes.txt").read_text() == "mine" and (project / "model" / "config.json").is_file()
    (tmp_path / "multi" / "rpi5").mkdir(parents=True)
    (tmp_path / "multi" / "rpi5" / "notes.txt").write_text("mine")
    several = CliRunner().invoke(edge_convert, [str(project / "model"), "--target", "rpi4,rpi5", "--out",
                                                str(tmp_path / "multi"), "--force"])
    assert several.exit_code == 1 and "rpi5 is not an earlier output" in several.output
    assert "loading the source model" not in several.output  # refused before the shared stages
    assert (tmp_path / "multi" / "rpi5" / "notes.txt").read_text() == "mine"

    # --force replaces an earlier output, never the files this run reads from inside it.
    (earlier / "mycal.txt").write_text("a text\n" * 10)
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    (earlier / "signing.pem").write_bytes(key)
    for flags, what in ((["--calibration", str(earlier / "mycal.txt")], "the calibration texts"),
                        (["--validation-texts", str(earlier / "mycal.txt")], "the validation texts"),
                        (["--sign-key", str(earlier / "signing.pem")], "the signing key")):
        kept = CliRunner().invoke(edge_convert, [str(project / "model"), "--target", "rpi4", "--out", str(earlier),
                                                 "--force", *flags])
        assert kept.exit_code == 1 and f"holds {what}" in kept.output, kept.output
    assert (earlier / "mycal.txt").is_file() and (earlier / "signing.pem").read_bytes() == key
    # Several targets write DIR/<target>: never inside a single target's output (its hashes and
    # signature would no longer match), with or without --force.
    for force in ([], ["--force"]):
        nested = CliRunner().invoke(edge_convert, [str(project / "model"), "--target", "rpi4,rpi5", "--out",
                                                   str(earlier), *force])
        assert nested.exit_code == 1 and "is the output of a single-target conversion" in nested.output
    assert sorted(p.name for p in earlier.iterdir()) == ["manifest.json", "mycal.txt", "signing.pem"]


def test_an_empty_target_is_a_clean_error(tmp_path):
    result = CliRunner().invoke(edge_convert, ["--target", " , ", "--out", str(tmp_path / "o")])
    assert result.exit_code == 1 and "names no target profile" in result.output and "--list-targets" in result.output


def test_a_refused_run_leaves_no_directories_behind(tmp_path):
    """The log goes next to the output, so its parents were made before the checks; a run refused
    up front removes them again."""
    (tmp_path / "model").mkdir()  # no config.json
    result = CliRunner().invoke(edge_convert, [str(tmp_path / "model"), "--target", "x86-avx2", "--out",
                                               str(tmp_path / "new" / "sub" / "x")])
    assert result.exit_code == 1 and "config.json" in result.output
    assert not (tmp_path / "new").exists()


def test_a_target_named_twice_is_refused_also_through_auto(tmp_path):
    from edge_runtime._device import detect, target_facts
    from targets import detect_target

    here = detect_target(target_facts(detect())).id
    for target, said in ((f"auto,{here}", f"names a profile twice: {here} (auto is {here} on this machine)"),
                         ("rpi5, rpi5", "names a profile twice: rpi5"),
                         ("all,rpi5", "'all' names every profile and stands alone")):
        result = CliRunner().invoke(edge_convert, ["--target", target, "--out", str(tmp_path / "o")])
        assert result.exit_code == 1 and said in result.output, result.output  # refused values: 1, as --help says
    assert not (tmp_path / "o").exists()


def test_auto_on_a_machine_no_profile_matches_names_the_flag(tmp_path, monkeypatch):
    """The library's reason names the profiles; edge-convert adds its flag (edge-run --info and
    edge-bench show the same reason and have no --target)."""
    from converters import cli

    monkeypatch.setattr(cli, "target_facts", lambda info: {"arch": "riscv64", "cpu_flags": set(), "device_model": ""})
    result = CliRunner().invoke(edge_convert, ["--target", "auto", "--out", str(tmp_path / "o")])
    assert result.exit_code == 1, result.output
    assert "no target profile matches this machine (arch riscv64" in result.output
    assert "the profiles: jetson-orin" in result.output and "with --target NAME" in result.output
    assert not (tmp_path / "o").exists()


def test_an_interrupted_multi_target_run_names_what_it_finished(tmp_path):
    import time

    from converters.cli import _interrupted

    since = time.time() - 1
    (tmp_path / "rpi5").mkdir()
    (tmp_path / "rpi5" / "manifest.json").write_text("{}")
    message = _interrupted(tmp_path, ["rpi5", "x86-avx2"], since)
    assert "rpi5 finished before it" in message and "nothing was written for x86-avx2" in message
    # One target left: its own directory (a single-target run refuses the parent of finished ones).
    assert f"convert it with --target x86-avx2 --out {tmp_path / 'x86-avx2'})" in message
    several = _interrupted(tmp_path, ["rpi5", "x86-avx2", "rpi4"], since)
    assert f"convert them with --target x86-avx2,rpi4 --out {tmp_path})" in several
    assert _interrupted(tmp_path, ["x86-avx2"], since) == f"interrupted: nothing was written to {tmp_path}"
    assert "nothing was written" in _interrupted(tmp_path, ["rpi5"], time.time() + 60)  # an older result
    assert _interrupted(tmp_path, None, since) == f"interrupted: nothing was written to {tmp_path}"
    pruning = _interrupted(tmp_path, ["rpi5", "x86-avx2"], since, while_pruning="rpi5")
    assert "rpi5's pruned artifacts were not built (run again with --force" in pruning
    assert "interrupted while pruning" in _interrupted(tmp_path, None, since, while_pruning="rpi5")
    # One twin built before the Ctrl-C, one not: named, not "the pruned ones were not built".
    one = _interrupted(tmp_path, None, since, while_pruning="rpi5", not_built=["tflite-int8-pruned"])
    assert "; tflite-int8-pruned was not built (its manifest lists it as refused" in one


def test_ctrl_c_while_edge_convert_imports_its_libraries_is_no_crash(tmp_path, monkeypatch):
    """The first second of a run imports torch and transformers: Ctrl-C there ends quietly."""
    import sys

    class Interrupting:
        def find_spec(self, name, path=None, target=None):
            if name == "converters.packaging.signing":
                raise KeyboardInterrupt
            return None

    monkeypatch.delitem(sys.modules, "converters.packaging.signing", raising=False)
    monkeypatch.setattr(sys, "meta_path", [Interrupting(), *sys.meta_path])
    result = CliRunner().invoke(edge_convert, ["--target", "x86-avx2", "--out", str(tmp_path / "o")])
    assert result.exit_code == 130 and result.output == "interrupted: nothing was written\n"
    assert not (tmp_path / "o").exists()


def test_edge_run_takes_texts_after_options_and_stops_quietly_on_a_closed_pipe(tmp_path):
    import subprocess
    import sys

    from edge_runtime.cli import _parser

    args = _parser().parse_intermixed_args([str(tmp_path), "--json", "--threads", "1", "a text", "another"])
    assert args.texts == ["a text", "another"] and args.json and args.threads == 1
    # A reader that closes the pipe early: no BrokenPipeError on stderr, whether the write fails
    # while printing (much output) or when buffered output is flushed (a line, after the reader left).
    import os

    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    for output, reader in (("[print('x' * 1000) for _ in range(10000)]", "head -c 1 > /dev/null"),
                           ("(time.sleep(1), print('a line'))", "true")):
        code = ("import sys, time, edge_runtime.cli as c\n"
                f"c._main = lambda argv: {output} and 0\n"
                "sys.exit(c.main([]))")
        proc = subprocess.run(f"{sys.executable} -c \"{code}\" | {reader}", shell=True,
                              capture_output=True, text=True, timeout=60, env=env)
        assert "BrokenPipe" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_options_are_checked_for_every_target_before_the_shared_stages(tmp_path, monkeypatch):
    """A bad option (or one a target cannot take) fails a multi-target run at once, naming the
    target: not after minutes of shared work, and not once per target."""
    from converters import ConversionError, ConvertConfig, _shared
    from converters.pipeline import convert_targets

    def must_not_run(*args, **kwargs):
        raise AssertionError("the shared stages ran although an option was bad")

    monkeypatch.setattr(_shared.SharedInputs, "load", must_not_run)
    for bad, message in (({"accuracy_floor": 1.5}, r"accuracy_floor must be above 0 and below 1"),
                         ({"distill_steps": 5}, r"distill_steps=5 distils a pruned model"),
                         ({"sign_key": tmp_path / "nokey.pem"}, r"nokey\.pem"),
                         ({"calibration_method": "entropy"}, r"calibration_method applies to static INT8")):
        config = ConvertConfig(model=None, target="x86-avx2", out=tmp_path / "o", **bad)
        with pytest.raises(ConversionError, match=message + r".*\(target x86-avx2; nothing was converted\)"):
            convert_targets(config, ["jetson-orin", "x86-avx2"] if "calibration_method" in bad else ["x86-avx2", "rpi5"])


def test_an_output_under_a_file_is_refused_before_any_work(tmp_path):
    from converters import ConversionError
    from converters.packaging.package import check_output

    (tmp_path / "afile.txt").write_text("hi")
    with pytest.raises(ConversionError, match=r"cannot create .*afile\.txt/sub: .*afile\.txt is a file"):
        check_output(tmp_path / "afile.txt" / "sub", force=False)


def test_suggested_commands_quote_their_paths(tmp_path):
    """A path with spaces (or quotes) pasted from a suggested command split into several words."""
    import shlex
    import time

    from converters.cli import _interrupted

    out = tmp_path / "out dir ü" / "it's"
    (out / "rpi5").mkdir(parents=True)
    (out / "rpi5" / "manifest.json").write_text("{}")
    message = _interrupted(out, ["rpi5", "x86-avx2", "rpi4"], time.time() - 1)
    command = message[message.index("--target"):].rstrip(")")
    assert shlex.split(command) == ["--target", "x86-avx2,rpi4", "--out", str(out)]


@pytest.mark.parametrize("override", [0.985, 0.999])
def test_accuracy_floor_moves_every_floor_of_the_profile_by_as_much(override):
    """--accuracy-floor 0.985 on x86-avx2 (0.995 by default, INT4 0.98 / min 0.96) replaced the INT4
    floors by 0.985 / 0.98: lowering the floor refused an INT4 artifact the default delivered. Every
    floor now moves by the same amount: lowering never makes a precision stricter, raising raises all."""
    from pathlib import Path

    from converters.options import ConvertConfig, prepare
    from targets import load_profile

    profile = load_profile("x86-avx2")
    floor = prepare(ConvertConfig(model=None, target="x86-avx2", out=Path("unused"), accuracy_floor=override))[2]
    shift = override - profile.accuracy.cosine_mean
    for precision in ("fp32", "int8", "int4"):
        before, after = profile.accuracy.for_precision(precision), floor.for_precision(precision)
        assert after.cosine_mean == pytest.approx(before.cosine_mean + shift)
        assert after.cosine_min == pytest.approx(before.cosine_min + shift)
        assert (after.cosine_mean < before.cosine_mean) == (shift < 0)
    assert floor.for_precision("int8").cosine_mean == override


@pytest.mark.parametrize("how", ["--out inside", "cd into it"])
def test_an_output_inside_the_model_directory_is_refused_before_anything_is_written(tmp_path, monkeypatch, how):
    """Found by a review (session 49): `--out MODEL/x` (and `cd MODEL && edge-convert .`, whose
    default output is ./out/<id>) wrote the artifacts, and the log, into the model directory."""
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    before = sorted(p.name for p in model.rglob("*"))
    if how == "--out inside":
        result = CliRunner().invoke(edge_convert, [str(model), "--target", "x86-avx2,rpi5", "--out", str(model / "art")])
    else:
        monkeypatch.chdir(model)
        result = CliRunner().invoke(edge_convert, [".", "--target", "x86-avx2"])
    assert result.exit_code == 1, result.output
    assert "is inside the source model" in result.output and "choose an output path outside it" in result.output
    assert sorted(p.name for p in model.rglob("*")) == before  # not even the log


def test_the_library_refuses_an_output_inside_the_model_directory_too(tmp_path):
    from converters import ConversionError
    from converters.packaging.package import check_output

    model = tmp_path / "model"
    model.mkdir()
    with pytest.raises(ConversionError, match="is inside the source model"):
        check_output(model / "out" / "x86-avx2", force=False, inputs={"the source model": model})
    check_output(tmp_path / "beside", force=False, inputs={"the source model": model})  # beside it: fine


def test_edge_run_counts_the_tokens_of_every_text_for_its_truncation_note():
    """Found by a review (session 49): texts with fewer characters than the model's max length were
    taken to fit, but one emoji is 4 byte-level BPE tokens: 60 of them were cut without a word."""
    from edge_runtime import cli as run_cli

    class Encoder:
        max_length = 128

        def token_count(self, text):
            return (4 * len(text) + 2, True)  # byte-level BPE on 4-byte characters

    class Model:
        def _text(self):
            return Encoder()

    assert run_cli._truncated(Model(), ["🙂" * 60, "ok"], offset=3) == [(4, (242, True))]
