"""The small decisions of the pruning flow that need no model: layer weights, --prune auto's
steps, a request that removes nothing, and what distillation keeps (converters/pruning/)."""

import numpy as np
import pytest

from converters._errors import ConversionError
from converters.pruning.importance import Scores
from targets import PruningOptions


def _scores(heads_per_layer: int, neurons_per_layer: int, layers: int = 2) -> Scores:
    """Scores ranking every unit (lower goes first), interleaved across layers."""
    scores = Scores()
    for layer in range(layers):
        scores.heads[layer] = np.arange(heads_per_layer, dtype=float) * layers + layer
        scores.neurons[layer] = np.arange(neurons_per_layer, dtype=float) * layers + layer
    return scores


def test_a_layer_measured_without_loss_is_not_free():
    """Top-1 agreement does not move when one layer of a classifier is pruned: weight 0 made every
    unit of that layer free, and the greedy stripped it to one unit first."""
    from converters.pruning.obs import _no_free_layer

    assert _no_free_layer({0: 3.1, 1: 0.0, 2: 0.5}) == {0: 3.1, 1: pytest.approx(0.005), 2: 0.5}
    assert _no_free_layer({0: 0.0, 1: 0.0}) == {0: 1.0, 1: 1.0}
    assert _no_free_layer({0: 2.0, 1: 1.0}) == {0: 2.0, 1: 1.0}


def test_steps_are_compared_on_a_graded_metric():
    from converters.pruning.prune_model import _graded_loss, _loss

    classifier = {"top1_agreement": 1.0, "logits_cosine_mean": 0.9, "logits_cosine_min": 0.5}
    assert _loss(classifier) == 0.0  # the floor's metric did not move
    assert _graded_loss(classifier) == pytest.approx(0.1)  # the outputs did
    assert _graded_loss({"cosine_mean": 0.95, "cosine_min": 0.8}) == pytest.approx(0.05)


def test_auto_steps_skip_shares_that_round_to_the_same_plan():
    from converters.pruning.prune_model import _auto_moves

    options = PruningOptions(max_heads=0.5, max_ffn=0.75)
    # 2 layers x 4 heads: 1/12 of 8 heads rounds to 1 (0.67 -> 1), 2/12 to 1 as well, 3/12 to 2.
    scores = _scores(4, 20)
    heads, ffn = _auto_moves(scores, (1 / 12, 0.0), options)
    assert heads == (0.25, 0.0)  # 2/12 removes the same single head: taken one step further
    assert ffn == (1 / 12, 0.1)


def test_auto_steps_reach_the_maximum_exactly_and_stop_there():
    from converters.pruning.prune_model import _auto_moves

    options = PruningOptions(max_heads=0.5, max_ffn=0.5)
    scores = _scores(12, 20)
    state = (0.0, 0.0)
    for _ in range(6):  # 6 x 1/12 adds up to 0.49999999999999994 in floats
        state = _auto_moves(scores, state, options)[0]
    assert state[0] == 0.5
    moves = _auto_moves(scores, state, options)
    assert moves == [(0.5, 0.1)]  # no heads move beyond the maximum, none repeating the state


def test_a_fixed_request_that_removes_nothing_is_refused():
    from converters.pruning.prune_model import PruneRequest, _check_removes_something

    scores = _scores(1, 4)  # one head per layer: every layer keeps it
    with pytest.raises(ConversionError, match="removes nothing from this model .*2 heads and 8 FFN neurons"):
        _check_removes_something(scores, PruneRequest.parse("heads=0.5"))
    _check_removes_something(scores, PruneRequest.parse("heads=0.5,ffn=0.25"))  # removes 2 neurons


def test_distillation_breaks_top1_ties_on_the_logits():
    from converters.pruning.distill import _score

    start = {"top1_agreement": 0.95, "logits_cosine_mean": 0.96}
    better_logits = {"top1_agreement": 0.95, "logits_cosine_mean": 0.98}
    fewer_labels = {"top1_agreement": 0.93, "logits_cosine_mean": 0.99}
    assert _score(better_logits) > _score(start) > _score(fewer_labels)
    assert _score({"cosine_mean": 0.9, "cosine_min": 0.5}) > _score({"cosine_mean": 0.8, "cosine_min": 0.9})


def test_distillation_loss_reads_the_output_as_its_metric_does():
    """Token classifiers are distilled per real token (their logits were pooled over the text, and
    padded positions counted); embeddings are pooled the way the artifact pools them."""
    from types import SimpleNamespace

    import torch

    from converters.pruning.distill import _output_loss

    torch.manual_seed(0)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]]).bool()
    target = torch.randn(2, 4, 5)
    tokens = SimpleNamespace(task="token-classification", postprocess={})
    assert _output_loss(tokens, target.clone(), target, mask) == pytest.approx(0.0, abs=1e-6)
    padded_only = target.clone()
    padded_only[~mask] = 100.0  # what the padded positions hold does not count
    assert _output_loss(tokens, padded_only, target, mask) == pytest.approx(0.0, abs=1e-6)
    # Labels swapped between two tokens, the text's mean logits unchanged: pooling saw no error.
    swapped = target.clone()
    swapped[0, [0, 1]] = target[0, [1, 0]]
    assert _output_loss(tokens, swapped, target, mask) > 0.01

    cls = SimpleNamespace(task="feature-extraction", postprocess={"pooling": "cls"})
    moved = target.clone()
    moved[:, 1:] += 5.0  # only tokens after the first move: a CLS embedding does not
    assert _output_loss(cls, moved, target, mask) == pytest.approx(0.0, abs=1e-6)
    mean = SimpleNamespace(task="feature-extraction", postprocess={"pooling": "mean"})
    assert _output_loss(mean, moved, target, mask) > 0.01
    assert _output_loss(mean, padded_only, target, mask) == pytest.approx(0.0, abs=1e-6)


def test_a_share_that_rounds_to_no_unit_is_refused_from_the_config_before_any_work():
    from types import SimpleNamespace

    from converters.pruning.prune_model import PruneRequest, check_request_fits

    minilm = SimpleNamespace(num_layers=6, num_heads=12, intermediate_size=1536)  # 72 heads, 9216 neurons
    with pytest.raises(ConversionError, match=r"removes nothing from this model \(72 heads and 9216 FFN neurons"):
        check_request_fits(PruneRequest.parse("heads=0.005"), minilm)
    check_request_fits(PruneRequest.parse("heads=0.01"), minilm)  # one head
    check_request_fits(PruneRequest.parse("auto"), minilm)
    check_request_fits(None, minilm)


def test_auto_with_a_floor_that_leaves_no_room_for_its_margin_is_refused():
    from pathlib import Path

    from converters.options import ConvertConfig, prepare

    config = ConvertConfig(model=None, target="x86-avx2", out=Path("unused"), prune="auto", prune_floor=0.9999)
    with pytest.raises(ConversionError, match=r"a floor of 0.9999 leaves no room below 1: give prune_floor at most 0.996"):
        prepare(config)
    prepare(ConvertConfig(model=None, target="x86-avx2", out=Path("unused"), prune="auto", prune_floor=0.99))
