"""Where onnxruntime looks for an ONNX model's external data, and what it refuses.

onnxruntime 1.32 reads `NAME.onnx.data` next to the model path it is given, and refuses one that
is a symlink resolving outside the directory the model file itself resolves into ("External data
path escapes model directory"). The artifact directory may hold links to files elsewhere
(docs/guarantees.md: the huggingface_hub snapshot layout links both files into one blobs/
directory, which passes), but a `.data` linked alone to another directory cannot load. Said up
front, as a layout error, rather than as onnxruntime's text after a load attempt, or a quiet fall
back to another artifact (a review, session 51)."""

from __future__ import annotations

from pathlib import Path

from edge_runtime._errors import ManifestError

__all__ = ["check_external_data_link"]


def check_external_data_link(model_path: Path) -> None:
    """Raise ManifestError when `model_path`'s `.data` file is a link onnxruntime refuses."""
    data = model_path.with_name(model_path.name + ".data")
    if not data.is_symlink():
        return
    try:
        target, allowed = data.resolve(strict=True), model_path.resolve(strict=True).parent
    except (OSError, RuntimeError):  # a dangling link or a loop: the hash check says which
        return
    if target.is_relative_to(allowed):
        return
    raise ManifestError(
        f"{data} links to {target}, outside {allowed} (where {model_path.name} resolves): onnxruntime "
        f"reads a model's external data only from the directory its model file is in; link {model_path.name} "
        f"into {target.parent} too (as huggingface_hub snapshots do), or copy the artifact directory with its "
        "links followed: cp -rL SRC DST")
