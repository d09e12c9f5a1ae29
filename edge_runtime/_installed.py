"""Which inference backends are installed here, and their versions, without importing them."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
from pathlib import Path

__all__ = ["installed_backends"]

# distribution -> the module it installs (find_spec locates it without importing it)
_BACKEND_MODULES = {
    "onnxruntime": "onnxruntime",
    "onnxruntime-gpu": "onnxruntime",
    "ai-edge-litert": "ai_edge_litert",
    "tflite-runtime": "tflite_runtime",
}


def installed_backends() -> dict[str, str]:
    """Backend distributions and their versions. importlib.metadata.version() parses every
    METADATA file with the email package (5-7 ms for four names, more on a busy device, in every
    fresh process); the version is in the name of the .dist-info directory beside the module,
    so that is read first, and metadata is only the fallback (egg or zip installs)."""
    found = {}
    listings: dict[Path, dict[str, str]] = {}
    for dist, module in _BACKEND_MODULES.items():
        try:
            spec = importlib.util.find_spec(module)  # locates, does not import
        except (ImportError, ValueError):
            spec = None
        if spec is None:
            continue
        site = Path(next(iter(spec.submodule_search_locations or [spec.origin or "."]))).parent
        if site not in listings:
            listings[site] = _dist_info_versions(site)
        key = dist.replace("-", "_").lower()
        if key in listings[site]:
            found[dist] = listings[site][key]
        elif not any(d.replace("-", "_") in listings[site] for d, m in _BACKEND_MODULES.items() if m == module):
            try:  # installed some other way: ask the metadata
                found[dist] = importlib.metadata.version(dist)
            except importlib.metadata.PackageNotFoundError:
                pass
    return found


def _dist_info_versions(site: Path) -> dict[str, str]:
    """{normalized distribution name: version} from `<name>-<version>.dist-info` in site."""
    try:
        names = os.listdir(site)
    except OSError:
        return {}
    versions = {}
    for name in names:
        if name.endswith(".dist-info"):
            dist, _, version = name[: -len(".dist-info")].rpartition("-")
            if dist and version[:1].isdigit():
                versions[dist.lower()] = version
    return versions
