"""Errors of the workstation side. User errors say what to change; ConversionError is ours."""

from __future__ import annotations

__all__ = ["AccuracyError", "ConversionError", "SourceModelError", "UnsupportedModelError"]


class ConversionError(Exception):
    """Base class: a conversion step failed."""


class SourceModelError(ConversionError):
    """The model directory is missing files or cannot be read."""


class UnsupportedModelError(ConversionError):
    """The model's architecture or task is not one edge-convert supports (yet)."""


class AccuracyError(ConversionError):
    """An artifact stays below the accuracy floor even with every fallback tried."""
