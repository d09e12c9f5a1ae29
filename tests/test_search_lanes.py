"""Ranking in lanes (converters/core/search.py): a ProbeSpace whose ranking scorer is a
LaneScorer builds and scores several candidates at once. The search must not notice: the same
gains, the same ranking, the same steps as one candidate at a time; each lane its own probe
file, removed afterwards; the first failure in the candidates' order raised; and the kernels
it relies on give the same numbers whatever their thread count."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from converters.core.search import Budget, LaneScorer, ProbeSpace, greedy_search

REMOVES = {"a": 0.010, "b": 0.030, "c": 0.002, "d": 0.020, "e": 0.0, "f": 0.015}
COSTS = {"a": 10, "b": 40, "c": 5, "d": 20, "e": 10, "f": 30}


class FileToy(ProbeSpace):
    """Candidates written to a real file (the moved keys, one per line); scores read back from
    the file, so a lane scoring another lane's probe would show up as wrong metrics."""

    def candidates(self):
        return list(REMOVES)

    def write(self, moved, path: Path) -> int:
        path.write_text("\n".join(sorted(moved)))
        return 1000 + sum(COSTS[k] for k in moved)


def _metrics(path: Path, fit: bool) -> dict[str, float]:
    moved = [k for k in Path(path).read_text().split("\n") if k]
    error = max(0.0, 0.1 - sum(REMOVES[k] * (1.0 if fit else 0.9) for k in moved))
    return {"cosine_mean": 1 - error, "cosine_min": 1 - 2 * error}


class Recorder:
    def __init__(self, fail_on: str | None = None):
        self.calls: list[tuple[str, int | None, str]] = []
        self.fail_on = fail_on
        self.lock = threading.Lock()

    def score(self, path: Path, threads: int | None) -> dict[str, float]:
        text = Path(path).read_text()
        time.sleep(0.01)  # let the other lane interleave
        with self.lock:
            self.calls.append((Path(path).name, threads, threading.current_thread().name))
        if self.fail_on is not None and text == self.fail_on:
            raise RuntimeError(f"candidate {text} failed")
        return _metrics(path, fit=True)


def _search(tmp_path: Path, lanes: int, recorder: Recorder):
    space = FileToy(tmp_path / "m.probe.bin", LaneScorer(recorder.score, lanes), lambda p: _metrics(p, fit=False))
    return greedy_search(space, Budget(1000 + 75), move="8-bit")


def test_lanes_give_the_same_search(tmp_path):
    one, two = Recorder(), Recorder()
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    alone = _search(tmp_path / "one", 1, one)
    lanes = _search(tmp_path / "two", 2, two)
    assert lanes.moved == alone.moved and lanes.steps == alone.steps and lanes.bytes == alone.bytes
    assert lanes.moved, "the toy budget should take some moves"
    # One lane: the scorer's default threads, in this thread. Two: one thread each, two probes
    # (the base score runs on the main probe), from worker threads; every probe removed after.
    assert {threads for _, threads, _ in one.calls} == {None}
    ranked = [c for c in two.calls if c[0] != "m.probe.bin"]
    assert len(ranked) == len(REMOVES)
    assert {threads for _, threads, _ in ranked} == {1}
    assert {name for name, _, _ in ranked} == {"m.probe.lane0.bin", "m.probe.lane1.bin"}
    assert all(worker.startswith("rank-lane") for _, _, worker in ranked)
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["m.probe.bin"]


def test_the_first_failure_in_order_is_raised_and_probes_removed(tmp_path):
    recorder = Recorder(fail_on="c")
    with pytest.raises(RuntimeError, match="candidate c failed"):
        _search(tmp_path, 2, recorder)
    # Lanes stop taking candidates after a failure: at most one more finishes per lane.
    assert len([c for c in recorder.calls if c[0] != "m.probe.bin"]) < len(REMOVES)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.probe.bin"]


def test_lanes_must_be_positive():
    with pytest.raises(ValueError, match="lanes must be >= 1"):
        LaneScorer(lambda path, threads: {}, 0)


def test_onnxruntime_results_do_not_depend_on_the_thread_count(tmp_path):
    """What lanes rely on for the ONNX searches: a candidate scored with one thread gives the
    numbers two threads give. GEMMs large enough for onnxruntime to split them (MiniLM's FFN:
    128 x 384 x 1536), float and integer, with the LayerNorm and Softmax between them."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from edge_runtime.backends.onnx import OnnxSession

    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.normal(size=(384, 1536)).astype(np.float32) * 0.05, "w1"),
        numpy_helper.from_array(rng.integers(-127, 128, (1536, 384)).astype(np.int8), "w2"),
        numpy_helper.from_array(np.ones(1536, np.float32), "gamma"),
        numpy_helper.from_array(np.zeros(1536, np.float32), "beta"),
        numpy_helper.from_array(np.array(0.01, np.float32), "w2_scale"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"]),
        helper.make_node("LayerNormalization", ["h", "gamma", "beta"], ["n"], axis=-1),
        helper.make_node("DynamicQuantizeLinear", ["n"], ["q", "q_scale", "q_zero"]),
        helper.make_node("MatMulInteger", ["q", "w2", "q_zero"], ["acc"]),
        helper.make_node("Cast", ["acc"], ["accf"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["q_scale", "w2_scale"], ["s"]),
        helper.make_node("Mul", ["accf", "s"], ["y"]),
        helper.make_node("Softmax", ["y"], ["out"], axis=-1),
    ]
    graph = helper.make_graph(nodes, "threads", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 128, 384])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "threads.onnx"
    onnx.save(model, str(path))
    x = {"x": rng.normal(size=(4, 128, 384)).astype(np.float32)}
    one = OnnxSession(path, threads=1, graph_optimization_level="all").run(x)["out"]
    two = OnnxSession(path, threads=2, graph_optimization_level="all").run(x)["out"]
    assert np.isfinite(one).all() and one.std() > 0
    np.testing.assert_array_equal(one, two)


@pytest.mark.parametrize("fail_on", [None, "c"])
def test_lanes_shorten_the_switch_interval_while_they_run_and_restore_it(tmp_path, fail_on):
    """A lane returning from native code waits for the GIL while the other lane builds: the
    interval is LANE_SWITCH_INTERVAL while lanes score, and what it was afterwards, also after a
    failure."""
    import sys

    from converters.core.search import LANE_SWITCH_INTERVAL

    seen: list[float] = []

    class Watching(Recorder):
        def score(self, path, threads):
            seen.append(sys.getswitchinterval())
            return super().score(path, threads)

    before = sys.getswitchinterval()
    sys.setswitchinterval(0.004)
    try:
        if fail_on is None:
            _search(tmp_path, 2, Watching())
        else:
            with pytest.raises(RuntimeError, match="candidate c failed"):
                _search(tmp_path, 2, Watching(fail_on))
        assert sys.getswitchinterval() == pytest.approx(0.004)
    finally:
        sys.setswitchinterval(before)
    # The first score is the start's, on the main probe, before the lanes; then the candidates'.
    assert seen[0] == pytest.approx(0.004) and len(seen) > 1, seen
    assert all(v == pytest.approx(LANE_SWITCH_INTERVAL) for v in seen[1:]), seen


@pytest.mark.parametrize("fail_on", [None, "c"])
def test_lanes_hold_numpys_blas_to_one_thread_and_restore_it(tmp_path, fail_on):
    """A lane's build (W4A8's GPTQ) ran OpenBLAS on both cores beside the other lane's scorer;
    one thread while lanes run (RESULTS.md run BK), the previous count after, also after a failure."""
    from threadpoolctl import threadpool_info, threadpool_limits

    def blas_threads() -> set[int]:
        return {pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"}

    seen: set[int] = set()

    class Watching(FileToy):
        def write(self, moved, path: Path) -> int:
            seen.update(blas_threads())
            return super().write(moved, path)

    with threadpool_limits(limits=2, user_api="blas"):
        before = blas_threads()
        recorder = Recorder(fail_on=fail_on)
        space = Watching(tmp_path / "m.probe.bin", LaneScorer(recorder.score, 2), lambda p: _metrics(p, fit=False))
        if fail_on:
            with pytest.raises(RuntimeError):
                greedy_search(space, Budget(1000 + 75), move="8-bit")
        else:
            greedy_search(space, Budget(1000 + 75), move="8-bit")
        assert blas_threads() == before == {2}
    assert 1 in seen, "the ranking's builds ran with one BLAS thread"
