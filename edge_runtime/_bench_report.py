"""Markdown report of an edge-bench result: the device line, then one table row per record.

Reads only the JSON document (BENCH_SCHEMA), so a result from another device renders the same;
benchmarks/merge_bench.py uses device_label for its tables and plots.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from edge_runtime._contention import busy_note, worst_share
from edge_runtime._device import FEATURES_OF_INTEREST
from edge_runtime._rounds import rounds_for
from edge_runtime._sensors import hottest

__all__ = ["KEY_FLAGS", "device_label", "render_markdown"]

# ISA flags that decide which kernels run (shown in the table; the JSON has every flag): the
# same list edge-run --info shows.
KEY_FLAGS = FEATURES_OF_INTEREST


def _ms(seconds: float | None) -> str:
    return "—" if seconds is None else f"{seconds * 1e3:.0f}"


def _mb(count: int | None) -> str:
    return "—" if count is None else f"{count / 2**20:.0f}"


def _sensor_line(sensors: dict[str, Any]) -> str:
    temps = sensors.get("temperature_c") or {}
    freqs = sensors.get("cpufreq_khz") or {}
    parts = []
    hot = hottest(temps)
    parts.append(f"max temperature {hot:.1f} °C" if hot is not None else "temperature unreadable")
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
        parts.append("throttling flags unreadable (no firmware get_throttled file)")
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
        " ".join(status.replace("|", "/").split()),  # one table row: no pipes, no line breaks
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
        + f"{rounds_for(settings['runs'], settings['rounds'])} interleaved rounds; load columns: fresh process, first load "
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
    skipped = doc.get("skipped_artifacts") or {}
    if skipped:
        lines += ["", "Not measured (this edge_runtime cannot load them):",
                  *(f"- {name}: {why}" for name, why in skipped.items())]
    waits = [(r.get("latency") or {}).get("cpu_wait_share") for r in doc["records"]]
    busy = busy_note(worst_share(waits))
    if busy:
        lines += ["", f"**Note:** {busy}."]
    return "\n".join(lines) + "\n"
