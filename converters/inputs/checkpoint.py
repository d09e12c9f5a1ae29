"""What a loaded checkpoint's weights say before anything is converted: weights transformers would
make up at random (missing), weights config.json has no place for (ignored), non-finite values,
and a task head a feature-extraction conversion leaves out. transformers only logs the first two;
each would give artifacts that agree with a model other than the one the user trained."""

from __future__ import annotations

from pathlib import Path

from converters._errors import SourceModelError

__all__ = ["HEAD_PREFIXES", "check_finite_weights", "check_no_ignored_weights", "check_no_random_weights",
           "dropped_head_note", "top_module"]


def _shown(keys: list[str]) -> str:
    """The first four weight names, and how many more."""
    return ", ".join(keys[:4]) + (f" and {len(keys) - 4} more" if len(keys) > 4 else "")


def top_module(key: str, prefix: str) -> str:
    """The top-level module of weight `key` below the base model's attribute `prefix` ("bert" in
    "bert.pooler.dense.weight" of a BertForSequenceClassification)."""
    return (key[len(prefix) + 1:] if prefix and key.startswith(prefix + ".") else key).split(".")[0]


def check_no_random_weights(model_dir: Path, task: str, missing, prefix: str = "") -> None:
    """transformers initializes at random every weight the checkpoint lacks and only logs it: a
    checkpoint without a classification head would ship a random classifier that matches its own
    PyTorch reference perfectly. Refuse instead. The pooler is not part of feature-extraction's
    output (last_hidden_state), so a missing one is harmless there. `prefix`: the base model's
    attribute name ("bert" in "bert.pooler.dense.weight" of a BertForSequenceClassification)."""
    missing = sorted(k for k in missing
                     if not (task == "feature-extraction" and top_module(k, prefix) == "pooler"))
    if not missing:
        return
    shown = _shown(missing)
    if task != "feature-extraction" and all(top_module(k, prefix) in HEAD_PREFIXES
                                            for k in missing):
        raise SourceModelError(
            f"{model_dir} has no trained {task} head ({shown} not in its weights; they would be random): "
            f"fine-tune it for {task} first, or convert it with task='feature-extraction'")
    raise SourceModelError(f"{model_dir}: {shown} not in its weights (they would be random); "
                           "is the checkpoint complete and saved for this architecture?")


def check_no_ignored_weights(model_dir: Path, model, unexpected, prefix: str) -> None:
    """transformers skips, and only logs, checkpoint weights the model config.json describes has
    no place for: a config of 1 layer over 2 layers' weights converted the first layer alone, and
    its artifacts agreed with that truncated reference (a review found cosine 0.9 against the real
    model, every metric 1.0000). Weights of the encoder's own modules (embeddings, encoder, ...)
    left out are refused; a task or pre-training head's (classifier, cls, lm_head) are not."""
    base = getattr(model, prefix, model) if prefix else model
    body = {name for name, _ in base.named_children()} - HEAD_PREFIXES
    ignored = sorted(key for key in unexpected if top_module(key, prefix) in body)
    if not ignored:
        return
    shown = _shown(ignored)
    raise SourceModelError(
        f"{model_dir}: config.json has no place for {len(ignored)} of the checkpoint's weights ({shown}); they "
        "would be left out and the artifacts would compute a different model (e.g. num_hidden_layers smaller "
        "than the layers saved). Is config.json the one saved with these weights?")


def dropped_head_note(architecture: str, unexpected, prefix: str) -> str:
    """What a feature-extraction conversion of a checkpoint with a head leaves out: the head's
    weights are those the bare encoder did not load (transformers' unexpected_keys)."""
    modules = sorted({top_module(key, prefix) for key in unexpected})
    head = f"its head ({', '.join(modules)})" if modules else "its head"
    return (f"{architecture} checkpoint converted as feature-extraction: its encoder alone, "
            f"{head} dropped (not in the artifacts)")


def check_finite_weights(model_dir: Path, model) -> None:
    """NaN or Inf in a weight gives non-finite outputs for every text: name the tensor here,
    rather than refusing every artifact later for what the checkpoint holds."""
    import torch

    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise SourceModelError(
                f"{model_dir}: weight {name} holds {bad} non-finite values (NaN or Inf); the "
                "checkpoint is damaged or was saved from a diverged training run")


# Top-level module names of the task heads of the supported architectures (BERT, DistilBERT,
# RoBERTa, XLM-R); "pooler" counts as head: BERT's classifier reads it.
HEAD_PREFIXES = {"classifier", "pre_classifier", "pooler", "score"}
