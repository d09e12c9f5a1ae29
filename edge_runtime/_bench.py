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
from pathlib import Path
from typing import Any

import numpy as np

import edge_runtime
from edge_runtime import backends
from edge_runtime._errors import EdgeRuntimeError, InputError
from edge_runtime._manifest import read_manifest, resolve
from edge_runtime._text import TextEncoder

__all__ = [
    "BENCH_SCHEMA",
    "BENCH_SCHEMA_VERSION",
    "BenchConfig",
    "BenchConfigError",
    "make_feeds",
    "render_markdown",
    "run_bench",
    "validate_bench",
]

BENCH_SCHEMA_VERSION = 1
# Between two artifacts' blocks: intra-op threads of the previous session keep spinning for a
# few ms after a run and slow the next session's first runs (benchmarks/bench_artifacts.py
# measured 10.1 vs 8.5 ms INT8 p50 without the pause).
SWITCH_PAUSE_S = 0.05
PROBE_TIMEOUT_S = 600

# Varied English sentences: real token statistics (word pieces, punctuation, numbers) for
# tokenizer-based artifacts; repeated and truncated to the requested sequence length.
SENTENCES = (
    "The quick brown fox jumps over the lazy dog near the riverbank.",
    "Edge devices run compressed transformer models with a slim runtime.",
    "In 2023, the city council approved a budget of 4.7 million euros for new bike lanes.",
    "Can you recommend a good Italian restaurant that is open after ten o'clock?",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "The committee postponed its decision until the independent audit was complete.",
    "She plays the violin, speaks three languages, and runs a small bakery downtown.",
    "Error 503: the service is temporarily unavailable; please retry in 30 seconds.",
    "Quantum computers exploit superposition and entanglement to solve certain problems.",
    "After the storm, volunteers cleared fallen trees from the mountain road overnight.",
    "Is the warranty still valid if the device was repaired by a third-party shop?",
    "The museum's new exhibition features sculptures from the early Renaissance period.",
    "Our quarterly revenue grew by 12% while operating costs remained roughly flat.",
    "He forgot his umbrella at the station and walked home through the pouring rain.",
    "Neural networks learn representations from data rather than hand-written rules.",
    "Please send the signed contract to the legal department before Friday afternoon.",
)


class BenchConfigError(InputError):
    """A benchmark setting is invalid; `parameter` names the BenchConfig field."""

    def __init__(self, parameter: str, message: str):
        super().__init__(f"{parameter}: {message}")
        self.parameter = parameter


@dataclass(frozen=True)
class BenchConfig:
    """What to benchmark. Serialized into the result as `settings`.

    artifacts: names from the manifest; empty: the one edge_runtime.load() picks here, or every
        artifact with all_artifacts=True.
    threads: intra-op thread counts; None: this device's cached tuning result, else the profile's
        default (edge_runtime.load(tune=None): no tuning sweep is started).
    runs: timed runs per artifact x shape x threads, split into `rounds` rounds.
    verify: check hashes and the golden sample at every load (as edge_runtime.load()).
    """

    artifacts: tuple[str, ...] = ()
    all_artifacts: bool = False
    seqs: tuple[int, ...] = (128,)
    batches: tuple[int, ...] = (1,)
    threads: tuple[int | None, ...] = (None,)
    runs: int = 50
    warmup: int = 5
    rounds: int = 5
    verify: bool = True

    def check(self) -> None:
        for name in ("seqs", "batches"):
            values = getattr(self, name)
            if not values or any(not isinstance(v, int) or v < 1 for v in values):
                raise BenchConfigError(name, f"needs positive integers, got {list(values)}")
        if not self.threads or any(
            t is not None and (not isinstance(t, int) or t < 0) for t in self.threads
        ):
            raise BenchConfigError(
                "threads", f"needs integers >= 0 (0: physical cores), got {list(self.threads)}"
            )
        for name, low in (("runs", 1), ("warmup", 0), ("rounds", 1)):
            value = getattr(self, name)
            if not isinstance(value, int) or value < low:
                raise BenchConfigError(name, f"needs an integer >= {low}, got {value!r}")
        if self.artifacts and self.all_artifacts:
            raise BenchConfigError("artifacts", "name artifacts or ask for all of them, not both")


# -- schema ------------------------------------------------------------------------------------
# A small JSON-Schema-like description: a type (or tuple of types) for a leaf, a dict for an
# object (every key required, no others unless it has ANY_KEYS), Opt(...) for nullable,
# ListOf(...), MapOf(...) for free-form keys, OneOf(...) for enumerations.


@dataclass(frozen=True)
class Opt:
    spec: Any


@dataclass(frozen=True)
class ListOf:
    spec: Any


@dataclass(frozen=True)
class MapOf:
    spec: Any


@dataclass(frozen=True)
class OneOf:
    values: tuple[str, ...]


ANY_KEYS = "*"  # in an object spec: further keys allowed (owned by another module)
NUM = (int, float)

_LATENCY = {
    "p50_ms": NUM,
    "p90_ms": NUM,
    "p99_ms": NUM,
    "mean_ms": NUM,
    "min_ms": NUM,
    "max_ms": NUM,
    "runs": int,
    "round_p50_ms": ListOf(NUM),
}
_MEMORY = {
    "rss_bytes": int,
    "rss_anon_bytes": Opt(int),
    "rss_file_bytes": Opt(int),
    "rss_shmem_bytes": Opt(int),
    "peak_rss_bytes": Opt(int),
    "source": OneOf(("proc", "psutil")),
}
_LOAD = {
    "status": OneOf(("ok", "error", "not-run")),
    "error": Opt(str),
    "import_s": Opt(NUM),
    "backend_import_s": Opt(NUM),
    "open_s": Opt(NUM),
    "load_s": Opt(NUM),
    "first_result_s": Opt(NUM),
    "load_to_first_result_s": Opt(NUM),
    "spawn_to_first_result_s": Opt(NUM),
    "device_cache": Opt(str),
    "memory": Opt(_MEMORY),
}
_RECORD = {
    "artifact": str,
    "format": str,
    "precision": str,
    "bytes": int,
    "metrics": MapOf(NUM),
    "backend": Opt(str),
    "batch": int,
    "seq": int,
    "threads": Opt(int),
    "input": OneOf(("text", "random-ids")),
    "status": OneOf(("ok", "error", "skipped")),
    "error": Opt(str),
    "golden": OneOf(("passed", "failed", "not-run")),
    "latency": Opt(_LATENCY),
    "throughput": Opt({"sequences_per_s": NUM, "tokens_per_s": NUM}),
    "load_first": _LOAD,
    "load_second": _LOAD,
}
_DEVICE = {
    "arch": str,
    "cpu_model": str,
    "isa_features": ListOf(str),
    "board": Opt(str),
    "profile": Opt(str),
    "profile_reason": str,
    ANY_KEYS: True,
}
_SENSORS = {
    "temperature_c": MapOf(NUM),
    "cpufreq_khz": MapOf(NUM),
    "throttled": Opt(dict),
    "load_average": Opt(ListOf(NUM)),
    ANY_KEYS: True,
}
BENCH_SCHEMA: dict[str, Any] = {
    "schema_version": int,
    "tool": str,
    "created_utc": str,
    "command": ListOf(str),
    "artifact_dir": str,
    "target": Opt(str),
    "source_model": Opt(str),
    "task": str,
    "versions": {"edge_runtime": str, "python": str, "numpy": str, "backends": MapOf(str)},
    "device": _DEVICE,
    "sensors_before": _SENSORS,
    "sensors_after": _SENSORS,
    "settings": {
        "artifacts": ListOf(str),
        "all_artifacts": bool,
        "seqs": ListOf(int),
        "batches": ListOf(int),
        "threads": ListOf(Opt(int)),
        "runs": int,
        "warmup": int,
        "rounds": int,
        "verify": bool,
        "device_cache": str,
    },
    "records": ListOf(_RECORD),
}


def _check(value: Any, spec: Any, where: str, problems: list[str]) -> None:
    if isinstance(spec, Opt):
        if value is not None:
            _check(value, spec.spec, where, problems)
    elif isinstance(spec, ListOf):
        if not isinstance(value, list):
            problems.append(f"{where}: expected a list, got {type(value).__name__}")
        else:
            for i, item in enumerate(value):
                _check(item, spec.spec, f"{where}[{i}]", problems)
    elif isinstance(spec, MapOf):
        if not isinstance(value, dict):
            problems.append(f"{where}: expected an object, got {type(value).__name__}")
        else:
            for key, item in value.items():
                _check(item, spec.spec, f"{where}.{key}", problems)
    elif isinstance(spec, OneOf):
        if value not in spec.values:
            problems.append(f"{where}: {value!r} is not one of {list(spec.values)}")
    elif isinstance(spec, dict):
        if not isinstance(value, dict):
            problems.append(f"{where}: expected an object, got {type(value).__name__}")
            return
        for key, sub in spec.items():
            if key == ANY_KEYS:
                continue
            if key not in value:
                problems.append(f"{where}.{key}: missing")
            else:
                _check(value[key], sub, f"{where}.{key}", problems)
        if ANY_KEYS not in spec:
            problems.extend(
                f"{where}.{key}: unexpected field" for key in sorted(set(value) - set(spec))
            )
    else:
        # bool is an int to Python, never a number or a count in this document
        wanted = " or ".join(t.__name__ for t in (spec if isinstance(spec, tuple) else (spec,)))
        if isinstance(value, bool) and spec is not bool:
            problems.append(f"{where}: expected {wanted}, got a bool")
        elif not isinstance(value, spec):
            problems.append(f"{where}: expected {wanted}, got {type(value).__name__} {value!r}")


def validate_bench(doc: Any) -> list[str]:
    """Problems (empty if none) of an edge-bench JSON document against BENCH_SCHEMA."""
    problems: list[str] = []
    _check(doc, BENCH_SCHEMA, "$", problems)
    if problems:
        return problems
    if doc["schema_version"] != BENCH_SCHEMA_VERSION:
        problems.append(
            f"$.schema_version: {doc['schema_version']}, this reader knows {BENCH_SCHEMA_VERSION}"
        )
    for i, record in enumerate(doc["records"]):
        ok = record["status"] == "ok"
        if ok and (record["latency"] is None or record["throughput"] is None):
            problems.append(f"$.records[{i}]: status ok without latency/throughput")
        if not ok and not record["error"]:
            problems.append(f"$.records[{i}]: status {record['status']} without an error message")
        for kind in ("load_first", "load_second"):
            load = record[kind]
            if load["status"] == "ok" and (
                load["load_to_first_result_s"] is None or load["memory"] is None
            ):
                problems.append(f"$.records[{i}].{kind}: status ok without timings/memory")
    return problems


# -- inputs ------------------------------------------------------------------------------------
def _long_text(start: int, encoder: TextEncoder, seq: int) -> str:
    """Sentences from SENTENCES (starting at `start`, so rows differ) until the tokenizer,
    truncating at `seq`, returns exactly `seq` tokens."""
    parts: list[str] = []
    i = start
    while True:
        parts.append(SENTENCES[i % len(SENTENCES)])
        i += 1
        text = " ".join(parts)
        if encoder.encode([text])["attention_mask"].shape[1] >= seq:
            return text
        if i - start > 64 * max(1, seq):  # tokens per sentence >= 1: unreachable unless broken
            raise EdgeRuntimeError(
                f"tokenizer never reached {seq} tokens on the built-in sentences"
            )


def make_feeds(
    root: Path, manifest: dict[str, Any], batch: int, seq: int
) -> tuple[dict[str, np.ndarray], str]:
    """Input tensors [batch, seq] for the artifacts of `root`, and their kind: "text" (the
    built-in sentences through the artifact's tokenizer, every row exactly `seq` tokens, no
    padding) or "random-ids" (no tokenizer: ids drawn from the range the golden sample uses)."""
    names = [spec["name"] for spec in manifest["inputs"]]
    spec = manifest.get("tokenizer")
    if spec:
        if seq > int(spec["max_length"]):
            raise BenchConfigError(
                "seqs", f"{seq} exceeds the tokenizer's max_length {spec['max_length']} in {root}"
            )
        # Truncation at `seq` keeps the special tokens ([CLS] ... [SEP]) in place.
        encoder = TextEncoder(
            resolve(root, spec["files"][0]["path"]), {**spec, "max_length": seq}, names
        )
        specials = encoder.encode([""])["input_ids"].shape[1]  # e.g. [CLS] [SEP]
        if seq < specials:
            raise BenchConfigError(
                "seqs", f"{seq} is shorter than the {specials} special tokens the tokenizer adds"
            )
        texts = [_long_text(row, encoder, seq) for row in range(batch)]
        feeds = encoder.encode(texts, pad_to=seq)
        if feeds["attention_mask"].shape != (batch, seq):
            raise EdgeRuntimeError(
                f"tokenized inputs have shape {feeds['attention_mask'].shape}, "
                f"wanted {(batch, seq)}"
            )
        return feeds, "text"
    # No tokenizer: ids no larger than the golden sample's (they exist in the vocabulary).
    golden = manifest["artifacts"][0]["golden"]
    with np.load(resolve(root, golden["path"]), allow_pickle=False) as data:
        id_inputs = [k for k in data.files if k.startswith("input:") and k.endswith("input_ids")]
        if not id_inputs:
            raise EdgeRuntimeError(
                f"{root} has no tokenizer and its golden sample no input_ids: cannot make inputs"
            )
        high = max(int(data[k].max()) for k in id_inputs)
    rng = np.random.default_rng(seq * 1000 + batch)
    dtypes = {"int64": np.int64, "int32": np.int32}
    feeds = {}
    for spec_in in manifest["inputs"]:
        name, dtype = spec_in["name"], dtypes.get(spec_in["dtype"], np.int64)
        if "mask" in name:
            feeds[name] = np.ones((batch, seq), dtype)
        elif "type" in name:
            feeds[name] = np.zeros((batch, seq), dtype)
        else:
            feeds[name] = rng.integers(1, max(high, 2), size=(batch, seq)).astype(dtype)
    return feeds, "random-ids"


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
            return json.loads(line[len(PROBE_MARKER) + 1 :])
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
            raise BenchConfigError(
                "artifacts", f"no artifact {unknown} in {root}; it has: {', '.join(by_name)}"
            )
        return [by_name[name] for name in dict.fromkeys(config.artifacts)]
    # The one a user gets from edge_runtime.load(root) on this device (tune=None: a cached
    # tuning result counts, but no sweep is started and nothing is written to the user's cache).
    chosen = edge_runtime.load(
        root, verify=config.verify, weight_cache=work / "pick", tune=None
    ).name
    return [by_name[chosen]]


def _describe_device() -> tuple[dict[str, Any], Callable[[], dict[str, Any]]]:
    from edge_runtime import _device

    info = _device.detect()
    profile, reason = _device.match_profile(info)

    def read_sensors() -> dict[str, Any]:
        # The load average tells how busy the CPU was with other work: on a shared machine the
        # absolute times scale with it (ratios within one run are what survive).
        try:
            load = [round(value, 2) for value in os.getloadavg()]
        except (AttributeError, OSError):  # not on this OS
            load = None
        return _device.sensors() | {"load_average": load}

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
            "artifacts": list(config.artifacts),
            "seqs": list(config.seqs),
            "batches": list(config.batches),
            "threads": list(config.threads),
            "device_cache": "temporary: empty before each first load, kept for its second load",
        },
        "records": records,
    }


def _measure(
    root: Path,
    manifest: dict[str, Any],
    config: BenchConfig,
    work: Path,
    say: Callable[[str], None],
) -> list[dict[str, Any]]:
    shapes = [(batch, seq) for batch in config.batches for seq in config.seqs]
    feeds: dict[tuple[int, int], dict[str, np.ndarray]] = {}
    kinds: dict[tuple[int, int], str] = {}
    for shape in shapes:
        feeds[shape], kinds[shape] = make_feeds(root, manifest, *shape)
        np.savez(work / f"feeds-{shape[0]}x{shape[1]}.npz", **feeds[shape])

    targets: list[_Target] = []
    seen: set[tuple[str, int]] = set()
    for entry in _selected(root, manifest, config, work):
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
    _warm_up(live, feeds, config, say)
    _timed_rounds(live, feeds, config, say)
    for target in live:
        for shape, record in target.records.items():
            if record["status"] == "ok":
                latency = _latency(target.times[shape])
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
    if not backends.backend_available(entry["format"]):
        reason = (
            f"no {entry['format']} backend installed here ({entry['format']} artifacts need one)"
        )
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
            weight_cache=work / "main",
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


def _run_or_fail(
    target: _Target, shape: tuple[int, int], feeds: dict[str, np.ndarray]
) -> float | None:
    """Seconds of one run, or None after recording why the shape cannot run (e.g. a TFLite
    artifact whose longest bucket is shorter than seq)."""
    started = time.perf_counter()
    try:
        target.model.run(feeds)
    except Exception as exc:  # noqa: BLE001 - the backend's own error types; recorded, not hidden
        _fail(target.records[shape], "error", f"run failed: {type(exc).__name__}: {exc}")
        return None
    return time.perf_counter() - started


def _warm_up(
    live: list[_Target], feeds: dict, config: BenchConfig, say: Callable[[str], None]
) -> None:
    for target in live:
        for shape in target.records:
            for _ in range(
                max(config.warmup, 1)
            ):  # at least one: a shape that cannot run is found here
                if _run_or_fail(target, shape, feeds[shape]) is None:
                    say(
                        f"{target.entry['name']}: batch {shape[0]} x {shape[1]}: "
                        f"{target.records[shape]['error']}"
                    )
                    break
            target.times[shape] = []


def _timed_rounds(
    live: list[_Target], feeds: dict, config: BenchConfig, say: Callable[[str], None]
) -> None:
    for round_no in range(config.rounds):
        # runs spread evenly over the rounds (the first rounds take the remainder)
        count = config.runs // config.rounds + (1 if round_no < config.runs % config.rounds else 0)
        # Rotate who goes first, so no artifact always follows the same one.
        order = live[round_no % len(live) :] + live[: round_no % len(live)] if live else []
        for target in order:
            for shape, rounds in target.times.items():
                rounds.append([])
                if target.records[shape]["status"] != "ok" or count == 0:
                    continue
                for _ in range(count):
                    seconds = _run_or_fail(target, shape, feeds[shape])
                    if seconds is None:
                        break
                    rounds[-1].append(seconds)
                time.sleep(SWITCH_PAUSE_S)
        say(f"round {round_no + 1}/{config.rounds} done")


# -- report ------------------------------------------------------------------------------------
# ISA flags that decide which kernels run (shown in the table; the JSON has every flag).
KEY_FLAGS = (
    "avx2",
    "fma",
    "avx512f",
    "avx512_vnni",
    "avx_vnni",
    "amx_int8",
    "asimd",
    "asimddp",
    "i8mm",
    "fphp",
    "asimdhp",
    "sve",
    "sve2",
)


def _ms(seconds: float | None) -> str:
    return "—" if seconds is None else f"{seconds * 1e3:.0f}"


def _mb(count: int | None) -> str:
    return "—" if count is None else f"{count / 2**20:.0f}"


def _sensor_line(sensors: dict[str, Any]) -> str:
    temps = sensors.get("temperature_c") or {}
    freqs = sensors.get("cpufreq_khz") or {}
    parts = []
    parts.append(
        f"max temperature {max(temps.values()):.1f} °C" if temps else "temperature unreadable"
    )
    parts.append(
        f"frequency {min(freqs.values()) / 1e3:.0f}-{max(freqs.values()) / 1e3:.0f} MHz"
        if freqs
        else "frequency unreadable"
    )
    load = sensors.get("load_average")
    parts.append(
        f"load average {' / '.join(map(str, load))} (1/5/15 min)"
        if load
        else "load average unreadable"
    )
    throttled = sensors.get("throttled")
    if throttled is None:
        parts.append("throttling flags unreadable (not a Raspberry Pi)")
    else:
        active = sorted(k for k, v in throttled.items() if v is True)
        parts.append("throttling: " + (", ".join(active) if active else "none"))
    return "; ".join(parts)


def device_label(device: dict[str, Any]) -> str:
    flags = [f for f in KEY_FLAGS if f in set(device.get("isa_features", ()))]
    name = device.get("board") or device.get("cpu_model", "unknown CPU")
    cpu = f"{device.get('cpu_model')}, " if device.get("board") else ""
    return f"{name} ({cpu}{device.get('arch')}; {' '.join(flags) or 'no key ISA flags'})"


_COLUMNS = (
    ("artifact", "---"),
    ("MB", "---:"),
    ("batch x seq", "---"),
    ("threads", "---:"),
    ("p50 ms", "---:"),
    ("p90 ms", "---:"),
    ("p99 ms", "---:"),
    ("seq/s", "---:"),
    ("tokens/s", "---:"),
    ("load→1st result ms (1st / 2nd)", "---"),
    ("RSS anon / file MiB (2nd)", "---"),
    ("peak RSS MiB (2nd)", "---:"),
    ("device cache (1st / 2nd)", "---"),
    ("golden", "---"),
    ("status", "---"),
)


def _row(cells: Iterable[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _cells(r: dict[str, Any]) -> list[str]:
    lat, thr, first, second = r["latency"], r["throughput"], r["load_first"], r["load_second"]
    mem = second["memory"] or {}
    timing = [f"{lat[k]:.2f}" for k in ("p50_ms", "p90_ms", "p99_ms")] if lat else ["—"] * 3
    rates = [f"{thr['sequences_per_s']:.1f}", f"{thr['tokens_per_s']:.0f}"] if thr else ["—"] * 2
    status = r["status"] if r["status"] == "ok" else f"{r['status']}: {r['error']}"
    return [
        r["artifact"],
        f"{r['bytes'] / 1e6:.1f}",
        f"{r['batch']} x {r['seq']}",
        str(r["threads"] or "—"),
        *timing,
        *rates,
        f"{_ms(first['load_to_first_result_s'])} / {_ms(second['load_to_first_result_s'])}",
        f"{_mb(mem.get('rss_anon_bytes'))} / {_mb(mem.get('rss_file_bytes'))}",
        _mb(mem.get("peak_rss_bytes")),
        f"{first['device_cache'] or '—'} / {second['device_cache'] or '—'}",
        r["golden"],
        status.replace("|", "/"),
    ]


def render_markdown(doc: dict[str, Any]) -> str:
    """A Markdown report: the device, then one table row per record."""
    device, versions, settings = doc["device"], doc["versions"], doc["settings"]
    backend_list = ", ".join(f"{k} {v}" for k, v in versions["backends"].items()) or "none"
    name = doc["source_model"] or doc["artifact_dir"]
    lines = [
        f"## edge-bench: {name} ({doc['task']}), target {doc['target']}",
        "",
        f"- device: {device_label(device)}, {device.get('logical_cores', '?')} logical cores, "
        + f"{device.get('ram_total_mb', '?')} MB RAM; profile {device['profile']} "
        + f"({device['profile_reason']})",
        f"- edge_runtime {versions['edge_runtime']}, Python {versions['python']}, "
        + f"numpy {versions['numpy']}, backends: {backend_list}",
        f"- before: {_sensor_line(doc['sensors_before'])}",
        f"- after: {_sensor_line(doc['sensors_after'])}",
        f"- {settings['runs']} timed runs after {settings['warmup']} warm-up runs, in "
        + f"{settings['rounds']} interleaved rounds; load columns: fresh process, first load "
        + "(empty device cache) / second load",
        "",
        _row(title for title, _ in _COLUMNS),
        "|" + "|".join(align for _, align in _COLUMNS) + "|",
    ]
    lines += [_row(_cells(r)) for r in doc["records"]]
    problems = [
        f"- {r['artifact']} {kind}: {r[kind]['error']}"
        for r in doc["records"]
        for kind in ("load_first", "load_second")
        if r[kind]["status"] == "error"
    ]
    if problems:
        lines += ["", "Load probe errors:", *problems]
    return "\n".join(lines) + "\n"
