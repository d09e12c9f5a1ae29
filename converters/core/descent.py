"""The shared core's second search: a descent over cumulative steps, under an accuracy floor.

search.py's greedy search ranks independent moves once (each weight kept float, or 8-bit, alone)
and walks the ranking, adding them up. Structured pruning (`prune=auto`) has no such moves: a
step prunes further from the state the last step reached, and what it costs in accuracy and
saves in compute is only known once the whole model is pruned, re-fitted and judged there. So:

1. From the current state (the unpruned model at first), build and judge every next step
   (`moves(state)`: one more share of heads, one more of the FFN neurons) on the validation texts.
2. Keep the steps whose metrics meet the floor; take the one that loses least accuracy per unit
   of cost removed: (loss(step) - loss(now)) / (cost(now) - cost(step)), the cost being what the
   caller minimises (encoder FLOPs for pruning; bytes or a measured time would do the same).
3. Stop when no next step meets the floor (or there is none). The last step taken is the result;
   none taken means even the first steps missed the floor.

Every step built is reported to `on_trial` as it is judged (the caller's progress line and its
manifest record) and kept in `tried`, in order, with whether it met the floor; what was built
(`Trial.built`, a whole pruned model) is kept for the step taken last only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

__all__ = ["Descent", "Trial", "descent"]

S = TypeVar("S")
Metrics = dict[str, float]


@dataclass
class Trial(Generic[S]):
    """One step built and judged: its state, validation metrics, cost, whether it met the floor,
    and what the caller built (kept for the step taken last)."""

    state: S
    metrics: Metrics
    cost: float
    met: bool = False
    built: Any = field(default=None, repr=False)


@dataclass
class Descent(Generic[S]):
    best: Trial[S] | None  # the last step taken; None: no step met the floor
    tried: list[Trial[S]]  # every step built, in order


def descent(
    start: S,
    start_cost: float,
    moves: Callable[[S], list[S]],
    build: Callable[[S], Trial[S]],
    meets: Callable[[Metrics], bool],
    loss: Callable[[Metrics], float],
    on_trial: Callable[[Trial[S]], None] = lambda trial: None,
    start_loss: float = 0.0,
) -> Descent[S]:
    """Run the policy of this module's docstring from `start` (its cost `start_cost`, its loss
    `start_loss`). `build(state)` builds and judges one step (met is set here, from `meets`)."""
    state, cost_now, loss_now = start, start_cost, start_loss
    best: Trial[S] | None = None
    tried: list[Trial[S]] = []
    while True:
        taken: list[tuple[float, Trial[S]]] = []
        for step in moves(state):
            trial = build(step)
            trial.met = meets(trial.metrics)
            tried.append(trial)
            on_trial(trial)
            if trial.met:  # accuracy lost per unit of cost removed by this step
                taken.append(((loss(trial.metrics) - loss_now) / max(cost_now - trial.cost, 1), trial))
            else:
                trial.built = None  # never taken: its model (a whole pruned encoder) is let go now
        if not taken:
            return Descent(best, tried)
        chosen = min(taken, key=lambda pair: pair[0])[1]  # the first of equals, in moves() order
        for trial in [best, *(trial for _, trial in taken)]:
            if trial is not None and trial is not chosen:
                trial.built = None  # only the step taken last keeps what was built
        best = chosen
        state, cost_now, loss_now = best.state, best.cost, loss(best.metrics)
