"""The device package runs on Python 3.10 (issue 9): Jetson Orin's JetPack 6 is Ubuntu 22.04.

Two checks. A lint, always: vermin finds standard-library APIs newer than 3.10 (tomllib,
typing.Self, ExceptionGroup, datetime.UTC, ...) in edge_runtime/ and targets/, annotations
included even where `from __future__ import annotations` keeps them unevaluated, and the 3.10
grammar refuses newer syntax (except*, PEP 695 generics, PEP 701 f-strings). The lint is shown
to fail on a file with each of those. And, where a Python 3.10 interpreter is installed (pyenv's
on this kind of machine; it is not a pip dependency, so it may be absent: then the tests that
need it skip and say so), the sources compile with it, and the device wheel installed into a
3.10 venv converts nothing but runs a converted model, `edge-run --info` (which parses the
target profiles with tomli there) and edge-bench.

vermin is a test dependency (setup.cfg's `test` extra): when it is missing these tests fail.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import vermin  # noqa: F401 - a required test dependency: fail here, never skip

ROOT = Path(__file__).resolve().parents[1]
DEVICE_PACKAGES = (ROOT / "edge_runtime", ROOT / "targets")
OLDEST = (3, 10)


# -- the lint ---------------------------------------------------------------------------------
def _python_files(paths: list[Path]) -> list[Path]:
    files = []
    for path in paths:
        found = [path] if path.is_file() else sorted(path.rglob("*.py"))
        files += [f for f in found if "__pycache__" not in f.parts]
    return files


def _vermin_problems(paths: list[Path]) -> list[str]:
    """What vermin reports as needing a Python newer than OLDEST, and what it could not parse.

    --eval-annotations: annotations count as code even under `from __future__ import
    annotations` (typing.get_type_hints, dataclass tooling and pydantic-style readers evaluate
    them). vermin's exit status alone is not enough: it exits 0 on a file it cannot parse
    (measured with vermin 1.9 on a PEP 695 `def f[T]()`), so its "error:" lines count too.
    `# novermin` on a line excludes that line (targets/__init__.py's tomllib import, whose
    fallback vermin does not see)."""
    target = f"-t={OLDEST[0]}.{OLDEST[1]}-"
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from vermin import main; sys.exit(main())",
            target,
            "--violations",
            "--eval-annotations",
            "--no-tips",
            "--no-config-file",
            *map(str, paths),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    lines = [line.strip() for line in done.stdout.splitlines()]
    problems = [line for line in lines if " requires " in line or line.startswith("error:")]
    if done.returncode != 0 and not problems:
        problems.append(f"vermin exited {done.returncode}: {done.stdout}{done.stderr}")
    return problems


def _syntax_problems(paths: list[Path]) -> list[str]:
    """Files the 3.10 grammar refuses, as far as this interpreter's parser can tell (it checks
    feature_version for some constructs, e.g. except*; newer grammar it does not know at all)."""
    problems = []
    for path in _python_files(paths):
        try:
            ast.parse(path.read_text(encoding="utf-8"), str(path), feature_version=OLDEST)
        except SyntaxError as exc:
            problems.append(f"{path}:{exc.lineno}: {exc.msg}")
    return problems


def newer_than_310(paths: list[Path]) -> list[str]:
    return _vermin_problems(paths) + _syntax_problems(paths)


def test_device_package_needs_at_most_python_3_10():
    problems = newer_than_310(list(DEVICE_PACKAGES))
    assert problems == [], (
        "edge_runtime/ and targets/ must run on Python 3.10 (Jetson JetPack 6); give each of "
        "these a fallback (and `# novermin` on the newer line) or use an older API:\n"
        + "\n".join(problems)
    )


# Each snippet sits in a file of its own that starts with `from __future__ import annotations`.
BAD = {
    "tomllib": ("import tomllib\n", "'tomllib' module"),
    "typing.Self import": ("from typing import Self\n", "typing.Self"),
    "typing.Self in a postponed annotation": (
        "import typing\n\n\nclass A:\n    def copy(self) -> typing.Self:\n        return self\n",
        "typing.Self",
    ),
    "except*": (
        "try:\n    pass\nexcept* ValueError:\n    pass\n",
        "except*",
    ),
    "ExceptionGroup": ("raise ExceptionGroup('x', [ValueError()])\n", "ExceptionGroup"),
    "datetime.UTC": ("import datetime\n\nnow = datetime.datetime.now(datetime.UTC)\n", "UTC"),
    "enum.StrEnum": ("import enum\n\n\nclass C(enum.StrEnum):\n    A = 'a'\n", "StrEnum"),
    "PEP 695 generic": ("def first[T](items: list[T]) -> T:\n    return items[0]\n", "error:"),
    "PEP 701 f-string": ('name = f"{\'a\' + f"{1}"}"\n', ""),
}


@pytest.mark.parametrize("name", list(BAD))
def test_the_lint_finds_code_newer_than_3_10(tmp_path, name):
    source, expected = BAD[name]
    (tmp_path / "bad.py").write_text("from __future__ import annotations\n\n" + source)
    problems = newer_than_310([tmp_path])
    assert problems, f"{name} passed the 3.10 lint"
    assert any(expected in p for p in problems), problems


def test_the_lint_passes_a_fallback_and_new_style_annotations(tmp_path):
    """What the device package does: tomllib with the tomli fallback, `X | None` and builtin
    generics in annotations (3.10 evaluates both), match statements (3.10)."""
    (tmp_path / "good.py").write_text(
        "from __future__ import annotations\n\n"
        "try:\n"
        "    import tomllib  # novermin\n"
        "except ModuleNotFoundError:\n"
        "    import tomli as tomllib\n\n\n"
        "def parse(text: str | None) -> dict[str, list[int]]:\n"
        "    match text:\n"
        "        case None:\n"
        "            return {}\n"
        "    return tomllib.loads(text)\n"
    )
    assert newer_than_310([tmp_path]) == []


# -- a real Python 3.10 -----------------------------------------------------------------------
def _python310() -> str | None:
    """A Python 3.10 interpreter in pyenv's versions or on PATH, else None. Each candidate is
    asked for its version: pyenv's shim on PATH exists even when no 3.10 is selected."""
    candidates = []
    for root in filter(None, [os.environ.get("PYENV_ROOT"), str(Path.home() / ".pyenv")]):
        candidates += sorted(map(str, Path(root).glob("versions/3.10.*/bin/python3.10")))
    candidates += filter(None, [shutil.which("python3.10")])
    for candidate in candidates:
        try:
            done = subprocess.run(
                [candidate, "-c", "import sys; print(sys.version_info[:2] == (3, 10))"],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        if done.stdout.strip() == "True":
            return candidate
    return None


PYTHON310 = _python310()
needs_python310 = pytest.mark.skipif(
    PYTHON310 is None,
    reason="no Python 3.10 interpreter here (python3.10 on PATH or pyenv's versions/3.10.*); "
    "the vermin lint above still checks the sources",
)


@needs_python310
def test_device_sources_compile_with_python_3_10():
    files = [str(f) for f in _python_files(list(DEVICE_PACKAGES))]
    code = (
        "import sys\n"
        "bad = []\n"
        "for path in sys.argv[1:]:\n"
        "    try:\n"
        "        compile(open(path, encoding='utf-8').read(), path, 'exec')\n"
        "    except SyntaxError as exc:\n"
        "        bad.append(f'{path}:{exc.lineno}: {exc.msg}')\n"
        "print('\\n'.join(bad)); sys.exit(1 if bad else 0)\n"
    )
    done = subprocess.run(
        [PYTHON310, "-c", code, *files], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert len(files) > 20


@pytest.mark.slow
@needs_python310
def test_device_wheel_runs_under_python_3_10(tiny_model_factory, tmp_path):
    from converters import ConvertConfig, convert

    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import build_runtime_wheel
    finally:
        sys.path.remove(str(ROOT / "tools"))

    out = tmp_path / "artifacts"
    convert(
        ConvertConfig(
            model=tiny_model_factory("bert", "feature-extraction"),
            target="x86-avx2",
            out=out,
            latency_runs=2,
        )
    )
    wheel = build_runtime_wheel.build(tmp_path / "dist")
    env_dir = tmp_path / "py310"
    subprocess.run([PYTHON310, "-m", "venv", str(env_dir)], check=True)
    python = env_dir / "bin" / "python"
    subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            f"{wheel}[onnx]",
        ],
        check=True,
    )
    version = subprocess.run(
        [str(python), "-c", "import sys; print(sys.version_info[:2])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert version == "(3, 10)"
    installed = subprocess.run(
        [str(python), "-m", "pip", "list", "--format=json"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    names = {p["name"].lower() for p in json.loads(installed)}
    assert "tomli" in names, "the wheel requires tomli below 3.11"

    def edge_run(bin_dir: Path, *args: str) -> dict:
        done = subprocess.run(
            [str(bin_dir / "edge-run"), str(out), *args, "--json"],
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(done.stdout)

    here = Path(sys.executable).parent  # this (3.11) environment's runtime, the reference
    old, new = edge_run(env_dir / "bin", "hello device"), edge_run(here, "hello device")
    assert old["artifact"] == new["artifact"]
    np.testing.assert_allclose(
        np.asarray(old["embeddings"]), np.asarray(new["embeddings"]), rtol=1e-4, atol=1e-5
    )
    # --info matches the device to a target profile: targets/*.toml read with tomli on 3.10
    info_old, info_new = edge_run(env_dir / "bin", "--info"), edge_run(here, "--info")
    assert info_old["profile"]["detected"] == info_new["profile"]["detected"]
    assert info_old["profile"]["reason"] == info_new["profile"]["reason"]

    result = tmp_path / "bench.json"
    done = subprocess.run(
        [
            str(env_dir / "bin" / "edge-bench"),
            str(out),
            "--runs",
            "3",
            "--warmup",
            "1",
            "--rounds",
            "1",
            "--json",
            str(result),
            "-q",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    from edge_runtime._bench import validate_bench

    doc = json.loads(result.read_text())
    assert validate_bench(doc) == []
    assert doc["versions"]["python"].startswith("3.10.")
    assert all(r["status"] == "ok" for r in doc["records"]), doc["records"]
    assert all(r["load_first"]["status"] == "ok" for r in doc["records"])
