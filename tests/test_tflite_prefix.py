"""Ranking candidates scored from where they differ from the start model (converters/tflite/prefix.py):
the suffix of a cut candidate answers what the whole candidate answers, bit for bit; what is not
provably unchanged is scored whole; a search ranks, walks and writes the same with and without it.

One tiny random BERT export with three buckets (16, 32, 64: two layers, so cut points exist in
both) is shared by the module.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

# Required dependencies (setup.cfg): imported, never skipped, so a broken install fails here.
import ai_edge_litert  # noqa: F401

from converters.core.search import LaneScorer
from converters.core.validate import make_batches, rows_alone
from converters.inputs.calibration import load_texts
from converters.inputs.source import load_source
from converters.tflite import GptqInt4Config, TfliteExportConfig, export_tflite, quantize_tflite
from converters.tflite.flatbuffer import compact_copy
from converters.tflite.gptq_int4 import Int4Builder
from converters.tflite.prefix import PrefixCuts
from edge_runtime import backends

TINY_TABLES = 1000  # lets the tiny word table (400 x 32) be INT4, as in test_tflite_recipes.py


@pytest.fixture(scope="module")
def start(tiny_model_factory, tmp_path_factory):
    """(source, FP32 export, the INT4 builder, the all-INT4 start model, feeds of 12 texts)."""
    source = load_source(tiny_model_factory("bert", "feature-extraction"))
    root = tmp_path_factory.mktemp("prefix")
    export_tflite(source, root / "fp32.tflite", TfliteExportConfig(buckets=(16, 32, 64)))
    compact_copy(root / "fp32.tflite", root / "compact.tflite")
    builder = Int4Builder(root / "compact.tflite", GptqInt4Config(size_budget=0.9, embedding_min_elements=TINY_TABLES))
    builder.build(root / "start.tflite", set())
    texts = load_texts().texts
    feeds = make_batches(source, ("Fine.", "Two words") + tuple(texts[:10]), batch_size=12)[0]
    return source, root / "fp32.tflite", builder, root / "start.tflite", feeds


def _outputs(source, run, feeds):
    from converters.core.validate import sequence_outputs

    return rows_alone(run, sequence_outputs(source))(feeds)


def test_every_cut_candidate_answers_what_the_whole_one_does(start, tmp_path):
    source, _, builder, start_path, feeds = start
    cuts = PrefixCuts(start_path, tmp_path)
    assert cuts.active and all(graph.points for graph in cuts.graphs.values())
    lengths = feeds["attention_mask"].sum(axis=1)
    assert lengths.min() <= 16 < 32 < lengths.max(), "rows in three buckets"
    cut = 0
    for weight in builder.int4:
        whole, probe = tmp_path / "whole.tflite", tmp_path / "probe.tflite"
        builder.build(whole, {weight.buffer})
        shutil.copy(whole, probe)
        if not cuts.cut(probe):
            assert probe.read_bytes() == whole.read_bytes(), "a candidate scored whole is left as it was"
            continue
        cut += 1
        want = _outputs(source, backends.open_session("tflite", whole, threads=1).run, feeds)
        got = _outputs(source, cuts.runner(probe, 1), feeds)
        for name in want:
            np.testing.assert_array_equal(got[name], want[name], err_msg=builder.label(weight.buffer))
    assert cut >= len(builder.int4) // 2, "the second layer's weights (at least) are cut"
    cuts.close()
    assert not any(tmp_path.glob("*.tap.tflite"))


def test_a_candidate_is_cut_before_its_first_change_or_not_at_all(start, tmp_path):
    """Two weights moved, the first FC's and the last one's: cut at the first cut point (the
    first FC op: the embeddings before it are unchanged). A file whose embedding table differs
    (the FP32 export) changes before every cut point: not cut, left as it was."""
    _, fp32, builder, start_path, _ = start
    cuts = PrefixCuts(start_path, tmp_path)
    by_position = sorted(builder.int4, key=lambda w: min(op for _, op, _ in w.uses))
    probe = tmp_path / "probe.tflite"
    builder.build(probe, {by_position[0].buffer, by_position[-1].buffer})
    assert cuts.cut(probe)
    assert cuts._cuts[probe] == {key: min(graph.points) for key, graph in cuts.graphs.items()}
    builder.build(probe, {by_position[-1].buffer})
    assert cuts.cut(probe)
    assert all(point > min(cuts.graphs[key].points) for key, point in cuts._cuts[probe].items())
    shutil.copy(fp32, probe)
    before = probe.read_bytes()
    assert not cuts.cut(probe) and not cuts.is_cut(probe) and probe.read_bytes() == before
    cuts.close()


def test_a_walk_compares_each_candidate_with_the_last_one_accepted(start, tmp_path):
    """follow (a search's walk): after accept, candidates are cut against the accepted model and
    fed its crossing tensors, left behind by its own cut run (no new tap) or, after a candidate
    accepted whole, from a new tap; every cut candidate answers what the whole one does, bit for
    bit."""
    source, _, builder, start_path, feeds = start
    cuts = PrefixCuts(start_path, tmp_path, follow=True)
    by_position = sorted(builder.int4, key=lambda w: min(op for _, op, _ in w.uses))
    first, middle, last = by_position[0], by_position[len(by_position) // 2], by_position[-1]
    probe, whole = tmp_path / "probe.tflite", tmp_path / "whole.tflite"
    accepted: set[int] = set()

    def judged(weight) -> dict:
        builder.build(whole, accepted | {weight.buffer})
        shutil.copy(whole, probe)
        assert cuts.cut(probe), builder.label(weight.buffer)
        want = _outputs(source, backends.open_session("tflite", whole, threads=1).run, feeds)
        got = _outputs(source, cuts.runner(probe, 1), feeds)
        for name in want:
            np.testing.assert_array_equal(got[name], want[name], err_msg=builder.label(weight.buffer))
        return cuts._cuts[probe]

    points = judged(middle)
    assert all(point > min(cuts.graphs[key].points) for key, point in points.items()), "cut after the first point"
    cuts.accept(probe)
    accepted.add(middle.buffer)
    judged(last)  # fed what the accepted candidate's own run left at the later points
    judged(first)  # before the accepted change: the tensors kept from the tap
    assert cuts._taps == 0
    cuts.accept(probe)  # the first weight's candidate: every later point changed, from its run
    accepted.add(first.buffer)
    judged(last)
    assert cuts._taps == 0

    builder.build(whole, accepted | {last.buffer})  # accepted whole (never cut): a new tap
    cuts.accept(whole)
    accepted.add(last.buffer)
    judged(by_position[1])
    assert cuts._taps == 1
    cuts.close()
    assert not any(tmp_path.glob("*.tap.tflite"))


@pytest.mark.slow  # four INT4 searches
def test_a_search_ranks_walks_and_writes_the_same_with_cut_candidates(start, tmp_path):
    """quantize_tflite's INT4 size-budget search with scorers that can take a runner (cut
    candidates: the ranking's, and the walk's, whose start follows each accepted move) and with
    ones that cannot (every candidate whole): the same steps, metrics and artifact bytes."""
    from converters.core.validate import compute_metrics, reference_outputs, sequence_outputs

    source, fp32, _, _, _ = start
    texts = tuple(t for t in load_texts().texts if len(source.tokenizer(t)["input_ids"]) <= 64)  # the buckets'
    calibration, validation = make_batches(source, texts[:24]), make_batches(source, texts[24:40])
    references = {"fit": reference_outputs(source, texts[:24]), "validation": reference_outputs(source, texts[24:40])}
    cut_scored: dict[str, list] = {"fit": [], "validation": []}

    def scorer(texts: str, cut: bool) -> LaneScorer:
        def through(run):
            return compute_metrics(source, references[texts], rows_alone(run, sequence_outputs(source)), texts)

        def through_cut(run):  # what the Space calls for a cut candidate only
            cut_scored[texts].append(run)
            return through(run)

        def score(path, threads):
            return through(backends.open_session("tflite", path, threads=threads or 2).run)

        return LaneScorer(score, 2, through=through_cut if cut else None)

    reports = {}
    for name, rank_cut, walk_cut in (("whole", False, False), ("cut", True, True), ("ranked-cut", True, False)):
        config = GptqInt4Config(size_budget=0.9, embedding_min_elements=TINY_TABLES)
        reports[name] = quantize_tflite(fp32, tmp_path / f"{name}.tflite", "gptq_wi4b32_afp32", calibration,
                                        int4=config, validation=validation, rank=scorer("fit", rank_cut),
                                        judge=scorer("validation", walk_cut))
    for name in ("cut", "ranked-cut"):
        assert reports[name]["search"] == reports["whole"]["search"], name
        assert reports[name]["promoted"] == reports["whole"]["promoted"], name
        assert (tmp_path / f"{name}.tflite").read_bytes() == (tmp_path / "whole.tflite").read_bytes(), name
    search = reports["cut"]["search"]
    assert len(cut_scored["fit"]) >= 2 * (len(search) // 3), "most candidates were ranked cut (two searches)"
    tried = [step for step in search if step.get("candidate") and "metrics" in step]
    assert any(step["accepted"] for step in tried) and len(tried) >= 2, "a walk that moves its start"
    assert cut_scored["validation"], "walk trials judged cut"
    assert not [p for p in tmp_path.iterdir() if p.suffix == ".tflite" and p.stem not in reports]


@pytest.mark.slow  # two INT8 floor searches
def test_an_int8_floor_search_walks_the_same_with_cut_trials(start, tmp_path):
    """gptq_wi8_afp32 below an unreachable floor keeps weights float (other tensor types and
    quantization than the start's INT8 ones) up to its cap: with scorers that can take a runner
    and with ones that cannot, the same steps and the same refusal, every trial judged cut."""
    from converters.core.search import SearchExhausted
    from converters.core.validate import compute_metrics, reference_outputs, sequence_outputs

    source, fp32, _, _, _ = start
    texts = tuple(t for t in load_texts().texts if len(source.tokenizer(t)["input_ids"]) <= 64)  # the buckets'
    calibration, validation = make_batches(source, texts[:24]), make_batches(source, texts[24:40])
    references = {"fit": reference_outputs(source, texts[:24]), "validation": reference_outputs(source, texts[24:40])}
    cut_judged = []

    def scorer(texts: str, cut: bool) -> LaneScorer:
        def metrics(run):
            return compute_metrics(source, references[texts], rows_alone(run, sequence_outputs(source)), texts)

        def through(run):
            if texts == "validation":
                cut_judged.append(run)
            return metrics(run)

        def score(path, threads):
            return metrics(backends.open_session("tflite", path, threads=threads or 2).run)

        return LaneScorer(score, 2, through=through if cut else None)

    steps = {}
    for name, cut in (("whole", False), ("cut", True)):
        with pytest.raises(SearchExhausted) as caught:
            quantize_tflite(fp32, tmp_path / f"{name}.tflite", "gptq_wi8_afp32", calibration, floor=(1.0, 1.0),
                            validation=validation, rank=scorer("fit", cut), judge=scorer("validation", cut))
        steps[name] = caught.value.result.steps
    assert steps["cut"] == steps["whole"]
    tried = [step for step in steps["cut"] if step.get("candidate") and "metrics" in step]
    assert any(step["accepted"] for step in tried), "a walk that moves its start"
    assert len(cut_judged) == len(tried), "every walk trial judged cut"


def test_cut_points_hold_the_narrow_places_of_the_graph(start, tmp_path):
    """At a cut point only the attention mask and the hidden state (and its copy for the
    residual) are alive: at most 2 x hidden + 1 floats per token, never the FFN's 4x wide
    activations, and no cut point at the very first op."""
    from ai_edge_litert import schema_py_generated as schema

    source, _, _, start_path, _ = start
    hidden = source.module.inner.config.hidden_size if hasattr(source.module, "inner") else 32
    model = schema.Model.GetRootAs(start_path.read_bytes(), 0)
    cuts = PrefixCuts(start_path, tmp_path)
    for graph in cuts.graphs.values():
        tensors = model.Subgraphs(graph.index)
        for point, crossing in graph.crossing.items():
            floats = sum(int(np.prod(tensors.Tensors(t).ShapeAsNumpy())) for t in crossing)
            assert 0 < point < len(graph.ops) and floats <= (2 * hidden + 1) * graph.length, (graph.key, point)
    cuts.close()


@pytest.mark.slow  # an INT4 search
def test_a_model_the_cut_reader_does_not_know_is_ranked_whole(start, tmp_path, monkeypatch):
    """Cutting is an optimization: if reading the start model's cut points fails, the ranking
    and the walk score every candidate whole, with the same result, and leave no file behind."""
    from converters.tflite import space

    def unreadable(*args, **kwargs):
        raise RuntimeError("a layout this reader does not know")

    monkeypatch.setattr(space, "PrefixCuts", unreadable)
    source, fp32, _, _, _ = start
    texts = tuple(t for t in load_texts().texts if len(source.tokenizer(t)["input_ids"]) <= 64)
    calibration = make_batches(source, texts[:24])
    through = []

    def score(path, threads):
        session = backends.open_session("tflite", path, threads=threads or 2)
        out = _outputs(source, session.run, calibration[0])
        return {"cosine_mean": float(np.mean([np.abs(v).mean() for v in out.values()])), "cosine_min": 0.5}

    rank = LaneScorer(score, 2, through=lambda run: through.append(run) or {"cosine_mean": 0.0})
    config = GptqInt4Config(size_budget=0.9, embedding_min_elements=TINY_TABLES)
    report = quantize_tflite(fp32, tmp_path / "int4.tflite", "gptq_wi4b32_afp32", calibration, int4=config,
                             rank=rank, judge=rank)
    assert report["search"] and not through, "every candidate was scored whole"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["int4.tflite"]


def _with_output(src, dst, tensor: int) -> None:
    """`src` with activation `tensor` as one more output, "extra", of every signature."""
    from converters.tflite.flatbuffer import read_model, schema, write_model

    model = read_model(src)
    for signature in model.signatureDefs:
        sub = model.subgraphs[signature.subgraphIndex]
        sub.outputs = np.array([*sub.outputs, tensor], np.int32)
        entry = schema().TensorMapT()
        entry.name, entry.tensorIndex = b"extra", tensor
        signature.outputs.append(entry)
    write_model(model, dst)


def test_a_kept_tensor_that_is_a_model_output_too_is_passed_on_after_accept(start, tmp_path):
    """Found by a review (session 49): a later cut point's crossing tensor that is also one of the
    model's own outputs was not given its kept name in a cut trial's outputs, so accepting the
    trial kept the old start's value of it, and the next trial cut there was fed a stale tensor."""
    _, _, builder, start_path, feeds = start
    plain = PrefixCuts(start_path, tmp_path)
    graph = next(iter(plain.graphs.values()))
    second = sorted(graph.points)[len(graph.points) // 2]  # a layer start after the first point
    extra = graph.crossing[second][-1]  # the hidden state crossing it
    plain.close()
    by_op = {}
    for weight in builder.int4:
        by_op.setdefault(min(op for _, op, _ in weight.uses), weight.buffer)
    before = max(op for op in by_op if op < second)  # a weight changed before that point
    after = min(op for op in by_op if op >= second)  # and one from it on
    files = {}
    for name, moved in (("start", set()), ("c1", {by_op[before]}), ("c2", {by_op[before], by_op[after]})):
        builder.build(tmp_path / "tmp.tflite", moved)
        files[name] = tmp_path / f"{name}.tflite"
        _with_output(tmp_path / "tmp.tflite", files[name], extra)
    cuts = PrefixCuts(files["start"], tmp_path, follow=True)
    probe = tmp_path / "probe.tflite"
    for name in ("c1", "c2"):
        shutil.copy(files[name], probe)
        assert cuts.cut(probe), name
        whole, cut = backends.open_session("tflite", files[name], threads=1).run, cuts.runner(probe, 1)
        for row, length in enumerate(feeds["attention_mask"].sum(axis=1)):  # each text alone, unpadded
            alone = {key: value[row:row + 1, :int(length)] for key, value in feeds.items()}
            want, got = whole(alone), cut(alone)
            assert set(want) == {"last_hidden_state", "extra"}
            for output in want:
                np.testing.assert_array_equal(got[output], want[output], err_msg=f"{name} {output} row {row}")
        cuts.accept(probe)
    cuts.close()


def test_a_candidate_wired_otherwise_after_its_cut_point_is_scored_whole(start, tmp_path):
    """Found by a review (session 49): a candidate whose ops after the cut read an activation the
    start's ops there do not (made before the cut, so neither fed nor computed) was cut, and its
    run failed ("Input tensor ... lacks data") instead of the candidate being scored whole."""
    from converters.tflite.flatbuffer import read_model, write_model

    _, _, _, start_path, _ = start
    same_layout = tmp_path / "start.tflite"
    write_model(read_model(start_path), same_layout)  # the candidate below is written the same way
    cuts = PrefixCuts(same_layout, tmp_path)
    model = read_model(same_layout)
    for signature in model.signatureDefs:
        graph = cuts.graphs[signature.signatureKey.decode()]
        sub = model.subgraphs[signature.subgraphIndex]
        last, earlier = sorted(graph.points)[-1], sorted(graph.points)[-2]
        early = graph.crossing[earlier][-1]  # made before the last point, not crossing it
        assert early not in graph.crossing[last]
        shape = tuple(sub.tensors[early].shape)
        for o in range(last + 1, len(sub.operators)):  # the first op after it reading that shape: reads `early`
            inputs = list(sub.operators[o].inputs)
            hit = [i for i, t in enumerate(inputs) if t >= 0 and tuple(sub.tensors[t].shape) == shape
                   and t not in graph.crossing[last] and t != early]
            if hit:
                inputs[hit[0]] = early
                sub.operators[o].inputs = np.array(inputs, np.int32)
                break
        else:
            raise AssertionError("no op to rewire")
    probe = tmp_path / "probe.tflite"
    write_model(model, probe)
    before = probe.read_bytes()
    assert not cuts.cut(probe) and not cuts.is_cut(probe) and probe.read_bytes() == before
    cuts.close()
