"""The edge-bench result document: BENCH_SCHEMA and validate_bench.

One definition of the JSON that run_bench writes, read by benchmarks/merge_bench.py on the
workstation and by the tests; docs/edge-bench.md explains each field. Standard library only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["BENCH_SCHEMA", "BENCH_SCHEMA_VERSION", "validate_bench"]

BENCH_SCHEMA_VERSION = 1


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
class MayLack:
    """A key an object may lack: added after schema version 1 shipped, so older files stay valid."""

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
    # share of the timed runs with a task queued for a CPU (edge_runtime._contention)
    "cpu_wait_share": MayLack(Opt(NUM)),
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
    # --all: artifacts of the directory this edge_runtime cannot load (a later converter's
    # format or precision), with the reason; no record is made for them
    "skipped_artifacts": MayLack(MapOf(str)),
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
                if not isinstance(sub, MayLack):
                    problems.append(f"{where}.{key}: missing")
            else:
                _check(value[key], sub.spec if isinstance(sub, MayLack) else sub, f"{where}.{key}", problems)
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
