"""What a sentence-transformers model directory (modules.json) changes about a conversion.

sentence-transformers runs modules in turn: a Transformer (the encoder, in the directory itself
or, in older saves, in a subfolder such as 0_Transformer/), Pooling, Normalize. load_source reads
the encoder from the Transformer module's folder, and from here:
- the pooling mode (sentence-transformers >= 3 writes `"pooling_mode": "cls"`, older versions one
  `pooling_mode_*_tokens` boolean per mode) and whether embeddings are normalized;
- sentence_bert_config.json (beside the encoder): max_seq_length, and do_lower_case, which
  sentence-transformers applies by putting a Lowercase normalizer first in the tokenizer: the
  converter does the same to the tokenizer it ships and scores against, so the device lowercases
  like sentence-transformers without a runtime change;
- config_sentence_transformers.json: a default prompt sentence-transformers prepends to every
  text, and prompts it prepends when asked by name. The artifacts take texts as given: a note says
  what to prepend.

What the artifacts cannot reproduce is refused by name rather than converted to other numbers (a
review, session 51, found five silent differences): texts rendered through a chat template
(sentence-transformers 6's "message" modality), a sentence embedding taken from another output of
the encoder (pooler_output), a Normalize module that normalizes token vectors or sits before the
pooling, and tokenizer settings in processing_kwargs other than the length, which is honoured.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from converters._errors import SourceModelError, UnsupportedModelError

__all__ = ["EncoderSettings", "Layout", "apply_lowercase", "encoder_settings", "find_layout"]

# sentence-transformers' pooling modes (its names, as config files write them) -> the manifest's.
SUPPORTED_POOLING = {"cls": "cls", "max": "max", "mean": "mean", "mean_sqrt_len_tokens": "mean_sqrt_len"}
# The booleans of sentence-transformers < 3 (it still reads them), one per mode.
_LEGACY_POOLING = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}


def _kind(module: dict[str, Any]) -> str:
    """The module's class as modules.json names it ("sentence_transformers.models.Pooling")."""
    kind = module.get("type", "")
    return kind if isinstance(kind, str) else ""


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # ValueError: JSONDecodeError, UnicodeDecodeError
        raise SourceModelError(f"cannot read {path}: {exc}") from None


def _folder(root: Path, module: dict[str, Any]) -> Path:
    """The module's folder, which modules.json gives relative to the model directory ("" for the
    directory itself)."""
    path = module.get("path", "")
    if not isinstance(path, str) or not (root / path).resolve().is_relative_to(root.resolve()):
        raise SourceModelError(f"{root}/modules.json: module path {path!r} is not a folder inside {root}")
    folder = root / path if path.strip("./") else root  # "" or ".": the directory itself, as given
    if not folder.is_dir():
        raise SourceModelError(f"{root}/modules.json names the folder {path!r} for its "
                               f"{_kind(module)} module, which {root} does not have")
    return folder


@dataclass(frozen=True)
class Layout:
    """A directory with modules.json: its modules and the folder of its Transformer module."""

    root: Path
    modules: tuple[dict[str, Any], ...]
    encoder: Path  # config.json, weights, tokenizer and sentence_bert_config.json

    def _pooling(self) -> tuple[str, dict[str, Any]] | None:
        """(mode, its config) of the Pooling module; None without one."""
        module = next((m for m in self.modules if _kind(m).endswith("Pooling")), None)
        if module is None:
            return None
        path = _folder(self.root, module) / "config.json"
        config = _read_json(path)
        if not isinstance(config, dict):
            raise SourceModelError(f"{path} must hold a JSON object")
        if "pooling_mode" in config:  # sentence-transformers >= 3: one mode, or a list concatenated
            value = config["pooling_mode"]
            modes = [value] if isinstance(value, str) else list(value) if isinstance(value, list) else [repr(value)]
        else:
            # sentence-transformers 6 pools by mean when no boolean is set (it refused before 3)
            modes = [mode for key, mode in _LEGACY_POOLING.items() if config.get(key)] or ["mean"]
        supported = ", ".join(SUPPORTED_POOLING)
        if len(modes) != 1:
            what = (f"concatenates the poolings {', '.join(map(str, modes))}" if modes else "names no pooling mode")
            raise UnsupportedModelError(f"{path} {what}; edge-convert supports exactly one of: {supported}")
        if modes[0] not in SUPPORTED_POOLING:
            raise UnsupportedModelError(f"{path}: pooling mode {modes[0]!r} is not supported; edge-convert "
                                        f"supports one of: {supported}")
        return modes[0], config

    def postprocess(self) -> dict[str, Any]:
        """The manifest's pooling and normalization (mean without a Pooling module, as before)."""
        for module in self.modules:
            kind = _kind(module)
            if not kind.endswith(("Transformer", "Pooling", "Normalize")):
                raise UnsupportedModelError(f"{self.root}: sentence-transformers module {kind!r} is not supported; "
                                            "supported: Transformer, Pooling, Normalize")
        pooling = self._pooling()
        normalize = self._normalize()
        return {"pooling": SUPPORTED_POOLING[pooling[0]] if pooling else "mean", "normalize": normalize,
                "source": "sentence-transformers"}

    def _normalize(self) -> bool:
        """Whether the pooled embedding is normalized: a Normalize module after the Pooling module,
        on its default feature. The artifacts normalize the pooled vector and nothing else, so a
        Normalize of the token vectors (module_input_name, ColBERT-style) or one placed before
        the pooling (where sentence-transformers 6 finds no sentence embedding and does nothing)
        is refused rather than turned into a different normalization."""
        kinds = [_kind(m) for m in self.modules]
        at = [i for i, kind in enumerate(kinds) if kind.endswith("Normalize")]
        pooling_at = next((i for i, kind in enumerate(kinds) if kind.endswith("Pooling")), None)
        for i in at:
            # Normalize has nothing to load: its folder may be missing (the built-in MiniLM's is),
            # and then it is the default one, as sentence-transformers builds it.
            folder = self.modules[i].get("path", "")
            path = self.root / (folder if isinstance(folder, str) else "") / "config.json"
            config = _read_json(path) if path.is_file() else {}
            config = config if isinstance(config, dict) else {}
            feature = config.get("module_input_name", "sentence_embedding")
            written = config.get("module_output_name") or feature
            if feature != "sentence_embedding" or written != "sentence_embedding":
                raise UnsupportedModelError(
                    f"{path}: this Normalize module normalizes {feature!r} into {written!r}; the artifacts "
                    "normalize the pooled sentence embedding only (module_input_name 'sentence_embedding')")
            if pooling_at is None or i < pooling_at:
                raise UnsupportedModelError(
                    f"{self.root}/modules.json: the Normalize module comes before any Pooling module, where "
                    "sentence-transformers has no sentence embedding to normalize; the artifacts normalize "
                    "after pooling: move it after the Pooling module or remove it")
        return bool(at)

    def pooling_note(self) -> str | None:
        """What the artifacts do when modules.json has no Pooling module (sentence-transformers
        itself then returns no sentence embedding)."""
        if any(_kind(m).endswith("Pooling") for m in self.modules):
            return None
        return (f"{self.root}/modules.json has no Pooling module (sentence-transformers returns no sentence "
                "embedding for it): the artifacts mean-pool the token vectors, edge-convert's default")

    def prompt_note(self) -> str | None:
        """What to prepend to each text when sentence-transformers prepends a prompt: a default one
        to every text, or a named one when asked (encode_query, prompt_name=...)."""
        path = self.root / "config_sentence_transformers.json"
        config = _read_json(path) if path.is_file() else {}
        name = config.get("default_prompt_name") if isinstance(config, dict) else None
        prompts = config.get("prompts") if isinstance(config, dict) else None
        prompts = {k: v for k, v in prompts.items() if isinstance(v, str) and v} if isinstance(prompts, dict) else {}
        if not prompts:
            return None
        pooling = self._pooling()
        excluded = ("; its pooling also leaves the prompt's tokens out (include_prompt: false), which the artifacts "
                    "do not, so even prompted texts embed differently") if pooling and pooling[1].get(
                        "include_prompt") is False else ""
        prompt = prompts.get(name) if isinstance(name, str) else None
        if prompt:
            return (f"sentence-transformers prepends the default prompt {name!r} ({prompt!r}, "
                    f"config_sentence_transformers.json) to every text; the artifacts embed texts as given: "
                    f"prepend {prompt!r} to each text yourself to get its embeddings{excluded}")
        named = ", ".join(f"{k!r} ({v!r})" for k, v in prompts.items())
        return (f"sentence-transformers prepends the prompt {named} when asked for it by name (config_sentence_"
                f"transformers.json; encode_query and encode_document may ask); the artifacts embed texts as given: "
                f"prepend it to each text yourself where sentence-transformers would{excluded}")


    def truncate_dim(self) -> int | None:
        """How many leading values of each embedding sentence-transformers returns (truncate_dim in
        config_sentence_transformers.json, Matryoshka models), None for all: it cuts after its
        modules (Normalize included) and does not normalize again, and so does the device
        (postprocess.truncate_dim; a review found the 16 values a model was saved to give
        delivered as 32, without a word)."""
        path = self.root / "config_sentence_transformers.json"
        config = _read_json(path) if path.is_file() else {}
        keep = config.get("truncate_dim") if isinstance(config, dict) else None
        if keep is None:
            return None
        if isinstance(keep, bool) or not isinstance(keep, int) or keep <= 0:
            raise SourceModelError(f"{path}: truncate_dim must be a positive whole number of values, got {keep!r}")
        return keep


@dataclass(frozen=True)
class EncoderSettings:
    """What sentence_bert_config.json (beside the encoder) changes about the texts and the output."""

    max_seq_length: int | None = None  # the length sentence-transformers truncates at
    do_lower_case: bool = False


# processing_kwargs entries (sentence-transformers 6) for the text tokenizer call that the artifacts
# can follow: the length is honoured; padding does not change an embedding; truncation must be on.
_PROCESSING_KEYS = ("max_length", "padding", "truncation")


def _length(path: Path, key: str, length: Any) -> int:
    # sentence-transformers itself reads any number here; a length the tokenizer cannot use fails later
    # in a traceback (a negative one in the tokenizer's own code), so it is said here, naming the file.
    if isinstance(length, bool) or not isinstance(length, (int, float)) or not 1 <= length < float("inf") \
            or length != int(length):
        raise SourceModelError(f"{path}: {key} must be a positive whole number of tokens, got {length!r}")
    return int(length)


def _check_text_path(path: Path, settings: dict[str, Any], embeds: bool) -> None:
    """Refuse what sentence-transformers 6 does to texts or to the encoder's output that the
    artifacts do not (they tokenize the text as given and pool last_hidden_state)."""
    modalities = settings.get("modality_config")
    if isinstance(modalities, dict) and "message" in modalities:
        raise UnsupportedModelError(
            f"{path}: modality_config has 'message': sentence-transformers renders every text through the "
            "tokenizer's chat template, which the artifacts do not (they tokenize texts as given); save the model "
            "with the plain 'text' modality only to convert it")
    if settings.get("query_expansion"):
        raise UnsupportedModelError(f"{path}: query_expansion (ColBERT-style query tokens) is not supported")
    task = settings.get("transformer_task")
    if embeds and task not in (None, "feature-extraction"):
        raise UnsupportedModelError(f"{path}: transformer_task {task!r}; edge-convert embeds with a "
                                    "'feature-extraction' encoder only")
    text = modalities.get("text") if isinstance(modalities, dict) else None
    output = text.get("method_output_name") if isinstance(text, dict) else None
    written = settings.get("module_output_name", "token_embeddings")
    if embeds and (output not in (None, "last_hidden_state") or written != "token_embeddings"):
        raise UnsupportedModelError(
            f"{path}: the encoder's {output or 'last_hidden_state'!r} becomes {written!r}; the artifacts pool "
            "the token vectors (last_hidden_state into token_embeddings) and do not compute another output")


def _processing_length(path: Path, settings: dict[str, Any]) -> int | None:
    """The max_length processing_kwargs gives the text tokenizer call (its 'text' entry over its
    'common' one, as sentence-transformers merges them); other entries are refused by name."""
    kwargs = settings.get("processing_kwargs") or {}
    length = None
    for part in ("common", "text"):
        entry = kwargs.get(part) if isinstance(kwargs, dict) else None
        if not entry:
            continue
        unknown = sorted(set(entry) - set(_PROCESSING_KEYS)) if isinstance(entry, dict) else [repr(entry)]
        if unknown or entry.get("truncation", True) is False:
            what = ", ".join(unknown) if unknown else "truncation false"
            raise UnsupportedModelError(
                f"{path}: processing_kwargs[{part!r}] sets {what}, which the artifacts' tokenizer does not apply; "
                f"edge-convert follows {', '.join(_PROCESSING_KEYS)} (truncation on)")
        if "max_length" in entry:
            length = _length(path, f"processing_kwargs[{part!r}].max_length", entry["max_length"])
    return length


def encoder_settings(encoder: Path, embeds: bool = True) -> EncoderSettings:
    """The sentence_bert_config.json beside the encoder, if any (`embeds`: the sentence embedding
    is what is converted, so the encoder's output must be the token vectors)."""
    path = encoder / "sentence_bert_config.json"
    settings = _read_json(path) if path.is_file() else {}
    settings = settings if isinstance(settings, dict) else {}
    _check_text_path(path, settings, embeds)
    length = settings.get("max_seq_length")
    length = None if length is None else _length(path, "max_seq_length", length)
    # a max_length for the tokenizer call wins over max_seq_length (the tokenizer's default)
    length = _processing_length(path, settings) or length
    return EncoderSettings(length, settings.get("do_lower_case") is True)


def find_layout(model_dir: Path) -> Layout | None:
    """The sentence-transformers layout of `model_dir`; None without modules.json."""
    path = model_dir / "modules.json"
    if not path.is_file():
        return None
    modules = _read_json(path)
    if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules):
        raise SourceModelError(f"{path} must hold a list of modules (objects with type and path)")
    transformer = next((m for m in modules if _kind(m).endswith("Transformer")), None)
    # Without a Transformer module the encoder can only be the directory itself (as before).
    encoder = _folder(model_dir, transformer) if transformer else model_dir
    return Layout(model_dir, tuple(modules), encoder)


def apply_lowercase(tokenizer: Any) -> bool:
    """Put a Lowercase normalizer first in the fast tokenizer's normalizer, as sentence-transformers
    does for do_lower_case (unless the normalizer already holds one); True when it changed."""
    from tokenizers.normalizers import Lowercase, Sequence

    backend = tokenizer.backend_tokenizer
    current = backend.normalizer
    parts = list(current) if isinstance(current, Sequence) else [] if current is None else [current]
    if any(isinstance(part, Lowercase) for part in parts):
        return False
    backend.normalizer = Sequence([Lowercase(), *parts])
    return True
