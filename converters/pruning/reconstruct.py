"""Recovery without retraining: after heads or neurons are removed, re-fit the projections that
read them, layer by layer, so that the pruned model's residual stream follows the unpruned one.

Each transformer layer writes into its residual stream twice (BERT's post-norm layout; DistilBERT
is the same):

    h = LN1(attention_out(ctx) + x)          out = LN2(ffn_out(f) + h)

Pruning a layer removes columns of ctx (heads) and f (neurons); the layers before it have already
changed x and h. So each projection is re-fitted, with its bias, on the *pruned* model's own
inputs (ctx_p, x_p) against the *unpruned* model's pre-norm sum:

    min over W', b'  sum over tokens || ctx_p W'^T + b' + x_p - (attention_out(ctx) + x) ||^2

a least-squares problem (G = [ctx_p 1]^T [ctx_p 1]) solved in order: layer 0's attention, layer 0's FFN (on inputs that already see the re-fitted attention),
layer 1, ... Errors then do not compound: each fit also absorbs the drift the earlier layers left
in the residual stream. This is the sequential, error-correcting form of the layer-wise re-fit
of Kwon et al. 2022 ("A Fast Post-Training Pruning Framework for Transformers"): no labels, no
gradients, one layer's forward pass per projection (each layer runs from the stream the re-fitted
layers before it produced, kept per batch: _LayerInputs). Measured against re-fitting each layer
on the unpruned inputs alone in benchmarks/RESULTS.md (run P).

The fit is regularized toward the weights the slicing kept, not toward zero:

    min  sum over tokens || ... ||^2  +  lambda || W' - W_kept ||^2,   lambda = `damp` x mean diag(G)

A few hundred calibration texts (a few thousand tokens) against up to 1,537 unknowns per output
over-fit: at heads 0.33 / FFN 0.5 the re-fitted MiniLM scored cosine 0.97 on its own fit texts
and 0.83 on the validation texts. Pulling toward the trained weights (what the model knew before
anything was removed) rather than toward zero keeps what the fit texts do not show: validation
0.85 with the same plan (RESULTS.md run W, where DAMP was chosen on the validation split).

The two projections are pulled with different strengths. At the FFN's pull, the attention
output's re-fit learned the fit texts alone (MiniLM at heads 0.33 / FFN 0.5: against keeping its
sliced weights, fit cosine 0.943 -> 0.963, validation 0.874 -> 0.873): the removed heads' outputs
depend on whole sequences, which a few hundred texts sample far more thinly than the FFN's
per-token function. Ten times the pull on the attention output (ATTENTION_DAMP) keeps what
generalizes: validation 0.877 (RESULTS.md run AQ).

The projections that *read* the residual stream are re-fitted too, before the ones that write it:
a kept head's Q/K/V rows and a kept neuron's FFN-input row compute, from the pruned model's drifted
stream (x_p, h_p), what they computed from the unpruned model's (x, h):

    min over W', b'  sum over tokens || x_p W'^T + b' - (x W_kept^T + b_kept) ||^2  +  lambda || W' - W_kept ||^2

so the attention patterns and the neurons' pre-activations follow the unpruned ones and the output
re-fits have less to make up (order per layer: Q/K/V, attention output, FFN input, FFN output).
MiniLM at heads 0.33 / FFN 0.5: validation cosine 0.8771 -> 0.8820 (RESULTS.md run AW, where
INPUT_DAMP was chosen); None turns it off (the re-fit before run AW).

The report gives, per layer and projection, the relative error it targets
(sum ||pruned pre-norm - unpruned pre-norm||^2 / sum ||unpruned pre-norm - residual||^2) with the
sliced weights and after the re-fit.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from converters.pruning.structure import find_layers
from converters.pruning.surgery import Keep, prune

__all__ = ["ATTENTION_DAMP", "DAMP", "INPUT_DAMP", "prune_and_reconstruct", "tap_projections"]

# Strength of the pull toward the kept weights, relative to the Gram matrix's mean diagonal (see the
# module docstring). Chosen on the validation split (RESULTS.md run W, bench_pruning_refit.py):
# MiniLM at heads 0.33 / FFN 0.5, validation cosine 0.8279 with the former ridge toward zero at
# 0.01; toward the kept weights 0.8492 at 0.1, 0.8523 at 0.3, 0.8464 at 1.0 (0.08 / 0.1: 0.9759;
# 0.9819, 0.9822, 0.9811). With layer sensitivities (obs.py) 0.3 is best at both shares too.
DAMP = 0.3
# The same for the attention-output projection (see the module docstring), chosen on the validation
# split with DAMP for the FFN (RESULTS.md run AQ, bench_pruning_refit.py --attention-damps).
ATTENTION_DAMP = 3.0
# The same for the Q/K/V and FFN-input projections (see the module docstring; RESULTS.md run AW).
INPUT_DAMP = 0.3


class _Stop(Exception):
    """Raised by a hook once the layer being fitted has been seen: the rest of the forward pass
    is not needed."""


def _forward(model: Any, feeds: dict[str, np.ndarray], input_names: list[str]) -> None:
    import torch

    with torch.no_grad():
        try:
            model(*[torch.from_numpy(feeds[name]) for name in input_names])
        except _Stop:
            pass


def tap_projections(model: Any, batches: list[dict[str, np.ndarray]], input_names: list[str],
                    visit: Callable[[str, int, Any, Any], None],
                    read: Callable[[str, int, Any], None] | None = None) -> None:
    """Run `model` on `batches` and call visit(kind, layer index, inputs, pre-norm sum) at every
    layer's attention-output ("attention") and FFN-output ("ffn") projection, with the real
    tokens' float64 tensors: the projection's inputs [tokens, columns] and its output plus the
    residual it is added to [tokens, hidden]. `read(kind, layer index, stream)`, if given, is
    called with the residual stream [tokens, hidden] where Q/K/V ("qkv") and the FFN input
    ("ffn_in") read it."""
    import torch

    now: dict[str, Any] = {}

    def keep_residual(slot):
        kind = "qkv" if slot == "x" else "ffn_in"

        def hook(module, args):
            now[slot] = args[0][now["mask"]].double()
            if read is not None:
                read(kind, now["layer"][id(module)], now[slot])
        return hook

    def record(kind, index, slot):
        def hook(module, args, output):
            visit(kind, index, args[0][now["mask"]].double(), output[now["mask"]].double() + now[slot])
        return hook

    hooks = []
    now["layer"] = {}
    for layer in find_layers(model):
        now["layer"][id(layer.query)] = now["layer"][id(layer.ffn_in)] = layer.index
        hooks.append(layer.query.register_forward_pre_hook(keep_residual("x")))
        hooks.append(layer.ffn_in.register_forward_pre_hook(keep_residual("h")))
        hooks.append(layer.attention_out.register_forward_hook(record("attention", layer.index, "x")))
        hooks.append(layer.ffn_out.register_forward_hook(record("ffn", layer.index, "h")))
    try:
        for feeds in batches:
            now["mask"] = torch.from_numpy(feeds["attention_mask"]).bool()
            _forward(model, feeds, input_names)
    finally:
        for hook in hooks:
            hook.remove()


def _targets(model: Any, batches: list[dict[str, np.ndarray]], input_names: list[str],
             inputs: bool = False) -> dict:
    """The unpruned model's pre-norm sums per (kind, layer): a list over batches of
    [real tokens, hidden] arrays (float64). With `inputs`, also its residual stream where each
    layer's Q/K/V ("qkv") and FFN input ("ffn_in") projections read it (float32, to halve the
    memory: the targets made from them are computed in float64)."""
    found: dict[tuple[str, int], list[np.ndarray]] = {}

    def read(kind, index, stream):
        found.setdefault((kind, index), []).append(stream.float().numpy())

    tap_projections(model, batches, input_names,
                    lambda kind, index, _inputs, total: found.setdefault((kind, index), []).append(total.numpy()),
                    read=read if inputs else None)
    return found


def _input_systems(inputs: _LayerInputs, layer: Any, kind: str, teacher_inputs: list[np.ndarray],
                   sliced: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Normal equations for the projections reading layer `kind` ("qkv": Q, K, V; "ffn_in": the
    FFN input) of the pruned model: G = [inputs 1]^T [inputs 1] on its own stream,
    C = [inputs 1]^T Y with Y = the teacher's stream through `sliced` (their current weights as
    _weights lays them out, all outputs side by side)."""
    return _normal_equations(inputs, layer, teacher_inputs, layer.query if kind == "qkv" else layer.ffn_in,
                             lambda teacher, _residual: teacher.astype(np.float64) @ sliced[:-1] + sliced[-1])


def _weights(projections: list[Any]) -> np.ndarray:
    """[W^T; b] of `projections` side by side (the layout _solve works in)."""
    blocks = []
    for p in projections:
        weight = p.weight.detach().double().numpy()
        bias = p.bias.detach().double().numpy() if p.bias is not None else np.zeros(weight.shape[0])
        blocks.append(np.concatenate([weight.T, bias[None, :]], axis=0))
    return np.concatenate(blocks, axis=1)


def _assign(projections: list[Any], solution: np.ndarray) -> None:
    """Write _solve's [W'^T; b'] back into `projections` (side by side, in order)."""
    import torch

    start = 0
    with torch.no_grad():
        for p in projections:
            block = solution[:, start:start + p.out_features]
            start += p.out_features
            p.weight.copy_(torch.from_numpy(block[:-1].T).to(p.weight.dtype))
            if p.bias is not None:
                p.bias.copy_(torch.from_numpy(block[-1]).to(p.bias.dtype))


def _systems(inputs: _LayerInputs, layer: Any, kind: str,
             targets: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, float]:
    """Normal equations for one projection of the pruned model: (G, C, sum ||target||^2) with
    G = [inputs 1]^T [inputs 1] and C = [inputs 1]^T (target - residual)."""
    residual_module, projection = ((layer.query, layer.attention_out) if kind == "attention"
                                   else (layer.ffn_in, layer.ffn_out))
    return _normal_equations(inputs, layer, targets, projection,
                             lambda target, residual: target - residual, residual_at=residual_module)


class _LayerInputs:
    """What the pruned model passes to each transformer layer, per batch: the residual stream
    entering the layer being re-fitted, and the other arguments (masks, ...) exactly as the model
    computed them. A re-fit then runs only the layer it fits, from its input, not the whole model
    up to it (which made the re-fit quadratic in the number of layers); `advance` carries the
    stream one layer on once that layer's re-fits are done. The layer computes what it computes
    inside the whole forward pass, so the re-fit gives the same bits."""

    def __init__(self, model: Any, layers: list[Any], batches: list[dict[str, np.ndarray]],
                 input_names: list[str]):
        import torch

        self.layers = layers
        self.masks = [torch.from_numpy(feeds["attention_mask"]).bool() for feeds in batches]
        self.calls: list[list[tuple[tuple, dict]]] = [[] for _ in layers]  # per layer, per batch
        self.stream: list[Any] = []  # per batch: the input of the layer being re-fitted

        def capture(index):
            def hook(module, args, kwargs):
                if args:
                    stream, args = args[0], (None, *args[1:])  # None: where the stream goes
                else:
                    stream, kwargs = kwargs["hidden_states"], {**kwargs, "hidden_states": None}
                if index == 0:
                    self.stream.append(stream)
                self.calls[index].append((args, kwargs))
                if index == len(layers) - 1:
                    raise _Stop
            return hook

        hooks = [layer.block.register_forward_pre_hook(capture(layer.index), with_kwargs=True) for layer in layers]
        try:
            for feeds in batches:
                _forward(model, feeds, input_names)
        finally:
            for hook in hooks:
                hook.remove()

    def forward(self, index: int, batch: int) -> Any:
        """Layer `index` on batch `batch`'s stream (which must have reached it); its output."""
        import torch

        args, kwargs = self.calls[index][batch]
        if args:
            args = (self.stream[batch], *args[1:])
        else:
            kwargs = {**kwargs, "hidden_states": self.stream[batch]}
        with torch.no_grad():
            output = self.layers[index].block(*args, **kwargs)
        return output[0] if isinstance(output, tuple) else output

    def advance(self, index: int) -> None:
        """Move every batch's stream through layer `index` (its re-fits done) to the next layer."""
        self.stream = [self.forward(index, batch) for batch in range(len(self.stream))]


def _normal_equations(inputs: _LayerInputs, layer: Any, items: list[np.ndarray], reader: Any,
                      want: Callable[[np.ndarray, Any], np.ndarray],
                      residual_at: Any = None) -> tuple[np.ndarray, np.ndarray, float]:
    """(G, C, sum ||Y||^2) over the batches, G = [X 1]^T [X 1] and C = [X 1]^T Y, where X is what
    `reader` (a projection of `layer`) receives (real tokens only) and Y = want(the batch's item,
    the stream entering `residual_at` or None). Only `layer` runs, and only up to `reader`."""
    import torch

    now: dict[str, Any] = {}
    sums: dict[str, Any] = {}

    def keep_residual(module, args):
        now["residual"] = args[0][now["mask"]].double().numpy()

    def collect(module, args):
        x = args[0][now["mask"]].double().numpy()
        x = np.concatenate([x, np.ones((x.shape[0], 1))], axis=1)
        y = want(now["item"], now.get("residual"))
        sums["gram"] = sums.get("gram", 0.0) + x.T @ x
        sums["cross"] = sums.get("cross", 0.0) + x.T @ y
        sums["norm"] = sums.get("norm", 0.0) + float((y ** 2).sum())
        raise _Stop

    hooks = [] if residual_at is None else [residual_at.register_forward_pre_hook(keep_residual)]
    hooks.append(reader.register_forward_pre_hook(collect))
    try:
        for batch, item in enumerate(items):
            now["mask"] = inputs.masks[batch]
            now["item"] = item
            try:
                inputs.forward(layer.index, batch)
            except _Stop:
                pass
    finally:
        for hook in hooks:
            hook.remove()
    return sums["gram"], sums["cross"], sums["norm"]


def _solve(gram: np.ndarray, cross: np.ndarray, damp: float, kept: np.ndarray | None) -> np.ndarray:
    """[W'^T; b'] minimising ||[X 1] M - Y||^2 + lambda ||W' - W_kept||^2 (`kept` = [W_kept^T; b];
    None pulls toward zero, the former ridge); the bias row is not pulled."""
    ridge = gram.copy()
    features = gram.shape[0] - 1
    pull = damp * max(float(np.mean(np.diag(gram)[:features])), 1e-12)
    ridge[np.arange(features), np.arange(features)] += pull
    rhs = cross.copy()
    if kept is not None:
        rhs[:features] += pull * kept[:features]
    return np.linalg.solve(ridge, rhs)


def _error(gram: np.ndarray, cross: np.ndarray, norm: float, solution: np.ndarray) -> float:
    """sum ||[X 1] M - Y||^2 / sum ||Y||^2 from the normal equations."""
    # trace(M^T G M) as one GEMM and a sum: numpy's three-operand einsum loops without BLAS
    # (a third of the whole re-fit's time on MiniLM)
    residual = norm - 2.0 * float(np.sum(solution * cross)) + float(np.sum((gram @ solution) * solution))
    return max(residual, 0.0) / max(norm, 1e-30)


def prune_and_reconstruct(model: Any, keep: dict[int, Keep], batches: list[dict[str, np.ndarray]],
                          input_names: list[str], damp: float = DAMP, progress=None,
                          toward_kept: bool = True, attention_damp: float | None = ATTENTION_DAMP,
                          teacher: Any = None, input_damp: float | None = INPUT_DAMP) -> dict[str, Any]:
    """prune(model, keep), then re-fit, layer by layer and in order, the Q/K/V, attention-output,
    FFN-input and FFN-output projections (weights and bias) on the pruned model's own inputs: the
    output projections against the unpruned model's pre-norm residual sums, the input ones against
    what their kept units computed from the unpruned model's stream, on `batches` (see the module
    docstring; `toward_kept=False`: the output projections' former ridge toward zero, for
    comparisons). `damp` pulls the FFN output, `attention_damp` the attention output (None: `damp`
    for both, as before run AQ), `input_damp` the Q/K/V and FFN-input projections (None: they keep
    their sliced weights, as before run AW). `teacher`: the model whose layers are the targets
    (default: `model` before this pruning; an already pruned model pruned again in steps keeps the
    original as its teacher, and its kept units' current weights read the teacher's stream).
    Returns prune's report with, per layer, the relative error each re-fit targets before and
    after it."""
    targets = _targets(model if teacher is None else teacher, batches, input_names, inputs=input_damp is not None)
    report = prune(model, keep)
    layers = find_layers(model)
    inputs = _LayerInputs(model, layers, batches, input_names)
    if progress is not None:  # the count's clock starts here, not after the first layer's seconds
        progress(f"re-fitted layer 0/{len(layers)}")
    for layer, entry in zip(layers, report["layers"]):
        errors = {}
        for kind in ("qkv", "attention", "ffn_in", "ffn"):
            if kind in ("qkv", "ffn_in"):
                if input_damp is None:
                    continue
                projections = [layer.query, layer.key, layer.value] if kind == "qkv" else [layer.ffn_in]
                sliced = _weights(projections)
                gram, cross, norm = _input_systems(inputs, layer, kind, targets[(kind, layer.index)], sliced)
                pull, toward = input_damp, True
            else:
                projections = [layer.attention_out if kind == "attention" else layer.ffn_out]
                sliced = _weights(projections)
                gram, cross, norm = _systems(inputs, layer, kind, targets[(kind, layer.index)])
                pull = attention_damp if kind == "attention" and attention_damp is not None else damp
                toward = toward_kept
            solution = _solve(gram, cross, pull, sliced if toward else None)
            errors[f"{kind}_error"] = [_error(gram, cross, norm, sliced), _error(gram, cross, norm, solution)]
            _assign(projections, solution)
        entry["reconstruction"] = errors
        if layer.index + 1 < len(layers):
            inputs.advance(layer.index)
        if progress is not None:
            progress(f"re-fitted layer {layer.index + 1}/{len(layers)}")
    report["reconstruction"] = {
        "method": "sequential least squares on the pruned model's inputs, to the unpruned pre-norm sums"
                  + (" and the kept units' outputs on the unpruned stream" if input_damp is not None else "") + ", "
                  + ("regularized toward the kept weights" if toward_kept else "ridge toward zero"),
        "damp": damp, "attention_damp": damp if attention_damp is None else attention_damp,
        "input_damp": input_damp,
        "tokens": int(sum(int(f["attention_mask"].sum()) for f in batches)),
    }
    return report
