"""Checks made before a conversion does any work (issue 10, "Bad input gets a clear error").

- check_model_dir: the model directory has a readable config.json holding a JSON object, weights
  that are not truncated (safetensors header and length, the zip directory of a PyTorch .bin)
  and tokenizer files. Called by load_source before transformers reads anything, so a broken
  download is a SourceModelError naming the file, not a library's traceback.
- check_disk_space: enough free space for the planned artifacts and the work directory, on
  whichever filesystems hold the output and the temp dir. Called right after the profile and the
  source are loaded, before the staging directory is made.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from converters._errors import DiskSpaceError, SourceModelError

if TYPE_CHECKING:
    from converters.inputs.source import SourceModel
    from targets import TargetProfile

__all__ = ["ARTIFACT_SIZE", "WORK_SIZE", "DiskEstimate", "check_disk_space", "check_model_dir", "estimate"]

# Files a fast tokenizer can be built from: tokenizer.json, or the slow formats transformers
# converts (WordPiece vocab.txt; byte-level BPE vocab.json + merges.txt; sentencepiece models).
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "sentencepiece.bpe.model", "spiece.model")

# Artifact size as a share of the FP32 weight bytes (4 bytes a parameter). Upper bounds, so the
# check errs on refusing early rather than failing late. Measured on all-MiniLM-L6-v2
# (22.7M parameters, 90.9 MB FP32; x86-avx2): onnx-int8 is ~0.26 (INT8 weights, INT8 embedding
# rows, FP32 scales and the layers a fallback keeps in FP32), onnx-int4 ~0.16 (the profile's
# int4.size_budget) -> 0.3 and 0.2. TFLite artifacts of a precision are about the ONNX size.
ARTIFACT_SIZE = {"fp32": 1.0, "fp16": 0.5, "int8": 0.3, "int4": 0.2}
UNKNOWN_PRECISION_SIZE = 1.0  # a precision this table does not know yet: assume FP32's size
# The work directory at its peak, as a multiple of the FP32 weight bytes. Every step keeps its
# graph there until the end: export.onnx (1x), the INT8 preparation (packed Q/K/V, INT8 embedding
# rows, smoothed, first token split off, unfused: five graphs of ~0.6x, as the embeddings are
# already INT8 rows), the INT4 one (six of ~0.54x) and the quantized candidates. Measured on
# all-MiniLM-L6-v2 for x86-avx2 (90.4 MB FP32; 2026-12-01, du of the work directory every
# second): 713 MB at the peak, 7.9x. 10x leaves a margin (TFLite profiles were not measured).
# Same run, work directory plus staging directory at their joint peak: 842 MB; this estimate: ~1045 MB.
WORK_SIZE = 10.0
# Per artifact: graph protobuf, golden samples, and filesystem block rounding.
PER_ARTIFACT_SLACK = 1 << 20
MB = 1 << 20


@dataclass(frozen=True)
class DiskEstimate:
    fp32_bytes: int  # the source's weights in FP32
    artifact_bytes: int  # the finished directory: every planned artifact plus tokenizer files
    work_bytes: int  # the work directory's peak
    artifacts: tuple[tuple[str, int], ...]  # (name, bytes) per planned artifact

    def describe(self) -> str:
        parts = ", ".join(f"{name} {size / MB:.0f} MB" for name, size in self.artifacts)
        return (f"artifacts {self.artifact_bytes / MB:.0f} MB ({parts}; from {self.fp32_bytes / MB:.0f} MB "
                f"of FP32 weights), work directory {self.work_bytes / MB:.0f} MB")


def _source_bytes(source: SourceModel) -> tuple[int, int]:
    """(FP32 weight bytes, tokenizer file bytes). The weight files' size counts too: a checkpoint
    stored in FP32 with tied or buffer tensors can exceed 4 bytes per counted parameter."""
    root = Path(source.path)
    on_disk = sum(p.stat().st_size for p in root.glob("*.safetensors")) or sum(
        p.stat().st_size for p in root.glob("pytorch_model*.bin"))
    fp32 = max(4 * int(source.num_parameters), on_disk)
    tokenizer = sum(p.stat().st_size for p in root.iterdir() if p.is_file() and _is_tokenizer_file(p.name))
    return fp32, tokenizer


def _is_tokenizer_file(name: str) -> bool:
    return name in TOKENIZER_FILES or name == "merges.txt" or name.startswith(("tokenizer", "special_tokens"))


def estimate(profile: TargetProfile, source: SourceModel, pruned: bool = False) -> DiskEstimate:
    """A conservative size of what converting `source` for `profile` writes; `pruned`: also the
    pruned twins (counted at their unpruned size) and a second work tree for the pruned model."""
    from converters.inputs.plan import plan, pruned_plan

    fp32, tokenizer = _source_bytes(source)
    artifacts = tuple(
        (p.name, int(fp32 * ARTIFACT_SIZE.get(p.precision, UNKNOWN_PRECISION_SIZE)) + PER_ARTIFACT_SLACK)
        for p in plan(profile) + (pruned_plan(profile) if pruned else [])
    )
    # The device keeps a copy of the tokenizer in the artifact directory.
    total = sum(size for _, size in artifacts) + tokenizer + PER_ARTIFACT_SLACK
    return DiskEstimate(fp32, total, int(fp32 * WORK_SIZE) * (2 if pruned else 1), artifacts)


def _existing(path: Path) -> Path:
    """`path` or its nearest existing ancestor (the output's parent may not exist yet)."""
    path = Path(path).resolve()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _filesystem(path: Path) -> int:
    return os.stat(path).st_dev


def check_disk_space(profile: TargetProfile, source: SourceModel, out: Path,
                     temp_dir: Path | None = None, pruned: bool = False) -> DiskEstimate:
    """Raise DiskSpaceError unless the filesystems of `out` and of the temp dir have room for
    estimate(); when both are one filesystem it must hold both at once. The directories that
    killed conversions left (converters/packaging/package.py) are removed first: their space is free."""
    from converters.packaging import package

    out = Path(out).resolve()
    temp_dir = Path(temp_dir or tempfile.gettempdir())
    package.remove_leftovers(out.parent, package.staging_prefix(out))
    package.remove_leftovers(temp_dir, package.WORK_PREFIX)
    sizes = estimate(profile, source, pruned)
    out_fs, temp_fs = _existing(out.parent), _existing(temp_dir)
    if _filesystem(out_fs) == _filesystem(temp_fs):
        needs = [(out_fs, sizes.artifact_bytes + sizes.work_bytes, "the artifact directory and the work directory")]
    else:
        needs = [(out_fs, sizes.artifact_bytes, "the artifact directory"),
                 (temp_fs, sizes.work_bytes, "the work directory (temp dir)")]
    for path, needed, what in needs:
        free = shutil.disk_usage(path).free
        if free < needed:
            raise DiskSpaceError(
                f"not enough disk space at {path} for {what}: needs about {needed / MB:.0f} MB, "
                f"{free / MB:.0f} MB free ({sizes.describe()}); free some space, or choose another "
                "output directory or temp dir (TMPDIR)",
                str(path), needed, free,
            )
    return sizes


# --- the model directory -------------------------------------------------------------------


def _read_json_object(path: Path, what: str) -> dict[str, Any]:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise SourceModelError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SourceModelError(f"{what} {path} is not UTF-8 text (byte {exc.start}); is it the right file?") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SourceModelError(
            f"{what} {path} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    if not isinstance(value, dict):
        raise SourceModelError(f"{what} {path} must hold a JSON object, not a {type(value).__name__}")
    return value


def _check_safetensors(path: Path) -> None:
    """The header (8-byte little-endian length, then JSON) and that the tensors' byte ranges
    cover the file exactly (https://github.com/huggingface/safetensors, "Format"): a download cut
    short fails here instead of inside transformers."""
    size = path.stat().st_size

    def broken(why: str) -> SourceModelError:
        return SourceModelError(
            f"{path} is not a valid safetensors file ({why}): truncated or corrupted; download it again"
        )

    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            raise broken(f"{size} bytes, shorter than the 8-byte header length")
        (length,) = struct.unpack("<Q", head)
        if length > size - 8:
            raise broken(f"header of {length} bytes in a file of {size}")
        try:
            header = json.loads(handle.read(length).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise broken(f"header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise broken("header is not a JSON object")
    try:
        end = max((int(t["data_offsets"][1]) for k, t in header.items() if k != "__metadata__"), default=0)
    except (TypeError, KeyError, IndexError, ValueError):
        raise broken("a tensor entry has no data_offsets") from None
    if 8 + length + end != size:
        raise broken(f"tensors end at byte {8 + length + end}, the file has {size}")


def _check_weights(model_dir: Path) -> None:
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        weight_map = _read_json_object(index, "weight index").get("weight_map", {})
        missing = sorted({f for f in weight_map.values() if not (model_dir / f).is_file()})
        if missing:
            raise SourceModelError(f"{model_dir}: shard(s) {', '.join(missing)} listed in {index.name} are missing")
    safetensors = sorted(model_dir.glob("*.safetensors"))
    for path in safetensors:
        _check_safetensors(path)
    if safetensors:
        return
    bins = sorted(model_dir.glob("pytorch_model*.bin"))
    if not bins:
        raise SourceModelError(f"{model_dir} has no weights (model.safetensors or pytorch_model.bin)")
    for path in bins:
        with open(path, "rb") as handle:
            magic = handle.read(4)
        # torch.save writes a zip since PyTorch 1.6; its directory sits at the end of the file,
        # so a cut-short download has the zip magic but no readable directory.
        if magic == b"PK\x03\x04" and not zipfile.is_zipfile(path):
            raise SourceModelError(f"{path} is a truncated or corrupted PyTorch checkpoint; download it again")
        if not magic:
            raise SourceModelError(f"{path} is empty; download it again")


def check_model_dir(model_dir: Path) -> None:
    """Raise SourceModelError naming the file if `model_dir` is not a complete Hugging Face
    checkpoint: config.json, weights, tokenizer files."""
    model_dir = Path(model_dir)
    if not model_dir.exists():
        raise SourceModelError(f"model directory {model_dir} does not exist")
    if not model_dir.is_dir():
        raise SourceModelError(f"{model_dir} is not a directory; pass a Hugging Face model directory")
    if not (model_dir / "config.json").is_file():
        raise SourceModelError(
            f"{model_dir} is not a Hugging Face model directory: no config.json "
            "(expected config.json, model.safetensors or pytorch_model.bin, tokenizer files)"
        )
    _read_json_object(model_dir / "config.json", "model config")
    _check_weights(model_dir)
    present = [name for name in TOKENIZER_FILES if (model_dir / name).is_file()]
    if not present:
        raise SourceModelError(
            f"{model_dir} has no tokenizer files: expected tokenizer.json (or vocab.txt, vocab.json + "
            "merges.txt, sentencepiece.bpe.model); save the tokenizer with the model "
            "(tokenizer.save_pretrained)"
        )
    if "tokenizer.json" in present:
        _read_json_object(model_dir / "tokenizer.json", "tokenizer file")
    if "vocab.json" in present and "tokenizer.json" not in present and not (model_dir / "merges.txt").is_file():
        raise SourceModelError(f"{model_dir} has vocab.json but no merges.txt: the BPE tokenizer is incomplete")
