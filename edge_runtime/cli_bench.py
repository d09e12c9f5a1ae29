"""edge-bench: benchmark an artifact directory on this device. Thin: parse, call, print.

docs/edge-bench.md explains every column and field.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from edge_runtime._bench import BenchConfig, BenchConfigError, render_markdown, run_bench
from edge_runtime._errors import EdgeRuntimeError
from edge_runtime._load_args import EMPTY_DIRECTORY
from edge_runtime._signing import SIGNATURE_NAME
from edge_runtime._sigterm import TERMINATED_EXIT, Terminated, sigterm_as_ctrl_c

# BenchConfig field -> the flag that sets it, for error messages
_FLAGS = {
    "artifacts": "--artifact",
    "seqs": "--seq",
    "batches": "--batch",
    "threads": "--threads",
    "runs": "--runs",
    "warmup": "--warmup",
    "rounds": "--rounds",
}


def _int_list(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        values = []
    if not values:  # `--seq ,,` must not fall back to the default without a word
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")
    return values


def _listed(values: tuple[int, ...]) -> str:
    return ",".join(map(str, values))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edge-bench",
        description="Benchmark edge-convert artifacts on this device: latency, throughput, "
        "cold and warm load, memory, sensors, golden check. Markdown on stdout, progress on "
        "stderr.",
        epilog="Exit status: 0 when every measurement ran; 1 when one failed, nothing was measured "
        "or the directory cannot be used; 2 for a bad flag or argument (every numeric one, an empty "
        "directory and --json OUT are checked before anything is loaded); 130 after Ctrl-C, 143 "
        "after SIGTERM (docs/edge-bench.md).",
    )
    parser.add_argument("artifacts", help="artifact directory (with manifest.json)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument(
        "--artifact",
        action="append",
        default=[],
        metavar="NAME",
        help="artifact to measure (repeatable; default: the one edge_runtime.load picks here)",
    )
    which.add_argument("--all", action="store_true", help="measure every artifact in the directory")
    parser.add_argument(
        "--seq",
        type=_int_list,
        action="append",
        metavar="N,...",
        help=f"sequence lengths in tokens (default: {_listed(BenchConfig.seqs)})",
    )
    parser.add_argument(
        "--batch",
        type=_int_list,
        action="append",
        metavar="N,...",
        help=f"batch sizes (default: {_listed(BenchConfig.batches)})",
    )
    parser.add_argument(
        "--threads",
        type=_int_list,
        action="append",
        metavar="N,...",
        help="intra-op thread counts, 0 = physical cores (default: this device's tuned count if "
        "edge-tune cached one, else the profile's)",
    )
    parser.add_argument(
        "--runs", type=int, default=BenchConfig.runs, help="timed runs per measurement (default %(default)s)"
    )
    parser.add_argument("--warmup", type=int, default=BenchConfig.warmup,
                        help="untimed runs first (default %(default)s; at least 1 is run)")
    parser.add_argument(
        "--rounds",
        type=int,
        default=BenchConfig.rounds,
        help="interleaved rounds the timed runs are split into (default %(default)s)",
    )
    parser.add_argument("--json", metavar="OUT", help="also write the full result as JSON to OUT")
    parser.add_argument(
        "--no-verify",
        action="store_true",
        help="skip hash and golden-sample checks (measures load without them; ONNX artifacts "
        "then load without their device cache, which only verified loads build and use)",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    return parser


def _flatten(groups: list[list[int]] | None) -> tuple[int, ...] | None:
    return None if not groups else tuple(v for group in groups for v in group)


def _unwritable(out: Path, artifacts: Path) -> str:
    """Why the JSON result could not be written to `out` ("" if it can): checked up front, and
    leaving nothing behind (missing directories are made when the result is written)."""
    if out.is_dir():
        home = artifacts.resolve()
        if out.resolve().is_relative_to(home):
            # A file added there is one the signature does not cover: signed loads refuse the
            # directory from then on. Suggest a name beside it, not in it.
            return (f"is a directory in the artifact directory {artifacts}; write the result "
                    f"outside it, e.g. {home.parent / (home.name + '-bench.json')}")
        return "is a directory; name a file, e.g. " + str(out / "bench.json")
    if out.exists() and out.resolve().is_relative_to(artifacts.resolve()):
        # manifest.json, a model file, a golden sample: overwriting one breaks the artifacts
        return f"would overwrite {out.name} in the artifact directory {artifacts}; write the result elsewhere"
    home = artifacts.resolve()
    if out.resolve().is_relative_to(home) and (artifacts / SIGNATURE_NAME).is_file():
        # A file the signature does not cover: every signed load (edge-run/edge-serve
        # --trusted-key, a reload) would refuse the directory from then on ("bench.json: added").
        return (f"is inside the signed artifact directory {artifacts}: a file added there is not "
                f"covered by its {SIGNATURE_NAME}, and signed loads would refuse the directory; "
                f"write the result outside it, e.g. {home.parent / (home.name + '-bench.json')}")
    if out.exists():
        try:
            with open(out, "a", encoding="utf-8"):
                pass
        except OSError as exc:
            return f"cannot be written ({exc.strerror or exc})"
        return ""
    existing = next((p for p in out.resolve().parents if p.exists()), None)
    if existing is None:
        return ""
    if not existing.is_dir():
        return f"{existing} is a file, not a directory"
    return _takes_a_file(existing)


def _takes_a_file(directory: Path) -> str:
    """Why no file can be made in `directory` ("" if one can), found by making one and removing
    it: os.access answers for the permission bits only (root passes it in a read-only mount and
    in /proc, where nothing can be made)."""
    try:
        handle, probe = tempfile.mkstemp(prefix=".edge-bench-check-", dir=directory)
    except OSError as exc:
        return f"cannot be written: no file can be made in {directory} ({exc.strerror or exc})"
    os.close(handle)
    os.unlink(probe)
    return ""


def _write_json(out: Path, doc: dict) -> bool:
    """Write the result; if that fails after all, keep it in a temporary file and say where."""
    text = json.dumps(doc, indent=2) + "\n"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="utf-8")
        return True
    except OSError as exc:
        handle, kept = tempfile.mkstemp(prefix="edge-bench-", suffix=".json")
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(text)
        print(
            f"edge-bench: error: could not write {out} ({exc.strerror or exc}); the result is in {kept}",
            file=sys.stderr,
        )
        return False


def main(argv: list[str] | None = None) -> int:
    raw = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(raw)
    if not args.artifacts:  # Path("") is the working directory: never what was meant
        print(f"edge-bench: error: {EMPTY_DIRECTORY}", file=sys.stderr)
        return 2
    config = BenchConfig(
        artifacts=tuple(args.artifact),
        all_artifacts=args.all,
        seqs=_flatten(args.seq) or BenchConfig.seqs,
        batches=_flatten(args.batch) or BenchConfig.batches,
        threads=_flatten(args.threads) or BenchConfig.threads,
        runs=args.runs,
        warmup=args.warmup,
        rounds=args.rounds,
        verify=not args.no_verify,
    )
    progress = (
        None
        if args.quiet
        else (lambda line: print(f"edge-bench: {line}", file=sys.stderr, flush=True))
    )
    out = Path(args.json) if args.json else None
    if out is not None:
        problem = _unwritable(out, Path(args.artifacts))
        if problem:  # found before minutes of measuring, not after
            print(f"edge-bench: error: --json {out}: {problem}", file=sys.stderr)
            return 2
        if out.resolve().is_relative_to(Path(args.artifacts).resolve()):
            print(f"edge-bench: warning: --json {out} is inside the artifact directory "
                  f"{args.artifacts}; signing it later (edge-sign) would refuse it as a file "
                  "manifest.json does not list: keep results outside artifact directories",
                  file=sys.stderr)
    try:
        with sigterm_as_ctrl_c():  # `kill`, timeout(1): cleaned up as after Ctrl-C
            doc = run_bench(args.artifacts, config, command=["edge-bench", *raw], progress=progress)
    except BenchConfigError as exc:
        flag = _FLAGS.get(exc.parameter, exc.parameter)
        print(f"edge-bench: error: {flag}: {str(exc).split(': ', 1)[1]}", file=sys.stderr)
        return 2
    except EdgeRuntimeError as exc:
        print(f"edge-bench: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:  # temporary caches are removed on the way out; nothing is written
        print("edge-bench: interrupted; no result written", file=sys.stderr)
        return TERMINATED_EXIT if isinstance(exc, Terminated) else 130
    print(render_markdown(doc), end="")
    if out is not None and not _write_json(out, doc):
        return 1
    # Skipped records (no backend for that format here) are in the table with their reason;
    # errors (golden failure, a shape the artifact cannot run, a crash) fail the command.
    # A load probe that failed or died (out of memory, a crash) fails it too: a device that
    # cannot cold-start the model must not pass (a review found exit status 0 after a SIGKILL).
    failed = [r for r in doc["records"] if r["status"] == "error"
              or "error" in (r["load_first"]["status"], r["load_second"]["status"])]
    if not any(r["status"] == "ok" for r in doc["records"]):
        print("edge-bench: nothing was measured (every artifact was skipped or failed; see the status "
              "column)", file=sys.stderr)
        return 1
    if failed:
        print(
            f"edge-bench: {len(failed)} of {len(doc['records'])} measurements failed; "
            "see the status column and the load probe errors under the table",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
