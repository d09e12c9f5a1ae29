"""How far correct kernels of another machine drift from the converter's outputs: the numbers the
golden tolerances are set from (converters/packaging/golden.py, MEASURED_DRIFT).

Three steps, so that the middle one can run on a device or under qemu with the device wheel alone
(edge_runtime and numpy; docs/arm64.md builds such environments with tools/arm64-check):

    # 1. here: tokenize the short texts below once and copy every integer artifact's golden inputs
    .venv/bin/python benchmarks/golden_drift.py feeds DIR /tmp/d/feeds.npz
    # 2. on each machine: every feed alone (batch 1) through one artifact, raw outputs saved
    .venv/bin/python benchmarks/golden_drift.py run DIR tflite-int4 /tmp/d/feeds.npz /tmp/d/x86.npz
    WORK/venv/rpi5-main/bin/python benchmarks/golden_drift.py run DIR tflite-int4 /tmp/d/feeds.npz /tmp/d/a76.npz
    # 3. here: 1 - cosine and relative L2 per feed (compare_outputs' arithmetic), and the verdict of
    #    the artifact's recorded per-sample tolerance on each
    .venv/bin/python benchmarks/golden_drift.py compare DIR tflite-int4 /tmp/d/feeds.npz /tmp/d/a76.npz /tmp/d/x86.npz

Both runs load with verify=False (the golden check must not refuse the load being measured),
device_cache=False, tune=False and one thread, so the two sides differ in their kernels only.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

# Short texts (1-6 words): a code that rounds the other way in one token weighs more in a short
# output than in a long one (benchmarks/RESULTS.md run BJ).
TEXTS = [
    "hi", "ok", "yes", "no.", "Thanks!", "hello world", "Good morning!", "What?", "42", "3.14",
    "Hello", "bye", "Why?", "!!!", "...", "?", "a", "the", "OK!", "Sure thing.",
    "Thank you very much.", "See you later!", "How are you?", "I'm fine, thanks.", "Good night",
    "Welcome back!", "No way!", "Yes, please.", "Not now.", "Wow", "cat", "dogs and cats",
    "2024", "100%", "$5", "Call me at 5pm.", "Hello, world!", "Happy birthday!", "Nice.",
    "Let's go!", "Hmm...", "I agree.",
]


def feeds(root: Path, out: Path) -> None:
    import edge_runtime
    from edge_runtime._text import TextEncoder

    manifest = edge_runtime.read_manifest(root)
    tokenizer = manifest["tokenizer"]
    encoder = TextEncoder(root / tokenizer["files"][0]["path"], tokenizer, [i["name"] for i in manifest["inputs"]])
    arrays: dict[str, np.ndarray] = {}
    for i, text in enumerate(TEXTS):
        arrays.update({f"text{i}/{k}": v for k, v in encoder.encode([text]).items()})
    for entry in manifest["artifacts"]:
        if entry.get("precision") == "fp32":
            continue
        with np.load(root / entry["golden"]["path"]) as data:
            for j, sample in enumerate(entry["golden"]["samples"]):
                prefix = sample["prefix"] + "input:"
                arrays.update({f"{entry['name']}:golden{j}/{k[len(prefix):]}": data[k] for k in data.files
                               if k.startswith(prefix) and "/" not in k[len(prefix):]})
    np.savez(out, **arrays)
    print(f"{out}: {len(TEXTS)} texts and the golden inputs of {len(manifest['artifacts'])} artifacts")


def run(root: Path, name: str, feeds_path: Path, out: Path) -> None:
    import edge_runtime

    model = edge_runtime.load(root, artifact=name, verify=False, device_cache=False, tune=False, threads=1)
    groups: dict[str, dict[str, np.ndarray]] = {}
    with np.load(feeds_path) as data:
        for key in data.files:
            group, tensor = key.split("/", 1)
            if group.startswith("text") or group.startswith(f"{name}:golden"):
                groups.setdefault(group, {})[tensor] = data[key]
    results = {f"{g}/{k}": v for g, f in groups.items() for k, v in model.run(f).items()}
    np.savez(out, **results)
    print(f"{out}: {len(groups)} feeds through {name} ({model.backend})")


def _moved(row: dict) -> bool:
    return row["one_minus_cosine"] > 1e-6 or row["rel_l2"] > 1e-6


def compare(root: Path, name: str, feeds_path: Path, got_path: Path, want_path: Path) -> None:
    import edge_runtime
    from edge_runtime._golden import compare_outputs

    entry = next(a for a in edge_runtime.read_manifest(root)["artifacts"] if a["name"] == name)
    samples = entry["golden"]["samples"]
    with np.load(feeds_path) as data:
        tokens = {key.split("/")[0]: int(data[key].sum()) for key in data.files if key.endswith("/attention_mask")}
    rows = []
    with np.load(got_path) as got, np.load(want_path) as want:
        for key in got.files:
            group, output = key.split("/", 1)
            a = got[key].reshape(1, -1).astype(np.float64)[0]
            b = want[key].reshape(1, -1).astype(np.float64)[0]
            one_minus = 1.0 - float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-30))
            rel = float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))
            if group.startswith("text"):
                label, tolerance = repr(TEXTS[int(group[4:])]), None
            else:
                sample = samples[int(group.rsplit("golden", 1)[1])]
                label, tolerance = f"golden {sample['kind']}", sample["tolerance"]
            rows.append({"feed": label, "tokens": tokens[group], "one_minus_cosine": one_minus, "rel_l2": rel,
                         "fails_recorded_tolerance": None if tolerance is None else
                         bool(compare_outputs({output: got[key]}, {output: want[key]}, tolerance))})
    for kind in ("text", "golden"):
        part = [r for r in rows if r["feed"].startswith("golden") == (kind == "golden")]
        if not part:
            continue
        worst = max(part, key=lambda r: r["one_minus_cosine"])
        print(f"{name} {kind}s (n={len(part)}): 1-cos max {worst['one_minus_cosine']:.3g} ({worst['feed']}, "
              f"{worst['tokens']} tokens), rel L2 max {max(r['rel_l2'] for r in part):.3g}; "
              f"{sum(_moved(r) for r in part)} moved by more than 1e-6")
    for row in rows:
        if _moved(row):
            verdict = {None: "", True: "  FAILS its recorded tolerance", False: "  within its recorded tolerance"}
            print(f"  {row['feed']:28s} {row['tokens']:4d} tokens  1-cos {row['one_minus_cosine']:.3g}  "
                  f"rel L2 {row['rel_l2']:.3g}{verdict[row['fails_recorded_tolerance']]}")
    Path(got_path).with_suffix(".drift.json").write_text(json.dumps(rows, indent=1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="step", required=True)
    one = sub.add_parser("feeds", help="tokenize the texts, copy the golden inputs")
    one.add_argument("dir", type=Path)
    one.add_argument("out", type=Path)
    two = sub.add_parser("run", help="every feed alone through one artifact (device side)")
    two.add_argument("dir", type=Path)
    two.add_argument("artifact")
    two.add_argument("feeds", type=Path)
    two.add_argument("out", type=Path)
    three = sub.add_parser("compare", help="drift of one machine's outputs from another's")
    three.add_argument("dir", type=Path)
    three.add_argument("artifact")
    three.add_argument("feeds", type=Path)
    three.add_argument("got", type=Path, help="run's outputs on the other machine (e.g. ARM)")
    three.add_argument("want", type=Path, help="run's outputs here (what the converter recorded)")
    args = parser.parse_args(argv)
    if args.step == "feeds":
        feeds(args.dir, args.out)
    elif args.step == "run":
        run(args.dir, args.artifact, args.feeds, args.out)
    else:
        compare(args.dir, args.artifact, args.feeds, args.got, args.want)
    return 0


if __name__ == "__main__":
    sys.exit(main())
