"""Inputs for edge-bench: fixed [batch, seq] tensors for an artifact directory.

With a tokenizer, built-in English sentences tokenized to exactly `seq` tokens per row (real
token statistics, no padding); without one, random ids from the range the golden sample uses.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime._bench_config import BenchConfigError
from edge_runtime._errors import EdgeRuntimeError
from edge_runtime._manifest import resolve
from edge_runtime._text import TextEncoder

__all__ = ["SENTENCES", "make_feeds"]

# Varied English sentences: real token statistics (word pieces, punctuation, numbers) for
# tokenizer-based artifacts; repeated and truncated to the requested sequence length.
SENTENCES = (
    "The quick brown fox jumps over the lazy dog near the riverbank.",
    "Edge devices run compressed transformer models with a slim runtime.",
    "In 2023, the city council approved a budget of 4.7 million euros for new bike lanes.",
    "Can you recommend a good Italian restaurant that is open after ten o'clock?",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "The committee postponed its decision until the independent audit was complete.",
    "She plays the violin, speaks three languages, and runs a small bakery downtown.",
    "Error 503: the service is temporarily unavailable; please retry in 30 seconds.",
    "Quantum computers exploit superposition and entanglement to solve certain problems.",
    "After the storm, volunteers cleared fallen trees from the mountain road overnight.",
    "Is the warranty still valid if the device was repaired by a third-party shop?",
    "The museum's new exhibition features sculptures from the early Renaissance period.",
    "Our quarterly revenue grew by 12% while operating costs remained roughly flat.",
    "He forgot his umbrella at the station and walked home through the pouring rain.",
    "Neural networks learn representations from data rather than hand-written rules.",
    "Please send the signed contract to the legal department before Friday afternoon.",
)


def _long_text(start: int, encoder: TextEncoder, seq: int) -> str:
    """Sentences from SENTENCES (starting at `start`, so rows differ) until the tokenizer,
    truncating at `seq`, returns exactly `seq` tokens."""
    parts: list[str] = []
    i = start
    while True:
        parts.append(SENTENCES[i % len(SENTENCES)])
        i += 1
        text = " ".join(parts)
        if encoder.encode([text])["attention_mask"].shape[1] >= seq:
            return text
        if i - start > 64 * max(1, seq):  # tokens per sentence >= 1: unreachable unless broken
            raise EdgeRuntimeError(
                f"tokenizer never reached {seq} tokens on the built-in sentences"
            )


def make_feeds(
    root: Path, manifest: dict[str, Any], batch: int, seq: int
) -> tuple[dict[str, np.ndarray], str]:
    """Input tensors [batch, seq] for the artifacts of `root`, and their kind: "text" (the
    built-in sentences through the artifact's tokenizer, every row exactly `seq` tokens, no
    padding) or "random-ids" (no tokenizer: ids drawn from the range the golden sample uses)."""
    names = [spec["name"] for spec in manifest["inputs"]]
    spec = manifest.get("tokenizer")
    if spec:
        if seq > int(spec["max_length"]):
            raise BenchConfigError(
                "seqs", f"{seq} exceeds the tokenizer's max_length {spec['max_length']} in {root}"
            )
        # Truncation at `seq` keeps the special tokens ([CLS] ... [SEP]) in place.
        encoder = TextEncoder(
            resolve(root, spec["files"][0]["path"]), {**spec, "max_length": seq}, names
        )
        specials = encoder.encode([""])["input_ids"].shape[1]  # e.g. [CLS] [SEP]
        if seq < specials:
            raise BenchConfigError(
                "seqs", f"{seq} is shorter than the {specials} special tokens the tokenizer adds"
            )
        texts = [_long_text(row, encoder, seq) for row in range(batch)]
        feeds = encoder.encode(texts, pad_to=seq)
        if feeds["attention_mask"].shape != (batch, seq):
            raise EdgeRuntimeError(
                f"tokenized inputs have shape {feeds['attention_mask'].shape}, "
                f"wanted {(batch, seq)}"
            )
        return feeds, "text"
    # No tokenizer: ids no larger than the golden sample's (they exist in the vocabulary).
    golden = manifest["artifacts"][0]["golden"]
    with np.load(resolve(root, golden["path"]), allow_pickle=False) as data:
        id_inputs = [k for k in data.files if k.startswith("input:") and k.endswith("input_ids")]
        if not id_inputs:
            raise EdgeRuntimeError(
                f"{root} has no tokenizer and its golden sample no input_ids: cannot make inputs"
            )
        high = max(int(data[k].max()) for k in id_inputs)
    rng = np.random.default_rng(seq * 1000 + batch)
    dtypes = {"int64": np.int64, "int32": np.int32}
    feeds = {}
    for spec_in in manifest["inputs"]:
        name, dtype = spec_in["name"], dtypes.get(spec_in["dtype"], np.int64)
        if "mask" in name:
            feeds[name] = np.ones((batch, seq), dtype)
        elif "type" in name:
            feeds[name] = np.zeros((batch, seq), dtype)
        else:
            feeds[name] = rng.integers(1, max(high, 2), size=(batch, seq)).astype(dtype)
    return feeds, "random-ids"
