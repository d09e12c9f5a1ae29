"""Which heads and FFN neurons to remove: the ones whose loss the remaining ones can best make up for.

A head or neuron is a group of input columns of a projection (attention_out for a head's
context columns, ffn_out for a neuron). Removing group G and re-fitting the projection by least
squares on the calibration activations X (what reconstruct.py does afterwards) leaves, by the
Optimal Brain Surgeon identity, the error

    cost(G) = trace( W_G  [H^-1]_GG^-1  W_G^T ),        H = [X 1]^T [X 1] (+ ridge)

where W_G are the projection's columns of G (weights, bias column never removed). Two neurons
that carry the same signal cost nothing to drop one of; a large but redundant unit is cheap,
a small but unique one is not, which norm- or activation-based scores cannot see (measured
against them in benchmarks/RESULTS.md, run V). After each removal W and H^-1 are updated in
closed form, so the next costs are those of the projection already compensated.

One global greedy per kind: each layer's cost is divided by the energy of the residual stream
it writes into (sum over tokens of ||projection output + residual||^2, before LayerNorm), the
cheapest group of any layer goes next, every layer keeps at least one. The order of removal is
the score (lower = removed earlier), so importance.plan(scores, heads, ffn) takes the greedy's
first steps. Only activations of the unpruned model on the fit texts: no labels, no gradients.

Layers differ in how much of their local error reaches the model's output (a layer-0 error passes
through five more layers and LayerNorms, a last-layer error straight into the pooled embedding),
and the local cost cannot see that. Given `loss` (the model's output loss against the unpruned
one on the fit texts), each layer is calibrated once: its greedy run alone to the requested share,
the compensated weights put in place, the output loss measured; the layer's costs are then
multiplied by loss / (its summed cost). At heads 0.33 / FFN 0.5 on MiniLM this moved FFN removals
out of layer 0 (1,327 of 1,536 neurons removed without it, 905 with it) and raised the validation
cosine by ~0.02 (RESULTS.md run W). It costs one forward pass over the fit texts per layer and kind.
A layer is calibrated on at least one of its units even when the share rounds to none there (a
4-head layer at --prune auto's 1/12 step); one with a single unit keeps it and is not measured, nor
is a kind nothing is removed of: Scores.sensitivity records those as None, never as a weight.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import numpy as np
from scipy.linalg.blas import dger

from converters._console import count, stopped
from converters._errors import ConversionError
from converters.pruning.importance import Scores
from converters.pruning.reconstruct import tap_projections
from converters.pruning.structure import find_layers

__all__ = ["DAMP", "obs_scores"]

Loss = Callable[[], float]

# Ridge on H, relative to its mean diagonal (as reconstruct.DAMP): neurons that never fire on
# the fit texts give H a zero row; the ridge keeps H invertible and prices them by their weights.
DAMP = 0.01
# Removed columns are exactly zero after their update; the arrays are compacted this often.
_COMPACT_EVERY = 64


def _statistics(model: Any, batches: list[dict[str, np.ndarray]], input_names: list[str]) -> dict:
    """Per (kind, layer): H = [X 1]^T [X 1] of the projection's real-token inputs, and the energy of
    the pre-norm sum it writes into."""
    import torch

    found: dict[tuple[str, str, int], Any] = {}
    kinds = {"attention": "heads", "ffn": "neurons"}

    def visit(kind: str, index: int, inputs: Any, total: Any) -> None:
        x = torch.cat([inputs, torch.ones(inputs.shape[0], 1, dtype=inputs.dtype)], dim=1)
        key = (kinds[kind], index)
        found[("gram", *key)] = found.get(("gram", *key), 0.0) + x.T @ x
        found[("energy", *key)] = found.get(("energy", *key), 0.0) + float((total ** 2).sum())

    tap_projections(model, batches, input_names, visit)
    if not found:
        raise ConversionError("pruning importance needs calibration texts with at least one token")
    return found


class _Projection:
    """One projection's greedy state: W [out, columns + bias] and H^-1 over the columns still there."""

    def __init__(self, gram: np.ndarray, weight: np.ndarray, bias: np.ndarray, group: int, energy: float,
                 damp: float) -> None:
        columns = gram.shape[0] - 1
        ridge = gram.copy()
        ridge[np.arange(columns), np.arange(columns)] += damp * max(float(np.mean(np.diag(gram)[:columns])), 1e-12)
        # Fortran order: a neuron's removal is two in-place BLAS rank-1 updates (dger), ~30x
        # faster than numpy's outer-product temporaries at 1,537 x 1,537.
        self.inverse = np.asfortranarray(np.linalg.inv(ridge))
        self.weight = np.asfortranarray(np.concatenate([weight, bias[:, None]], axis=1))
        self.group, self.energy = group, max(energy, 1e-30)
        self.ids = np.arange(columns // group)  # group ids, in column order
        self.alive = np.ones(len(self.ids), bool)
        self.costs = self._costs()

    def left(self) -> int:
        return int(self.alive.sum())

    def _columns(self, position: int) -> np.ndarray:
        return np.arange(position * self.group, (position + 1) * self.group)

    def _costs(self) -> np.ndarray:
        costs = np.full(len(self.ids), np.inf)
        if self.group == 1:
            live = self.alive
            norms = np.einsum("ij,ij->j", self.weight, self.weight)[:-1]
            costs[live] = norms[live] / np.diag(self.inverse)[:-1][live]
        else:
            for position in np.flatnonzero(self.alive):
                cols = self._columns(position)
                w = self.weight[:, cols]
                costs[position] = float(np.sum((w @ np.linalg.inv(self.inverse[np.ix_(cols, cols)])) * w))
        return costs / self.energy

    def compensated(self, columns: int) -> tuple[np.ndarray, np.ndarray]:
        """(W [out, columns], b): the projection after the removals so far, removed columns zero."""
        weight = np.zeros((self.weight.shape[0], columns))
        for position in np.flatnonzero(self.alive):
            start = int(self.ids[position]) * self.group
            weight[:, start:start + self.group] = self.weight[:, self._columns(position)]
        return weight, self.weight[:, -1].copy()

    def remove_cheapest(self) -> int:
        """Remove the cheapest group, compensate the rest; returns its group id."""
        position = int(np.argmin(self.costs))
        cols = self._columns(position)
        if self.group == 1:
            j = int(cols[0])
            row = self.inverse[j, :] / self.inverse[j, j]
            self.weight = dger(-1.0, self.weight[:, j].copy(), row, a=self.weight, overwrite_a=True)
            self.inverse = dger(-1.0, self.inverse[:, j].copy(), row, a=self.inverse, overwrite_a=True)
        else:
            rows = np.linalg.solve(self.inverse[np.ix_(cols, cols)], self.inverse[cols, :])
            self.weight = np.asfortranarray(self.weight - self.weight[:, cols] @ rows)
            self.inverse = np.asfortranarray(self.inverse - self.inverse[:, cols] @ rows)
        self.alive[position] = False
        removed = int(self.ids[position])
        if (len(self.alive) - self.left()) >= _COMPACT_EVERY:
            keep_groups = np.flatnonzero(self.alive)
            keep = np.concatenate([self._columns(p) for p in keep_groups] + [[self.inverse.shape[0] - 1]])
            self.inverse = np.asfortranarray(self.inverse[np.ix_(keep, keep)])
            self.weight = np.asfortranarray(self.weight[:, keep])
            self.ids = self.ids[keep_groups]
            self.alive = np.ones(len(self.ids), bool)
        self.costs = self._costs()
        return removed


def _sensitivity(projection: _Projection, module: Any, share: float, loss: Loss) -> float | None:
    """Output loss per unit of summed cost when this projection alone loses `share` of its groups,
    at least one (compensated as the greedy does); `module` (its Linear layer) is restored
    afterwards. None, without a run, for a projection of one group: every layer keeps one."""
    import torch

    if len(projection.ids) < 2:
        return None
    # At least one group: a share that rounds to none in this layer (1/12 of 4 heads) still
    # removes units elsewhere or at later steps, and an unmeasured weight of 1 would make the
    # global greedy unweighted while the manifest showed it as measured.
    removed = min(max(1, round(share * len(projection.ids))), len(projection.ids) - 1)
    alone = copy.deepcopy(projection)
    summed = 0.0
    for _ in range(removed):
        summed += float(alone.costs.min())
        alone.remove_cheapest()
    weight, bias = alone.compensated(module.in_features)
    saved = module.weight.detach().clone(), None if module.bias is None else module.bias.detach().clone()
    with torch.no_grad():
        module.weight.copy_(torch.from_numpy(weight).to(module.weight.dtype))
        if module.bias is not None:
            module.bias.copy_(torch.from_numpy(bias).to(module.bias.dtype))
    try:
        measured = float(loss())
    finally:
        with torch.no_grad():
            module.weight.copy_(saved[0])
            if module.bias is not None:
                module.bias.copy_(saved[1])
    return max(measured, 0.0) / max(summed, 1e-12)


# A layer whose pruning measured no loss weighs this share of the least sensitive measured layer.
UNMEASURED_SHARE = 0.01


def _no_free_layer(weights: dict[int, float]) -> dict[int, float]:
    """Layer weights where a layer whose pruning measured no loss at all (a metric too coarse to
    see it, or a layer that truly does not matter at the measured share) weighs UNMEASURED_SHARE
    of the least sensitive measured layer, 1 when none measured any: still taken first, but its
    units are no longer free. With weight 0 all of them cost nothing, and the greedy stripped
    such a layer to one unit before comparing any of its units with another layer's."""
    measured = [w for w in weights.values() if w > 0]
    floor = UNMEASURED_SHARE * min(measured) if measured else 1.0
    return {i: w if w > 0 else floor for i, w in weights.items()}


def obs_scores(model: Any, batches: list[dict[str, np.ndarray]], input_names: list[str],
               heads: float, ffn: float, damp: float = DAMP, progress=None, loss: Loss | None = None,
               calibrate_at: tuple[float, float] | None = None) -> Scores:
    """Removal order of heads and neurons of `model` (see the module docstring) for plans of up to
    `heads` / `ffn` shares (the greedy stops there: plan() at larger shares raises). Scores are
    the step at which each unit goes; units the greedy did not reach score inf.

    `loss`: the model's output loss against the unpruned model (it runs `model` as it is at the
    call); with it, each layer's costs are weighted by its measured sensitivity at the
    `calibrate_at` shares (default: `heads`, `ffn`). Without it, every layer weighs 1.
    `Scores.sensitivity[kind][layer]`: the weight measured, None where none was (see the module
    docstring; such a layer weighs 1)."""
    import torch

    statistics = _statistics(model, batches, input_names)
    layers = find_layers(model)
    result = Scores()
    calibrate_at = calibrate_at or (heads, ffn)
    for kind, share, at in (("heads", heads, calibrate_at[0]), ("neurons", ffn, calibrate_at[1])):
        projections, modules = {}, {}
        for layer in layers:
            module = layer.attention_out if kind == "heads" else layer.ffn_out
            bias = module.bias if module.bias is not None else torch.zeros(module.out_features)
            modules[layer.index] = module
            projections[layer.index] = _Projection(
                statistics[("gram", kind, layer.index)].numpy(), module.weight.detach().double().numpy(),
                bias.detach().double().numpy(), layer.head_size if kind == "heads" else 1,
                statistics[("energy", kind, layer.index)], damp)
        # Weight 1 (unweighted) where nothing is measured: a kind not pruned, no `loss`, or a
        # layer of one unit (never pruned: every layer keeps one). Recorded as None there.
        weights = {i: 1.0 for i in projections}
        measured: dict[int, float | None] = {i: None for i in projections}
        if loss is not None and share > 0:
            weights, measured = _calibrated(kind, projections, modules, at, loss, progress)
        order = {i: np.full(len(p.ids), np.inf) for i, p in projections.items()}
        steps = round(share * sum(len(p.ids) for p in projections.values()))
        label = f"pruning: ordering {kind} by removal cost"
        # The greedy takes minutes on a real model (4,608 MiniLM neurons at FFN 0.5): a count
        # the progress printer shows with an ETA, at most ~100 messages.
        stride = max(1, steps // 100)
        if progress is not None and steps:
            progress(count(label, 0, steps))
        done = 0
        for step in range(steps):
            open_layers = [i for i, p in projections.items() if p.left() > 1]
            if not open_layers:
                break
            index = min(open_layers, key=lambda i: weights[i] * float(projections[i].costs.min()))
            order[index][projections[index].remove_cheapest()] = step
            done = step + 1
            if progress is not None and (done % stride == 0 or done == steps):
                progress(count(label, done, steps))
        if progress is not None and 0 < steps and done < steps:  # every layer is down to one unit
            progress(stopped(label, done, steps))
        (result.heads if kind == "heads" else result.neurons).update(order)
        result.sensitivity[kind] = measured
    return result


def _calibrated(kind: str, projections: dict[int, _Projection], modules: dict[int, Any], share: float, loss: Loss,
                progress) -> tuple[dict[int, float], dict[int, float | None]]:
    """(the greedy's layer weights, the manifest's record of them: None where not measured)."""
    runs = [i for i, p in projections.items() if len(p.ids) > 1]
    unit = "head" if kind == "heads" else "neuron"
    label = f"pruning: measuring {kind} sensitivity on the fit texts, layer"
    if progress is not None:
        progress(count(label, 0, len(runs)) if runs else
                 f"pruning: {kind} sensitivity not measured: every layer has one {unit}, which it keeps")
    found = {}
    for done, i in enumerate(runs, 1):
        found[i] = _sensitivity(projections[i], modules[i], share, loss)
        if progress is not None:
            progress(count(label, done, len(runs)))
    weighted = _no_free_layer(found) if found else {}
    return ({i: weighted.get(i, 1.0) for i in projections},
            {i: weighted.get(i) for i in projections})
