"""Which artifact `load()` tries first on this device, and why.

The order, each step with its reason:
1. the target profile's order (`candidates`: backends in fallback order, then precision; an
   artifact made for another runtime of its format than the one installed here, e.g. tflite-int8
   for ai-edge-litert under tflite-runtime, goes after the rest of its format, and the reason says
   which and what it needs);
2. artifacts of a format or precision this edge_runtime does not know (a later converter's:
   read_manifest set them aside), pruned twins (loaded only by name), artifacts none of whose
   model files is here (a device copy trimmed to the artifacts it runs), whose backend is not
   installed here or older than
   their min_runtime, or whose INT8 weights this CPU's arithmetic would compute wrongly
   (`_compat`), are left out (named in `skipped`, with the reason); an artifact with some of
   its files missing is not: loading it says which (an incomplete copy is an error);
3. those that do not fit the memory available now (with headroom, `_memory.fit`) go last;
4. a cached tuning result (`_tuning_cache`) that names the fastest artifact here moves it first, if it
   fits and the profile allows it (it is among the candidates).
The golden check at load still has the last word: an artifact that fails it is skipped.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_runtime import _compat, _device, _memory, _tuning_cache, backends
from edge_runtime._manifest import UNREADABLE, resolve

__all__ = ["BACKEND_FORMAT", "Choice", "Plan", "candidates", "files_absent", "max_threads", "physical_cores", "plan", "threads_for",
           "usable_cpus"]

log = logging.getLogger("edge_runtime")

# Manifest backend names -> the artifact format they run.
BACKEND_FORMAT = {"onnxruntime": "onnx", "litert": "tflite"}


@dataclass
class Choice:
    entry: dict[str, Any]
    fits: bool
    notes: list[str] = field(default_factory=list)  # why it is where it is

    @property
    def name(self) -> str:
        return self.entry["name"]


@dataclass
class Plan:
    choices: list[Choice]  # the order load() tries
    skipped: dict[str, str]  # artifact -> why it is not tried here
    reason: str  # why choices[0] comes first


def _profile_order_note(manifest: dict[str, Any], choices: list[Choice], installed: dict[str, str | None]) -> str:
    """The profile's order and, when `candidates` moved some of `choices` after the rest of their
    format (made for another runtime than the one installed here), which and why: without it the
    order shown contradicts the order stated (tflite-int8 after tflite-fp32 under "int8 > fp32")."""
    runtime = manifest.get("runtime", {})
    backends_ = " > ".join(b["name"] for b in runtime.get("backends", [])) or "manifest order"
    precisions = " > ".join(runtime.get("artifact_preference", [])) or "manifest order"
    # the directory's target profile, named: on another device "profile" read as this one's (a review)
    note = f"{_target(manifest)}profile order (backends {backends_}; precisions {precisions})"
    groups: dict[tuple[str, str | None, tuple[str, ...]], list[str]] = {}
    for choice in choices:
        other = _other_runtime(choice.entry, installed)
        if other is not None:
            groups.setdefault((choice.entry["format"], *other), []).append(choice.name)
    for (fmt, have, needs), names in groups.items():
        it, its = ("it", "its") if len(names) == 1 else ("they", "their")
        note += (f", except that {', '.join(names)} {'goes' if it == 'it' else 'go'} after the other {fmt} "
                 f"artifacts: {it} {'needs' if it == 'it' else 'need'} {' or '.join(needs)} ({its} min_runtime), "
                 f"and {have} runs {fmt} here (not validated with it: the golden check decides; pip install "
                 f"{needs[0]} to run {'it' if it == 'it' else 'them'} as made)")
    return note


def _other_runtime(entry: dict[str, Any], installed: dict[str, str | None]) -> tuple[str | None, tuple[str, ...]] | None:
    """(the package that runs entry's format here, the packages its min_runtime names) when the
    installed one is not among them (e.g. per-channel INT8 TFLite, made for ai-edge-litert, under
    tflite-runtime 2.14); None when it is, or when the entry names none. `installed`: format ->
    package, filled here once per format for one selection (each lookup searches sys.path)."""
    needs = entry.get("min_runtime") or {}
    if not needs:
        return None
    if entry["format"] not in installed:
        installed[entry["format"]] = backends.installed_package(entry["format"])
    have = installed[entry["format"]]
    return None if have in needs else (have, tuple(needs))


def files_absent(root: Path, entry: dict[str, Any]) -> bool:
    """Whether not one of the entry's model files exists under `root` (resolved as loading does)."""
    return not any(resolve(root, f["path"]).exists() for f in entry.get("files", []))


def plan(
    root: Path,
    manifest: dict[str, Any],
    device: _device.DeviceInfo,
    tuning: dict[str, Any] | None,
    available_mb: int | None = None,
    asked: str | None = None,
) -> Plan:
    """The automatic selection order for `manifest` on `device` (no session is opened). `asked`:
    an artifact named by the caller (edge-run --info --artifact), kept even if it is a pruned
    twin, as load(artifact=) loads one; what truly blocks it is still said."""
    available = _device.available_mb() if available_mb is None else available_mb
    choices, skipped = [], {}
    installed: dict[str, str | None] = {}  # format -> the package that runs it here
    for rank, entry in enumerate(candidates(manifest), 1):
        if entry.get("pruning") and entry["name"] != asked:
            # Its floor is the profile's (lower) pruning floor: never served unasked, not as a
            # fallback, not because a tuning found it faster.
            skipped[entry["name"]] = ("a pruned twin (held to the pruning floor, not the artifacts' floor): "
                                      f"loaded only by name, artifact={entry['name']!r}")
            continue
        if files_absent(root, entry):
            skipped[entry["name"]] = ("none of its model files is in this directory (a copy trimmed to other "
                                      "artifacts?)")
            continue
        if not backends.backend_available(entry["format"]):
            skipped[entry["name"]] = f"no {entry['format']} backend installed"
            continue
        problem = _compat.runtime_problem(entry)
        if problem:  # older than the runtime it was validated with
            skipped[entry["name"]] = problem
            continue
        problem = _compat.arithmetic_problem(entry, manifest, device)
        if problem:  # it would run and compute wrong numbers (edge_runtime/_compat.py)
            skipped[entry["name"]] = problem
            continue
        fits, why = _memory.fit(entry, available, device.usable_total_mb())
        choice = Choice(entry, fits, [f"#{rank} in the profile order", why])
        other = _other_runtime(entry, installed)
        if other is not None:
            choice.notes.append(f"after the other {entry['format']} artifacts: needs {' or '.join(other[1])} "
                                f"(min_runtime); {other[0]} runs {entry['format']} here")
        choices.append(choice)
    # Entries of a format or precision added after this edge_runtime (read_manifest set them aside)
    skipped.update(manifest.get(UNREADABLE) or {})
    # Stable: the profile's order holds within each group.
    choices = [c for c in choices if c.fits] + [c for c in choices if not c.fits]
    if not choices:
        return Plan([], skipped, "no artifact can run here")
    first = choices[0]
    order = _profile_order_note(manifest, choices, installed)
    reason = f"{order}; {first.notes[1]}"
    if not first.fits:
        reason = f"{order}; none fits the available memory ({first.notes[1]})"
    elif any(not c.fits for c in choices):
        reason += "; ranked last for memory: " + ", ".join(c.name for c in choices if not c.fits)
    fastest = (tuning or {}).get("fastest")
    if fastest and fastest != first.name:
        moved = next((c for c in choices if c.name == fastest and c.fits), None)
        if moved is not None:
            scores = (tuning or {}).get("compared") or {}
            timing = ""
            if fastest in scores and first.name in scores:
                timing = (
                    f": p50 {scores[fastest]['p50_ms']:.2f} ms vs {scores[first.name]['p50_ms']:.2f} ms "
                    f"for {first.name}"
                )
            choices.remove(moved)
            choices.insert(0, moved)
            moved.notes.append("fastest here in the tuning cache")
            # its own memory note first: the rest (with its "needs ~N MB") is about the profile's pick
            reason = f"fastest here (tuning cache{timing}); {moved.notes[1]}; otherwise {first.name}: {reason}"
    elif fastest and fastest == first.name:
        reason += "; also the fastest here (tuning cache)"
    return Plan(choices, skipped, reason)


def _target(manifest: dict[str, Any]) -> str:
    """'rpi5 ' for a directory made for rpi5 ('' when the manifest names no target)."""
    target = manifest.get("target")
    name = target.get("id") if isinstance(target, dict) else None
    return f"{name} " if isinstance(name, str) and name else ""


def threads_for(
    entry: dict[str, Any], manifest: dict[str, Any], tuning: dict[str, Any] | None
) -> tuple[int, bool | None, str]:
    """(threads, spinning, where from) that load() uses for `entry` when none are given."""
    tuned = _tuning_cache.setting_for(tuning, entry["name"])
    if tuned is not None:
        return _tuned_threads(entry["name"], tuned)

    profile = int(manifest.get("runtime", {}).get("threads", {}).get("intra_op", 0) or 0)
    cores = physical_cores()
    if profile and profile > cores:
        # A profile's count is its device's (4 on a Pi); more threads than this device's cores
        # only wait on each other at every GEMM barrier.
        return cores, None, f"{_target(manifest)}profile default {profile}, capped at this device's {cores} cores"
    if profile:
        return profile, None, f"{_target(manifest)}profile default"
    return cores, None, "physical cores of the fastest cluster"


def _tuned_threads(name: str, tuned: _tuning_cache.Setting) -> tuple[int, bool | None, str]:
    """A cached setting, its count held to the CPUs this process may use now, as the sweep holds
    its candidates: the cache is named by the CPU, which CPUAffinity=, a cpuset (docker
    --cpuset-cpus) or cores turned off (nvpmodel) do not change. Threads beyond the CPUs wait on
    each other at every barrier: 2 tuned threads on 1 CPU ran 2x slower than 1."""
    cpus = usable_cpus()
    if tuned.threads <= cpus:
        return tuned.threads, tuned.spinning, "tuning cache"
    plural = "s" if cpus != 1 else ""
    log.warning("the tuning cache's %d threads for %s are more than the %d CPU%s this process may use "
                "(tuned with more CPUs: CPU affinity, a cpuset or cores turned off since?); using %d. "
                "Run edge-tune on the directory again under the same limits to measure for them",
                tuned.threads, name, cpus, plural, cpus)
    return cpus, tuned.spinning, f"tuning cache {tuned.threads}, capped at the {cpus} CPU{plural} this process may use"


def candidates(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """Artifacts in the order the target profile prefers: backend order first, then precision."""
    runtime = manifest.get("runtime", {})
    backend_order = [BACKEND_FORMAT.get(b["name"], b["name"]) for b in runtime.get("backends", [])]
    precision_order = list(runtime.get("artifact_preference", []))
    installed: dict[str, str | None] = {}

    def rank(entry: dict[str, Any]) -> tuple[int, bool, int, bool]:
        fmt = backend_order.index(entry["format"]) if entry["format"] in backend_order else 99
        prec = precision_order.index(entry["precision"]) if entry["precision"] in precision_order else 99
        # Artifacts whose min_runtime does not name the package installed here (e.g. per-channel
        # INT8 TFLite under tflite-runtime 2.14) go last: still tried, and the golden check still
        # decides, but a variant made for this runtime is preferred.
        foreign = _other_runtime(entry, installed) is not None  # plan() says so in its reason
        # A pruned twin trades accuracy for speed: listed after its unpruned counterpart (plan()
        # leaves twins out: they are loaded only by name).
        return fmt, foreign, prec, bool(entry.get("pruning"))

    return sorted(manifest["artifacts"], key=rank)


def usable_cpus() -> int:
    """The CPUs this process may run on (affinity and cpusets included, where the OS says)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def max_threads() -> int:
    """The most intra-op threads load() takes: 8x the usable CPUs, at least 64. Each thread is a
    stack and a start-up cost paid inside the backend's session creation, where no signal
    handler runs: threads=99999 (a typo) grew past 16 GB while still loading after ten minutes,
    and only SIGKILL ended it. A few times the CPUs stays allowed for experiments."""
    return max(64, 8 * usable_cpus())


def physical_cores() -> int:
    """Default intra-op threads: the physical cores of the fastest cluster (every physical core
    on a uniform CPU; the big cores of a big.LITTLE one, told apart by cpufreq maximum
    frequencies: threads on little cores hold the big ones back at every barrier), at most the
    CPUs this process may run on."""
    return max(1, min(_device.detect(measure_int8=False).big_cores, usable_cpus()))
