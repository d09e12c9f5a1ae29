"""The tuning cache: what a sweep (edge_runtime/_tune.py) measured on this device, read by `load()`.

One JSON file per artifact directory and CPU under default_cache_dir()/tuning/, holding what it
is valid for (identity: the CPU tag, edge_runtime's and the backends' versions and every
artifact's hashes). A file that does not parse (not UTF-8, not JSON, not the shape a sweep
writes), or was made for anything else, is ignored with a warning and replaced by the next sweep;
files are written atomically. A result decides the artifact and its threads, so it is read only
from a directory private to this user, as the backends' device caches are (backends/_cache.py,
private_problem).

Kept apart from the sweep so that loading reads results without importing what measures them
(the sweep itself opens artifacts through `load()`): _model and _select import this module,
_tune imports them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shlex
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_runtime import _device
from edge_runtime.backends._cache import (UnsafeCacheError, cache_root, cpu_tag, default_cache_dir,
                                          make_cache_dir, private_problem)

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
    is unusable (not private to this user, corrupted, or made for other artifacts, runtime or
    backend versions: logged)."""
    path = cache_file(root, cache_dir)
    if not os.path.lexists(path):  # no file: nothing to say, whatever the directories are like
        return None
    top = cache_root(tuning_dir(cache_dir))
    problem = private_problem(path, top)
    if problem:  # another account could have chosen the artifact and its thread count
        log.warning("not using the tuning cache %s: %s; %s", path, problem, _private_advice(problem, top))
        return None
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("tuning cache %s unreadable (%s); ignoring it", path, exc)
        return None
    try:
        # Decoded here, not by read_text(): bytes that are not UTF-8 (a card after a power cut)
        # are corruption like any other (UnicodeDecodeError is a ValueError).
        data = json.loads(raw.decode("utf-8"))
        problem = _shape_problem(data)
        if problem:
            raise ValueError(problem)
    except (ValueError, RecursionError) as exc:  # RecursionError: JSON nested too deep
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


def _shape_problem(data: Any) -> str:
    """What in a parsed file is not as a sweep writes it ("" when nothing): every field load(),
    edge-run --info and edge-tune's table read, checked here once so that none of them meets a
    wrong type (a hand edit, a damaged card) and fails with a traceback."""
    if not isinstance(data, dict) or data.get("schema_version") != SCHEMA_VERSION:
        return f"schema_version {data.get('schema_version') if isinstance(data, dict) else None}"
    if not isinstance(data.get("identity"), dict):
        return "no identity"
    if not isinstance(data.get("artifacts"), dict):
        return "no artifacts"
    # _select imports this module: its cap is looked up when a file is read. load(threads=)
    # refuses more than the cap (each thread costs memory inside the backend's start-up, where
    # no signal is handled); a cached count is held to the same limit.
    from edge_runtime._select import max_threads

    cap = max_threads()
    for name, best in data["artifacts"].items():
        if not (isinstance(name, str) and _row_ok(best, cap) and isinstance(best.get("sweep"), list)
                and all(_row_ok(row, cap) and isinstance(row.get("runs"), int) for row in best["sweep"])
                and isinstance(best.get("input", {}), dict)):
            return f"bad entry for {name!r}"
    if not isinstance(data.get("fastest"), (str, type(None))) or not isinstance(data.get("refused", {}), dict):
        return "bad fastest or refused"
    compared = data.get("compared")
    if compared is not None and not (isinstance(compared, dict) and all(_timing_ok(s) for s in compared.values())):
        return "bad compared"
    return ""


def _row_ok(row: Any, cap: int) -> bool:
    """A setting (1 to `cap` threads) and its timings, as an artifact's best and each sweep row
    hold them."""
    if not (isinstance(row, dict) and _timing_ok(row)):
        return False
    threads, spinning = row.get("threads"), row.get("spinning")
    return (isinstance(threads, int) and not isinstance(threads, bool) and 1 <= threads <= cap
            and (spinning is None or isinstance(spinning, bool)))


def _timing_ok(score: Any) -> bool:
    """p50_ms and p90_ms, finite milliseconds (edge-tune prints them, --info compares them)."""
    return isinstance(score, dict) and all(
        isinstance(score.get(key), (int, float)) and not isinstance(score.get(key), bool)
        and math.isfinite(score[key]) and score[key] >= 0
        for key in ("p50_ms", "p90_ms")
    )


def _private_advice(problem: str, top: Path) -> str:
    """What makes a refused tuning cache usable: `problem` is backends/_cache.path_problem's."""
    why = "a tuning cache is trusted only as this user's private directory"
    if " is writable by " in problem:  # this user's own, but open to others: close it
        return f"make it private (chmod -R go-w {shlex.quote(str(top))}): {why}"
    return f"set XDG_CACHE_HOME to a directory of this user's own: {why}"


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
        # Refused as not private (writable, but by others too): "a writable directory" would not help
        advice = (_private_advice(str(exc), cache_root(path.parent)) if isinstance(exc, UnsafeCacheError)
                  else "set XDG_CACHE_HOME to a writable directory")
        log.warning("could not write the tuning cache %s (%s); to keep tuning results, %s", path, exc, advice)
        return False
