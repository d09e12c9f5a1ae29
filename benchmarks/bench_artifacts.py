#!/usr/bin/env python3
"""Side-by-side: plain ONNX Runtime FP32, the stock tools, and our edge-convert artifacts (every
artifact a target profile emits: ONNX FP32/INT8/INT4, TFLite FP32/INT8), in one run.

    python benchmarks/bench_artifacts.py --target x86-avx2 --target x86-avx512-vnni --rounds 9

Stock rows: onnxruntime's quantize_dynamic (defaults; per_channel + reduce_range) and
MatMulNBitsQuantizer (INT4, block 32, symmetric, accuracy_level 4) on a plain torch.onnx.export;
with --tflite, litert-torch's export of the Hugging Face model (128 tokens, fixed shape) and
ai-edge-quantizer's dynamic_wi8_afp32 / dynamic_wi4b32_afp32 recipes, run by ai-edge-litert.

MiniLM (the built-in model), batch 1, 128 tokens, 2 threads by default. Speed is reported as the
median over rounds of (variant p50 / plain FP32 p50) measured in the same round; within a round
the variants take turns in short blocks (--block runs), so a busy machine slows every variant
alike. Accuracy is the sentence-embedding cosine against
PyTorch FP32 on held-out texts (benchmarks/data/heldout_en.txt) that the converter never saw.
Load time (edge_runtime.load with hash check and golden self-check, or session creation, plus
nothing else) and RSS after one run come from fresh subprocesses: the first with an empty device
cache, then the median of three more.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
from functools import partial
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))
from _bench_child import ChildError, run_child, user_path  # noqa: E402 - after the path
from edge_runtime._bench_config import DEFAULT_SHAPE  # noqa: E402
from edge_runtime._contention import CpuWait, busy_note  # noqa: E402
from edge_runtime._rounds import Round, time_in_rounds  # noqa: E402
from edge_runtime._sigterm import (  # noqa: E402
    TERMINATED_EXIT,
    Terminated,
    check_interrupted,
    sigterm_as_ctrl_c,
)
HELDOUT = ROOT / "benchmarks" / "data" / "heldout_en.txt"
# CPU flags that decide kernel choices, named with every timing.
INTERESTING_FLAGS = frozenset({"avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8",
                               "asimd", "asimddp", "i8mm", "fphp", "asimdhp", "sve"})
# MiniLM's longest input (its sentence_bert_config.json max_seq_length): every tokenizer here
# truncates there, so a longer --seq would time 256 tokens under a larger label.
MAX_TOKENS = 256

_LOAD_PROBE = r"""
import json, sys, time, psutil
kind, path, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
import numpy as np
proc = psutil.Process()
if kind == "tflite":
    from ai_edge_litert.interpreter import Interpreter
    before = proc.memory_info().rss
    t0 = time.perf_counter()
    interp = Interpreter(model_path=path, num_threads=threads)
    runner = interp.get_signature_runner()
    load = time.perf_counter() - t0
    details = runner.get_input_details()
    run = lambda feeds: runner(**{n: np.ones(d["shape"], d["dtype"]) for n, d in details.items()})
    names = ["input_ids"]
elif kind == "edge":
    import edge_runtime
    root, name = path.rsplit("::", 1)
    before = proc.memory_info().rss
    t0 = time.perf_counter()
    model = edge_runtime.load(root, artifact=name, threads=threads)
    load = time.perf_counter() - t0
    run = model.run
    names = [i["name"] for i in model.inputs]
else:
    import onnxruntime as ort
    before = proc.memory_info().rss
    t0 = time.perf_counter()
    opts = ort.SessionOptions(); opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    load = time.perf_counter() - t0
    names = [i.name for i in sess.get_inputs()]
    run = lambda feeds: sess.run(None, feeds)
feeds = {n: (np.ones((1, 128), np.int64) if n != "token_type_ids" else np.zeros((1, 128), np.int64)) for n in names}
run(feeds)
print(json.dumps({"load_s": load, "rss_mb": proc.memory_info().rss / 2**20, "rss_delta_mb": (proc.memory_info().rss - before) / 2**20}))
"""


def _load_probe(name: str, kind: str, path: str, threads: int, env: dict[str, str]) -> dict:
    """One fresh process's load time and RSS (_LOAD_PROBE); ChildError naming the variant and the
    child's exception if it fails. The child runs in ROOT: `path` must be absolute."""
    command = [sys.executable, "-c", _LOAD_PROBE, kind, path, str(threads)]
    done = run_child(f"the load probe of {name!r}", command, cwd=ROOT, env=env)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _texts() -> list[str]:
    return [t for t in HELDOUT.read_text().splitlines() if t.strip() and not t.startswith("#")]


def _keywords_module(model):
    """The Hugging Face model called with keyword arguments (transformers 5 needs them for
    export), returning last_hidden_state."""
    import torch

    class Keywords(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=token_type_ids).last_hidden_state

    return Keywords(model).eval()


class PlainExport:
    """What a user gets from a plain torch.onnx.export of the Hugging Face model."""

    def __init__(self, model_dir: Path, work: Path):
        import torch
        import transformers

        self.tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
        self.model = transformers.AutoModel.from_pretrained(model_dir).eval()

        self.keywords = _keywords_module(self.model)
        names = ["input_ids", "attention_mask", "token_type_ids"]
        sample = self.tokenizer(["a sample sentence", "another"], padding=True, return_tensors="pt")
        self.path = work / "plain_fp32.onnx"
        torch.onnx.export(self.keywords, tuple(sample[n] for n in names), str(self.path),
                          dynamo=False, opset_version=17, input_names=names, output_names=["last_hidden_state"],
                          dynamic_axes={n: {0: "batch", 1: "sequence"} for n in names + ["last_hidden_state"]})

    def reference(self, texts: list[str]) -> np.ndarray:
        import torch

        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt")
        with torch.no_grad():
            hidden = self.model(**enc).last_hidden_state.numpy()
        return _pool(hidden, enc["attention_mask"].numpy())

    def encode(self, texts: list[str]) -> dict[str, np.ndarray]:
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="np")
        return {k: enc[k].astype(np.int64) for k in ("input_ids", "attention_mask", "token_type_ids")}


class StockTflite:
    """What a user gets from litert-torch on the Hugging Face model: one fixed-shape signature
    (batch 1, `seq` tokens), inputs args_0..2, quantized with a stock ai-edge-quantizer recipe."""

    def __init__(self, plain: PlainExport, work: Path, seq: int):
        import contextlib
        import io

        import litert_torch
        import torch

        self.seq = seq
        sample = (torch.ones(1, seq, dtype=torch.long), torch.ones(1, seq, dtype=torch.long),
                  torch.zeros(1, seq, dtype=torch.long))
        self.paths = {"fp32": work / "stock_fp32.tflite"}
        with contextlib.redirect_stdout(io.StringIO()):
            litert_torch.convert(plain.keywords, sample).export(str(self.paths["fp32"]))
        from ai_edge_quantizer import quantizer, recipe

        for name in ("dynamic_wi8_afp32", "dynamic_wi4b32_afp32"):
            self.paths[name] = work / f"stock_{name}.tflite"
            with contextlib.redirect_stdout(io.StringIO()), np.errstate(invalid="ignore", divide="ignore"):
                result = quantizer.Quantizer(str(self.paths["fp32"]), getattr(recipe, name)()).quantize()
            result.export_model(str(self.paths[name]), overwrite=True)

    def runner(self, path: Path, threads: int):
        from ai_edge_litert.interpreter import Interpreter

        interpreter = Interpreter(model_path=str(path), num_threads=threads)
        run = interpreter.get_signature_runner()
        details = run.get_input_details()
        order = sorted(details)  # args_0, args_1, args_2 = ids, mask, types

        def call(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            ids, mask = feeds["input_ids"], feeds["attention_mask"]
            types = feeds.get("token_type_ids", np.zeros_like(ids))
            rows = []
            for r in range(len(ids)):
                padded = []
                for name, value in zip(order, (ids, mask, types)):
                    buffer = np.zeros((1, self.seq), details[name]["dtype"])
                    buffer[0, : value.shape[1]] = value[r, : self.seq]
                    padded.append(buffer)
                out = next(iter(run(**dict(zip(order, padded))).values()))
                rows.append(out[:, : ids.shape[1]])
            return {"last_hidden_state": np.concatenate(rows)}

        return call


def _pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    m = mask[..., None].astype(np.float32)
    v = (hidden * m).sum(1) / np.clip(m.sum(1), 1e-9, None)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _ort_session(path: Path, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return lambda feeds: dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))


def _stock_matmulnbits(fp32: Path, out: Path) -> None:
    """onnxruntime's own INT4 recipe: MatMulNBitsQuantizer with its defaults for CPU."""
    import logging

    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    logging.getLogger("onnxruntime.quantization").setLevel(logging.WARNING)
    quantizer = MatMulNBitsQuantizer(onnx.load(str(fp32)), block_size=32, is_symmetric=True, accuracy_level=4)
    quantizer.process()
    quantizer.model.save_model_to_file(str(out), use_external_data_format=True)


def _size(paths: list[Path]) -> int:
    return sum(p.stat().st_size for p in paths if p.exists())


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults shown, but not "(default: None)" after a help that says what None means."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        return action.help if action.default is None else super()._get_help_string(action)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0].replace("\n", " ") + " Always the built-in MiniLM (no model "
        "argument): it converts every --target, then times; minutes per target. The Markdown table goes to "
        "stdout, the raw results to --json.",
        formatter_class=_Help)
    parser.add_argument("--target", action="append", help="target profile(s) to convert and compare "
                        "(repeatable; default x86-avx2); TARGET@METHOD overrides a static profile's "
                        "calibration method (minmax, percentile, entropy); a /floor=F suffix overrides "
                        "the accuracy floor (e.g. 0.5: no FP32 fallback, to measure a scheme as it is)")
    parser.add_argument("--prune", help="also build pruned twins (edge-convert --prune, e.g. heads=0.33,ffn=0.5)")
    parser.add_argument("--prune-floor", type=float, help="the pruned twins' floor (edge-convert --prune-floor; "
                        "e.g. 0.5 to deliver and measure a pruning as it is)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds; speed ratios are medians over them")
    parser.add_argument("--runs", type=int, default=50, help="timed runs per variant per round")
    parser.add_argument("--block", type=int, default=5, help="consecutive runs of one variant before the next "
                        "(the round cycles through the variants until each has --runs)")
    parser.add_argument("--threads", type=int, default=DEFAULT_SHAPE.threads, help="threads of every session")
    parser.add_argument("--seq", type=int, default=DEFAULT_SHAPE.seq, help=f"tokens of the timed input (1-{MAX_TOKENS})")
    # Paths are made absolute here: the load probes run with cwd=ROOT (tools/_bench_child.py).
    parser.add_argument("--json", type=user_path, help="write the raw results here")
    parser.add_argument("--keep", type=user_path, help="convert into this directory and keep the "
                        "artifacts (default: a temporary directory)")
    parser.add_argument("--tflite", action="store_true", help="add the stock litert-torch / ai-edge-quantizer rows")
    parser.add_argument("--reuse", action="store_true",
                        help="with --keep: use a target's artifact directory already there (its "
                        "manifest.json says which commit's converter made it) instead of "
                        "converting; it must have been converted from the built-in MiniLM "
                        "(checked first)")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work = Path(tempfile.mkdtemp(prefix="bench-onnx-"))
    try:
        # SIGTERM (`kill`, timeout(1), a cancelled CI job) is handled as Ctrl-C: the work
        # directory here and the converter's own are removed (edge_runtime/_sigterm.py).
        with sigterm_as_ctrl_c():
            _check_args(parser, args, work)
            return _bench(args, argv, work)
    except KeyboardInterrupt as exc:
        kept = f"; converted artifacts stay in {args.keep}" if args.keep else ""
        how = "terminated" if isinstance(exc, Terminated) else "interrupted"
        print(f"bench_artifacts: {how}, nothing measured was written{kept}", file=sys.stderr)
        return TERMINATED_EXIT if isinstance(exc, Terminated) else 130
    except ChildError as exc:
        print(f"bench_artifacts: error: {exc}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(work, ignore_errors=True)  # the plain/stock exports: hundreds of MB


def _check_args(parser: argparse.ArgumentParser, args: argparse.Namespace, work: Path) -> None:
    """Every option before minutes of conversion: one line naming the option."""
    for name in ("rounds", "runs", "block", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    if not 1 <= args.seq <= MAX_TOKENS:
        parser.error(f"--seq must be 1-{MAX_TOKENS} (MiniLM's longest input), got {args.seq}")
    if args.reuse and args.keep is None:
        parser.error("--reuse reads the artifacts of an earlier --keep DIR: give --keep DIR too")
    if args.keep is not None and args.keep.exists() and not args.keep.is_dir():
        parser.error(f"--keep {args.keep}: a file, not a directory")
    if args.json is not None:
        if args.json.is_dir():
            parser.error(f"--json {args.json}: a directory; name the file to write")
        parent = next((p for p in args.json.resolve().parents if p.exists()), None)
        if parent is None or not parent.is_dir() or not os.access(parent, os.W_OK):
            parser.error(f"--json {args.json}: cannot be written there ({parent} is not a writable directory)")
    from converters._errors import ConversionError
    from converters.options import prepare
    from converters.pruning.prune_model import PruneRequest
    from targets import ProfileError, UnknownTargetError, load_profile

    for target in _targets(args):
        try:
            load_profile(target.partition("/floor=")[0].partition("@")[0])
        except (UnknownTargetError, ProfileError) as exc:
            parser.error(f"--target {target}: {exc}")
        floor = target.partition("/floor=")[2]
        if floor:
            try:
                float(floor)
            except ValueError:
                parser.error(f"--target {target}: the /floor= suffix must be a number")
    if args.prune is not None:
        try:
            PruneRequest.parse(args.prune)
        except ConversionError as exc:  # "prune 'heads=2': ..." names the library's parameter
            text = str(exc)
            text = text if text.startswith("prune ") else f"prune {args.prune}: {text}"
            parser.error("--" + text)
    # The converter's own checks that need no model (the @METHOD suffix on a dynamic profile or
    # an unknown method, a floor out of range, --prune-floor with nothing to prune, an output
    # it may not replace): a traceback after the imports otherwise, or minutes later.
    for target in _targets(args):
        try:
            prepare(_convert_config(args, target, args.keep or work))
        except (ConversionError, UnknownTargetError, ProfileError) as exc:
            message = _as_options(str(exc))  # "--prune-floor 0.5 is ...": names its option already
            parser.error(message if message.startswith("--") else f"--target {target}: {message}")
    if args.reuse:
        _check_reused(parser, args)


# The converter's parameter names in its messages, as this script's options spell them.
_OPTIONS = (
    ("prune_floor=", "--prune-floor "),
    ("prune_floor", "--prune-floor"),
    ("prune=", "--prune "),
    ("calibration_method", "the @METHOD suffix"),
    ("accuracy_floor", "the /floor= suffix"),
    ("force=True", "converting into --keep"),
)


def _as_options(message: str) -> str:
    for name, option in _OPTIONS:  # the parameter; not a profile field (int8.calibration_method)
        message = re.sub(rf"(?<![\w.]){re.escape(name)}", option, message)
    return message


def _targets(args: argparse.Namespace) -> list[str]:
    return args.target or ["x86-avx2"]


def _convert_config(args: argparse.Namespace, target: str, kept_dir: Path):
    """What the converter is asked for one --target (TARGET[@METHOD][/floor=F])."""
    from converters import ConvertConfig

    spec, _, floor = target.partition("/floor=")
    profile_id, _, method = spec.partition("@")
    return ConvertConfig(
        model=None, target=profile_id, out=kept_dir / target.replace("/", "_"),
        calibration_method=method or None, accuracy_floor=float(floor) if floor else None,
        force=args.keep is not None, prune=args.prune, prune_floor=args.prune_floor,
    )


def _builtin_source() -> tuple[str, str]:
    """(name, weights sha256) of the model this script benchmarks, as a manifest's `source`
    records them (converters/inputs/source.py)."""
    from converters.inputs.source import _weights_sha256, default_model_dir

    return "sentence-transformers/all-MiniLM-L6-v2 (built-in)", _weights_sha256(default_model_dir())


def _check_reused(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """--reuse takes a directory only if it was converted from the model benchmarked here: the
    reference, the stock exports and the tokenizer are the built-in MiniLM's, so another model's
    artifacts failed after the stock exports with a numpy broadcast error (review 3, F3)."""
    import edge_runtime
    from converters.inputs.source import SourceModelError

    reused = [args.keep / t.replace("/", "_") for t in _targets(args)]
    reused = [d for d in reused if (d / "manifest.json").is_file()]
    if not reused:
        return
    try:
        name, sha256 = _builtin_source()
    except SourceModelError as exc:
        parser.error(f"--reuse: {exc}")
    for directory in reused:
        try:
            source = edge_runtime.read_manifest(directory).get("source") or {}
        except edge_runtime.EdgeRuntimeError as exc:
            parser.error(f"--reuse: {exc}")
        theirs, model = source.get("sha256"), source.get("name", "a nameless model")
        if theirs != sha256:
            hashed = "no weights hash"
            if isinstance(theirs, str):
                hashed = f"weights sha256 {theirs[:12]}"
            parser.error(
                f"--reuse: {directory} was converted from {model!r} ({hashed}), not from the model "
                f"benchmarked here, {name!r} (weights sha256 {sha256[:12]}); give another --keep "
                "(without --reuse the conversion replaces that directory)")


def _bench(args: argparse.Namespace, argv: list[str] | None, work: Path) -> int:

    from onnxruntime.quantization import QuantType, quantize_dynamic

    import edge_runtime
    from converters import convert
    from converters.core.arithmetic import ValidationSessions, choose_validation
    from converters.inputs.source import default_model_dir
    from edge_runtime._compat import arithmetic_problem
    from edge_runtime._device import detect
    from targets import load_profile

    kept_dir = args.keep or work
    targets = _targets(args)
    refused: dict[str, list[dict]] = {}
    for target in targets:
        existing = kept_dir / target.replace("/", "_")
        if args.reuse and (existing / "manifest.json").is_file():
            print(f"reusing {existing} for {target}", file=sys.stderr)
            refused[target] = edge_runtime.read_manifest(existing).get("refused", [])
            continue
        print(f"converting the built-in model for {target} ...", file=sys.stderr)

        def progress(message: str, target: str = target) -> None:
            check_interrupted()  # a safe point: a signal Python dropped in a finalizer comes again
            print(f"  [{target}] {message}", file=sys.stderr, flush=True)

        result = convert(_convert_config(args, target, kept_dir), progress)
        # An artifact the converter refused is a result too: reported below, never skipped silently.
        refused[target] = list(result.refused)

    plain = PlainExport(default_model_dir(), work)
    stock_default = work / "stock_int8_default.onnx"
    quantize_dynamic(str(plain.path), str(stock_default), weight_type=QuantType.QInt8)
    stock_pc = work / "stock_int8_pc_rr.onnx"
    quantize_dynamic(str(plain.path), str(stock_pc), weight_type=QuantType.QInt8, per_channel=True, reduce_range=True)

    stock_int4 = work / "stock_int4_matmulnbits.onnx"
    _stock_matmulnbits(plain.path, stock_int4)

    variants: dict[str, dict] = {
        "plain ORT FP32": {"kind": "ort", "path": plain.path, "files": [plain.path]},
        "stock quantize_dynamic (defaults)": {"kind": "ort", "path": stock_default, "files": [stock_default]},
        "stock quantize_dynamic (per_channel, reduce_range)": {"kind": "ort", "path": stock_pc, "files": [stock_pc]},
        "stock MatMulNBits INT4 (block 32, sym, level 4)": {"kind": "ort", "path": stock_int4,
                                                            "files": [stock_int4, stock_int4.with_name(stock_int4.name + ".data")]},
    }
    stock_tflite = StockTflite(plain, work, args.seq) if args.tflite else None
    if stock_tflite:
        for recipe_name, path in stock_tflite.paths.items():
            label = "stock litert-torch TFLite FP32" if recipe_name == "fp32" else f"stock TFLite {recipe_name}"
            variants[label] = {"kind": "tflite", "path": path, "files": [path]}
    for target in targets:
        artifacts = kept_dir / target.replace("/", "_")
        for entry in edge_runtime.read_manifest(artifacts)["artifacts"]:
            variants[f"edge-runtime {target} {entry['name']}"] = {
                "kind": "edge", "path": f"{artifacts}::{entry['name']}", "root": artifacts,
                "files": [artifacts / f["path"] for f in entry["files"]], "entry": entry,
            }

    # Speed belongs to an ISA: an artifact this CPU would compute wrongly (INT8 weights for an
    # int32 GEMM on a CPU that saturates int16 pair sums, edge_runtime/_compat.py) is scored with
    # its target's arithmetic (the converter's exact reference) and not timed here.
    device = detect()
    runners, untimed = {}, {}
    for name, v in variants.items():
        if v["kind"] == "ort":
            runners[name] = (_ort_session(v["path"], args.threads), plain.encode)
        elif v["kind"] == "tflite":
            runners[name] = (stock_tflite.runner(v["path"], args.threads), plain.encode)
        else:
            manifest = edge_runtime.read_manifest(v["root"])
            problem = arithmetic_problem(v["entry"], manifest, device)
            fp32 = edge_runtime.load(v["root"], artifact=f"{v['entry']['format']}-fp32", threads=args.threads)
            encode = lambda texts, m=fp32: m._text().encode(texts)  # noqa: E731 - same tokenizer for all
            if problem:
                untimed[name] = problem
                exact = ValidationSessions(choose_validation(load_profile(manifest["target"]["id"])), work)
                runners[name] = (exact(v["root"] / v["entry"]["files"][0]["path"]).run, encode)
                continue
            model = edge_runtime.load(v["root"], artifact=v["entry"]["name"], threads=args.threads)
            runners[name] = (model.run, lambda texts, m=model: m._text().encode(texts))

    # Accuracy on held-out texts.
    texts = _texts()
    want = plain.reference(texts)
    for name, (run, encode) in runners.items():
        vectors = []
        for start in range(0, len(texts), 16):
            feeds = encode(texts[start : start + 16])
            vectors.append(_pool(run(feeds)["last_hidden_state"], feeds["attention_mask"]))
        got = np.concatenate(vectors)
        cos = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
        variants[name].update(cosine_mean=float(cos.mean()), cosine_min=float(cos.min()))

    # Latency: one 128-token input, in interleaved rounds (edge_runtime._rounds). Each round cycles
    # through the variants in blocks of --block runs (each after a pause and one untimed run that
    # warms the caches the previous variant evicted) until every variant has --runs timings, so a
    # burst of load from another tenant lands on all variants of the round alike, the baseline
    # included; the order rotates each round.
    long_text = " ".join(texts)
    names = [name for name in runners if name not in untimed]
    timing = {name: {"p50": [], "p90": []} for name in names}
    feeds_of = {name: {k: v[:, : args.seq] for k, v in runners[name][1]([long_text]).items()} for name in names}

    def keep(finished: Round) -> None:
        for name in names:
            ms = np.asarray(finished.times[name]) * 1000
            timing[name]["p50"].append(float(np.percentile(ms, 50)))
            timing[name]["p90"].append(float(np.percentile(ms, 90)))
        print(f"round {finished.number}/{finished.total} done", file=sys.stderr)

    with CpuWait() as waited:  # how much of the timing other work kept a CPU from us
        timed = time_in_rounds({name: partial(runners[name][0], feeds_of[name]) for name in names},
                               args.rounds * args.runs, args.rounds, block=args.block, warmup=5, rewarm=True,
                               on_round=keep)
    for name, exc in timed.failures.items():
        raise RuntimeError(f"timing {name}: {type(exc).__name__}: {exc}") from exc
    base = timing["plain ORT FP32"]["p50"]
    for name in untimed:
        variants[name].update(p50_ms=float("nan"), p90_ms=float("nan"), ratio_p50=float("nan"),
                              ratio_own_fp32=float("nan"), ratio_rounds=[], not_timed=untimed[name])
    for name in names:
        t = timing[name]
        # The same target's FP32 artifact of the same format is the second baseline (issue 3
        # states TFLite targets against TFLite FP32).
        if name.startswith("edge-runtime"):
            own = name.rsplit("-", 1)[0] + "-fp32"
            own = own if not own.endswith("-int8-fp32") else own[: -len("-int8-fp32")] + "-fp32"  # *-int8-legacy
        elif name.startswith("stock TFLite"):
            own = "stock litert-torch TFLite FP32"
        else:
            own = "plain ORT FP32"
        own_base = timing.get(own, timing["plain ORT FP32"])["p50"]
        variants[name].update(
            p50_ms=statistics.median(t["p50"]), p90_ms=statistics.median(t["p90"]),
            ratio_p50=statistics.median(a / b for a, b in zip(t["p50"], base)),
            ratio_own_fp32=statistics.median(a / b for a, b in zip(t["p50"], own_base)),
            ratio_rounds=[round(a / b, 3) for a, b in zip(t["p50"], base)],
        )

    # Load time and RSS in fresh processes, each variant with its own empty device cache: the
    # first load builds it (XNNPACK weight cache for TFLite artifacts), the next ones reuse it.
    for name, v in variants.items():
        if name in untimed:
            v.update(load_first_ms=float("nan"), load_ms=float("nan"), rss_mb=float("nan"),
                     size_mb=_size(v["files"]) / 1e6)
            continue
        probes = []
        env = {**os.environ, "XDG_CACHE_HOME": tempfile.mkdtemp(prefix="bench-cache-", dir=work)}
        for _ in range(4):
            probes.append(_load_probe(name, v["kind"], str(v["path"]), args.threads, env))
        v.update(load_first_ms=probes[0]["load_s"] * 1000,
                 load_ms=statistics.median(p["load_s"] for p in probes[1:]) * 1000,
                 rss_mb=statistics.median(p["rss_mb"] for p in probes[1:]),
                 size_mb=_size(v["files"]) / 1e6)

    print(f"\n{device.cpu_model} ({device.arch}; {', '.join(sorted(device.isa_features & INTERESTING_FLAGS))}; "
          f"INT8 GEMM {device.int8_gemm}), {len(os.sched_getaffinity(0))} CPUs available")
    print(f"MiniLM-L6 (all-MiniLM-L6-v2), batch 1, {args.seq} tokens, {args.threads} threads, "
          f"{args.rounds} rounds x {args.runs} runs per variant, interleaved in blocks of {args.block}; "
          f"cosine on {len(texts)} held-out texts\n")
    print("| variant | size MB | p50 ms | p90 ms | p50 vs plain FP32 | p50 vs own-format FP32 | first load ms "
          "| load ms | RSS MB | cosine mean | cosine min |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, v in variants.items():
        print(f"| {name} | {v['size_mb']:.1f} | {v['p50_ms']:.2f} | {v['p90_ms']:.2f} | {v['ratio_p50']:.3f}x | "
              f"{v['ratio_own_fp32']:.3f}x | {v['load_first_ms']:.0f} | {v['load_ms']:.0f} | {v['rss_mb']:.0f} | "
              f"{v['cosine_mean']:.4f} | {v['cosine_min']:.4f} |")
    for name, v in variants.items():
        promoted = (v.get("entry") or {}).get("quantization", {}).get("promoted", {})
        if promoted.get("weights"):
            print(f"\n{name}: {len(promoted['weights'])} weight(s) promoted to {promoted['to']} by the search: "
                  f"{', '.join(promoted['weights'])}")
    for name, why in untimed.items():
        print(f"\n{name}: accuracy from its target's arithmetic (exact int32 reference), NOT TIMED here: {why}")
    for target, items in refused.items():
        for item in items:
            print(f"\nedge-runtime {target} {item['name']}: REFUSED by the converter: {item['reason']}")
    print("\nper-round p50 ratios: " + "; ".join(f"{n}: {variants[n]['ratio_rounds']}" for n in names))
    busy = busy_note(waited.share)
    if busy:
        print(f"\nnote: {busy}")
    if args.json:
        clean = {n: _recorded(v, args.keep) for n, v in variants.items()}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        if args.keep:
            clean["_keep"] = str(args.keep)  # what the variants' paths are relative to
        clean["_refused"] = refused
        clean["_device"] = device.to_dict()
        clean["_timing"] = {"batch": 1, "sequence": args.seq, "threads": args.threads, "rounds": args.rounds,
                            "runs": args.runs, "block": args.block, "cpu_wait_share": waited.rounded_share}
        clean["_command"] = " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])])
        args.json.write_text(json.dumps(clean, indent=2, allow_nan=False))
    return 0


def _recorded(variant: dict, keep: Path | None) -> dict:
    """A variant as the JSON records it: NaN (a variant not timed) as null, and a path only where
    it outlives the run: an edge-runtime artifact under --keep, as "DIR::ARTIFACT" relative to
    --keep. The plain and stock exports (and everything without --keep) are in the temporary
    work directory, removed at exit."""
    root = variant.get("root")
    kept = keep is not None and root is not None and Path(root).is_relative_to(keep)
    out = {}
    for key, value in variant.items():
        if key == "path" and kept:
            out[key] = f"{Path(root).relative_to(keep)}::{variant['entry']['name']}"
        elif key not in ("files", "entry", "root", "path"):
            out[key] = _json_value(value)
    return out


def _json_value(value):
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


if __name__ == "__main__":
    sys.exit(main())
