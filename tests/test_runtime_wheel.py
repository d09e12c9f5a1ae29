"""The device wheel installs into a clean venv without torch/transformers/onnx and runs a
converted model there."""

from __future__ import annotations

import json
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

from converters import ConvertConfig, convert

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import build_runtime_wheel  # noqa: E402


def test_wheel_contents_are_slim(tmp_path):
    wheel = build_runtime_wheel.build(tmp_path)
    names = zipfile.ZipFile(wheel).namelist()
    assert "edge_runtime/__init__.py" in names and "targets/rpi4.toml" in names
    assert not [n for n in names if n.startswith("converters/")]
    assert build_runtime_wheel.build(tmp_path / "again").read_bytes() == wheel.read_bytes(), "reproducible"


def test_wheel_metadata_states_python_310_and_tomli(tmp_path):
    """Jetson JetPack 6 has Python 3.10 (tests/test_python310.py runs the wheel there); targets/
    parses its TOML profiles at run time with tomllib, which 3.10 gets from tomli."""
    wheel = build_runtime_wheel.build(tmp_path)
    with zipfile.ZipFile(wheel) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        lines = archive.read(name).decode().splitlines()
    assert "Requires-Python: >=3.10" in lines
    assert 'Requires-Dist: tomli>=1.1; python_version < "3.11"' in lines
    requires = [line for line in lines if line.startswith("Requires-Dist: ")]
    unconditional = [r for r in requires if ";" not in r]
    assert sorted(unconditional) == ["Requires-Dist: numpy>=1.24", "Requires-Dist: psutil>=5.9"]


@pytest.mark.slow
def test_wheel_in_fresh_venv_runs_a_converted_model(tiny_model_factory, tmp_path):
    out = tmp_path / "artifacts"
    convert(ConvertConfig(model=tiny_model_factory("bert", "feature-extraction"), target="x86-avx2",
                          out=out, latency_runs=2))
    wheel = build_runtime_wheel.build(tmp_path / "dist")
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", f"{wheel}[onnx]"], check=True)

    installed = subprocess.run([str(python), "-m", "pip", "list", "--format=json"], check=True,
                               capture_output=True, text=True).stdout
    names = {p["name"].lower() for p in json.loads(installed)}
    assert {"edge-runtime", "onnxruntime", "numpy", "psutil", "tokenizers"} <= names
    assert not names & {"torch", "transformers", "onnx", "onnx-ir", "edge-runtime-toolkit"}, names

    done = subprocess.run([str(env_dir / "bin" / "edge-run"), str(out), "hello device", "--json"],
                          check=True, capture_output=True, text=True)
    result = json.loads(done.stdout)
    assert result["artifact"] == "onnx-int8"
    assert len(result["embeddings"][0]) == 32


def test_wheel_has_the_device_commands_and_the_serve_extra(tmp_path):
    """Every edge_runtime console script of the workstation package is in the device wheel, and
    edge-serve's dependencies come with its [serve] extra in both (issue 12)."""
    import configparser

    wheel = build_runtime_wheel.build(tmp_path)
    with zipfile.ZipFile(wheel) as archive:
        entry = archive.read(next(n for n in archive.namelist() if n.endswith("entry_points.txt"))).decode()
        meta = archive.read(next(n for n in archive.namelist() if n.endswith("METADATA"))).decode()
    cfg = configparser.ConfigParser()
    cfg.read(Path(build_runtime_wheel.ROOT) / "setup.cfg")
    scripts = [line.strip() for line in cfg["options.entry_points"]["console_scripts"].splitlines() if line.strip()]
    runtime_scripts = [s for s in scripts if "= edge_runtime." in s]
    assert "edge-serve = edge_runtime._entry:edge_serve" in runtime_scripts
    for script in runtime_scripts:
        assert script in entry
    assert "Provides-Extra: serve" in meta
    for package in ("starlette", "uvicorn"):
        assert f'Requires-Dist: {package}' in meta and package in cfg["options.extras_require"]["serve"]
