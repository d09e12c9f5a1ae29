"""Structured pruning on tiny models of every supported architecture (issue 11, first part):
ratio 0 is the identity, shapes follow the plan, a head or neuron that contributes nothing is
ranked least important and removing it changes no output, the ONNX export of a pruned model
agrees with PyTorch."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from converters._errors import ConversionError, UnsupportedModelError
from converters.core.validate import make_batches
from converters.export.export_onnx import ExportConfig, export_onnx
from converters.inputs.calibration import load_texts
from converters.inputs.source import load_source
from converters.pruning.importance import plan, score
from converters.pruning.structure import find_layers
from converters.pruning.surgery import Keep, prune

ARCHS = ("bert", "distilbert", "roberta", "xlm-roberta", "camembert")


def _case(tiny_model_factory, arch):
    source = load_source(tiny_model_factory(arch, "feature-extraction"))
    batches = make_batches(source, load_texts().texts[:32])
    return source, batches


def _outputs(source, batches) -> list[np.ndarray]:
    with torch.no_grad():
        return [source.module(*[torch.from_numpy(f[n]) for n in source.input_names]).numpy() for f in batches]


def _silence_head_1_and_neuron_3(source) -> None:
    """Head 1 and neuron 3 of layer 1 contribute nothing: their output-projection columns are zero."""
    layer = find_layers(source.module)[1]
    size = layer.head_size
    with torch.no_grad():
        layer.attention_out.weight[:, size:2 * size] = 0.0
        layer.ffn_out.weight[:, 3] = 0.0


@pytest.mark.parametrize("arch", ARCHS)
def test_ratio_zero_is_the_identity(tiny_model_factory, arch):
    source, batches = _case(tiny_model_factory, arch)
    before = _outputs(source, batches)
    keep = plan(score(source.module, batches, source.input_names), heads=0.0, ffn=0.0)
    report = prune(source.module, keep)
    assert report["parameters_after"] == report["parameters_before"]
    for want, got in zip(before, _outputs(source, batches)):
        np.testing.assert_array_equal(want, got)


@pytest.mark.parametrize("arch", ARCHS)
def test_pruned_shapes_follow_the_plan(tiny_model_factory, arch):
    source, batches = _case(tiny_model_factory, arch)
    keep = plan(score(source.module, batches, source.input_names), heads=0.5, ffn=0.5)
    report = prune(source.module, keep)
    heads = sum(len(k.heads) for k in keep.values())
    neurons = sum(len(k.neurons) for k in keep.values())
    total_heads = sum(r["heads_before"] for r in report["layers"])
    total_neurons = sum(r["neurons_before"] for r in report["layers"])
    assert heads == total_heads - round(0.5 * total_heads) and neurons == total_neurons - round(0.5 * total_neurons)
    for layer, entry in zip(find_layers(source.module), report["layers"]):
        kept = keep[layer.index]
        assert entry["heads_kept"] == list(kept.heads) and entry["heads"] == len(kept.heads)
        assert entry["neurons"] == len(kept.neurons) and entry["neurons_kept"] == list(kept.neurons)
        width = len(kept.heads) * layer.head_size
        for linear in (layer.query, layer.key, layer.value):
            assert tuple(linear.weight.shape) == (width, linear.in_features)
        assert layer.attention_out.in_features == width
        assert layer.ffn_in.out_features == layer.ffn_out.in_features == len(kept.neurons)
    assert report["parameters_after"] < report["parameters_before"]
    assert all(np.isfinite(o).all() for o in _outputs(source, batches))  # the pruned model still runs


@pytest.mark.parametrize("arch", ARCHS)
def test_a_silent_head_and_neuron_go_first_and_removing_them_changes_nothing(tiny_model_factory, arch):
    source, batches = _case(tiny_model_factory, arch)
    _silence_head_1_and_neuron_3(source)
    before = _outputs(source, batches)
    scores = score(source.module, batches, source.input_names)
    assert scores.heads[1][1] == 0.0 and scores.neurons[1][3] == 0.0
    total_heads = sum(len(v) for v in scores.heads.values())
    total_neurons = sum(len(v) for v in scores.neurons.values())
    keep = plan(scores, heads=1 / total_heads, ffn=1 / total_neurons)  # one of each
    assert 1 not in keep[1].heads and 3 not in keep[1].neurons
    assert sum(len(k.heads) for k in keep.values()) == total_heads - 1
    prune(source.module, keep)
    for want, got in zip(before, _outputs(source, batches)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ["bert", "distilbert"])
def test_onnx_export_of_a_pruned_model_agrees_with_pytorch(tiny_model_factory, arch, tmp_path):
    source, batches = _case(tiny_model_factory, arch)
    prune(source.module, plan(score(source.module, batches, source.input_names), heads=0.5, ffn=0.5))
    path = export_onnx(source, tmp_path / "pruned.onnx", ExportConfig())
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for feeds, want in zip(batches, _outputs(source, batches)):
        got = session.run(None, {n: feeds[n] for n in source.input_names})[0]
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["bert", "distilbert"])
def test_tflite_export_of_a_pruned_model_agrees_with_pytorch(tiny_model_factory, arch, tmp_path):
    from converters.tflite import TfliteExportConfig, export_tflite
    from edge_runtime import backends

    source, batches = _case(tiny_model_factory, arch)
    prune(source.module, plan(score(source.module, batches, source.input_names), heads=0.5, ffn=0.5))
    info = export_tflite(source, tmp_path / "pruned.tflite", TfliteExportConfig(buckets=(32, 128)))
    assert max(info["max_abs_diff"].values()) < 1e-4
    session = backends.open_session("tflite", tmp_path / "pruned.tflite", threads=1)
    for feeds, want in zip(batches[:2], _outputs(source, batches[:2])):
        got = session.run({n: feeds[n] for n in source.input_names})[source.output_names[0]]
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_plans_that_cannot_be_built_are_clear_errors(tiny_model_factory):
    source, batches = _case(tiny_model_factory, "bert")
    with pytest.raises(ConversionError, match=r"heads=1.0 must be in \[0, 1\)"):
        plan(score(source.module, batches, source.input_names), heads=1.0, ffn=0.0)
    with pytest.raises(ConversionError, match="layer 0: keeps no heads"):
        prune(source.module, {0: Keep((), (0,))})
    with pytest.raises(UnsupportedModelError, match="no BERT, RoBERTa, XLM-R or DistilBERT"):
        find_layers(torch.nn.Sequential(torch.nn.Linear(2, 2)))


@pytest.mark.parametrize("arch", ARCHS)
def test_the_refit_runs_one_layer_from_the_stream_the_whole_model_gives_it(tiny_model_factory, arch):
    """The re-fit runs each layer alone from its recorded input (reconstruct._LayerInputs), not
    the whole model up to it: carried layer by layer, that input must be, bit for bit, what the
    whole forward pass gives every layer (with a pruned model: the re-fit's case)."""
    from converters.pruning.reconstruct import _LayerInputs

    source, batches = _case(tiny_model_factory, arch)
    prune(source.module, plan(score(source.module, batches, source.input_names), heads=0.5, ffn=0.5))
    layers = find_layers(source.module)
    seen: dict[int, list] = {layer.index: [] for layer in layers}
    hooks = [layer.block.register_forward_pre_hook(
        lambda module, args, kwargs, i=layer.index: seen[i].append(args[0] if args else kwargs["hidden_states"]),
        with_kwargs=True) for layer in layers]
    try:
        _outputs(source, batches)
    finally:
        for hook in hooks:
            hook.remove()
    inputs = _LayerInputs(source.module, layers, batches, source.input_names)
    for layer in layers:
        assert all(torch.equal(got, want) for got, want in zip(inputs.stream, seen[layer.index], strict=True)), layer.index
        inputs.advance(layer.index)


@pytest.mark.parametrize("arch", ["bert", "distilbert"])
def test_reconstruction_lowers_the_layer_output_error_it_targets(tiny_model_factory, arch):
    from converters.pruning.reconstruct import prune_and_reconstruct

    source, batches = _case(tiny_model_factory, arch)
    fit, heldout = batches[:1], batches[1:]
    teacher = _outputs(source, heldout)
    keep = plan(score(source.module, fit, source.input_names), heads=0.5, ffn=0.5)
    said: list[str] = []
    report = prune_and_reconstruct(source.module, keep, fit, source.input_names, progress=said.append)
    # A counted step from 0/N: the ETA's clock starts with the re-fit, not after its first layer.
    assert said == [f"re-fitted layer {i}/{len(report['layers'])}" for i in range(len(report["layers"]) + 1)]
    for entry in report["layers"]:
        for key in ("attention_error", "ffn_error"):
            before, after = entry["reconstruction"][key]
            assert 0.0 <= after < before, (entry["layer"], key, before, after)
        # Q/K/V and the FFN input read a stream that pruning has moved (from layer 0's FFN input
        # on; layer 0's Q/K/V read the embeddings, which nothing changed: nothing to make up).
        for key in ("qkv_error", "ffn_in_error"):
            before, after = entry["reconstruction"][key]
            if entry["layer"] == 0 and key == "qkv_error":
                assert before < 1e-12 and after < 1e-12, (before, after)
            else:
                assert 0.0 <= after < before, (entry["layer"], key, before, after)

    # And on texts it did not fit, against slicing alone (same plan, no re-fit).
    plain, _ = _case(tiny_model_factory, arch)
    prune(plain.module, keep)

    def error(outputs):
        return sum(float(((o - t) ** 2).sum()) for o, t in zip(outputs, teacher))

    assert error(_outputs(source, heldout)) < error(_outputs(plain, heldout))


def test_magnitude_baseline_ranks_a_zero_weight_head_lowest(tiny_model_factory):
    from converters.pruning.importance import magnitude

    source, _ = _case(tiny_model_factory, "bert")
    layer = find_layers(source.module)[0]
    size = layer.head_size
    with torch.no_grad():
        for linear in (layer.query, layer.key, layer.value):
            linear.weight[2 * size:3 * size] = 0.0
        layer.attention_out.weight[:, 2 * size:3 * size] = 0.0
    scores = magnitude(source.module)
    assert scores.heads[0][2] == 0.0 and scores.heads[0].argmin() == 2
    assert all(len(scores.neurons[i]) == layer.neurons for i in scores.neurons)


def test_distillation_recovers_accuracy_on_texts_it_did_not_train_on(tiny_model_factory):
    import copy

    from converters.core.validate import reference_outputs
    from converters.pruning.distill import DistillConfig, distill
    source = load_source(tiny_model_factory("bert", "feature-extraction"))
    texts = load_texts().texts
    fit, validation = reference_outputs(source, texts[:64]), reference_outputs(source, texts[64:96])
    teacher = copy.deepcopy(source.module)
    # Sliced only (no re-fit), so that there is something to recover.
    prune(source.module, plan(score(source.module, fit.batches, source.input_names), heads=0.5, ffn=0.5))
    teacher_state = copy.deepcopy(teacher.state_dict())
    report = distill(source.module, teacher, source, fit, validation,
                     DistillConfig(steps=60, learning_rate=1e-3, warmup=5, check_every=10))
    assert report["after"]["cosine_mean"] > report["before"]["cosine_mean"] + 0.005, report["history"]
    assert report["best_step"] > 0 and report["history"][0]["step"] == 0
    assert "validation metrics are not independent" in report["chosen_on"]  # said where the figures are
    # The best checkpoint is handed back: the final evaluation is the best step's, not the last's.
    best = next(h for h in report["history"] if h["step"] == report["best_step"])
    assert report["after"]["cosine_mean"] == pytest.approx(best["cosine_mean"], abs=1e-6)
    # The model handed back is the best checkpoint, in eval mode, and the teacher is untouched.
    assert not source.module.training
    for name, value in teacher.state_dict().items():
        assert torch.equal(value, teacher_state[name]), name


def test_augmented_batches_keep_specials_order_and_padding():
    import numpy as np

    from converters.pruning.distill import augment_batch

    rng = np.random.default_rng(0)
    ids = np.array([[101, 5, 6, 7, 8, 9, 10, 102], [101, 11, 12, 13, 102, 0, 0, 0], [101, 14, 102, 0, 0, 0, 0, 0]])
    mask = (np.arange(8)[None, :] < np.array([[8], [5], [3]])).astype(np.int64)
    feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    seen = set()
    for _ in range(50):
        out = augment_batch(feeds, rng)
        assert set(out) == set(feeds) and out["input_ids"].shape == out["attention_mask"].shape
        assert not out["token_type_ids"].any()
        for row, keep, original, original_keep in zip(out["input_ids"], out["attention_mask"], ids, mask):
            tokens, source = list(row[keep == 1]), list(original[original_keep == 1])
            assert tokens[0] == 101 and tokens[-1] == 102 and (row[keep == 0] == 0).all()
            content, rest = tokens[1:-1], iter(source[1:-1])
            assert content and all(t in rest for t in content), "a subsequence, in order"
            assert len(content) >= 1
        seen.add(tuple(out["input_ids"][0]))
    assert len(seen) > 10, "the batches really vary"
    # texts of one or two content tokens are left as they are
    assert list(out["input_ids"][2][:3]) == [101, 14, 102]



@pytest.mark.parametrize("arch", ["bert", "distilbert"])
def test_fisher_criterion_scores_a_silent_head_and_neuron_zero_and_others_not(tiny_model_factory, arch):
    """The mask-Fisher criterion has a gradient at the unpruned model (InfoNCE against its own
    embeddings is not at a minimum there), so live units score > 0; silent ones score 0 and go
    first. The model's weights and requires_grad are left as they were."""
    from converters.pruning.fisher import fisher

    source, batches = _case(tiny_model_factory, arch)
    _silence_head_1_and_neuron_3(source)
    state = {k: v.clone() for k, v in source.module.state_dict().items()}
    flags = [p.requires_grad for p in source.module.parameters()]
    scores = fisher(source.module, batches, source.input_names)
    assert scores.heads[1][1] == 0.0 and scores.neurons[1][3] == 0.0
    live = np.concatenate([np.delete(scores.heads[1], 1), np.delete(scores.neurons[1], 3), scores.heads[0]])
    assert (live > 0).all(), "every other unit has a gradient"
    keep = plan(scores, heads=1 / sum(len(v) for v in scores.heads.values()),
                ffn=1 / sum(len(v) for v in scores.neurons.values()))
    assert 1 not in keep[1].heads and 3 not in keep[1].neurons
    assert all(torch.equal(v, state[k]) for k, v in source.module.state_dict().items())
    assert [p.requires_grad for p in source.module.parameters()] == flags


@pytest.mark.parametrize("arch", ARCHS)
def test_obs_removes_a_silent_head_and_neuron_first(tiny_model_factory, arch):
    """A head or neuron whose output-projection columns are zero costs nothing to remove: the
    least-squares removal-cost greedy (obs.py) takes it at step 0, and removing it changes no output."""
    from converters.pruning.obs import obs_scores

    source, batches = _case(tiny_model_factory, arch)
    _silence_head_1_and_neuron_3(source)
    before = _outputs(source, batches)
    total_heads = sum(layer.heads for layer in find_layers(source.module))
    total_neurons = sum(layer.neurons for layer in find_layers(source.module))
    scores = obs_scores(source.module, batches, source.input_names, 1 / total_heads, 1 / total_neurons)
    assert scores.heads[1][1] == 0 and scores.neurons[1][3] == 0
    assert np.isinf(np.delete(scores.neurons[1], 3)).all(), "the greedy stops at the share it was asked for"
    keep = plan(scores, heads=1 / total_heads, ffn=1 / total_neurons)
    assert 1 not in keep[1].heads and 3 not in keep[1].neurons
    prune(source.module, keep)
    for want, got in zip(before, _outputs(source, batches)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_obs_sees_a_redundant_neuron_that_activations_and_magnitudes_rank_high(tiny_model_factory):
    """Neuron 5 duplicates neuron 4 (same input row and bias: the same activation) and carries the
    largest output weights of its layer: activation and magnitude scores keep it, the removal-cost
    greedy drops it first (its twin takes its weights over, nothing is lost), and after the
    re-fit the pruned model computes what the unpruned one did."""
    from converters.pruning.importance import magnitude
    from converters.pruning.obs import obs_scores
    from converters.pruning.reconstruct import prune_and_reconstruct

    source, batches = _case(tiny_model_factory, "bert")
    layer = find_layers(source.module)[0]
    with torch.no_grad():
        layer.ffn_in.weight[5] = layer.ffn_in.weight[4]
        layer.ffn_in.bias[5] = layer.ffn_in.bias[4]
        layer.ffn_out.weight[:, 5] = 3.0 * layer.ffn_out.weight.abs().max()
    before = _outputs(source, batches)
    total_neurons = sum(layer.neurons for layer in find_layers(source.module))
    obs = obs_scores(source.module, batches, source.input_names, 0.0, 1 / total_neurons)
    assert int(np.argmin(obs.neurons[0])) in (4, 5) and np.isfinite(obs.neurons[0]).sum() == 1
    for other in (score(source.module, batches, source.input_names), magnitude(source.module)):
        assert other.neurons[0][5] > np.median(other.neurons[0]), "the other criteria rank it high"
    keep = plan(obs, heads=0.0, ffn=1 / total_neurons)
    prune_and_reconstruct(source.module, keep, batches, source.input_names, damp=1e-9)
    for want, got in zip(before, _outputs(source, batches)):
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3)


def test_plan_refuses_a_share_the_scores_do_not_rank(tiny_model_factory):
    from converters.pruning.obs import obs_scores

    source, batches = _case(tiny_model_factory, "bert")
    scores = obs_scores(source.module, batches, source.input_names, 0.25, 0.25)
    plan(scores, 0.25, 0.25)
    with pytest.raises(ConversionError, match="larger share"):
        plan(scores, 0.5, 0.25)


def test_refit_is_pulled_toward_the_kept_weights_not_toward_zero(tiny_model_factory):
    """The re-fit's regularizer pulls toward the weights slicing kept: at an overwhelming pull the
    re-fitted model is the sliced one (a ridge toward zero would shrink the projections instead),
    and at a negligible pull it fits the layer outputs better than any stronger pull."""
    from converters.pruning.reconstruct import prune_and_reconstruct

    source, batches = _case(tiny_model_factory, "bert")
    fit, heldout = batches[:2], batches[2:]
    keep = plan(score(source.module, fit, source.input_names), heads=0.5, ffn=0.5)
    sliced, _ = _case(tiny_model_factory, "bert")
    prune(sliced.module, keep)
    errors = {}
    for damp in (1e9, 0.3, 1e-6):
        model, _ = _case(tiny_model_factory, "bert")
        report = prune_and_reconstruct(model.module, keep, fit, model.input_names, damp=damp, attention_damp=damp)
        errors[damp] = sum(e["reconstruction"]["ffn_error"][1] for e in report["layers"])
        if damp == 1e9:
            for want, got in zip(_outputs(sliced, heldout), _outputs(model, heldout)):
                np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert errors[1e-6] <= errors[0.3] <= errors[1e9], errors


def test_each_projection_is_pulled_with_its_own_strength(tiny_model_factory):
    """attention_damp pulls the attention output, damp the FFN output: at an overwhelming pull on
    one, its weights stay the sliced ones while the other is re-fitted, and the report records
    both pulls (edge-convert's defaults differ: reconstruct.ATTENTION_DAMP, RESULTS.md run AQ)."""
    from converters.pruning.reconstruct import ATTENTION_DAMP, DAMP, prune_and_reconstruct

    source, batches = _case(tiny_model_factory, "bert")
    keep = plan(score(source.module, batches, source.input_names), heads=0.5, ffn=0.5)
    sliced, _ = _case(tiny_model_factory, "bert")
    prune(sliced.module, keep)
    for damp, attention_damp, frozen, refitted in ((1e9, 1e-3, "ffn_out", "attention_out"),
                                                   (1e-3, 1e9, "attention_out", "ffn_out")):
        model, _ = _case(tiny_model_factory, "bert")
        report = prune_and_reconstruct(model.module, keep, batches, model.input_names, damp=damp,
                                       attention_damp=attention_damp)
        assert (report["reconstruction"]["damp"], report["reconstruction"]["attention_damp"]) == (damp, attention_damp)
        for want, got in zip(find_layers(sliced.module), find_layers(model.module)):
            np.testing.assert_allclose(getattr(got, frozen).weight.detach().numpy(),
                                       getattr(want, frozen).weight.detach().numpy(), rtol=1e-5, atol=1e-6)
            assert not np.allclose(getattr(got, refitted).weight.detach().numpy(),
                                   getattr(want, refitted).weight.detach().numpy(), atol=1e-4)
    default = prune_and_reconstruct(_case(tiny_model_factory, "bert")[0].module, keep, batches, source.input_names)
    assert (default["reconstruction"]["damp"], default["reconstruction"]["attention_damp"]) == (DAMP, ATTENTION_DAMP)


def test_input_refit_is_pulled_toward_the_sliced_weights_and_can_be_turned_off(tiny_model_factory):
    """input_damp pulls Q/K/V and the FFN input: None keeps their sliced weights (and the output
    re-fits are those of a model whose inputs were not re-fitted), a finite pull moves the layers
    after the first, whose stream pruning has changed; the report records the pull."""
    from converters.pruning.reconstruct import INPUT_DAMP, prune_and_reconstruct

    source, batches = _case(tiny_model_factory, "bert")
    keep = plan(score(source.module, batches, source.input_names), heads=0.5, ffn=0.5)
    sliced, _ = _case(tiny_model_factory, "bert")
    prune(sliced.module, keep)
    reads = ("query", "key", "value", "ffn_in")
    for input_damp in (None, INPUT_DAMP):
        model, _ = _case(tiny_model_factory, "bert")
        report = prune_and_reconstruct(model.module, keep, batches, model.input_names, input_damp=input_damp)
        assert report["reconstruction"]["input_damp"] == input_damp
        for want, got in zip(find_layers(sliced.module), find_layers(model.module)):
            for name in reads:
                same = np.allclose(getattr(got, name).weight.detach().numpy(),
                                   getattr(want, name).weight.detach().numpy(), rtol=1e-5, atol=1e-6)
                # Layer 0's Q/K/V read the unchanged embeddings: their re-fit is the sliced weights.
                assert same == (input_damp is None or (want.index == 0 and name != "ffn_in")), (input_damp, want.index, name)
        assert ("qkv_error" in report["layers"][0]["reconstruction"]) == (input_damp is not None)


def test_layer_sensitivity_moves_removals_away_from_a_layer_the_output_depends_on(tiny_model_factory):
    """With a loss that only a change to layer 0's FFN raises, the greedy takes no neuron of layer
    0 (its costs are weighted up), though without the loss it takes some; the calibration puts
    every weight back (the model computes what it did)."""
    from converters.pruning.obs import obs_scores

    source, batches = _case(tiny_model_factory, "bert")
    layers = find_layers(source.module)
    original = layers[0].ffn_out.weight.detach().clone()
    before = _outputs(source, batches)
    total_neurons = sum(layer.neurons for layer in layers)

    def loss() -> float:  # what an output loss sees when only layer 0 matters
        return float((layers[0].ffn_out.weight.detach() - original).abs().sum())

    plain = obs_scores(source.module, batches, source.input_names, 0.0, 0.4)
    weighted = obs_scores(source.module, batches, source.input_names, 0.0, 0.4, loss=loss)
    assert np.isfinite(plain.neurons[0]).sum() > 0, "without the loss, layer 0 loses neurons"
    assert np.isfinite(weighted.neurons[0]).sum() == 0, weighted.sensitivity
    # The layers whose change the loss does not see are not free, only far cheaper (obs._no_free_layer).
    assert weighted.sensitivity["neurons"][0] > 0 and all(
        weighted.sensitivity["neurons"][i] == pytest.approx(0.01 * weighted.sensitivity["neurons"][0])
        for i in range(1, len(layers)))
    assert round(0.4 * total_neurons) == sum(np.isfinite(v).sum() for v in weighted.neurons.values())
    for want, got in zip(before, _outputs(source, batches)):
        np.testing.assert_array_equal(got, want)


def test_a_second_pruning_step_refits_toward_the_teacher_it_is_given(tiny_model_factory):
    """prune_and_reconstruct(teacher=...) targets that model's layer outputs, not those of the model
    as it was before this step (benchmarks/bench_pruning_refit.py --steps prunes in steps against
    the unpruned model): on the fit texts, a second step re-fitted toward the original ends nearer
    the original's outputs than one re-fitted toward the first step's model."""
    import copy

    from converters.pruning.reconstruct import prune_and_reconstruct

    source, batches = _case(tiny_model_factory, "bert")
    original = copy.deepcopy(source.module)
    teacher = _outputs(source, batches)
    prune_and_reconstruct(source.module, plan(score(source.module, batches, source.input_names), 0.25, 0.25),
                          batches, source.input_names, damp=1e-6, attention_damp=1e-6)
    second = plan(score(source.module, batches, source.input_names), 0.3, 0.3)
    errors = {}
    for label, towards in (("previous step", None), ("original", original)):
        model = copy.deepcopy(source)
        prune_and_reconstruct(model.module, second, batches, model.input_names, damp=1e-6, attention_damp=1e-6,
                              teacher=towards)
        errors[label] = sum(float(((o - t) ** 2).sum()) for o, t in zip(_outputs(model, batches), teacher))
    assert errors["original"] < errors["previous step"], errors
