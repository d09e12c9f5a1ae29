"""Tiny random Hugging Face checkpoints (config + weights + fast tokenizer) built in-process.

Every supported architecture gets the tokenizer family it ships with in real life
(WordPiece for BERT/DistilBERT, byte-level BPE for RoBERTa, Unigram for XLM-R), trained in
milliseconds on the built-in texts, so padding ids, special tokens and token types are real.
"""

from __future__ import annotations

from pathlib import Path

ARCHITECTURES = ("bert", "distilbert", "roberta", "xlm-roberta")
TASKS = ("feature-extraction", "text-classification", "token-classification")
TEXTS = Path(__file__).resolve().parents[1] / "converters" / "data" / "calibration_en.txt"


def _texts() -> list[str]:
    return [t for t in TEXTS.read_text(encoding="utf-8").splitlines() if t and not t.startswith("#")]


def _tokenizer(kind: str):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if kind == "wordpiece":
        specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tok.normalizer = normalizers.BertNormalizer(lowercase=True)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.train_from_iterator(_texts(), trainers.WordPieceTrainer(vocab_size=400, special_tokens=specials))
        cls, sep = "[CLS]", "[SEP]"
        names = dict(pad_token="[PAD]", unk_token="[UNK]", cls_token=cls, sep_token=sep, mask_token="[MASK]")
    else:
        specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
        if kind == "bpe":
            tok = Tokenizer(models.BPE(unk_token="<unk>"))
            tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
            tok.decoder = decoders.ByteLevel()
            trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                          initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        else:  # unigram, like XLM-R's sentencepiece
            tok = Tokenizer(models.Unigram())
            tok.pre_tokenizer = pre_tokenizers.Metaspace()
            tok.decoder = decoders.Metaspace()
            trainer = trainers.UnigramTrainer(vocab_size=400, special_tokens=specials, unk_token="<unk>")
        tok.train_from_iterator(_texts(), trainer)
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
                            "xlm-roberta": "unigram"}[arch])
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
               "xlm-roberta": transformers.XLMRobertaConfig}[arch]
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
