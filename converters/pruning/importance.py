"""Label-free importance of attention heads and FFN neurons, and a global pruning plan.

Scores come from activations on calibration texts, never from labels or gradients (the gradient
of a loss at its minimum on the unpruned model, such as 1 - cosine to the teacher, is zero there:
Taylor and Fisher scores vanish). Per layer, with real tokens only:

- head h: the mean norm of its contribution to the attention output projection,
  ||ctx_h W_out[:, h]^T||, relative to the mean norm of the layer's input hidden state;
- neuron j: mean |a_j| x ||W_ffn_out[:, j]||, its contribution to the FFN output, relative to the
  mean norm of the FFN's input.

Relative to the residual stream they write into, so that heads (and neurons) of different layers
rank on one scale: the plan removes the globally lowest, and layers may end with different counts.
A head or neuron whose contribution is exactly zero scores zero and goes first.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from converters._errors import ConversionError
from converters.pruning.structure import find_layers
from converters.pruning.surgery import Keep

__all__ = ["Scores", "magnitude", "plan", "score"]


@dataclass
class Scores:
    heads: dict[int, np.ndarray] = field(default_factory=dict)  # layer -> [heads]
    neurons: dict[int, np.ndarray] = field(default_factory=dict)  # layer -> [neurons]
    # obs_scores: kind ("heads" / "neurons") -> layer -> the measured weight its costs got, None
    # where nothing was measured (no loss given, that kind not pruned, a layer of one unit)
    sensitivity: dict[str, dict[int, float | None]] = field(default_factory=dict)


def score(model, batches: list[dict[str, np.ndarray]], input_names: list[str]) -> Scores:
    """Importance of every head and neuron of `model` (a torch module called with the inputs
    `input_names` positionally, like SourceModel.module) on `batches` (int64 feeds with an
    attention_mask)."""
    import torch

    layers = find_layers(model)
    sums: dict[tuple[str, int], torch.Tensor] = {}
    tokens = {"count": 0}
    mask_now: dict[str, torch.Tensor] = {}

    def real(x: torch.Tensor) -> torch.Tensor:
        return x[mask_now["mask"]]  # [tokens, features]

    def add(key: tuple[str, int], value: torch.Tensor) -> None:
        sums[key] = sums.get(key, 0.0) + value.double()

    hooks = []
    for layer in layers:
        i, size = layer.index, layer.head_size

        def heads(module, args, i=i, size=size, out=layer.attention_out):
            ctx = real(args[0])  # [tokens, heads x size]
            w = out.weight.detach()  # [hidden, heads x size]
            count = ctx.shape[1] // size
            parts = [ctx[:, h * size:(h + 1) * size] @ w[:, h * size:(h + 1) * size].T for h in range(count)]
            add(("heads", i), torch.stack([p.norm(dim=1).sum() for p in parts]))

        def neurons(module, args, i=i):
            a = real(args[0]).abs().sum(0)  # [neurons]
            add(("neurons", i), a * module.weight.detach().norm(dim=0))

        def stream(module, args, key):
            add(key, real(args[0]).norm(dim=1).sum())

        hooks.append(layer.attention_out.register_forward_pre_hook(heads))
        hooks.append(layer.ffn_out.register_forward_pre_hook(neurons))
        hooks.append(layer.query.register_forward_pre_hook(lambda m, a, i=i: stream(m, a, ("stream", i))))
        hooks.append(layer.ffn_in.register_forward_pre_hook(lambda m, a, i=i: stream(m, a, ("ffn_stream", i))))
    try:
        with torch.no_grad():
            for feeds in batches:
                mask_now["mask"] = torch.from_numpy(feeds["attention_mask"]).bool()
                tokens["count"] += int(mask_now["mask"].sum())
                model(*[torch.from_numpy(feeds[name]) for name in input_names])
    finally:
        for hook in hooks:
            hook.remove()
    if not tokens["count"]:
        raise ConversionError("pruning importance needs calibration texts with at least one token")
    result = Scores()
    for layer in layers:
        i = layer.index
        result.heads[i] = (sums[("heads", i)] / sums[("stream", i)]).numpy()
        result.neurons[i] = (sums[("neurons", i)] / sums[("ffn_stream", i)]).numpy()
    return result


def magnitude(model) -> Scores:
    """The baseline (what torch-pruning does by default): the L2 norm of each head's or neuron's
    weights across the layers it spans (Q, K, V rows and output-projection columns; FFN input
    row and output column), relative to the layer's mean. No data."""
    layers = find_layers(model)
    result = Scores()
    for layer in layers:
        size = layer.head_size
        rows = [m.weight.detach().double() for m in (layer.query, layer.key, layer.value)]
        out = layer.attention_out.weight.detach().double()
        heads = np.array([float(sum((r[h * size:(h + 1) * size] ** 2).sum() for r in rows)
                                + (out[:, h * size:(h + 1) * size] ** 2).sum()) ** 0.5 for h in range(layer.heads)])
        neurons = ((layer.ffn_in.weight.detach().double() ** 2).sum(1)
                   + (layer.ffn_out.weight.detach().double() ** 2).sum(0)).sqrt().numpy()
        result.heads[layer.index] = heads / heads.mean()
        result.neurons[layer.index] = neurons / neurons.mean()
    return result


def _lowest(scores: dict[int, np.ndarray], count: int) -> dict[int, set[int]]:
    """The `count` globally lowest entries, each layer keeping at least one."""
    order = sorted((float(v), layer, j) for layer, values in scores.items() for j, v in enumerate(values))
    removed: dict[int, set[int]] = {layer: set() for layer in scores}
    left = {layer: len(values) for layer, values in scores.items()}
    for value, layer, j in order:
        if count <= 0:
            break
        if left[layer] > 1:
            if not np.isfinite(value):  # obs_scores orders units only up to the share it was asked for
                raise ConversionError("these importance scores do not rank enough units for this share: "
                                      "score with a larger share (obs_scores' heads= / ffn=)")
            removed[layer].add(j)
            left[layer] -= 1
            count -= 1
    return removed


def plan(scores: Scores, heads: float, ffn: float) -> dict[int, Keep]:
    """Keep per layer after removing the `heads` share of all heads and the `ffn` share of all
    FFN neurons, lowest score first across layers (at least one of each per layer)."""
    for name, ratio in (("heads", heads), ("ffn", ffn)):
        if not 0.0 <= ratio < 1.0:
            raise ConversionError(f"pruning ratio {name}={ratio} must be in [0, 1)")
    total_heads = sum(len(v) for v in scores.heads.values())
    total_neurons = sum(len(v) for v in scores.neurons.values())
    gone_heads = _lowest(scores.heads, round(heads * total_heads))
    gone_neurons = _lowest(scores.neurons, round(ffn * total_neurons))
    return {layer: Keep(tuple(h for h in range(len(scores.heads[layer])) if h not in gone_heads[layer]),
                        tuple(n for n in range(len(scores.neurons[layer])) if n not in gone_neurons[layer]))
            for layer in scores.heads}
