"""On-device benchmark of an artifact directory: `run_bench(path, BenchConfig(...)) -> dict`.

What is measured, per artifact x batch x sequence length x thread count:
- steady state: warm-up runs, then timed `Model.run()` calls on fixed tensors: p50/p90/p99 and
  throughput. Several artifacts take turns in short blocks within each round (with a short
  pause between blocks), so load from other processes hits every artifact alike.
- cold start: two loads in fresh processes (edge_runtime._bench_probe): the first with an empty
  device cache (XNNPACK weight cache, onnxruntime optimized graph), the second with the cache
  the first one left, as a device sees them at its first and every later start. Each reports
  load time, load-to-first-result and resident memory split into anonymous and file-backed.
- the golden sample check, the device description and its sensors (temperature, frequency,
  Raspberry Pi throttling flags) before and after.

The result is a plain, JSON-ready dict described by BENCH_SCHEMA (checked by validate_bench);
render_markdown turns it into a table. Only the standard library, numpy and edge_runtime.

This module is the measurement itself; the pieces it uses live beside it:
- edge_runtime._bench_config: BenchConfig (what to measure) and BenchConfigError
- edge_runtime._bench_feeds: the input tensors (make_feeds)
- edge_runtime._bench_schema: the result document (BENCH_SCHEMA, validate_bench)
- edge_runtime._bench_report: the Markdown table (render_markdown)
- edge_runtime._bench_probe: the child process that times one cold load
Their public names are re-exported here, the one import path of the benchmark's API.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

import edge_runtime
from edge_runtime import backends
from edge_runtime._bench_config import BenchConfig, BenchConfigError
from edge_runtime._bench_feeds import make_feeds
from edge_runtime._bench_report import device_label, render_markdown
from edge_runtime._bench_schema import BENCH_SCHEMA, BENCH_SCHEMA_VERSION, validate_bench
from edge_runtime._contention import CpuWait
from edge_runtime._errors import BackendUnavailableError, EdgeRuntimeError, InputError
from edge_runtime._load_args import no_backend_message
from edge_runtime._manifest import UNREADABLE, read_manifest, unknown_artifacts
from edge_runtime._rounds import rounds_for, time_in_rounds
from edge_runtime._select import files_absent

__all__ = [
    "BENCH_SCHEMA",
    "BENCH_SCHEMA_VERSION",
    "BenchConfig",
    "BenchConfigError",
    "device_label",
    "make_feeds",
    "render_markdown",
    "run_bench",
    "validate_bench",
]

PROBE_TIMEOUT_S = 600


# -- measurement -------------------------------------------------------------------------------
def _latency(rounds: list[list[float]]) -> dict[str, Any]:
    """Percentiles over every timed run; per-round medians too, for ratios taken round by round
    against a baseline measured in the same rounds (a burst from another process then hits
    both sides of a ratio)."""
    ms = np.asarray([t for times in rounds for t in times]) * 1e3
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p90_ms": float(np.percentile(ms, 90)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": float(ms.mean()),
        "min_ms": float(ms.min()),
        "max_ms": float(ms.max()),
        "runs": len(ms),
        "round_p50_ms": [float(np.median(times)) * 1e3 for times in rounds if times],
    }


# Untimed runs before the first round, whatever --warmup says: a shape that cannot run (e.g. a
# TFLite artifact whose longest bucket is shorter than --seq) is found there, not in a round.
WARMUP_MIN = 1


def _not_run(reason: str) -> dict[str, Any]:
    return {
        "status": "not-run",
        "error": reason,
        "import_s": None,
        "backend_import_s": None,
        "open_s": None,
        "load_s": None,
        "first_result_s": None,
        "load_to_first_result_s": None,
        "spawn_to_first_result_s": None,
        "device_cache": None,
        "memory": None,
    }


_PROBE_CODE = (
    "import sys, time; started = time.perf_counter(); "
    "import edge_runtime._bench_probe as probe; probe.main(sys.argv[1], started)"
)


def _probe(
    root: Path, artifact: str, fmt: str, threads: int, verify: bool, cache_dir: Path, feeds: Path
) -> dict[str, Any]:
    """One load in a fresh interpreter (edge_runtime._bench_probe); its measurements, or the
    reason it failed (exit status, signal, the end of its stderr)."""
    from edge_runtime._bench_probe import PROBE_MARKER

    spec = {
        "root": str(root),
        "artifact": artifact,
        "format": fmt,
        "threads": threads,
        "verify": verify,
        "cache_dir": str(cache_dir),
        "feeds": str(feeds),
        "spawned_at": time.time(),
    }
    try:
        # check=False: a crashed probe (signal, exit status) is recorded below, not raised
        done = subprocess.run(
            [sys.executable, "-c", _PROBE_CODE, json.dumps(spec)],
            capture_output=True,
            text=True,
            timeout=PROBE_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return _not_run(f"load probe did not finish within {PROBE_TIMEOUT_S} s") | {
            "status": "error"
        }
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(PROBE_MARKER + " "):
            # A failed load answers status and error only: the other fields stay "not measured"
            # (the table and the JSON schema read every one; a review found a traceback here).
            return _not_run("not measured") | json.loads(line[len(PROBE_MARKER) + 1 :])
    how = f"signal {-done.returncode}" if done.returncode < 0 else f"exit status {done.returncode}"
    tail = " | ".join(done.stderr.strip().splitlines()[-5:])
    return _not_run(f"load probe died ({how}): {tail}") | {"status": "error"}


@dataclass
class _Target:
    """One artifact at one thread count: the model loaded in this process and its records."""

    entry: dict[str, Any]
    threads: int | None
    model: edge_runtime.Model | None = None
    records: dict[tuple[int, int], dict[str, Any]] = dataclasses.field(default_factory=dict)
    # seconds of each timed run, one list per round
    times: dict[tuple[int, int], list[list[float]]] = dataclasses.field(default_factory=dict)
    waits: dict[tuple[int, int], CpuWait] = dataclasses.field(default_factory=dict)


def _record(
    entry: dict[str, Any], batch: int, seq: int, threads: int | None, input_kind: str
) -> dict[str, Any]:
    return {
        "artifact": entry["name"],
        "format": entry["format"],
        "precision": entry["precision"],
        "bytes": int(sum(f["bytes"] for f in entry["files"])),
        "metrics": {
            k: v for k, v in entry.get("metrics", {}).items() if isinstance(v, (int, float))
        },
        "backend": None,
        "batch": batch,
        "seq": seq,
        "threads": threads,
        "input": input_kind,
        "status": "ok",
        "error": None,
        "golden": "not-run",
        "latency": None,
        "throughput": None,
        "load_first": _not_run("not measured"),
        "load_second": _not_run("not measured"),
    }


def _fail(record: dict[str, Any], status: str, error: str) -> None:
    record.update(status=status, error=error)
    for kind in ("load_first", "load_second"):
        if record[kind]["status"] == "not-run":
            record[kind] = _not_run(f"artifact {status}: see the record's error")


def _selected(
    root: Path, manifest: dict[str, Any], config: BenchConfig, work: Path
) -> list[dict[str, Any]]:
    by_name = {entry["name"]: entry for entry in manifest["artifacts"]}
    if config.all_artifacts:
        return list(manifest["artifacts"])
    if config.artifacts:
        unknown = [name for name in config.artifacts if name not in by_name]
        if unknown:
            # The directory's, not a setting's: the error load(), edge-run and edge-tune give
            # (exit 1 from the CLI), not a bad flag's (exit 2).
            raise InputError(unknown_artifacts(root, manifest, unknown))
        return [by_name[name] for name in dict.fromkeys(config.artifacts)]
    # The one a user gets from edge_runtime.load(root) on this device (tune=None: a cached
    # tuning result counts, but no sweep is started and nothing is written to the user's cache).
    chosen = edge_runtime.load(
        root, verify=config.verify, device_cache=work / "pick", tune=None
    ).name
    return [by_name[chosen]]


def _describe_device() -> tuple[dict[str, Any], Callable[[], dict[str, Any]]]:
    from edge_runtime import _device, _sensors

    info = _device.detect()
    profile, reason = _device.match_profile(info)

    def read_sensors() -> dict[str, Any]:
        # The load average tells how busy the CPU was with other work: on a shared machine the
        # absolute times scale with it (ratios within one run are what survive).
        try:
            load = [round(value, 2) for value in os.getloadavg()]
        except (AttributeError, OSError):  # not on this OS
            load = None
        return _sensors.sensors() | {"load_average": load}

    return info.to_dict() | {"profile": profile, "profile_reason": reason}, read_sensors


def run_bench(
    path: str | Path,
    config: BenchConfig = BenchConfig(),
    command: Iterable[str] = (),
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Benchmark the artifacts of `path` on this device; returns a document matching
    BENCH_SCHEMA. `command` is recorded as given (the CLI passes its argv); `progress` gets
    one line per step. Device caches go to a temporary directory, removed at the end: the
    user's own caches are neither used nor changed."""
    config.check()
    say = progress or (lambda line: None)
    rounds = rounds_for(config.runs, config.rounds)
    if rounds < config.rounds:  # every round times every artifact at least once
        say(f"{config.runs} timed runs make {rounds} rounds, not {config.rounds}: give --runs at least "
            f"{config.rounds} for {config.rounds} rounds")
    root = Path(path)
    manifest = read_manifest(root)
    device, read_sensors = _describe_device()
    work = Path(tempfile.mkdtemp(prefix="edge-bench-"))
    try:
        sensors_before = read_sensors()
        records = _measure(root, manifest, config, work, say)
        sensors_after = read_sensors()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {
        "schema_version": BENCH_SCHEMA_VERSION,
        "tool": "edge-bench",
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": [str(part) for part in command],
        "artifact_dir": str(root.resolve()),
        "target": manifest.get("target", {}).get("id"),
        "source_model": manifest.get("source", {}).get("name"),
        "task": manifest["task"],
        "versions": {
            "edge_runtime": edge_runtime.__version__,
            "python": platform.python_version(),
            "numpy": np.__version__,
            "backends": dict(device.get("backends", {})),
        },
        "device": device,
        "sensors_before": sensors_before,
        "sensors_after": sensors_after,
        "settings": dataclasses.asdict(config)
        | {
            "rounds": rounds,  # as run: fewer than asked when runs < rounds
            "warmup": max(config.warmup, WARMUP_MIN),  # as run (a review found 0 recorded for 1)
            "artifacts": list(config.artifacts),
            "seqs": list(config.seqs),
            "batches": list(config.batches),
            "threads": list(config.threads),
            "device_cache": "temporary: empty before each first load, kept for its second load",
        },
        "records": records,
        "skipped_artifacts": dict(manifest.get(UNREADABLE) or {}) if config.all_artifacts else {},
    }


def _measure(
    root: Path,
    manifest: dict[str, Any],
    config: BenchConfig,
    work: Path,
    say: Callable[[str], None],
) -> list[dict[str, Any]]:
    selected = _selected(root, manifest, config, work)
    if config.all_artifacts:  # a later converter's artifacts: said, not silently left out
        for name, why in (manifest.get(UNREADABLE) or {}).items():
            say(f"{name}: skipped: {why}")
    formats = sorted({entry["format"] for entry in selected})
    if not any(backends.backend_available(fmt) for fmt in formats):  # before tokenizing anything
        raise BackendUnavailableError(no_backend_message(root, formats))
    shapes = [(batch, seq) for batch in config.batches for seq in config.seqs]
    feeds: dict[tuple[int, int], dict[str, np.ndarray]] = {}
    kinds: dict[tuple[int, int], str] = {}
    for shape in shapes:
        feeds[shape], kinds[shape] = make_feeds(root, manifest, *shape)
        np.savez(work / f"feeds-{shape[0]}x{shape[1]}.npz", **feeds[shape])

    targets: list[_Target] = []
    seen: set[tuple[str, int]] = set()
    for entry in selected:
        for threads in config.threads:
            target = _Target(entry, threads)
            for shape in shapes:
                target.records[shape] = _record(entry, *shape, threads, kinds[shape])
            _load_here(root, target, config, work, say)
            key = (entry["name"], target.model.threads if target.model else threads)
            if target.model is not None and key in seen:
                say(f"{entry['name']}: threads {threads} is {key[1]} threads, already measured")
                continue
            seen.add(key)
            targets.append(target)
    live = [t for t in targets if t.model is not None]

    _cold_loads(root, live, config, work, say)
    _timed_rounds(live, feeds, config, say)
    for target in live:
        for shape, record in target.records.items():
            if record["status"] == "ok":
                latency = _latency(target.times[shape])
                waited = target.waits.get(shape)
                latency["cpu_wait_share"] = waited.rounded_share if waited else None
                record["latency"] = latency
                per_s = 1e3 / latency["mean_ms"]
                record["throughput"] = {
                    "sequences_per_s": shape[0] * per_s,
                    "tokens_per_s": shape[0] * shape[1] * per_s,
                }
        target.model = None  # release the session before the next one's numbers are read
    return [record for target in targets for record in target.records.values()]


def _threads_label(threads: int | None) -> str:
    return "default" if threads is None else str(threads)


def _load_here(
    root: Path, target: _Target, config: BenchConfig, work: Path, say: Callable[[str], None]
) -> None:
    """Load in this process for the timed runs; a failure becomes the records' error."""
    entry = target.entry
    reason = ""
    if config.all_artifacts and files_absent(root, entry):  # named by --artifact: an error below
        reason = "none of its model files is in this directory (a copy trimmed to other artifacts?)"
    elif not backends.backend_available(entry["format"]):
        reason = (
            f"no {entry['format']} backend installed here ({entry['format']} artifacts need one)"
        )
    if reason:
        say(f"{entry['name']}: skipped: {reason}")
        for record in target.records.values():
            _fail(record, "skipped", reason)
        return
    say(f"{entry['name']}: loading (threads {_threads_label(target.threads)})")
    try:
        # threads None: this device's tuned count if cached, else the profile's (no sweep here)
        model = edge_runtime.load(
            root,
            artifact=entry["name"],
            threads=target.threads,
            verify=config.verify,
            device_cache=work / "main",
            tune=None,
        )
    except EdgeRuntimeError as exc:
        for record in target.records.values():
            _fail(record, "error", f"{type(exc).__name__}: {exc}")
            record["golden"] = (
                "failed" if isinstance(exc, edge_runtime.GoldenMismatchError) else "not-run"
            )
        say(f"{entry['name']}: error: {exc}")
        return
    target.model = model
    for record in target.records.values():
        record.update(
            backend=model.backend,
            threads=model.threads,
            golden="passed" if config.verify else "not-run",
        )


def _cold_loads(
    root: Path, live: list[_Target], config: BenchConfig, work: Path, say: Callable[[str], None]
) -> None:
    """First and second load of every record in fresh processes; all first loads, then all
    second loads, so the artifacts alternate."""
    jobs = [(t, shape) for t in live for shape in t.records]
    for kind in ("load_first", "load_second"):
        for target, shape in jobs:
            record = target.records[shape]
            cache = (
                work / "cache" / f"{record['artifact']}-t{record['threads']}-{shape[0]}x{shape[1]}"
            )
            say(
                f"{record['artifact']}: {kind.replace('_', ' ')} in a fresh process, "
                f"batch {shape[0]} x {shape[1]}"
            )
            record[kind] = _probe(
                root,
                record["artifact"],
                record["format"],
                record["threads"],
                config.verify,
                cache,
                work / f"feeds-{shape[0]}x{shape[1]}.npz",
            )


def _timed_rounds(
    live: list[_Target], feeds: dict, config: BenchConfig, say: Callable[[str], None]
) -> None:
    """Warm-up, then every artifact x shape in interleaved rounds (edge_runtime._rounds); a shape
    that cannot run (e.g. a TFLite artifact whose longest bucket is shorter than seq) is recorded
    as an error and the others go on."""
    keys = [(i, shape) for i, target in enumerate(live) for shape in target.records
            if target.records[shape]["status"] == "ok"]
    timed = time_in_rounds(
        {(i, shape): partial(live[i].model.run, feeds[shape]) for i, shape in keys},
        config.runs,
        config.rounds,
        warmup=max(config.warmup, WARMUP_MIN),
        on_round=lambda done: say(f"round {done.number}/{done.total} done"),
    )
    for (i, shape), exc in timed.failures.items():
        record = live[i].records[shape]
        _fail(record, "error", f"run failed: {type(exc).__name__}: {exc}")
        say(f"{live[i].entry['name']}: batch {shape[0]} x {shape[1]}: {record['error']}")
    for i, shape in keys:
        live[i].times[shape] = timed.times[(i, shape)]
        live[i].waits[shape] = timed.waits[(i, shape)]
