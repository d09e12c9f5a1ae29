"""SmoothQuant-style rescaling of the FULLY_CONNECTED inputs of an FP32 .tflite
(converters/tflite/smooth.py): the float model computes what it did, the Hessians derived for
the smoothed weights are the ones a tap of the smoothed model gives, the scaling rule shrinks the
per-token int8 error an outlier channel (what BERT-style encoders carry) causes, and the recipes
smooth by default (INT8) or when configured (INT4). MiniLM's figures: benchmarks/RESULTS.md run AI.
"""

from __future__ import annotations

import numpy as np
import pytest

# Required dependencies (setup.cfg): imported, never skipped, so a broken install fails here.
import ai_edge_litert  # noqa: F401
import litert_torch  # noqa: F401

from converters.core.validate import make_batches
from converters.inputs.calibration import load_texts
from converters.inputs.source import load_source
from converters.tflite import GptqInt4Config, TfliteExportConfig, export_tflite, quantize_tflite
from converters.tflite.flatbuffer import FC, find_weights, float_weights, op_counts
from converters.tflite.hessians import HessianCache, collect_hessians, with_prefixes
from converters.tflite.signatures import calibration_rows, signature_lengths
from converters.tflite.smooth import smooth_fc_inputs
from edge_runtime import backends

OUTLIER_CHANNEL, OUTLIER_GAIN = 5, 40.0


@pytest.fixture(scope="module")
def outlier_bert(tiny_model_factory, tmp_path_factory):
    """A tiny random BERT whose embeddings carry one channel 40x larger than the rest (so every
    layer's residual stream, and the normalized inputs of its FCs, has an outlier channel),
    exported with buckets 16 and 32; fit rows and disjoint validation rows."""
    import torch

    source = load_source(tiny_model_factory("bert", "feature-extraction"))
    embeddings = next(m for _, m in source.module.named_modules() if hasattr(m, "word_embeddings"))
    with torch.no_grad():
        embeddings.word_embeddings.weight[:, OUTLIER_CHANNEL] *= OUTLIER_GAIN
        embeddings.position_embeddings.weight[:, OUTLIER_CHANNEL] *= OUTLIER_GAIN
    root = tmp_path_factory.mktemp("tflite-smooth")
    export_tflite(source, root / "fp32.tflite", TfliteExportConfig(buckets=(16, 32)))
    texts = load_texts().texts
    return source, root / "fp32.tflite", make_batches(source, texts[:48]), make_batches(source, texts[48:96])


def _rows(path, batches):
    return with_prefixes(calibration_rows(batches, max(signature_lengths(path))), (1, 2, 3))


def _fcs(path):
    return {b: w for b, w in find_weights(path).items() if w.kind == FC}


def _outputs(path, batches):
    session = backends.open_session("tflite", path, threads=1)
    rows = calibration_rows(batches, max(signature_lengths(path)))
    return [next(iter(session.run(row).values())) for row in rows]


@pytest.mark.slow  # a TFLite export and two Hessian taps
def test_smoothing_keeps_the_float_model_and_its_hessians_follow(outlier_bert, tmp_path):
    _, fp32, fit, validation = outlier_bert
    rows = _rows(fp32, fit)
    fcs = _fcs(fp32)
    hessians = collect_hessians(fp32, fcs, rows)
    smoothed = tmp_path / "smoothed.tflite"
    result = smooth_fc_inputs(fp32, smoothed, hessians, alpha=0.5)

    # 4 input tensors per layer (query/key/value share one), 2 layers, 2 signatures.
    assert result.mul_ops == 4 * 2 * 2
    before, after = op_counts(fp32), op_counts(smoothed)
    for signature in before:
        assert after[signature]["MUL"] == before[signature].get("MUL", 0) + 8
        assert after[signature]["FULLY_CONNECTED"] == before[signature]["FULLY_CONNECTED"]
    # The outlier channel is divided down; the weights took what the inputs gave up.
    new_fcs = _fcs(smoothed)
    assert set(result.scales) == set(new_fcs)
    normalized = [b for b, w in new_fcs.items() if any(k in w.name for k in ("query", "key", "value", "intermediate"))]
    assert len(normalized) == 8
    for buffer in normalized:  # the FCs reading a LayerNorm's output
        assert result.scales[buffer][OUTLIER_CHANNEL] > 2 * np.median(result.scales[buffer])
    old_weights, new_weights = float_weights(fp32, list(fcs.values())), float_weights(smoothed, list(new_fcs.values()))
    by_name = {w.name: b for b, w in fcs.items()}
    for buffer, weight in new_fcs.items():
        np.testing.assert_allclose(new_weights[buffer], old_weights[by_name[weight.name]] * result.scales[buffer][None, :],
                                   rtol=1e-6)

    for want, got in zip(_outputs(fp32, validation), _outputs(smoothed, validation)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())

    # The derived Hessians are what tapping the smoothed model gives.
    tapped = collect_hessians(smoothed, new_fcs, rows)
    for buffer in new_fcs:
        np.testing.assert_allclose(result.hessians[buffer], tapped[buffer], rtol=1e-4,
                                   atol=1e-6 * np.abs(tapped[buffer]).max())


def _per_token_int8(x: np.ndarray) -> np.ndarray:
    """x after XNNPACK's dynamic quantization: asymmetric int8, one scale per row (token)."""
    low, high = np.minimum(x.min(1, keepdims=True), 0), np.maximum(x.max(1, keepdims=True), 0)
    scale = (high - low) / 255
    zero = np.round(-128 - low / scale)
    return (np.clip(np.round(x / scale) + zero, -128, 127) - zero) * scale


def _per_channel_int8(w: np.ndarray) -> np.ndarray:
    scale = np.abs(w).max(1, keepdims=True) / 127
    return np.round(w / scale) * scale


def test_scales_shrink_the_int8_error_an_outlier_channel_causes():
    """The rule of smooth._scale on one FC: tokens whose channel 5 is 30x the others (as in BERT's
    residual stream). Per-token int8 of x and per-channel int8 of W give a larger output error
    than the same on x / s and W diag(s)."""
    from converters.tflite.smooth import _scale

    rng = np.random.default_rng(0)
    x = rng.normal(size=(512, 64)).astype(np.float32)
    x[:, OUTLIER_CHANNEL] *= 30
    w = rng.normal(size=(48, 64)).astype(np.float32) * 0.1
    want = x @ w.T
    s = _scale(x.T.astype(np.float64) @ x / len(x), [w], alpha=0.5)
    assert s[OUTLIER_CHANNEL] == s.max() and 0.99 < np.exp(np.log(s).mean()) < 1.01
    plain = _per_token_int8(x) @ _per_channel_int8(w).T - want
    smooth = _per_token_int8(x / s) @ _per_channel_int8(w * s).T - want
    assert np.sqrt((smooth**2).mean()) < 0.5 * np.sqrt((plain**2).mean())


@pytest.mark.slow  # a TFLite export and two quantizations
def test_the_int8_recipe_smooths_by_default_and_records_it(outlier_bert, tmp_path):
    """gptq_wi8_afp32 smooths unless told not to (smooth_alpha=None); the smoothed weights'
    Hessians are derived from the original's (tapped once, shared through the cache), and the
    intermediate file is removed."""
    _, fp32, fit, validation = outlier_bert
    cache = HessianCache()
    plain = quantize_tflite(fp32, tmp_path / "plain.tflite", "gptq_wi8_afp32", fit, validation=validation,
                            floor=(0.0, 0.0), hessians=cache, smooth_alpha=None)
    smooth = quantize_tflite(fp32, tmp_path / "smooth.tflite", "gptq_wi8_afp32", fit, validation=validation,
                             floor=(0.0, 0.0), hessians=cache)
    assert plain["smoothing"] is None and plain["gptq"]["hessians_from"] == HessianCache.INTERPRETER
    assert smooth["smoothing"]["alpha"] == 0.5 and smooth["smoothing"]["weights"] == 12
    assert smooth["smoothing"]["mul_ops"] == 16
    assert smooth["gptq"]["hessians_from"] == HessianCache.INTERPRETER + ", rescaled by the smoothing"
    assert cache.collected == 12  # the original's statistics, tapped once; the smoothed ones derived
    assert smooth["validation_metrics"]["cosine_min"] > 0.999
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain.tflite", "smooth.tflite"]


@pytest.mark.slow  # a TFLite export
def test_a_rewrite_that_changes_the_numbers_is_refused(outlier_bert, tmp_path, monkeypatch):
    from converters._errors import ConversionError
    from converters.tflite import smooth

    _, fp32, _, _ = outlier_bert
    fcs = _fcs(fp32)
    hessians = {b: np.eye(w.shape[1]) for b, w in fcs.items()}
    original = smooth._mul_op
    # x * x instead of x * (1/s): a wiring mistake the postcondition must catch.
    monkeypatch.setattr(smooth, "_mul_op", lambda fb, opcode, x, inverse, out: original(fb, opcode, x, x, out))
    with pytest.raises(ConversionError, match="changed signature seq16's output"):
        smooth_fc_inputs(fp32, tmp_path / "broken.tflite", hessians)
    assert not (tmp_path / "broken.tflite").exists()


@pytest.mark.slow  # a TFLite export and a quantization
def test_the_int4_recipe_smooths_when_configured(outlier_bert, tmp_path):
    """Off by default for INT4 (GptqInt4Config.smooth_alpha); when set, the compact copy the INT4
    builder reads is made from the smoothed model and shares its derived Hessians."""
    _, fp32, fit, validation = outlier_bert
    cache = HessianCache()
    config = GptqInt4Config(embedding_min_elements=1000, smooth_alpha=0.5)
    report = quantize_tflite(fp32, tmp_path / "int4.tflite", "gptq_wi4b32_afp32", fit, validation=validation,
                             int4=config, hessians=cache)
    assert report["smoothing"]["weights"] == 12 and report["config"]["smooth_alpha"] == 0.5
    assert report["hessians_from"] == HessianCache.INTERPRETER + ", rescaled by the smoothing"
    assert cache.collected == 12
    assert op_counts(tmp_path / "int4.tflite")["seq16"]["MUL"] == op_counts(fp32)["seq16"].get("MUL", 0) + 8
    assert min(report["cosine_vs_float_synthetic"].values()) > 0.99
    assert sorted(p.name for p in tmp_path.iterdir()) == ["int4.tflite"]
    with pytest.raises(Exception, match="smooth_alpha 1.5 must be in"):
        GptqInt4Config(smooth_alpha=1.5)


@pytest.mark.slow  # a litert-torch conversion
def test_a_weight_read_from_several_inputs_is_scaled_once(tmp_path):
    """A Linear applied twice (ALBERT shares its layers this way): one weight, FC ops reading two
    different tensors. Each input gets its own MUL, the weight is scaled once, the numbers stay."""
    import torch
    from ai_edge_litert.interpreter import Interpreter

    class Twice(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.norm, self.linear = torch.nn.LayerNorm(32), torch.nn.Linear(32, 32)

        def forward(self, x):
            h = self.linear(self.norm(x))
            return self.linear(torch.relu(h)) + h

    path = tmp_path / "twice.tflite"
    sample = torch.randn(1, 8, 32)
    sample[..., OUTLIER_CHANNEL] *= 20
    litert_torch.convert(Twice().eval(), (sample,)).export(str(path))
    fcs = _fcs(path)
    assert len(fcs) == 1 and len({x for _, x in next(iter(fcs.values())).inputs}) == 2
    hessians = {b: np.diag(np.linspace(1.0, 4.0, 32)) for b in fcs}
    result = smooth_fc_inputs(path, tmp_path / "smoothed.tflite", hessians)
    assert result.mul_ops == 2 and len(result.scales) == 1
    runs = []
    for model in (path, tmp_path / "smoothed.tflite"):
        interpreter = Interpreter(model_path=str(model))
        runner = interpreter.get_signature_runner()
        runs.append(next(iter(runner(**{next(iter(runner.get_input_details())): sample.numpy()}).values())))
    np.testing.assert_allclose(runs[1], runs[0], rtol=1e-4, atol=1e-4 * np.abs(runs[0]).max())
