"""Text pre- and post-processing on the device: tokenization, pooling, softmax. numpy only.

The converter uses these same functions to compute its metrics, so the numbers in the manifest
are the numbers a device gets.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime._errors import InputError

__all__ = ["TextEncoder", "pool", "softmax"]


def pool(hidden: np.ndarray, mask: np.ndarray, mode: str, normalize: bool) -> np.ndarray:
    """Sentence embeddings from token states [batch, seq, dim] as sentence-transformers pools them."""
    mask_f = mask.astype(hidden.dtype)[..., None]
    if mode == "mean":
        summed = (hidden * mask_f).sum(axis=1)
        out = summed / np.clip(mask_f.sum(axis=1), 1e-9, None)
    elif mode == "cls":
        out = hidden[:, 0]
    elif mode == "max":
        out = np.where(mask_f > 0, hidden, np.finfo(hidden.dtype).min).max(axis=1)
    elif mode == "mean_sqrt_len":
        out = (hidden * mask_f).sum(axis=1) / np.sqrt(np.clip(mask_f.sum(axis=1), 1e-9, None))
    else:
        raise InputError(f"unknown pooling mode {mode!r}; known: mean, cls, max, mean_sqrt_len")
    if normalize:
        out = out / np.clip(np.linalg.norm(out, axis=-1, keepdims=True), 1e-12, None)
    return out.astype(np.float32)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


class TextEncoder:
    """Turns texts into the model's integer inputs with the tokenizer shipped in the artifact."""

    def __init__(self, tokenizer_json: Path, spec: dict[str, Any], input_names: list[str]):
        try:
            from tokenizers import Tokenizer
        except ImportError:  # the text extra is optional for raw-tensor users
            raise InputError(
                "text input needs the 'tokenizers' package: pip install tokenizers "
                "(or install edge_runtime with the [onnx] or [tflite] extra)"
            ) from None
        self._tok = Tokenizer.from_file(str(tokenizer_json))
        self.max_length = int(spec["max_length"])
        self._tok.enable_truncation(max_length=self.max_length)
        self._tok.no_padding()  # padding is ours: to the batch's longest or to a fixed bucket
        self.pad_id = int(spec["pad_token_id"])
        self.input_names = input_names

    def tokens(self, text: str) -> list[tuple[str, bool]]:
        """(token, is_special) pairs for one text, in model order, for per-token results."""
        enc = self._tok.encode(text)
        return [(tok, bool(special)) for tok, special in zip(enc.tokens, enc.special_tokens_mask)]

    def encode(self, texts: list[str], pad_to: int | None = None) -> dict[str, np.ndarray]:
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise InputError("texts must be a list of strings (wrap a single text in a list)")
        if not texts:
            raise InputError("texts is empty")
        encodings = self._tok.encode_batch(list(texts))
        length = max(len(e.ids) for e in encodings)
        if pad_to is not None:
            length = max(length, pad_to)
        ids = np.full((len(texts), length), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(texts), length), dtype=np.int64)
        types = np.zeros((len(texts), length), dtype=np.int64)
        for row, enc in enumerate(encodings):
            n = len(enc.ids)
            ids[row, :n] = enc.ids
            mask[row, :n] = 1
            types[row, :n] = enc.type_ids
        arrays = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        return {name: arrays[name] for name in self.input_names}
