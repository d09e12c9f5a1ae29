"""The shared greedy search (converters/core/search.py) on a synthetic space: the policy every
quantizer's search follows, checked without building a model (milliseconds)."""

from __future__ import annotations

import contextlib
import math

import pytest

from converters._errors import AccuracyError
from converters.core.search import Budget, Floor, SearchExhausted, greedy_search, search_loss


class Toy:
    """Candidates with a known error each removes when moved (on both text sets unless `fit_only`
    says a candidate only looks good on the fit texts) and a known byte cost."""

    def __init__(self, removes: dict[str, float], costs: dict[str, int], base_error: float = 0.1,
                 fit_only: frozenset[str] = frozenset()):
        self.removes, self.costs, self.base_error, self.fit_only = removes, costs, base_error, fit_only
        self.moved: frozenset[str] = frozenset()
        self.built: list[frozenset[str]] = []
        self.judged = 0

    def candidates(self):
        return list(self.removes)

    def label(self, key):
        return key.upper()

    def build(self, moved):
        self.moved = moved
        self.built.append(moved)
        return 1000 + sum(self.costs[k] for k in moved)

    def _metrics(self, fit: bool) -> dict[str, float]:
        error = self.base_error - sum(self.removes[k] for k in self.moved if fit or k not in self.fit_only)
        error = max(error, 0.0)
        return {"cosine_mean": 1 - error, "cosine_min": 1 - 2 * error}

    def rank(self):
        return self._metrics(fit=True)

    def judge(self):
        self.judged += 1
        return self._metrics(fit=False)


def _floor(mean: float):
    return Floor(lambda m: [] if m["cosine_mean"] >= mean else [f"cosine_mean {m['cosine_mean']:.4f} < {mean}"])


def test_floor_met_at_the_start_builds_nothing_more():
    toy = Toy({"a": 0.05}, {"a": 10}, base_error=0.01)
    result = greedy_search(toy, _floor(0.98), move="float")
    assert result.moved == [] and toy.built == [frozenset()] and toy.judged == 1
    assert result.steps == [{"candidate": None, "moved": [], "bytes": 1000, "metrics": result.metrics}]


def test_floor_moves_best_gain_per_byte_first_and_stops_when_met():
    # b removes less than a but costs a tenth: per byte it comes first, and it is enough.
    toy = Toy({"a": 0.06, "b": 0.05, "c": 0.001}, {"a": 100, "b": 10, "c": 1})
    result = greedy_search(toy, _floor(0.95), move="float")
    assert result.moved == ["b"]
    assert result.bytes == 1010 and math.isclose(result.metrics["cosine_mean"], 0.95)
    accepted = [s for s in result.steps if s.get("accepted")]
    assert [s["candidate"] for s in accepted] == ["B"] and accepted[0]["added_bytes"] == 10


def test_ranking_from_the_full_end_scores_what_leaving_each_out_costs(monkeypatch):
    """RANK_FROM = "full" (measured against "start" by benchmarks/bench_search_policy.py): each
    candidate is left in the cheap form with every other moved; its gain is what that costs, its
    bytes what moving it adds. On additive errors the order is the same as from the start."""
    from converters.core import search

    monkeypatch.setattr(search, "RANK_FROM", "full")
    toy = Toy({"a": 0.06, "b": 0.05, "c": 0.001}, {"a": 100, "b": 10, "c": 1}, base_error=0.2)
    result = greedy_search(toy, Budget(2000), move="8-bit")
    assert toy.built[:5] == [frozenset(), frozenset("abc"), frozenset("bc"), frozenset("ac"), frozenset("ab")]
    assert result.moved == ["b", "c", "a"]  # per byte: 0.0075, 0.0015, 0.0009
    ranked = [s for s in result.steps if s.get("gain") is not None]
    assert {s["candidate"]: round(s["gain"], 6) for s in ranked} == {"A": 0.09, "B": 0.075, "C": 0.0015}


def test_a_move_that_only_helps_on_the_fit_texts_is_not_paid_for():
    # "a" ranks first on the fit texts but removes nothing on the validation texts.
    toy = Toy({"a": 0.08, "b": 0.03, "c": 0.03, "d": 0.001, "e": 0.001}, dict.fromkeys("abcde", 1),
              fit_only=frozenset({"a"}))
    result = greedy_search(toy, _floor(0.95), move="float")
    assert "a" not in result.moved and result.moved == ["b", "c"]
    rejected = next(s for s in result.steps if s["candidate"] == "A")
    assert rejected["accepted"] is False and rejected["why"] == "no gain on the validation texts"


def test_candidates_without_a_gain_are_recorded_and_never_tried():
    toy = Toy({"a": 0.05, "z": 0.0}, {"a": 1, "z": 1})
    result = greedy_search(toy, _floor(0.95), move="float")
    assert {"candidate": "Z", "gain": 0.0, "added_bytes": 1, "accepted": False,
            "why": "no gain when ranked"} in result.steps
    assert frozenset({"a", "z"}) not in toy.built


def test_floor_cap_reached_raises_naming_what_was_tried():
    toy = Toy({k: 0.01 for k in "abcdef"}, dict.fromkeys("abcdef", 1))
    with pytest.raises(SearchExhausted, match=r"6 candidates ranked, 6 helped alone.*3 accepted \(cap 3\)") as caught:
        greedy_search(toy, _floor(0.999), move="float")
    assert isinstance(caught.value, AccuracyError)  # the pipeline refuses the artifact
    result = caught.value.result
    assert len(result.moved) == 3
    assert "cap reached" in result.steps[-1]["why"]


def test_budget_takes_every_helpful_move_that_fits():
    toy = Toy({"a": 0.02, "b": 0.03, "c": 0.01}, {"a": 50, "b": 60, "c": 5})
    result = greedy_search(toy, Budget(1000 + 70), move="8-bit")
    # per byte: c (0.002), b (0.0005), a (0.0004); c + b = 65 fit, a would make 115
    assert result.moved == ["c", "b"] and result.bytes == 1065
    over = next(s for s in result.steps if s["candidate"] == "A")
    assert over["accepted"] is False and over["why"] == "over the size budget"
    assert frozenset({"a", "b", "c"}) not in toy.built  # skipped without being built


def test_budget_met_by_nothing_keeps_the_start():
    toy = Toy({"a": 0.02}, {"a": 50})
    result = greedy_search(toy, Budget(1000), move="8-bit")
    assert result.moved == [] and result.bytes == 1000


class Walked(Toy):
    """A Toy that, like a TFLite Space, has a context for its walk and hears each accepted move."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.events: list[object] = []

    @contextlib.contextmanager
    def walking(self):
        self.events.append("enter")
        try:
            yield
        finally:
            self.events.append("exit")

    def judge(self):
        self.events.append(("judge", self.moved))
        return super().judge()

    def accept(self):
        self.events.append(("accept", self.moved))


def test_the_walk_runs_in_the_space_s_context_and_each_accepted_trial_is_announced():
    """Every trial is judged inside `walking()`, and `accept()` follows the judge of each trial the
    walk keeps (the last one built), never a rejected one's; nothing ranked: no context at all."""
    toy = Walked({"a": 0.02, "b": 0.03, "c": 0.01}, {"a": 50, "b": 60, "c": 5}, fit_only=frozenset({"b"}))
    result = greedy_search(toy, Budget(1000 + 70), move="8-bit")
    assert result.moved == ["c", "a"]  # b only helps on the fit texts
    walk = toy.events[toy.events.index("enter"):]
    assert walk == ["enter", ("judge", frozenset("c")), ("accept", frozenset("c")), ("judge", frozenset("cb")),
                    ("judge", frozenset("ca")), ("accept", frozenset("ca")), "exit"]
    nothing = Walked({"a": 0.0}, {"a": 1})
    greedy_search(nothing, Budget(2000), move="8-bit")
    assert "enter" not in nothing.events


def test_search_loss_treats_nan_as_worst():
    assert search_loss({"cosine_mean": float("nan"), "cosine_min": 0.9}) == math.inf
    assert search_loss({"cosine_mean": 0.99, "cosine_min": 0.98}) == pytest.approx(0.01 + 0.25 * 0.02)


class MeanOrMin:
    """Two candidates at equal cost: "mean" lifts the mean a lot, "min" lifts the worst text."""

    def __init__(self):
        self.moved = frozenset()

    def candidates(self):
        return ["mean", "min"]

    def label(self, key):
        return key

    def build(self, moved):
        self.moved = moved
        return 1000 + 10 * len(moved)

    def _metrics(self):
        mean = 0.98 + (0.01 if "mean" in self.moved else 0.0)
        worst = 0.95 + (0.02 if "min" in self.moved else 0.0)
        return {"cosine_mean": mean, "cosine_min": worst}

    rank = judge = _metrics


def test_budget_with_a_floor_lifts_what_the_floor_checks_first():
    def shortfall(m):
        return max(0.0, 0.96 - m["cosine_min"])

    plain = greedy_search(MeanOrMin(), Budget(1010), move="8-bit")
    assert plain.moved == ["mean"]  # loss 0.01 vs 0.005: the mean wins without a floor
    floored = greedy_search(MeanOrMin(), Budget(1010, shortfall), move="8-bit")
    assert floored.moved == ["min"] and floored.metrics["cosine_min"] >= 0.96


class Labels:
    """A classifier's floor search: "polish" lifts the logits' cosine but flips a label (top-1
    down), "fix" lifts the cosine less and restores a label (top-1 up)."""

    effects = {"polish": (0.0009, -0.0115), "fix": (0.0001, 0.0115)}

    def __init__(self):
        self.moved = frozenset()

    def candidates(self):
        return list(self.effects)

    def label(self, key):
        return key

    def build(self, moved):
        self.moved = moved
        return 1000 + len(moved)

    def _metrics(self):
        cosine = 0.999 + sum(self.effects[k][0] for k in self.moved)
        top1 = 0.9885 + sum(self.effects[k][1] for k in self.moved)
        return {"logits_cosine_mean": cosine, "logits_cosine_min": cosine, "top1_agreement": top1}

    rank = judge = _metrics


def test_a_floor_on_top1_never_accepts_a_move_that_flips_labels():
    def failures(m):
        return [] if m["top1_agreement"] >= 0.99 else [f"top1_agreement {m['top1_agreement']:.4f} < 0.99"]

    def top1_shortfall(m):
        return max(0.0, 0.99 - m["top1_agreement"])

    # Without the shortfall the walk takes "polish" first (the logits' cosine gains most) and
    # keeps it: top-1 ends lower than it started.
    space = Labels()
    result = greedy_search(space, Floor(failures, shortfall=top1_shortfall), move="kept FP32")
    assert result.moved == ["fix"] and result.metrics["top1_agreement"] >= 0.99
    polish = next(s for s in result.steps if s["candidate"] == "polish")
    assert polish["accepted"] is False


# --- the descent over cumulative steps (converters/core/descent.py: prune=auto) ---------------------


def _lattice(loss_of, cost_of, most=3):
    """A 2-D walk: from (a, b), one more step on either axis up to `most`; a step's loss and cost
    are functions of where it lands (as a pruned model's are of its shares)."""
    from converters.core.descent import Trial

    built: list[tuple[int, int]] = []

    def moves(state):
        a, b = state
        return [s for s in ((a + 1, b), (a, b + 1)) if max(s) <= most]

    def build(state):
        built.append(state)
        return Trial(state, {"cosine_mean": 1 - loss_of(state)}, cost_of(state), built=f"model at {state}")

    return moves, build, built


def test_descent_takes_the_least_loss_per_cost_while_a_step_meets_the_floor():
    from converters.core.descent import descent

    # Axis a: cheap in accuracy, saves 10 per step; axis b: costly in accuracy, saves 30 per step.
    loss_of = lambda s: 0.002 * s[0] + 0.010 * s[1]  # noqa: E731
    cost_of = lambda s: 100 - 10 * s[0] - 30 * s[1]  # noqa: E731
    moves, build, built = _lattice(loss_of, cost_of)
    seen = []
    result = descent((0, 0), 100, moves, build, lambda m: m["cosine_mean"] >= 0.985, lambda m: 1 - m["cosine_mean"],
                     seen.append)
    # per unit of cost removed: a 0.0002, b 0.00033: a, three times (its end); then the one step
    # left, b, loses 0.006 + 0.010 = 0.016 > 0.015: below the floor, and the walk ends at (3, 0)
    assert result.best.state == (3, 0) and result.best.built == "model at (3, 0)"
    assert [t.state for t in result.tried] == built == [t.state for t in seen] == [
        (1, 0), (0, 1), (2, 0), (1, 1), (3, 0), (2, 1), (3, 1)]
    assert [t.met for t in result.tried] == [True] * 6 + [False]
    # only the step taken last keeps what was built (each is a whole pruned model)
    assert [t.built for t in result.tried if t.built is not None] == ["model at (3, 0)"]


def test_descent_with_no_step_meeting_the_floor_takes_none():
    from converters.core.descent import descent

    moves, build, _ = _lattice(lambda s: 0.5, lambda s: 100 - sum(s))
    result = descent((0, 0), 100, moves, build, lambda m: m["cosine_mean"] >= 0.99, lambda m: 1 - m["cosine_mean"])
    assert result.best is None and [t.state for t in result.tried] == [(1, 0), (0, 1)]
    assert all(t.built is None and not t.met for t in result.tried)
