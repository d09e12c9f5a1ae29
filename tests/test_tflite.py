"""TFLite path: export (litert-torch) -> quantize (ai-edge-quantizer) -> run (edge_runtime's
tflite backend), every architecture x task on tiny random models, compared with PyTorch.

Each model is converted once (two buckets, 16 and 32; a 256 bucket is asked for and must be
dropped since the tiny models take 128 tokens) and shared by the tests below.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

# Required dependencies (setup.cfg): imported, never skipped, so a broken install fails here.
import ai_edge_litert  # noqa: E402,F401
import ai_edge_quantizer  # noqa: E402,F401
import litert_torch  # noqa: E402,F401

from tiny_models import ARCHITECTURES, TASKS

from converters._errors import ConversionError
from edge_runtime import InputError, backends

# slow tier: exports TFLite models for every architecture and task
pytestmark = pytest.mark.slow

BUCKETS = (16, 32, 256)  # 256 > the tiny models' max_length (128): dropped
TEXTS = [
    "Edge devices run compressed transformer models with a slim runtime and verified artifacts.",
    "short",
    "The meeting has been rescheduled to next Tuesday.",
]
# Accuracy against PyTorch FP32, per row (cosine over the row's unmasked outputs), with the
# lowest value measured over all 12 models x 4 batches below (ai-edge-litert 2.3, XNNPACK):
# - fp32: max abs diff <= 2e-6 (checked separately, 1e-4 relative).
# - int8 (dynamic_wi8_afp32, per-channel): lowest 0.99995; floor 0.999.
# - int4 (dynamic_wi4b32_afp32): lowest 0.992; floor 0.98. Hidden size 32 makes each 32-block
#   a whole weight row, so this is per-row INT4 on tiny random weights; on MiniLM the same
#   recipe gives 0.85 (docs/notes/tflite-findings.md): this floor guards the rewrite, not quality.
COSINE_FLOOR = {"fp32": 0.99999, "int8": 0.999, "int4": 0.98}


@pytest.fixture(scope="session")
def tflite_artifacts(tiny_model_factory, tmp_path_factory):
    """(arch, task) -> (source, export info, {precision: path}), converted once per session."""
    from converters.inputs.source import load_source
    from converters.tflite import TfliteExportConfig, export_tflite, quantize_tflite

    cache = {}

    def build(arch: str, task: str):
        if (arch, task) not in cache:
            source = load_source(tiny_model_factory(arch, task))
            out = tmp_path_factory.mktemp(f"tflite-{arch}-{task}")
            info = export_tflite(source, out / "fp32.tflite", TfliteExportConfig(buckets=BUCKETS))
            paths = {"fp32": out / "fp32.tflite"}
            for precision, recipe in (
                ("int8", "dynamic_wi8_afp32"),
                ("int4", "dynamic_wi4b32_afp32"),
            ):
                paths[precision] = out / f"{precision}.tflite"
                quantize_tflite(paths["fp32"], paths[precision], recipe)
            cache[arch, task] = (source, info, paths)
        return cache[arch, task]

    return build


def _encode(source, texts, max_length):
    enc = source.tokenizer(
        texts, padding=True, truncation=True, max_length=max_length, return_tensors="np"
    )
    ids = enc["input_ids"].astype(np.int64)
    # token_type_ids: all zeros for single texts (the tiny tokenizers do not emit them)
    return {
        name: enc[name].astype(np.int64) if name in enc else np.zeros_like(ids)
        for name in source.input_names
    }


def _torch(source, feeds):
    """The Hugging Face model itself (not our export wrappers), int64, its own mask handling."""
    import torch

    with torch.no_grad():
        out = source.module.inner(**{k: torch.from_numpy(v) for k, v in feeds.items()})
    return (out.last_hidden_state if source.task == "feature-extraction" else out.logits).numpy()


def _row_cosines(got, want, mask, task):
    if task == "text-classification":
        # A tiny random classifier's 2 logits per row can both be near 0, where a per-row
        # cosine means nothing (a 0.01 shift flips its sign): compare the batch's logits as one.
        a, b = got.ravel().astype(np.float64), want.ravel().astype(np.float64)
        return np.array([float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))])
    rows = []
    for row in range(want.shape[0]):
        a, b = got[row], want[row]
        if task != "text-classification":  # sequence outputs: unmasked tokens only
            keep = mask[row].astype(bool)
            a, b = a[keep], b[keep]
        a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
        rows.append(float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))))
    return np.array(rows)


# Batches that exercise the bucket logic: (texts, truncation length) -> [batch, seq] with
# seq < 16 (padded to 16), seq == 16 (no padding), 16 < seq < 32 (next bucket), seq == 32.
CASES = {
    "one-row-padded": ([TEXTS[1]], 128),
    "batch3-exact16": (TEXTS, 16),
    "batch3-padded-to-32": (TEXTS, 24),
    "batch2-exact32": ([TEXTS[0] + " " + TEXTS[2]] * 2, 32),
}
CASE_SHAPES = {
    "one-row-padded": lambda s: s[0] == 1 and s[1] < 16,
    "batch3-exact16": lambda s: s == (3, 16),
    "batch3-padded-to-32": lambda s: s == (3, 24),
    "batch2-exact32": lambda s: s == (2, 32),
}


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_export_and_run_matches_torch(tflite_artifacts, arch, task):
    source, info, paths = tflite_artifacts(arch, task)

    assert info["buckets"] == [16, 32]  # 256 dropped: longer than max_length 128
    assert info["signatures"] == {"seq16": 16, "seq32": 32}
    assert info["input_names"] == source.input_names
    assert info["output_names"] == source.output_names
    assert max(info["max_abs_diff"].values()) < 1e-4
    ops = info["op_counts"]["seq16"]
    assert ops["FULLY_CONNECTED"] >= 12  # 2 layers x (Q, K, V, out, FFN in, FFN out)
    # The additive mask keeps transformers' mask builder (GATHER_ND v5, SELECT_V2) out.
    assert "SELECT_V2" not in ops and "LOGICAL_AND" not in ops

    failures = []
    for precision, path in paths.items():
        session = backends.open_session("tflite", path, threads=1)
        assert session.providers == ["XNNPACK"] and session.buckets == [16, 32]
        assert session.input_names == sorted(source.input_names)
        for case, (texts, max_length) in CASES.items():
            feeds = _encode(source, texts, max_length)
            assert CASE_SHAPES[case](feeds["input_ids"].shape), (case, feeds["input_ids"].shape)
            want = _torch(source, feeds)
            got = session.run(feeds)[source.output_names[0]]
            assert got.shape == want.shape, (precision, case)
            if precision == "fp32":
                err = float(np.abs(got - want).max())
                if err > 1e-4 * max(1.0, float(np.abs(want).max())):
                    failures.append(f"{precision} {case}: max abs diff {err:.3g}")
            cos = _row_cosines(got, want, feeds["attention_mask"], task)
            if cos.min() < COSINE_FLOOR[precision]:
                failures.append(
                    f"{precision} {case}: row cosines {np.round(cos, 4).tolist()} "
                    f"< {COSINE_FLOOR[precision]}"
                )
    assert not failures, f"{arch} {task}:\n  " + "\n  ".join(failures)


def test_feeds_int32_and_int64_agree(tflite_artifacts):
    source, _, paths = tflite_artifacts("bert", "feature-extraction")
    session = backends.open_session("tflite", paths["fp32"], threads=2)
    feeds = _encode(source, TEXTS, 24)
    got64 = session.run(feeds)["last_hidden_state"]
    got32 = session.run({k: v.astype(np.int32) for k, v in feeds.items()})["last_hidden_state"]
    np.testing.assert_array_equal(got32, got64)


def test_rows_are_independent_of_batch(tflite_artifacts):
    """Row-by-row execution: a row's output does not depend on what else is in the batch."""
    source, _, paths = tflite_artifacts("roberta", "token-classification")
    session = backends.open_session("tflite", paths["int8"], threads=1)
    feeds = _encode(source, TEXTS, 24)
    batched = session.run(feeds)["logits"]
    alone = session.run({k: v[1:2] for k, v in feeds.items()})["logits"]
    np.testing.assert_array_equal(batched[1:2], alone)


def test_too_long_and_malformed_inputs_raise_input_error(tflite_artifacts):
    source, _, paths = tflite_artifacts("bert", "text-classification")
    session = backends.open_session("tflite", paths["fp32"], threads=1)
    feeds = _encode(source, [" ".join(TEXTS * 4)], 40)
    assert feeds["input_ids"].shape == (1, 40)
    with pytest.raises(InputError, match=r"sequence length 40 exceeds .*32.*buckets \[16, 32\]"):
        session.run(feeds)
    ok = _encode(source, TEXTS, 16)
    with pytest.raises(InputError, match="missing"):
        session.run({"input_ids": ok["input_ids"]})
    with pytest.raises(InputError, match=r"\[batch, seq\]"):
        session.run({k: v[0] for k, v in ok.items()})
    with pytest.raises(InputError, match="integer"):
        session.run({k: v.astype(np.float32) for k, v in ok.items()})
    empty = session.run({k: v[:0] for k, v in ok.items()})["logits"]
    assert empty.shape == (0, 3)


def test_export_refuses_buckets_longer_than_the_model(tiny_model_factory, tmp_path):
    from converters.inputs.source import load_source
    from converters.tflite import TfliteExportConfig, export_tflite

    source = load_source(tiny_model_factory("distilbert", "feature-extraction"))
    with pytest.raises(ConversionError, match="max_length 128"):
        export_tflite(source, tmp_path / "x.tflite", TfliteExportConfig(buckets=(256, 512)))
    with pytest.raises(ConversionError, match="positive ints"):
        export_tflite(source, tmp_path / "x.tflite", TfliteExportConfig(buckets=(0, 16)))
    assert not (tmp_path / "x.tflite").exists()


def test_quantize_keeps_signatures_and_refuses_broken_recipes(tflite_artifacts, tmp_path):
    from converters.tflite import quantize_tflite

    _, _, paths = tflite_artifacts("bert", "feature-extraction")
    info = quantize_tflite(paths["fp32"], tmp_path / "w8.tflite", "dynamic_wi8_afp32")
    assert info["signatures"] == ["seq16", "seq32"] and info["precision"] == "int8"
    assert info["bytes"] < paths["fp32"].stat().st_size
    assert min(info["cosine_vs_float_synthetic"].values()) > 0.99
    with pytest.raises(ConversionError, match="static_wi8_ai8.*not supported.*0.288"):
        quantize_tflite(paths["fp32"], tmp_path / "s8.tflite", "static_wi8_ai8")
    with pytest.raises(ConversionError, match="unknown TFLite recipe.*dynamic_wi8_afp32"):
        quantize_tflite(paths["fp32"], tmp_path / "x.tflite", "int3_magic")


def test_tflite_backend_stays_lean(tflite_artifacts):
    """Opening and running a TFLite session imports no torch, transformers or onnx."""
    _, _, paths = tflite_artifacts("bert", "feature-extraction")
    code = (
        "import sys, numpy as np\n"
        "from edge_runtime import backends\n"
        f"s = backends.open_session('tflite', {str(paths['int8'])!r}, threads=1)\n"
        "ids = np.ones((2, 5), np.int64)\n"
        "out = s.run({'input_ids': ids, 'attention_mask': ids, 'token_type_ids': 0 * ids})\n"
        "assert out['last_hidden_state'].shape == (2, 5, 32)\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'onnx') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    done = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
