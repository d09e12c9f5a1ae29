#!/usr/bin/env python3
"""Merge edge-bench JSON files (devices x artifact directories) into one Markdown table and plots.

    python benchmarks/merge_bench.py pi4.json pi5.json x86.json --out benchmarks/results/edge_bench

writes OUT.md (one table, device column first), OUT-latency.png (p50 latency vs sequence length,
one line per device x artifact, shaded up to p90) and OUT-tradeoff.png (size vs accuracy, colour
= p50 latency; one panel per device). Needs matplotlib (the toolkit's `bench` extra).

Speed ratios are only taken inside one file: "p50 vs fp32" divides by the FP32 artifact of the
same format at the same batch, length and threads, measured in the same interleaved rounds
(median over rounds of the per-round ratio). Devices are never mixed in a ratio; absolute
milliseconds from different devices stand side by side with their CPU and flags.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edge_runtime._bench import device_label, validate_bench  # noqa: E402

# Accuracy of an artifact against its FP32 source, from the manifest metrics edge-bench copied:
# embeddings by mean cosine, classifiers by top-1 agreement.
ACCURACY_KEYS = ("cosine_mean", "top1_agreement")
REFERENCE_SEQ = 128  # the trade-off plot's latency: batch 1 at this length (else the longest)


class MergeError(ValueError):
    """An input file is not an edge-bench result this script can read."""


def load_results(paths: Iterable[Path]) -> list[dict[str, Any]]:
    docs = []
    for path in paths:
        try:
            doc = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise MergeError(f"{path}: cannot read an edge-bench JSON file: {exc}") from None
        problems = validate_bench(doc)
        if problems:
            raise MergeError(
                f"{path}: not a valid edge-bench result (write it with `edge-bench DIR --json "
                f"OUT` of this version):\n  " + "\n  ".join(problems[:20])
            )
        doc["_file"] = Path(path).name
        docs.append(doc)
    if not docs:
        raise MergeError("no input files")
    return docs


def accuracy(record: dict[str, Any]) -> tuple[str, float] | None:
    for key in ACCURACY_KEYS:
        if key in record["metrics"]:
            return key, float(record["metrics"][key])
    return None


def _same_run_ratio(record: dict[str, Any], base: dict[str, Any]) -> float:
    """Median over rounds of (p50 / baseline p50) in the same round."""
    mine, theirs = record["latency"]["round_p50_ms"], base["latency"]["round_p50_ms"]
    pairs = list(zip(mine, theirs))
    return (
        statistics.median(a / b for a, b in pairs)
        if pairs
        else record["latency"]["p50_ms"] / base["latency"]["p50_ms"]
    )


def rows(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One flat row per successful measurement, with its device and its same-run ratio."""
    out = []
    for doc in docs:
        ok = [r for r in doc["records"] if r["status"] == "ok"]
        for record in ok:
            base = next(
                (
                    b
                    for b in ok
                    if b["format"] == record["format"]
                    and b["precision"] == "fp32"
                    and (b["batch"], b["seq"], b["threads"])
                    == (record["batch"], record["seq"], record["threads"])
                ),
                None,
            )
            out.append(
                {
                    "device": device_label(doc["device"]),
                    "file": doc["_file"],
                    "target": doc["target"],
                    "record": record,
                    "accuracy": accuracy(record),
                    "ratio": _same_run_ratio(record, base) if base is not None else None,
                }
            )
    return out


def _sensors(doc: dict[str, Any]) -> str:
    parts = []
    for when in ("sensors_before", "sensors_after"):
        sensors = doc[when]
        temps = sensors["temperature_c"]
        text = f"{max(temps.values()):.0f} °C" if temps else "temp n/a"
        if sensors["load_average"]:
            text += f", load {sensors['load_average'][0]}"
        throttled = sensors["throttled"]
        if throttled is not None:
            active = sorted(k for k, v in throttled.items() if v is True)
            text += ", throttling: " + (" ".join(active) if active else "none")
        parts.append(text)
    return " → ".join(parts)


def markdown(docs: list[dict[str, Any]]) -> str:
    lines = [
        "# edge-bench results",
        "",
        "Files merged (each one run of `edge-bench` on one device):",
        "",
    ]
    for doc in docs:
        lines.append(
            f"- `{doc['_file']}`: {device_label(doc['device'])}, target {doc['target']}, "
            f"{doc['created_utc']}, edge_runtime {doc['versions']['edge_runtime']}, backends "
            + ", ".join(f"{k} {v}" for k, v in doc["versions"]["backends"].items())
            + f"; sensors {_sensors(doc)}"
        )
    lines += [
        "",
        (
            "p50 vs fp32: against the FP32 artifact of the same format, batch, length and "
            "threads in the same file (median of per-round ratios); never across devices. "
            "Load: fresh process, first load (empty device cache) / second load. "
            "RSS after the first result of the second load."
        ),
        "",
        (
            "| device (CPU; flags) | target | artifact | MB | accuracy | batch x seq | threads "
            "| p50 ms | p90 ms | p99 ms | p50 vs fp32 | tokens/s | load→1st ms (1st / 2nd) "
            "| RSS anon / file MiB | golden |"
        ),
        "|---|---|---|---:|---|---|---:|---:|---:|---:|---:|---:|---|---|---|",
    ]
    for row in rows(docs):
        r = row["record"]
        lat, first, second = r["latency"], r["load_first"], r["load_second"]
        mem = second["memory"] or {}
        acc = f"{row['accuracy'][1]:.4f} ({row['accuracy'][0]})" if row["accuracy"] else "—"
        ratio = f"{row['ratio']:.3f}x" if row["ratio"] is not None else "—"
        loads = " / ".join(
            "—"
            if x["load_to_first_result_s"] is None
            else f"{x['load_to_first_result_s'] * 1e3:.0f}"
            for x in (first, second)
        )
        memory = " / ".join(
            "—" if mem.get(k) is None else f"{mem[k] / 2**20:.0f}"
            for k in ("rss_anon_bytes", "rss_file_bytes")
        )
        cells = [
            row["device"],
            row["target"],
            r["artifact"],
            f"{r['bytes'] / 1e6:.1f}",
            acc,
            f"{r['batch']} x {r['seq']}",
            str(r["threads"]),
            *(f"{lat[k]:.2f}" for k in ("p50_ms", "p90_ms", "p99_ms")),
            ratio,
            f"{r['throughput']['tokens_per_s']:.0f}",
            loads,
            memory,
            r["golden"],
        ]
        lines.append("| " + " | ".join(cells) + " |")
    failed = [(doc["_file"], r) for doc in docs for r in doc["records"] if r["status"] != "ok"]
    if failed:
        lines += ["", "Not measured:", ""]
        lines += [
            f"- `{f}` {r['artifact']} batch {r['batch']} x {r['seq']}: {r['status']}: {r['error']}"
            for f, r in failed
        ]
    return "\n".join(lines) + "\n"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def plot_latency(docs: list[dict[str, Any]], path: Path) -> None:
    """p50 latency vs sequence length at each file's smallest batch; one line per device x
    artifact x threads, shaded up to p90."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 5.5))
    lines: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows(docs):
        lines.setdefault((row["device"], row["file"]), []).append(row["record"])
    for (device, _file), records in lines.items():
        batch = min(r["batch"] for r in records)
        thread_counts = sorted({r["threads"] for r in records})
        for artifact in dict.fromkeys(r["artifact"] for r in records):
            for threads in thread_counts:
                points = sorted(
                    (r["seq"], r["latency"]["p50_ms"], r["latency"]["p90_ms"])
                    for r in records
                    if r["artifact"] == artifact and r["threads"] == threads and r["batch"] == batch
                )
                if not points:
                    continue
                seqs, p50, p90 = zip(*points)
                label = f"{device.split(' (')[0]}: {artifact}, {threads} threads"
                (line,) = ax.plot(seqs, p50, marker="o", label=label)
                ax.fill_between(seqs, p50, p90, color=line.get_color(), alpha=0.15, linewidth=0)
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    measured = sorted({row["record"]["seq"] for row in rows(docs)})
    ax.set_xticks(measured, [str(seq) for seq in measured])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.yaxis.set_major_formatter(ScalarFormatter())
    ax.yaxis.set_minor_formatter(ScalarFormatter())
    ax.tick_params(axis="y", which="minor", labelsize=7)
    ax.set_xlabel("sequence length (tokens)")
    ax.set_ylabel("latency per batch, ms (p50; shaded to p90)")
    ax.set_title("edge-bench: latency vs sequence length (batch 1 where measured)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_tradeoff(docs: list[dict[str, Any]], path: Path) -> None:
    """Size vs accuracy, colour = p50 latency at batch 1 x REFERENCE_SEQ (else the longest
    length measured); one panel per device so that colours compare within a device."""
    plt = _pyplot()
    by_device: dict[str, list[dict[str, Any]]] = {}
    for row in rows(docs):
        if row["accuracy"] is not None:
            by_device.setdefault(row["device"], []).append(row)
    if not by_device:
        raise MergeError(
            "no measurement has an accuracy metric (cosine_mean / top1_agreement) to plot"
        )
    fig, axes = plt.subplots(1, len(by_device), figsize=(6.5 * len(by_device), 5), squeeze=False)
    for ax, (device, device_rows) in zip(axes[0], by_device.items()):
        batch = min(r["record"]["batch"] for r in device_rows)
        seqs = {r["record"]["seq"] for r in device_rows if r["record"]["batch"] == batch}
        seq = REFERENCE_SEQ if REFERENCE_SEQ in seqs else max(seqs)
        chosen: dict[tuple, dict[str, Any]] = {}
        for row in device_rows:
            r = row["record"]
            if (r["batch"], r["seq"]) != (batch, seq):
                continue
            key = (row["file"], r["artifact"])
            # the fastest thread count of each artifact
            if (
                key not in chosen
                or r["latency"]["p50_ms"] < chosen[key]["record"]["latency"]["p50_ms"]
            ):
                chosen[key] = row
        points = list(chosen.values())
        sizes = [p["record"]["bytes"] / 1e6 for p in points]
        accs = [p["accuracy"][1] for p in points]
        p50 = [p["record"]["latency"]["p50_ms"] for p in points]
        scatter = ax.scatter(sizes, accs, c=p50, cmap="viridis_r", s=120, edgecolors="black")
        for point, x, y in zip(points, sizes, accs):
            ax.annotate(
                f"{point['record']['artifact']}\n{point['record']['latency']['p50_ms']:.1f} ms",
                (x, y),
                textcoords="offset points",
                xytext=(6, 4),
                fontsize=8,
            )
        fig.colorbar(scatter, ax=ax, label=f"p50 ms, batch {batch} x {seq}")
        metrics = sorted({p["accuracy"][0] for p in points})
        ax.set_xlabel("artifact size, MB")
        ax.set_ylabel(f"accuracy vs FP32 source ({' / '.join(metrics)})")
        ax.set_title(device, fontsize=9)
        ax.ticklabel_format(axis="both", useOffset=False)
        ax.grid(True, alpha=0.3)
        ax.margins(x=0.25, y=0.25)
    fig.suptitle("edge-bench: size vs accuracy vs latency")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def merge(paths: Iterable[Path], out: Path) -> list[Path]:
    """Write OUT.md, OUT-latency.png, OUT-tradeoff.png; returns their paths."""
    docs = load_results(paths)
    out.parent.mkdir(parents=True, exist_ok=True)
    table = out.with_name(out.name + ".md")
    table.write_text(markdown(docs), encoding="utf-8")
    latency, tradeoff = (
        out.with_name(out.name + "-latency.png"),
        out.with_name(out.name + "-tradeoff.png"),
    )
    plot_latency(docs, latency)
    plot_tradeoff(docs, tradeoff)
    return [table, latency, tradeoff]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", type=Path, help="edge-bench --json files")
    parser.add_argument(
        "--out",
        type=Path,
        default=ROOT / "benchmarks" / "results" / "edge_bench",
        help="output prefix: OUT.md, OUT-latency.png, OUT-tradeoff.png",
    )
    args = parser.parse_args(argv)
    try:
        written = merge(args.results, args.out)
    except MergeError as exc:
        print(f"merge_bench: error: {exc}", file=sys.stderr)
        return 1
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
