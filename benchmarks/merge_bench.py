#!/usr/bin/env python3
"""Merge edge-bench JSON files (devices x artifact directories) into one Markdown table and plots.

    python benchmarks/merge_bench.py pi4.json pi5.json x86.json --out benchmarks/results/edge_bench

writes OUT.md (one table, device, file and source model columns first), OUT-latency.png (p50
latency vs sequence length, one line per file x artifact x threads, shaded up to p90) and
OUT-tradeoff.png (size vs accuracy, colour = p50 latency; one panel per device and reference
shape). The plots name the model in their title, or per line and point when the files measured
several. Needs matplotlib (the toolkit's `bench` extra).

--out: OUT is a prefix (OUT.md, OUT-latency.png, OUT-tradeoff.png; missing parent directories
are created). An existing directory, or any path ending in "/", means "write inside it" with the
file stem edge_bench (DIR/edge_bench.md, ...). The default is ./edge_bench in the current
directory, not inside the repository, so a merge never overwrites committed results by accident.

Everything is checked and rendered in memory first (inputs, --out, plots); only then are the
three files written, through temporary files renamed into place. On an error nothing is written
(and files from an earlier merge under the same prefix stay as they were).

Speed ratios are only taken inside one file: "p50 vs fp32" divides by the FP32 artifact of the
same format at the same batch, length and threads, measured in the same interleaved rounds
(median over rounds of the per-round ratio). Devices are never mixed in a ratio; absolute
milliseconds from different devices stand side by side with their CPU and flags.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edge_runtime._bench import device_label, validate_bench  # noqa: E402
from edge_runtime._contention import busy_note, worst_share  # noqa: E402
from edge_runtime._sensors import hottest  # noqa: E402

# Accuracy of an artifact against its FP32 source, from the manifest metrics edge-bench copied:
# embeddings by mean cosine, classifiers by top-1 agreement.
ACCURACY_KEYS = ("cosine_mean", "top1_agreement")
REFERENCE_SEQ = 128  # the trade-off plot's latency: each file's smallest batch at this length
# (else that file's longest length)
DEFAULT_STEM = "edge_bench"  # file stem inside a directory given as --out
DEFAULT_OUT = DEFAULT_STEM  # relative: the current directory
SUFFIXES = (".md", "-latency.png", "-tradeoff.png")


class MergeError(ValueError):
    """A user mistake (an unreadable input, a bad --out, ...): one line for the user."""


# -- inputs --------------------------------------------------------------------------------------
def _file_labels(paths: list[Path]) -> list[str]:
    """File names, or paths relative to the inputs' common directory where names repeat."""
    names = [p.name for p in paths]
    if len(set(names)) == len(names):
        return names
    resolved = [p.resolve() for p in paths]
    common = Path(os.path.commonpath([str(r.parent) for r in resolved]))
    return [str(r.relative_to(common)) for r in resolved]


def load_results(paths: Iterable[Path]) -> list[dict[str, Any]]:
    paths = [Path(p) for p in paths]
    docs: list[dict[str, Any]] = []
    seen_files: dict[tuple[int, int], Path] = {}
    seen_content: dict[str, Path] = {}
    for path in paths:
        try:
            stat = path.stat()
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:  # ValueError: JSON and UTF-8 decoding errors
            raise MergeError(f"{path}: cannot read an edge-bench JSON file: {exc}") from None
        if _is_manifest(doc):  # an easy mix-up: its schema errors quoted a whole target profile
            raise MergeError(
                f"{path}: an edge-convert manifest, not an edge-bench result; benchmark that "
                f"directory with `edge-bench {path.parent} --json OUT` and merge OUT"
            )
        problems = validate_bench(doc)
        if problems:
            more = f"; ... {len(problems) - 20} more" if len(problems) > 20 else ""
            raise MergeError(
                f"{path}: not a valid edge-bench result (write it with `edge-bench DIR --json "
                f"OUT` of this version): " + "; ".join(map(_shortened, problems[:20])) + more
            )
        same = seen_files.get((stat.st_dev, stat.st_ino))
        if same is not None:
            raise MergeError(
                f"{path}: given twice (the same file as {same}); each of its rows would appear "
                "twice: give it once"
            )
        content = json.dumps(doc, sort_keys=True)
        copy_of = seen_content.get(content)
        if copy_of is not None:
            raise MergeError(
                f"{path} holds the same edge-bench result as {copy_of} (a copy?); each of its "
                "rows would appear twice: give it once"
            )
        seen_files[(stat.st_dev, stat.st_ino)] = path
        seen_content[content] = path
        docs.append(doc)
    if not docs:
        raise MergeError("no input files")
    for doc, label in zip(docs, _file_labels(paths)):
        doc["_file"] = label
    return docs


def _is_manifest(doc: Any) -> bool:
    """An edge-convert manifest.json: artifacts and the source model, no edge-bench records."""
    return (
        isinstance(doc, dict)
        and "artifacts" in doc
        and ("source" in doc or "created_by" in doc)
        and "records" not in doc
    )


PROBLEM_CHARS = 200  # a schema problem quotes the value it found: a whole section, at worst


def _shortened(problem: str) -> str:
    return problem if len(problem) <= PROBLEM_CHARS else problem[: PROBLEM_CHARS - 1] + "…"


def model_name(doc: dict[str, Any]) -> str:
    """The source model a result measured (edge-bench copies it from the manifest), else its
    artifact directory."""
    return doc.get("source_model") or doc["artifact_dir"]


def _several_models(docs: list[dict[str, Any]]) -> bool:
    return len({model_name(doc) for doc in docs}) > 1


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


def _threads(threads: int | None) -> str:
    return "default threads" if threads is None else f"{threads} threads"


def _thread_key(threads: int | None) -> tuple[bool, int]:
    return (threads is None, threads or 0)


def _wait_share(record: dict[str, Any]) -> float | None:
    """latency.cpu_wait_share; None when unreadable there or the file predates the field."""
    return (record.get("latency") or {}).get("cpu_wait_share")


def rows(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One flat row per successful measurement, with its device, file and same-run ratio."""
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
                    "device_key": _device_key(doc["device"]),
                    "file": doc["_file"],
                    "model": model_name(doc),
                    "target": doc["target"],
                    "record": record,
                    "accuracy": accuracy(record),
                    "ratio": _same_run_ratio(record, base) if base is not None else None,
                }
            )
    return out


def _device_key(device: dict[str, Any]) -> tuple:
    """One physical kind of device (not the free RAM or load of the moment)."""
    return (
        device["cpu_model"],
        device["arch"],
        device["board"],
        tuple(sorted(device["isa_features"])),
    )


# -- what each plot shows ------------------------------------------------------------------------
def _shapes(records: Iterable[dict[str, Any]]) -> str:
    return ", ".join(
        f"{b} x {s}" for b, s in sorted({(r["batch"], r["seq"]) for r in records})
    )


def plot_plan(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per file: the batch of its latency-plot lines and the (batch, seq) of its trade-off
    points, with the measurements each plot leaves out (listed in the Markdown)."""
    plan = {}
    for doc in docs:
        ok = [r for r in doc["records"] if r["status"] == "ok"]
        entry: dict[str, Any] = {
            "latency_batch": None,
            "latency_left_out": [],
            "tradeoff_shape": None,
            "tradeoff_left_out": [],
            "no_accuracy": [],
        }
        if ok:
            batch = min(r["batch"] for r in ok)
            entry["latency_batch"] = batch
            entry["latency_left_out"] = [r for r in ok if r["batch"] != batch]
        with_acc = [r for r in ok if accuracy(r) is not None]
        entry["no_accuracy"] = [r for r in ok if accuracy(r) is None]
        if with_acc:
            batch = min(r["batch"] for r in with_acc)
            seqs = {r["seq"] for r in with_acc if r["batch"] == batch}
            shape = (batch, REFERENCE_SEQ if REFERENCE_SEQ in seqs else max(seqs))
            entry["tradeoff_shape"] = shape
            entry["tradeoff_left_out"] = [
                r for r in with_acc if (r["batch"], r["seq"]) != shape
            ]
        plan[doc["_file"]] = entry
    return plan


def latency_series(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The latency plot's lines: one per file x artifact x threads at the file's smallest batch,
    labelled with the device (CPU model and key ISA flags), the file where another file has the
    same device label, the artifact (and its source model when the files measured several),
    threads and (other than 1) batch."""
    plan = plot_plan(docs)
    several_models = _several_models(docs)
    all_rows = rows(docs)
    files_per_label: dict[str, set[str]] = {}
    for row in all_rows:
        files_per_label.setdefault(row["device"], set()).add(row["file"])
    series = []
    for doc in docs:
        file, batch = doc["_file"], plan[doc["_file"]]["latency_batch"]
        mine = [row for row in all_rows if row["file"] == file and row["record"]["batch"] == batch]
        if not mine:
            continue
        device = mine[0]["device"]
        who = f"{device} [{file}]" if len(files_per_label[device]) > 1 else device
        artifacts = dict.fromkeys(row["record"]["artifact"] for row in mine)
        thread_counts = sorted({row["record"]["threads"] for row in mine}, key=_thread_key)
        for artifact in artifacts:
            for threads in thread_counts:
                points = sorted(
                    (r["seq"], r["latency"]["p50_ms"], r["latency"]["p90_ms"])
                    for r in (row["record"] for row in mine)
                    if r["artifact"] == artifact and r["threads"] == threads
                )
                if not points:
                    continue
                seqs, p50, p90 = zip(*points)
                shape = "" if batch == 1 else f", batch {batch}"
                what = f"{artifact} of {model_name(doc)}" if several_models else artifact
                series.append(
                    {
                        "label": f"{who}: {what}, {_threads(threads)}{shape}",
                        "seqs": list(seqs),
                        "p50": list(p50),
                        "p90": list(p90),
                    }
                )
    return series


def tradeoff_panels(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The trade-off plot's panels: one per device x (batch, seq), so that the colours of one
    panel compare latencies of one device at one shape. Every file with an accuracy metric
    appears, at its own reference shape (batch x REFERENCE_SEQ, else its longest length). One
    point per artifact (size and accuracy), coloured by its fastest p50 and annotated with the
    p50 of every file x thread count measured there. When the files measured several models,
    each panel's title names its models, and a point its own where a panel holds several."""
    plan = plot_plan(docs)
    several_models = _several_models(docs)
    panels: dict[tuple, dict[str, Any]] = {}
    for row in rows(docs):
        shape = plan[row["file"]]["tradeoff_shape"]
        r = row["record"]
        if row["accuracy"] is None or (r["batch"], r["seq"]) != shape:
            continue
        panel = panels.setdefault(
            (row["device_key"], shape),
            {"device": row["device"], "shape": shape, "files": [], "models": [], "points": {}},
        )
        if row["file"] not in panel["files"]:
            panel["files"].append(row["file"])
        if row["model"] not in panel["models"]:
            panel["models"].append(row["model"])
        point = panel["points"].setdefault(
            (row["model"], r["artifact"], r["bytes"], row["accuracy"]),
            {
                "artifact": r["artifact"],
                "model": row["model"],
                "mb": r["bytes"] / 1e6,
                "accuracy": row["accuracy"],
                "timings": [],  # (file, threads, p50 ms)
            },
        )
        point["timings"].append((row["file"], r["threads"], r["latency"]["p50_ms"]))
    if not panels:
        raise MergeError(
            "no measurement has an accuracy metric (cosine_mean / top1_agreement) to plot "
            "size vs accuracy"
        )
    out = []
    for panel in panels.values():
        points = []
        for point in panel["points"].values():
            several = len(panel["files"]) > 1
            name = point["artifact"]
            if len(panel["models"]) > 1:
                name += f" of {point['model']}"
            text = name + "".join(
                f"\n{f'[{file}] ' if several else ''}{_threads(threads)}: {p50:.1f} ms"
                for file, threads, p50 in point["timings"]
            )
            fastest = min(p50 for _, _, p50 in point["timings"])
            points.append(point | {"p50_ms": fastest, "text": text})
        batch, seq = panel["shape"]
        models = f"\n{', '.join(panel['models'])}" if several_models else ""
        out.append(
            {
                "title": f"{panel['device']}{models}\n{', '.join(panel['files'])}: batch {batch} "
                f"x {seq} tokens",
                "device": panel["device"],
                "shape": panel["shape"],
                "files": panel["files"],
                "models": panel["models"],
                "points": points,
            }
        )
    return out


# -- Markdown ------------------------------------------------------------------------------------
def _sensors(doc: dict[str, Any]) -> str:
    parts = []
    for when in ("sensors_before", "sensors_after"):
        sensors = doc[when]
        hot = hottest(sensors["temperature_c"] or {})
        text = f"{hot:.0f} °C" if hot is not None else "temp n/a"
        if sensors["load_average"]:
            text += f", load {sensors['load_average'][0]}"
        throttled = sensors["throttled"]
        if throttled is not None:
            active = sorted(k for k, v in throttled.items() if v is True)
            text += ", throttling: " + (" ".join(active) if active else "none")
        parts.append(text)
    return " → ".join(parts)


def _cpu_wait_summary(doc: dict[str, Any]) -> tuple[str, str]:
    """(text for the file line, busy note or "") from the records' cpu_wait_share."""
    timed = [r for r in doc["records"] if r["latency"] is not None]
    if timed and all("cpu_wait_share" not in r["latency"] for r in timed):
        return "CPU wait not recorded (file written before edge-bench recorded it)", ""
    worst = worst_share(_wait_share(r) for r in timed)
    if worst is None:
        return "CPU wait unreadable (no Linux pressure-stall information)", ""
    return f"CPU wait up to {worst:.0%} of the timed runs", busy_note(worst)


def _cpu_wait_cell(record: dict[str, Any]) -> str:
    share = _wait_share(record)
    if share is None:
        return "—"
    return f"{share:.0%} busy" if busy_note(share) else f"{share:.0%}"


def markdown(docs: list[dict[str, Any]]) -> str:
    lines = [
        "# edge-bench results",
        "",
        "Files merged (each one run of `edge-bench` on one device):",
        "",
    ]
    notes = []
    for doc in docs:
        wait, busy = _cpu_wait_summary(doc)
        lines.append(
            f"- `{doc['_file']}`: {device_label(doc['device'])}, model {model_name(doc)}, "
            f"target {doc['target']}, "
            f"{doc['created_utc']}, edge_runtime {doc['versions']['edge_runtime']}, backends "
            + ", ".join(f"{k} {v}" for k, v in doc["versions"]["backends"].items())
            + f"; sensors {_sensors(doc)}; {wait}"
        )
        if busy:
            notes.append(f"**Note:** `{doc['_file']}`: {busy}.")
    if notes:
        lines += ["", *notes]
    lines += [
        "",
        (
            "p50 vs fp32: against the FP32 artifact of the same format, batch, length and "
            "threads in the same file (median of per-round ratios); never across devices. "
            "Load: fresh process, first load (empty device cache) / second load. "
            "RSS after the first result of the second load. CPU wait: share of the timed runs "
            "with a task queued for a CPU (\"busy\": those p50s are slower than the quiet "
            "device; — where not recorded)."
        ),
        "",
        (
            "| device (CPU; flags) | file | model | target | artifact | MB | accuracy "
            "| batch x seq | threads | p50 ms | p90 ms | p99 ms | p50 vs fp32 | tokens/s "
            "| CPU wait | load→1st ms (1st / 2nd) | RSS anon / file MiB | golden |"
        ),
        "|---|---|---|---|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|---|",
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
            f"`{row['file']}`",
            row["model"].replace("|", "\\|"),  # a cell of one table row
            str(row["target"]),
            r["artifact"],
            f"{r['bytes'] / 1e6:.1f}",
            acc,
            f"{r['batch']} x {r['seq']}",
            "default" if r["threads"] is None else str(r["threads"]),
            *(f"{lat[k]:.2f}" for k in ("p50_ms", "p90_ms", "p99_ms")),
            ratio,
            f"{r['throughput']['tokens_per_s']:.0f}",
            _cpu_wait_cell(r),
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
    lines += ["", "What the plots show (every measurement is in the table above):", ""]
    for file, entry in plot_plan(docs).items():
        if entry["latency_batch"] is None:
            lines.append(f"- `{file}`: no successful measurement, in neither plot")
            continue
        text = f"- `{file}`: latency plot at batch {entry['latency_batch']}"
        if entry["latency_left_out"]:
            text += f" (left out: batch x seq {_shapes(entry['latency_left_out'])})"
        if entry["tradeoff_shape"] is None:
            text += "; not in the trade-off plot: no accuracy metric"
        else:
            batch, seq = entry["tradeoff_shape"]
            text += f"; trade-off plot at batch {batch} x {seq} tokens, every thread count"
            if entry["tradeoff_left_out"]:
                text += (
                    f" (left out: batch x seq {_shapes(entry['tradeoff_left_out'])}: one shape "
                    "per file so that a panel's colours compare like with like)"
                )
            if entry["no_accuracy"]:
                names = ", ".join(dict.fromkeys(r["artifact"] for r in entry["no_accuracy"]))
                text += f"; without an accuracy metric, not in the trade-off plot: {names}"
        lines.append(text)
    return "\n".join(lines) + "\n"


# -- plots ---------------------------------------------------------------------------------------
def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise MergeError(
            "the plots need matplotlib: pip install matplotlib (the toolkit's `bench` extra)"
        ) from None
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    return buffer.getvalue()


def figure_title(docs: list[dict[str, Any]], what: str) -> str:
    """A plot's title: the model all files measured, or "several models" (each line or point
    then names its own)."""
    models = "several models" if _several_models(docs) else model_name(docs[0])
    return f"edge-bench, {models}: {what}"


def render_latency(docs: list[dict[str, Any]]) -> bytes:
    """p50 latency vs sequence length (PNG bytes); see latency_series."""
    plt = _pyplot()
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    series = latency_series(docs)
    fig, ax = plt.subplots(figsize=(9, 5.5))
    try:
        for line in series:
            (drawn,) = ax.plot(line["seqs"], line["p50"], marker="o", label=line["label"])
            ax.fill_between(
                line["seqs"], line["p50"], line["p90"], color=drawn.get_color(), alpha=0.15,
                linewidth=0,
            )
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        measured = sorted({seq for line in series for seq in line["seqs"]})
        ax.set_xticks(measured, [str(seq) for seq in measured])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.yaxis.set_major_formatter(ScalarFormatter())
        ax.yaxis.set_minor_formatter(ScalarFormatter())
        ax.tick_params(axis="y", which="minor", labelsize=7)
        ax.set_xlabel("sequence length (tokens)")
        ax.set_ylabel("latency per batch, ms (p50; shaded to p90)")
        ax.set_title(figure_title(docs, "latency vs sequence length (each file's smallest batch)"))
        ax.grid(True, which="both", alpha=0.3)
        if series:
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
        return _png(fig)
    finally:
        plt.close(fig)


def render_tradeoff(docs: list[dict[str, Any]]) -> bytes:
    """Size vs accuracy, colour = p50 latency (PNG bytes); see tradeoff_panels."""
    panels = tradeoff_panels(docs)  # MergeError before matplotlib when nothing has accuracy
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 5.5), squeeze=False)
    try:
        for ax, panel in zip(axes[0], panels):
            points = panel["points"]
            sizes = [p["mb"] for p in points]
            accs = [p["accuracy"][1] for p in points]
            scatter = ax.scatter(
                sizes, accs, c=[p["p50_ms"] for p in points], cmap="viridis_r", s=120,
                edgecolors="black",
            )
            for point, x, y in zip(points, sizes, accs):
                ax.annotate(
                    point["text"], (x, y), textcoords="offset points", xytext=(6, 4), fontsize=7
                )
            batch, seq = panel["shape"]
            fig.colorbar(
                scatter, ax=ax, label=f"p50 ms (the fastest measured), batch {batch} x {seq}"
            )
            metrics = sorted({p["accuracy"][0] for p in points})
            ax.set_xlabel("artifact size, MB")
            ax.set_ylabel(f"accuracy vs FP32 source ({' / '.join(metrics)})")
            ax.set_title(panel["title"], fontsize=8)
            ax.ticklabel_format(axis="both", useOffset=False)
            ax.grid(True, alpha=0.3)
            ax.margins(x=0.25, y=0.25)
        fig.suptitle(figure_title(docs, "size vs accuracy vs latency"))
        fig.tight_layout()
        return _png(fig)
    finally:
        plt.close(fig)


# -- output --------------------------------------------------------------------------------------
def _artifact_directory(directory: Path) -> Path | None:
    """The edge-convert output `directory` is in (itself or an ancestor), if any."""
    for candidate in (directory, *directory.parents):
        try:
            if _is_manifest(json.loads((candidate / "manifest.json").read_text(encoding="utf-8"))):
                return candidate
        except (OSError, ValueError):
            continue
    return None


def output_paths(out: str | Path) -> list[Path]:
    """OUT.md, OUT-latency.png, OUT-tradeoff.png for --out OUT (a directory: DIR/edge_bench.*);
    MergeError for an --out that cannot work. Looks only: creates nothing."""
    text = os.fspath(out)
    if not text.strip():
        raise MergeError(
            "--out is empty: give an output prefix (e.g. results/edge_bench) or a directory"
        )
    path = Path(text)
    inside = text.endswith(("/", os.sep)) or path.is_dir()
    prefix = path / DEFAULT_STEM if inside else path
    if prefix.name in ("", ".", ".."):
        raise MergeError(f"--out {text}: not a file prefix; give e.g. {text}/{DEFAULT_STEM}")
    for parent in (prefix.parent, *prefix.parent.parents):
        if parent.exists():
            if not parent.is_dir():
                raise MergeError(f"--out {text}: {parent} is a file, not a directory")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise MergeError(f"--out {text}: cannot write into {parent} (permission denied)")
            break
    home = _artifact_directory(prefix.parent)
    if home is not None:  # files added there are not in its manifest: a signed load refuses them
        raise MergeError(f"--out {text}: inside the artifact directory {home}; write the merged results "
                         f"outside it, e.g. {home.parent / (home.name + '-bench')}")
    paths = [prefix.with_name(prefix.name + suffix) for suffix in SUFFIXES]
    for target in paths:
        if target.is_dir():
            raise MergeError(f"--out {text}: {target} is a directory")
    return paths


def _write_bytes(path: Path, data: bytes) -> None:
    with open(path, "xb") as handle:  # a fresh temporary name: never follows an existing file
        handle.write(data)


def write_all(files: dict[Path, bytes]) -> None:
    """Write every file or none: missing directories, then temporary files next to the targets,
    then renames. On an OSError everything created is removed again, an earlier file a rename
    already replaced is put back (linked aside before the renames), and MergeError is raised."""
    targets = list(files)
    parent = targets[0].parent
    created: list[Path] = []
    temps: list[Path] = []
    renamed: list[Path] = []
    backups: dict[Path, Path] = {}
    writing = parent
    try:
        missing = []
        for directory in (parent, *parent.parents):
            if directory.is_dir():
                break
            missing.append(directory)
        for directory in reversed(missing):
            directory.mkdir()
            created.append(directory)
        for target, data in files.items():
            temp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
            writing = target
            _write_bytes(temp, data)
            temps.append(temp)
        for target in targets:  # an earlier merge's file, kept until every new one is in place
            if target.exists():
                backup = target.with_name(f".{target.name}.{os.getpid()}.old")
                try:
                    os.link(target, backup)
                except OSError:  # a file system without hard links
                    shutil.copy2(target, backup)
                backups[target] = backup
        for target, temp in zip(targets, temps):
            writing = target
            os.replace(temp, target)
            renamed.append(target)
    except OSError as exc:
        for path in temps + renamed:
            try:
                if path in backups:
                    os.replace(backups.pop(path), path)  # the earlier merge's file back
                else:
                    path.unlink()
            except OSError:
                pass
        for backup in backups.values():
            try:
                backup.unlink()
            except OSError:
                pass
        for directory in reversed(created):
            try:
                directory.rmdir()
            except OSError:
                pass
        reason = exc.strerror or str(exc)
        where = writing if writing is not parent else (exc.filename or parent)
        raise MergeError(f"cannot write {where}: {reason}; nothing written") from None
    for backup in backups.values():
        backup.unlink(missing_ok=True)


def merge(paths: Iterable[Path], out: str | Path) -> list[Path]:
    """Write OUT.md, OUT-latency.png, OUT-tradeoff.png (see output_paths); returns their
    paths. Everything is checked and rendered before the first file is written."""
    targets = output_paths(out)
    docs = load_results(paths)
    if not any(r["status"] == "ok" for doc in docs for r in doc["records"]):
        # Plots need at least one timing: say that, not the accuracy panel's complaint.
        failed = [f"{doc['_file']}: {r['artifact']}: {r['status']}: {r['error']}"
                  for doc in docs for r in doc["records"]][:3]
        raise MergeError("nothing was measured in any input (every record failed or was skipped"
                         + (": " + "; ".join(failed) if failed else ", or there are none") + ")")
    contents = [markdown(docs).encode("utf-8"), render_latency(docs), render_tradeoff(docs)]
    write_all(dict(zip(targets, contents)))
    return targets


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="merge_bench",
        description=__doc__.splitlines()[0] + " Needs matplotlib (the plots).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "Nothing is written unless every input is valid and every output can be made; on an\n"
            "error, one line and exit status 1 (2 for a bad flag)."
        ),
    )
    parser.add_argument("results", nargs="+", type=Path, help="edge-bench --json files")
    parser.add_argument(
        "--out",
        default=DEFAULT_OUT,
        help=(
            "output prefix: writes OUT.md, OUT-latency.png, OUT-tradeoff.png (missing parent "
            f"directories are created). An existing directory or a path ending in '/' means "
            f"DIR/{DEFAULT_STEM}.md etc. Default: %(default)s, i.e. ./{DEFAULT_STEM}.md etc. in "
            "the current directory (not the repository, so committed results are never "
            "overwritten by accident)"
        ),
    )
    args = parser.parse_args(argv)
    try:
        written = merge(args.results, args.out)
    except MergeError as exc:
        message = str(exc).replace("\n", " ")
        print(f"merge_bench: error: {message}", file=sys.stderr)
        return 1
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
