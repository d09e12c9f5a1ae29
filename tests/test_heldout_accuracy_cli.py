"""benchmarks/heldout_accuracy.py says what is wrong with its arguments in one line, before the
PyTorch reference pass: an artifact converted from another model was scored against the wrong
outputs without a word (a reviewer got cosine 0.136 and exit 0), a wrong name or model directory
gave a traceback."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import heldout_accuracy  # noqa: E402  (a script in benchmarks/)

pytestmark = pytest.mark.slow  # one tiny conversion per session (conftest.tiny_rpi5)


def _refused(args: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as stopped:
        heldout_accuracy.main(args)
    assert stopped.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_an_artifact_of_another_model_is_refused(tiny_rpi5, tiny_model_factory, capsys):
    other = tiny_model_factory("distilbert", "feature-extraction")
    said = _refused(["--model", str(other), f"{tiny_rpi5}:onnx-fp32"], capsys)
    assert "was converted from" in said and f"not from {other}" in said and "--model" in said, said


def test_a_wrong_name_or_model_directory_is_one_line(tiny_rpi5, tiny_model_factory, tmp_path, capsys):
    model = tiny_model_factory("bert", "feature-extraction")
    said = _refused(["--model", str(model), f"{tiny_rpi5}:nope"], capsys)
    assert "no artifact 'nope'" in said and "onnx-fp32" in said, said
    said = _refused(["--model", str(tmp_path / "missing"), f"{tiny_rpi5}:onnx-fp32"], capsys)
    assert "is not a model directory" in said, said
