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
from edge_runtime._load import load
from edge_runtime._manifest import MANIFEST_SCHEMA_VERSION, SUPPORTED_SCHEMA_VERSIONS, read_manifest
from edge_runtime._model import Model

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
