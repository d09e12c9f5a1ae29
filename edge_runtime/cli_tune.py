"""edge-tune: measure this device's best thread setting (and fastest artifact) for an artifact
directory and cache it for `edge_runtime.load()`. Thin: parse, call _tune.tune, print."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import edge_runtime
from edge_runtime import _device, _load_args, _select, _tune
from edge_runtime._manifest import UNREADABLE


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edge-tune",
        description="Measure which thread count (and, for onnxruntime, thread spinning) runs an "
        "artifact fastest on this device, and which artifact is fastest; cache the result for "
        "edge_runtime.load() and edge-run.",
        epilog="Exit status: 0 when the result was measured and cached; 1 when the directory "
        "cannot be used, nothing was measured or the cache could not be written; 2 for a bad "
        "flag; 130 after Ctrl-C; 143 after SIGTERM (a result is cached whole or not at all).",
    )
    parser.add_argument("artifacts", help="artifact directory (with manifest.json)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument(
        "--artifact",
        action="append",
        metavar="NAME",
        help="tune only this artifact's threads (repeatable); no artifact comparison",
    )
    which.add_argument(
        "--all",
        action="store_true",
        help="every artifact in the manifest (default: those automatic selection may pick here)",
    )
    parser.add_argument(
        "--rounds", type=int, default=8, help="interleaved rounds per sweep (default 8)"
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--verbose", "-v", action="store_true", help="log progress on stderr")
    return parser


def _print_table(result: dict, cache_file: Path, automatic: set[str]) -> None:
    """The result as a table; `automatic`: the artifacts load() may pick here by itself."""
    device = result["device"]
    print(
        f"device: {device['cpu_model']} ({device['arch']}; {', '.join(device['features']) or 'no features of interest'}; "
        f"{device['big_cores']} big cores, {device['logical_cores']} logical)"
    )
    for name, best in result["artifacts"].items():
        setting = _tune.Setting(best["threads"], best["spinning"]).label()
        shape = best.get("input", {})
        print(
            f"\n{name}: best {setting}, p50 {best['p50_ms']:.2f} ms, p90 {best['p90_ms']:.2f} ms "
            f"(batch {shape.get('batch', 1)}, {shape.get('sequence', '?')} tokens)"
        )
        for row in best["sweep"]:
            label = _tune.Setting(row["threads"], row["spinning"]).label()
            print(
                f"    {label:<26} p50 {row['p50_ms']:8.2f} ms   p90 {row['p90_ms']:8.2f} ms   {row['runs']} runs"
            )
    for name, reason in result["refused"].items():
        print(f"\n{name}: refused: {reason}")
    if result.get("compared"):
        print("\nside by side at their best settings:")
        for name, score in result["compared"].items():
            mark = "*" if name == result["fastest"] else " "
            print(
                f"  {mark} {name:<20} p50 {score['p50_ms']:8.2f} ms   p90 {score['p90_ms']:8.2f} ms"
            )
    if result.get("fastest"):
        print(f"\n{_pick_label(result, automatic)}: {result['fastest']} (load() picks it first when it fits memory)")
    _print_quicker(result, automatic)
    if not result.get("measured", True):
        print(f"nothing was measured (every artifact was refused, above): {cache_file} is unchanged")
    elif result.get("cached"):
        print(f"cached in {cache_file} ({result['seconds']:.1f} s of measuring)")
    else:
        print(
            f"NOT cached: {cache_file} could not be written (see the warning above); load() will "
            f"not use this result ({result['seconds']:.1f} s of measuring)"
        )


def _pick_label(result: dict, automatic: set[str]) -> str:
    """What the recorded pick is: the fastest artifact, the fastest of those load() may pick (a
    twin ran faster), or the profile's preferred one within the tie of a faster one."""
    compared = result.get("compared") or {}
    if not compared or min(compared, key=lambda n: compared[n]["p50_ms"]) == result["fastest"]:
        return "fastest here"
    quickest = min(compared, key=lambda n: compared[n]["p50_ms"])
    return "fastest here that load() may pick" if quickest not in automatic else "kept first here"


def _print_quicker(result: dict, automatic: set[str]) -> None:
    """Why an artifact that ran faster than the recorded fastest is not load()'s pick: a pruned
    twin (or one selection skips here) is taken by name only; one load() may pick lost by less than
    _tune._ARTIFACT_TIE to the profile's preferred one."""
    compared, fastest = result.get("compared") or {}, result.get("fastest")
    if not compared:
        return
    quickest = min(compared, key=lambda n: compared[n]["p50_ms"])
    by_name = f"load(DIR, artifact={quickest!r}) or edge-run DIR --artifact {quickest}"
    if quickest == fastest:
        return
    if quickest not in automatic:
        print(f"{quickest} is faster, but load() never picks it by itself (a pruned twin, or skipped "
              f"here: `edge-run DIR --info` says why); ask for it by name: {by_name}")
    elif fastest in compared and compared[quickest]["p50_ms"] > 0:
        gain = compared[fastest]["p50_ms"] / compared[quickest]["p50_ms"] - 1
        if gain <= _tune._ARTIFACT_TIE:
            print(f"{quickest} is {gain:.1%} faster than {fastest}, less than the {_tune._ARTIFACT_TIE:.0%} "
                  f"another artifact must gain to displace the profile's preferred one: load() keeps "
                  f"{fastest} first; ask for {quickest} by name: {by_name}")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.verbose:
        logging.basicConfig(level=logging.INFO, format="edge-tune: %(message)s")
    if args.rounds < 1:
        print("edge-tune: error: --rounds must be >= 1", file=sys.stderr)
        return 2
    if not args.artifacts:  # Path("") is the working directory: never what was meant
        print(f"edge-tune: error: {_load_args.EMPTY_DIRECTORY}", file=sys.stderr)
        return 2
    try:
        manifest = edge_runtime.read_manifest(Path(args.artifacts))
        if args.all:
            names, compare = [a["name"] for a in manifest["artifacts"]], True
            for name, why in (manifest.get(UNREADABLE) or {}).items():  # a later converter's
                print(f"edge-tune: not tuned: {name}: {why}", file=sys.stderr)
        else:
            names, compare = args.artifact, not args.artifact
        result = _tune.tune(args.artifacts, names, compare=compare, rounds=args.rounds)
    except edge_runtime.EdgeRuntimeError as exc:
        print(f"edge-tune: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # the cache is written whole at the end or not at all
        print("edge-tune: interrupted; the tuning cache is unchanged", file=sys.stderr)
        return 130
    cache_file = _tune.cache_file(Path(args.artifacts))
    if args.json:
        print(
            json.dumps(
                {
                    **result,
                    "cache_file": str(cache_file),
                    "device_info": _device.detect().to_dict(),
                },
                indent=2,
            )
        )
    else:
        # What automatic selection may pick here (not pruned twins, nor what cannot run): as tune() tells
        automatic = {c.name for c in _select.plan(Path(args.artifacts), manifest, _device.detect(), None).choices}
        _print_table(result, cache_file, automatic)
    return 0 if result["measured"] and result["cached"] else 1


if __name__ == "__main__":
    sys.exit(main())
