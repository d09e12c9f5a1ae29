"""`edge_runtime.load(path)`: an artifact directory -> the Model this device should run.

Reads the manifest (and checks the signature when keys are given), picks the artifact (the
profile's order, memory fit, installed backends, a cached tuning result: _select), the threads
(the caller's, the device's tuning, the profile's, the physical cores), the device caches and
how much to verify, then opens it (_model.open_entry), falling back to the next artifact when one
fails its golden sample. With tune=True a first-use sweep (_tune) measures the threads first.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edge_runtime import _device, _load_args, _select, _signing, _tune, _tuning_cache
from edge_runtime._errors import (
    BackendUnavailableError,
    DeviceMismatchError,
    EdgeRuntimeError,
    GoldenMismatchError,
    InputError,
    ManifestError,
)
from edge_runtime._manifest import MANIFEST_NAME, read_manifest, unknown_artifacts
from edge_runtime._model import Model, open_entry
from edge_runtime._select import physical_cores
from edge_runtime._verified import Verifications
from edge_runtime.backends._cache import default_cache_dir

__all__ = ["load"]

log = logging.getLogger("edge_runtime")


def load(
    path: str | os.PathLike,
    artifact: str | None = None,
    threads: int | None = None,
    verify: bool | str = True,
    device_cache: bool | str | os.PathLike = True,
    tune: bool | None = None,
    spinning: bool | None = None,
    trusted_keys: Sequence[str | os.PathLike | bytes] | None = None,
    memory_budget_mb: float | None = None,
    weight_cache: bool | str | os.PathLike | None = None,
) -> Model:
    """Load an edge-convert artifact directory.

    artifact: a name from the manifest; None picks the best one this device can run: the
        profile's order, artifacts that do not fit the available memory last, the fastest here
        first when a tuning result says so (`edge-tune DIR`); skipping, with a warning, any that
        fail the golden self-check. The choice and its reason are logged (`edge-run DIR --info`
        shows them without loading).
    threads: intra-op threads; always wins when given; 0: the physical cores of the fastest
        core cluster (physical_cores()), ignoring tuning and the profile. None: this device's
        tuned setting for the artifact, else the target profile's default, else those cores.
    verify: check file hashes and run the golden samples (recommended). True (default): in
        full at the first load on this device; later loads of unchanged files (same stat
        signature) on the same runtime, CPU, threads and options skip the hashes and run only
        the shortest golden sample (records in the device cache; edge_runtime/_verified.py).
        "full": hashes and every golden sample at every load. False: none.
    device_cache: switches both backends' device caches, built at the first load and used by
        later ones, so that a load does not re-optimize and the packed weights stay in
        memory-mapped files instead of the heap (onnxruntime still computes its packs at session
        start: memory is saved there, not that time):
        - TFLite: XNNPACK's packed weights (ignored where the installed runtime cannot do it:
          tflite-runtime, older ai-edge-litert);
        - ONNX (every artifact, only with verify=True, CPU provider only): onnxruntime's
          optimized graph with its prepacked weights, opened without optimizing again;
        - TensorRT's engines, when the profile enables its engine cache (only with
          verify=True; backends/_tensorrt.py). False turns that cache off too.
        Entries are named after the artifact's hashes, the runtime's version and the CPU, are
        hash-checked, and are rebuilt when a check or the golden sample fails; the artifact
        directory itself is never written. True: under default_cache_dir(); a path: that
        directory (both backends' entries side by side); False: no cache (every load optimizes
        and packs again; use it to measure, or when the disk is read-only).
    tune: None (default): use this device's cached tuning result (`edge-tune DIR`, stored in
        default_cache_dir()/tuning) when there is one. True: also, when the artifact has none,
        measure first (a short sweep, edge_runtime/_tune.py FIRST_USE; once per artifact, device
        and runtime version). Not the default: a sweep opens the artifact once per setting (4 on
        a 2-core x86: measured 6.3-6.8 s on top of a 1.8-2.1 s load for MiniLM INT8 on a shared
        2-core EPYC, over the ~3 s a first load may take). False: ignore tuning results.
    spinning: onnxruntime intra-op threads spin while idle (None: the tuned setting, else
        onnxruntime's default, which spins).
    trusted_keys: public keys (paths to PEM files, or the PEM text as str or bytes) whose signatures this device
        accepts. Given, the directory must carry a model.sig (edge-convert --sign-key, or
        model_signing) by one of them covering exactly its files, checked before anything
        else in it is read; else SignatureError. Needs `cryptography` (edge_runtime[verify]).
        Independent of `verify`. None (default): signatures are not checked. docs/signing.md.
    memory_budget_mb: activation memory one backend call may use; a larger batch is run in
        parts (Model.run). None (default): the memory available at each call, minus headroom.
    weight_cache: the older name of device_cache (it covered only XNNPACK's packed weights
        once); given, it is used as device_cache.
    """
    if weight_cache is not None:
        if device_cache is not True and device_cache != weight_cache:
            raise InputError("give device_cache or its older name weight_cache, not both")
        device_cache = weight_cache
    _load_args.check_options(verify, spinning, tune, memory_budget_mb)
    # numpy's bools pass the check; plain ones from here on (`tune is False` tests identity)
    spinning, tune = (None if v is None else bool(v) for v in (spinning, tune))
    if artifact is not None and not isinstance(artifact, str):  # a list would fail as unhashable
        raise InputError(f"artifact must be one artifact name (str) or None, got {artifact!r}")
    threads = _load_args.check_threads(threads)
    cache_dirs, records_dir = _load_args.cache_dirs(device_cache, default_cache_dir())
    if not isinstance(path, (str, os.PathLike)):  # Path(None) would be a bare TypeError
        raise InputError(f"path must be an artifact directory (str or os.PathLike), got {path!r}")
    if os.fspath(path) in ("", b""):  # Path("") is the working directory: never what was meant
        raise InputError("path is empty (''); name an edge-convert output directory, e.g. out/auto "
                         "(load('.') for the working directory)")
    root = Path(path)
    _load_args.check_cache_outside(records_dir, root, explicit=device_cache is not True)
    signed_stats = None
    if trusted_keys is not None:
        signed = _signing.verify_directory(root, trusted_keys)
        log.info("%s: model.sig by %s verified over %d files", root, signed.key, signed.files)
        if signed.checked.manifest is None:  # none there when checked: read none appearing since
            raise ManifestError(f"{root} has no {MANIFEST_NAME} (its signature covers none): not an "
                                "edge-convert artifact directory")
        # What was verified, not the directory read again: the manifest is parsed from the bytes
        # that matched the signature, and open_entry refuses a file whose stat signature moved
        # since it was hashed (replaced or written after the check: docs/signing.md, Limits).
        manifest = read_manifest(root, raw=signed.checked.manifest)
        signed_stats = signed.checked.stats
    else:
        manifest = read_manifest(root)
    records = Verifications(records_dir)
    tuning = _tuning_cache.read_cached(root, manifest) if tune is not False else None

    def open_tuned(entry: dict[str, Any]) -> Model:
        model = _open_tuned(entry)
        model.memory_budget_mb = memory_budget_mb
        return model

    def _open_tuned(entry: dict[str, Any]) -> Model:
        nonlocal tuning
        if threads is not None:  # the caller's choice always wins
            count = threads or physical_cores()
            return open_entry(root, manifest, entry, count, verify, cache_dirs, spinning=spinning,
                              records=records, signed_stats=signed_stats)
        if tune is True and _tuning_cache.setting_for(tuning, entry["name"]) is None:
            log.info("no tuning result for %s on this device yet: measuring thread settings",
                     entry["name"])
            tuning = _tune.tune(root, [entry["name"]], compare=False, verify=verify,
                                _verified=(manifest, signed_stats), **_tune.FIRST_USE)
        count, tuned_spinning, source = _select.threads_for(entry, manifest, tuning)
        log.info("artifact %s: %d threads (%s)", entry["name"], count, source)
        chosen = tuned_spinning if spinning is None else spinning
        return open_entry(root, manifest, entry, count, verify, cache_dirs, spinning=chosen, records=records,
                          signed_stats=signed_stats)

    if artifact is not None:
        by_name = {entry["name"]: entry for entry in manifest["artifacts"]}
        if artifact not in by_name:
            raise InputError(unknown_artifacts(root, manifest, [artifact]))
        return open_tuned(by_name[artifact])

    selection = _select.plan(root, manifest, _device.detect(), tuning)
    if not selection.choices:
        raise BackendUnavailableError(_load_args.nothing_runs_message(root, manifest, selection.skipped))
    for name, why in selection.skipped.items():
        log.info("not trying artifact %s: %s", name, why)
    for choice in selection.choices:
        if not choice.fits:
            log.warning("artifact %s may not fit this device's memory: %s", choice.name,
                        choice.notes[1])
    log.info("artifact order %s: %s first because %s",
             [c.name for c in selection.choices], selection.choices[0].name, selection.reason)
    failures = []
    for choice in selection.choices:
        try:
            return open_tuned(choice.entry)
        except (GoldenMismatchError, BackendUnavailableError, DeviceMismatchError) as exc:
            log.warning("skipping artifact %s: %s", choice.name, exc)
            failures.append(f"{choice.name}: {exc}")
    raise EdgeRuntimeError(f"no artifact in {root} runs correctly here:\n" + "\n".join(failures))
