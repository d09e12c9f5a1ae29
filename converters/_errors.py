"""Errors of the workstation side. User errors say what to change; ConversionError is ours."""

from __future__ import annotations

__all__ = [
    "AccuracyError",
    "ConversionError",
    "ConversionInterrupted",
    "DiskSpaceError",
    "NonFiniteOutputError",
    "SourceModelError",
    "UnsupportedModelError",
]


class ConversionError(Exception):
    """Base class: a conversion step failed."""


class SourceModelError(ConversionError):
    """The model directory is missing files or cannot be read."""


class UnsupportedModelError(ConversionError):
    """The model's architecture or task is not one edge-convert supports (yet)."""


class DiskSpaceError(ConversionError):
    """Too little free disk space for the expected artifacts and temporary files (checked before
    a conversion starts: converters/inputs/preflight.py)."""

    def __init__(self, message: str, path: str, needed_bytes: int, free_bytes: int):
        self.path, self.needed_bytes, self.free_bytes = path, needed_bytes, free_bytes
        super().__init__(message)


class ConversionInterrupted(KeyboardInterrupt):
    """Ctrl-C while the pruned twins were being built (minutes of pruning and distillation): the
    unpruned artifacts already built were packaged and moved into place, `result` describes them.
    A KeyboardInterrupt still, so a script calling convert() stops as the user asked."""

    def __init__(self, result):
        self.result = result
        super().__init__(f"interrupted while building the pruned artifacts; {result.out} holds the unpruned ones")


class AccuracyError(ConversionError):
    """An artifact stays below the accuracy floor even with every fallback tried."""



class NonFiniteOutputError(AccuracyError):
    """An artifact computed NaN or Inf on a validation text (issue 10: such an artifact is
    refused, never scored: a NaN metric would otherwise compare as "not below" every floor)."""

    def __init__(self, artifact: str, text: str, index: int):
        self.artifact, self.text, self.index = artifact, text, index
        shown = text if len(text) <= 80 else text[:77] + "..."
        super().__init__(
            f"{artifact} computes non-finite outputs (NaN or Inf) on validation text #{index}: {shown!r}"
        )
