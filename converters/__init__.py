"""Workstation side: convert a Hugging Face model into per-target edge artifacts.

    from converters import ConvertConfig, convert
    result = convert(ConvertConfig(model=None, target="auto", out=Path("out")))

The folders follow the pipeline (pipeline.py runs it, _artifacts.py builds each artifact, the TFLite
ones in _artifacts_tflite.py, both on _step.py's Step and Built):

    inputs/     source model, fit / validation texts, preflight checks
    export/     the FP32 ONNX graph (TFLite's export is tflite/export.py)
    core/       the shared quantization core: one evaluator, one search, GPTQ, target arithmetic
    onnx/       ONNX passes and quantizers (INT8, W4A8, INT4, tables)
    tflite/     litert-torch export, ai-edge-quantizer recipes and ours
    packaging/  the artifact directory: files, manifest, golden samples, signature
    pruning/    structured pruning (heads, FFN neurons): importance, surgery, re-fit, --prune

Heavy libraries (torch, transformers, onnx, onnxruntime tools) are imported inside the steps
that use them.
"""

__version__ = "0.1.0"

from converters._errors import (
    AccuracyError,
    ConversionError,
    ConversionInterrupted,
    NonFiniteOutputError,
    SourceModelError,
    UnsupportedModelError,
)

# Resolved on first use (PEP 562): importing the package, or edge-convert's Ctrl-C guard
# (converters/_entry.py), does not import the pipeline first.
_LAZY = ("ArtifactResult", "ConvertConfig", "ConvertResult", "convert")


def __getattr__(name: str):
    if name in _LAZY:
        from converters import pipeline

        value = getattr(pipeline, name)
        globals()[name] = value  # once
        return value
    raise AttributeError(f"module 'converters' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))

__all__ = [
    "AccuracyError",
    "ArtifactResult",
    "ConversionError",
    "ConversionInterrupted",
    "ConvertConfig",
    "ConvertResult",
    "NonFiniteOutputError",
    "SourceModelError",
    "UnsupportedModelError",
    "__version__",
    "convert",
]
