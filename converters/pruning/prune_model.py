"""The pruning pass of edge-convert: a pruned copy of the source model, at given ratios or the
largest reduction that keeps the profile's pruning floor (`--prune auto`).

    request = PruneRequest.parse("heads=0.33,ffn=0.5")       # or "auto"
    pruned = prune_source(source, request, profile.pruning, fit, validation, progress)
    pruned.source     # a SourceModel whose module is smaller; export and quantize it as usual
    pruned.report     # the manifest's "pruning" (what each layer kept, FLOPs, parameters, search)

What goes is ordered once on the unpruned model (obs.obs_scores: the heads and neurons whose
removal the rest can best make up for by least squares, on the fit texts' activations, with each
layer's costs weighted by how much of a layer-local error it measures at the output); each
candidate is sliced and re-fitted (reconstruct.py) on the fit texts and judged on the
validation texts against the unpruned PyTorch FP32 outputs, like every other search here.

`auto` walks up from nothing pruned: each step tries one more twelfth of the heads and one more
tenth of the FFN neurons (separately), keeps the candidate that loses the least validation
cosine per FLOP removed among those that keep the floor plus `margin` (room for quantization
afterwards), and stops when neither does or the profile's maxima are reached (the shared core's
descent, converters/core/descent.py, with FLOPs as the cost). It chooses on the
validation texts, the same texts the twin is then judged on: its figures lean optimistic (the
manifest's `pruning.chosen_on` says so, as distillation's `chosen_on` does for early stopping).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from converters._console import count, stopped
from converters._errors import AccuracyError, ConversionError
from converters.core.descent import Trial, descent
from converters.core.validate import Reference, compute_metrics, floor_failures
from converters.inputs.source import SourceModel
from converters.pruning.distill import DistillConfig, distill
from converters.pruning.importance import Scores, plan
from converters.pruning.obs import obs_scores
from converters.pruning.reconstruct import prune_and_reconstruct
from converters.pruning.structure import find_layers
from targets import AccuracyFloor, PruningOptions

__all__ = ["AUTO_STEPS", "OVERFIT_GAP", "PruneRequest", "PrunedSource", "encoder_flops", "generalization",
           "output_loss", "prune_source", "torch_runner"]

Progress = Callable[[str], None]
# --prune auto's step sizes: about one head per layer of a 12-head model, a tenth of the FFN.
AUTO_STEPS = (1 / 12, 0.1)
# The sequence length FLOPs are counted at (the benchmark shape of the speed figures).
FLOPS_SEQUENCE = 128
# A re-fitted model that loses this much more (1 - cosine mean or top-1 agreement) on the
# validation texts than on its own fit texts has over-fitted them; the report then says so. On
# MiniLM: heads 0.08 / FFN 0.1 loses 0.004 on its fit texts and 0.017 on validation (no note),
# heads 0.33 / FFN 0.5 0.037 and 0.127 (benchmarks/RESULTS.md runs W and X).
OVERFIT_GAP = 0.03


@dataclass(frozen=True)
class PruneRequest:
    """What to remove: fixed shares of all heads and FFN neurons, or `auto`."""

    heads: float = 0.0
    ffn: float = 0.0
    auto: bool = False

    @classmethod
    def parse(cls, text: str) -> PruneRequest | None:
        """"heads=0.33,ffn=0.5" (either may be left out: 0), "auto", or "off" (None)."""
        text = text.strip().lower()
        if text == "off":
            return None
        if text == "auto":
            return cls(auto=True)
        values = {}
        expected = "expected 'auto', 'off' or 'heads=R,ffn=R' with shares R in [0, 1) (e.g. 'heads=0.33,ffn=0.5')"
        for part in filter(None, (p.strip() for p in text.split(","))):
            name, _, value = (piece.strip() for piece in part.partition("="))
            if name not in ("heads", "ffn"):
                raise ConversionError(f"prune {text!r}: {name!r} is not a share to prune (heads or ffn); {expected}")
            if name in values:
                raise ConversionError(f"prune {text!r}: {name} is given twice; {expected}")
            if not re.fullmatch(r"[0-9]*\.?[0-9]+", value):
                raise ConversionError(f"prune {text!r}: {name}={value!r} is not a plain decimal share such as "
                                      f"{name}=0.33; {expected}")
            values[name] = float(value)
        request = cls(**values)
        for name in ("heads", "ffn"):
            if not 0.0 <= getattr(request, name) < 1.0:
                given = next(part for part in text.split(",") if part.strip().startswith(name))
                raise ConversionError(f"prune {given.strip()}: {name} must be a share from 0 up to (not "
                                      f"including) 1, e.g. {name}=0.33 removes a third")
        if request.heads == request.ffn == 0.0:
            raise ConversionError(f"prune {text!r} removes nothing; use 'off' for no pruning")
        return request

    def describe(self) -> str:
        return "auto" if self.auto else f"heads={self.heads:g},ffn={self.ffn:g}"


@dataclass
class PrunedSource:
    source: SourceModel
    report: dict[str, Any]


def encoder_flops(model: Any, sequence: int = FLOPS_SEQUENCE) -> int:
    """Multiply-adds x 2 of the transformer layers for one sequence of `sequence` tokens: the
    Q/K/V and output projections, the attention scores and context, the FFN pair (embeddings,
    norms and pooling are left out: they do not change with pruning)."""
    total = 0
    for layer in find_layers(model):
        width = layer.query.out_features  # kept heads x head size
        hidden = layer.query.in_features
        total += 2 * sequence * (4 * hidden * width + 2 * sequence * width + 2 * hidden * layer.neurons)
    return total


def _candidate(source: SourceModel, scores: Scores, heads: float, ffn: float, fit: Reference,
               validation: Reference, progress: Progress) -> tuple[SourceModel, dict[str, Any], dict[str, float]]:
    """A pruned, re-fitted copy of `source` at (heads, ffn), its report and validation metrics."""
    module = copy.deepcopy(source.module)
    report = prune_and_reconstruct(module, plan(scores, heads, ffn), fit.batches, source.input_names,
                                   progress=progress)
    pruned = dataclasses.replace(source, module=module,
                                 num_parameters=sum(p.numel() for p in module.parameters()))
    metrics = compute_metrics(pruned, validation, torch_runner(source, module),
                              f"pruned PyTorch (heads {heads:.2f}, ffn {ffn:.2f})")
    return pruned, report, metrics


def output_loss(source: SourceModel, reference: Reference) -> Callable[[], float]:
    """A callable returning 1 - the task metric of `source.module`, as it is when called, against
    `reference` (what obs_scores' layer calibration measures)."""

    def measure() -> float:
        run = torch_runner(source, source.module)
        return _graded_loss(compute_metrics(source, reference, run, "the PyTorch model under calibration"))

    return measure


def torch_runner(source: SourceModel, module: Any) -> Callable[[dict], dict]:
    """compute_metrics' runner for a PyTorch `module` taking `source`'s inputs and output name."""

    def run(feeds):
        import torch

        with torch.no_grad():
            out = module(*[torch.from_numpy(feeds[n]) for n in source.input_names])
        return {source.output_names[0]: out.numpy()}

    return run


def _margin_floor(floor: AccuracyFloor, margin: float) -> AccuracyFloor:
    return AccuracyFloor(min(1.0, floor.cosine_mean + margin), min(1.0, floor.cosine_min + margin),
                         min(1.0, floor.top1_agreement + margin))


def _headline(metrics: dict[str, float]) -> str:
    """The metric pruning is judged on: cosine mean for embeddings, top-1 agreement for classifiers."""
    return "cosine_mean" if "cosine_mean" in metrics else "top1_agreement"


def _loss(metrics: dict[str, float]) -> float:
    return 1.0 - metrics.get(_headline(metrics), 1.0)


def _graded_loss(metrics: dict[str, float]) -> float:
    """1 - a metric that moves with every change of the outputs: the cosine for embeddings, the
    logits' cosine for classifiers. What compares pruning steps with each other (layer
    sensitivities, --prune auto's next step): top-1 agreement rarely moves when one layer alone is
    pruned, and a layer whose loss measured 0 had all its units removed first."""
    for name in ("cosine_mean", "logits_cosine_mean"):
        if name in metrics:
            return 1.0 - metrics[name]
    return _loss(metrics)


def generalization(fit_metrics: dict[str, float], validation_metrics: dict[str, float],
                   fit_texts: int, fit_rows: int | None = None, distilling: bool = False) -> dict[str, Any]:
    """How the pruned, re-fitted model scores on the texts it was fitted on against the validation
    texts, with a note when the gap says the re-fit over-fitted them. Slicing alone scores the
    same on both (RESULTS.md run X): a gap is the least-squares re-fit learning its few hundred
    texts. More texts narrow it slowly (MiniLM at heads 0.33 / FFN 0.5: validation cosine 0.840,
    0.863, 0.873 from 68, 135, 270 fit texts; copies of the fit texts with words shuffled or cut
    add at most 0.004: RESULTS.md run Y); distillation added 0.024 there (run X).

    `fit_texts`: how many distinct texts the re-fit saw; `fit_rows`: how many it read, repeats
    included (None: no repeats). A file of 4 texts each repeated 40 times gives the re-fit 4 texts
    to learn, not 160: the count the note's advice (more texts) is about. `distilling`: distillation
    runs next (its record says what it recovered), so the note does not advise it."""
    gap = _loss(validation_metrics) - _loss(fit_metrics)
    rows = fit_texts if fit_rows is None else fit_rows
    record: dict[str, Any] = {"fit": fit_metrics, "validation": validation_metrics, "fit_texts": fit_texts,
                              "fit_rows": rows, "gap": round(gap, 6), "note": None}
    if gap > OVERFIT_GAP:
        name = _headline(fit_metrics)
        said = (f"{fit_texts} distinct fit texts ({rows} with repeats)" if rows != fit_texts
                else f"{fit_texts} fit texts")
        distill = ("" if distilling else "distillation (distill_steps=N) next, ")
        record["note"] = (
            f"the re-fit over-fits its {said} ({name} {fit_metrics[name]:.4f} on them, "
            f"{validation_metrics[name]:.4f} on the validation texts); what narrows it: a smaller pruning "
            f"share most, {distill}more unlabeled texts from the model's domain as calibration texts "
            "(calibration=FILE) slowly" + ("; distillation runs next" if distilling else ""))
    return record


def _removable(share: float, layers: int, per_layer: int) -> int:
    """How many of `layers` x `per_layer` units a share removes: shares round to whole units of
    all of them (importance.plan), and every layer keeps at least one (obs_scores' greedy)."""
    return min(round(share * layers * per_layer), layers * max(per_layer - 1, 0))


def check_request_fits(request: PruneRequest | None, source: SourceModel,
                       options: PruningOptions | None = None) -> None:
    """Before any work: a request that can remove no head and no neuron of this model (the
    counts are the config's) would fail only after the unpruned artifacts were built. A fixed
    share is checked as given; `auto` (with `options`) at the profile's maximum shares."""
    if request is None or (request.auto and options is None):
        return
    layers, per_head, per_ffn = source.num_layers, source.num_heads, source.intermediate_size
    heads, neurons = layers * per_head, layers * per_ffn
    shares = (options.max_heads, options.max_ffn) if request.auto else (request.heads, request.ffn)
    if _removable(shares[0], layers, per_head) or _removable(shares[1], layers, per_ffn):
        return
    counts = (f"{heads} heads and {neurons} FFN neurons in all, {layers} layers; every layer keeps at least one "
              "head and one neuron")
    if request.auto:
        raise ConversionError(
            f"prune=auto: nothing in this model can be pruned up to the profile's maximum shares (max_heads "
            f"{options.max_heads:g}, max_ffn {options.max_ffn:g} of {counts}): leave pruning off"
            + ("" if per_head > 1 or per_ffn > 1 else "; no share of this model would remove anything"))
    # Where one more unit could go, the smallest share that removes it.
    larger = [f"{name}={0.5 / total:.2g}" for name, total, per_layer in
              (("heads", heads, per_head), ("ffn", neurons, per_ffn)) if per_layer > 1]
    raise ConversionError(
        f"prune={request.describe()} removes nothing from this model ({counts}"
        + (f": a share removes one above {' or '.join(larger)}" if larger else ", so none can go") + "): "
        + ("ask for larger shares, or leave pruning off" if larger else "leave pruning off"))


def _check_removes_something(scores: Scores, request: PruneRequest) -> None:
    """A fixed request that rounds to no head and no neuron would deliver "-pruned" twins equal
    to the unpruned artifacts: refused, as prune heads=0,ffn=0 is."""
    kept = plan(scores, request.heads, request.ffn)
    if all(len(keep.heads) == len(scores.heads[layer]) and len(keep.neurons) == len(scores.neurons[layer])
           for layer, keep in kept.items()):
        heads = sum(len(v) for v in scores.heads.values())
        neurons = sum(len(v) for v in scores.neurons.values())
        raise ConversionError(
            f"prune={request.describe()} removes nothing from this model ({heads} heads and {neurons} FFN "
            "neurons in all; shares round to whole units and every layer keeps at least one of each): ask "
            "for larger shares, or leave pruning off")


def _auto_moves(scores: Scores, state: tuple[float, float], options: PruningOptions) -> list[tuple[float, float]]:
    """--prune auto's next steps from `state`: one more AUTO_STEPS share of heads, or of FFN
    neurons, each taken further until it removes a unit the current plan keeps (with few heads a
    1/12 step can round to the plan it started from: a step removing nothing would win as the
    cheapest), within the profile's maximum shares. Shares are whole multiples of the step (not
    sums of steps: six 1/12 steps add up to 0.49999999999999994, a second "0.5")."""
    now = plan(scores, *state)
    moves = []
    for axis, (step, most) in enumerate(((AUTO_STEPS[0], options.max_heads), (AUTO_STEPS[1], options.max_ffn))):
        share, steps = state[axis], round(state[axis] / step)
        while share < most:
            steps += 1
            share = min(round(steps * step, 9), most)
            move = (share, state[1]) if axis == 0 else (state[0], share)
            if plan(scores, *move) != now:
                moves.append(move)
                break
    return moves


def _most_candidates(options: PruningOptions) -> int:
    """At most how many candidates --prune auto builds: each round of its walk tries one move per
    axis below its maximum, and every round but the last takes at least one AUTO_STEPS step on
    one axis (what the progress count's total and ETA are: an upper bound, the walk may stop sooner)."""
    rounds = sum(math.ceil(round(most / step, 9))
                 for step, most in zip(AUTO_STEPS, (options.max_heads, options.max_ffn)))
    return 2 * rounds


def _unused_distillation(distill_steps: int) -> str:
    return (f" (distill_steps={distill_steps} was not used: there is no pruned model to distil)"
            if distill_steps > 0 else "")


def _floor_text(options: PruningOptions) -> str:
    return (f"cosine mean {options.cosine_mean}, min {options.cosine_min} for embeddings; top-1 agreement "
            f"{options.top1_agreement} for classifiers; + margin {options.margin}")


def _tried_text(tried: dict[str, Any]) -> str:
    metrics = tried["metrics"]
    if "cosine_mean" in metrics:
        scored = f"cosine {metrics['cosine_mean']:.4f} / {metrics.get('cosine_min', float('nan')):.4f}"
    else:
        scored = f"top-1 agreement {metrics.get('top1_agreement', float('nan')):.4f}"
    return f"heads {tried['heads']:.2f} ffn {tried['ffn']:.2f}: {scored}"


def _removed_shares(layers: list[dict]) -> dict[str, float]:
    heads = sum(layer["heads_before"] for layer in layers)
    neurons = sum(layer["neurons_before"] for layer in layers)
    return {"heads": round(1 - sum(layer["heads"] for layer in layers) / heads, 4),
            "ffn": round(1 - sum(layer["neurons"] for layer in layers) / neurons, 4)}


def prune_source(source: SourceModel, request: PruneRequest, options: PruningOptions, fit: Reference,
                 validation: Reference, progress: Progress = lambda m: None,
                 distill_steps: int = 0) -> PrunedSource:
    """`source` pruned as `request` says (see the module docstring), then, with `distill_steps`,
    distilled from the unpruned model on the fit texts (distill.py). Fixed ratios are delivered
    whatever they score (the pruned artifacts are judged against the floor when built); `auto`
    raises AccuracyError naming every step tried when not even the first step keeps the floor,
    and ConversionError when no step of it would remove anything (nothing was tried)."""
    progress("pruning: ordering heads and FFN neurons by least-squares removal cost on the fit texts (no labels)")
    upto = (request.heads, request.ffn) if not request.auto else (options.max_heads, options.max_ffn)
    # Layer sensitivities are measured at the requested shares; `auto` does not know its answer
    # yet and measures at its first step (where run W's searches ended).
    calibrate_at = (request.heads, request.ffn) if not request.auto else AUTO_STEPS

    scores = obs_scores(source.module, fit.batches, source.input_names, *upto, progress=progress,
                        loss=output_loss(source, fit), calibrate_at=calibrate_at)
    flops_before = encoder_flops(source.module)
    quiet: Progress = lambda m: None  # noqa: E731  (per-layer re-fit lines only for a fixed request)
    tried: list[dict[str, Any]] = []
    if not request.auto:
        try:
            _check_removes_something(scores, request)
        except ConversionError as exc:
            raise ConversionError(f"{exc}{_unused_distillation(distill_steps)}") from None
        progress(f"pruning {request.describe()}: slicing and re-fitting layer by layer")
        pruned, report, metrics = _candidate(source, scores, request.heads, request.ffn, fit, validation, progress)
        chosen = (request.heads, request.ffn)
    else:
        target = _margin_floor(options.floor, options.margin)
        # Each candidate is a full prune and re-fit (minutes on a real model): a count with an
        # ETA over the walk's longest length, ended early when it stops sooner.
        label, most = "pruning auto: candidate", _most_candidates(options)
        if most:
            progress(f"pruning auto: walking up by steps of 1/12 of the heads or 1/10 of the FFN neurons, at most "
                     f"{most} candidates, each pruned, re-fitted and scored on the validation texts")
            progress(count(label, 0, most))

        def build(shares: tuple[float, float]) -> Trial:
            candidate = _candidate(source, scores, *shares, fit, validation, quiet)
            return Trial(shares, candidate[2], encoder_flops(candidate[0].module), built=candidate)

        def said(trial: Trial) -> None:
            (heads, ffn), flops = trial.state, trial.cost
            removed = _removed_shares(trial.built[1]["layers"])
            tried.append({"heads": round(heads, 4), "ffn": round(ffn, 4), "removed": removed,
                          "flops": flops / flops_before, "metrics": trial.metrics, "kept_floor": trial.met})
            # The step asked for, and what it removes: shares round to whole heads and neurons
            # (8 heads: a 1/12 step removes one head, 0.125).
            progress(f"pruning auto: heads {heads:.2f} ffn {ffn:.2f} (removes {removed['heads']:.3f} of the "
                     f"heads, {removed['ffn']:.3f} of the neurons) -> {flops / flops_before:.3f}x FLOPs, "
                     + ", ".join(f"{k} {v:.4f}" for k, v in trial.metrics.items())
                     + ("" if trial.met else " (below the floor + margin)"))
            progress(count(label, min(len(tried), most), most))

        # The shared core's descent (converters/core/descent.py): the cheapest step in accuracy
        # lost per FLOP removed, while one keeps the floor.
        walked = descent((0.0, 0.0), flops_before, lambda state: _auto_moves(scores, state, options), build,
                         lambda metrics: not floor_failures(metrics, target), _graded_loss, said)
        best = (walked.best.state, walked.best.built) if walked.best else None
        if most and len(tried) < most:
            progress(stopped(label, len(tried), most))
        if not tried:  # not an accuracy matter: no step of the walk removes a unit
            raise ConversionError(
                f"prune=auto: nothing in this model can be pruned up to the profile's maximum shares (max_heads "
                f"{options.max_heads:g}, max_ffn {options.max_ffn:g}): every share up to them rounds to no head or "
                "neuron beyond the one each layer keeps; leave pruning off" + _unused_distillation(distill_steps))
        if best is None:
            first = tried[0]
            raise AccuracyError(
                f"prune=auto: no pruning keeps the pruning floor ({_floor_text(options)}) on the validation texts; "
                "tried " + "; ".join(_tried_text(t) for t in tried) + ". auto judges each step before any "
                "distillation: lower prune_floor, or ask for a step as fixed shares with distillation to recover "
                f"it (e.g. prune=heads={first['heads']:g},ffn={first['ffn']:g} with distill_steps=N)"
                + _unused_distillation(distill_steps))
        chosen, (pruned, report, metrics) = best
    rows = sum(len(feeds["attention_mask"]) for feeds in fit.batches)
    fitted = generalization(compute_metrics(pruned, fit, torch_runner(source, pruned.module),
                                            "pruned PyTorch on its fit texts"), metrics,
                            len(set(fit.texts)) if fit.texts else rows, rows, distilling=distill_steps > 0)
    if fitted["note"]:
        progress(f"pruning: note: {fitted['note']}")
    distillation = None
    if distill_steps > 0:
        progress(f"distilling the pruned model from the unpruned one: up to {distill_steps} steps on the fit texts")
        distillation = distill(pruned.module, source.module, source, fit, validation, DistillConfig(distill_steps),
                               progress)
        metrics = distillation["after"]
    flops_after = encoder_flops(pruned.module)
    removed = _removed_shares(report["layers"])
    progress(f"pruned heads {removed['heads']:.2f} ffn {removed['ffn']:.2f}"
             + (f" (asked {chosen[0]:g} / {chosen[1]:g}: shares round to whole heads and neurons, and every "
                "layer keeps at least one of each)"
                if abs(removed["heads"] - chosen[0]) > 0.05 or abs(removed["ffn"] - chosen[1]) > 0.05 else "")
             + f": {flops_after / flops_before:.3f}x FLOPs, "
             f"{report['parameters_after'] / report['parameters_before']:.3f}x parameters; PyTorch FP32 vs "
             "unpruned: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    return PrunedSource(pruned, {
        "request": request.describe(),
        "heads": round(chosen[0], 4),
        "ffn": round(chosen[1], 4),
        # What was removed: each layer keeps at least one head and one neuron, so a large request
        # removes less than it asks (heads 0.9 of 4 per layer removes 0.75).
        "removed": removed,
        "criterion": _criterion(scores),
        # None: not measured (that kind not pruned, or a layer of one unit, which it keeps).
        "layer_sensitivity": {kind: {str(layer): None if w is None else round(w, 6) for layer, w in weights.items()}
                              for kind, weights in scores.sensitivity.items()},
        "layers": report["layers"],
        "parameters_before": report["parameters_before"],
        "parameters_after": report["parameters_after"],
        "flops_before": flops_before,
        "flops_after": flops_after,
        "flops_sequence": FLOPS_SEQUENCE,
        "reconstruction": report["reconstruction"],
        "pytorch_metrics": metrics,
        # Before distillation: the re-fit's own texts against the validation texts.
        "generalization": fitted,
        "distillation": distillation,
        # auto's step was chosen on the texts this twin's metrics are measured on (like
        # distillation's early stopping): the figures lean optimistic; held-out texts do not.
        "chosen_on": (f"the validation texts (the last step of auto's walk, {len(tried)} candidates, that kept the "
                      "floor + margin there): this twin's validation metrics are not independent of that choice"
                      if request.auto else "the request (fixed shares): no texts chose them"),
        **({"search": tried} if request.auto else {}),
    })


def _criterion(scores: Scores) -> str:
    """The manifest's criterion: layer weighting named only for the kinds it was measured for."""
    measured = [kind for kind, weights in scores.sensitivity.items() if any(w is not None for w in weights.values())]
    weighting = (f"layers' {' and '.join(measured)} costs weighted by their measured output sensitivity"
                 if measured else "layers unweighted (no output sensitivity measured)")
    return (f"least-squares removal cost (structured Optimal Brain Surgeon, global greedy; {weighting}; fit texts, "
            "no labels)")
