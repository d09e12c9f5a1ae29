"""The console scripts import their command's module inside a Ctrl-C guard (a review, session 51:
a Ctrl-C in the first 0.2-5 s of edge-run or edge-convert, while numpy, the backends or torch
load, printed a KeyboardInterrupt traceback and the process died of the signal)."""

from __future__ import annotations

import configparser
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _scripts() -> dict[str, str]:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    lines = [line.strip() for line in cfg["options.entry_points"]["console_scripts"].splitlines() if line.strip()]
    return dict(line.split(" = ") for line in lines)


def test_every_console_script_goes_through_the_guard():
    scripts = _scripts()
    assert set(scripts) == {"edge-convert", "edge-sign", "edge-run", "edge-bench", "edge-tune", "edge-serve"}
    for name, target in scripts.items():
        module, function = target.split(":")
        assert module in ("edge_runtime._entry", "converters._entry"), (name, target)
        assert callable(getattr(importlib.import_module(module), function))


def test_the_guard_imports_nothing_heavy():
    """What a Ctrl-C could interrupt before the guard is in place: the packages' __init__ and the
    entry modules only (numpy, torch and the pipeline are imported inside it)."""
    code = ("import sys, edge_runtime._entry, converters._entry; "
            "print(sorted(m for m in ('numpy', 'torch', 'onnxruntime', 'converters.pipeline', 'edge_runtime._load') "
            "if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert done.stdout.strip() == "[]", done.stdout


@pytest.mark.parametrize("function, prog", [("edge_run", "edge-run"), ("edge_bench", "edge-bench"),
                                            ("edge_tune", "edge-tune"), ("edge_serve", "edge-serve")])
def test_ctrl_c_while_the_command_loads_is_one_line_and_130(monkeypatch, capsys, function, prog):
    from edge_runtime import _entry

    def interrupted(module):
        raise KeyboardInterrupt

    monkeypatch.setattr(_entry.importlib, "import_module", interrupted)
    assert getattr(_entry, function)() == 130
    assert capsys.readouterr().err == f"{prog}: interrupted\n"


def test_edge_convert_guard_and_the_lazy_package_names(monkeypatch, capsys):
    import converters
    from converters import _entry
    from edge_runtime import _entry as runtime_entry

    monkeypatch.setattr(runtime_entry.importlib, "import_module", lambda module: (_ for _ in ()).throw(KeyboardInterrupt))
    assert _entry.edge_convert() == 130 and capsys.readouterr().err == "edge-convert: interrupted\n"
    monkeypatch.undo()
    # The names the packages export still resolve (on first use), and unknown ones still fail.
    import edge_runtime

    assert converters.convert is importlib.import_module("converters.pipeline").convert
    assert edge_runtime.load is importlib.import_module("edge_runtime._load").load
    assert edge_runtime.Model is importlib.import_module("edge_runtime._model").Model
    assert set(edge_runtime.__all__) <= set(dir(edge_runtime))
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        edge_runtime.nope  # noqa: B018


def test_a_guarded_command_runs(capsys, monkeypatch):
    from edge_runtime import _entry

    monkeypatch.setattr(sys, "argv", ["edge-run", "--help"])
    with pytest.raises(SystemExit) as done:
        _entry.edge_run()
    assert done.value.code == 0 and "edge-run" in capsys.readouterr().out
