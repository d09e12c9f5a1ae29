"""Every supported architecture x task, converted for every target, run through edge_runtime
and compared with PyTorch on texts the converter never saw."""

from __future__ import annotations

import json

import numpy as np
import pytest
from tiny_models import ARCHITECTURES, TASKS

import edge_runtime
from converters import ConvertConfig, convert
from converters.core.arithmetic import ValidationSessions, choose_validation
from converters.tflite.hessians import HessianCache
from edge_runtime import DeviceMismatchError
from edge_runtime._compat import arithmetic_problem
from edge_runtime._device import detect
from targets import list_profiles, load_profile

# slow tier: converts a tiny model for every architecture, task and target
pytestmark = pytest.mark.slow

HELD_OUT = [
    "A completely new sentence that is not in the calibration set.",
    "short",
    "Edge devices run compressed transformer models with a slim runtime and verified artifacts.",
]


def _torch_outputs(model_dir, task, texts):
    """What the source model computes, straight from transformers (not our wrapper)."""
    import torch
    import transformers

    auto = {"feature-extraction": transformers.AutoModel,
            "text-classification": transformers.AutoModelForSequenceClassification,
            "token-classification": transformers.AutoModelForTokenClassification}[task]
    model = auto.from_pretrained(model_dir).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
    value = out.last_hidden_state if task == "feature-extraction" else out.logits
    return value.numpy(), enc["attention_mask"].numpy()


def _check_outputs(name, task, got, want, mask):
    assert got.shape == want.shape
    keep = mask.astype(bool)
    if task == "text-classification":
        keep = np.ones(len(want), bool)
    flat_got, flat_want = got[keep].reshape(keep.sum(), -1), want[keep].reshape(keep.sum(), -1)
    cosine = (flat_got * flat_want).sum(1) / np.linalg.norm(flat_got, axis=1) / np.linalg.norm(flat_want, axis=1)
    if name.endswith("fp32"):
        np.testing.assert_allclose(got[keep], want[keep], atol=2e-4, rtol=1e-3)
    else:
        assert cosine.min() > 0.98, f"{name}: cosine {cosine.min()}"


def _tflite_metrics_do_not_depend_on_batching(out, model_dir, manifest):
    """TFLite metrics are recorded from length-sorted batches (converters/core/validate.
    metric_batches): the texts in their own order, other buckets, must give the same figures."""
    from converters.core.validate import compute_metrics, reference_outputs
    from converters.inputs.calibration import load_texts, split_texts
    from converters.inputs.source import load_source

    entries = [e for e in manifest["artifacts"] if e["format"] == "tflite"]
    if not entries:
        return
    source = load_source(model_dir)
    reference = reference_outputs(source, split_texts(load_texts(None)).validation.texts)
    for entry in entries:
        assert entry["metrics_batches"] == "padded batches of 16, texts sorted by length"
        model = edge_runtime.load(out, artifact=entry["name"], weight_cache=False, tune=False)
        again = compute_metrics(source, reference, model.run, entry["name"])
        for key, value in entry["metrics"].items():
            assert again[key] == pytest.approx(value, abs=1e-6), (entry["name"], key)


@pytest.mark.parametrize("target", [p.id for p in list_profiles()])
@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_convert_and_run(tiny_model_factory, tmp_path, arch, task, target):
    model_dir = tiny_model_factory(arch, task)
    out = tmp_path / "out"
    result = convert(ConvertConfig(model=model_dir, target=target, out=out, latency_runs=2))

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["target"]["id"] == target and manifest["task"] == task
    profile = load_profile(target)
    planned = [f"onnx-{p}" for p in profile.precisions]
    if "tflite" in profile.formats:
        planned += [f"tflite-{p}" for p in profile.tflite.precisions]
        planned += [f"tflite-{p}-legacy" for p in profile.tflite.legacy_recipes]
    shipped = [a["name"] for a in manifest["artifacts"]]
    refused = {r["name"]: r["reason"] for r in manifest["refused"]}
    assert sorted(shipped + list(refused)) == sorted(planned), "every planned artifact is shipped or refused"
    assert {"onnx-fp32", "onnx-int8"} <= set(shipped), refused
    # A tiny model is mostly biases and norms: INT4 cannot meet the 0.16x size budget, and says so.
    assert set(refused) <= {"onnx-int4", "tflite-int4"} and all("size budget" in r for r in refused.values())
    assert {i["name"] for i in manifest["inputs"]} >= {"input_ids", "attention_mask"}
    assert manifest["inputs"][0]["shape"] == ["batch", "sequence"]
    for entry, summary in zip(manifest["artifacts"], result.artifacts):
        assert entry["files"][0]["path"].endswith("." + entry["format"]) and entry["golden"]["sha256"]
        assert summary.bytes == sum(f["bytes"] for f in entry["files"])
        key = "cosine_mean" if task == "feature-extraction" else "top1_agreement"
        assert entry["metrics"][key] >= entry["accuracy_floor"][key]
        gptq = (entry.get("quantization") or {}).get("gptq") or {}
        if gptq:  # the run exported ONNX too: GPTQ's statistics come from it, not the interpreter
            assert gptq["hessians_from"].startswith(HessianCache.TWIN), entry["name"]  # INT8: "..., rescaled by the smoothing"
    assert not list(tmp_path.glob(".out.partial-*")), "staging directory left behind"
    # The manifest is the shipped contract: no path of the run's deleted work directory (TFLite
    # reports carried one, so no two conversions gave the same manifest).
    assert "edge-convert.work-" not in (out / "manifest.json").read_text()
    _tflite_metrics_do_not_depend_on_batching(out, model_dir, manifest)

    want, mask = _torch_outputs(model_dir, task, HELD_OUT)
    device = detect()
    entries = {e["name"]: e for e in manifest["artifacts"]}
    auto = edge_runtime.load(out)
    if arithmetic_problem(entries["onnx-int8"], manifest, device):
        # e.g. an rpi5 artifact on an AVX2-only CPU: its INT8 weights would overflow here
        assert auto.name != "onnx-int8"
    else:
        assert auto.artifact["precision"] == "int8", "the profile prefers INT8"
    for name in shipped:
        if arithmetic_problem(entries[name], manifest, device):
            with pytest.raises(DeviceMismatchError, match="overflow"):
                edge_runtime.load(out, artifact=name)
            # What the target computes, on this CPU: the converter's exact int32 reference.
            exact = ValidationSessions(choose_validation(profile, "exact"), tmp_path)
            feeds = auto._text().encode(HELD_OUT)
            got = exact(out / entries[name]["files"][0]["path"]).run(feeds)[manifest["outputs"][0]["name"]]
            _check_outputs(name, task, got, want, mask)
            continue
        model = edge_runtime.load(out, artifact=name)
        feeds = model._text().encode(HELD_OUT)
        got = model.run(feeds)[manifest["outputs"][0]["name"]]
        _check_outputs(name, task, got, want, mask)
        if task == "feature-extraction":
            vectors = model.embed(HELD_OUT)
            assert vectors.shape == (len(HELD_OUT), want.shape[-1])
            ref = (want * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
            ref_cos = (vectors * ref).sum(1) / np.linalg.norm(vectors, axis=1) / np.linalg.norm(ref, axis=1)
            assert ref_cos.min() > (0.9999 if name.endswith("fp32") else 0.98)
        else:
            labels = model.classify(HELD_OUT)
            known = manifest["postprocess"]["labels"]
            if task == "text-classification":
                assert [r["label"] for r in labels] == [known[i] for i in want.argmax(-1)] or not name.endswith("fp32")
                assert all(0 < r["score"] <= 1 for r in labels)
            else:
                assert len(labels) == len(HELD_OUT)
                assert all(tok["label"] in known for row in labels for tok in row)
                for text, row in zip(HELD_OUT, labels):  # each label placed on the text's own characters
                    covered = {i for tok in row for i in range(tok["start"], tok["end"])}
                    assert {i for i, c in enumerate(text) if not c.isspace()} <= covered <= set(range(len(text)))
                    assert all(tok["word"] == text[tok["start"]:tok["end"]] for tok in row)
