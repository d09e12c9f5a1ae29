"""CamemBERT checkpoints convert (a review, session 52: refused by model_type although transformers
builds CamemBERT as RoBERTa's encoder under its own name, and a copy relabelled "roberta" converted
to cosine 1.0000). Tiny random CamemBERT models (Unigram tokenizer, as the real one's
SentencePiece) through the pipeline for x86-avx2, against transformers' own Camembert classes."""

from __future__ import annotations

import json

import numpy as np
import pytest
from tiny_models import build_tiny_model

import edge_runtime
from converters import ConvertConfig, convert
from edge_runtime._text import pool

TEXTS = ["the market price rose", "", "a much longer sentence about the weather and the sun today " * 4, "x"]


@pytest.fixture(scope="module")
def camembert(tmp_path_factory):
    """{task: (source directory, artifacts)} for feature extraction and text classification."""
    made = {}
    for task in ("feature-extraction", "text-classification"):
        root = tmp_path_factory.mktemp(f"camembert-{task}")
        source = build_tiny_model(root / "model", "camembert", task)
        convert(ConvertConfig(model=source, target="x86-avx2", out=root / "out", latency_runs=1))
        made[task] = (source, root / "out")
    return made


def _torch_outputs(source, texts, task):
    import torch
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(source)
    auto = transformers.AutoModel if task == "feature-extraction" else transformers.AutoModelForSequenceClassification
    model = auto.from_pretrained(source).eval()
    assert type(model).__name__.startswith("Camembert")
    rows = []
    for text in texts:  # one at a time: no padding in the reference
        feeds = tokenizer([text], return_tensors="pt", truncation=True)
        with torch.no_grad():
            out = model(**feeds)
        if task == "feature-extraction":
            rows.append(pool(out.last_hidden_state.numpy(), feeds["attention_mask"].numpy(), "mean", False)[0])
        else:
            rows.append(out.logits.numpy()[0])
    return np.stack(rows)


def test_a_camembert_encoder_embeds_as_transformers_does(camembert):
    source, out = camembert["feature-extraction"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["source"]["model_type"] == "camembert"
    assert {a["name"] for a in manifest["artifacts"]} >= {"onnx-fp32", "onnx-int8"}
    want = _torch_outputs(source, TEXTS, "feature-extraction")
    for name, floor in (("onnx-fp32", 0.9999), ("onnx-int8", 0.99)):
        got = edge_runtime.load(out, artifact=name).embed(TEXTS)
        cosine = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
        assert cosine.min() > floor, (name, cosine)


def test_a_camembert_classifier_agrees_with_transformers(camembert):
    source, out = camembert["text-classification"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["task"] == "text-classification"
    want = _torch_outputs(source, TEXTS, "text-classification")
    labels = manifest["postprocess"]["labels"]
    got = edge_runtime.load(out, artifact="onnx-fp32").classify(TEXTS)
    assert [g["label"] for g in got] == [labels[i] for i in want.argmax(1)]
