#!/usr/bin/env python3
"""Cold start and memory: a backend's default session against what `edge_runtime.load` gives.

    python tools/bench_cold_start.py DIR --artifact onnx-int8 [--rounds 7] [--json OUT]
    python tools/bench_cold_start.py DIR --artifact tflite-int8 [--rounds 7]
    python tools/bench_cold_start.py DIR --artifact onnx-int8 --threads 2
    python tools/bench_cold_start.py DIR --artifact onnx-int8 --options   # onnxruntime's knobs
    python tools/bench_cold_start.py DIR --artifact onnx-int8 --text      # first embedding

Every load is a new Python process (nothing warm but the OS page cache). Modes, interleaved
round by round (rotating order, so drifting load from other processes hits every mode alike):
- default:      the backend as a user would call it on the same file with its defaults:
                `onnxruntime.InferenceSession(path)` (all graph optimizations, default threads),
                or `ai_edge_litert.interpreter.Interpreter(model_path=path)` and its signature
                runner for the smallest bucket that holds the input
- edge-nocache: `edge_runtime.load(DIR, artifact=NAME, device_cache=False)`
- edge-first:   `edge_runtime.load(DIR, artifact=NAME)` with every default, in a fresh cache
                home (XDG_CACHE_HOME): builds the device caches (and whatever else load does on
                first use, e.g. a thread sweep)
- edge-second, edge-third: the same call again with the round's cache home
(The --signed-verify prototype of run I is gone: edge_runtime/_verified.py does what it did, and
more, in every edge mode since run S.)
--text: the first result is one sentence's (normalized, mean-pooled) embedding instead of a
                --seq-token run: default = tokenizers.Tokenizer.from_file + InferenceSession +
                pooling in numpy, edge = load() + Model.embed; tokenizer loading counts for both
Verification (hash checks, golden sample) is on in every edge mode: it is load's default. Each
child times its phases by wrapping edge_runtime's internals (verify_files, the golden sample,
the backend session, the ONNX cache entry check), so what verification costs is reported apart.

Measured in each child, after `import numpy, onnxruntime` (and `edge_runtime`) have run:
- load_to_first: from before the load call to the first output of a batch-1, --seq-token input
- RssAnon / RssFile / VmHWM from /proc/self/status after that first result, and the anonymous
  memory the load added (RssAnon after the first result minus RssAnon before the load call:
  the interpreter and imported libraries are the same in every mode, the model's share is not)
- steady-state p50 of --runs further runs (after 3 untimed), as a ratio against default's; and,
  less exposed to other processes, one `steady-ab` child per round that holds the default
  session and edge-second's side by side and alternates their runs in blocks of 5 (each
  after a 50 ms pause and one untimed run)
- the first result's outputs, compared with default's (max |difference| per output)
Medians over rounds are printed as a Markdown table with the CPU it ran on.

--options measures onnxruntime alone (no edge_runtime), each variant in fresh processes: the
artifact with default options, and its saved forms (graph optimized at ORT_ENABLE_ALL, weights
external, without or with prepacked weights) reopened with optimization disabled, combined with
session.disable_prepacking, enable_cpu_mem_arena=False, enable_mem_pattern=False, or reopened at
ORT_ENABLE_ALL: session start, first run, p50, anonymous memory added, outputs against default.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
from _bench_child import ChildError, run_child, user_path  # noqa: E402 - after the path

EDGE_MODES = ("edge-nocache", "edge-first", "edge-second", "edge-third")
STEADY = "steady-ab"  # one process: default session and edge-second, runs alternating

# argv: mode, artifact dir, artifact name, model file, seq, runs, out .npz, vocabulary size
CHILD = r"""
import json, os, sys, time
import numpy as np
mode, root, name, model_file, seq, runs, out, vocab = sys.argv[1:9]
seq, runs, vocab = int(seq), int(runs), int(vocab)
fmt = "tflite" if model_file.endswith(".tflite") else "onnx"
if fmt == "onnx":
    import onnxruntime
else:
    import ai_edge_litert.interpreter

def status():
    fields = {}
    with open("/proc/self/status") as handle:
        for line in handle:
            key, _, value = line.partition(":")
            if key in ("RssAnon", "RssFile", "VmHWM", "VmRSS"):
                fields[key] = int(value.split()[0]) / 1024
    return fields

ids = np.zeros((1, seq), np.int64)
first_word = 1000 if vocab > 2000 else 5  # BERT vocabularies: ordinary words from id ~1000 on
ids[0, 1:-1] = first_word + np.arange(seq - 2) % (vocab - first_word)
ids[0, 0], ids[0, -1] = 101, 102
feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids),
         "token_type_ids": np.zeros_like(ids)}
phases = {}
untimed = []  # phases whose function this edge_runtime does not have where the child looks

TEXT = os.environ.get("BENCH_TEXT")  # --text: the first result is this sentence's embedding

def unit(vector):
    return vector / np.linalg.norm(vector, axis=-1, keepdims=True)

if fmt == "onnx" and TEXT:
    def open_default():
        # What a user writes without edge_runtime: tokenizers + a session + mean pooling.
        from tokenizers import Tokenizer
        tokenizer = Tokenizer.from_file(os.path.join(root, "tokenizer", "tokenizer.json"))
        session = onnxruntime.InferenceSession(model_file)
        names = [i.name for i in session.get_inputs()]
        def run():
            encoding = tokenizer.encode(TEXT)
            ids = np.asarray([encoding.ids], np.int64)
            text_feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids),
                          "token_type_ids": np.zeros_like(ids)}
            hidden = session.run(None, {k: text_feeds[k] for k in names})[0]
            return {"embedding": unit(hidden.mean(axis=1))}
        return run, "-"
elif fmt == "onnx":
    def open_default():
        session = onnxruntime.InferenceSession(model_file)
        names = [i.name for i in session.get_inputs()]
        outputs = [o.name for o in session.get_outputs()]
        def run():
            return dict(zip(outputs, session.run(None, {k: feeds[k] for k in names})))
        return run, "-"
else:
    def open_default():
        interpreter = ai_edge_litert.interpreter.Interpreter(model_path=model_file)
        buckets = {}
        for key, spec in interpreter.get_signature_list().items():
            runner = interpreter.get_signature_runner(key)
            length = runner.get_input_details()[spec["inputs"][0]]["shape"][1]
            buckets[length] = (runner, spec["inputs"])
        length = min(b for b in buckets if b >= seq)
        runner, inputs = buckets[length]
        def run():
            padded = {k: np.zeros((1, length), np.int32) for k in inputs}
            for k in inputs:
                padded[k][:, :seq] = feeds[k]
            return {k: v[:, :seq] for k, v in runner(**padded).items()}
        return run, "-"
if mode != "default":
    import importlib

    import edge_runtime
    from edge_runtime import _model

    # Time `phase` at the first (module, attribute) of `places` this edge_runtime has: where the
    # loader looks the function up (the loader moved to _load.py; older checkouts are still
    # measured). A phase it has none of is listed in the result, not dropped unseen.
    def timed(phase, *places):
        for module_name, attr in places:
            try:
                owner = importlib.import_module(module_name)
            except ImportError:
                continue
            if "." in attr:  # a class's method
                owner, attr = getattr(owner, attr.split(".")[0], None), attr.split(".")[1]
            if getattr(owner, attr, None) is not None:
                break
        else:
            untimed.append(phase)
            return
        original = getattr(owner, attr)
        def wrapper(*args, **kwargs):
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                phases[phase] = phases.get(phase, 0.0) + (time.perf_counter() - started) * 1e3
        setattr(owner, attr, wrapper)

    timed("verify_ms", ("edge_runtime._model", "verify_files"))
    timed("golden_ms", ("edge_runtime._model", "Model.self_check"))
    timed("session_ms", ("edge_runtime.backends", "open_session"))
    if fmt == "onnx":  # not imported for TFLite: onnxruntime's own memory would count there
        timed("entry_check_ms", ("edge_runtime.backends.onnx", "_entry_is_valid"))
    timed("tune_ms", ("edge_runtime._tune", "tune"))
    timed("tuning_lookup_ms", ("edge_runtime._tuning_cache", "read_cached"), ("edge_runtime._tune", "read_cached"))
    timed("detect_ms", ("edge_runtime._device", "detect"))
    timed("manifest_ms", ("edge_runtime._load", "read_manifest"), ("edge_runtime._model", "read_manifest"))

    def open_edge():
        kwargs = {"weight_cache": False} if mode == "edge-nocache" else {}
        if os.environ.get("BENCH_EDGE_THREADS"):  # --threads: no tuned setting, no sweep
            kwargs["threads"] = int(os.environ["BENCH_EDGE_THREADS"])
        model = edge_runtime.load(root, artifact=name, **kwargs)
        session = model._session
        state = getattr(session, "optimized_cache_state", None) or getattr(
            session, "weight_cache_state", None)
        wanted = {i["name"] for i in model.inputs}
        if TEXT:
            return (lambda: {"embedding": unit(model.embed([TEXT]))}), str(state)
        return (lambda: model.run({k: v for k, v in feeds.items() if k in wanted})), str(state)

if mode == "steady-ab":
    # Steady state of the two in one process, runs alternating in blocks: whatever else the
    # machine does hits both alike (fresh-process p50s differ by more than that on a busy host).
    run_default, _ = open_default()
    run_edge, state = open_edge()
    times = {"default": [], "edge": []}
    for _ in range(3):
        run_default(), run_edge()
    for _ in range(max(1, runs // 5)):
        for key, run in (("default", run_default), ("edge", run_edge)):
            # the other session's intra-op threads spin for a while after its block: let them
            # stop, and refill the caches it evicted, before timing this one
            time.sleep(0.05)
            run()
            for _ in range(5):
                t = time.perf_counter()
                run()
                times[key].append((time.perf_counter() - t) * 1e3)
    p50s = {f"p50_{key}_ms": float(np.median(value)) for key, value in times.items()}
    print("RESULT " + json.dumps({"state": state, **p50s}))
    sys.exit(0)

open_model = open_default if mode == "default" else open_edge
before = status()
started = time.perf_counter()
run, state = open_model()
opened = time.perf_counter()
first = run()
load_to_first = (time.perf_counter() - started) * 1e3
phases["load_ms"] = (opened - started) * 1e3
phases["first_run_ms"] = load_to_first - phases["load_ms"]
after = status()
for _ in range(3):
    run()
times = []
for _ in range(runs):
    t = time.perf_counter()
    run()
    times.append((time.perf_counter() - t) * 1e3)
np.savez(out, **{k: np.asarray(v) for k, v in first.items()})
print("RESULT " + json.dumps({
    "load_to_first_ms": load_to_first, "state": state, "p50_ms": float(np.median(times)),
    "anon_added": after["RssAnon"] - before["RssAnon"], **after, **phases, "untimed": untimed}))
"""


# --text: a held-out-like sentence (benchmarks/data/heldout_en.txt style), about 20 tokens
TEXT_SENTENCE = "The committee postponed its decision on the new bridge until the spring survey is finished."


# --options: onnxruntime's own knobs on the artifact, without edge_runtime. argv: variant, model
# file (the artifact's, or a saved entry's), seq, runs, out .npz, vocabulary size
OPTIONS_CHILD = r"""
import json, sys, time
import numpy as np
import onnxruntime as ort
variant, model_file, seq, runs, out, vocab = sys.argv[1:7]
seq, runs, vocab = int(seq), int(runs), int(vocab)

def anon_mb():
    with open("/proc/self/status") as handle:
        return next(int(l.split()[1]) / 1024 for l in handle if l.startswith("RssAnon"))

ids = np.zeros((1, seq), np.int64)
first_word = 1000 if vocab > 2000 else 5
ids[0, 1:-1] = first_word + np.arange(seq - 2) % (vocab - first_word)
ids[0, 0], ids[0, -1] = 101, 102
feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids),
         "token_type_ids": np.zeros_like(ids)}
options = ort.SessionOptions()
if variant != "default":
    # a saved entry: optimized already
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
if "level-all" in variant:
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
if "no-prepacking" in variant:
    options.add_session_config_entry("session.disable_prepacking", "1")
if "no-arena" in variant:
    options.enable_cpu_mem_arena = False
if "no-mem-pattern" in variant:
    options.enable_mem_pattern = False
before = anon_mb()
started = time.perf_counter()
session = ort.InferenceSession(model_file, options)
opened = time.perf_counter()
names = [i.name for i in session.get_inputs()]
outputs = [o.name for o in session.get_outputs()]
first = session.run(None, {k: feeds[k] for k in names})
done = time.perf_counter()
anon = anon_mb() - before
times = []
for _ in range(3):
    session.run(None, {k: feeds[k] for k in names})
for _ in range(runs):
    t = time.perf_counter()
    session.run(None, {k: feeds[k] for k in names})
    times.append((time.perf_counter() - t) * 1e3)
np.savez(out, **dict(zip(outputs, first)))
print("RESULT " + json.dumps({
    "session_ms": (opened - started) * 1e3, "first_run_ms": (done - opened) * 1e3,
    "p50_ms": float(np.median(times)), "anon_added": anon}))
"""
OPTION_VARIANTS = {
    # variant: which saved form it opens (None: the artifact itself)
    "default": None,
    "graph-only": "graph-only",
    "graph-only+no-prepacking": "graph-only",
    "prepacked": "prepacked",
    "prepacked+level-all": "prepacked",
    "prepacked+no-prepacking": "prepacked",
    "prepacked+no-arena": "prepacked",
    "prepacked+no-mem-pattern": "prepacked",
}
_SAVE = r"""
import sys
import onnxruntime as ort
source, target, prepacked = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
options = ort.SessionOptions()
options.log_severity_level = 3
options.optimized_model_filepath = target
external = "session.optimized_model_external_initializers_"
options.add_session_config_entry(external + "file_name", "model.onnx.data")
options.add_session_config_entry(external + "min_size_in_bytes", "1024")
if prepacked:
    options.add_session_config_entry("session.save_external_prepacked_constant_initializers", "1")
ort.InferenceSession(source, options)
"""


def probe_options(root: Path, name: str, rounds: int, seq: int, runs: int) -> dict[str, list[dict]]:
    """onnxruntime's options on one artifact, each variant in fresh processes, interleaved."""
    manifest = json.loads((root / "manifest.json").read_text())
    entry = next(a for a in manifest["artifacts"] if a["name"] == name)
    source = root / entry["files"][0]["path"]
    work = Path(tempfile.mkdtemp(prefix="bench-ort-options-"))
    try:
        forms = {}
        for form, prepacked in (("graph-only", "0"), ("prepacked", "1")):
            (work / form).mkdir()
            forms[form] = work / form / "model.onnx"
            run_child(
                f"saving the {form} form",
                [sys.executable, "-c", _SAVE, str(source), str(forms[form]), prepacked],
            )
        results: dict[str, list[dict]] = {variant: [] for variant in OPTION_VARIANTS}
        variants = list(OPTION_VARIANTS)
        for index in range(rounds):
            shift = index % len(variants)
            for variant in variants[shift:] + variants[:shift]:
                form = OPTION_VARIANTS[variant]
                out = work / f"{variant}.npz"
                done = subprocess.run(
                    [
                        sys.executable,
                        "-c",
                        OPTIONS_CHILD,
                        variant,
                        str(forms[form] if form else source),
                        str(seq),
                        str(runs),
                        str(out),
                        str(vocabulary_size(root)),
                    ],
                    capture_output=True,
                    text=True,
                    check=False,
                )
                lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
                if done.returncode or not lines:
                    missing = None if done.returncode else "no RESULT line"
                    raise ChildError.of(variant, done, missing)
                row = json.loads(lines[-1][len("RESULT ") :])
                row["out"] = str(out)
                results[variant].append(row)
            for variant in variants:
                results[variant][-1]["max_abs_diff"] = _max_diff(
                    Path(results[variant][-1].pop("out")), work / "default.npz"
                )
            print(f"round {index + 1}/{rounds} done", file=sys.stderr)
        return results
    finally:
        shutil.rmtree(work, ignore_errors=True)


def options_markdown(results: dict[str, list[dict]], title: str) -> str:
    base = {
        k: statistics.median(r[k] for r in results["default"])
        for k in ("session_ms", "p50_ms", "anon_added")
    }
    lines = [
        title,
        "",
        (
            "| variant | session ms (× default) | first run ms | p50 ms (× default) "
            "| anon added MB (× default) | max abs diff |"
        ),
        "|---|---:|---:|---:|---:|---:|",
    ]
    for variant, rows in results.items():
        med = {
            k: statistics.median(r[k] for r in rows)
            for k in ("session_ms", "first_run_ms", "p50_ms", "anon_added")
        }
        lines.append(
            f"| {variant} | {med['session_ms']:.0f} ({med['session_ms'] / base['session_ms']:.2f}) "
            f"| {med['first_run_ms']:.0f} "
            f"| {med['p50_ms']:.1f} ({med['p50_ms'] / base['p50_ms']:.2f}) "
            f"| {med['anon_added']:.1f} ({med['anon_added'] / base['anon_added']:.2f}) "
            f"| {max(r['max_abs_diff'] for r in rows):.3g} |"
        )
    return "\n".join(lines)


def cpu_description() -> str:
    """CPU model, the ISA flags that pick kernels, and the CPU count."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip().lower()
            if key == "model name":
                model = value.strip()
            elif key in ("flags", "features"):
                flags |= set(value.split())
    except OSError:
        pass
    wanted = (
        "avx2",
        "fma",
        "avx512f",
        "avx512_vnni",
        "avx_vnni",
        "amx_int8",
        "sha_ni",
        "asimddp",
        "i8mm",
        "fphp",
    )
    shown = [f for f in wanted if f in flags]
    return f"{model} ({os.cpu_count()} CPUs; {' '.join(shown) or 'no listed ISA extensions'})"


def vocabulary_size(root: Path) -> int:
    """Token ids the model takes (its tokenizer's vocabulary; 30522, BERT's, without one)."""
    for path in root.glob("tokenizer/tokenizer.json"):
        return len(json.loads(path.read_text())["model"]["vocab"])
    return 30522


def _child(
    mode: str,
    root: Path,
    name: str,
    model_file: Path,
    seq: int,
    runs: int,
    out: Path,
    cache_home: Path,
    threads: int | None = None,
) -> dict:
    env = dict(os.environ, XDG_CACHE_HOME=str(cache_home), BENCH_EDGE_THREADS=str(threads or ""))
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            CHILD,
            mode,
            str(root),
            name,
            str(model_file),
            str(seq),
            str(runs),
            str(out),
            str(vocabulary_size(root)),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        check=False,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        raise ChildError.of(mode, done, None if done.returncode else "no RESULT line")
    return json.loads(lines[-1][len("RESULT ") :])


def _max_diff(got: Path, want: Path) -> float:
    with np.load(got) as a, np.load(want) as b:
        missing = set(b.files) - set(a.files)
        if missing:
            raise SystemExit(f"{got.name} lacks outputs {sorted(missing)}")
        return max(
            float(np.max(np.abs(a[k].astype(np.float64) - b[k].astype(np.float64))))
            for k in b.files
        )


def measure(
    root: Path, name: str, rounds: int, seq: int, runs: int, threads: int | None
) -> dict[str, list[dict]]:
    manifest = json.loads((root / "manifest.json").read_text())
    entry = next((a for a in manifest["artifacts"] if a["name"] == name), None)
    if entry is None:
        raise SystemExit(
            f"no artifact {name!r} in {root}: {[a['name'] for a in manifest['artifacts']]}"
        )
    model_file = root / entry["files"][0]["path"]
    modes = ("default", *EDGE_MODES)
    results: dict[str, list[dict]] = {mode: [] for mode in modes}
    # edge-first needs the round's empty cache home; second and third follow it in that order.
    units = [["default"], ["edge-nocache"], ["edge-second", "edge-third"]]
    for index in range(rounds):
        work = Path(tempfile.mkdtemp(prefix="bench-cold-"))
        try:
            home = work / "cache-home"
            outs = {mode: work / f"{mode}.npz" for mode in modes}
            rows = {
                "edge-first": _child(
                    "edge-first",
                    root,
                    name,
                    model_file,
                    seq,
                    runs,
                    outs["edge-first"],
                    home,
                    threads,
                )
            }
            shift = index % len(units)
            for unit in units[shift:] + units[:shift]:
                for mode in unit:
                    rows[mode] = _child(
                        mode, root, name, model_file, seq, runs, outs[mode], home, threads
                    )
            for mode, row in rows.items():
                row["max_abs_diff"] = _max_diff(outs[mode], outs["default"])
                results[mode].append(row)
            # the round's cache is built: steady state of default and edge-second side by side
            results.setdefault(STEADY, []).append(
                _child(STEADY, root, name, model_file, seq, runs, work / "ab.npz", home, threads)
            )
        finally:
            shutil.rmtree(work, ignore_errors=True)
        print(f"round {index + 1}/{rounds} done", file=sys.stderr)
    return results


_PHASES = (
    "load_ms",
    "first_run_ms",
    "verify_ms",
    "golden_ms",
    "session_ms",
    "entry_check_ms",
    "tune_ms",
    "tuning_lookup_ms",
    "detect_ms",
    "manifest_ms",
)
_KEYS = (
    "load_to_first_ms",
    "p50_ms",
    "RssAnon",
    "RssFile",
    "VmHWM",
    "anon_added",
    "max_abs_diff",
    *_PHASES,
)


def summarize(results: dict[str, list[dict]]) -> dict[str, dict]:
    summary = {}
    for mode, rows in results.items():
        if mode == STEADY:
            continue
        row = {
            key: statistics.median(r[key] for r in rows)
            for key in _KEYS
            if all(key in r for r in rows)
        }
        row["max_abs_diff"] = max(
            r["max_abs_diff"] for r in rows
        )  # the worst round, not the median
        row["states"] = sorted({r["state"] for r in rows})
        summary[mode] = row
    base = summary["default"]
    for row in summary.values():
        # Ratios of medians; per-round ratios (same round, same machine state) as well.
        for key in ("load_to_first_ms", "RssAnon", "anon_added", "p50_ms"):
            row[f"{key}_x"] = row[key] / base[key]
    for mode, row in summary.items():
        pairs = zip(results[mode], results["default"])
        row["load_x_per_round"] = statistics.median(
            r["load_to_first_ms"] / d["load_to_first_ms"] for r, d in pairs
        )
    steady = results.get(STEADY, [])
    if steady:
        summary[STEADY] = {
            "p50_default_ms": statistics.median(r["p50_default_ms"] for r in steady),
            "p50_edge_ms": statistics.median(r["p50_edge_ms"] for r in steady),
            "edge_x": statistics.median(r["p50_edge_ms"] / r["p50_default_ms"] for r in steady),
            "states": sorted({r["state"] for r in steady}),
        }
    return summary


def markdown(summary: dict[str, dict], title: str) -> str:
    def phase(row: dict, key: str) -> str:
        return f"{row[key]:.0f}" if key in row else "-"

    header = (
        "| mode | cache | load→first result ms | × default | verify ms (hash / golden) "
        "| session ms | RssAnon MB (× default) | anon added by load MB (× default) | RssFile MB "
        "| VmHWM MB | p50 ms (× default) | max abs diff |"
    )
    lines = [title, "", header, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    steady = summary.get(STEADY)
    summary = {mode: row for mode, row in summary.items() if mode != STEADY}
    for mode, row in summary.items():
        lines.append(
            f"| {mode} | {', '.join(row['states'])} | {row['load_to_first_ms']:.0f} "
            f"| {row['load_to_first_ms_x']:.2f} (per round {row['load_x_per_round']:.2f}) "
            f"| {phase(row, 'verify_ms')} / {phase(row, 'golden_ms')} | {phase(row, 'session_ms')} "
            f"| {row['RssAnon']:.1f} ({row['RssAnon_x']:.2f}) "
            f"| {row['anon_added']:.1f} ({row['anon_added_x']:.2f}) | {row['RssFile']:.1f} "
            f"| {row['VmHWM']:.1f} | {row['p50_ms']:.1f} ({row['p50_ms_x']:.2f}) "
            f"| {row['max_abs_diff']:.3g} |"
        )
    note = (
        "Phases (medians, ms; load = the load call, then the first run; verify, golden, session, "
        "... are parts of load):"
    )
    lines += [
        "",
        note,
        "",
        "| mode | " + " | ".join(p[:-3] for p in _PHASES) + " |",
        "|---|" + "---:|" * len(_PHASES),
    ]
    for mode, row in summary.items():
        lines.append(
            f"| {mode} | "
            + " | ".join(f"{row[p]:.1f}" if p in row else "-" for p in _PHASES)
            + " |"
        )
    if steady:
        lines += [
            "",
            (
                f"Steady state in one process ({STEADY}: the default session and edge-second's "
                f"({', '.join(steady['states'])}), runs alternating in blocks of 5; medians over "
                f"rounds): p50 {steady['p50_default_ms']:.1f} ms default, "
                f"{steady['p50_edge_ms']:.1f} ms edge, {steady['edge_x']:.3f}x."
            ),
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(ROOT))  # this checkout's edge_runtime
    from edge_runtime._bench_config import DEFAULT_SHAPE

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    # Paths are made absolute here: the children run with cwd=ROOT (tools/_bench_child.py).
    parser.add_argument("root", type=user_path, help="an edge-convert output directory")
    parser.add_argument(
        "--artifact", required=True, help="artifact name in the manifest, e.g. onnx-int8"
    )
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seq", type=int, default=DEFAULT_SHAPE.seq, help="tokens of the batch-1 input")
    parser.add_argument("--runs", type=int, default=30, help="timed runs for the steady-state p50")
    parser.add_argument(
        "--json", type=user_path, help="also write the raw rows and the summary here"
    )
    parser.add_argument(
        "--threads",
        type=int,
        help="pass threads=N to edge_runtime.load (no tuned setting, no first-use sweep): "
        "N = the default session's thread count compares the caches alone",
    )
    parser.add_argument(
        "--text",
        action="store_true",
        help="the first result is one sentence's embedding: default = tokenizers + "
        "InferenceSession + mean pooling, edge = load() + Model.embed (tokenizer loading counts)",
    )
    parser.add_argument(
        "--options",
        action="store_true",
        help="instead: onnxruntime's session options on the artifact's saved forms (graph-only, "
        "prepacked), without edge_runtime: session start, p50, anonymous memory",
    )
    args = parser.parse_args(argv)
    if not (args.root / "manifest.json").is_file():
        parser.error(f"{args.root}: no manifest.json; give an edge-convert output directory")
    if args.text:  # the children read it (CHILD's TEXT)
        os.environ["BENCH_TEXT"] = TEXT_SENTENCE
    try:
        return _run(args)
    except ChildError as exc:
        print(f"bench_cold_start: error: {exc}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace) -> int:
    if args.options:
        results = probe_options(args.root, args.artifact, args.rounds, args.seq, args.runs)
        title = (
            f"{args.root.name} {args.artifact}: onnxruntime options, default threads, batch 1, "
            f"{args.seq} tokens, medians of {args.rounds} rounds; CPU {cpu_description()}"
        )
        print(options_markdown(results, title))
        if args.json:
            args.json.write_text(json.dumps({"cpu": cpu_description(), "runs": results}, indent=1))
        return 0
    results = measure(
        args.root, args.artifact, args.rounds, args.seq, args.runs, args.threads
    )
    summary = summarize(results)
    cpu = cpu_description()
    title = (
        f"{args.root.name} {args.artifact}: batch 1, "
        f"{'one sentence embedded (tokenizer included)' if args.text else f'{args.seq} tokens'}, medians of {args.rounds} "
        f"rounds, fresh process per load, edge threads "
        f"{args.threads or 'as load() picks them'}; CPU {cpu}"
    )
    print(markdown(summary, title))
    untimed = sorted({phase for rows in results.values() for row in rows for phase in row.get("untimed", ())})
    if untimed:
        print(f"not timed (this edge_runtime has none of the functions the child wraps for them): "
              f"{', '.join(untimed)}", file=sys.stderr)
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "cpu": cpu,
                    "artifact": args.artifact,
                    "rounds": args.rounds,
                    "seq": args.seq,
                    "runs": results,
                    "summary": summary,
                },
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
