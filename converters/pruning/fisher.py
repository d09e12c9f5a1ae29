"""A gradient criterion without labels: Fisher information of head and neuron masks under a loss
that is *not* at its minimum on the unpruned model (Kwon et al. 2022 use the task loss and labels).

Every head's context and every FFN neuron's activation is multiplied by a mask variable m = 1; the
score of a unit is the sum over fit batches of (dL/dm)^2, the empirical Fisher information of its
mask: how much the loss would move if the unit were scaled away. L must have a gradient at the
unpruned model, so not 1 - cosine or MSE to the teacher (both at their minimum, zero there), but:

- embeddings: in-batch contrastive (InfoNCE) against the unpruned model's own pooled embeddings,
  temperature 0.05: each text's embedding must pick its own teacher embedding out of the batch's.
  At m = 1 it is already the best match, but the loss (a softmax over the batch) is still
  positive and its gradient pulls it further apart from the others;
- classifiers: cross-entropy against the unpruned model's predicted labels (pseudo-labels).

One loss over all layers, so scores of different layers share a scale, as `importance.plan`
needs. benchmarks/bench_pruning.py compares it with the activation and magnitude criteria.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from converters._errors import ConversionError
from converters.pruning.importance import Scores
from converters.pruning.structure import find_layers

__all__ = ["TEMPERATURE", "fisher"]

TEMPERATURE = 0.05  # InfoNCE's: sentence-embedding training uses 0.05 (SimCSE) to 0.02


def fisher(model: Any, batches: list[dict[str, np.ndarray]], input_names: list[str],
           classification: bool = False) -> Scores:
    """Mask Fisher scores of every head and neuron of `model` on `batches` (see the module
    docstring; `classification`: the model outputs class logits). The model's weights are not
    changed; their gradients are not kept."""
    import torch

    layers = find_layers(model)
    head_masks = {layer.index: torch.ones(layer.heads, dtype=torch.float32, requires_grad=True) for layer in layers}
    neuron_masks = {layer.index: torch.ones(layer.neurons, dtype=torch.float32, requires_grad=True) for layer in layers}
    totals = {("heads", i): torch.zeros(len(m), dtype=torch.float64) for i, m in head_masks.items()}
    totals |= {("neurons", i): torch.zeros(len(m), dtype=torch.float64) for i, m in neuron_masks.items()}

    def scale_heads(module, args, mask, size):
        ctx = args[0]
        shape = ctx.shape
        return (ctx.reshape(*shape[:-1], -1, size) * mask[:, None]).reshape(shape), *args[1:]

    def scale_neurons(module, args, mask):
        return args[0] * mask, *args[1:]

    hooks = []
    for layer in layers:
        hooks.append(layer.attention_out.register_forward_pre_hook(
            lambda m, a, mask=head_masks[layer.index], size=layer.head_size: scale_heads(m, a, mask, size)))
        hooks.append(layer.ffn_out.register_forward_pre_hook(
            lambda m, a, mask=neuron_masks[layer.index]: scale_neurons(m, a, mask)))
    was_training = model.training
    model.eval()
    frozen = [p for p in model.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    try:
        for feeds in batches:
            inputs = [torch.from_numpy(feeds[name]) for name in input_names]
            token_mask = torch.from_numpy(feeds["attention_mask"]).to(torch.float32)
            with torch.no_grad():
                for mask in (*head_masks.values(), *neuron_masks.values()):
                    mask.fill_(1.0)
                target = model(*inputs)
            output = model(*inputs)
            loss = _loss(output, target.detach(), token_mask, classification)
            if loss is None:
                continue
            grads = torch.autograd.grad(loss, [*head_masks.values(), *neuron_masks.values()])
            for i, grad in zip(head_masks, grads[:len(head_masks)]):
                totals[("heads", i)] += grad.double() ** 2
            for i, grad in zip(neuron_masks, grads[len(head_masks):]):
                totals[("neurons", i)] += grad.double() ** 2
    finally:
        for hook in hooks:
            hook.remove()
        for p in frozen:
            p.requires_grad_(True)
        model.train(was_training)
    if not any(float(t.sum()) > 0 for t in totals.values()):
        raise ConversionError("the Fisher criterion needs fit batches of at least two texts each")
    result = Scores()
    for layer in layers:
        result.heads[layer.index] = totals[("heads", layer.index)].numpy()
        result.neurons[layer.index] = totals[("neurons", layer.index)].numpy()
    return result


def _loss(output, target, token_mask, classification: bool):
    """Cross-entropy against the teacher's labels for logits; else InfoNCE of the pooled
    embeddings (token vectors mean-pooled) against the teacher's. None for a batch of one text."""
    import torch

    if len(output) < 2:
        return None
    if classification:
        return torch.nn.functional.cross_entropy(output, target.argmax(-1))
    if output.dim() == 3:  # token vectors [batch, tokens, hidden]
        weights = token_mask.unsqueeze(-1)
        output = (output * weights).sum(1) / weights.sum(1)
        target = (target * weights).sum(1) / weights.sum(1)
    student = torch.nn.functional.normalize(output, dim=-1)
    teacher = torch.nn.functional.normalize(target, dim=-1)
    return torch.nn.functional.cross_entropy(student @ teacher.T / TEMPERATURE, torch.arange(len(output)))
