"""The tuning cache: what a sweep (edge_runtime/_tune.py) measured on this device, read by `load()`.

One JSON file per artifact directory and CPU under default_cache_dir()/tuning/, holding what it
is valid for (identity: the CPU tag, edge_runtime's and the backends' versions and every
artifact's hashes). A file that does not parse, or was made for anything else, is ignored with a
warning and replaced by the next sweep; files are written atomically.

Kept apart from the sweep so that loading reads results without importing what measures them
(the sweep itself opens artifacts through `load()`): _model and _select import this module,
_tune imports them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_runtime import _device
from edge_runtime.backends._cache import cpu_tag, default_cache_dir, make_cache_dir

__all__ = ["SCHEMA_VERSION", "Setting", "cache_file", "identity", "read_cached", "setting_for", "tuning_dir",
           "write_atomic"]

log = logging.getLogger("edge_runtime")

SCHEMA_VERSION = 1
# The distributions whose versions a result was measured with, per artifact format.
_BACKEND_DIST = {
    "onnx": ("onnxruntime", "onnxruntime-gpu"),
    "tflite": ("ai-edge-litert", "tflite-runtime"),
}


@dataclass(frozen=True)
class Setting:
    threads: int
    spinning: bool | None  # onnxruntime session.intra_op.allow_spinning; None: not applicable

    def label(self) -> str:
        spin = "" if self.spinning is None else (", spinning" if self.spinning else ", no spinning")
        return f"{self.threads} thread{'s' if self.threads != 1 else ''}{spin}"


def tuning_dir(cache_dir: Path | None) -> Path:
    return Path(cache_dir) if cache_dir is not None else default_cache_dir() / "tuning"


def cache_file(root: Path, cache_dir: Path | None = None) -> Path:
    """One file per artifact directory and CPU (what it holds is checked when it is read)."""
    # fsencode: the path's own bytes (a non-UTF-8 name is surrogate-escaped in str; .encode()
    # would raise on it).
    where = hashlib.sha256(os.fsencode(Path(root).resolve())).hexdigest()[:16]
    return tuning_dir(cache_dir) / f"{where}-{cpu_tag()}.json"


def identity(manifest: dict[str, Any]) -> dict[str, Any]:
    import edge_runtime

    installed = _device.detect(measure_int8=False).backends
    formats = sorted({e["format"] for e in manifest["artifacts"]})
    return {
        "cpu_tag": cpu_tag(),
        "edge_runtime": edge_runtime.__version__,
        "backends": {
            d: installed[d] for f in formats for d in _BACKEND_DIST.get(f, ()) if d in installed
        },
        "artifacts": {
            e["name"]: hashlib.sha256("".join(f["sha256"] for f in e["files"]).encode()).hexdigest()
            for e in manifest["artifacts"]
        },
    }


def read_cached(
    root: Path, manifest: dict[str, Any], cache_dir: Path | None = None
) -> dict[str, Any] | None:
    """The cached tuning result for this directory on this device, None when there is none or it
    is unusable (corrupted, or made for other artifacts, runtime or backend versions: logged)."""
    path = cache_file(root, cache_dir)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("tuning cache %s unreadable (%s); ignoring it", path, exc)
        return None
    # _select imports this module: its cap is looked up when a file is read. load(threads=)
    # refuses more than the cap (each thread costs memory inside the backend's start-up, where
    # no signal is handled); a cached count is held to the same limit.
    from edge_runtime._select import max_threads

    try:
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("schema_version") != SCHEMA_VERSION:
            raise ValueError(
                f"schema_version {data.get('schema_version') if isinstance(data, dict) else None}"
            )
        for name, best in data["artifacts"].items():  # the fields load() and tune() rely on
            if not (isinstance(name, str) and 1 <= int(best["threads"]) <= max_threads()):
                raise ValueError(f"bad entry for {name!r}")
            if best.get("spinning") not in (None, True, False):
                raise ValueError(f"bad spinning for {name!r}")
        if not isinstance(data.get("identity"), dict):
            raise ValueError("no identity")
        if not isinstance(data.get("fastest"), (str, type(None))) or not isinstance(data.get("refused", {}), dict):
            raise ValueError("bad fastest or refused")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        log.warning(
            "tuning cache %s is corrupted (%s); ignoring it, the next tuning replaces it", path, exc
        )
        return None
    want = identity(manifest)
    stale = [key for key in want if data["identity"].get(key) != want[key]]
    if stale:
        log.warning(
            "tuning cache %s was made for other %s; ignoring it, the next tuning replaces it",
            path,
            ", ".join(stale),
        )
        return None
    return data


def setting_for(cached: dict[str, Any] | None, name: str) -> Setting | None:
    best = (cached or {}).get("artifacts", {}).get(name)
    if not best:
        return None
    return Setting(int(best["threads"]), best.get("spinning"))


def write_atomic(path: Path, data: dict[str, Any]) -> bool:
    """Write `data` to `path` whole or not at all; False (logged) when it could not be written."""
    tmp = None
    try:
        make_cache_dir(path.parent)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(data, out, indent=1)
        os.replace(tmp, path)
        return True
    except OSError as exc:  # a read-only home: tuning still applies to this process
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        log.warning(
            "could not write the tuning cache %s (%s); set XDG_CACHE_HOME to a writable directory "
            "to keep tuning results",
            path,
            exc,
        )
        return False
