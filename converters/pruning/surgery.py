"""Remove attention heads and FFN neurons from a PyTorch encoder, in place, by slicing its Linear
layers (converters/pruning/structure.py says which).

    keep = {0: Keep(heads=[0, 2, 5], neurons=[...]), 1: ...}   # per layer index, what stays
    report = prune(model, keep)

A removed head takes its head_size rows of Q, K and V (weights and biases) and the same columns
of the attention output projection; a removed neuron takes its row of the FFN input projection
and its column of the FFN output projection. Nothing else changes: the kept heads and neurons
compute exactly what they computed before, so a plan that keeps everything is the identity, and
the output of a pruned layer differs only by the removed parts' contributions (which
reconstruction can then re-fit). Every layer keeps at least one head and one neuron.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from converters._errors import ConversionError
from converters.pruning.structure import Layer, find_layers

__all__ = ["Keep", "prune"]


@dataclass(frozen=True)
class Keep:
    """What one layer keeps: head and neuron indices (of the unpruned layer), ascending."""

    heads: tuple[int, ...]
    neurons: tuple[int, ...]


def _linear(old: Any, rows: Any = None, cols: Any = None) -> Any:
    """A new torch.nn.Linear with the chosen output rows / input columns of `old`."""
    import torch

    weight = old.weight.detach()
    bias = old.bias.detach() if old.bias is not None else None
    if rows is not None:
        weight = weight[rows]
        bias = bias[rows] if bias is not None else None
    if cols is not None:
        weight = weight[:, cols]
    new = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None,
                          dtype=weight.dtype, device=weight.device)
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias is not None:
            new.bias.copy_(bias)
    return new


def _replace(parent_of: dict[int, tuple[Any, str]], old: Any, new: Any) -> None:
    parent, name = parent_of[id(old)]
    setattr(parent, name, new)


def _check(layer: Layer, keep: Keep) -> None:
    problems = []
    for kind, kept, total in (("heads", keep.heads, layer.heads), ("neurons", keep.neurons, layer.neurons)):
        if not kept:
            problems.append(f"keeps no {kind} (at least one must stay)")
        if list(kept) != sorted(set(kept)):
            problems.append(f"{kind} {list(kept)[:8]}... are not ascending and unique")
        if kept and not 0 <= min(kept) <= max(kept) < total:
            problems.append(f"{kind} indices must be in 0..{total - 1}")
    if problems:
        raise ConversionError(f"pruning plan for layer {layer.index}: " + "; ".join(problems))


def prune(model: Any, keep: dict[int, Keep]) -> dict[str, Any]:
    """Slice `model`'s layers to what `keep` says (layers not named keep everything). Returns
    what changed: per layer the heads and neurons kept and the parameter count before/after."""
    import torch

    layers = find_layers(model)
    parent_of = {id(child): (parent, name) for parent in model.modules() for name, child in parent.named_children()}
    before = sum(p.numel() for p in model.parameters())
    report = []
    for layer in layers:
        plan = keep.get(layer.index, Keep(tuple(range(layer.heads)), tuple(range(layer.neurons))))
        _check(layer, plan)
        size = layer.head_size
        head_rows = torch.tensor([h * size + i for h in plan.heads for i in range(size)], dtype=torch.long)
        neurons = torch.tensor(plan.neurons, dtype=torch.long)
        for old in (layer.query, layer.key, layer.value):
            _replace(parent_of, old, _linear(old, rows=head_rows))
        _replace(parent_of, layer.attention_out, _linear(layer.attention_out, cols=head_rows))
        _replace(parent_of, layer.ffn_in, _linear(layer.ffn_in, rows=neurons))
        _replace(parent_of, layer.ffn_out, _linear(layer.ffn_out, cols=neurons))
        attention = layer.attention
        for attribute in ("num_attention_heads", "n_heads"):
            if hasattr(attention, attribute):
                setattr(attention, attribute, len(plan.heads))
        if hasattr(attention, "all_head_size"):
            attention.all_head_size = len(plan.heads) * size
        report.append({"layer": layer.index, "heads": len(plan.heads), "heads_before": layer.heads,
                       "heads_kept": list(plan.heads),
                       "neurons": len(plan.neurons), "neurons_before": layer.neurons,
                       "neurons_kept": list(plan.neurons)})
    after = sum(p.numel() for p in model.parameters())
    return {"layers": report, "parameters_before": before, "parameters_after": after}
