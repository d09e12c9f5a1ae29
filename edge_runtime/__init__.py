"""edge_runtime: run edge-convert artifacts on a device.

    import edge_runtime
    model = edge_runtime.load("artifacts/")      # verifies hashes, runs the golden sample
    vectors = model.embed(["a sentence"])        # feature-extraction models
    labels = model.classify(["a sentence"])      # classification models
    outputs = model.run({"input_ids": ..., "attention_mask": ...})

Only numpy, psutil, the backend (onnxruntime or ai-edge-litert) and tokenizers are imported;
never torch, transformers or onnx.
"""

from edge_runtime._errors import (
    ArtifactError,
    BackendUnavailableError,
    ModelLoadError,
    DeviceMismatchError,
    EdgeRuntimeError,
    GoldenMismatchError,
    InputError,
    ManifestError,
    SignatureError,
)

# Resolved on first use (PEP 562), so that importing the package, or the console scripts' guard
# (edge_runtime/_entry.py), does not import numpy and the backends first.
_LAZY = {"load": "edge_runtime._load", "Model": "edge_runtime._model", "read_manifest": "edge_runtime._manifest",
         "MANIFEST_SCHEMA_VERSION": "edge_runtime._manifest", "SUPPORTED_SCHEMA_VERSIONS": "edge_runtime._manifest"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # once
        return value
    raise AttributeError(f"module 'edge_runtime' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))

__version__ = "0.1.0"

__all__ = [
    "MANIFEST_SCHEMA_VERSION",
    "SUPPORTED_SCHEMA_VERSIONS",
    "ArtifactError",
    "BackendUnavailableError",
    "ModelLoadError",
    "DeviceMismatchError",
    "EdgeRuntimeError",
    "GoldenMismatchError",
    "InputError",
    "ManifestError",
    "Model",
    "SignatureError",
    "__version__",
    "load",
    "read_manifest",
]
