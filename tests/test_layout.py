"""The source tree reads like the pipeline (issue 9): converters/ grouped by stage, every module
documented and small enough to read in one sitting, imports one way (converters -> runtime)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 510  # "about 500": the largest module today is edge_runtime/_device.py
STAGES = {"inputs", "export", "core", "onnx", "tflite", "packaging", "pruning"}
# What stays at converters/'s root: the pipeline itself and what every stage shares.
ROOT_MODULES = {"__init__", "_artifacts", "_artifacts_tflite", "_console", "_entry", "_errors", "_graph", "_shared",
                "_step", "cli", "cli_sign", "options", "pipeline"}  # options: the pipeline's checks before any work;
# _step: Step, Built; _entry: the console scripts' Ctrl-C guard
MODULES = sorted(p for package in ("converters", "edge_runtime") for p in (ROOT / package).rglob("*.py"))


# Stricter limits per folder (lines, docstring characters): converters/tflite/ was split from one
# 1,172-line file into modules of one idea each (issue 9) and keeps that shape.
LIMITS = {"converters/tflite": (400, 80)}


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_each_module_is_documented_and_small(path):
    max_lines, min_doc = LIMITS.get(path.parent.relative_to(ROOT).as_posix(), (MAX_LINES, 40))
    source = path.read_text()
    lines = source.count("\n")
    assert lines <= max_lines, f"{path.relative_to(ROOT)}: {lines} lines > {max_lines}: split it by idea"
    docstring = ast.get_docstring(ast.parse(source))
    assert docstring and len(docstring) > min_doc, f"{path.relative_to(ROOT)}: say what it holds and why"


def test_converters_is_grouped_by_stage():
    folders = {p.name for p in (ROOT / "converters").iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert folders == STAGES
    assert {p.stem for p in (ROOT / "converters").glob("*.py")} == ROOT_MODULES


def test_the_runtime_never_imports_the_converters():
    for path in (ROOT / "edge_runtime").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n.split(".")[0] in ("converters", "torch", "transformers") for n in names), (
                f"{path.relative_to(ROOT)} imports {names}")


SCRIPTS = sorted([*(ROOT / "benchmarks").glob("*.py"), *(ROOT / "tools").glob("*.py"), ROOT / "tools" / "arm64-check"])


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_scripts_take_the_default_benchmark_shape_from_one_place(path):
    """`--threads` / `--seq` defaults and session thread counts come from DEFAULT_SHAPE
    (edge_runtime/_bench_config.py), not a literal 2 or 128 of their own (issue 9: "2 threads" lived
    in five places, then in a dozen scripts)."""
    literal = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Call):
            continue
        words = {k.arg: k.value for k in node.keywords}
        flag = node.args[0].value if node.args and isinstance(node.args[0], ast.Constant) else None
        if flag in ("--threads", "--seq") and isinstance(words.get("default"), ast.Constant) \
                and words["default"].value is not None:  # None: the profile's or tuned count
            literal.append(f"line {node.lineno}: {flag} default={words['default'].value!r}")
        if isinstance(words.get("threads"), ast.Constant) and words["threads"].value not in (0, 1):
            literal.append(f"line {node.lineno}: threads={words['threads'].value!r}")
    assert not literal, f"{path.relative_to(ROOT)}: use DEFAULT_SHAPE: " + "; ".join(literal)
