"""Pass: export the PyTorch model to one FP32 .tflite file with a signature per sequence bucket.

TFLite graphs have static shapes. Instead of one dynamic graph we convert the same module once
per bucket length L (batch 1) into signatures named f"seq{L}" that share their weights in one
flatbuffer (4 buckets cost ~1% more than one: only the per-bucket position-embedding slices are
duplicated). The runtime pads a batch to the smallest bucket >= its length and runs row by row
(edge_runtime/backends/tflite.py); it reads the buckets back from the signatures, so the file is
self-describing.

Converted with litert-torch (no TensorFlow). Facts this relies on (docs/notes/tflite-findings.md):
- litert-torch lowers with enable_x64=False: int64 inputs would be silently narrowed to int32,
  so the signatures take int32 explicitly.
- inputs passed as `sample_kwargs` keep their keyword names in the signature, and a dict
  returned by the module names the outputs; without both they would be args_0.., output_0.
- transformers 5's own mask builder lowers to GATHER_ND v5 / LOGICAL_AND / SELECT_V2 (outside
  XNNPACK, too new for tflite-runtime 2.14); the additive mask of `build_wrapper` avoids them.
"""

from __future__ import annotations

import collections
import contextlib
import io
import logging
import re
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from converters._console import CountCallback
from converters._errors import ConversionError
from converters.inputs.source import SourceModel, build_wrapper
from converters.tflite.flatbuffer import op_counts

__all__ = [
    "TFLITE_EXPORT_CONFIG_VERSION",
    "TfliteExportConfig",
    "export_tflite",
    "ops_outside_delegate",
    "signature_name",
]

log = logging.getLogger(__name__)

TFLITE_EXPORT_CONFIG_VERSION = 1
# Parity of each signature against PyTorch on its own sample input, checked after export.
# FP32 conversion is ~1e-6 off (different summation order); 1e-3 relative to the output's
# scale catches a wrong graph without flagging rounding.
_PARITY_RTOL = 1e-3


@dataclass(frozen=True)
class TfliteExportConfig:
    # Sequence lengths to build signatures for; those longer than the model's max_length are
    # dropped (its position table has no rows for them).
    buckets: tuple[int, ...] = (32, 64, 128, 256)
    version: int = TFLITE_EXPORT_CONFIG_VERSION

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def signature_name(length: int) -> str:
    return f"seq{length}"


def _buckets(source: SourceModel, config: TfliteExportConfig) -> list[int]:
    bad = [b for b in config.buckets if not isinstance(b, int) or isinstance(b, bool) or b < 1]
    if bad:
        raise ConversionError(f"TfliteExportConfig.buckets must be positive ints; got {bad}")
    kept = sorted({b for b in config.buckets if b <= source.max_length})
    dropped = sorted({b for b in config.buckets if b > source.max_length})
    if dropped:
        log.info(
            "tflite export: buckets %s exceed max_length %d of %s; dropped",
            dropped,
            source.max_length,
            source.name,
        )
    if not kept:
        raise ConversionError(
            f"no TFLite bucket fits {source.name}: buckets {sorted(config.buckets)} all exceed its "
            f"max_length {source.max_length}; pass buckets <= {source.max_length}"
        )
    return kept


def _io_module(source: SourceModel):
    """The source model with named int32 inputs and a named output (dict), additive mask."""
    import torch

    uses_token_types = "token_type_ids" in source.input_names
    inner = build_wrapper(source.module.inner, source.task, uses_token_types, mask_style="additive")
    output_name = source.output_names[0]

    class TfliteIO(torch.nn.Module):
        def __init__(self, wrapped: torch.nn.Module):
            super().__init__()
            self.wrapped = wrapped

        def forward(self, input_ids, attention_mask, token_type_ids=None):
            # The HF embeddings index with any integer dtype, but RoBERTa's position-id
            # arithmetic and the reference runs use int64: cast inside the graph. With
            # enable_x64=False litert-torch narrows this back to int32 (no CAST op survives).
            args = [input_ids.long(), attention_mask.long()]
            if uses_token_types:
                args.append(token_type_ids.long())
            return {output_name: self.wrapped(*args)}

    return TfliteIO(inner).eval()


def _sample(source: SourceModel, length: int, seed: int) -> dict[str, Any]:
    """int32 feeds for one bucket, the second half masked so the trace sees a real mask."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    # the embedding table, not the tokenizer: added tokens can make the tokenizer longer
    vocab = int(source.module.inner.get_input_embeddings().num_embeddings)
    ids = torch.randint(5, vocab, (1, length), generator=generator, dtype=torch.int32)
    mask = torch.ones(1, length, dtype=torch.int32)
    mask[0, max(1, length // 2) :] = 0
    ids[mask == 0] = source.pad_token_id
    feeds = {"input_ids": ids, "attention_mask": mask}
    if "token_type_ids" in source.input_names:
        feeds["token_type_ids"] = torch.zeros_like(ids)
    return feeds


def ops_outside_delegate(interpreter) -> dict[str, Any] | None:
    """Ops of the interpreter's primary subgraph that XNNPACK did not take, after one run.

    Uses the interpreter's private _get_ops_details(): the original nodes plus one DELEGATE
    node per partition. With a single partition, the ops upstream of its inputs or downstream
    of its outputs are the ones left to the builtin kernels. None when this cannot be told.
    """
    try:
        ops = interpreter._get_ops_details()
    except (AttributeError, RuntimeError, ValueError):
        return None
    delegates = [o for o in ops if o["op_name"] == "DELEGATE"]
    plain = [o for o in ops if o["op_name"] != "DELEGATE"]
    if len(delegates) != 1:
        return {"delegate_partitions": len(delegates)} | (
            {"ops": dict(collections.Counter(o["op_name"] for o in plain))} if not delegates else {}
        )
    producer = {int(t): o for o in plain for t in o["outputs"]}
    consumers: dict[int, list] = collections.defaultdict(list)
    for o in plain:
        for t in o["inputs"]:
            consumers[int(t)].append(o)
    outside: dict[int, str] = {}
    stack = [int(t) for t in delegates[0]["inputs"] if int(t) in producer]
    while stack:
        op = producer[stack.pop()]
        if op["index"] not in outside:
            outside[op["index"]] = op["op_name"]
            stack += [int(t) for t in op["inputs"] if int(t) in producer]
    stack = [int(t) for t in delegates[0]["outputs"]]
    while stack:
        for op in consumers.get(stack.pop(), []):
            if op["index"] not in outside:
                outside[op["index"]] = op["op_name"]
                stack += [int(t) for t in op["outputs"]]
    return {
        "delegate_partitions": 1,
        "ops": dict(collections.Counter(outside.values()).most_common()),
    }


# litert-torch's progress tree (rich's console, wrapped at its width): "(00:08) [ DONE] LiteRT-Torch
# Convert > Lower to MLIR: seq64 (+00:03)"; a line that does not start with "(MM:SS) [" continues the
# one before. Top-level stages: per signature a torch.export and a lowering, then FX passes, merging,
# the converter's passes, and "Write Model to PATH" (_stage_count).
_LINE_START = re.compile(r"^\(\d+:\d+\) \[")
_DONE = re.compile(r"^\(\d+:\d+\) \[ DONE\] (?P<stack>.*) \(\+\d+:\d+\)$")


def _stage_count(signatures: int) -> int:
    return 2 * signatures + 4


def _top_level(stack: str) -> bool:
    parts = stack.split(" > ")
    return (len(parts) == 2 and parts[0] == "LiteRT-Torch Convert") or (len(parts) == 1 and stack.startswith("Write Model"))


class _StageTap(io.StringIO):
    """litert-torch's stdout, kept whole for error messages, its finished top-level stages told
    to `progress(done, total)` as they are printed. A tree that no longer looks like this (another
    litert-torch release) is only kept: no count, and never one past `total`."""

    def __init__(self, total: int, progress: CountCallback | None):
        super().__init__()
        self.total, self.done, self._progress = total, 0, progress
        self._partial, self._line = "", ""  # the unfinished physical line; the logical line so far
        if progress is not None:
            progress(0, total)

    def write(self, text: str) -> int:
        written = super().write(text)
        if self._progress is not None:
            *lines, self._partial = (self._partial + text).split("\n")
            for line in lines:
                self._line = line.rstrip() if _LINE_START.match(line) else f"{self._line} {line.strip()}"
                done = _DONE.match(self._line)
                if done and _top_level(done["stack"]) and self.done < self.total:
                    self.done += 1
                    self._progress(self.done, self.total)
        return written


def export_tflite(
    source: SourceModel, out_path: Path, config: TfliteExportConfig,
    progress: CountCallback | None = None,
) -> dict[str, Any]:
    """Convert `source` into one .tflite at `out_path`; returns what was produced. `progress(done,
    total)` hears litert-torch's stages (_StageTap): the export takes tens of seconds.

    Precondition: `source` is a loaded SourceModel (any supported type and task).
    Postcondition (checked on the written file): one signature per kept bucket, named
    f"seq{L}", with int32 [1, L] inputs named like source.input_names, one output named like
    source.output_names[0], and outputs equal to PyTorch's on a sample within _PARITY_RTOL.
    """
    import torch

    buckets = _buckets(source, config)
    module = _io_module(source)
    samples = {length: _sample(source, length, seed=length) for length in buckets}
    out_path = Path(out_path)

    import litert_torch

    started = time.perf_counter()
    converter = litert_torch
    # litert-torch prints a progress tree on stdout; the pipeline has its own progress lines. It is
    # kept for the error message, and its stages counted.
    printed = _StageTap(_stage_count(len(buckets)), progress)
    with contextlib.redirect_stdout(printed), warnings.catch_warnings():
        # torch.export deprecation warnings raised inside torch's own pytree code (copyreg:
        # "isinstance(treespec, LeafSpec) is deprecated"), once per signature: not ours to fix.
        warnings.filterwarnings("ignore", message=r".*LeafSpec", category=FutureWarning)
        try:
            for length in buckets:
                converter = converter.signature(
                    signature_name(length), module, sample_kwargs=samples[length]
                )
            converter.convert().export(str(out_path))
        except Exception as exc:  # litert-torch raises torch.export / MLIR errors of many types
            tail = printed.getvalue().strip().splitlines()[-20:]
            raise ConversionError(
                f"litert-torch could not convert {source.name} "
                f"({source.model_type}, {source.task}) "
                f"to TFLite: {type(exc).__name__}: {exc}"
                + ("\nlitert-torch printed:\n" + "\n".join(tail) if tail else "")
            ) from exc
    seconds = time.perf_counter() - started

    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(out_path), num_threads=1)
    signatures = interpreter.get_signature_list()
    output_name = source.output_names[0]
    problems, parity = [], {}
    for length in buckets:
        key = signature_name(length)
        spec = signatures.get(key)
        if spec is None:
            problems.append(f"{key}: missing (file has {sorted(signatures)})")
            continue
        if sorted(spec["inputs"]) != sorted(source.input_names) or spec["outputs"] != [output_name]:
            problems.append(
                f"{key}: inputs {spec['inputs']} outputs {spec['outputs']}; "
                f"expected {source.input_names} -> [{output_name}]"
            )
            continue
        runner = interpreter.get_signature_runner(key)
        details = runner.get_input_details()
        for name in source.input_names:
            if details[name]["dtype"] != np.int32 or list(details[name]["shape"]) != [1, length]:
                problems.append(
                    f"{key}.{name}: {details[name]['dtype'].__name__} "
                    f"{list(details[name]['shape'])}; expected int32 [1, {length}]"
                )
        got = runner(**{name: value.numpy() for name, value in samples[length].items()})[
            output_name
        ]
        with torch.no_grad():
            want = module(**samples[length])[output_name].numpy()
        err = float(np.abs(got - want).max()) if got.shape == want.shape else float("inf")
        parity[key] = err
        if not err <= _PARITY_RTOL * max(1.0, float(np.abs(want).max())):
            problems.append(
                f"{key}: max |tflite - torch| = {err:.3g} (shape {got.shape} vs {want.shape})"
            )
    if problems:
        raise ConversionError(
            f"TFLite export of {source.name} is wrong:\n  " + "\n  ".join(problems)
        )

    outside = ops_outside_delegate(interpreter)  # primary subgraph, delegate applied above
    return {
        "path": str(out_path),
        "bytes": out_path.stat().st_size,
        "config": config.as_dict(),
        "buckets": buckets,
        "signatures": {signature_name(n): n for n in buckets},
        "input_names": list(source.input_names),
        "input_dtype": "int32",
        "output_names": [output_name],
        "max_abs_diff": parity,
        "op_counts": op_counts(out_path),
        "ops_outside_xnnpack": outside,
        "seconds": round(seconds, 2),
        "tool": {"litert_torch": litert_torch.__version__},
    }
