"""benchmarks/bench_pruning.py's command line and report: mistakes are refused in one line before
any model work, outputs keep dotted names, Ctrl-C keeps the finished rows, the temporary exports
are removed, the timing rotates the variants and pauses between them, and every speed figure
names the CPU, its ISA flags, threads, batch, sequence length and the unpruned p50."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "bench_pruning.py"
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_pruning  # noqa: E402


@pytest.fixture
def no_model_work(monkeypatch):
    """Any call of the sweep fails the test: argument mistakes must be refused before it."""

    def forbidden(*args, **kwargs):
        raise AssertionError("the sweep started although the arguments were wrong")

    monkeypatch.setattr(bench_pruning, "_sweep", forbidden)


def _refused(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as stopped:
        bench_pruning.main(argv)
    assert stopped.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("bench_pruning.py: error: ")
    assert not any("Traceback" in line for line in err)
    return err[-1]


@pytest.mark.parametrize("argv, says", [
    (["--ratios", "0.33"], "not a HEADS/FFN pair"),
    (["--ratios", "1.5/0.5"], "must be in [0, 1)"),
    (["--ratios", "0.33/x"], "must be numbers"),
    (["--ratios", "0/0"], "removes nothing"),
    (["--ratios", "0.33/0.5,0.333/0.5"], "repeats"),
    (["--criteria", "magnitdue"], "known: obs, activation, magnitude, fisher"),
    (["--criteria", "obs,magnitdue"], "'magnitdue'"),
    (["--criteria", "obs,obs"], "named twice"),
    (["--rounds", "0"], "--rounds must be at least 1"),
    (["--runs", "0"], "--runs must be at least 1"),
    (["--threads", "0"], "--threads must be at least 1"),
    (["--seq", "-4"], "--seq must be at least 1"),
    (["--distill-steps", "-1"], "--distill-steps"),
    (["--distill-steps", "10", "--distill-lr", "0"], "--distill-lr must be a positive"),
    (["--criteria", "activation", "--distill-steps", "300"], "add obs to --criteria"),
    (["--distill-lr", "1e-3"], "need --distill-steps"),
])
def test_bad_arguments_are_refused_in_one_line_before_any_work(capsys, tmp_path, no_model_work, argv, says):
    assert says in _refused(capsys, [*argv, "--out", str(tmp_path / "sweep")])


def test_an_out_under_a_file_is_refused_before_any_work(capsys, tmp_path, no_model_work):
    (tmp_path / "pf.json").write_text("{}")
    line = _refused(capsys, ["--out", str(tmp_path / "pf.json" / "x")])
    assert "is a file" in line
    (tmp_path / "taken.md").mkdir()
    assert "is a directory" in _refused(capsys, ["--out", str(tmp_path / "taken")])


def test_the_script_itself_prints_one_error_line_and_no_traceback(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "--ratios", "0.33", "--out", str(tmp_path / "x")],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == \
        "bench_pruning.py: error: --ratios: '0.33' is not a HEADS/FFN pair (e.g. 0.33/0.5)"


def test_help_describes_the_formats_and_defaults_and_ends_its_sentence(capsys):
    with pytest.raises(SystemExit):
        bench_pruning.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "for the default model." in text  # the first line used to stop at "model,"
    assert "HEADS/FFN pairs" in text and bench_pruning.DEFAULT_RATIOS in text
    for flag, default in (("--rounds", "5"), ("--runs", "20"), ("--seq", "128")):
        assert f"{flag} {flag[2:].upper()} " in text
        assert f"[default: {default}]" in text
    assert "fisher" in text and ".json, .md and .png are appended" in text


def test_parsers_accept_good_values():
    assert bench_pruning.parse_ratios("0.17/0.25, 0.5/0.75") == [(0.17, 0.25), (0.5, 0.75)]
    assert bench_pruning.parse_ratios("0/0.5") == [(0.0, 0.5)]
    assert bench_pruning.parse_criteria("obs,magnitude") == ["obs", "magnitude"]
    with pytest.raises(ValueError, match="known: obs, activation, magnitude, fisher"):
        bench_pruning.parse_criteria("")


def test_output_suffixes_are_appended_not_substituted(tmp_path):
    half = bench_pruning.output_paths(tmp_path / "sweep_0.33_0.5")
    three_quarters = bench_pruning.output_paths(tmp_path / "sweep_0.33_0.75")
    assert half["json"].name == "sweep_0.33_0.5.json"
    assert {p.name for p in half.values()} == {"sweep_0.33_0.5.json", "sweep_0.33_0.5.md", "sweep_0.33_0.5.png"}
    assert not set(half.values()) & set(three_quarters.values())
    # The repo's own dotted result names resolve to their files.
    assert bench_pruning.output_paths(Path("pruning_0.33_0.5_zen4"))["json"].name == "pruning_0.33_0.5_zen4.json"
    # An --out naming one of the outputs is the same prefix.
    assert bench_pruning.output_paths(tmp_path / "sweep.json") == bench_pruning.output_paths(tmp_path / "sweep")


def _row(variant: str, **extra) -> dict:
    return {"heads": 0.33, "ffn": 0.5, "criterion": "magnitude", "parameters": 0.8, "flops": 0.6,
            "validation": {"cosine_mean": 0.98, "cosine_min": 0.9}, "heldout": {"cosine_mean": 0.97, "cosine_min": 0.88},
            "onnx_mb": 60.0, "variant": variant, **extra}


def _result(**extra) -> dict:
    return {"cpu": "AMD EPYC", "cpu_flags": ["avx2", "fma", "avx512f", "avx512bw", "avx512_vnni"],
            "cpu_label": "AMD EPYC (x86_64; avx2 fma avx512f avx512bw avx512_vnni)",
            "model": "sentence-transformers/all-MiniLM-L6-v2 (built-in)", "batch": 1, "seq": 128, "threads": 2,
            "rounds": 3, "unpruned_p50_ms": 28.25,
            "rows": [_row("0.33-0.50-magnitude", p50_ms=18.0, p50_ratio=0.64, round_ratios=[0.6, 0.64, 0.7])],
            **extra}


def test_replot_reads_a_dotted_result_name_and_labels_the_speed_figures(tmp_path, capsys):
    prefix = tmp_path / "pruning_0.33_0.5_zen4"
    Path(f"{prefix}.json").write_text(json.dumps(_result(cpu_busy_share=0.4)))
    assert bench_pruning.main(["--replot", "--out", str(prefix)]) == 0
    md = Path(f"{prefix}.md").read_text()
    assert Path(f"{prefix}.png").stat().st_size > 0
    assert not (tmp_path / "pruning_0.33_0.md").exists()
    first = md.splitlines()[0]
    for part in ("AMD EPYC", "avx512bw", "avx512_vnni", "2 threads", "batch 1", "128 tokens", "unpruned p50 28.25 ms"):
        assert part in first
    assert "0.640x (0.600-0.700)" in md  # the spread over rounds
    assert "the CPU was busy during 40%" in md
    title = bench_pruning.plot_title(_result(cpu_busy_share=0.4))
    for part in ("avx512bw", "2 threads", "batch 1", "128 tokens", "unpruned p50 28.25 ms", "busy"):
        assert part in title
    assert "busy" not in bench_pruning.plot_title(_result(cpu_busy_share=0.01))


def test_replot_of_an_older_result_names_its_recorded_flags():
    old = _result()
    del old["cpu_label"], old["batch"]
    line = bench_pruning.setup_line(old)
    assert line.startswith("AMD EPYC (avx2, fma, avx512f, avx512bw, avx512_vnni)") and "batch 1" in line


def test_replot_refuses_a_file_that_is_not_a_sweep(tmp_path, capsys):
    prefix = tmp_path / "pruning_0.33_0.5_zen4"
    Path(f"{prefix}.json").write_text(json.dumps({"plain ORT FP32": {"p50_ms": 20.0}}))
    assert "not a bench_pruning.py result (a bench_artifacts.py result?)" in \
        _refused(capsys, ["--replot", "--out", str(prefix)])
    assert "does not exist" in _refused(capsys, ["--replot", "--out", str(tmp_path / "none")])


def _fake_sweep(fail_with: BaseException, rows: int):
    seen = {}

    def sweep(args, work, progress):
        seen["work"] = work
        (work / "unpruned.onnx").write_bytes(b"x" * 100)
        progress.meta.update(_result(rows=None))
        progress.meta.pop("rows")
        for i in range(rows):
            progress.rows.append(_row(f"v{i}"))
        progress.stage = "timing the exports"
        progress.rounds.append({"order": ["unpruned", "v0"], "busy_share": 0.0,
                                "p50_ms": {"unpruned": 20.0, "v0": 10.0}})
        raise fail_with

    return sweep, seen


def _main_catching_ctrl_c(argv: list[str]) -> int:
    try:
        return bench_pruning.main(argv)
    except KeyboardInterrupt:  # escaping, it would stop pytest instead of failing the test
        pytest.fail("Ctrl-C escaped main() as a KeyboardInterrupt traceback")


def test_ctrl_c_writes_the_finished_rows_marked_partial_and_removes_the_temp_dir(tmp_path, capsys, monkeypatch):
    sweep, seen = _fake_sweep(KeyboardInterrupt(), rows=1)
    monkeypatch.setattr(bench_pruning, "_sweep", sweep)
    out = tmp_path / "sweep_0.33_0.5"
    assert _main_catching_ctrl_c(["--ratios", "0.33/0.5,0.5/0.75", "--criteria", "magnitude", "--rounds", "3",
                               "--out", str(out)]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "interrupted by Ctrl-C while timing the exports" in err[0]
    assert "1 of 2 pruned models" in err[0] and "1 of 3 timing rounds" in err[0]
    result = json.loads(Path(f"{out}.json").read_text())
    assert "interrupted" in result and result["rounds_completed"] == 1
    assert result["rows"][0]["p50_ratio"] == 0.5 and result["unpruned_p50_ms"] == 20.0
    assert Path(f"{out}.md").read_text().count("PARTIAL") == 1
    assert not seen["work"].exists()


def test_ctrl_c_before_any_row_writes_nothing(tmp_path, capsys, monkeypatch):
    sweep, seen = _fake_sweep(KeyboardInterrupt(), rows=0)
    monkeypatch.setattr(bench_pruning, "_sweep", sweep)
    out = tmp_path / "sweep"
    assert _main_catching_ctrl_c(["--out", str(out)]) == 130
    assert "nothing written" in capsys.readouterr().err
    assert not list(tmp_path.iterdir()) and not seen["work"].exists()


def test_the_temp_dir_is_removed_after_a_failure(tmp_path, monkeypatch):
    sweep, seen = _fake_sweep(RuntimeError("export failed"), rows=1)
    monkeypatch.setattr(bench_pruning, "_sweep", sweep)
    with pytest.raises(RuntimeError, match="export failed"):
        bench_pruning.main(["--out", str(tmp_path / "sweep")])
    assert not seen["work"].exists()


class _Session:
    def __init__(self, name: str, log: list[str]):
        self.name, self.log = name, log

    def run(self, outputs, feeds):
        self.log.append(self.name)


def test_timing_rotates_the_order_pauses_between_variants_and_records_rounds(monkeypatch):
    log: list[str] = []
    pauses: list[float] = []
    monkeypatch.setattr(bench_pruning.time, "sleep", pauses.append)
    names = ["unpruned", "a", "b"]
    done: list[dict] = []
    bench_pruning._time({n: _Session(n, log) for n in names}, {}, rounds=3, runs=5, done=done)
    assert [d["order"] for d in done] == [["unpruned", "a", "b"], ["a", "b", "unpruned"], ["b", "unpruned", "a"]]
    assert len(pauses) == 3 * 3 and all(p == bench_pruning.SWITCH_PAUSE_S > 0 for p in pauses)
    timed = log[9:]  # after 3 warm-up runs each: per round, per variant 1 untimed + 5 timed
    assert timed[:6] == ["unpruned"] * 6 and timed[6:12] == ["a"] * 6 and timed[18:24] == ["a"] * 6
    assert all(set(d["p50_ms"]) == set(names) for d in done)
    assert all(d["busy_share"] is None or 0 <= d["busy_share"] <= 1 for d in done)


def test_summary_keeps_per_round_ratios_and_flags_a_busy_cpu():
    rounds = [{"order": ["unpruned", "v"], "busy_share": 0.02, "p50_ms": {"unpruned": 20.0, "v": 12.0}},
              {"order": ["v", "unpruned"], "busy_share": 0.5, "p50_ms": {"unpruned": 40.0, "v": 16.0}},
              {"order": ["unpruned", "v"], "busy_share": 0.01, "p50_ms": {"unpruned": 20.0, "v": 11.0}}]
    summary = bench_pruning.summarise(rounds)
    assert summary["v"]["round_ratios"] == [0.6, 0.4, 0.55] and summary["v"]["ratio"] == 0.55
    progress = bench_pruning.Progress(meta={"seq": 128}, rows=[_row("v")], rounds=rounds)
    result = bench_pruning.compose(progress)
    assert result["cpu_busy_share"] == 0.5 and "busy_note" in result
    assert result["rows"][0]["round_ratios"] == [0.6, 0.4, 0.55]
    assert "WARNING: the CPU was busy" in bench_pruning.markdown({**_result(), **result})


def test_ctrl_c_leaves_the_ctrl_c_handler_as_it_found_it(tmp_path, monkeypatch):
    """main() runs in-process (these tests, a notebook): it ignored every later Ctrl-C."""
    import signal

    sweep, _ = _fake_sweep(KeyboardInterrupt(), rows=1)
    monkeypatch.setattr(bench_pruning, "_sweep", sweep)
    before = signal.getsignal(signal.SIGINT)
    assert _main_catching_ctrl_c(["--out", str(tmp_path / "sweep")]) == 130
    assert signal.getsignal(signal.SIGINT) is before
