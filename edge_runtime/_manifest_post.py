"""The manifest's postprocess section: what embed() and classify() read besides the tensors.

read_manifest (_manifest.py) calls check_postprocess, so a malformed section is a ManifestError at
load, never a KeyError, an IndexError or a wrong label name at the first embed() or classify().
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edge_runtime._errors import ManifestError
from edge_runtime._text import POOLING_MODES

__all__ = ["check_postprocess"]


def check_postprocess(manifest: dict[str, Any], path: Path) -> None:
    """The section may be absent (raw tensors only: embed/classify then say they need it)."""
    post = manifest.get("postprocess")
    outputs = [spec["name"] for spec in manifest["outputs"]]
    if post is None:
        return
    if not isinstance(post, dict):
        raise ManifestError(f"{path}: postprocess must be an object")
    if manifest["task"] == "feature-extraction":
        if not isinstance(post.get("pooling"), str) or not isinstance(post.get("normalize"), bool):
            raise ManifestError(f"{path}: postprocess needs a string pooling and a boolean normalize")
        if post["pooling"] not in POOLING_MODES:  # else every embed() would fail after a good load
            raise ManifestError(f"{path}: postprocess.pooling {post['pooling']!r} is not one of {list(POOLING_MODES)}")
        if post.get("output") not in outputs:
            raise ManifestError(f"{path}: postprocess.output {post.get('output')!r} is not one of the "
                                f"outputs {outputs}")
        _check_truncate_dim(post, manifest, path)
    elif manifest["task"] in ("text-classification", "token-classification"):
        labels = post.get("labels")
        if not isinstance(labels, list) or not labels or not all(isinstance(label, str) for label in labels):
            raise ManifestError(f"{path}: postprocess.labels must be a non-empty list of label names for "
                                f"{manifest['task']}")
        if "logits" not in outputs:
            raise ManifestError(f"{path}: a {manifest['task']} model needs an output named 'logits', has {outputs}")
        _check_labels_fit(labels, manifest, path)


def _last_axis(manifest: dict[str, Any], output: str) -> Any:
    """The output's last axis: an int, a name (known at run time only) or None (no axes)."""
    shape = next(spec["shape"] for spec in manifest["outputs"] if spec["name"] == output)
    return shape[-1] if shape else None


def _check_truncate_dim(post: dict[str, Any], manifest: dict[str, Any], path: Path) -> None:
    """truncate_dim (sentence-transformers' Matryoshka truncation; absent: every value) is a count
    of leading values no larger than the vectors: a wrong one would cut every embedding wrongly."""
    keep = post.get("truncate_dim")
    if keep is None:
        return
    dim = _last_axis(manifest, post["output"])
    high = dim if isinstance(dim, int) else 2**31 - 1
    if type(keep) is not int or not 1 <= keep <= high:  # type(): a bool is no count
        raise ManifestError(f"{path}: postprocess.truncate_dim must be an integer in 1..{high} (the "
                            f"{post['output']} vectors' size), got {keep!r:.40}")


def _check_labels_fit(labels: list[str], manifest: dict[str, Any], path: Path) -> None:
    """One label per logit: classify() names a row's best score by its index into the labels (an
    IndexError on the first call when there are fewer, a wrong name silently when there are more).
    A last axis recorded by name is only known at run time: classify() checks it then."""
    last = _last_axis(manifest, "logits")
    if isinstance(last, int) and last != len(labels):
        shape = next(spec["shape"] for spec in manifest["outputs"] if spec["name"] == "logits")
        raise ManifestError(f"{path}: postprocess.labels has {len(labels)} names but the logits output gives "
                            f"{last} scores per row (outputs' logits shape {shape}); one label per score")
