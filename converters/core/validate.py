"""Validation: compare an artifact with the PyTorch FP32 model on the validation texts.

The artifact runs through edge_runtime's own backend and pooling code, so the metrics in the
manifest are what a device computes. The validation texts are the split of the calibration
texts that no fitting step sees (converters/inputs/calibration.py, issue 10).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from converters._console import count
from converters._errors import NonFiniteOutputError
from converters.inputs.source import SourceModel
from edge_runtime._text import _head, pool, sentence_vectors
from targets import AccuracyFloor

__all__ = [
    "METRIC_BATCHES",
    "AgainstFile",
    "Reference",
    "check_finite",
    "compute_metrics",
    "encode",
    "floor_failures",
    "floor_shortfall",
    "make_batches",
    "meets_floor",
    "metric_batches",
    "reference_outputs",
    "rows_alone",
    "sequence_outputs",
]

Runner = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


@dataclass
class Reference:
    batches: list[dict[str, np.ndarray]]  # int64 feeds, padded per batch
    outputs: list[np.ndarray]  # the PyTorch FP32 output for each batch
    texts: tuple[str, ...] = ()  # the texts of the batches, in order (for error messages)
    # Per text: the largest |activation| entering any Linear layer of the FP32 model, real
    # tokens only (what the INT8 GEMMs quantize): golden samples are chosen by it
    # (converters/packaging/golden.py). Empty when not measured.
    peaks: tuple[float, ...] = ()

    def head(self, count: int | None) -> Reference:
        """The first `count` batches (None: all), with their texts."""
        if count is None:
            return self
        rows = sum(len(b["input_ids"]) for b in self.batches[:count])
        return Reference(self.batches[:count], self.outputs[:count], self.texts[:rows], self.peaks[:rows])

    def spread(self, count: int | None, batch_size: int = 16) -> Reference:
        """`count` texts picked evenly along the length order (the shortest and the longest
        included: short inputs set the worst-case cosine), re-batched by length so that a batch
        carries little padding. None, or at least every text: all of them, re-batched. The
        ranking subset of every search (converters/core/search.py)."""
        rows = []  # (length, batch, row)
        for b, feeds in enumerate(self.batches):
            for r, length in enumerate(feeds["attention_mask"].sum(axis=1)):
                rows.append((int(length), b, r))
        rows.sort()
        if count is not None and count < len(rows):
            rows = [rows[int(i)] for i in np.unique(np.linspace(0, len(rows) - 1, count).round().astype(int))]
        first = np.cumsum([0] + [len(f["input_ids"]) for f in self.batches])
        pad = self._pad_id()
        batches, outputs, texts, peaks = [], [], [], []
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            width = max(length for length, _, _ in chunk)
            feeds = {}
            for name in self.batches[0]:
                value = np.full((len(chunk), width), pad if name == "input_ids" else 0, np.int64)
                for i, (length, b, r) in enumerate(chunk):
                    value[i, :length] = self.batches[b][name][r, :length]
                feeds[name] = value
            batches.append(feeds)
            sample = self.outputs[chunk[0][1]]
            if sample.ndim >= 3:  # [batch, sequence, ...]: real tokens only, zeros after
                out = np.zeros((len(chunk), width) + sample.shape[2:], sample.dtype)
                for i, (length, b, r) in enumerate(chunk):
                    out[i, :length] = self.outputs[b][r, :length]
            else:
                out = np.stack([self.outputs[b][r] for _, b, r in chunk])
            outputs.append(out)
            texts += [self.texts[first[b] + r] for _, b, r in chunk if first[b] + r < len(self.texts)]
            peaks += [self.peaks[first[b] + r] for _, b, r in chunk if first[b] + r < len(self.peaks)]
        return Reference(batches, outputs, tuple(texts), tuple(peaks))

    def _pad_id(self) -> int:
        """The padding token id the batches were made with (0 when no row is padded)."""
        for feeds in self.batches:
            padded = feeds["attention_mask"] == 0
            if padded.any():
                return int(feeds["input_ids"][padded][0])
        return 0


def _heads(source: SourceModel, texts: list[str]) -> list[str]:
    """Each text's head (edge_runtime._text._head, cut at a space: its first max_length tokens are
    the whole text's), the whole text when its head does not fill max_length. Truncation tokenizes
    a text whole before cutting it: one 10.8 MB calibration line took 1.97 GB and 15 s (a review,
    session 50)."""
    heads = []
    for text in texts:
        head = _head(text, source.max_length)
        if head is not text and len(source.tokenizer(head)["input_ids"]) <= source.max_length:
            head = text
        heads.append(head)
    return heads


def encode(source: SourceModel, texts: list[str]) -> dict[str, np.ndarray]:
    """int64 feeds for `texts`, padded to the longest; token types default to zeros."""
    enc = source.tokenizer(
        _heads(source, list(texts)), padding=True, truncation=True, max_length=source.max_length,
        return_tensors="np"
    )
    ids = enc["input_ids"].astype(np.int64)
    feeds = {"input_ids": ids, "attention_mask": enc["attention_mask"].astype(np.int64)}
    if "token_type_ids" in source.input_names:
        types = enc.get("token_type_ids")
        feeds["token_type_ids"] = np.zeros_like(ids) if types is None else types.astype(np.int64)
    return feeds


def make_batches(source: SourceModel, texts: tuple[str, ...], batch_size: int = 16) -> list[dict]:
    return [encode(source, texts[start : start + batch_size]) for start in range(0, len(texts), batch_size)]


def reference_outputs(source: SourceModel, texts: tuple[str, ...], progress=None, label: str = "") -> Reference:
    """PyTorch FP32 outputs for `texts` (batches of 16), and each text's activation peak: the
    largest |input| of any Linear layer over its real tokens, recorded by forward hooks in the
    same pass (no extra model run). `progress`: told `label` done/total after each batch (a
    large --calibration file takes minutes here)."""
    import torch

    batches = make_batches(source, texts)
    outputs, peaks = [], []
    current: dict[str, torch.Tensor] = {}

    def record(_module, args, _output) -> None:
        x = args[0].detach().abs()
        mask = current["mask"]
        if x.dim() == 3 and tuple(x.shape[:2]) == tuple(mask.shape):
            row = (x * mask[:, :, None]).amax(dim=(1, 2))  # padded positions left out
        else:  # [batch, K]: pooler / classifier inputs
            row = x.reshape(x.shape[0], -1).amax(dim=1)
        current["peak"] = torch.maximum(current["peak"], row.to(torch.float32))

    hooks = [m.register_forward_hook(record) for m in source.module.modules() if isinstance(m, torch.nn.Linear)]
    try:
        with torch.no_grad():
            for done, feeds in enumerate(batches):
                if progress is not None:
                    progress(count(label, done, len(batches)))
                current["mask"] = torch.from_numpy(feeds["attention_mask"]).to(torch.float32)
                current["peak"] = torch.zeros(len(feeds["input_ids"]), dtype=torch.float32)
                args = [torch.from_numpy(feeds[name]) for name in source.input_names]
                outputs.append(source.module(*args).numpy())
                peaks.extend(float(v) for v in current["peak"])
        if progress is not None:
            progress(count(label, len(batches), len(batches)))
    finally:
        for hook in hooks:
            hook.remove()
    return Reference(batches, outputs, tuple(texts), tuple(peaks))


def row_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine of each row (last axis) of `a` with the same row of `b`, in float64."""
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    return (a * b).sum(-1) / np.clip(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-30, None)


def check_finite(got: np.ndarray, texts: tuple[str, ...], first_row: int, artifact: str) -> None:
    """Raise NonFiniteOutputError naming `artifact` and the first text whose output row holds a
    NaN or Inf anywhere (padded positions included: pooling multiplies them by zero, and
    NaN * 0 is NaN)."""
    bad = ~np.isfinite(got.reshape(len(got), -1)).all(axis=1)
    if bad.any():
        row = int(np.argmax(bad))
        index = first_row + row
        text = texts[index] if index < len(texts) else f"<row {index}>"
        raise NonFiniteOutputError(artifact, text, index)


def sequence_outputs(source: SourceModel) -> frozenset[str]:
    """The outputs with a [batch, sequence, ...] layout: hidden states and token logits."""
    return frozenset(source.output_names[:1]) if source.task != "text-classification" else frozenset()


def rows_alone(run: Runner, sequence_outputs: frozenset[str]) -> Runner:
    """`run` fed one row at a time, each cut to its own length (right padding, read from
    `attention_mask`), the outputs stacked back: sequence outputs (`sequence_outputs`) padded to
    the batch width with zeros where the row had padding. For TFLite artifacts: edge_runtime
    runs them a row at a time anyway, in the signature bucket of the widest row, so a 40-token
    text batched with a 70-token one ran at 128 tokens; alone it runs at 64, which is what
    `Model.embed` does with one text (each text alone, unpadded). Real tokens' outputs do not
    depend on the bucket (masked keys add exact zeros; MiniLM's TFLite FP32/INT8/INT4 measured
    bit-identical at buckets 64, 128 and 256), and the searches' ranking subset runs 0.55x the
    tokens (validation: 0.76x). Batches whose mask is not right-padded run as they are."""

    def alone(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        mask = feeds.get("attention_mask")
        if mask is None or mask.ndim != 2 or mask.shape[0] == 0:
            return run(feeds)
        lengths = mask.astype(bool).sum(axis=1)
        width = mask.shape[1]
        if not np.array_equal(mask.astype(bool), np.arange(width)[None, :] < lengths[:, None]):
            return run(feeds)  # not right-padded: no cut is safe
        rows = [run({name: value[r : r + 1, : max(int(lengths[r]), 1)] for name, value in feeds.items()})
                for r in range(mask.shape[0])]
        out = {}
        for name in rows[0]:
            parts = [row[name] for row in rows]
            if name in sequence_outputs:
                parts = [np.pad(part, [(0, 0), (0, width - part.shape[1])] + [(0, 0)] * (part.ndim - 2))
                         for part in parts]
            out[name] = np.concatenate(parts, axis=0)
        return out

    return alone


# How each format's recorded metrics batch the validation texts (manifest "metrics_batches").
METRIC_BATCHES = {"onnx": "padded batches of 16, texts in the order given",
                  "tflite": "padded batches of 16, texts sorted by length"}


def metric_batches(reference: Reference, fmt: str) -> Reference:
    """The validation texts as an artifact's recorded metrics run them. ONNX: in the padded
    batches of 16 they came in (dynamic INT8 takes one activation scale per batch, so the
    batches are part of its numbers). TFLite: re-batched by length. edge_runtime runs a TFLite
    batch row by row, each row padded to the bucket of the batch's longest text, and no
    recipe's activation quantization looks past its row (per row, or static): the batches only
    choose buckets. On MiniLM's four TFLite artifacts the metrics were identical to 1e-10 either
    way, length-sorted in 0.55x the time (benchmarks/RESULTS.md run AL). Padding is still run
    (every row padded to its bucket), and a non-finite value there still fails the metrics."""
    return reference.spread(None) if fmt == "tflite" else reference


def compute_metrics(
    source: SourceModel, reference: Reference, run: Runner, artifact: str = "the artifact"
) -> dict[str, float]:
    """Task metrics of `run` against the reference, over every text of `reference`.

    NaN or Inf anywhere in the outputs is NonFiniteOutputError naming `artifact` and the first
    bad text, never a metric."""
    output = source.output_names[0]
    cosines, agree, total, first_row = [], 0, 0, 0
    for feeds, want in zip(reference.batches, reference.outputs):
        got = run(feeds)[output]
        check_finite(got, reference.texts, first_row, artifact)
        first_row += len(got)
        mask = feeds["attention_mask"]
        if source.task == "feature-extraction":
            post = source.postprocess
            emb_got = sentence_vectors(got, mask, post)
            emb_want = sentence_vectors(want, mask, post)
            cosines.append(row_cosine(emb_got, emb_want))
        elif source.task == "text-classification":
            agree += int((got.argmax(-1) == want.argmax(-1)).sum())
            total += len(got)
            cosines.append(row_cosine(got, want))
        else:  # token-classification: real tokens only
            keep = mask.astype(bool)
            agree += int((got.argmax(-1) == want.argmax(-1))[keep].sum())
            total += int(keep.sum())
            cosines.append(row_cosine(got[keep], want[keep]))
    cos = np.concatenate(cosines)
    if source.task == "feature-extraction":
        return {"cosine_mean": float(cos.mean()), "cosine_min": float(cos.min())}
    return {
        "top1_agreement": agree / total,
        "logits_cosine_mean": float(cos.mean()),
        "logits_cosine_min": float(cos.min()),
    }


class AgainstFile:
    """A quantizer's score when its caller gives none (a library call without a PyTorch source;
    the pipeline scores every search with compute_metrics): agreement of a candidate file with a
    reference file (its FP32 form) on the same feeds. `outputs(path, feeds) -> [first output per
    feed]` runs a file in its format. The score is compute_metrics' for an embedding without
    normalization: cosine per row of the mask-mean-pooled output where it has a sequence axis (a
    per-token cosine would hide errors all tokens share), per row otherwise; NaN or Inf is a
    NonFiniteOutputError naming the row."""

    def __init__(self, outputs: Callable[[Path, Sequence[dict]], list[np.ndarray]], reference: Path,
                 feeds: Sequence[dict[str, np.ndarray]]):
        self.outputs, self.feeds = outputs, list(feeds)
        self.reference = outputs(Path(reference), self.feeds)

    def metrics(self, path: Path, subset: Sequence[int] | None = None) -> dict[str, float]:
        """cosine_mean / cosine_min of the file at `path` on every feed, or on the feeds `subset`."""
        picked = range(len(self.feeds)) if subset is None else subset
        got = self.outputs(Path(path), [self.feeds[i] for i in picked])
        cosines, first = [], 0
        for i, out in zip(picked, got):
            check_finite(out, (), first, Path(path).name)
            first += len(out)
            want, mask = self.reference[i], self.feeds[i]["attention_mask"]
            if out.ndim == 3:
                out, want = pool(out, mask, "mean", False), pool(want, mask, "mean", False)
            cosines.append(row_cosine(out.reshape(len(out), -1), want.reshape(len(want), -1)))
        cos = np.concatenate(cosines)
        return {"cosine_mean": float(cos.mean()), "cosine_min": float(cos.min())}


def meets_floor(value: float, floor: float) -> bool:
    """A floor holds only when the metric is finite and `value >= floor`: written as `not value <
    floor`, a NaN metric passed every floor (issue 10)."""
    return math.isfinite(value) and value >= floor


def floor_shortfall(metrics: dict[str, float], floor: AccuracyFloor,
                    keys: tuple[str, ...] = ("cosine_mean", "cosine_min", "top1_agreement")) -> float:
    """How far `metrics` miss `floor`, summed over the metrics it checks among `keys` (0 when
    every one is met; inf when one is NaN): what a search weighs (converters/core/search.py)."""
    checks = {"cosine_mean": floor.cosine_mean, "cosine_min": floor.cosine_min,
              "top1_agreement": floor.top1_agreement}
    total = 0.0
    for key, needed in checks.items():
        if key in metrics and key in keys:
            if not math.isfinite(metrics[key]):
                return math.inf
            total += max(0.0, needed - metrics[key])
    return total


def _below(value: float, floor: float) -> str:
    """`value` with 4 decimals, or as many more as it takes to show it below `floor` (0.99999994
    against a floor of 0.9999999 must not read "1.0000 < floor 0.9999999")."""
    for digits in range(4, 12):
        text = f"{value:.{digits}f}"
        if float(text) < floor:
            return text
    return repr(value)


def floor_failures(metrics: dict[str, float], floor: AccuracyFloor) -> list[str]:
    """Every metric that does not reach the profile's floor (NaN included), with its numbers."""
    checks = {
        "cosine_mean": floor.cosine_mean,
        "cosine_min": floor.cosine_min,
        "top1_agreement": floor.top1_agreement,
    }
    return [
        f"{key} {_below(metrics[key], needed)} < floor {needed}"
        if math.isfinite(metrics[key])
        else f"{key} {metrics[key]} is not a number >= floor {needed}"
        for key, needed in checks.items()
        if key in metrics and not meets_floor(metrics[key], needed)
    ]

