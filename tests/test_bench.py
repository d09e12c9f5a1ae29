"""edge-bench (the on-device benchmark) and benchmarks/merge_bench.py (the workstation merge).

Durations are never asserted: only their relations (p50 <= p90 <= p99, load <= load-to-first-
result) and exact facts (counts, the RSS split adding up, which cache a load used)."""

from __future__ import annotations

import copy
import json
import platform
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

import edge_runtime
from converters import ConvertConfig, convert
from edge_runtime import cli_bench
from edge_runtime._bench import BENCH_SCHEMA_VERSION, make_feeds, render_markdown, validate_bench
from edge_runtime._contention import _stalled_us
from edge_runtime._bench_probe import process_memory
from edge_runtime._manifest import read_manifest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import merge_bench  # noqa: E402

SEQS, BATCHES, RUNS, ROUNDS = (8, 16), (1, 2), 6, 3


@pytest.fixture(scope="module")
def artifacts(tiny_model_factory, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bench") / "artifacts"
    convert(
        ConvertConfig(
            model=tiny_model_factory("bert", "feature-extraction"),
            target="x86-avx2",
            out=out,
            latency_runs=2,
        )
    )
    return out


@pytest.fixture(scope="module")
def bench_run(artifacts, tmp_path_factory):
    """edge-bench through its entry point: (exit code, stdout, JSON document)."""
    out = tmp_path_factory.mktemp("bench-json") / "result.json"
    argv = [
        str(artifacts),
        "--all",
        "--seq",
        ",".join(map(str, SEQS)),
        "--batch",
        str(BATCHES[0]),
        "--batch",
        str(BATCHES[1]),
        "--runs",
        str(RUNS),
        "--warmup",
        "1",
        "--rounds",
        str(ROUNDS),
        "--json",
        str(out),
        "-q",
    ]
    import contextlib
    import io

    stdout = io.StringIO()
    before = _user_cache_listing()
    with contextlib.redirect_stdout(stdout):
        code = cli_bench.main(argv)
    _USER_CACHE_AROUND_THE_RUN.update(before=before, after=_user_cache_listing())
    return code, stdout.getvalue(), json.loads(out.read_text())


_USER_CACHE_AROUND_THE_RUN: dict[str, dict] = {}


def _user_cache_listing() -> dict[str, tuple[int, int]]:
    """Every file under the user's edge_runtime cache with its size and mtime. Other tests in
    the session may have filled that cache already; a benchmark must leave it as it was."""
    from edge_runtime.backends._cache import default_cache_dir

    root = default_cache_dir()
    if not root.exists():
        return {}
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in root.rglob("*")
        if p.is_file()
    }


# -- the real run ------------------------------------------------------------------------------
@pytest.mark.slow
def test_bench_json_matches_schema_and_covers_every_measurement(bench_run, artifacts):
    code, _, doc = bench_run
    assert code == 0
    assert validate_bench(doc) == []
    assert doc["schema_version"] == BENCH_SCHEMA_VERSION and doc["tool"] == "edge-bench"
    assert doc["command"][:2] == ["edge-bench", str(artifacts)] and "--all" in doc["command"]
    assert doc["device"]["arch"] == platform.machine() and doc["device"]["cpu_model"]
    assert doc["versions"]["edge_runtime"] == edge_runtime.__version__
    assert "onnxruntime" in doc["versions"]["backends"]
    shipped = [a["name"] for a in read_manifest(artifacts)["artifacts"]]
    measured = sorted((r["artifact"], r["batch"], r["seq"]) for r in doc["records"])
    assert measured == sorted((a, b, s) for a in shipped for b in BATCHES for s in SEQS)


@pytest.mark.slow
def test_bench_numbers_are_sane(bench_run):
    _, _, doc = bench_run
    for r in doc["records"]:
        assert r["status"] == "ok" and r["error"] is None, r
        assert r["golden"] == "passed" and r["input"] == "text"
        assert r["backend"].startswith("onnxruntime") and r["threads"] >= 1
        lat = r["latency"]
        assert 0 < lat["min_ms"] <= lat["p50_ms"] <= lat["p90_ms"] <= lat["p99_ms"] <= lat["max_ms"]
        assert lat["runs"] == RUNS and len(lat["round_p50_ms"]) == ROUNDS
        share = lat["cpu_wait_share"]  # None only where the kernel has no pressure-stall file
        assert (share is None) == (_stalled_us(Path("/proc/pressure/cpu")) is None)
        assert share is None or 0 <= share <= 1
        assert r["throughput"]["sequences_per_s"] == pytest.approx(
            r["batch"] * 1e3 / lat["mean_ms"]
        )
        assert r["throughput"]["tokens_per_s"] == pytest.approx(
            r["throughput"]["sequences_per_s"] * r["seq"]
        )
        for kind in ("load_first", "load_second"):
            load = r[kind]
            assert load["status"] == "ok", load["error"]
            assert 0 < load["open_s"] <= load["load_s"] < load["load_to_first_result_s"]
            assert load["load_to_first_result_s"] == pytest.approx(
                load["load_s"] + load["first_result_s"], abs=1e-3
            )
            assert load["spawn_to_first_result_s"] > load["load_to_first_result_s"]
            mem = load["memory"]
            assert (
                mem["source"] == "proc"
                and mem["rss_bytes"] > 0
                and mem["peak_rss_bytes"] >= mem["rss_bytes"]
            )
            # the kernel's split adds up exactly (same kB units): anonymous + file + shmem = RSS
            assert (
                mem["rss_anon_bytes"] + mem["rss_file_bytes"] + mem["rss_shmem_bytes"]
                == mem["rss_bytes"]
            )
            assert mem["rss_anon_bytes"] > 0 and mem["rss_file_bytes"] > 0
        # the first load of a fresh cache builds it; the second, a new process, uses it
        if r["load_first"]["device_cache"] == "created":
            assert r["load_second"]["device_cache"] == "reused"
        else:
            assert r["load_first"]["device_cache"] == r["load_second"]["device_cache"] == "none"


@pytest.mark.slow
def test_bench_markdown_has_a_row_per_record(bench_run):
    _, stdout, doc = bench_run
    assert stdout == render_markdown(doc)
    rows = [line for line in stdout.splitlines() if line.startswith("| onnx-")]
    assert len(rows) == len(doc["records"])
    for record in doc["records"]:
        assert any(
            row.startswith(f"| {record['artifact']} |")
            and f"| {record['batch']} x {record['seq']} |" in row
            and row.rstrip().endswith("| passed | ok |")
            for row in rows
        )
    assert doc["device"]["cpu_model"] in stdout


@pytest.mark.slow
def test_bench_leaves_the_user_caches_alone(bench_run, artifacts):
    from edge_runtime._tune import cache_file

    assert not cache_file(artifacts).exists(), "no tuning sweep written by a benchmark"
    # Other tests in the session may have filled the user's cache; the run must not touch it.
    around = _USER_CACHE_AROUND_THE_RUN
    assert around["before"] == around["after"], "edge-bench changed the user's device caches"


@pytest.mark.slow
def test_no_verify_reports_the_golden_check_not_run(artifacts, tmp_path, capsys):
    out = tmp_path / "r.json"
    code = cli_bench.main(
        [
            str(artifacts),
            "--artifact",
            "onnx-int8",
            "--seq",
            "8",
            "--runs",
            "2",
            "--rounds",
            "1",
            "--warmup",
            "0",
            "--no-verify",
            "--json",
            str(out),
            "-q",
        ]
    )
    assert code == 0
    doc = json.loads(out.read_text())
    assert validate_bench(doc) == [] and doc["settings"]["verify"] is False
    assert [(r["artifact"], r["golden"]) for r in doc["records"]] == [("onnx-int8", "not-run")]
    assert "| not-run | ok |" in capsys.readouterr().out


def test_fewer_runs_than_rounds_are_said_and_recorded_as_run(artifacts, tmp_path, capsys):
    """Every round times every artifact at least once, so 2 runs make 2 rounds: the JSON recorded
    the 5 asked for."""
    out = tmp_path / "r.json"
    code = cli_bench.main([str(artifacts), "--artifact", "onnx-int8", "--seq", "8", "--runs", "2", "--rounds", "5",
                           "--warmup", "0", "--no-verify", "--json", str(out)])
    assert code == 0
    doc = json.loads(out.read_text())
    assert validate_bench(doc) == [] and doc["settings"]["rounds"] == 2
    assert "2 timed runs make 2 rounds, not 5: give --runs at least 5" in capsys.readouterr().err


def test_warmup_zero_is_recorded_as_the_one_run(artifacts, tmp_path):
    """--warmup 0 still runs one untimed run (a shape that cannot run is found there): the JSON
    says 1, what ran (a review found 0 recorded)."""
    out = tmp_path / "w.json"
    assert cli_bench.main([str(artifacts), "--artifact", "onnx-int8", "--seq", "8", "--runs", "2", "--rounds", "1",
                           "--warmup", "0", "--no-verify", "--json", str(out), "-q"]) == 0
    doc = json.loads(out.read_text())
    assert validate_bench(doc) == [] and doc["settings"]["warmup"] == 1


def _probe_answers(monkeypatch, stdout: str, returncode: int) -> None:
    """Every load probe's child process answers `stdout` and exits with `returncode`."""
    import subprocess

    from edge_runtime import _bench

    def fake_run(args, **kwargs):
        return subprocess.CompletedProcess(args, returncode, stdout=stdout, stderr="MemoryError\n")

    monkeypatch.setattr(_bench.subprocess, "run", fake_run)


@pytest.mark.parametrize("how", ["error", "killed"])
def test_a_failed_load_probe_is_reported_and_fails_the_run(artifacts, tmp_path, capsys, monkeypatch, how):
    """A load probe that answers an error (its load raised) or dies (SIGKILL, as from the OOM
    killer): the table and the JSON are still written, the error is named, exit status 1. A
    review found a KeyError traceback (no JSON) for the first and exit status 0 for the second."""
    from edge_runtime._bench_probe import PROBE_MARKER

    if how == "error":
        _probe_answers(monkeypatch, PROBE_MARKER + ' {"status": "error", "error": "InputError: too long"}\n', 1)
    else:
        _probe_answers(monkeypatch, "", -9)
    out = tmp_path / "p.json"
    code = cli_bench.main([str(artifacts), "--artifact", "onnx-int8", "--seq", "8", "--runs", "2", "--rounds", "1",
                           "--no-verify", "--json", str(out), "-q"])
    captured = capsys.readouterr()
    assert code == 1
    doc = json.loads(out.read_text())
    assert validate_bench(doc) == []
    (record,) = doc["records"]
    assert record["load_first"]["status"] == record["load_second"]["status"] == "error"
    said = "InputError: too long" if how == "error" else "load probe died (signal 9)"
    assert said in record["load_first"]["error"] and said in captured.out
    assert "measurements failed" in captured.err


@pytest.mark.slow
def test_bad_settings_name_the_flag(artifacts, capsys):
    assert cli_bench.main([str(artifacts), "--seq", "100000", "-q"]) == 2
    err = capsys.readouterr().err
    assert "--seq" in err and "max_length" in err
    assert cli_bench.main([str(artifacts), "--seq", "1", "-q"]) == 2
    assert "--seq: 1 is shorter than the 2 special tokens" in capsys.readouterr().err
    # not a malformed flag but a name the directory lacks: exit 1, as edge-run and edge-tune
    assert cli_bench.main([str(artifacts), "--artifact", "nope", "-q"]) == 1
    err = capsys.readouterr().err
    assert "no artifact 'nope'" in err and "onnx-int8" in err


@pytest.mark.slow
def test_feeds_without_a_tokenizer_are_valid_random_ids(artifacts):
    manifest = read_manifest(artifacts)
    text, kind = make_feeds(artifacts, manifest, 2, 8)
    assert kind == "text" and text["input_ids"].shape == (2, 8) and text["attention_mask"].all()
    assert (text["input_ids"][0] != text["input_ids"][1]).any(), "rows start at different sentences"
    no_tokenizer = {k: v for k, v in manifest.items() if k != "tokenizer"}
    feeds, kind = make_feeds(artifacts, no_tokenizer, 3, 8)
    assert kind == "random-ids" and set(feeds) == {i["name"] for i in manifest["inputs"]}
    assert all(a.shape == (3, 8) and a.dtype == np.int64 for a in feeds.values())
    assert feeds["attention_mask"].all() and feeds["input_ids"].min() >= 1
    output = edge_runtime.load(artifacts, artifact="onnx-fp32", threads=1).run(feeds)
    assert np.isfinite(next(iter(output.values()))).all()


@pytest.mark.slow
def test_no_backend_for_any_artifact_is_named_before_tokenizing(artifacts, capsys, monkeypatch):
    """A venv with no backend extra: the backend is what is missing (not `tokenizers`), said
    before any input is made."""
    from edge_runtime import _bench

    monkeypatch.setattr(_bench.backends, "backend_available", lambda fmt: False)
    monkeypatch.setattr(_bench, "make_feeds", lambda *a: pytest.fail("inputs made without a backend"))
    assert cli_bench.main([str(artifacts), "--all", "-q"]) == 1
    err = capsys.readouterr().err
    assert "need an onnx backend; install onnxruntime" in err and "tokenizers" not in err


@pytest.mark.slow
def test_nothing_measured_is_a_failure(artifacts, capsys, monkeypatch):
    """--all where every artifact is skipped (a backend for another format only) exits 1."""
    from edge_runtime import _bench

    def all_skipped(root, target, config, work, say):
        for record in target.records.values():
            _bench._fail(record, "skipped", "no onnx backend installed here (test)")

    monkeypatch.setattr(_bench, "_load_here", all_skipped)
    assert cli_bench.main([str(artifacts), "--all", "--seq", "8", "--batch", "1", "--runs", "2",
                           "--rounds", "1", "-q"]) == 1
    captured = capsys.readouterr()
    assert "skipped" in captured.out and "nothing was measured" in captured.err


@pytest.mark.slow
def test_all_on_a_trimmed_copy_skips_the_artifacts_it_lacks(artifacts, tmp_path, capsys):
    """README: a device copy may keep only the artifacts it runs. --all lists the others as
    skipped (exit 0); naming a missing one is still an error."""
    trimmed = tmp_path / "trimmed"
    shutil.copytree(artifacts, trimmed)
    manifest = json.loads((trimmed / "manifest.json").read_text())
    kept = "onnx-int8"
    for entry in manifest["artifacts"]:
        if entry["name"] != kept:
            for item in entry["files"]:
                (trimmed / item["path"]).unlink(missing_ok=True)
    assert cli_bench.main([str(trimmed), "--all", "--seq", "8", "--batch", "1", "--runs", "2", "--rounds", "1",
                           "-q"]) == 0
    out = capsys.readouterr().out
    rows = {line.split(" | ")[0].strip("| "): line for line in out.splitlines() if line.startswith("| ")}
    assert rows[kept].endswith("| ok |")
    for entry in manifest["artifacts"]:
        if entry["name"] != kept:
            assert "skipped: none of its model files is in this directory" in rows[entry["name"]]
    other = next(e["name"] for e in manifest["artifacts"] if e["name"] != kept)
    assert cli_bench.main([str(trimmed), "--artifact", other, "--seq", "8", "--runs", "2", "--rounds", "1", "-q"]) == 1


# -- units (no model) --------------------------------------------------------------------------
def test_bad_settings_fail_before_any_work(tmp_path, capsys):
    assert cli_bench.main([str(tmp_path), "--runs", "0"]) == 2
    assert "--runs" in capsys.readouterr().err
    assert cli_bench.main([str(tmp_path), "--batch", "1,-2"]) == 2
    assert "--batch" in capsys.readouterr().err
    assert cli_bench.main([str(tmp_path / "missing"), "-q"]) == 1
    assert "missing does not exist" in capsys.readouterr().err
    a_file = tmp_path / "afile"
    a_file.write_text("x")
    assert cli_bench.main([str(tmp_path), "--json", str(a_file / "x.json")]) == 2
    assert f"{a_file} is a file, not a directory" in capsys.readouterr().err


def test_process_memory_reads_the_status_split(tmp_path):
    status = tmp_path / "status"
    status.write_text(
        "Name:\tpython\nVmHWM:\t  200 kB\nVmRSS:\t  150 kB\nRssAnon:\t  100 kB\n"
        "RssFile:\t   40 kB\nRssShmem:\t   10 kB\n"
    )
    assert process_memory(str(status)) == {
        "rss_bytes": 150 * 1024,
        "rss_anon_bytes": 100 * 1024,
        "rss_file_bytes": 40 * 1024,
        "rss_shmem_bytes": 10 * 1024,
        "peak_rss_bytes": 200 * 1024,
        "source": "proc",
    }
    fallback = process_memory(str(tmp_path / "no-proc"))
    assert (
        fallback["source"] == "psutil"
        and fallback["rss_bytes"] > 0
        and fallback["rss_anon_bytes"] is None
    )
    assert fallback["peak_rss_bytes"] >= fallback["rss_bytes"] // 2


def _record(artifact, precision, seq, round_p50, metrics, batch=1, threads=2, nbytes=1_000_000):
    p50 = float(np.median(round_p50))
    load = {
        "status": "ok",
        "error": None,
        "import_s": 0.1,
        "backend_import_s": 0.2,
        "open_s": 0.05,
        "load_s": 0.06,
        "first_result_s": 0.01,
        "load_to_first_result_s": 0.07,
        "spawn_to_first_result_s": 0.5,
        "device_cache": "reused",
        "memory": {
            "rss_bytes": 3 << 20,
            "rss_anon_bytes": 2 << 20,
            "rss_file_bytes": 1 << 20,
            "rss_shmem_bytes": 0,
            "peak_rss_bytes": 4 << 20,
            "source": "proc",
        },
    }
    return {
        "artifact": artifact,
        "format": "onnx",
        "precision": precision,
        "bytes": nbytes,
        "metrics": metrics,
        "backend": "onnxruntime 1.32.0 (CPUExecutionProvider)",
        "batch": batch,
        "seq": seq,
        "threads": threads,
        "input": "text",
        "status": "ok",
        "error": None,
        "golden": "passed",
        "latency": {
            "p50_ms": p50,
            "p90_ms": p50 * 1.2,
            "p99_ms": p50 * 1.5,
            "mean_ms": p50 * 1.05,
            "min_ms": p50 * 0.9,
            "max_ms": p50 * 2,
            "runs": 9,
            "round_p50_ms": list(round_p50),
        },
        "throughput": {"sequences_per_s": 1e3 / p50, "tokens_per_s": seq * 1e3 / p50},
        "load_first": load | {"device_cache": "created"},
        "load_second": load,
    }


def _doc(cpu, arch, flags, board, records):
    sensors = {
        "load_average": [0.5, 0.75, 1.0],
        "temperature_c": {"cpu-thermal": 51.5},
        "cpufreq_khz": {"cpu0": 1800000},
        "throttled": None
        if board is None
        else {"raw": "0x50000", "under_voltage": False, "under_voltage_occurred": True},
    }
    return {
        "schema_version": BENCH_SCHEMA_VERSION,
        "tool": "edge-bench",
        "created_utc": "2026-12-01T10:00:00+00:00",
        "command": ["edge-bench", "out", "--all"],
        "artifact_dir": "/data/out",
        "target": "rpi5" if board else "x86-avx2",
        "source_model": "all-MiniLM-L6-v2",
        "task": "feature-extraction",
        "versions": {
            "edge_runtime": "0.1.0",
            "python": "3.11.2",
            "numpy": "2.2.0",
            "backends": {"onnxruntime": "1.32.0"},
        },
        "device": {
            "arch": arch,
            "cpu_model": cpu,
            "isa_features": flags,
            "board": board,
            "profile": None,
            "profile_reason": "synthetic",
            "logical_cores": 4,
        },
        "sensors_before": sensors,
        "sensors_after": sensors,
        "settings": {
            "artifacts": [],
            "all_artifacts": True,
            "seqs": [32, 128],
            "batches": [1],
            "threads": [None],
            "runs": 9,
            "warmup": 2,
            "rounds": 3,
            "verify": True,
            "device_cache": "temporary",
        },
        "records": records,
    }


@pytest.fixture
def two_devices(tmp_path):
    x86 = _doc(
        "Intel Core i5-8250U",
        "x86_64",
        ["avx2", "fma", "sse2"],
        None,
        [
            _record(
                "onnx-fp32", "fp32", 32, [4.0, 4.0, 8.0], {"cosine_mean": 1.0}, nbytes=90_000_000
            ),
            _record(
                "onnx-fp32",
                "fp32",
                128,
                [10.0, 10.0, 20.0],
                {"cosine_mean": 1.0},
                nbytes=90_000_000,
            ),
            _record(
                "onnx-int8", "int8", 32, [2.0, 3.0, 4.0], {"cosine_mean": 0.9986}, nbytes=23_000_000
            ),
            # per-round ratios 0.5, 0.6, 0.2: median 0.5 (a ratio of the p50s would say 6/10 = 0.6)
            _record(
                "onnx-int8",
                "int8",
                128,
                [5.0, 6.0, 4.0],
                {"cosine_mean": 0.9986},
                nbytes=23_000_000,
            ),
        ],
    )
    pi = _doc(
        "Cortex-A76",
        "aarch64",
        ["asimd", "asimddp", "fphp"],
        "Raspberry Pi 5 Model B Rev 1.0",
        [
            _record(
                "onnx-int8",
                "int8",
                32,
                [9.0, 9.0, 9.0],
                {"cosine_mean": 0.9990},
                threads=4,
                nbytes=23_000_000,
            ),
            _record(
                "onnx-int8",
                "int8",
                128,
                [30.0, 31.0, 29.0],
                {"cosine_mean": 0.9990},
                threads=4,
                nbytes=23_000_000,
            ),
        ],
    )
    paths = []
    for name, doc in (("x86.json", x86), ("pi5.json", pi)):
        assert validate_bench(doc) == [], "the synthetic document is a valid edge-bench result"
        (tmp_path / name).write_text(json.dumps(doc))
        paths.append(tmp_path / name)
    return paths


def test_validator_finds_each_kind_of_problem(two_devices):
    doc = json.loads(two_devices[0].read_text())
    assert validate_bench(doc) == []
    broken = copy.deepcopy(doc)
    del broken["device"]["cpu_model"]
    broken["records"][0]["latency"]["p50_ms"] = "fast"
    broken["records"][1]["golden"] = "maybe"
    broken["records"][2]["extra"] = 1
    broken["records"][3]["bytes"] = True
    problems = validate_bench(broken)
    assert problems == [
        "$.device.cpu_model: missing",
        "$.records[0].latency.p50_ms: expected int or float, got str 'fast'",
        "$.records[1].golden: 'maybe' is not one of ['passed', 'failed', 'not-run']",
        "$.records[2].extra: unexpected field",
        "$.records[3].bytes: expected int, got a bool",
    ]
    no_timing = copy.deepcopy(doc)
    no_timing["records"][0]["latency"] = None
    assert validate_bench(no_timing) == ["$.records[0]: status ok without latency/throughput"]
    newer = copy.deepcopy(doc) | {"schema_version": BENCH_SCHEMA_VERSION + 1}
    assert "this reader knows" in validate_bench(newer)[0]
    assert validate_bench([]) == ["$: expected an object, got list"]


def test_render_markdown_of_a_synthetic_result(two_devices):
    doc = json.loads(two_devices[1].read_text())
    text = render_markdown(doc)
    assert "Raspberry Pi 5 Model B Rev 1.0 (Cortex-A76, aarch64; asimd asimddp fphp)" in text
    assert "throttling: under_voltage_occurred" in text and "max temperature 51.5 °C" in text
    assert "load average 0.5 / 0.75 / 1.0 (1/5/15 min)" in text
    assert text.count("| onnx-int8 |") == 2
    assert "- 9 timed runs after 2 warm-up runs, in 3 interleaved rounds;" in text
    # fewer runs than rounds asked: every round times each artifact once, so as many rounds as runs
    doc["settings"].update(runs=2, rounds=5)
    assert "- 2 timed runs after 2 warm-up runs, in 2 interleaved rounds;" in render_markdown(doc)


def test_merge_writes_one_table_and_two_plots(two_devices, tmp_path):
    written = merge_bench.merge(two_devices, tmp_path / "merged")
    assert [p.name for p in written] == ["merged.md", "merged-latency.png", "merged-tradeoff.png"]
    table = written[0].read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ") and "onnx-" in line]
    assert len(rows) == 6
    x86_rows = [r for r in rows if r.startswith("| Intel Core i5-8250U (x86_64; avx2 fma) |")]
    pi_rows = [
        r
        for r in rows
        if r.startswith(
            "| Raspberry Pi 5 Model B Rev 1.0 (Cortex-A76, aarch64; asimd asimddp fphp) |"
        )
    ]
    assert len(x86_rows) == 4 and len(pi_rows) == 2
    int8_128 = next(r for r in x86_rows if "| onnx-int8 |" in r and "| 1 x 128 |" in r)
    assert "| 0.500x |" in int8_128, "median of per-round ratios"
    assert "| 0.9986 (cosine_mean) |" in int8_128
    # the Pi file has no FP32 artifact: no ratio, and never one against the x86 FP32
    assert all("| — |" in r for r in pi_rows)
    assert "under_voltage_occurred" in table and "load 0.5" in table
    import matplotlib.image

    for png in written[1:]:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        height, width = matplotlib.image.imread(png).shape[:2]
        assert width >= 600 and height >= 400


def test_merge_refuses_a_file_that_is_not_a_bench_result(two_devices, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"schema_version": 1}))
    with pytest.raises(
        merge_bench.MergeError,
        match=r"(?s)bad.json: not a valid edge-bench result.*records: missing",
    ):
        merge_bench.merge([two_devices[0], bad], tmp_path / "m")
    assert merge_bench.main([str(bad), "--out", str(tmp_path / "m")]) == 1


def test_a_busy_cpu_is_named_in_the_report_and_old_files_stay_valid(two_devices):
    doc = json.loads(two_devices[0].read_text())
    # files written before cpu_wait_share existed lack it: still valid, no note
    assert all("cpu_wait_share" not in r["latency"] for r in doc["records"])
    assert validate_bench(doc) == [] and "busy" not in render_markdown(doc)
    quiet = copy.deepcopy(doc)
    for r in quiet["records"]:
        r["latency"]["cpu_wait_share"] = 0.02
    assert validate_bench(quiet) == [] and "busy" not in render_markdown(quiet)
    busy = copy.deepcopy(quiet)
    busy["records"][2]["latency"]["cpu_wait_share"] = 0.6
    busy["records"][3]["latency"]["cpu_wait_share"] = None  # unreadable there
    assert validate_bench(busy) == []
    assert "**Note:** the CPU was busy during 60% of the timed runs" in render_markdown(busy)
    busy["records"][0]["latency"]["cpu_wait_share"] = "high"
    assert validate_bench(busy) == [
        "$.records[0].latency.cpu_wait_share: expected int or float, got str 'high'"
    ]
