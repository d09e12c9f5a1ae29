"""Text pre- and post-processing on the device: tokenization, pooling, softmax. numpy only.

The converter uses these same functions to compute its metrics, so the numbers in the manifest
are the numbers a device gets.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime._errors import ArtifactError, InputError

__all__ = ["POOLING_MODES", "Encoded", "TextEncoder", "count_words", "pool", "sentence_vectors", "softmax"]

# What pool() computes (sentence-transformers' names); the manifest reader refuses any other.
POOLING_MODES = ("mean", "cls", "max", "mean_sqrt_len")


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
        raise InputError(f"unknown pooling mode {mode!r}; known: {', '.join(POOLING_MODES)}")
    if normalize:
        out = out / np.clip(np.linalg.norm(out, axis=-1, keepdims=True), 1e-12, None)
    return out.astype(np.float32)


def sentence_vectors(hidden: np.ndarray, mask: np.ndarray, post: dict[str, Any]) -> np.ndarray:
    """What embed() returns for token states: pooled and normalized as the manifest's postprocess
    says, then only the first `truncate_dim` values when it names one (sentence-transformers'
    truncate_dim, for Matryoshka models: applied after its modules, Normalize included, and not
    normalized again)."""
    out = pool(hidden, mask, post["pooling"], post["normalize"])
    keep = post.get("truncate_dim")
    return np.ascontiguousarray(out[:, :keep]) if keep else out


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


@dataclass(frozen=True)
class Encoded:
    """One text's tokens, unpadded: what the model sees for it alone."""

    ids: list[int]
    type_ids: list[int]
    tokens: list[str]
    special: list[bool]
    # (start, end) character offsets of each token in its text, end exclusive ((0, 0) for a
    # special token): where a token's label belongs, whatever its piece looks like ("Ã" for
    # part of a byte-level "ü")
    offsets: tuple[tuple[int, int], ...] = ()


# Up to this many characters (~5 ms of tokenizing English, ~20 ms CJK), one text is tokenized on
# the calling thread.
_ALONE_CHARS = 10_000


# A truncated text keeps its first max_length tokens, which never span more than this many
# characters each in practice (a WordPiece or BPE piece is a few characters; a longer unknown
# word is one [UNK] of at most 100). Tokenizing a far longer text whole costs memory for
# nothing: 320 MB for a 1.95 MB text, the offsets and strings of its 390,000 tokens (a request
# edge-serve's default 2 MB limit lets through), 8 MB from its head (benchmarks/RESULTS.md run
# AV). So a text is tokenized from its head (_head), and whole only when the head does not fill
# max_length.
_HEAD_CHARS_PER_TOKEN = 32
# Cut only at U+0020: every pre-tokenizer splits there, and no normalizer joins across it. Not at any
# whitespace (\s): BERT's normalizer deletes U+001C-U+001F (joining the words beside them), and
# SentencePiece's Metaspace splits at U+0020 alone ("ab\ncd" is one word there): a cut at either
# changed the head's last tokens (found by a review, session 49).
_SPACE = re.compile(" ")
# A newline or tab is a cut too for a tokenizer that splits there as at a space (BERT's normalizer
# makes both spaces; byte-level BPE splits whitespace off the word before it), checked once per
# tokenizer on these probes (_cuts): the tokens of `a` must be the first tokens of a + it + b and
# end a pre-tokenized word there. Metaspace splits at U+0020 alone ("ab\ncd" is one word, whose
# unigram pieces the rest of it may change): no such cut there. Without it, a body of
# newline-separated lines without spaces (a log, a CSV) was tokenized whole (a review found
# serve.md's memory bound did not hold for it).
_OTHER_CUTS = ("\n", "\t")
_PROBES = (("word", "next"), ("Word", "word"), ("12", "34"), ("end.", "start"), ("x", "\ny"), ("東京", "大阪"),
           ("a-b", "c"), ("it's", "s"))


def _cuts(tokenizer: Any) -> re.Pattern[str]:
    """The characters a text may be cut before for `tokenizer`: U+0020, and each of _OTHER_CUTS
    that passes every probe (the tokenizer's truncation must leave the probes whole)."""
    found = " "
    for cut in _OTHER_CUTS:
        for a, b in _PROBES:
            head = tokenizer.encode(a, add_special_tokens=False)
            whole = tokenizer.encode(a + cut + b, add_special_tokens=False)
            n = len(head.ids)
            if (head.overflowing or whole.overflowing or not 0 < n < len(whole.ids) or whole.ids[:n] != head.ids
                    or whole.word_ids[n - 1] == whole.word_ids[n]):
                break
        else:
            found += cut
    return re.compile("[" + re.escape(found) + "]")


def _head(text: str, max_length: int, cuts: re.Pattern[str] = _SPACE) -> str:
    """`text` cut before its first cut character (`cuts`: U+0020, see _SPACE; _cuts adds newline
    and tab where the tokenizer allows) at or after max_length * _HEAD_CHARS_PER_TOKEN characters;
    itself when shorter, or when no such character follows within as many characters again (a
    text without spaces, e.g. Chinese or Japanese, is tokenized whole: a cut inside
    one pre-tokenized word could change its pieces). Every pre-tokenizer the converter ships
    (BERT's, byte-level BPE's, SentencePiece's Metaspace) splits at whitespace, and the
    normalizers work per character, so the head's tokens are the first tokens of the whole text
    (tests/test_text_head.py)."""
    limit = max_length * _HEAD_CHARS_PER_TOKEN
    if len(text) <= limit:
        return text
    cut = cuts.search(text, limit, 2 * limit)
    return text[: cut.start()] if cut else text


def _encode(tokenizer, texts: list[str]) -> list:
    """tokenizers' encodings of `texts` (the same ids either way). Its encode() holds the GIL for
    the whole call: ~2 s for a 2 MB text, during which edge-serve's event loop could not answer
    /health although the text was on a worker thread. encode_batch() releases the GIL and spreads
    the texts over tokenizers' thread pool (faster on a batch), but hands even one text
    over to a pool thread; so one short text, a serving request's usual input, stays with encode()."""
    if len(texts) == 1 and len(texts[0]) <= _ALONE_CHARS:
        return [tokenizer.encode(texts[0])]
    return tokenizer.encode_batch(texts)


def count_words(count: int, exact: bool) -> str:
    """TextEncoder.token_count's answer in words: "300 tokens", "at least 8,193 tokens"."""
    return f"{count} tokens" if exact else f"at least {count:,} tokens"


class TextEncoder:
    """Turns texts into the model's integer inputs with the tokenizer shipped in the artifact.

    The tokenizer is configured once here and never changed afterwards: `tokenizers` refuses a
    change while another thread encodes, so one encoder serves every thread of a Model.
    """

    def __init__(self, tokenizer_json: Path, spec: dict[str, Any], input_names: list[str],
                 content: str | None = None):
        """`content`: the file's text as read (and checked) at load; None reads `tokenizer_json`."""
        try:
            from tokenizers import Tokenizer
        except ImportError:  # the text extra is optional for raw-tensor users
            raise InputError(
                "text input needs the 'tokenizers' package: pip install tokenizers "
                "(or install edge_runtime with the [onnx] or [tflite] extra)"
            ) from None
        self._path = Path(tokenizer_json)
        self._content = content
        try:
            self._tok = self._read(Tokenizer)
        except Exception as exc:  # tokenizers raises a bare Exception for a missing or bad file
            raise ArtifactError(
                f"{self._path}: the artifact's tokenizer cannot be read ({exc}); the directory is "
                "incomplete or damaged: copy it again from the converter's output (a verified load "
                "names every file that differs from the manifest)"
            ) from None
        self.max_length = int(spec["max_length"])
        # Truncation keeps the special tokens: [CLS] + max_length - 2 tokens + [SEP].
        self._tok.enable_truncation(max_length=self.max_length)
        self._tok.no_padding()  # padding is ours: to the batch's longest or to a fixed bucket
        self._counter = None  # an untruncating copy, made on first need (truncate=False errors)
        self._cut: re.Pattern[str] | None = None  # where a long text may be cut (_cut_pattern)
        self._counter_lock = threading.Lock()
        self.pad_id = int(spec["pad_token_id"])
        self.input_names = input_names

    def _cut_pattern(self, text: str) -> re.Pattern[str]:
        """_cuts for this tokenizer, probed when the first text long enough to be cut comes (not
        at load: a short text never needs it)."""
        if len(text) <= self.max_length * _HEAD_CHARS_PER_TOKEN:
            return _SPACE
        if self._cut is None:  # two threads may both probe: the same answer
            self._cut = _cuts(self._tok)
        return self._cut

    def _read(self, tokenizer_class: Any) -> Any:
        if self._content is not None:
            return tokenizer_class.from_str(self._content)
        return tokenizer_class.from_file(str(self._path))

    def _untruncated(self) -> Any:
        """A copy of the tokenizer that neither truncates nor pads (counts and word cuts), made on
        first need."""
        with self._counter_lock:
            if self._counter is None:
                from tokenizers import Tokenizer

                counter = self._read(Tokenizer)
                counter.no_truncation()
                counter.no_padding()
                self._counter = counter
        return self._counter

    def _head_of(self, text: str) -> str:
        """`text` cut where its first max_length tokens stay whole: at a cut character (_head), or,
        in a long text without one (a CSV or log without spaces, base64, CJK), before the last word
        the tokenizer's own pre-tokenizer finds in a window of it (_word_cut)."""
        head = _head(text, self.max_length, self._cut_pattern(text))
        if head is text and len(text) > 2 * self.max_length * _HEAD_CHARS_PER_TOKEN:
            head = self._word_cut(text)
        return head

    def _word_cut(self, text: str) -> str:
        """`text` cut before the last pre-tokenized word of its first 2 * max_length *
        _HEAD_CHARS_PER_TOKEN characters, tokenized by the tokenizer itself; `text` when the
        window is one word (SentencePiece's Metaspace on CJK: a cut inside could change its
        pieces). Every word before the window's last ends where it ends in the whole text:
        pre-tokenizers split by what precedes and follows closely (BERT at whitespace, punctuation
        and each CJK character; byte-level BPE by letter, digit and symbol runs), and the
        normalizers work per character. A head with fewer than max_length tokens is not used
        (_truncated, token_count). Without it, a 2 MB request of text without spaces cost
        edge-serve 0.5-1.3 GB (a review, session 52)."""
        window = text[: 2 * self.max_length * _HEAD_CHARS_PER_TOKEN]
        encoding = self._untruncated().encode(window, add_special_tokens=False)
        words = encoding.word_ids
        if not words or words[0] == words[-1]:
            return text
        first_of_last = words.index(words[-1])
        start = encoding.offsets[first_of_last][0]
        return text[:start] if start > 0 else text

    def _truncated(self, texts: list[str]) -> list:
        """tokenizers' truncated encodings of `texts`, each from its head (_head_of)."""
        heads = [self._head_of(text) for text in texts]
        encodings = _encode(self._tok, heads)
        for index, (text, head) in enumerate(zip(texts, heads)):
            if head is not text and not encodings[index].overflowing:  # the head is not enough
                encodings[index] = _encode(self._tok, [text])[0]
        return encodings

    def tokens(self, text: str) -> list[tuple[str, bool]]:
        """(token, is_special) pairs for one text, in model order, for per-token results."""
        enc = self._truncated([text])[0]
        return [(tok, bool(special)) for tok, special in zip(enc.tokens, enc.special_tokens_mask)]

    def token_count(self, text: str) -> tuple[int, bool]:
        """(how many tokens `text` has without truncation, special tokens included; exact): a
        text longer than max_length tokens can span is counted in its head only (_head_of), a
        lower bound (exact False)."""
        counter = self._untruncated()
        head = self._head_of(text)
        count = len(_encode(counter, [head])[0].ids)
        if head is not text and count <= self.max_length:  # the head is not enough
            return len(_encode(counter, [text])[0].ids), True
        return count, head is text

    def encode_texts(self, texts: list[str], truncate: bool = True, first: int = 0) -> list[Encoded]:
        """Each text's tokens alone. truncate=False: InputError for the first text longer than
        max_length, with its index (counted from `first`: a chunk of a longer list) and token count."""
        encodings = self._truncated(list(texts))
        if not truncate:
            for index, enc in enumerate(encodings):
                if enc.overflowing:
                    raise InputError(
                        f"texts[{first + index}] has {count_words(*self.token_count(texts[index]))}; this model "
                        f"takes at most {self.max_length} (special tokens included). Shorten "
                        "it, or pass truncate=True to keep its first tokens"
                    )
        return [
            Encoded(list(e.ids), list(e.type_ids), list(e.tokens), [bool(s) for s in e.special_tokens_mask],
                    tuple(e.offsets))
            for e in encodings
        ]

    def pad(self, encoded: list[Encoded], pad_to: int | None = None) -> dict[str, np.ndarray]:
        """[rows, longest] arrays of the model's inputs, right-padded with the pad id."""
        length = max([len(e.ids) for e in encoded] + [pad_to or 0])
        ids = np.full((len(encoded), length), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(encoded), length), dtype=np.int64)
        types = np.zeros((len(encoded), length), dtype=np.int64)
        for row, enc in enumerate(encoded):
            n = len(enc.ids)
            ids[row, :n] = enc.ids
            mask[row, :n] = 1
            types[row, :n] = enc.type_ids
        arrays = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        return {name: arrays[name] for name in self.input_names}

    def encode(self, texts: list[str], pad_to: int | None = None) -> dict[str, np.ndarray]:
        """Padded model inputs for a batch of texts (truncated to max_length)."""
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise InputError("texts must be a list of strings (wrap a single text in a list)")
        if not texts:
            raise InputError("texts is empty")
        return self.pad(self.encode_texts(texts), pad_to)
