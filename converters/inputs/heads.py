"""The head a checkpoint's weights hold when its config.json names no architecture.

transformers' save_pretrained writes the model class into config.json ("architectures"), and
load_source infers the task from it. A checkpoint saved with config.save_pretrained() and
torch.save(model.state_dict()) names none: it used to convert as feature-extraction, its trained
head dropped without a word. Here the weight names (safetensors header, or the .bin's tensors
memory-mapped) tell whether there is a head, and which:

- none (embeddings, encoder, pooler only): feature-extraction, as before;
- a classifier only one transformers class builds: its task, with a note saying it was inferred.
  RoBERTa's sequence head has classifier.dense/out_proj, DistilBERT's a pre_classifier; a single
  linear classifier without the encoder's pooler is a *ForTokenClassification (transformers builds
  those without it, and BERT's sequence head reads it);
- a single linear classifier beside a pooler (or on DistilBERT, which has none) fits a sequence
  and a token head alike (custom code builds both that way): refused, naming --task;
- any other head (qa_outputs, cls, lm_head, ..., or a classifier whose output count is not the
  config's label count, as for multiple choice): refused as for a named one. Task
  feature-extraction converts the encoder of any of these, and a note says the head was dropped.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from converters._errors import UnsupportedModelError

__all__ = ["WeightHead", "weight_head"]

# Top-level weight names of the supported encoders (BERT, DistilBERT, RoBERTa, XLM-R) and the
# attribute a head class keeps the encoder under (base_model_prefix).
ENCODER_PARTS = {"embeddings", "encoder", "pooler", "transformer"}
BASE_PREFIXES = {"bert", "distilbert", "roberta"}  # CamemBERT's heads keep theirs under "roberta" too
_CLASSIFIERS = {"classifier", "pre_classifier"}


def _shapes(path: Path) -> dict[str, list[int]]:
    """Tensor name -> shape of one weight file, without reading the tensors' data."""
    if path.suffix == ".safetensors":  # 8-byte little-endian header length, then a JSON header
        with open(path, "rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(length))
        return {name: list(entry.get("shape", [])) for name, entry in header.items() if name != "__metadata__"}
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (RuntimeError, ValueError):  # the pre-1.6 (non-zip) format cannot be memory-mapped
        state = torch.load(path, map_location="cpu", weights_only=True)
    return {name: list(tensor.shape) for name, tensor in state.items() if hasattr(tensor, "shape")}


def _weight_shapes(model_dir: Path) -> dict[str, list[int]]:
    files = sorted(model_dir.glob("*.safetensors")) or sorted(model_dir.glob("pytorch_model*.bin"))
    try:
        return {name: shape for path in files for name, shape in _shapes(path).items()}
    except Exception:  # noqa: BLE001 - unreadable here: transformers' loading reports it, as before
        return {}


def _below_base(name: str) -> str:
    first, _, rest = name.partition(".")
    return rest if first in BASE_PREFIXES and rest else name


@dataclass(frozen=True)
class WeightHead:
    """A head in the weights of a checkpoint whose config.json names no architecture."""

    modules: tuple[str, ...]  # its top-level modules ("classifier", "qa_outputs", ...)
    task: str | None  # the task it can only be; None: not told by the weights, or not converted
    why: str  # what the weights hold
    either: bool = False  # a classifier that fits a sequence and a token head alike
    family: str = "Bert"  # transformers' class prefix for the model type, for the advice

    def dropped_note(self) -> str:
        return (f"checkpoint whose config.json names no architecture converted as feature-extraction: its "
                f"encoder alone, its head ({', '.join(self.modules)}) dropped (not in the artifacts)")

    def inferred_note(self) -> str:
        other = "text-classification" if self.task == "token-classification" else "token-classification"
        return (f"config.json names no architecture: task {self.task} inferred from the weights ({self.why}); "
                f"if the head is a {other} one, set the task to {other}")

    def task_for(self, model_dir: Path, asked: str | None) -> str:
        """The task to convert: the one asked for (loading then checks the head's weights), or the
        inferred one; refused when the weights do not tell."""
        if asked or self.task:
            return asked or self.task
        where = f"{model_dir}: config.json names no architecture and its weights hold a head ({self.why})"
        if self.either:
            raise UnsupportedModelError(
                f"{where}, which could be a text-classification or a token-classification head: convert it with "
                "task=text-classification or task=token-classification (or name the class in config.json, "
                f"\"architectures\": [\"{self.family}ForSequenceClassification\"] or "
                f"[\"{self.family}ForTokenClassification\"])")
        raise UnsupportedModelError(
            f"{where}, which edge-convert does not convert (supported: an encoder for feature-extraction, "
            "*ForSequenceClassification, *ForTokenClassification); convert it with task=feature-extraction for "
            "its encoder alone, the head dropped")


def _labels(config: dict[str, Any]) -> int:
    labels = config.get("id2label")
    return len(labels) if isinstance(labels, dict) and labels else int(config.get("num_labels", 2))


def weight_head(model_dir: Path, config: dict[str, Any]) -> WeightHead | None:
    """The head in the checkpoint's weights; None when they hold the encoder alone."""
    shapes = {_below_base(name): shape for name, shape in _weight_shapes(model_dir).items()}
    modules = tuple(sorted({name.split(".")[0] for name in shapes} - ENCODER_PARTS))
    if not modules or not any(name.startswith("embeddings.") for name in shapes):
        return None  # the encoder alone, or no encoder where expected (loading names the missing weights)
    if set(modules) - _CLASSIFIERS or "classifier" not in modules:
        return WeightHead(modules, None, ", ".join(modules))
    pooler = any(name.startswith("pooler.") for name in shapes)
    model_type = config.get("model_type")
    out = shapes.get("classifier.out_proj.weight") or shapes.get("classifier.weight") or []
    outputs = out[0] if out else 0
    why = f"{', '.join(modules)} with {outputs} output{'' if outputs == 1 else 's'}"
    if outputs != _labels(config) or outputs < 2:  # multiple choice, regression, ...
        return WeightHead(modules, None, f"{why}, for {_labels(config)} labels in config.json")
    if "pre_classifier" in modules or "classifier.out_proj.weight" in shapes:
        return WeightHead(modules, "text-classification", f"{why}: a *ForSequenceClassification head")
    if model_type != "distilbert" and not pooler and "classifier.weight" in shapes:
        return WeightHead(modules, "token-classification", f"{why} and no pooler: a *ForTokenClassification head")
    family = {"distilbert": "DistilBert", "roberta": "Roberta", "xlm-roberta": "XLMRoberta",
              "camembert": "Camembert"}.get(model_type, "Bert")
    return WeightHead(modules, None, why + (" beside the pooler" if pooler else ""), either=True, family=family)
