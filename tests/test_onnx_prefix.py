"""ONNX ranking candidates scored from where they differ from the start model
(converters/onnx/prefix.py): a cut candidate's suffix answers what the whole candidate answers,
bit for bit, on this machine's kernels and on both forms of the exact int32 reference; a cut
point whose suffix does not reproduce the start model is left out; a W4A8 ranking gives the same
numbers with and without cuts.

One tiny random BERT (two layers), prepared for W4A8 as the pipeline does, is shared by the module.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from converters.core.arithmetic import Validation, ValidationSessions
from converters.core.prefix_points import choose_points
from converters.core.search import LaneScorer
from converters.inputs.source import load_source
from converters.onnx.prefix import OnnxPrefixCuts, sample_rows
from converters.onnx.quantize_w4a8 import W4A8Space, W4A8Weights
from w4a8_graphs import prepare

# How candidates are scored: this machine's kernels, the exact reference on the u8 x u8 integer
# GEMM, and on float chunks (core/arithmetic.py).
VALIDATIONS = {
    "host": Validation("int32", "int32", False, "test"),
    "exact-u8": Validation("int32", "s16-pairs", True, "test", "u8-integer-gemm"),
    "exact-float": Validation("int32", "s16-pairs", True, "test", "float-chunks"),
}


@pytest.fixture(scope="module")
def prepared(tiny_model_factory, tmp_path_factory):
    source = load_source(tiny_model_factory("bert", "feature-extraction"))
    graphs = prepare(source, tmp_path_factory.mktemp("onnx-prefix"))
    weights = W4A8Weights(graphs["int8"], graphs["split"], graphs["smooth"], graphs["batches"], graphs["qrange"])
    weights.solve()
    return graphs, weights


def _opener(validation: str, work):
    sessions = ValidationSessions(VALIDATIONS[validation], work)
    return lambda path, threads: sessions(path, threads).run


def _names(weights) -> list[str]:
    return [f"{w}_quantized" for w in weights.weights]


@pytest.mark.parametrize("validation", sorted(VALIDATIONS))
def test_every_cut_candidate_answers_what_the_whole_one_does(prepared, tmp_path, validation):
    graphs, weights = prepared
    opener = _opener(validation, tmp_path)
    everything = set(weights.weights)
    start = weights.build(everything, unpacked=True)
    cuts = OnnxPrefixCuts(start, tmp_path, opener, sample_rows(graphs["batches"][0]), _names(weights))
    assert cuts.active and cuts.points
    cut_count = 0
    for weight in weights.weights:
        candidate = weights.build(everything - {weight}, unpacked=True)
        whole = tmp_path / "whole.onnx"
        onnx.save(candidate, str(whole))
        path = tmp_path / "cut.onnx"
        if cuts.save_cut(candidate, path):
            cut_count += 1
            assert len(onnx.load(str(path)).graph.node) < len(candidate.graph.node)
            run = cuts.runner(path, 1)
        else:
            run = opener(path, 1)
        for feeds in graphs["batches"][:2] + [graphs["heldout"]]:
            want, got = opener(whole, 1)(feeds), run(feeds)
            assert list(got) == list(want)
            for name in want:
                assert np.array_equal(got[name], want[name]), (weight, name)
    # Two layers: the second layer's weights, and the first layer's FFN, start after a cut point.
    assert cut_count >= len(weights.weights) // 2
    cuts.close()


def test_a_candidate_is_cut_before_its_first_change_or_not_at_all(prepared, tmp_path):
    graphs, weights = prepared
    everything = set(weights.weights)
    start = weights.build(everything, unpacked=True)
    cuts = OnnxPrefixCuts(start, tmp_path, _opener("host", tmp_path), sample_rows(graphs["batches"][0]),
                          _names(weights))
    assert cuts.cut(start)[1] == cuts.points[-1]  # nothing changed: the last point
    nodes = list(start.graph.node)
    for weight in weights.weights:
        reader = next(k for k, n in enumerate(nodes) if f"{weight}_quantized" in n.input)
        cut = cuts.cut(weights.build(everything - {weight}, unpacked=True))
        earlier = [p for p in cuts.points if p <= reader]
        assert (cut is None) if not earlier else (cut[1] == earlier[-1])
    # A node changed in another way (an attribute) is a change there too.
    other = onnx.ModelProto()
    other.CopyFrom(start)
    late = cuts.points[-1] + 1
    while other.graph.node[late].op_type in ("Constant",):
        late += 1
    other.graph.node[late].doc_string = "changed"
    assert cuts._first_change(other) == late
    # Another graph signature (an input renamed) cannot be cut at all.
    other.graph.input[0].name = "renamed"
    assert cuts.cut(other) is None


def test_a_candidate_wired_otherwise_after_its_cut_point_is_scored_whole(prepared, tmp_path):
    """Found by a review (session 49): a candidate whose node after the cut point reads a tensor
    made before it that the start's nodes there do not read was cut anyway, and loading its
    suffix failed (an invalid model) instead of the candidate being scored whole."""
    graphs, weights = prepared
    start = weights.build(set(weights.weights), unpacked=True)
    cuts = OnnxPrefixCuts(start, tmp_path, _opener("host", tmp_path), sample_rows(graphs["batches"][0]),
                          _names(weights))
    point = cuts.points[-1]
    crossing = set(cuts._analysis.crossing[point])
    made_before = [o for node in list(start.graph.node)[:point] for o in node.output]
    early = next(name for name in made_before if name not in crossing and "LayerNorm" in name)
    candidate = onnx.ModelProto()
    candidate.CopyFrom(start)
    nodes = candidate.graph.node
    k = next(i for i in range(point, len(nodes)) if nodes[i].op_type == "Add" and len(nodes[i].input) == 2
             and nodes[i].input[1] not in crossing)
    nodes[k].input[1] = early  # same shape: a residual from an earlier layer
    onnx.checker.check_model(candidate)
    assert cuts.cut(candidate) is None
    assert not cuts.save_cut(candidate, tmp_path / "whole.onnx") and not cuts.is_cut(tmp_path / "whole.onnx")
    cuts.close()


def test_a_point_that_cannot_be_proven_is_dropped_alone_and_no_tap_is_left(prepared, tmp_path):
    """Found by a review (session 49): one proof that raised dropped every point, and the tap file
    stayed in the work directory when building the cuts failed."""
    graphs, weights = prepared
    honest = _opener("host", tmp_path)
    start = weights.build(set(weights.weights), unpacked=True)
    points = OnnxPrefixCuts(start, tmp_path, honest, sample_rows(graphs["batches"][0]), _names(weights)).points
    assert len(points) >= 2
    proofs = []

    def one_proof_fails(path, threads):
        if "proof" in path.name:
            proofs.append(path)
            if len(proofs) == 1:
                raise RuntimeError("this proof file cannot be opened")
        return honest(path, threads)

    cuts = OnnxPrefixCuts(start, tmp_path, one_proof_fails, sample_rows(graphs["batches"][0]), _names(weights))
    assert cuts.points == points[1:]
    cuts.close()

    def interrupted(path, threads):
        if "proof" in path.name:
            raise KeyboardInterrupt
        return honest(path, threads)

    with pytest.raises(KeyboardInterrupt):
        OnnxPrefixCuts(start, tmp_path, interrupted, sample_rows(graphs["batches"][0]), _names(weights))
    assert not list(tmp_path.glob("prefix-*"))  # no tap, proof or start file left


def test_a_point_whose_suffix_differs_is_left_out(prepared, tmp_path):
    """onnxruntime optimizes each file on its own; a suffix that computes other numbers (here:
    made to, by a session that adds 1e-7 to every answer of a proof file) is never used."""
    graphs, weights = prepared
    honest = _opener("host", tmp_path)

    def opener(path, threads):
        run = honest(path, threads)
        if "proof" not in path.name:
            return run
        return lambda feeds: {k: v + np.float32(1e-7) if v.dtype == np.float32 else v for k, v in run(feeds).items()}

    start = weights.build(set(weights.weights), unpacked=True)
    cuts = OnnxPrefixCuts(start, tmp_path, opener, sample_rows(graphs["batches"][0]), _names(weights))
    assert not cuts.active and cuts.points == []
    assert not cuts.save_cut(start, tmp_path / "whole.onnx")  # written whole
    assert len(onnx.load(str(tmp_path / "whole.onnx")).graph.node) == len(start.graph.node)


def _scorers(graphs, opener):
    """A plain ranking scorer and one that can cut (through, opener), on two fit batches."""
    from converters.core.validate import Reference, compute_metrics

    fp32 = opener(graphs["fp32"], 1)
    texts = Reference(graphs["batches"][:2], [fp32(f)["last_hidden_state"] for f in graphs["batches"][:2]])

    class Source:  # what compute_metrics reads of a source model
        output_names = ["last_hidden_state"]
        task = "feature-extraction"
        postprocess = {"pooling": "mean", "normalize": True}

    def through(run):
        return compute_metrics(Source(), texts, run)

    plain = LaneScorer(lambda path, threads: through(opener(path, threads)), lanes=2)
    return plain, LaneScorer(plain.score, lanes=2, through=through, opener=opener)


@pytest.mark.parametrize("validation", ["host", "exact-u8"])
def test_a_w4a8_ranking_scores_the_same_with_cut_candidates(prepared, tmp_path, validation):
    graphs, weights = prepared
    plain, cutting = _scorers(graphs, _opener(validation, tmp_path))
    moves = [frozenset({w}) for w in weights.weights]
    whole = W4A8Space(weights, tmp_path / "a.onnx", rank=plain, judge=plain).rank_each(moves)
    cut = W4A8Space(weights, tmp_path / "b.onnx", rank=cutting, judge=cutting).rank_each(moves)
    assert cut == whole
    assert not list(tmp_path.glob("prefix-*"))  # the tap and proof files are gone


def test_a_start_model_the_cut_cannot_read_is_ranked_whole(prepared, tmp_path, monkeypatch, caplog):
    from converters.onnx import prefix

    graphs, weights = prepared
    plain, cutting = _scorers(graphs, _opener("host", tmp_path))
    moves = [frozenset({w}) for w in weights.weights[:3]]
    whole = W4A8Space(weights, tmp_path / "a.onnx", rank=plain, judge=plain).rank_each(moves)

    def unreadable(*args):
        raise ValueError("an op this reader does not know")

    monkeypatch.setattr(prefix._Analysis, "__init__", unreadable)
    with caplog.at_level("INFO", logger="converters"):
        assert W4A8Space(weights, tmp_path / "b.onnx", rank=cutting, judge=cutting).rank_each(moves) == whole
    assert "ranking every candidate whole" in caplog.text and "an op this reader does not know" in caplog.text


def test_cut_points_that_serve_no_candidate_are_dropped():
    # Changes at 10 and 30: 5 is the latest point before 10, 25 before 30; no change lies
    # between 20 and 25, so 20 is nobody's latest point.
    points = choose_points([5, 20, 25], [10, 30], {5: 1.0, 20: 1.0, 25: 1.0}, 100)
    assert points == [5, 25]
