"""Recovery without retraining: after heads or neurons are removed, re-fit the projections that
read them so each layer's output stays what it was.

For a projection y = x W^T + b whose input columns R are removed and K kept, the least-squares
fit of the remaining columns to the unpruned output on the calibration tokens is

    W'_K = W_K + W_R G_RK G_KK^-1,        G = sum over tokens of x^T x (the unpruned inputs)

(the compensation step of optimal-brain-surgeon style pruning; Kwon et al. 2022, "A Fast
Post-Training Pruning Framework for Transformers", re-fit layer outputs the same way, in
minutes and without labels). It is applied to the attention output projection (heads removed)
and the FFN output projection (neurons removed), each against its own layer's unpruned inputs.
G_KK is damped by `damp` x its mean diagonal, like GPTQ's Hessians. The report gives, per
layer, the output error it targets before and after: sum over tokens of ||x_K W'_K^T - x W^T||^2
relative to sum ||x W^T||^2.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from converters.pruning.structure import find_layers
from converters.pruning.surgery import Keep, prune

__all__ = ["DAMP", "prune_and_reconstruct"]

DAMP = 0.01


def _grams(model: Any, batches: list[dict[str, np.ndarray]], input_names: list[str]) -> dict:
    """Per layer: the unpruned Gram matrices of the attention-output and FFN-output inputs."""
    import torch

    grams: dict[tuple[str, int], torch.Tensor] = {}
    mask_now: dict[str, torch.Tensor] = {}

    def collect(key):
        def hook(module, args):
            x = args[0][mask_now["mask"]].double()
            grams[key] = grams.get(key, 0.0) + x.T @ x
        return hook

    hooks = []
    for layer in find_layers(model):
        hooks.append(layer.attention_out.register_forward_pre_hook(collect(("heads", layer.index))))
        hooks.append(layer.ffn_out.register_forward_pre_hook(collect(("neurons", layer.index))))
    try:
        with torch.no_grad():
            for feeds in batches:
                mask_now["mask"] = torch.from_numpy(feeds["attention_mask"]).bool()
                model(*[torch.from_numpy(feeds[name]) for name in input_names])
    finally:
        for hook in hooks:
            hook.remove()
    return {key: value.numpy() for key, value in grams.items()}


def _refit(weight: np.ndarray, gram: np.ndarray, kept: np.ndarray, damp: float) -> tuple[np.ndarray, float, float]:
    """(W'_K, relative error with W_K as it was, relative error after the re-fit)."""
    removed = np.setdiff1d(np.arange(weight.shape[1]), kept)
    w = weight.astype(np.float64)
    g_kk = gram[np.ix_(kept, kept)].copy()
    g_kk[np.diag_indices(len(kept))] += damp * max(float(np.mean(np.diag(g_kk))), 1e-12)
    refit = w[:, kept]
    if len(removed):
        refit = refit + np.linalg.solve(g_kk, gram[np.ix_(kept, removed)] @ w[:, removed].T).T
    total = float(np.einsum("ij,jk,ik->", w, gram, w))

    def error(w_kept: np.ndarray) -> float:
        diff = -w.copy()
        diff[:, kept] += w_kept
        return float(np.einsum("ij,jk,ik->", diff, gram, diff)) / max(total, 1e-30)

    return refit, error(w[:, kept]), error(refit)


def prune_and_reconstruct(model: Any, keep: dict[int, Keep], batches: list[dict[str, np.ndarray]],
                          input_names: list[str], damp: float = DAMP) -> dict[str, Any]:
    """prune(model, keep), then re-fit every layer's attention-output and FFN-output projection
    to the unpruned layer's output on `batches`. Returns prune's report with, per layer, the
    relative output error before and after the re-fit."""
    import torch

    grams = _grams(model, batches, input_names)
    layers = find_layers(model)
    full = {layer.index: (layer.head_size, layer.attention_out.weight.detach().numpy().copy(),
                          layer.ffn_out.weight.detach().numpy().copy()) for layer in layers}
    report = prune(model, keep)
    for layer, entry in zip(find_layers(model), report["layers"]):
        size, attention_w, ffn_w = full[layer.index]
        heads = np.array([h * size + i for h in entry["heads"] for i in range(size)])
        neurons = np.array(entry["neurons_kept"])
        attention, a_before, a_after = _refit(attention_w, grams[("heads", layer.index)], heads, damp)
        ffn, f_before, f_after = _refit(ffn_w, grams[("neurons", layer.index)], neurons, damp)
        with torch.no_grad():
            layer.attention_out.weight.copy_(torch.from_numpy(attention).to(layer.attention_out.weight.dtype))
            layer.ffn_out.weight.copy_(torch.from_numpy(ffn).to(layer.ffn_out.weight.dtype))
        entry["reconstruction"] = {"attention_error": [a_before, a_after], "ffn_error": [f_before, f_after]}
    report["reconstruction"] = {"method": "least squares on the unpruned layer inputs", "damp": damp,
                                "tokens": int(sum(int(f["attention_mask"].sum()) for f in batches))}
    return report
