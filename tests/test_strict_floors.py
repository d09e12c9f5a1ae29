"""Strict floors (issue 10): a floor holds only when `metric >= floor`; NaN or Inf in an
artifact's outputs on the validation texts is NonFiniteOutputError naming the artifact and the
first bad text. Synthetic metrics and outputs: no model, milliseconds."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest

from converters import AccuracyError, NonFiniteOutputError
from converters.core.validate import Reference, compute_metrics, floor_failures, meets_floor
from converters.onnx.mixed_precision import quantize_with_floor
from converters.tflite.judge import meets
from targets import AccuracyFloor

FLOOR = AccuracyFloor(cosine_mean=0.99, cosine_min=0.95, top1_agreement=0.98)
NAN, INF = float("nan"), float("inf")


def test_floor_holds_at_and_above_the_floor():
    assert floor_failures({"cosine_mean": 0.99, "cosine_min": 0.95}, FLOOR) == []
    assert floor_failures({"cosine_mean": 1.0, "cosine_min": 0.999}, FLOOR) == []
    assert floor_failures({"top1_agreement": 0.98, "logits_cosine_mean": 0.5}, FLOOR) == []


def test_floor_fails_below_with_numbers():
    failures = floor_failures({"cosine_mean": 0.9899, "cosine_min": 0.96}, FLOOR)
    assert failures == ["cosine_mean 0.9899 < floor 0.99"]


@pytest.mark.parametrize("bad", [NAN, -NAN, INF, -INF])
@pytest.mark.parametrize("key", ["cosine_mean", "cosine_min", "top1_agreement"])
def test_non_finite_metric_never_meets_a_floor(key, bad):
    metrics = {"cosine_mean": 0.999, "cosine_min": 0.99, "top1_agreement": 1.0, key: bad}
    failures = floor_failures(metrics, FLOOR)
    assert len(failures) == 1 and failures[0].startswith(key) and "not a number" in failures[0]
    assert not meets_floor(bad, 0.0)


def test_tflite_judge_floor_is_strict():
    assert meets({"cosine_mean": 0.99, "cosine_min": 0.95}, (0.99, 0.95))
    assert not meets({"cosine_mean": 0.98999, "cosine_min": 0.95}, (0.99, 0.95))
    assert not meets({"cosine_mean": NAN, "cosine_min": 0.99}, (0.99, 0.95))
    assert not meets({"cosine_mean": 0.999, "cosine_min": NAN}, (0.99, 0.95))


def _source(task: str = "feature-extraction"):
    post = {"pooling": "mean", "normalize": True} if task == "feature-extraction" else {"labels": ["a", "b"]}
    return SimpleNamespace(output_names=["out"], task=task, postprocess=post)


def _reference(texts: list[str], batch: int = 2, dim: int = 4, seq: int = 3) -> Reference:
    rng = np.random.default_rng(0)
    batches, outputs = [], []
    for start in range(0, len(texts), batch):
        rows = len(texts[start : start + batch])
        batches.append({"input_ids": np.ones((rows, seq), np.int64),
                        "attention_mask": np.ones((rows, seq), np.int64)})
        outputs.append(rng.standard_normal((rows, seq, dim)).astype(np.float32))
    return Reference(batches, outputs, tuple(texts))


def _runner(reference: Reference, poison: tuple[int, int] | None = None, value: float = NAN, where=(1, 2),
            also: tuple[int, int] | None = None):
    """Returns the reference outputs, with `value` at row poison[1] of batch poison[0] (and at
    row also[1] of batch also[0])."""
    calls = iter(range(len(reference.batches)))

    def run(feeds):
        index = next(calls)
        got = reference.outputs[index].copy()
        for bad in (poison, also):
            if bad is not None and bad[0] == index:
                got[(bad[1], *where)] = value
        return {"out": got}

    return run


TEXTS = ["first text", "second text", "third text", "fourth text", "fifth text"]


def test_compute_metrics_exact_copy_scores_one():
    reference = _reference(TEXTS)
    metrics = compute_metrics(_source(), reference, _runner(reference), artifact="onnx-int8")
    assert metrics["cosine_min"] == pytest.approx(1.0)


@pytest.mark.parametrize("value", [NAN, INF, -INF])
def test_non_finite_output_names_artifact_and_first_bad_text(value):
    reference = _reference(TEXTS)
    # batch 1, row 1 = text #3 ("fourth text"); a second bad row later must not be the one named
    with pytest.raises(NonFiniteOutputError, match=r"onnx-int8 .*validation text #3: 'fourth text'"):
        compute_metrics(_source(), reference, _runner(reference, (1, 1), value, also=(2, 0)), artifact="onnx-int8")


def test_non_finite_output_in_padding_is_an_error_too():
    # Pooling multiplies padded positions by zero, and NaN * 0 = NaN: the whole row counts.
    reference = _reference(TEXTS)
    reference.batches[0]["attention_mask"][0, 2] = 0
    with pytest.raises(NonFiniteOutputError, match="#0: 'first text'") as info:
        compute_metrics(_source(), reference, _runner(reference, (0, 0), NAN, where=(2, 0)), artifact="x")
    assert isinstance(info.value, AccuracyError)  # the pipeline refuses the artifact, like a floor miss
    assert info.value.index == 0 and info.value.text == "first text"


def test_non_finite_logits_text_classification():
    rng = np.random.default_rng(1)
    reference = Reference([{"input_ids": np.ones((2, 3), np.int64), "attention_mask": np.ones((2, 3), np.int64)}],
                          [rng.standard_normal((2, 2)).astype(np.float32)], ("good", "bad"))

    def run(feeds):
        got = reference.outputs[0].copy()
        got[1, 0] = NAN
        return {"out": got}

    with pytest.raises(NonFiniteOutputError, match="tflite-int8 .*#1: 'bad'"):
        compute_metrics(_source("text-classification"), reference, run, artifact="tflite-int8")


def test_reference_head_keeps_texts():
    reference = _reference(TEXTS)
    head = reference.head(2)
    assert len(head.batches) == 2 and head.texts == tuple(TEXTS[:4])
    assert reference.head(None) is reference


def test_nan_metric_does_not_pass_the_int8_floor(monkeypatch, tmp_path):
    """quantize_with_floor used `metric < floor`: an all-NaN candidate returned as passing."""
    import converters.onnx.mixed_precision as mp

    monkeypatch.setattr(mp, "quantize_int8", lambda src, out, config, rounding=None, ranges=None: out)
    monkeypatch.setattr(mp, "compute_metrics", lambda *a, **k: {"cosine_mean": NAN, "cosine_min": NAN})
    monkeypatch.setattr(mp, "quantizable_nodes", lambda path, ops: [])
    monkeypatch.setattr(mp, "_weight_groups", lambda path, nodes: {})
    monkeypatch.setattr(mp, "model_bytes", lambda path: 0)

    @dataclasses.dataclass(frozen=True)
    class Config:
        op_types: tuple = ("MatMul",)
        exclude: tuple = ()

    with pytest.raises(AccuracyError, match="cosine_mean nan is not a number >= floor 0.99"):
        quantize_with_floor(tmp_path / "in.onnx", tmp_path / "out.onnx", Config(), _source(),
                            _reference(TEXTS), FLOOR, lambda path: SimpleNamespace(run=None), lambda m: None)


def test_rows_alone_runs_each_row_at_its_own_length():
    """The TFLite searches' scorer (converters/_artifacts.py): every row alone, cut to its
    length; sequence outputs come back at the batch width with zeros in the padding, others
    stacked; a mask that is not right-padded runs the batch as it is."""
    from converters.core.validate import rows_alone

    widths = []

    def run(feeds):
        ids = feeds["input_ids"]
        widths.append(ids.shape)
        hidden = np.cumsum(ids, axis=1)[..., None].astype(np.float32) * np.ones(3, np.float32)
        return {"hidden": hidden, "pooled": hidden.sum(axis=1)}

    ids = np.array([[5, 6, 7, 0], [1, 2, 3, 4], [9, 0, 0, 0]], np.int64)
    mask = (np.arange(4)[None, :] < np.array([3, 4, 1])[:, None]).astype(np.int64)
    got = rows_alone(run, frozenset({"hidden"}))({"input_ids": ids * mask, "attention_mask": mask})
    assert widths == [(1, 3), (1, 4), (1, 1)]
    assert got["hidden"].shape == (3, 4, 3) and got["pooled"].shape == (3, 3)
    np.testing.assert_array_equal(got["hidden"][:, :, 0], [[5, 11, 18, 0], [1, 3, 6, 10], [9, 0, 0, 0]])
    np.testing.assert_array_equal(got["pooled"][:, 0], [34, 20, 9])

    widths.clear()
    holes = np.array([[1, 0, 1, 1]], np.int64)  # not right-padded
    rows_alone(run, frozenset({"hidden"}))({"input_ids": np.ones((1, 4), np.int64), "attention_mask": holes})
    assert widths == [(1, 4)]


def test_a_failure_just_below_the_floor_shows_enough_digits():
    from converters.core.validate import floor_failures
    from targets import AccuracyFloor

    floor = AccuracyFloor(cosine_mean=0.99999995, cosine_min=0.9, top1_agreement=0.9)
    assert floor_failures({"cosine_mean": 0.99999991, "cosine_min": 0.95}, floor) == [
        "cosine_mean 0.9999999 < floor 0.99999995"]  # not "1.0000 < floor 0.99999995"
    assert floor_failures({"cosine_mean": 0.5}, floor) == ["cosine_mean 0.5000 < floor 0.99999995"]
