"""The pruning review's defects (tiny models, no conversion but one slow test): a request that can
remove nothing is refused before any work; a failed twin stage refuses the twins and keeps the
unpruned artifacts; a twin's refusal advice is about pruning; layer sensitivities are measured or
recorded as not measured; the long steps report counts with an ETA; auto says when nothing is
removable, mentions distillation and warns when --distill-steps goes unused; the over-fit note
counts distinct texts; auto's choice on the validation texts is on record; the package docstring
lists its modules."""

from __future__ import annotations

import copy
import io
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from converters._console import ProgressPrinter, count, parse_count
from converters._errors import AccuracyError, ConversionError
from converters.pruning.prune_model import PruneRequest, check_request_fits, generalization, prune_source
from targets import PruningOptions, load_profile

# A floor every candidate keeps (the walk's length, not its verdicts, is under test).
EASY = dict(cosine_mean=0.01, cosine_min=0.0, top1_agreement=0.01, margin=0.0)


@pytest.fixture(scope="module")
def tiny(tiny_model_factory):
    """(source, fit, validation): the tiny BERT (2 layers x 4 heads, 64 FFN neurons each) and
    disjoint built-in texts with its outputs."""
    from converters.core.validate import reference_outputs
    from converters.inputs.calibration import load_texts
    from converters.inputs.source import load_source

    source = load_source(tiny_model_factory("bert", "feature-extraction"))
    texts = load_texts().texts
    return source, reference_outputs(source, tuple(texts[:24])), reference_outputs(source, tuple(texts[24:40]))


# 1. Before any work / a failed twin stage -------------------------------------------------------

def test_a_request_that_can_remove_nothing_is_refused_before_any_work():
    """One head per layer: every layer keeps it, so heads=0.5 removes nothing (it passed the
    check, and failed only after the unpruned artifacts were built)."""
    one_head = SimpleNamespace(num_layers=2, num_heads=1, intermediate_size=64)
    with pytest.raises(ConversionError, match=r"removes nothing from this model \(2 heads and 128 FFN neurons in "
                                              r"all, 2 layers; every layer keeps at least one head.*ffn=0.0039"):
        check_request_fits(PruneRequest.parse("heads=0.5"), one_head)
    check_request_fits(PruneRequest.parse("heads=0.5,ffn=0.01"), one_head)  # one neuron goes
    nothing = SimpleNamespace(num_layers=2, num_heads=1, intermediate_size=1)
    with pytest.raises(ConversionError, match=r"prune=auto: nothing in this model can be pruned"):
        check_request_fits(PruneRequest.parse("auto"), nothing, PruningOptions())
    with pytest.raises(ConversionError, match=r"heads=0.5,ffn=0.5 removes nothing .*so none can go"):
        check_request_fits(PruneRequest.parse("heads=0.5,ffn=0.5"), nothing)
    # auto within maxima that round to no unit of 2 x 4 heads (0.04 x 8 = 0.3), FFN off
    four = SimpleNamespace(num_layers=2, num_heads=4, intermediate_size=64)
    with pytest.raises(ConversionError, match="max_heads 0.04, max_ffn 0"):
        check_request_fits(PruneRequest.parse("auto"), four, PruningOptions(max_heads=0.04, max_ffn=0.0))
    check_request_fits(PruneRequest.parse("auto"), four, PruningOptions())


def test_auto_with_profile_maxima_of_zero_is_refused_before_any_work(monkeypatch):
    import dataclasses

    from converters import options

    profile = load_profile("x86-avx2")
    zero = dataclasses.replace(profile, pruning=dataclasses.replace(profile.pruning, artifacts=("onnx-int8",),
                                                                    max_heads=0.0, max_ffn=0.0))
    config = options.ConvertConfig(model=None, target="x86-avx2", out=Path("unused"), prune="auto")
    with pytest.raises(ConversionError, match="max_heads and max_ffn are both 0"):
        options.prune_request(config, zero)


def _fake_step(messages):
    return SimpleNamespace(progress=messages.append, work=Path("unused"), reference=None)


def test_a_conversion_error_of_the_twin_stage_refuses_the_twins_and_a_bug_stays_fatal():
    from converters.inputs.plan import pruned_plan
    from converters.pruning.twins import pruned_step

    profile = load_profile("x86-avx2")
    twins = {p.name for p in pruned_plan(profile)}
    assert twins

    def failing(error):
        def pruned(*args):
            raise error
        return SimpleNamespace(pruned=pruned)

    messages, refused = [], []
    error = ConversionError("prune=heads=0.5,ffn=0 removes nothing from this model")
    assert pruned_step(failing(error), _fake_step(messages), profile, PruneRequest(heads=0.5), refused, 0) is None
    assert {r["name"] for r in refused} == twins
    assert all("pruning failed: prune=heads=0.5,ffn=0 removes nothing" in r["reason"] for r in refused)
    assert any(m.startswith("[pruned] REFUSED: pruning failed") for m in messages)

    # The export (or its check against the pruned PyTorch model) fails: refused, with the record.
    record = {"pytorch_metrics": {"cosine_mean": 0.999, "cosine_min": 0.99}, "request": "heads=0.5,ffn=0"}

    def export(*args):
        raise ConversionError("the ONNX export of the pruned model disagrees with the pruned PyTorch model")

    refused = []
    shared = SimpleNamespace(pruned=lambda *args: SimpleNamespace(pruning=record, onnx_export=export))
    assert pruned_step(shared, _fake_step(messages), profile, PruneRequest(heads=0.5), refused, 0) is None
    assert {r["name"] for r in refused} == twins
    assert all("export or its check failed" in r["reason"] and r["pruning"] is record for r in refused)

    with pytest.raises(RuntimeError, match="a bug"):  # not a ConversionError: not hidden as a refusal
        pruned_step(failing(RuntimeError("a bug")), _fake_step(messages), profile, PruneRequest(heads=0.5), [], 0)


@pytest.mark.slow
def test_a_pruned_export_that_fails_its_check_keeps_the_unpruned_artifacts(tiny_model_factory, tmp_path,
                                                                           monkeypatch):
    """The review's case: the twins' stage raised ConversionError after the unpruned artifacts were
    built and verified, and the whole output was lost (exit status 1)."""
    from click.testing import CliRunner

    from converters.cli import main as edge_convert
    from converters.pruning import twins

    monkeypatch.setattr(twins, "PRUNED_EXPORT_TOLERANCE", -1.0)  # every metric "disagrees"
    out = tmp_path / "out"
    result = CliRunner().invoke(edge_convert, [str(tiny_model_factory("bert", "feature-extraction")), "--target",
                                               "x86-avx2", "--out", str(out), "--quiet", "--prune",
                                               "heads=0.25,ffn=0.5", "--prune-floor", "0.5"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert {"onnx-fp32", "onnx-int8"} <= {a["name"] for a in manifest["artifacts"]}
    refused = {r["name"]: r for r in manifest["refused"]}
    assert {"onnx-int8-pruned", "onnx-int4-pruned"} <= set(refused)
    assert "disagrees with the pruned PyTorch model" in refused["onnx-int8-pruned"]["reason"]
    assert refused["onnx-int8-pruned"]["pruning"]["request"] == "heads=0.25,ffn=0.5"
    assert "REFUSED onnx-int8-pruned" in result.stderr


# 2. A twin's refusal advice ---------------------------------------------------------------------

def _exhausted_search(monkeypatch, name: str) -> str:
    """The ONNX INT8 builder's refusal when its kept-FP32 search is exhausted, for artifact `name`."""
    from converters.core.search import SearchExhausted
    from converters.onnx import mixed_precision as mp
    from targets import AccuracyFloor

    def exhausted(*args, **kwargs):
        raise SearchExhausted("still below the accuracy floor (cosine_mean 0.9526 < floor 0.97) after the kept "
                              "FP32 search: 3 candidates ranked", None)

    monkeypatch.setattr(mp, "quantize_int8", lambda *args: None)
    monkeypatch.setattr(mp, "compute_metrics", lambda *args: {"cosine_mean": 0.95, "cosine_min": 0.9})
    monkeypatch.setattr(mp, "_weight_groups", lambda *args: {})
    monkeypatch.setattr(mp, "quantizable_nodes", lambda *args: [])
    monkeypatch.setattr(mp, "_Int8Space", lambda *args: None)
    monkeypatch.setattr(mp, "greedy_search", exhausted)
    reference = SimpleNamespace(spread=lambda count: None)
    config = SimpleNamespace(op_types=())
    with pytest.raises(AccuracyError) as raised:
        mp._quantize_with_floor(Path("fp32.onnx"), Path("out.onnx"), config, None, reference,
                                AccuracyFloor(0.97, 0.85, 0.97), lambda path: SimpleNamespace(run=None),
                                lambda message: None, None, name, None, None, 1)
    return str(raised.value)


def test_a_pruned_twin_refusal_names_the_pruning_levers_not_the_accuracy_floor(monkeypatch):
    from converters.cli import as_flags
    from converters.pruning.twins import twin_reason

    library = _exhausted_search(monkeypatch, "onnx-int8-pruned")
    assert twin_reason(library) == library  # already says it: no second advice in the pipeline
    twin = as_flags(library)
    assert "--prune-floor" in twin and "--distill-steps" in twin and "--prune ..." in twin
    assert "--accuracy-floor" not in twin and "FP32 only" not in twin
    plain = as_flags(_exhausted_search(monkeypatch, "onnx-int8"))
    assert "--accuracy-floor" in plain and "ship FP32 only" in plain
    # Other builders' floor refusals (TFLite, INT4) get the twin's advice in the pipeline...
    below = twin_reason("tflite-int8-pruned is below the accuracy floor: cosine_mean 0.9 < floor 0.97")
    assert "lower prune_floor" in below and "distill_steps=N" in below and "accuracy_floor" not in below
    # ... refusals that are not about the floor keep their own.
    budget = "the all-4-bit model is 5 bytes, above the size budget of 4 bytes (0.3 x FP32)"
    assert twin_reason(budget) == budget


# 3. Layer sensitivity: measured, or recorded as not measured -----------------------------------

def test_a_layer_of_one_unit_is_not_measured_and_not_reported_as_weight_one():
    from converters.pruning.obs import _Projection, _sensitivity

    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(size=(50, 8)), np.ones((50, 1))], axis=1)
    one_head = _Projection(x.T @ x, rng.normal(size=(4, 8)), np.zeros(4), group=8, energy=1.0, damp=0.01)

    def never():
        raise AssertionError("no run for a layer that keeps its only unit")

    assert _sensitivity(one_head, None, 0.5, never) is None


def test_heads_sensitivity_is_measured_when_the_share_rounds_to_no_head_in_a_layer(tiny):
    """--prune auto calibrates at 1/12 of the heads: 0.33 of a 4-head layer rounded to no head,
    the weight stayed 1.0 unmeasured and the manifest showed it as a measurement."""
    from converters.pruning.obs import obs_scores
    from converters.pruning.prune_model import AUTO_STEPS, output_loss

    source, fit, _ = tiny
    calls = []
    measure = output_loss(source, fit)

    def loss():
        calls.append(1)
        return measure()

    scores = obs_scores(source.module, fit.batches, source.input_names, 0.5, 0.5, loss=loss, calibrate_at=AUTO_STEPS)
    assert len(calls) == 4  # 2 layers x (heads, neurons)
    assert all(w is not None and w > 0 for w in scores.sensitivity["heads"].values()), scores.sensitivity
    assert scores.sensitivity["heads"] != {0: 1.0, 1: 1.0}


def test_the_manifest_records_an_unmeasured_kind_as_null_and_the_criterion_says_which(tiny):
    source, fit, validation = tiny
    record = prune_source(source, PruneRequest.parse("ffn=0.25"), PruningOptions(), fit, validation).report
    assert record["layer_sensitivity"]["heads"] == {"0": None, "1": None}  # no head removed: not measured
    assert all(isinstance(w, float) for w in record["layer_sensitivity"]["neurons"].values())
    assert "neurons costs weighted by their measured output sensitivity" in record["criterion"]
    assert "heads" not in record["criterion"]
    assert record["chosen_on"] == "the request (fixed shares): no texts chose them"


# 4. Counts the progress printer shows with a percentage and an ETA ------------------------------

def _printed(messages: list[str]) -> str:
    """`messages` through the CLI's printer (not a terminal), one second apart."""
    clock = iter(range(10_000))
    stream = io.StringIO()
    printer = ProgressPrinter(stream, started=0.0, tty=False, clock=lambda: float(next(clock)), every_seconds=1e9)
    for message in messages:
        printer(message)
    return stream.getvalue()


def test_distillation_steps_are_a_count_with_an_eta_and_checks_a_separate_line(tiny):
    from converters.pruning.distill import DistillConfig, distill

    source, fit, validation = tiny
    student = copy.deepcopy(source.module)
    messages: list[str] = []
    distill(student, source.module, source, fit, validation, DistillConfig(4, check_every=2), messages.append)
    counted = [parse_count(m) for m in messages if parse_count(m)]
    assert counted == [("distillation step", k, 4) for k in range(5)]
    checks = [m for m in messages if m.startswith("distillation check at step")]
    assert len(checks) == 2 and all(parse_count(m) is None and "validation cosine_mean" in m for m in checks)
    printed = _printed(messages)
    assert "distillation step 2/4 (50%)" in printed and "ETA" in printed


def test_an_early_stop_ends_the_count_instead_of_leaving_an_eta():
    from converters._console import parse_stopped, stopped

    label = "distillation step"
    assert parse_stopped(stopped(label, 100, 400)) == (label, 100, 400)
    assert parse_count(stopped(label, 100, 400)) is None
    printed = _printed([count(label, 0, 400), count(label, 100, 400), stopped(label, 100, 400), "next line"])
    assert "distillation step 100/400 (25%) in" in printed and printed.rstrip().endswith("next line")
    assert "stopped early" in printed.splitlines()[-2]
    for tty in (True, False):  # the count is over: the next line does not draw its bar again
        stream = io.StringIO()
        printer = ProgressPrinter(stream, started=0.0, tty=tty, clock=lambda: 1.0)
        printer(count(label, 1, 4))
        printer(stopped(label, 1, 4))
        before = stream.getvalue()
        printer("after")
        assert stream.getvalue()[len(before):].count("distillation") == 0


def test_the_ordering_and_the_auto_walk_are_counts(tiny):
    from converters._console import parse_stopped

    source, fit, validation = tiny
    messages: list[str] = []
    options = PruningOptions(max_heads=0.25, max_ffn=0.2, **EASY)
    prune_source(source, PruneRequest(auto=True), options, fit, validation, messages.append)
    labels = {parsed[0]: parsed[2] for parsed in map(parse_count, messages) if parsed}
    assert labels["pruning: ordering neurons by removal cost"] == round(0.2 * 128)
    assert labels["pruning: ordering heads by removal cost"] == 2
    assert labels["pruning: measuring heads sensitivity on the fit texts, layer"] == 2
    # At most 2 candidates per round, 3 head steps + 2 FFN steps: 10; the walk's count ends.
    assert labels["pruning auto: candidate"] == 10
    walk = [parse_count(m) or parse_stopped(m) for m in messages if "pruning auto: candidate" in m]
    assert walk[0] == ("pruning auto: candidate", 0, 10) and walk[-1][1] <= 10
    assert "ETA" in _printed(messages)
    # Each step says what it removes, not only the grid share asked for (4 heads a layer here: a
    # 1/12 step removes one head of the 8, 0.125).
    steps = [m for m in messages if m.startswith("pruning auto: heads")]
    assert steps and all("(removes " in m for m in steps), steps
    assert any("heads 0.08 ffn 0.00 (removes 0.125 of the heads" in m for m in steps), steps


# 5. auto with nothing removable; distillation in auto's refusals --------------------------------

def test_auto_on_a_model_with_nothing_removable_says_so_and_that_distillation_was_unused(tiny):
    from converters.pruning.structure import find_layers
    from converters.pruning.surgery import Keep, prune

    source, fit, validation = tiny
    sliced = copy.deepcopy(source)
    prune(sliced.module, {layer.index: Keep((0,), (0,)) for layer in find_layers(sliced.module)})
    with pytest.raises(ConversionError) as raised:
        prune_source(sliced, PruneRequest(auto=True), PruningOptions(), fit, validation, distill_steps=5)
    assert not isinstance(raised.value, AccuracyError)  # no step was tried: not an accuracy matter
    message = str(raised.value)
    assert "nothing in this model can be pruned" in message and "tried" not in message
    assert "distill_steps=5 was not used" in message


def test_an_auto_refusal_mentions_distillation_and_an_unused_distill_steps(tiny):
    source, fit, validation = tiny
    impossible = PruningOptions(cosine_mean=0.99999999, cosine_min=0.9999999, top1_agreement=0.99999999,
                                margin=0.0, max_heads=1 / 12, max_ffn=0.1)
    with pytest.raises(AccuracyError) as raised:
        prune_source(source, PruneRequest(auto=True), impossible, fit, validation, distill_steps=7)
    message = str(raised.value)
    assert "no pruning keeps the pruning floor" in message and "tried heads" in message
    assert "lower prune_floor" in message and "distill_steps=N" in message and "prune=heads=" in message
    assert "distill_steps=7 was not used" in message


# 6. The over-fit note counts distinct texts -----------------------------------------------------

def test_the_over_fit_note_counts_distinct_fit_texts(tiny):
    note = generalization({"cosine_mean": 0.99}, {"cosine_mean": 0.83}, 4, 160)
    assert note["fit_texts"] == 4 and note["fit_rows"] == 160
    assert "over-fits its 4 distinct fit texts (160 with repeats)" in note["note"]
    assert "over-fits its 270 fit texts (" in generalization({"cosine_mean": 0.99}, {"cosine_mean": 0.8}, 270)["note"]

    from converters.core.validate import reference_outputs
    from converters.inputs.calibration import load_texts

    source, _, validation = tiny
    repeated = reference_outputs(source, tuple(load_texts().texts[:8]) * 5)
    record = prune_source(source, PruneRequest.parse("ffn=0.25"), PruningOptions(), repeated, validation).report
    assert record["generalization"]["fit_texts"] == 8 and record["generalization"]["fit_rows"] == 40


# 7. auto's choice on the validation texts is on record ------------------------------------------

def test_auto_records_that_it_chose_on_the_validation_texts(tiny):
    source, fit, validation = tiny
    options = PruningOptions(max_heads=1 / 12, max_ffn=0.1, **EASY)
    record = prune_source(source, PruneRequest(auto=True), options, fit, validation).report
    assert record["search"] and "validation texts" in record["chosen_on"]
    assert "not independent of that choice" in record["chosen_on"]


# 8. The package docstring ------------------------------------------------------------------------

def test_the_pruning_package_docstring_lists_its_modules_and_nothing_stale():
    import converters.pruning as package

    folder = Path(package.__file__).parent
    modules = sorted(p.name for p in folder.glob("*.py") if p.name != "__init__.py")
    assert [m for m in modules if m not in package.__doc__] == []
    assert "Not yet" not in package.__doc__


@pytest.mark.parametrize("error", [ConversionError("the pruned graph has no attention layer left"),
                                   AccuracyError("auto found no step above the pruning floor")])
def test_a_failed_pruning_is_reached_once_per_run_and_told_to_every_target(tiny_model_factory, tmp_path,
                                                                          monkeypatch, error):
    """`--target a,b --prune ...`: the pruning (minutes on a real model) is shared by the targets.
    A refusal was kept for the next target, but any other ConversionError made every target prune
    again to fail the same way. Now both are kept and raised again as they were."""
    from converters import _shared
    from converters.inputs.source import load_source

    calls = []

    def failing(*args, **kwargs):
        calls.append(args[1])
        raise error

    monkeypatch.setattr(_shared, "prune_source", failing)
    shared = _shared.SharedInputs({"model": "tiny"}, load_source(tiny_model_factory("bert", "feature-extraction")),
                                  texts=None, work=tmp_path, _references=(None, None), _samples=[])
    request = PruneRequest.parse("heads=0.5,ffn=0.5")
    for _ in range(3):  # three targets
        with pytest.raises(type(error), match=str(error)) as raised:
            shared.pruned(request, PruningOptions(), lambda message: None)
        assert type(raised.value) is type(error)
    assert len(calls) == 1
