"""The TFLite searches read an artifact's floor as the pipeline's final validation does
(converters/tflite/judge.py floor_rule): a classifier by its top-1 agreement. Before, they read
the cosine pair alone, so a classifier INT8 whose logits met the cosines but whose top-1 missed
was refused without any search (a 7-label BERT on rpi5: top-1 0.9885 < 0.99, refused; with the
rule, one FC kept float gives 1.0000)."""

from __future__ import annotations

import math

from converters.core.validate import floor_failures
from converters.tflite.judge import floor_rule
from targets import AccuracyFloor

FLOOR = AccuracyFloor(cosine_mean=0.995, cosine_min=0.99, top1_agreement=0.99)
CLASSIFIER = {"logits_cosine_mean": 0.9999, "logits_cosine_min": 0.9990, "top1_agreement": 0.9885}
EMBEDDING = {"cosine_mean": 0.9960, "cosine_min": 0.9800}


def test_a_classifier_is_judged_by_top1_as_the_final_validation_judges_it():
    rule = floor_rule(FLOOR)
    assert rule.failures(CLASSIFIER) == floor_failures(CLASSIFIER, FLOOR) != []
    assert "top1_agreement" in rule.failures(CLASSIFIER)[0]
    assert math.isclose(rule.shortfall(CLASSIFIER), 0.0015) and math.isclose(rule.extra(CLASSIFIER), 0.0015)
    assert rule.failures({**CLASSIFIER, "top1_agreement": 1.0}) == []


def test_an_embedding_is_judged_by_its_cosines_and_has_no_top1_term():
    rule = floor_rule(FLOOR)
    assert rule.failures(EMBEDDING) == floor_failures(EMBEDDING, FLOOR) != []
    assert math.isclose(rule.shortfall(EMBEDDING), 0.01) and rule.extra(EMBEDDING) == 0.0
    assert rule.shortfall({"cosine_mean": math.nan, "cosine_min": 0.9}) == math.inf


def test_a_cosine_pair_keeps_its_meaning_for_direct_callers():
    rule = floor_rule((0.995, 0.99))
    assert rule.failures(EMBEDDING) and not rule.failures({"cosine_mean": 0.999, "cosine_min": 0.995})
    assert rule.failures({"logits_cosine_mean": 0.99, "logits_cosine_min": 0.99, "top1_agreement": 1.0})
    assert rule.extra is None and floor_rule(None) is None
