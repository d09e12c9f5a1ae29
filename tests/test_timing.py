"""The converter's latency figures: every delivered artifact timed together, in interleaved rounds
(converters/packaging/timing.py). A fake clock stands in for the machine, so the figures are
exact and nothing here depends on how fast or busy this machine is."""

from __future__ import annotations

import pytest

from converters.packaging import timing
from edge_runtime import _rounds


class Clock:
    """perf_counter for the rounds loop; `slow` multiplies every run's cost during a round."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slow = 1.0

    def __call__(self) -> float:
        return self.now


class Fake:
    def __init__(self, name: str, ms: float, clock: Clock, calls: list[str]) -> None:
        self.name, self.ms, self.clock, self.calls = name, ms, clock, calls

    def run(self, feeds):
        self.calls.append(self.name)
        self.clock.now += self.ms / 1e3 * self.clock.slow


@pytest.fixture
def clock(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(_rounds.time, "perf_counter", clock)
    monkeypatch.setattr(_rounds.time, "sleep", lambda seconds: None)
    return clock


def test_ratios_are_taken_round_by_round_so_a_burst_hits_every_artifact_alike(clock):
    calls: list[str] = []
    sessions = {name: Fake(name, ms, clock, calls) for name, ms in (("fp32", 20.0), ("int8", 10.0), ("int4", 12.0))}
    seen_rounds = []

    def progress(line):  # a burst of load from another tenant during the second round only
        seen_rounds.append(line)
        clock.slow = 3.0 if len(seen_rounds) == 1 else 1.0

    result = timing.time_together(sessions, {}, runs=8, rounds=4, baselines={n: "fp32" for n in sessions},
                                  progress=progress)
    assert seen_rounds == [f"timing round {i}/4 done" for i in range(1, 5)]
    assert result["int8"].vs_baseline == pytest.approx(0.5) and result["int4"].vs_baseline == pytest.approx(0.6)
    assert result["fp32"].vs_baseline == pytest.approx(1.0) and result["int8"].baseline == "fp32"
    assert result["int8"].round_p50_ms == pytest.approx([10.0, 30.0, 10.0, 10.0])
    assert result["int8"].p50_ms == pytest.approx(10.0)  # the median over every run outvotes one round
    # warm-up (3 each, untimed), then rounds whose first artifact turns: fp32, int8, int4 / int8, ...
    timed = calls[3 * timing.WARMUP_RUNS:]
    firsts = [timed[i] for i in range(0, len(timed), 2 * 3)]
    assert firsts == ["fp32", "int8", "int4", "fp32"] and len(timed) == 8 * 3


def test_runs_spread_over_the_rounds_and_every_round_times_every_artifact(clock):
    calls: list[str] = []
    sessions = {"a": Fake("a", 1.0, clock, calls), "b": Fake("b", 2.0, clock, calls)}
    result = timing.time_together(sessions, {}, runs=6, rounds=4)
    assert len(calls) - 2 * timing.WARMUP_RUNS == 12
    assert len(result["a"].round_p50_ms) == 4 and result["a"].vs_baseline is None
    # fewer runs than rounds: one run per round, as many rounds as runs
    calls.clear()
    assert len(timing.time_together(sessions, {}, runs=2, rounds=4)["b"].round_p50_ms) == 2


def test_bad_arguments_say_what_is_wrong(clock):
    sessions = {"a": Fake("a", 1.0, clock, [])}
    with pytest.raises(ValueError, match="baseline 'fp32' is not one of the timed artifacts"):
        timing.time_together(sessions, {}, runs=4, rounds=2, baselines={"a": "fp32"})
    with pytest.raises(ValueError, match="at least 1"):
        timing.time_together(sessions, {}, runs=0, rounds=2)


def test_an_artifact_whose_run_fails_is_named(clock):
    class Broken:
        def run(self, feeds):
            raise RuntimeError("bad shape")

    with pytest.raises(RuntimeError, match="timing int8: its run failed: RuntimeError: bad shape"):
        timing.time_together({"fp32": Fake("fp32", 1.0, clock, []), "int8": Broken()}, {}, runs=2, rounds=2)


def test_each_artifact_is_compared_with_the_unpruned_fp32_artifact_of_its_format():
    def entry(name, fmt, precision, pruning=None):
        return {"name": name, "format": fmt, "precision": precision, "pruning": pruning}

    onnx32, onnx8, tfl32, tfl8 = (entry("onnx-fp32", "onnx", "fp32"), entry("onnx-int8", "onnx", "int8"),
                                  entry("tflite-fp32", "tflite", "fp32"), entry("tflite-int8", "tflite", "int8"))
    pruned = entry("onnx-int8-pruned", "onnx", "int8", {"heads": 0.5})
    assert timing.baselines([tfl8, onnx8, tfl32, onnx32, pruned]) == {
        "tflite-int8": "tflite-fp32", "onnx-int8": "onnx-fp32", "tflite-fp32": "tflite-fp32",
        "onnx-fp32": "onnx-fp32", "onnx-int8-pruned": "onnx-fp32"}
    # a format without its own FP32 artifact: the ONNX FP32 one; a pruned FP32 is never a baseline
    assert timing.baselines([onnx32, tfl8])["tflite-int8"] == "onnx-fp32"
    assert timing.baselines([entry("onnx-fp32-pruned", "onnx", "fp32", {"heads": 0.5}), tfl32, onnx8]) == {
        "onnx-fp32-pruned": "tflite-fp32", "tflite-fp32": "tflite-fp32", "onnx-int8": "tflite-fp32"}
    assert timing.baselines([onnx8]) == {"onnx-int8": None}


def test_the_table_shows_each_p50_and_its_ratio_to_the_baseline(capsys):
    from pathlib import Path

    from converters import cli
    from converters.pipeline import ArtifactResult, ConvertResult

    artifacts = [ArtifactResult("onnx-fp32", "onnx", "fp32", 90_000_000, {"cosine_mean": 1.0}, 18.91, vs_fp32=1.0,
                                fp32_baseline="onnx-fp32"),
                 ArtifactResult("onnx-int8", "onnx", "int8", 23_000_000, {"cosine_mean": 0.998}, 10.64, vs_fp32=0.563,
                                fp32_baseline="onnx-fp32")]
    cli._print_result(ConvertResult(Path("/tmp/out"), "x86-avx512-vnni", "feature-extraction", "m", artifacts, 1.0))
    out = capsys.readouterr().out
    header, _, fp32, int8 = [line for line in out.splitlines() if line.strip()][1:5]
    assert "x FP32" in header and "18.91   1.00x" in fp32 and "10.64   0.56x" in int8
    assert "x FP32: p50 over that of the same format's FP32 artifact (onnx-fp32), median of the per-round" in out
    # without an FP32 artifact there is no ratio: a dash, and the line does not name a baseline
    artifacts[1].vs_fp32 = artifacts[1].fp32_baseline = None
    cli._print_result(ConvertResult(Path("/tmp/out"), "x86-avx512-vnni", "feature-extraction", "m", artifacts[1:], 1.0))
    out = capsys.readouterr().out
    assert "10.64   -" in out and "x FP32:" not in out
    # a model shorter than the default shape is timed at its own length, and the line says so
    cli._print_result(ConvertResult(Path("/tmp/out"), "x86-avx512-vnni", "feature-extraction", "m", artifacts[1:], 1.0,
                                    timing_sequence=16))
    assert "latency: batch 1, 16 tokens," in capsys.readouterr().out
