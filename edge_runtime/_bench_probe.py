"""The child process of edge-bench: one load of one artifact in a fresh interpreter.

edge-bench starts this module once per artifact x shape x threads with an empty device cache
("first" load) and once more with the cache that load left ("second" load), so load times and
memory are those of real process starts, not of a process that already holds the backend, the
page-aligned weights and the allocator's arenas. Started as

    python -c "<started = perf_counter(); import edge_runtime._bench_probe ...>" SPEC_JSON

so that importing edge_runtime itself is timed too (import_s), then the backend package
(backend_import_s), then edge_runtime.load() (load_s) and the first run (first_result_s).
Prints one line `PROBE_MARKER {json}`.
"""

from __future__ import annotations

import importlib
import json
import os
import resource
import sys
import time
from typing import Any, NoReturn

import numpy as np

import edge_runtime
from edge_runtime import backends
from edge_runtime._errors import EdgeRuntimeError

__all__ = ["PROBE_MARKER", "main", "process_memory"]

PROBE_MARKER = "EDGE-BENCH-PROBE"
# /proc/self/status field -> our key; values there are in kB
_STATUS_FIELDS = {
    "VmRSS": "rss_bytes",
    "RssAnon": "rss_anon_bytes",
    "RssFile": "rss_file_bytes",
    "RssShmem": "rss_shmem_bytes",
    "VmHWM": "peak_rss_bytes",
}


# Installed backend package -> the module its session imports first. Imported before the load
# is timed: a process pays it once whatever it loads, and it would dwarf the difference between
# a first and a second load (onnxruntime: ~0.3 s here). What a backend imports lazily beyond
# it stays in load_s.
_BACKEND_MODULES = {
    "onnxruntime": "onnxruntime",
    "ai-edge-litert": "ai_edge_litert.interpreter",
    "tflite-runtime": "tflite_runtime.interpreter",
}


def process_memory(status_path: str = "/proc/self/status") -> dict[str, Any]:
    """Resident memory of this process in bytes, split into anonymous (heap, packed weights,
    arenas) and file-backed (mapped model files, shared libraries) pages, plus the peak.

    From /proc/self/status (Linux); without it, psutil's RSS and getrusage's peak, and no split
    (None: not measurable there, rather than a guess)."""
    try:
        with open(status_path, encoding="ascii", errors="replace") as handle:
            lines = handle.read().splitlines()
    except OSError:
        lines = []
    found: dict[str, Any] = {}
    for line in lines:
        key, _, value = line.partition(":")
        if key in _STATUS_FIELDS:
            found[_STATUS_FIELDS[key]] = int(value.split()[0]) * 1024
    if "rss_bytes" in found:
        return {name: found.get(name) for name in _STATUS_FIELDS.values()} | {"source": "proc"}
    import psutil

    # ru_maxrss is in kB on Linux and in bytes on macOS (getrusage(2) of each).
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak *= 1 if sys.platform == "darwin" else 1024
    memory = {name: None for name in _STATUS_FIELDS.values()}
    memory.update(rss_bytes=psutil.Process().memory_info().rss, peak_rss_bytes=peak)
    return memory | {"source": "psutil"}


def _cache_state(model: edge_runtime.Model) -> str:
    """What the backend did with its device cache: created, reused, unavailable, or none."""
    session = model._session  # same package; the cache state is not public API
    for attribute in ("weight_cache_state", "optimized_cache_state"):
        state = getattr(session, attribute, None)
        if state is not None:
            return str(state)
    return "none"


def probe(spec: dict[str, Any], started: float) -> dict[str, Any]:
    """Load, run once, measure. `started`: perf_counter() before edge_runtime was imported."""
    import_s = time.perf_counter() - started
    with np.load(spec["feeds"], allow_pickle=False) as data:
        feeds = {name: data[name] for name in data.files}
    package = backends.installed_package(spec["format"])
    t0 = time.perf_counter()
    if package in _BACKEND_MODULES:
        importlib.import_module(_BACKEND_MODULES[package])
    backend_import_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    # threads given: no tuning sweep inside the timed load (edge_runtime._tune)
    model = edge_runtime.load(
        spec["root"],
        artifact=spec["artifact"],
        threads=spec["threads"],
        verify=spec["verify"],
        device_cache=spec["cache_dir"],
    )
    t1 = time.perf_counter()
    model.run(feeds)
    t2 = time.perf_counter()
    memory = process_memory()
    return {
        "import_s": import_s,
        "backend_import_s": backend_import_s,
        "open_s": model.load_seconds,
        "load_s": t1 - t0,
        "first_result_s": t2 - t1,
        "load_to_first_result_s": t2 - t0,
        # wall clock, across processes: interpreter start, imports, load and the first run
        "spawn_to_first_result_s": time.time() - spec["spawned_at"],
        "device_cache": _cache_state(model),
        "memory": memory,
    }


def main(spec_json: str, started: float) -> NoReturn:
    spec = json.loads(spec_json)
    try:
        result = {"status": "ok", "error": None} | probe(spec, started)
        code = 0
    except EdgeRuntimeError as exc:  # the parent records it; anything else is a crash to see
        result = {"status": "error", "error": f"{type(exc).__name__}: {exc}"}
        code = 1
    sys.stdout.flush()
    print(PROBE_MARKER, json.dumps(result), flush=True)
    # Skip interpreter teardown (backend destructors, thread pools): not part of a load.
    os._exit(code)
