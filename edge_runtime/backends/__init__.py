"""Inference backends, one per file, imported only when an artifact of that format is loaded.

A backend module exposes `AVAILABLE` (can it run here?) and `open_session(...) -> Session`.
"""

from __future__ import annotations

import importlib
import os
from typing import Any, Protocol

import numpy as np

from edge_runtime._errors import BackendUnavailableError

__all__ = ["Session", "backend_available", "import_onnxruntime", "installed_package", "open_session"]

# format -> (module, install hint). Registered here, imported lazily.
_BACKENDS = {
    "onnx": ("edge_runtime.backends.onnx", "pip install onnxruntime: the device wheel's [onnx] extra"),
    "tflite": ("edge_runtime.backends.tflite", "pip install ai-edge-litert: the device wheel's [tflite] extra"),
}


class Session(Protocol):
    backend_name: str
    backend_version: str
    providers: list[str]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


def _module(fmt: str):
    if fmt not in _BACKENDS:
        raise BackendUnavailableError(
            f"no backend for format {fmt!r}; this edge_runtime runs: {', '.join(_BACKENDS)}"
        )
    return importlib.import_module(_BACKENDS[fmt][0])


def backend_available(fmt: str) -> bool:
    """True when the package that runs `fmt` artifacts is importable here."""
    try:
        return _module(fmt).available()
    except BackendUnavailableError:
        return False


def installed_package(fmt: str) -> str | None:
    """The package name (as artifacts' min_runtime names it) that would run `fmt` here."""
    try:
        return _module(fmt).installed_package()
    except BackendUnavailableError:
        return None


def import_onnxruntime():
    """onnxruntime, imported with its telemetry off unless the environment says otherwise
    (ORT_DISABLE_TELEMETRY=0): at import it persists a device ID under the home directory, and
    where that is read-only (a service user, a read-only root file system) it prints a coloured
    warning on stderr at every start. A device runtime keeps nothing about its host it does not
    need. No effect when onnxruntime was imported before."""
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    import onnxruntime

    return onnxruntime


def open_session(fmt: str, model_path, **options: Any) -> Session:
    module = _module(fmt)
    if not module.available():
        raise BackendUnavailableError(
            f"cannot run {fmt} artifacts: its backend is not installed ({_BACKENDS[fmt][1]})"
        )
    return module.open_session(model_path, **options)
