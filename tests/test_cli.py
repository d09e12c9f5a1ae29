"""The two command-line tools, through their real entry points."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

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
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}))
    result = CliRunner().invoke(edge_convert, [str(tmp_path), "--out", str(tmp_path / "o")])
    assert result.exit_code == 1
    assert "'gpt2' is not supported" in result.output and "distilbert" in result.output


def test_not_a_model_directory(tmp_path):
    result = CliRunner().invoke(edge_convert, [str(tmp_path), "--out", str(tmp_path / "o")])
    assert result.exit_code == 1 and "no config.json" in result.output


@pytest.mark.slow  # a real conversion
def test_convert_json_then_run(tiny_model_factory, tmp_path, capsys):
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
    assert edge_run([str(tmp_path / "missing"), "text"]) == 1
    assert edge_run([str(out)]) == 2  # nothing to do: usage error


def test_library_errors_name_parameters_and_the_cli_names_flags(tmp_path):
    """convert() speaks Python (force=True), edge-convert speaks flags (--force)."""
    from converters import ConversionError, ConvertConfig, convert
    from converters.cli import as_flags

    with pytest.raises(ConversionError, match=r"accuracy_floor must be in \(0, 1\], got 2"):
        convert(ConvertConfig(model=None, target="x86-avx2", out=tmp_path / "o", accuracy_floor=2.0))
    assert as_flags("o already exists; pass force=True to replace it") == "o already exists; pass --force to replace it"
    assert as_flags("calibration texts (validation_texts)") == "calibration texts (--validation-texts)"
    result = CliRunner().invoke(edge_convert, ["--target", "x86-avx2", "--accuracy-floor", "2", "--out", str(tmp_path / "o")])
    assert result.exit_code == 1 and "--accuracy-floor must be in (0, 1], got 2" in result.output
