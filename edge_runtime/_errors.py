"""Errors edge_runtime raises. All derive from EdgeRuntimeError so callers can catch one type."""

from __future__ import annotations

__all__ = [
    "ArtifactError",
    "BackendUnavailableError",
    "ModelLoadError",
    "DeviceMismatchError",
    "EdgeRuntimeError",
    "GoldenMismatchError",
    "InputError",
    "ManifestError",
    "SignatureError",
]


class EdgeRuntimeError(Exception):
    """Base class of every error raised by edge_runtime."""


class ManifestError(EdgeRuntimeError):
    """The artifact directory or its manifest.json is missing, malformed or unsafe."""


class ArtifactError(EdgeRuntimeError):
    """An artifact file is missing, or its bytes do not match the manifest's hash."""


class BackendUnavailableError(EdgeRuntimeError):
    """No installed backend can run the requested artifact."""


class ModelLoadError(BackendUnavailableError):
    """The backend is installed but could not load this artifact's file (an operator it lacks,
    a file it cannot parse). A BackendUnavailableError too: load() then tries the next artifact
    the same way it does when the backend is missing."""


class DeviceMismatchError(EdgeRuntimeError):
    """The artifact was made for arithmetic this device does not have (it would compute wrong
    numbers here, e.g. INT8 weights for a VNNI/ARM64 target on an AVX2-only CPU)."""


class GoldenMismatchError(EdgeRuntimeError):
    """The installed backend computes different numbers than the converter recorded."""


class InputError(EdgeRuntimeError, ValueError):
    """Inputs passed to run/embed/classify do not match the model's signature or task."""


class SignatureError(EdgeRuntimeError):
    """The artifact directory is unsigned, signed by a key that is not trusted, or changed since
    it was signed (load(..., trusted_keys=[...]); edge_runtime/_signing.py)."""
