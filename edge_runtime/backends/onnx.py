"""ONNX Runtime backend.

Device cache (`optimized_cache_dir`). At every session start onnxruntime optimizes the graph
(fusions, constant folding: an INT4 (W4A8) artifact's 4-bit weights are expanded there) and
then *prepacks* the MatMul weights: it copies them into its kernels' packed layouts on the heap.
That copy undoes the memory-mapped external weights of the artifact (they stay mapped, but the
kernels read a private anonymous copy) and, with the optimization, is most of a load. Measured
with tools/bench_cold_start.py (benchmarks/RESULTS.md, run I "cold start and memory on the
device", and run S).

With a cache directory the first load of an artifact saves a device form of it, and every later
load opens that instead:
- the graph as optimized at the artifact's level (onnxruntime's "offline mode"), opened with
  graph optimization disabled: it is optimized already, and re-running the optimizers on it
  only costs time;
- its weights in one external file, aligned so onnxruntime memory-maps it, *with the prepacked
  weights* (`session.save_external_prepacked_constant_initializers`): the kernels use the packed
  blobs in place from the mapped file, so later loads hold no heap copy of them (onnxruntime
  1.32 still computes the packs at each session start and then uses the mapped ones: this saves
  memory, not packing time; run I measured it).
The saved graph and the packed layouts depend on the CPU (MLAS picks kernels by ISA) and on the
onnxruntime build, so an entry is named after the artifact's hashes, the onnxruntime version,
edge_runtime's version and entry format, the CPU tag (backends/_cache.py), the optimization
level and the providers. Only CPU-only sessions get an entry: prepacking is the CPU provider's,
and compiling providers (TensorRT) cannot save their graph at all.

An entry is built under a temporary name, opened once to prove onnxruntime can load it back
(a kernel that cannot take its weights prepacked fails here; the entry is then saved without
prepacked weights), its files' sha256 are recorded in complete.json, and it is renamed into
place. A load checks those hashes (see _entry_is_valid for when a file's stat signature stands
in for re-reading it); an entry that fails them, does not load, or fails the artifact's golden
sample (edge_runtime/_model.py) is deleted and rebuilt. The original artifact is never written.

Those checks compare the entry with records kept beside it, so they catch accidents, not someone
who can write the cache; a signature (docs/signing.md) covers the artifact, not its entry. An
entry is used only while it and every directory from the cache root down to it are private to
this user (backends/_cache.py, private_problem): one that is not is left alone, and the load goes
without the cache, with a warning. Entries are built owner-only (0700 / 0600).
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
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime._errors import BackendUnavailableError, ModelLoadError
from edge_runtime._manifest import file_sha256
from edge_runtime.backends._external_data import check_external_data_link
from edge_runtime.backends._cache import (PRIVATE_DIR, cache_root, check_sha256, cpu_tag,
                                          make_cache_dir, make_private, private_problem,
                                          signature, sweep_entries, touch, write_json)
from edge_runtime.backends._tensorrt import PROVIDER as TENSORRT
from edge_runtime.backends._tensorrt import place_engine_cache

log = logging.getLogger("edge_runtime")

__all__ = ["OnnxSession", "available", "installed_package", "open_session"]

_LEVELS = {
    "disabled": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}
_MODEL, _DATA = "model.onnx", "model.onnx.data"
_COMPLETE = "complete.json"  # written last into an entry: {file name: sha256}
_SIGNATURES = "verified.json"  # {file name: {"sha256", "stat"}}: files known unchanged since hashed
# What an entry holds and how it is opened; part of its name, so a runtime that builds entries
# differently never opens an older one. 2: prepacked weights, opened with optimization disabled.
_ENTRY_FORMAT = 2


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
        allow_spinning: bool | None = None,
        inter_op_threads: int = 1,
        engine_cache_dir: Path | None = None,
    ):
        """optimized_cache_dir: keep the device form of the model there (see the module
        docstring); model_sha256 names the entry (the manifest's hash, checked by the caller).
        engine_cache_dir: the device cache that TensorRT's engines go under when the provider
        options enable its engine cache without a path (backends/_tensorrt.py); None (device
        caching off) or no model_sha256 (not verified) turns that cache off.
        allow_spinning: whether idle intra-op threads spin (onnxruntime's
        session.intra_op.allow_spinning); None keeps onnxruntime's default (spin). Set from the
        device's tuning result (edge_runtime/_tune.py). inter_op_threads: the profile's
        threads.inter_op (from the manifest's runtime settings)."""
        from edge_runtime.backends import import_onnxruntime

        ort = import_onnxruntime()

        self.backend_version = ort.__version__

        def make_options(level: str = graph_optimization_level) -> Any:
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            # inter_op > 1 (the profile's threads.inter_op) runs independent branches of the
            # graph in parallel, which onnxruntime only does in its parallel execution mode.
            options.inter_op_num_threads = inter_op_threads
            if inter_op_threads > 1:
                options.execution_mode = ort.ExecutionMode.ORT_PARALLEL
            options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _LEVELS[level])
            if allow_spinning is not None:
                spin = "1" if allow_spinning else "0"
                options.add_session_config_entry("session.intra_op.allow_spinning", spin)
            return options

        # Providers the profile lists but this build lacks are dropped (logged by the caller
        # through .providers); the CPU provider is always last so the model always runs.
        installed = set(ort.get_available_providers())
        wanted = [p for p in execution_providers if p in installed]
        if "CPUExecutionProvider" not in wanted:
            wanted.append("CPUExecutionProvider")
        provider_options = provider_options or {}
        providers = [(p, provider_options.get(p, {})) for p in wanted]
        # Never into the working directory: keyed by the verified hash in the device cache, or off.
        placed = place_engine_cache(providers, engine_cache_dir, model_sha256, ort.__version__,
                                    Path(model_path).name)
        providers = _private_engine_caches(providers, placed, engine_cache_dir)

        self.optimized_cache: Path | None = None
        # "reused" | "created" | "unavailable" (could not be written) | "refused" (not private
        # to this user: _start) | None (not asked for)
        self.optimized_cache_state: str | None = None
        self._cache_root = cache_root(optimized_cache_dir) if optimized_cache_dir else None
        # False when onnxruntime could not load its prepacked weights back (graph-only entry)
        self.prepacked_weights_cached: bool | None = None
        if (
            optimized_cache_dir is not None
            and model_sha256
            and graph_optimization_level != "disabled"
        ):
            if wanted == ["CPUExecutionProvider"]:
                self.optimized_cache = _entry_dir(
                    Path(optimized_cache_dir),
                    model_sha256,
                    ort.__version__,
                    graph_optimization_level,
                    providers,
                )
            else:
                log.info(
                    "no device cache for %s: providers %s (the cache holds CPU-provider forms)",
                    Path(model_path).name,
                    wanted,
                )
        check_external_data_link(Path(model_path))  # before a load attempt or a cache entry hides it
        self._session = self._start(ort, Path(model_path), make_options, providers)
        self.providers = self._session.get_providers()
        self._output_names = [o.name for o in self._session.get_outputs()]
        _return_freed_memory()

    def _start(
        self, ort: Any, model_path: Path, make_options: Callable[..., Any], providers: list
    ) -> Any:
        """The session: from the cache entry when a valid one exists, else from the artifact
        (building the entry when one is asked for)."""
        entry = self.optimized_cache
        if entry is None:
            return _create(ort, model_path, make_options(), providers)
        problem = private_problem(entry, self._cache_root, contents=True)
        if problem:  # someone else could have written it: its records prove nothing then
            log.warning(
                "not using the device cache entry %s for %s: %s. A device cache is trusted as "
                "this user's private directory (docs/signing.md, 'What a signature covers'): "
                "delete %s (the next load rebuilds it owner-only), or load with "
                "device_cache=False",
                entry, model_path.name, problem, self._cache_root,
            )
            self.optimized_cache, self.optimized_cache_state = None, "refused"
            return _create(ort, model_path, make_options(), providers)
        touch(entry)  # used now: a sweep by another process leaves it (backends/_cache.py)
        if _entry_is_valid(entry):
            try:
                session = _create(ort, entry / _MODEL, make_options("disabled"), providers)
                self.optimized_cache_state = "reused"
                return session
            except BackendUnavailableError as exc:
                log.warning(
                    "cached optimized model %s does not load (%s); rebuilding it", entry, exc
                )
                self.discard_optimized_cache()
        return self._build(ort, model_path, make_options, providers, entry)

    def _build(
        self,
        ort: Any,
        model_path: Path,
        make_options: Callable[..., Any],
        providers: list,
        entry: Path,
    ) -> Any:
        """Session from the artifact, saving the entry on the way (first load)."""
        for prepacked in (True, False):
            options = make_options()
            building = _start_entry(entry, options)
            if building is None:
                self.optimized_cache_state = "unavailable"
                return _create(ort, model_path, options, providers)
            if prepacked:
                options.add_session_config_entry(
                    "session.save_external_prepacked_constant_initializers", "1"
                )
            try:
                session = _create(ort, model_path, options, providers)
            except BackendUnavailableError as exc:
                # onnxruntime writes the graph while creating the session: a full disk or a
                # graph it cannot serialize fails the whole load. Load once more without it.
                shutil.rmtree(building, ignore_errors=True)
                log.warning(  # a full disk shows as a graph error in onnxruntime's text: the space is said
                    "could not save the optimized model in %s (%s; %s MB free there); loading without the cache",
                    entry, exc, _free_mb(entry.parent))
                self.optimized_cache_state = "unavailable"
                return _create(ort, model_path, make_options(), providers)
            problem = _loads_back(ort, building, make_options("disabled"), providers)
            if problem is None:
                self.prepacked_weights_cached = prepacked
                self.optimized_cache_state = _finish_entry(building, entry)
                touch(entry)  # the newest: the sweep keeps it among KEEP_ENTRIES
                sweep_entries(entry.parent, "-ort*", lambda d: [d])
                return session
            shutil.rmtree(building, ignore_errors=True)
            what = "with prepacked weights" if prepacked else "at all"
            log.warning(
                "onnxruntime cannot load the optimized model of %s back %s (%s)",
                model_path.name,
                what,
                problem,
            )
        self.optimized_cache_state = "unavailable"
        return session

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = self._session.run(self._output_names, feeds)
        return dict(zip(self._output_names, values))

    def discard_optimized_cache(self) -> None:
        """Delete this artifact's cache entry (it failed to load or computed wrong numbers)."""
        if self.optimized_cache is not None:
            shutil.rmtree(self.optimized_cache, ignore_errors=True)


def _free_mb(path: Path) -> str:
    try:
        return str(shutil.disk_usage(path).free >> 20)
    except OSError:
        return "?"


def _create(ort: Any, path: Path, options: Any, providers: list) -> Any:
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:  # a non-UTF-8 name: ORT's pybind11 binding takes UTF-8 str only
        raise ModelLoadError(
            f"onnxruntime {ort.__version__} cannot open {str(path)!r}: its path is not valid UTF-8 "
            "(onnxruntime takes UTF-8 paths only); rename the directory or copy it to a UTF-8 path "
            "(a symlink does not help: the directory is read through its resolved path)"
        ) from None
    try:
        # External weight data is memory-mapped by ORT's CPU loader; the model path is passed
        # (not bytes) so it can find the data file next to the graph.
        return ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as exc:  # ORT raises its own Fail/InvalidGraph types
        raise ModelLoadError(
            f"onnxruntime {ort.__version__} could not load {path.name}: {exc}"
        ) from exc


# -- cache entries ---------------------------------------------------------------------------------


def _entry_dir(
    cache_dir: Path, model_sha256: str, version: str, level: str, providers: list
) -> Path:
    from edge_runtime import __version__ as edge_version  # at call time: the package is initialized

    def safe(text: str) -> str:
        return "".join(c if c.isalnum() or c in ".-" else "_" for c in text)

    # Providers and their options shape the saved graph (and the build that has them).
    provider_key = _short_hash(json.dumps(providers, sort_keys=True, default=str))
    return cache_dir / (
        f"{model_sha256[:32]}-ort{safe(version)}-er{safe(edge_version)}.{_ENTRY_FORMAT}"
        f"-{cpu_tag()}-{level}-{provider_key}"
    )


def _entry_is_valid(entry: Path) -> bool:
    """True when every file complete.json lists has the recorded sha256.

    A file is re-hashed only when its stat signature differs from the one recorded in
    verified.json when it was last hashed, and the new signature is then recorded
    (backends/_cache.py, check_sha256, says why that is safe). This cache fits its condition:
    its files are written once, by onnxruntime, in a private temporary directory, and are signed
    after onnxruntime closed them."""
    try:
        recorded = json.loads((entry / _COMPLETE).read_text())
        if not isinstance(recorded, dict) or _MODEL not in recorded:
            return False
        try:
            signed = json.loads((entry / _SIGNATURES).read_text())
        except (OSError, ValueError):
            signed = {}
        signed = signed if isinstance(signed, dict) else {}
        changed = False
        recorded = {
            name: digest
            for name, digest in recorded.items()
            if name not in (_COMPLETE, _SIGNATURES)
        }
        for name, digest in recorded.items():
            if Path(name).name != name:  # a hand-edited record naming files outside the entry
                return False
            known = signed.get(name)
            # A record vouches only for the hash complete.json has now.
            known_stat = (
                known.get("stat")
                if isinstance(known, dict) and known.get("sha256") == digest
                else None
            )
            matches, new_signature = check_sha256(entry / name, digest, known_stat)
            if not matches:
                return False
            if new_signature is not None:
                signed[name], changed = {"sha256": digest, "stat": new_signature}, True
        if changed:
            _write_signatures(entry, {name: signed[name] for name in recorded})
        return True
    except (OSError, ValueError, AttributeError, TypeError):
        return False


def _write_signatures(entry: Path, signed: dict[str, Any]) -> None:
    """Replace the entry's signature record atomically; best effort (a read-only cache just
    hashes its files at every load)."""
    try:
        write_json(entry / _SIGNATURES, signed)
    except OSError as exc:
        log.debug("could not record the file signatures of %s: %s", entry, exc)


def _start_entry(entry: Path, options: Any) -> Path | None:
    """Ask onnxruntime to save the optimized graph into a temporary sibling of `entry`; None
    when the cache directory cannot be written (the session then just loads as usual)."""
    # pid first (_remove_orphans reads it), then a random part: threads of one process loading
    # the same artifact at once each build in their own directory.
    tmp = entry.parent / f".{entry.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        _remove_orphans(entry)
        make_cache_dir(entry.parent)
        tmp.mkdir(mode=PRIVATE_DIR)
    except OSError as exc:
        log.warning(
            "optimized-model cache %s not writable (%s); loading without it (set XDG_CACHE_HOME "
            "to a writable directory, or pass device_cache=False or a writable path to load())",
            entry.parent,
            exc,
        )
        return None
    options.optimized_model_filepath = str(tmp / _MODEL)
    # onnxruntime warns that a graph saved at this level is hardware-specific: the entry's name
    # has the CPU in it for that reason, so keep the user's terminal quiet (errors still show).
    options.log_severity_level = 3
    # Weights go to one external file next to the graph, memory-mapped when loaded.
    options.add_session_config_entry(
        "session.optimized_model_external_initializers_file_name", _DATA
    )
    options.add_session_config_entry(
        "session.optimized_model_external_initializers_min_size_in_bytes", "1024"
    )
    return tmp


def _loads_back(ort: Any, building: Path, options: Any, providers: list) -> str | None:
    """None when onnxruntime opens the saved entry, else why not. The session is dropped at once
    (its weights are mapped from the entry, so this costs little memory)."""
    try:
        session = _create(ort, building / _MODEL, options, providers)
    except BackendUnavailableError as exc:
        return str(exc)
    del session
    return None


def _remove_orphans(entry: Path) -> None:
    """Delete temporary builds of `entry` left by processes that no longer exist (a load killed
    while expanding INT4 weights, e.g. by the out-of-memory killer on a small board)."""
    for tmp in entry.parent.glob(f".{entry.name}.*.tmp"):
        try:
            os.kill(int(tmp.name[len(entry.name) + 2 :].split(".")[0]), 0)
        except ProcessLookupError:
            shutil.rmtree(tmp, ignore_errors=True)
        except (ValueError, OSError):
            continue  # a foreign name, or another user's live process


def _private_engine_caches(asked: list, placed: list, cache_dir: Path | None) -> list:
    """`placed` (place_engine_cache's providers), with a TensorRT engine cache it put in the
    device cache turned off unless that directory is private to this user, as an entry must be
    (onnxruntime loads whatever engine it finds there). A path the profile gave is left as is."""
    checked = []
    for (name, before), (_, options) in zip(asked, placed):
        path = options.get("trt_engine_cache_path")
        if name == TENSORRT and path and not before.get("trt_engine_cache_path") and cache_dir:
            problem = private_problem(Path(path), cache_root(cache_dir), contents=True)
            if problem:
                log.warning("no TensorRT engine cache: %s; its engines are built at every load "
                            "(delete %s: the next load rebuilds it owner-only)", problem,
                            cache_root(cache_dir))
                options = {k: v for k, v in options.items() if k != "trt_engine_cache_path"}
                options["trt_engine_cache_enable"] = False
        checked.append((name, options))
    return checked


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def _finish_entry(tmp: Path, entry: Path) -> str:
    """Record the saved files' hashes and signatures, then rename the entry into place (atomic;
    the files keep their inodes and times, so the signatures stay valid)."""
    try:
        files = sorted(p for p in tmp.iterdir() if p.is_file())
        if not any(p.name == _MODEL for p in files):
            raise OSError("onnxruntime saved no optimized model")
        for path in files:  # onnxruntime wrote them with the umask's mode: owner-only now,
            make_private(path)  # before the signatures (chmod changes ctime)
        # Signature first, hash second: a write between the two leaves a signature that no
        # longer matches, so the next load hashes the file again.
        signatures = {p.name: signature(p) for p in files}
        digests = {p.name: file_sha256(p) for p in files}
        write_json(
            tmp / _SIGNATURES,
            {name: {"sha256": digests[name], "stat": signatures[name]} for name in digests},
        )
        write_json(tmp / _COMPLETE, digests)
        if entry.exists():
            if _entry_is_valid(entry):  # a parallel load installed it first: keep theirs
                shutil.rmtree(tmp, ignore_errors=True)
                return "created"
            shutil.rmtree(entry)  # invalid: replace it
        try:
            os.rename(tmp, entry)
        except OSError:
            if not _entry_is_valid(entry):
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # a parallel load won the rename: keep theirs
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
