"""ONNX Runtime backend.

Optimized-model cache (`optimized_cache_dir`): onnxruntime optimizes a graph every time a session
starts. For most artifacts that is cheap; an INT4 (W4A8) artifact's 4-bit weights are expanded
to int8 there by constant folding, which costs more than the rest of the load (measured on MiniLM:
session creation 210-244 ms against 41 ms from the optimized graph, same outputs). With a cache
directory the optimized graph of such an artifact is saved at its first load and opened directly
by later ones. The entry is named after the artifact's sha256, the onnxruntime version, the CPU
(the saved graph may hold CPU-specific layouts) and the optimization level; it is built under a
temporary name, its files' hashes are recorded, and it is renamed into place only when complete.
A cached graph whose files do not match their recorded hashes is rebuilt.
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime._errors import BackendUnavailableError
from edge_runtime._manifest import file_sha256
from edge_runtime.backends._cache import cpu_tag

log = logging.getLogger("edge_runtime")
_COMPLETE = "complete.json"  # written last into a cache entry: the files and their hashes

__all__ = ["OnnxSession", "available", "installed_package", "open_session"]

_LEVELS = {"disabled": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC",
           "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}


def available() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None


def installed_package() -> str | None:
    return "onnxruntime" if available() else None


class OnnxSession:
    backend_name = "onnxruntime"

    def __init__(
        self,
        model_path: Path,
        threads: int,
        execution_providers: tuple[str, ...] = ("CPUExecutionProvider",),
        provider_options: dict[str, dict[str, Any]] | None = None,
        graph_optimization_level: str = "all",
        optimized_cache_dir: Path | None = None,
        model_sha256: str | None = None,
    ):
        """optimized_cache_dir: keep the optimized graph there (see the module docstring);
        model_sha256 names the entry (the manifest's hash, checked by the caller)."""
        import onnxruntime as ort

        self.backend_version = ort.__version__
        self.optimized_cache: Path | None = None
        # "reused" | "created" | "unavailable" (could not be written) | None (not asked for)
        self.optimized_cache_state: str | None = None
        if optimized_cache_dir is not None and model_sha256 and graph_optimization_level != "disabled":
            self.optimized_cache = _entry_dir(Path(optimized_cache_dir), model_sha256, ort.__version__,
                                              graph_optimization_level)
        def make_options() -> Any:
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _LEVELS[graph_optimization_level])
            return options

        # Providers the profile lists but this build lacks are dropped (logged by the caller
        # through .providers); the CPU provider is always last so the model always runs.
        installed = set(ort.get_available_providers())
        wanted = [p for p in execution_providers if p in installed]
        if "CPUExecutionProvider" not in wanted:
            wanted.append("CPUExecutionProvider")
        provider_options = provider_options or {}
        providers = [(p, provider_options.get(p, {})) for p in wanted]
        if self.optimized_cache is not None:
            # The saved graph depends on the providers (and the onnxruntime build that has them).
            self.optimized_cache = self.optimized_cache.with_name(
                f"{self.optimized_cache.name}-{_short_hash(' '.join(wanted))}")
        self._session = self._start(ort, Path(model_path), make_options, providers)
        self.providers = self._session.get_providers()
        self._output_names = [o.name for o in self._session.get_outputs()]
        _return_freed_memory()

    def _start(self, ort: Any, model_path: Path, make_options: Callable[[], Any], providers: list) -> Any:
        """The session: from the cached optimized graph when a valid one exists, else from the
        artifact (saving its optimized graph when a cache entry is asked for)."""
        entry = self.optimized_cache
        if entry is None:
            return _create(ort, model_path, make_options(), providers)
        if _entry_is_valid(entry):
            try:
                session = _create(ort, entry / "model.onnx", make_options(), providers)
                self.optimized_cache_state = "reused"
                return session
            except BackendUnavailableError as exc:
                log.warning("cached optimized model %s does not load (%s); rebuilding it", entry, exc)
                self.discard_optimized_cache()
        options = make_options()
        building = _start_entry(entry, options)
        if building is None:
            self.optimized_cache_state = "unavailable"
            return _create(ort, model_path, options, providers)
        try:
            session = _create(ort, model_path, options, providers)
        except BackendUnavailableError as exc:
            # onnxruntime writes the graph while creating the session: a full disk or a graph it
            # cannot serialize fails the whole load. Load once more without the cache.
            shutil.rmtree(building, ignore_errors=True)
            log.warning("could not save the optimized model in %s (%s); loading without the cache", entry, exc)
            self.optimized_cache_state = "unavailable"
            return _create(ort, model_path, make_options(), providers)
        self.optimized_cache_state = _finish_entry(building, entry)
        return session

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = self._session.run(self._output_names, feeds)
        return dict(zip(self._output_names, values))

    def discard_optimized_cache(self) -> None:
        """Delete this artifact's cached graph (after it computed wrong numbers)."""
        if self.optimized_cache is not None:
            shutil.rmtree(self.optimized_cache, ignore_errors=True)


def _create(ort: Any, path: Path, options: Any, providers: list) -> Any:
    try:
        # External weight data is memory-mapped by ORT's CPU loader; the model path is passed
        # (not bytes) so it can find the data file next to the graph.
        return ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as exc:  # ORT raises its own Fail/InvalidGraph types
        raise BackendUnavailableError(f"onnxruntime {ort.__version__} could not load {path.name}: {exc}") from exc


# -- optimized-model cache entries --------------------------------------------------------------


def _entry_dir(cache_dir: Path, model_sha256: str, version: str, level: str) -> Path:
    safe_version = "".join(c if c.isalnum() or c in ".-" else "_" for c in version)
    return cache_dir / f"{model_sha256[:32]}-ort{safe_version}-{cpu_tag()}-{level}"


def _entry_is_valid(entry: Path) -> bool:
    try:
        recorded = json.loads((entry / _COMPLETE).read_text())
        return bool(recorded) and all(file_sha256(entry / name) == digest for name, digest in recorded.items())
    except (OSError, ValueError, AttributeError):
        return False


def _start_entry(entry: Path, options: Any) -> Path | None:
    """Ask onnxruntime to save the optimized graph into a temporary sibling of `entry`; None
    when the cache directory cannot be written (the session then just loads as usual)."""
    tmp = entry.parent / f".{entry.name}.{os.getpid()}.tmp"
    try:
        _remove_orphans(entry)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    except OSError as exc:
        log.warning("optimized-model cache %s not writable (%s); loading without it", entry.parent, exc)
        return None
    options.optimized_model_filepath = str(tmp / "model.onnx")
    # onnxruntime warns that a graph saved at this level is hardware-specific: the entry's name
    # has the CPU in it for that reason, so keep the user's terminal quiet (errors still show).
    options.log_severity_level = 3
    # Weights go to one external file next to the graph, memory-mapped when loaded.
    options.add_session_config_entry("session.optimized_model_external_initializers_file_name", "model.onnx.data")
    options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    return tmp


def _remove_orphans(entry: Path) -> None:
    """Delete temporary builds of `entry` left by processes that no longer exist (a load killed
    while expanding INT4 weights, e.g. by the out-of-memory killer on a small board)."""
    for tmp in entry.parent.glob(f".{entry.name}.*.tmp"):
        try:
            os.kill(int(tmp.name[len(entry.name) + 2:].split(".")[0]), 0)
        except ProcessLookupError:
            shutil.rmtree(tmp, ignore_errors=True)
        except (ValueError, OSError):
            continue  # a foreign name, or another user's live process


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def _finish_entry(tmp: Path, entry: Path) -> str:
    """Record the saved files' hashes, then rename the entry into place (atomic)."""
    try:
        files = sorted(p for p in tmp.iterdir() if p.is_file())
        if not any(p.name == "model.onnx" for p in files):
            raise OSError("onnxruntime saved no optimized model")
        (tmp / _COMPLETE).write_text(json.dumps({p.name: file_sha256(p) for p in files}))
        if entry.exists():
            if _entry_is_valid(entry):  # a parallel load installed it first: keep theirs
                shutil.rmtree(tmp, ignore_errors=True)
                return "created"
            shutil.rmtree(entry)  # invalid: replace it
        os.rename(tmp, entry)
        return "created"
    except OSError as exc:
        log.warning("could not store the optimized model in %s (%s)", entry, exc)
        shutil.rmtree(tmp, ignore_errors=True)
        return "unavailable"


def _return_freed_memory() -> None:
    """Give the heap memory that session creation freed back to the OS (glibc only).

    Constant folding at load (the INT4 artifacts' 4-bit codes are expanded to int8 through
    float temporaries) frees ~150 MB that glibc keeps mapped: measured on MiniLM INT4, RSS
    248 MB after load, 102 MB after malloc_trim, with the same outputs. On a 4 GB board that is
    the difference that matters. Best effort: other C libraries have no malloc_trim."""
    if not sys.platform.startswith("linux"):
        return
    try:
        # The process's own symbols: no library search (find_library runs ldconfig) at load.
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


def open_session(model_path: Path, **options: Any) -> OnnxSession:
    if not available():
        raise BackendUnavailableError("onnxruntime is not installed")
    return OnnxSession(model_path, **options)
