"""Thread and artifact tuning: measured on the device once, cached, used by `load()`.

A sweep opens an artifact with each setting (intra-op threads x, for onnxruntime, whether idle
threads spin) and times batch-1 runs of a representative input, the settings taking turns in short
blocks (interleaved rounds, so a burst of load from another process hits every setting alike).
The best setting has the lowest p50; settings within _TIE of it are told apart by p90. With
`compare=True` the artifacts then run side by side at their best settings, and the fastest one
is recorded (among those within _ARTIFACT_TIE of the fastest, the profile's preferred one wins).

Results are cached per device (edge_runtime/_tuning_cache.py: default_cache_dir()/tuning/, one
JSON file per artifact directory and CPU, holding what they are valid for; a file that does not
parse, or was made for anything else, is ignored with a warning and replaced by the next sweep).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime import _device, _memory, _select
from edge_runtime._contention import CpuWait, busy_note, worst_share
from edge_runtime._errors import BackendUnavailableError, DeviceMismatchError, GoldenMismatchError, InputError
from edge_runtime._load_args import check_cache_outside, nothing_runs_message
from edge_runtime._manifest import read_manifest, resolve, unknown_artifacts
from edge_runtime._model import open_entry
from edge_runtime._rounds import time_in_rounds
# Setting, cache_file, read_cached and setting_for are also this module's API (edge-tune, tests):
# the cache itself lives in _tuning_cache so that load() reads it without importing the sweep.
from edge_runtime._tuning_cache import (
    SCHEMA_VERSION,
    Setting,
    cache_file,
    identity,
    read_cached,
    setting_for,
    tuning_dir,
    write_atomic,
)

__all__ = [
    "FIRST_USE",
    "SCHEMA_VERSION",
    "Setting",
    "cache_file",
    "read_cached",
    "representative_feeds",
    "setting_for",
    "settings_for",
    "thread_candidates",
    "tune",
]

log = logging.getLogger("edge_runtime")

_TIE = 0.03  # p50s within 3% are a tie (timing noise on a busy device); p90 decides
_ARTIFACT_TIE = 0.05  # an artifact must be 5% faster to displace the profile's preferred one
# onnxruntime's intra-op threads spin for a while after a run; the next setting's first run would
# compete with them (benchmarks/bench_artifacts.py measured 10.1 vs 8.5 ms INT8 p50 without a
# pause). One untimed run after the pause also refills the caches the other setting evicted.
_SETTLE_S = 0.02
_BLOCK = 3  # timed runs per turn
# The sweep load(tune=True) runs on an artifact's first use (not load()'s default; its cost is
# measured in tests/test_tune.py's docstring and the report): few rounds, stopped after budget_s.
FIRST_USE = {"rounds": 5, "budget_s": 1.5}


# -- what to try --------------------------------------------------------------------------------


def thread_candidates(device: _device.DeviceInfo, manifest: dict[str, Any]) -> list[int]:
    """1, 2, the big cores, all physical cores and the profile's intra_op setting, each at most
    the CPUs this process may run on."""
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = device.logical_cores
    usable = max(1, min(usable, device.logical_cores))
    profile = int(manifest.get("runtime", {}).get("threads", {}).get("intra_op", 0) or 0)
    wanted = {1, 2, device.big_cores, device.physical_cores, profile}
    return sorted({min(t, usable) for t in wanted if t > 0})


def settings_for(fmt: str, threads: list[int]) -> list[Setting]:
    if fmt == "onnx":
        return [Setting(t, spin) for t in threads for spin in (True, False)]
    return [Setting(t, None) for t in threads]  # TFLite has no spinning switch


def sequence_length(manifest: dict[str, Any], entry: dict[str, Any]) -> int:
    """The length the converter timed at (its typical input), within the tokenizer's maximum."""
    measured = (entry.get("measured_on_converter") or {}).get("sequence")
    maximum = (manifest.get("tokenizer") or {}).get("max_length")
    length = int(measured or maximum or 128)
    return min(length, int(maximum)) if maximum else length


def representative_feeds(
    root: Path, manifest: dict[str, Any], entry: dict[str, Any], sequence: int
) -> dict:
    """Batch 1, `sequence` tokens: the golden sample's first row (real token ids) repeated to
    length, every position attended."""
    with np.load(resolve(root, entry["golden"]["path"]), allow_pickle=False) as data:
        golden = {k[len("input:") :]: data[k] for k in data.files if k.startswith("input:")}
    mask = golden.get("attention_mask")
    valid = int(mask[0].sum()) if mask is not None else None
    feeds = {}
    for spec in manifest["inputs"]:
        name = spec["name"]
        if name == "attention_mask":
            feeds[name] = np.ones((1, sequence), golden[name].dtype)
            continue
        row = golden[name][0][: valid or None]
        feeds[name] = np.resize(row, sequence)[None, :].astype(golden[name].dtype)
    return feeds


# -- measuring ----------------------------------------------------------------------------------


def _percentiles(times: list[float]) -> tuple[float, float]:
    ms = np.asarray(times) * 1e3
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 90))


def _interleave(
    runners: dict[Any, Callable[[], Any]], rounds: int, budget_s: float | None
) -> dict[Any, list[float]]:
    """Time each runner in turns of _BLOCK runs (each after a pause, skipped after a setting
    whose threads do not spin, and one untimed run), rounds times or until budget_s has passed
    after at least 2 rounds (edge_runtime._rounds); every timed run of each runner, in seconds."""
    timed = time_in_rounds(runners, rounds * _BLOCK, rounds, pause_s=_SETTLE_S, rewarm=True,
                           spins=lambda key: getattr(key, "spinning", True) is not False, budget_s=budget_s)
    if timed.failures:  # a setting that cannot run: the caller's error, as before the loop was shared
        raise next(iter(timed.failures.values()))
    return {key: [t for one_round in per_round for t in one_round] for key, per_round in timed.times.items()}


def _best(scored: dict[Any, tuple[float, float]]) -> Any:
    """Lowest p50; among p50s within _TIE of it, the lowest p90."""
    fastest = min(p50 for p50, _ in scored.values())
    tied = [k for k, (p50, _) in scored.items() if p50 <= fastest * (1 + _TIE)]
    return min(tied, key=lambda k: scored[k][1])


def _sweep(root, manifest, entry, settings, rounds, budget_s, verify, signed_stats=None) -> dict[str, Any]:
    """Open `entry` once per setting (caches off: a sweep leaves no device caches behind and
    reads none), check it once, and time the settings interleaved. signed_stats (a signed
    directory, load(trusted_keys=...)): every opening is held to the files' checked stats."""
    feeds = representative_feeds(root, manifest, entry, sequence_length(manifest, entry))
    models = {}
    try:
        for i, setting in enumerate(settings):
            # As load(root, artifact=..., threads=..., device_cache=False, tune=False) opens it.
            models[setting] = open_entry(root, manifest, entry, setting.threads, verify=verify and i == 0,
                                         cache_dirs={}, spinning=setting.spinning, signed_stats=signed_stats)
        with CpuWait() as waited:
            times = _interleave(
                {s: (lambda m=m: m.run(feeds)) for s, m in models.items()}, rounds, budget_s
            )
    finally:
        models.clear()
    scored = {s: _percentiles(t) for s, t in times.items()}
    best = _best(scored)
    return {
        "threads": best.threads,
        "spinning": best.spinning,
        "p50_ms": round(scored[best][0], 4),
        "p90_ms": round(scored[best][1], 4),
        # On a busy CPU fewer threads can win that lose on a quiet one: recorded, and warned of.
        "cpu_wait_share": waited.rounded_share,
        "sweep": [
            {
                "threads": s.threads,
                "spinning": s.spinning,
                "p50_ms": round(p50, 4),
                "p90_ms": round(p90, 4),
                "runs": len(times[s]),
            }
            for s, (p50, p90) in scored.items()
        ],
    }


def _fastest(scores: dict[str, dict], order: list[str]) -> str:
    """The first of `order` whose p50 is within _ARTIFACT_TIE of the fastest of them."""
    fastest = min(scores[n]["p50_ms"] for n in order)
    return next(n for n in order if scores[n]["p50_ms"] <= fastest * (1 + _ARTIFACT_TIE))


def _compare(root, manifest, tuned: dict[str, dict], order: list[str], rounds, budget_s,
             signed_stats=None) -> dict:
    """Run the artifacts side by side at their best settings: their p50 and p90."""
    models, feeds = {}, {}
    by_name = {e["name"]: e for e in manifest["artifacts"]}
    try:
        for name in order:
            best = tuned[name]
            models[name] = open_entry(root, manifest, by_name[name], best["threads"], verify=False,
                                      cache_dirs={}, spinning=best["spinning"], signed_stats=signed_stats)
            feeds[name] = representative_feeds(
                root, manifest, by_name[name], sequence_length(manifest, by_name[name])
            )
        times = _interleave(
            {n: (lambda n=n: models[n].run(feeds[n])) for n in order}, rounds, budget_s
        )
    finally:
        models.clear()
    scored = {n: _percentiles(t) for n, t in times.items()}
    return {n: {"p50_ms": round(p50, 4), "p90_ms": round(p90, 4)} for n, (p50, p90) in scored.items()}


def tune(
    path: str | os.PathLike,
    artifacts: list[str] | None = None,
    *,
    compare: bool = True,
    rounds: int = 8,
    budget_s: float | None = None,
    verify: bool = True,
    cache_dir: str | os.PathLike | None = None,
    write: bool = True,
    _verified: tuple[dict[str, Any], dict[str, list[int]] | None] | None = None,
) -> dict[str, Any]:
    """Measure the best thread setting of each artifact and, with compare, the fastest artifact.

    artifacts: names to tune; None: those automatic selection may pick here (the profile's order,
        memory fit, installed backends). An artifact that fails its golden sample, has no backend
        or cannot be loaded here is refused (recorded with the reason), not tuned; a damaged one
        (ArtifactError: files missing or not matching the manifest) raises, as load() does, and
        nothing is written.
    rounds: interleaved rounds per sweep (each runs every setting 1 + 3 times).
    budget_s: stop a sweep after this many seconds (at least 2 rounds); None: all rounds.
    cache_dir: where results go (default: default_cache_dir()/tuning); write=False keeps them out.
    Returns the result as cached (existing results for other artifacts of the same directory are
    kept), plus "cached": whether it was written, and "measured": the artifacts this call tuned
    (none: every one was refused; then nothing is written). No artifact selection may pick here
    (artifacts None): BackendUnavailableError with each one's reason, nothing written.
    _verified: (manifest, signed_stats) as load(trusted_keys=...) verified them, for its
        first-use sweep: the sweep then runs what the signature covered, never a manifest read
        again from disk or a file changed since it was hashed.
    """
    root = Path(path)
    if write:  # before any measuring: the result would land in the artifact (load() refuses so too)
        check_cache_outside(tuning_dir(Path(cache_dir) if cache_dir else None), root, explicit=cache_dir is not None,
                            kind="tuning cache", option="cache_dir")
    manifest, signed_stats = _verified if _verified is not None else (read_manifest(root), None)
    if rounds < 1:
        raise InputError(f"rounds must be >= 1, got {rounds}")
    device = _device.detect()
    by_name = {e["name"]: e for e in manifest["artifacts"]}
    # What automatic selection may pick (not pruned twins, nor artifacts without a backend here):
    # only these can be recorded as the fastest, which is what load() reads.
    selection = _select.plan(root, manifest, device, tuning=None)
    automatic = {c.name for c in selection.choices}
    if artifacts is None:
        # Never one that may not fit memory (a sweep opens it several times), unless none fits
        # (then the first, as load() would try it).
        if not selection.choices:  # nothing to measure: say why, and leave any cached result alone
            raise BackendUnavailableError(nothing_runs_message(root, manifest, selection.skipped))
        choices = selection.choices
        names = [c.name for c in choices if c.fits] or [c.name for c in choices[:1]]
    else:
        unknown = [n for n in artifacts if n not in by_name]
        if unknown:
            raise InputError(unknown_artifacts(root, manifest, unknown))
        names = list(artifacts)
    cache_path = cache_file(root, Path(cache_dir) if cache_dir else None)
    previous = read_cached(root, manifest, Path(cache_dir) if cache_dir else None) or {}
    threads = thread_candidates(device, manifest)
    result: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "identity": identity(manifest),
        "device": {
            "cpu_model": device.cpu_model,
            "arch": device.arch,
            "features": device.notable_features(),
            "big_cores": device.big_cores,
            "logical_cores": device.logical_cores,
        },
        "artifacts": dict(previous.get("artifacts", {})),
        "refused": dict(previous.get("refused", {})),
        "fastest": previous.get("fastest"),
        "compared": previous.get("compared"),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    started = time.perf_counter()
    for name in names:
        entry = by_name[name]
        try:
            best = _sweep(
                root,
                manifest,
                entry,
                settings_for(entry["format"], threads),
                rounds,
                budget_s,
                verify,
                signed_stats=signed_stats,
            )
        except (GoldenMismatchError, BackendUnavailableError, DeviceMismatchError) as exc:
            # What load() skips to the next artifact for (wrong numbers here, no backend, unable to
            # load it, another device's arithmetic) is refused here too. A damaged directory
            # (ArtifactError: files missing or not matching their hashes; a bad manifest) is not:
            # load() stops on it, and a tuning result that went past it would make later loads
            # run another artifact without a word about the damage.
            log.warning("tuning: artifact %s refused: %s", name, exc)
            result["refused"][name] = str(exc)
            result["artifacts"].pop(name, None)
            continue
        best["input"] = {"batch": 1, "sequence": sequence_length(manifest, entry)}
        result["artifacts"][name] = best
        result["refused"].pop(name, None)
        log.info(
            "tuning: %s best at %s (p50 %.2f ms)",
            name,
            Setting(best["threads"], best["spinning"]).label(),
            best["p50_ms"],
        )
    tuned = [n for n in names if n in result["artifacts"]]
    together = sum(_memory.estimate_mb(by_name[n]) for n in tuned)
    if (
        compare
        and len(tuned) > 1
        and together > _device.available_mb() - _memory.headroom_mb(device.usable_total_mb())
    ):
        # All of them open at once would not fit: rank by the sweeps (not side by side).
        log.warning(
            "tuning: %s together need ~%.0f MB, more than is free; comparing their sweeps "
            "instead of running them side by side",
            ", ".join(tuned),
            together,
        )
        result["compared"] = {n: {k: result["artifacts"][n][k] for k in ("p50_ms", "p90_ms")} for n in tuned}
    elif compare and len(tuned) > 1:
        result["compared"] = _compare(root, manifest, result["artifacts"], tuned, rounds, budget_s,
                                      signed_stats=signed_stats)
    pickable = [n for n in tuned if n in automatic]
    if compare and len(tuned) > 1 and pickable:
        result["fastest"] = _fastest(result["compared"], pickable)
        log.info("tuning: fastest artifact here that load() may pick: %s", result["fastest"])
    elif compare and len(tuned) == 1 and artifacts is None:  # the only one selection may pick
        result["fastest"], result["compared"] = tuned[0], None
    result["seconds"] = round(time.perf_counter() - started, 3)
    busy = busy_note(worst_share(result["artifacts"][n].get("cpu_wait_share") for n in tuned), "timings")
    if busy:
        log.warning(
            "tuning: %s; the cached choice may not be what is best when the device is quiet: "
            "run `edge-tune %s` again then",
            busy,
            root,
        )
    # Nothing measured in this call (every artifact refused): the refusals are reported, but a
    # cache another backend's tuning may fill (the same directory under another environment) is
    # not replaced by an empty result.
    cached = write and bool(tuned) and write_atomic(cache_path, result)
    return {**result, "cached": cached, "measured": tuned}  # these two are not stored
