"""Workstation side: convert a Hugging Face model into per-target edge artifacts.

    from converters import ConvertConfig, convert
    result = convert(ConvertConfig(model=None, target="auto", out=Path("out")))

Heavy libraries (torch, transformers, onnx, onnxruntime tools) are imported inside the steps
that use them.
"""

__version__ = "0.1.0"

from converters._errors import (  # noqa: E402
    AccuracyError,
    ConversionError,
    NonFiniteOutputError,
    SourceModelError,
    UnsupportedModelError,
)
from converters.pipeline import ArtifactResult, ConvertConfig, ConvertResult, convert  # noqa: E402

__all__ = [
    "AccuracyError",
    "ArtifactResult",
    "ConversionError",
    "ConvertConfig",
    "ConvertResult",
    "NonFiniteOutputError",
    "SourceModelError",
    "UnsupportedModelError",
    "__version__",
    "convert",
]
