"""The interleaved-rounds loop behind edge-bench, edge-convert's timing and the benchmark scripts
(edge_runtime/_rounds.py). A fake clock stands in for the machine: every figure here is exact, and
nothing depends on how fast or busy this machine is."""

from __future__ import annotations

import pytest

from edge_runtime import _rounds


class Machine:
    """perf_counter and sleep for the loop; runners advance the clock by their cost."""

    def __init__(self) -> None:
        self.now = 0.0
        self.calls: list[str] = []  # runner names and "pause", in order

    def perf_counter(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.calls.append("pause")

    def runner(self, name: str, ms: float, fail_at: int | None = None):
        count = 0

        def run() -> None:
            nonlocal count
            count += 1
            self.calls.append(name)
            if fail_at is not None and count >= fail_at:
                raise RuntimeError(f"{name} broke")
            self.now += ms / 1e3

        return run


@pytest.fixture
def machine(monkeypatch):
    machine = Machine()
    monkeypatch.setattr(_rounds.time, "perf_counter", machine.perf_counter)
    monkeypatch.setattr(_rounds.time, "sleep", machine.sleep)
    return machine


def test_each_round_pauses_before_every_block_and_rotates_who_goes_first(machine):
    seen = []
    timed = _rounds.time_in_rounds({"a": machine.runner("a", 2.0), "b": machine.runner("b", 4.0)}, runs=4, rounds=2,
                                   warmup=1, on_round=seen.append)
    assert machine.calls == ["a", "b",  # warm-up
                             "pause", "a", "a", "pause", "b", "b",  # round 1
                             "pause", "b", "b", "pause", "a", "a"]  # round 2: b first
    assert [(r.number, r.total, r.order) for r in seen] == [(1, 2, ["a", "b"]), (2, 2, ["b", "a"])]
    assert timed.round_p50_ms("a") == pytest.approx([2.0, 2.0]) and timed.p50_ms("b") == pytest.approx(4.0)
    assert timed.ratio("a", "b") == pytest.approx(0.5) and not timed.failures


def test_blocks_split_a_round_and_rewarm_adds_one_untimed_run_after_each_pause(machine):
    timed = _rounds.time_in_rounds({"a": machine.runner("a", 1.0), "b": machine.runner("b", 1.0)}, runs=3, rounds=1,
                                   block=2, rewarm=True)
    assert machine.calls == ["pause", "a", "a", "a", "pause", "b", "b", "b",  # 1 untimed + 2 timed each
                             "pause", "a", "a", "pause", "b", "b"]  # 1 untimed + the last one
    assert [len(r) for r in timed.times["a"]] == [3]


def test_runs_spread_over_rounds_and_never_more_rounds_than_runs(machine):
    timed = _rounds.time_in_rounds({"a": machine.runner("a", 1.0)}, runs=7, rounds=3)
    assert [len(r) for r in timed.times["a"]] == [3, 2, 2]
    assert [len(r) for r in _rounds.time_in_rounds({"a": machine.runner("a", 1.0)}, runs=2, rounds=5).times["a"]] == [1, 1]
    assert _rounds.rounds_for(2, 5) == 2 and _rounds.rounds_for(40, 8) == 8


def test_a_runner_that_fails_is_recorded_and_the_others_go_on(machine):
    timed = _rounds.time_in_rounds({"ok": machine.runner("ok", 1.0), "bad": machine.runner("bad", 1.0, fail_at=3)},
                                   runs=4, rounds=2, warmup=1)
    assert str(timed.failures["bad"]) == "bad broke" and "ok" not in timed.failures
    assert [len(r) for r in timed.times["ok"]] == [2, 2]
    assert [len(r) for r in timed.times["bad"]] == [1, 0]  # the failing run is not a time
    assert timed.ratio("bad", "ok") == pytest.approx(1.0)  # over the rounds both ran
    # failing during warm-up: never timed, never paused for
    machine.calls.clear()
    timed = _rounds.time_in_rounds({"bad": machine.runner("bad", 1.0, fail_at=1)}, runs=2, rounds=2, warmup=3)
    assert machine.calls == ["bad"] and timed.times["bad"] == [[], []] and timed.ratio("bad", "bad") is None


def test_ctrl_c_is_not_a_runner_failure(machine):
    def interrupted() -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _rounds.time_in_rounds({"a": interrupted}, runs=1, rounds=1)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"runs": 0, "rounds": 1}, "runs and rounds must be at least 1"),
    ({"runs": 1, "rounds": 0}, "runs and rounds must be at least 1"),
    ({"runs": 1, "rounds": 1, "block": 0}, "block must be at least 1"),
])
def test_bad_arguments_say_what_is_wrong(kwargs, message, machine):
    with pytest.raises(ValueError, match=message):
        _rounds.time_in_rounds({"a": machine.runner("a", 1.0)}, **kwargs)


def test_rotation():
    assert _rounds.rotated([1, 2, 3], 4) == [2, 3, 1] and _rounds.rotated([], 3) == []


def test_no_pause_after_a_runner_whose_threads_do_not_spin(machine):
    _rounds.time_in_rounds({"spin": machine.runner("spin", 1.0), "still": machine.runner("still", 1.0)},
                           runs=2, rounds=2, spins=lambda key: key != "still")
    # round 2 starts with "still" (rotated): right after its own turn, then "spin" right after it
    assert machine.calls == ["pause", "spin", "pause", "still", "still", "spin"]


def test_a_time_budget_ends_the_rounds_after_at_least_two(machine):
    seen = []
    timed = _rounds.time_in_rounds({"a": machine.runner("a", 1000.0)}, runs=10, rounds=10, budget_s=0.5,
                                   on_round=seen.append)
    assert len(seen) == 2 and [len(r) for r in timed.times["a"]] == [1, 1]
    timed = _rounds.time_in_rounds({"a": machine.runner("a", 1.0)}, runs=10, rounds=10, budget_s=60)
    assert len(timed.times["a"]) == 10
