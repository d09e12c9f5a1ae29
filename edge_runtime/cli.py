"""edge-run: run an artifact directory on text (or describe it). Thin: parse, call, print."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

import edge_runtime
from edge_runtime import _load_args
from edge_runtime._manifest import MANIFEST_NAME
from edge_runtime._text import count_words


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        # parse_intermixed_args names the optional texts as required too when the directory is
        # missing ("required: artifacts, texts"); only the directory is.
        if message.endswith("required: artifacts, texts"):
            message = "the following arguments are required: artifacts (an edge-convert output directory)"
        super().error(message)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="edge-run", description="Run an edge-convert artifact directory on this device.",
        epilog="Exit status: 0 when every text ran (or --info described the directory); 1 when the "
        "directory cannot be run here (a failed check, no artifact that runs, a damaged manifest); "
        "2 for a bad flag or argument (--threads out of range, an empty directory argument, no texts, "
        "a - whose standard input has no lines); 130 after Ctrl-C; 143 after SIGTERM; 141 "
        "when the reader of the output stopped early.",
    )
    parser.add_argument("artifacts", help="artifact directory (with manifest.json)")
    parser.add_argument("texts", nargs="*", help="texts to embed or classify; - reads one text per "
                        "line from standard input (UTF-8; the text \"-\" itself: echo - | edge-run DIR -)")
    parser.add_argument("--artifact", help="artifact name (default: best for this device)")
    parser.add_argument("--threads", type=int, help="intra-op threads (default: this device's tuned "
                        "setting if edge-tune cached one, else the profile's; --info says which)")
    parser.add_argument("--info", action="store_true", help="describe the artifacts and exit")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument(
        "--trusted-key", action="append", metavar="PEM",
        help="public key (PEM) whose signature (model.sig) the directory must carry; repeat to "
        "trust several keys; needs edge_runtime[verify] (docs/signing.md)",
    )
    parser.add_argument(
        "--no-device-cache", dest="device_cache", action="store_false",
        help="run only the artifact's own files: no optimized graph or packed weights from the "
        "device cache (slower loads; docs/signing.md, 'What a signature covers')",
    )
    return parser


def _describe(root: str, artifact: str | None = None, threads: int | None = None, raw: bytes | None = None) -> dict:
    """The device, its profile, what load() would pick and why (or, given `artifact`, what it
    would run that one with), with `threads` when given (--threads, as load() takes them), and
    the artifact table. `raw`: the manifest's bytes a signature check matched (read_manifest)."""
    from edge_runtime import _device, _memory, _select, _tuning_cache
    from edge_runtime._manifest import unknown_artifacts

    path = Path(root)
    manifest = edge_runtime.read_manifest(path, raw=raw)
    names = [a["name"] for a in manifest["artifacts"]]
    if artifact is not None and artifact not in names:
        raise edge_runtime.InputError(unknown_artifacts(path, manifest, [artifact]))
    device = _device.detect()
    profile_id, profile_reason = _device.match_profile(device)
    tuning = _tuning_cache.read_cached(path, manifest)
    plan = _select.plan(path, manifest, device, tuning, asked=artifact)
    if artifact is not None:  # asked for by name: only that one, the reason says so
        chosen = [c for c in plan.choices if c.name == artifact]
        plan = dataclasses.replace(plan, choices=chosen, reason=f"it was asked for by name (--artifact {artifact})")
    selection = None
    if plan.choices:
        first = plan.choices[0]
        if threads is None:
            count, spinning, source = _select.threads_for(first.entry, manifest, tuning)
        else:
            count, spinning, source = _given_threads(threads)
        selection = {
            "artifact": first.name,
            "reason": plan.reason,
            "threads": count,
            "spinning": spinning,
            "threads_from": source,
            "order": [
                {"name": c.name, "fits_memory": c.fits, "notes": c.notes} for c in plan.choices
            ],
        }
    info = device.to_dict()
    info["features_of_interest"] = device.notable_features()
    return {
        "asked": artifact,
        "device": info,
        "profile": {
            "detected": profile_id,
            "reason": profile_reason,
            "artifacts_made_for": manifest["target"].get("id"),
        },
        "selection": selection,
        "not_tried": plan.skipped,
        "tuning": {
            "cache_file": str(_tuning_cache.cache_file(path)),
            "present": tuning is not None,
            "fastest": (tuning or {}).get("fastest"),
        },
        "target": manifest["target"].get("id"),
        "task": manifest["task"],
        "source": manifest["source"].get("name"),
        "produces": _produces(manifest),
        "artifacts": [
            {
                "name": a["name"],
                "format": a["format"],
                "precision": a["precision"],
                "bytes": sum(f["bytes"] for f in a["files"]),
                "estimated_mb": round(_memory.estimate_mb(a), 1),
                "metrics": a["metrics"],
            }
            for a in manifest["artifacts"]
        ],
    }


def _produces(manifest: dict) -> dict:
    """What embed()/classify() give, from the manifest's postprocess and tokenizer sections: the
    task, the longest input in tokens (None without a tokenizer), the output read, and the pooling
    and normalization of an embedding model or the labels (index = class id) of a classifier."""
    post = manifest.get("postprocess") or {}
    tokenizer = manifest.get("tokenizer") or {}
    produced = {"task": manifest["task"], "max_length": tokenizer.get("max_length"), "output": post.get("output")}
    if manifest["task"] == "feature-extraction" and "pooling" in post:
        shape = next((o["shape"] for o in manifest["outputs"] if o["name"] == post.get("output")), [])
        # truncate_dim: the first values of each vector only (sentence-transformers' Matryoshka cut)
        produced["dimension"] = post.get("truncate_dim") or (shape[-1] if shape and isinstance(shape[-1], int) else None)
        produced.update(pooling=post["pooling"], normalize=post["normalize"])
        if post.get("do_lower_case"):
            produced["do_lower_case"] = True
    elif isinstance(post.get("labels"), list):
        produced["labels"] = post["labels"]
    elif not post:  # run() only: its tensors, by name
        produced["raw_outputs"] = [o["name"] for o in manifest["outputs"]]
    return produced


_LABELS_SHOWN = 12  # more labels than this: the first and last few, and how many between


def _labels_text(labels: list[str]) -> str:
    named = [f"{index} {label}" for index, label in enumerate(labels)]
    if len(named) > _LABELS_SHOWN:
        named = [*named[:8], f"... {len(named) - 10} more ...", *named[-2:]]
    return ", ".join(named)


def _produces_text(produced: dict) -> str:
    """The --info line on what the model gives per text."""
    length = produced["max_length"]
    texts = (f"texts up to {length} tokens (longer ones are cut)" if length is not None
             else "no tokenizer: token ids through run() only")
    if "pooling" in produced:
        dimension = f"{produced['dimension']}-dimensional " if produced["dimension"] else ""
        normalized = "normalized to length 1" if produced["normalize"] else "not normalized"
        lower = ", texts lowercased" if produced.get("do_lower_case") else ""
        return f"one {dimension}embedding per text: {produced['pooling']} pooling, {normalized}{lower}; {texts}"
    if "labels" in produced:
        per = "token" if produced["task"] == "token-classification" else "text"
        count = len(produced["labels"])
        return f"one of {count} label{'s' if count != 1 else ''} per {per}: {_labels_text(produced['labels'])}; {texts}"
    outputs = ", ".join(produced.get("raw_outputs") or []) or "-"
    return f"raw tensors ({outputs}): the manifest has no postprocess section, so run() only; {texts}"


def _given_threads(threads: int) -> tuple[int, None, str]:
    """(threads, spinning, where from) for --threads, as load(threads=) takes them: the count
    wins over any tuning, and spinning is left to the backend."""
    from edge_runtime import _select

    count = threads or _select.physical_cores()
    source = "given with --threads" if threads else "--threads 0: this device's physical cores"
    if count > _select.usable_cpus():  # load() warns of it too
        source += f"; more than the {_select.usable_cpus()} CPUs this process may use"
    return count, None, source


def _print_info(info: dict) -> None:
    d = info["device"]
    clusters = ", ".join(
        f"{len(c['cpus'])}x {c['core'] or 'cpu'}"
        + (f" @ {c['max_khz'] / 1e6:.2f} GHz" if c["max_khz"] else "")
        for c in d["clusters"]
    )
    print(f"device   {d['cpu_model']} ({d['arch']}), board {d['board'] or 'unknown'}")
    print(f"         ISA {' '.join(d['features_of_interest']) or '-'}; INT8 GEMM {d['int8_gemm']} "
          f"({d.get('int8_gemm_source', 'CPU flags')})")
    print(f"         {d['logical_cores']} logical / {d['physical_cores']} physical cores "
          f"({clusters}); big cores {d['big_cores']}")
    limit = d.get("memory_limit_mb")
    cgroup = f" (cgroup limit {limit} MB, {d['memory_limit_source']})" if limit is not None else ""
    print(f"         RAM {d['ram_total_mb']} MB, {d['ram_available_mb']} MB available{cgroup}")
    backends = ", ".join(f"{k} {v}" for k, v in d["backends"].items()) or "none installed"
    print(f"         backends: {backends}")
    p = info["profile"]
    print(f"profile  {p['detected'] or 'none'}: {p['reason']}")
    if p["detected"] != p["artifacts_made_for"]:
        print(f"         (these artifacts were made for {p['artifacts_made_for']})")
    sel = info["selection"]
    if sel is None and info.get("asked"):
        print(f"load()   cannot run {info['asked']} here (see 'not tried' below)")
    elif sel is None:
        print("load()   picks nothing: no artifact can run here")
    else:
        spin = {None: "", True: ", spinning", False: ", no spinning"}[sel["spinning"]]
        count = f"{sel['threads']} thread{'s' if sel['threads'] != 1 else ''}"
        print(f"load()   picks {sel['artifact']} with {count}{spin} ({sel['threads_from']})")
        print(f"         because {sel['reason']}")
        order = [c["name"] + ("" if c["fits_memory"] else " (may not fit)") for c in sel["order"]]
        print(f"         order: {' > '.join(order)}")
    for name, why in info["not_tried"].items():
        print(f"         not tried: {name}: {why}")
    t = info["tuning"]
    state = "none yet (edge-tune DIR)"
    if t["present"]:
        state = f"present (fastest: {t['fastest'] or 'not compared'})"
    print(f"tuning   {state}: {t['cache_file']}")
    if info.get("signature"):
        print(f"signature verified: {info['signature']['files']} files, signed by {info['signature']['key']}")
    print(f"\ntarget {info['target']}, task {info['task']}, source {info['source']}")
    if info.get("produces"):
        print(f"output   {_produces_text(info['produces'])}")
    for a in info["artifacts"]:
        metrics = ", ".join(f"{k} {v:.4f}" for k, v in a["metrics"].items())
        print(f"  {a['name']:<20} {a['format']:<6} {a['precision']:<5} "
              f"{a['bytes'] / 1e6:8.1f} MB  ~{a['estimated_mb']:6.0f} MB resident  {metrics}")


def _undecodable(text: str) -> str:
    """Why a command-line text is not valid text ("" if it is): Python hands over bytes that are
    not valid in the locale's encoding as lone surrogates (U+DC80-U+DCFF, one per byte)."""
    for position, char in enumerate(text):
        if "\udc80" <= char <= "\udcff":
            return (f"is not valid {sys.getfilesystemencoding().upper()} (byte 0x{ord(char) - 0xDC00:02x} at "
                    f"character {position}); pass the text in that encoding (check the terminal's locale)")
    return ""


def _stdin_lines() -> list[str]:
    """One text per line of standard input, decoded as UTF-8 (a byte-order mark dropped): lines
    end at "\\n" only (with one "\\r" before it dropped), not at the other characters
    str.splitlines() takes for line ends, so output rows stay aligned with `wc -l`'s lines; an
    empty line is an empty text."""
    if sys.stdin.isatty():  # typed by hand: say how to finish
        print("edge-run: reading texts from standard input, one per line; end with Ctrl-D", file=sys.stderr)
    data = sys.stdin.buffer.read()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        start = exc.start + (3 if data.startswith(b"\xef\xbb\xbf") else 0)
        line = data[:start].count(b"\n") + 1
        raise edge_runtime.InputError(
            f"standard input is not valid UTF-8 (line {line}, byte 0x{data[start]:02x}); "
            "convert it first, e.g. iconv -f latin1 -t utf-8"
        ) from None
    lines = text.split("\n")
    if lines[-1] == "":  # the newline that ends the last line starts no new one
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def _texts(arguments: list[str]) -> list[str] | None:
    """The command line's texts, with the one "-" replaced by standard input's lines; None when
    standard input has none, wherever "-" stands (beside other texts too: the same empty input
    is the same usage error either way)."""
    if "-" not in arguments:
        return arguments
    at = arguments.index("-")
    lines = _stdin_lines()
    return arguments[:at] + lines + arguments[at + 1 :] if lines else None


def _no_text_input(model) -> str:
    """Why edge-run cannot run `model` on text ("" if it can), in the command's terms: the
    library's own message (Model._text) points at its API instead."""
    if model.manifest.get("tokenizer"):
        return ""
    return (f"{model.root} has no tokenizer (its manifest lists none), and edge-run runs text: "
            "convert the model with its tokenizer, or run token ids through the Python API "
            "(edge_runtime.load(DIR).run({...}))")


# Texts run and printed per chunk, so the results of a long standard input are never all held at
# once. A multiple of Model.embed/classify's batch_size (32): the same backend batches as one call.
_CHUNK = 256


_SHOWN_CHARS = 80  # a text echoed beside its result: enough to recognise it, one line at most


def _shown(text: str) -> str:
    """The text as echoed beside its result: repr, cut to one line's worth."""
    if len(text) <= _SHOWN_CHARS:
        return repr(text)
    return repr(text[: _SHOWN_CHARS - 10]) + f"... ({len(text)} characters)"


def _truncated(model, texts: list[str], offset: int) -> list[tuple[int, tuple[int, bool]]]:
    """(1-based number, token count) of each text longer than the model takes: embed/classify
    keep its first tokens (truncate=True), which a command-line user should be told. Every text
    is counted: fewer characters than tokens is no proof of fitting (one emoji is 4 byte-level
    BPE tokens, a normalizer may expand a character; found by a review, session 49)."""
    encoder = model._text()
    limit = encoder.max_length
    return [(offset + index + 1, count) for index, text in enumerate(texts)
            if (count := encoder.token_count(text))[0] > limit]


def _print_results(model, texts: list[str], as_json: bool) -> None:
    """One line per text (nothing else on stdout; on a terminal, standard error names the
    artifact first), or one JSON object ({"artifact", "embeddings" | "results"}: the same bytes
    as json.dumps of the whole result), written a chunk at a time. Texts cut to the model's
    length are named on standard error at the end."""
    problem = _no_text_input(model)
    if problem:
        raise edge_runtime.InputError(problem)
    embeds = model.task == "feature-extraction"
    truncated: list[tuple[int, tuple[int, bool]]] = []
    if as_json:
        sys.stdout.write(json.dumps({"artifact": model.name, "embeddings" if embeds else "results": []})[:-2])
    elif sys.stderr.isatty():  # for the person watching; stdout stays one line per text
        count = f"{model.threads} thread{'s' if model.threads != 1 else ''}"
        print(f"edge-run: {model.name} ({model.task}) on {model.backend}, {count}", file=sys.stderr)
    for start in range(0, len(texts), _CHUNK):
        part = texts[start : start + _CHUNK]
        rows = model.embed(part) if embeds else model.classify(part)
        truncated += _truncated(model, part, start)
        if as_json:
            items = (json.dumps(row.tolist() if embeds else row) for row in rows)
            sys.stdout.write((", " if start else "") + ", ".join(items))
            continue
        for text, row in zip(part, rows):
            if embeds:
                head = ", ".join(f"{v:.4f}" for v in row[:6])
                print(f"  dim {row.shape[0]} norm {np.linalg.norm(row):.4f} [{head}, ...]  {_shown(text)}")
            else:
                print(f"  {json.dumps(row, ensure_ascii=False)}  {_shown(text)}")  # labels as written
    if as_json:
        sys.stdout.write("]}\n")
    if truncated:
        sys.stdout.flush()  # the note follows the results it is about
        limit = model._text().max_length
        named = ", ".join(f"{number} ({count_words(*count)})" for number, count in truncated[:10])
        more = f" and {len(truncated) - 10} more" if len(truncated) > 10 else ""
        which = "1 text is" if len(truncated) == 1 else f"{len(truncated)} texts are"
        print(f"edge-run: {which} longer than the {limit} tokens this model takes and ran on the first "
              f"{limit} only: text {named}{more}", file=sys.stderr)


def _main(argv: list[str] | None) -> int:
    # Intermixed: texts may follow options ("edge-run DIR --json 'a text'"), as users type them.
    args = _parser().parse_intermixed_args(argv)
    if not args.artifacts:  # Path("") is the working directory: never what was meant
        print(f"edge-run: error: {_load_args.EMPTY_DIRECTORY}", file=sys.stderr)
        return 2
    problem = "" if args.threads is None else _load_args.threads_problem(args.threads)
    if problem:  # a bad flag: a usage error (exit 2), said before anything is read
        print(f"edge-run: error: --threads {problem}", file=sys.stderr)
        return 2
    try:
        if args.info:
            signed, raw = None, None
            if args.trusted_key:  # describe only what the device would accept: the manifest the signature covers
                from edge_runtime import _signing

                found = _signing.verify_directory(Path(args.artifacts), args.trusted_key)
                signed, raw = {"key": str(found.key), "files": found.files}, found.checked.manifest
            info = {**_describe(args.artifacts, args.artifact, args.threads, raw), "signature": signed}
            if args.json:
                print(json.dumps(info, indent=2))
            else:
                _print_info(info)
            return 0
        if not args.texts:
            print("edge-run: error: give texts to run, or --info", file=sys.stderr)
            return 2
        for number, text in enumerate(args.texts, 1):
            problem = _undecodable(text)
            if problem:
                print(f"edge-run: error: text argument {number} {problem}", file=sys.stderr)
                return 2
        if args.texts.count("-") > 1:
            print("edge-run: error: give - (standard input) once", file=sys.stderr)
            return 2
        if "-" in args.texts:  # a wrong directory is said before anyone types or pipes texts in
            root = Path(args.artifacts)
            # A signed manifest is parsed only once load() has checked the signature (hashing
            # every file once, not here and again there); a missing one is said now.
            if not args.trusted_key or not (root / MANIFEST_NAME).is_file():
                edge_runtime.read_manifest(root)
            if sys.stdin is None:  # started with standard input closed (<&-)
                print("edge-run: error: - reads standard input, but it is closed", file=sys.stderr)
                return 2
        args.texts = _texts(args.texts)
        if args.texts is None:
            print("edge-run: error: standard input has no lines", file=sys.stderr)
            return 2
        model = edge_runtime.load(args.artifacts, artifact=args.artifact, threads=args.threads,
                                  trusted_keys=args.trusted_key, device_cache=args.device_cache)
        _print_results(model, args.texts, args.json)
        return 0
    except edge_runtime.SignatureError as exc:  # the library names its parameter; say our flag
        message = str(exc).replace("trusted_keys=None", "no --trusted-key")
        print(f"edge-run: error: {message.replace('trusted_keys', '--trusted-key')}", file=sys.stderr)
        return 1
    except edge_runtime.EdgeRuntimeError as exc:
        print(f"edge-run: error: {exc}", file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> int:
    """The console script. A reader that stops early (`edge-run DIR text | head`) ends it quietly,
    as it does any Unix tool."""
    from edge_runtime._sigterm import TERMINATED_EXIT, Terminated, sigterm_as_ctrl_c

    try:
        # `kill`, systemd stop: a TFLite cache build's child process is stopped and its temporary
        # removed, as after Ctrl-C (a review: SIGTERM left the child running)
        with sigterm_as_ctrl_c():
            code = _main(argv)
        sys.stdout.flush()  # inside the try: buffered output meets a closed pipe here, not at exit
        return code
    except BrokenPipeError:
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 141
    except KeyboardInterrupt as exc:  # device caches are built under temporary names: nothing half-made stays
        print("edge-run: interrupted", file=sys.stderr)
        return TERMINATED_EXIT if isinstance(exc, Terminated) else 130


if __name__ == "__main__":
    sys.exit(main())
