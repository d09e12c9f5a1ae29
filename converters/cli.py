"""edge-convert: the command line. Thin: parse, call converters.convert, print."""

from __future__ import annotations

import json
import os
import shlex
import re
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import click

from converters.inputs.calibration import MAX_FIT_TEXTS, MAX_VALIDATION_TEXTS, MIN_TEXTS
from edge_runtime._bench_config import DEFAULT_SHAPE
from edge_runtime._contention import busy_note
from edge_runtime._device import detect, target_facts
from edge_runtime._sigterm import check_interrupted, sigterm_as_ctrl_c
from targets import ProfileError, UnknownTargetError, detect_target, list_profiles, load_profile


def _table(result) -> str:
    from converters.pipeline import METRICS_TEXTS

    rows = [("artifact", "format", "precision", "size MB", f"accuracy vs PyTorch FP32, {METRICS_TEXTS}",
             "p50 ms", "x FP32", "promoted")]
    for a in result.artifacts:
        metrics = ", ".join(f"{k.replace('_mean', '').replace('top1_agreement', 'top1')} {v:.4f}"
                            for k, v in a.metrics.items() if k in ("cosine_mean", "cosine_min", "top1_agreement"))
        rows.append((a.name, a.format, a.precision, f"{a.bytes / 1e6:.1f}", metrics,
                     f"{a.latency_ms_p50:.2f}", "-" if a.vs_fp32 is None else f"{a.vs_fp32:.2f}x", _promoted(a)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _promoted(artifact) -> str:
    """How many weights a search moved to a wider form ("3 to float32"), "0", or "-" for FP32."""
    if artifact.precision == "fp32":
        return "-"
    return f"{len(artifact.promoted)} to {artifact.promoted_to}" if artifact.promoted else "0"


def _log_path(out: Path) -> tuple[Path, list[Path]]:
    """Where the libraries' output of a conversion goes: next to the output directory (inside it,
    it would become an unsigned, unlisted file of the artifact); the temporary directory when that
    place is not writable. Also the directories made for it, deepest first: a run refused before
    any output removes them again (_settle_log)."""
    path = out.parent / f"{out.name}.convert.log"
    made = [d for d in [path.parent, *path.parent.parents] if not d.exists()]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():  # this conversion's lines only; the earlier log comes back if it has none
            os.replace(path, _previous(path))
        path.touch()
        return path, made
    except OSError:
        handle, name = tempfile.mkstemp(prefix=f"edge-convert-{out.name}-", suffix=".log")
        os.close(handle)
        return Path(name), []


def _previous(log_path: Path) -> Path:
    return log_path.with_name(log_path.name + ".previous")


def _settle_log(log_path: Path, capture, finished: bool, made: Sequence[Path] = ()) -> bool:
    """After a run: a log with this run's lines replaces the earlier one (True). A run that ended
    without output (refused up front) leaves the earlier conversion's log as it was; one that
    finished without any leaves none (the earlier log described an output that is gone), nor
    the directories `made` for it that stayed empty."""
    previous = _previous(log_path)
    if capture is not None and capture.lines():
        previous.unlink(missing_ok=True)
        return True
    if previous.exists() and not finished:
        os.replace(previous, log_path)
    else:
        previous.unlink(missing_ok=True)
        log_path.unlink(missing_ok=True)
        for directory in made:  # deepest first; one holding anything (the output) stays
            try:
                directory.rmdir()
            except OSError:
                break
    return False


def _log_note(capture, verbose: bool) -> str:
    if capture is None or verbose or not capture.lines():
        return ""
    return f"\n(the libraries' output during the conversion is in {capture.log_path})"


def _log_tail(capture, verbose: bool, count: int = 30) -> str:
    """The last captured lines, for a failure that is not a ConversionError."""
    if capture is None:
        return ""
    lines = capture.lines()
    if not lines:
        return ""
    if verbose:  # already shown
        return f"(the libraries' output is in {capture.log_path})"
    shown = lines[-count:]
    return (f"the libraries' last {len(shown)} of {len(lines)} output lines ({capture.log_path}):\n"
            + "\n".join("  | " + line for line in shown))


class TextCap(click.ParamType):
    """--max-fit-texts / --max-validation-texts: a count of at least MIN_TEXTS, or 'all' (None)."""

    name = "N|all"

    def get_metavar(self, param, ctx=None) -> str:  # click would upper-case the name: 'all' is lower case
        return "N|all"

    def convert(self, value, param, ctx):
        if value is None or isinstance(value, int):
            return value
        if str(value).strip().lower() == "all":
            return None
        try:
            number = int(value)
        except ValueError:
            self.fail(f"expected a number of texts or 'all', got {value!r}", param, ctx)
        if number < MIN_TEXTS:  # out of range: exit 1, as the epilog says (a non-number above: 2)
            flag = param.opts[0] if param is not None and param.opts else "the text count"
            raise click.ClickException(f"{flag}: at least {MIN_TEXTS} texts are needed for meaningful accuracy "
                                       f"figures, got {number}")
        return number


def _list_targets() -> None:
    try:
        here = detect_target(target_facts(detect())).id
    except UnknownTargetError:
        here = None
    for p in list_profiles():
        mark = "*" if p.id == here else " "
        print(f"{mark} {p.id:<16} {p.name:<40} emits {'+'.join(p.formats)} {'/'.join(p.precisions)}, "
              f"INT8 {p.int8.mode} {p.int8.quant_format}")
    print("\n* = detected for this machine (--target auto)")


# The library names its parameters (ConvertConfig's fields) in its errors; the CLI speaks flags.
_FLAGS = {
    "force=True": "--force",
    "accuracy_floor": "--accuracy-floor",
    "calibration_method": "--calibration-method",
    "validation_texts": "--validation-texts",
    "max_fit_texts": "--max-fit-texts",
    "max_validation_texts": "--max-validation-texts",
    "sign_key": "--sign-key",
    "prune_floor": "--prune-floor",
    "distill_steps": "--distill-steps",
    "prune": "--prune",
}
_PARAMETER = re.compile(r"(?<![\w-])(" + "|".join(re.escape(name) for name in _FLAGS) + r")(?![\w=])")
# Parameters mapped only as name=value: "calibration" alone is a word of many messages.
_ASSIGNED_ONLY = {"calibration": "--calibration", "task": "--task"}
# name=value ("distill_steps=5", "sign_key=k.pem", "prune=...", "calibration=FILE") -> "--flag value"
_ASSIGNED = re.compile(r"(?<![\w-])(" + "|".join(re.escape(name) for name in [*_FLAGS, *_ASSIGNED_ONLY] if "=" not in name)
                       + r")=(?=[^\s=])")


def as_flags(message: str) -> str:
    """A library error message with ConvertConfig's parameter names replaced by the flags that
    set them ("pass force=True" -> "pass --force", "distill_steps=5" -> "--distill-steps 5")."""
    message = _ASSIGNED.sub(lambda match: {**_FLAGS, **_ASSIGNED_ONLY}[match.group(1)] + " ", message)
    message = message.replace("task='", "--task '")
    return _PARAMETER.sub(lambda match: _FLAGS[match.group(1)], message)


@click.command(context_settings={"help_option_names": ["-h", "--help"]},
               epilog="Exit status: 0 when every target was delivered (artifacts a floor or budget refused are "
                      "listed in the table and the manifest); 1 when an option was refused (an unknown target, a value out "
                      "of range: said before any work), a conversion failed, or no artifact of a target met its floor; "
                      "2 for an unknown flag or a value of the wrong type; 130 after Ctrl-C; 143 after SIGTERM.")
@click.argument("model", required=False, type=click.Path(file_okay=False, path_type=Path))
@click.option("--target", "-t", default="auto", show_default=True,
              help="target profile id, 'auto' for this machine, several ids separated by commas, or 'all': "
                   "several targets are converted in one run that shares the common stages")
@click.option("--out", "-o", type=click.Path(path_type=Path),
              help="output directory [default: out/<target>]; with several targets, the parent of one "
                   "directory per target [default: out]")
@click.option("--task", type=click.Choice(["feature-extraction", "text-classification", "token-classification"]),
              help="override the task inferred from the model config")
@click.option("--calibration", type=click.Path(dir_okay=False, path_type=Path),
              help="texts to fit quantization on: .txt (one per line; blank and '#' lines skipped) or .jsonl "
                   "({'text': ...} per line), UTF-8; without "
                   "--validation-texts a deterministic quarter of them (by text hash) is held out for validation "
                   "[default: the built-in English texts]")
@click.option("--validation-texts", type=click.Path(dir_okay=False, path_type=Path),
              help="texts to validate the artifacts on (metrics, accuracy floors, every search's evaluation), "
                   "same formats; no fitting step sees them, and none may also be a calibration text")
@click.option("--max-fit-texts", type=TextCap(), default=str(MAX_FIT_TEXTS), show_default=True,
              help="fit on at most N texts: a larger set is sampled deterministically (by text hash); 'all' for every "
                   "text (each fitting stage takes time in proportion)")
@click.option("--max-validation-texts", type=TextCap(), default=str(MAX_VALIDATION_TEXTS), show_default=True,
              help="validate on at most N texts, sampled the same way; 'all' for every text (each search step takes "
                   "time in proportion, and a minimum over more texts is a stricter floor)")
@click.option("--accuracy-floor", type=float,
              help="minimum mean cosine / top-1 agreement (overrides the profile's; its other floors, the "
                   "per-text minimum and INT4's own, move by as much)")
@click.option("--calibration-method", type=click.Choice(["minmax", "percentile", "entropy"]),
              help="activation range method for static INT8 profiles (overrides the profile)")
@click.option("--arithmetic", type=click.Choice(["auto", "exact", "host"]), default="auto", show_default=True,
              help="whose INT8 arithmetic candidates are scored with: auto = with the target's arithmetic (exact int32 GEMMs when "
                   "this CPU saturates and the target does not); exact = always exact int32; host = this CPU's "
                   "kernels (diagnostics)")
@click.option("--sign-key", type=click.Path(dir_okay=False, path_type=Path),
              help="EC private key (PEM; P-256, P-384 or P-521): sign the artifact directory as model.sig (OpenSSF model "
                   "signing; docs/signing.md)")
@click.option("--prune", help="structured pruning: 'heads=R,ffn=R' removes those shares of all attention heads and FFN "
                   "neurons (ranked globally, without labels), 'auto' walks to larger "
                   "shares step by step while the pruned model keeps the profile's pruning floor (greedy), 'off' none; pruned twins (<artifact>-pruned) of the profile's [pruning] artifacts "
                   "are built next to the unpruned ones [default: the profile's, off for all built-in profiles]")
@click.option("--prune-floor", type=float,
              help="minimum mean cosine / top-1 agreement of the pruned artifacts against the unpruned PyTorch "
                   "model (overrides the profile's [pruning] floor)")
@click.option("--distill-steps", type=int, default=0, show_default=True,
              help="after pruning, train the pruned model towards the unpruned one on the fit texts for up to N "
                   "steps (no labels; early stopping on the validation texts)")
@click.option("--force", is_flag=True, help="replace an existing output directory")
@click.option("--json", "as_json", is_flag=True,
              help="print the result as JSON on stdout: an object for one target, an array of them for several")
@click.option("--list-targets", is_flag=True, help="list the known target profiles and exit")
@click.option("--quiet", "-q", is_flag=True, help="no progress lines")
@click.option("--verbose", "-v", is_flag=True,
              help="also show what the libraries print meanwhile (warnings, log lines, native messages); "
                   "without it they go only to <out>.convert.log")
@sigterm_as_ctrl_c()  # `kill`, timeout(1), a cancelled CI job: cleaned up as after Ctrl-C, exit status 143
def main(model, target, out, task, calibration, validation_texts, max_fit_texts, max_validation_texts, accuracy_floor, calibration_method, arithmetic,
         sign_key, prune, prune_floor, distill_steps, force, as_json, list_targets, quiet, verbose):
    """Convert MODEL (a local Hugging Face model directory; default: the built-in
    all-MiniLM-L6-v2) into ONNX and TFLite artifacts for a target device, validated against PyTorch."""
    if list_targets:
        _list_targets()
        return
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a model hub
    try:  # the libraries take a moment to import: Ctrl-C meanwhile is no crash
        from converters import ConversionError, ConversionInterrupted, ConvertConfig, convert
        from converters._console import ProgressPrinter, captured_output
        from converters.packaging.package import check_not_inside_inputs, check_not_inside_output
        from converters.packaging.signing import SigningKeyError
        from converters.pipeline import TargetFailure, convert_targets
    except KeyboardInterrupt:
        click.echo("interrupted: nothing was written", err=True)
        sys.exit(130)

    try:
        profiles = _profiles(target)
    except UnknownTargetError as exc:  # the library names no flag: the CLI's is --target
        raise click.ClickException(f"{exc}; convert for one of them with --target NAME") from None
    except ProfileError as exc:
        raise click.ClickException(str(exc)) from None
    several = len(profiles) > 1
    out = out or (Path("out") if several else Path("out") / profiles[0].id)
    try:  # before anything is written next to it (the log): a directory inside an output breaks it
        check_not_inside_output(out)
        check_not_inside_inputs(out, {"the source model": model})
    except ConversionError as exc:
        raise click.ClickException(str(exc)) from None
    started, started_wall = time.perf_counter(), time.time()
    was = _identity(out)  # which directory `out` was: an interrupted run tells what it left there
    config = ConvertConfig(model=model, target=profiles[0].id, out=out, task=task, calibration=calibration,
                           accuracy_floor=accuracy_floor, calibration_method=calibration_method, force=force,
                           validation_texts=validation_texts, max_fit_texts=max_fit_texts,
                           max_validation_texts=max_validation_texts, arithmetic=arithmetic, sign_key=sign_key,
                           prune=prune, prune_floor=prune_floor, distill_steps=distill_steps)
    log_path, made = _log_path(out)
    capture, finished = None, False
    try:
        with captured_output(log_path) as capture:
            printer = ProgressPrinter(capture.display, started)
            if verbose:
                capture.follow(printer.passthrough)
            shown = (lambda message: None) if quiet else printer

            def show(message: str) -> None:  # every progress line is a safe point to stop at
                check_interrupted()
                # A refusal's advice and a note name the library's parameters: said with the flags here.
                shown(as_flags(message) if "REFUSED" in message or message.startswith("note:") else message)
            if several:
                results = convert_targets(config, [p.id for p in profiles], show)
            else:
                results = [convert(config, show)]
        finished = True
    except SigningKeyError as exc:  # a value refused, as the epilog says: 1 (click's BadParameter is 2)
        raise click.ClickException(f"--sign-key: {exc.detail}") from None
    except ConversionError as exc:
        raise click.ClickException(as_flags(str(exc)) + _log_note(capture, verbose)) from None
    except ConversionInterrupted as exc:  # Ctrl-C while pruning: the unpruned artifacts were kept
        if as_json:  # what was kept, in the shape --json promises (the text table is not JSON)
            click.echo(json.dumps([exc.result.to_dict()] if several else exc.result.to_dict(), indent=2))
        else:
            _print_result(exc.result)
        not_built = [r["name"] for r in exc.result.refused if str(r.get("reason", "")).startswith("not built")]
        click.echo(_interrupted(out, [p.id for p in profiles] if several else None, started_wall, exc.result.target,
                                not_built)
                   + _log_note(capture, verbose), err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        # One target: the signal may have come after its output was put in place (during the
        # clean-up, or before the table was printed): the message says what `out` holds.
        finished = not several and _published(out, started_wall, was)
        click.echo(_interrupted(out, [p.id for p in profiles] if several else None, started_wall, was=was)
                   + _log_note(capture, verbose), err=True)
        sys.exit(130)
    except Exception:
        # Not the user's error: the libraries' last lines may say why; the traceback follows.
        tail = _log_tail(capture, verbose)
        if tail:
            click.echo(tail, err=True)
        raise
    finally:
        logged = _settle_log(log_path, capture, finished, made)
    failed = [r for r in results if isinstance(r, TargetFailure)]
    if as_json:
        click.echo(json.dumps([r.to_dict() if not isinstance(r, TargetFailure)
                               else {"target": r.target, "out": str(r.out), "error": str(r.error)}
                               for r in results] if several else results[0].to_dict(), indent=2))
        if failed:
            sys.exit(1)
        return
    for result in results:
        if isinstance(result, TargetFailure):
            click.echo(f"\n{result.target}: FAILED: {as_flags(str(result.error))}", err=True)
        else:
            _print_result(result)
    if several:
        click.echo(f"\n{len(results) - len(failed)} of {len(results)} targets converted in "
                   f"{time.perf_counter() - started:.0f} s (one run: shared source, texts, exports and builds)")
    if logged:
        click.echo(f"library output (warnings, native log lines): {log_path}", err=True)
    if failed:
        sys.exit(1)


_UNKNOWN = object()  # _interrupted(was=): which directory `out` was at the start is not known


def _identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of the directory at `path` (a link followed, as the output is), or None."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return (stat.st_dev, stat.st_ino) if os.path.isdir(path) else None


def _published(out: Path, since: float, was=_UNKNOWN) -> bool:
    """Whether `out` holds an output this run put there: a manifest in a directory other than the
    one at `out` when the run started (`was`, from _identity; a finished result is renamed into
    place, so it is another directory), or, `was` not known, a manifest written since `since`."""
    try:
        written = (out / "manifest.json").stat().st_mtime
    except OSError:
        return False
    if was is _UNKNOWN:
        return written >= since
    return was is None or _identity(out) != was


def _interrupted(out: Path, targets: list[str] | None, since: float, while_pruning: str | None = None,
                 not_built: list[str] | None = None, was=_UNKNOWN) -> str:
    """What an interrupted run leaves, as found there: one target: nothing (`out` absent, or still
    the previous output) or, interrupted after its output was renamed into place, the new output
    (and whether the previous one it replaced was removed); several: each target finished before
    the interruption in out/<id>. `was`: _identity(out) when the run started.
    `while_pruning`: the target interrupted while its pruned twins were built, whose other
    artifacts were packaged; `not_built`: the twins it did not build (a twin finished before the
    interruption was packaged too)."""
    again = "run again with --force to build them"
    unbuilt = ", ".join(not_built) if not_built else "the pruned ones"
    if targets is None:
        if while_pruning:
            return (f"interrupted while pruning: {out} holds the artifacts built before it; {unbuilt} "
                    f"{'was' if not_built and len(not_built) == 1 else 'were'} not built (its manifest lists "
                    f"{'it' if not_built and len(not_built) == 1 else 'them'} as refused, 'not built'): {again}")
        return _interrupted_one(out, since, was)
    done = [t for t in targets if (out / t / "manifest.json").is_file()
            and (out / t / "manifest.json").stat().st_mtime >= since]
    if not done:
        return f"interrupted: nothing was written to {out}"
    rest = [t for t in targets if t not in done]
    pruning = (f"; {while_pruning}'s {unbuilt if not_built else 'pruned artifacts'} "
               f"{'was' if not_built and len(not_built) == 1 else 'were'} not built ({again})"
               if while_pruning in done else "")
    return (f"interrupted: {', '.join(done)} finished before it ({', '.join(str(out / t) for t in done)}){pruning}"
            + (f"; nothing was written for {', '.join(rest)} (convert {'it' if len(rest) == 1 else 'them'} with "
               f"{_rest_command(out, rest)})" if rest else ""))


def _interrupted_one(out: Path, since: float, was) -> str:
    from converters.packaging.package import is_output, previous_left

    if _published(out, since, was):
        left = previous_left(out)
        previous = ""
        if left:
            previous = (f"; the previous output could not be removed: it is left in "
                        f"{', '.join(str(p) for p in left)}; remove it")
        elif was is not None and was is not _UNKNOWN:
            previous = "; the previous output it replaced was removed"
        return (f"interrupted after the conversion had finished: {out} holds the new, complete output"
                f"{previous} (its table was not printed: `edge-run {shlex.quote(str(out))} --info` describes it)")
    if is_output(out):
        return f"interrupted: nothing was written; {out} still holds the previous output, unchanged"
    return f"interrupted: nothing was written to {out}"


def _rest_command(out: Path, rest: list[str]) -> str:
    """The flags that convert the targets an interruption left out, beside the finished ones:
    one target is a single-target run into its own directory (--out OUT would be the parent of
    the finished ones, which a single-target run refuses to replace); several write OUT/<id>."""
    if len(rest) == 1:
        return f"--target {rest[0]} --out {shlex.quote(str(out / rest[0]))}"
    return f"--target {','.join(rest)} --out {shlex.quote(str(out))}"


def _profiles(target: str) -> list:
    """The profiles `--target` names: one id, 'auto' (this machine), ids separated by commas, 'all'.
    A refused value is a ProfileError (exit status 1, like an unknown id), not a usage error (2)."""
    if target.strip() == "all":
        return list_profiles()
    ids = [t.strip() for t in target.split(",") if t.strip()]
    if not ids:
        raise ProfileError(f"--target names no target profile ({target!r}); see --list-targets, or use 'auto' "
                           "(this machine) or 'all'")
    if "all" in ids:
        raise ProfileError(f"--target: 'all' names every profile and stands alone, not in a list: {target}")
    profiles = []
    for name in ids:
        if name == "auto":
            # this machine's facts from the runtime's device reader (one reader of /proc, /sys)
            profile = detect_target(target_facts(detect()))
        else:
            profile = load_profile(name)
        if any(p.id == profile.id for p in profiles):  # auto,x86-avx512-vnni on such a machine too
            twice = f"{profile.id} (auto is {profile.id} on this machine)" if "auto" in ids else profile.id
            raise ProfileError(f"--target names a profile twice: {twice}")
        profiles.append(profile)
    return profiles


def _print_result(result) -> None:
    click.echo(f"\n{result.source} -> {result.out} (target {result.target}, task {result.task}, "
               f"{result.seconds:.0f} s)\n")
    click.echo(_table(result))
    for refused in result.refused:
        click.echo(f"\nREFUSED {refused['name']} ({result.target}): {as_flags(refused['reason'])}", err=True)
    shape = DEFAULT_SHAPE
    # All artifacts timed together in interleaved rounds (converters/packaging/timing.py): timed one
    # after the other, a shared machine's other tenants slowed one pass and not the next
    # (benchmarks/RESULTS.md run AA). Still this machine's kernels: the device's are edge-bench's.
    named = sorted({a.fp32_baseline for a in result.artifacts if a.fp32_baseline})
    tokens = result.timing_sequence or shape.seq  # a model shorter than the shape runs at its own length
    click.echo(f"\nlatency: batch {shape.batch}, {tokens} tokens, {shape.threads} threads, on this machine, all "
               f"artifacts timed together in interleaved rounds"
               + (f"; x FP32: p50 over that of the same format's FP32 artifact ({', '.join(named)}), median of "
                  "the per-round ratios" if named else "")
               + f". On the device: `edge-bench {shlex.quote(str(result.out))} --all`; run the artifacts with "
               f"`edge-run {shlex.quote(str(result.out))} \"some text\"`")
    busy = busy_note(result.timing_cpu_wait)
    if busy:
        click.echo(f"note: {busy} (`edge-bench {shlex.quote(str(result.out))} --all` times them again)", err=True)


if __name__ == "__main__":
    main()
