"""Tiny random Hugging Face checkpoints (config + weights + fast tokenizer) built in-process.

Every supported architecture gets the tokenizer family it ships with in real life
(WordPiece for BERT/DistilBERT, byte-level BPE for RoBERTa, Unigram for XLM-R), its vocabulary
taken from the built-in texts in milliseconds, so padding ids, special tokens and token types are
real. Everything is deterministic: the same files on every run.
"""

from __future__ import annotations

from pathlib import Path

ARCHITECTURES = ("bert", "distilbert", "roberta", "xlm-roberta")  # also "camembert" (tests/test_camembert.py)
TASKS = ("feature-extraction", "text-classification", "token-classification")
TEXTS = Path(__file__).resolve().parents[1] / "converters" / "data" / "calibration_en.txt"


def _texts() -> list[str]:
    return [t for t in TEXTS.read_text(encoding="utf-8").splitlines() if t and not t.startswith("#")]


def _word_counts(tok) -> list[tuple[str, int]]:
    """Words of the built-in texts after `tok`'s normalizer and pre-tokenizer, most frequent
    first, ties by spelling: a fixed order, so the vocabulary is the same on every run."""
    from collections import Counter

    counts = Counter()
    for text in _texts():
        if tok.normalizer is not None:
            text = tok.normalizer.normalize_str(text)
        counts.update(word for word, _ in tok.pre_tokenizer.pre_tokenize_str(text))
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))


def _vocabulary(specials: list[str], words: list[tuple[str, int]], pieces, size: int = 400) -> list[str]:
    """specials, then every single-character piece (so nothing maps to unk), then the most
    frequent words, `size` entries at most."""
    chars = sorted({p for word, _ in words for p in pieces(word)})
    vocab = list(dict.fromkeys(specials + chars))
    vocab += [w for w, _ in words if w not in vocab][: max(0, size - len(vocab))]
    return vocab


def _tokenizer(kind: str):
    # WordPiece and Unigram vocabularies are built here rather than with `tokenizers`' trainers:
    # those break frequency ties in hash-map order, so every run made a different vocabulary,
    # hence different random weights and different quantization errors (a flaky test).
    import math

    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    if kind == "wordpiece":
        specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        probe = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        probe.normalizer = normalizers.BertNormalizer(lowercase=True)
        probe.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        words = _word_counts(probe)
        vocab = _vocabulary(specials, words, lambda w: [w[0]] + ["##" + c for c in w[1:]])
        tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
        tok.normalizer, tok.pre_tokenizer = probe.normalizer, probe.pre_tokenizer
        cls, sep = "[CLS]", "[SEP]"
        names = dict(pad_token="[PAD]", unk_token="[UNK]", cls_token=cls, sep_token=sep, mask_token="[MASK]")
    else:
        specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
        if kind == "bpe":  # BpeTrainer is deterministic
            tok = Tokenizer(models.BPE(unk_token="<unk>"))
            tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
            tok.decoder = decoders.ByteLevel()
            trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                          initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
            tok.train_from_iterator(_texts(), trainer)
        else:  # unigram, like XLM-R's sentencepiece: log-frequency scores
            probe = Tokenizer(models.Unigram())
            probe.pre_tokenizer = pre_tokenizers.Metaspace()
            words = _word_counts(probe)
            vocab = _vocabulary(specials, words, lambda w: list(w))
            count = dict(words)
            total = sum(count.values())
            scores = [(t, 0.0 if t in specials else math.log(count.get(t, 1) / total) - (len(t) == 1))
                      for t in vocab]
            tok = Tokenizer(models.Unigram(scores, unk_id=vocab.index("<unk>")))
            tok.pre_tokenizer = probe.pre_tokenizer
            tok.decoder = decoders.Metaspace()
        cls, sep = "<s>", "</s>"
        names = dict(bos_token=cls, eos_token=sep, pad_token="<pad>", unk_token="<unk>",
                     cls_token=cls, sep_token=sep, mask_token="<mask>")
    tok.post_processor = processors.TemplateProcessing(
        single=f"{cls} $A {sep}",
        pair=f"{cls} $A {sep} $B:1 {sep}:1",
        special_tokens=[(cls, tok.token_to_id(cls)), (sep, tok.token_to_id(sep))],
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=128, **names)


def _fine_tune(model, tokenizer, task: str, steps: int = 25) -> None:
    """A few optimizer steps on a learnable synthetic labelling. Random heads give near-tied
    logits whose argmax flips on any rounding; a briefly trained model has real class margins,
    like the fine-tuned models users convert."""
    import torch

    texts = _texts()
    enc = tokenizer(texts, padding=True, truncation=True, max_length=32, return_tensors="pt")
    if task == "text-classification":  # short / medium / long text
        lengths = enc["attention_mask"].sum(1)
        labels = torch.bucketize(lengths, torch.tensor([8, 16]))
    else:  # a label per token id
        labels = enc["input_ids"] % model.config.num_labels
        labels[enc["attention_mask"] == 0] = -100
    feeds = {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask")}
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threading costs more than it gains, more so on a busy CI box
    model.train()
    try:
        for _ in range(steps):
            optimizer.zero_grad()
            model(**feeds, labels=labels).loss.backward()
            optimizer.step()
    finally:
        model.eval()
        torch.set_num_threads(threads)


def build_tiny_model(directory: Path, arch: str, task: str, seed: int = 0) -> Path:
    """Write a random tiny `arch` model for `task` into `directory` and return it."""
    import torch
    import transformers

    torch.manual_seed(seed)
    tokenizer = _tokenizer({"bert": "wordpiece", "distilbert": "wordpiece", "roberta": "bpe",
                            "xlm-roberta": "unigram", "camembert": "unigram"}[arch])
    vocab = len(tokenizer)
    pad = tokenizer.pad_token_id
    common = dict(vocab_size=vocab, pad_token_id=pad)
    labels = {"text-classification": ["negative", "neutral", "positive"],
              "token-classification": ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]}.get(task)
    if labels:
        common.update(id2label=dict(enumerate(labels)), label2id={l: i for i, l in enumerate(labels)})
    # A wider init than the default 0.02 keeps random logits apart, so top-1 agreement measures
    # quantization error rather than coin flips between near-equal classes.
    if arch == "distilbert":
        config = transformers.DistilBertConfig(dim=32, n_layers=2, n_heads=4, hidden_dim=64,
                                               max_position_embeddings=128, initializer_range=0.1, **common)
    else:
        cls = {"bert": transformers.BertConfig, "roberta": transformers.RobertaConfig,
               "xlm-roberta": transformers.XLMRobertaConfig, "camembert": transformers.CamembertConfig}[arch]
        extra = {} if arch == "bert" else {"bos_token_id": tokenizer.bos_token_id,
                                           "eos_token_id": tokenizer.eos_token_id, "type_vocab_size": 1}
        positions = 128 if arch == "bert" else 130  # RoBERTa offsets positions by padding_idx + 1
        config = cls(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                     max_position_embeddings=positions, initializer_range=0.1, **common, **extra)
    auto = {"feature-extraction": transformers.AutoModel,
            "text-classification": transformers.AutoModelForSequenceClassification,
            "token-classification": transformers.AutoModelForTokenClassification}[task]
    model = auto.from_config(config).eval()
    if labels:
        _fine_tune(model, tokenizer, task)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
