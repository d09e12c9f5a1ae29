"""benchmarks/merge_bench.py as a new user meets it: legends and panels that tell devices, files,
models and thread counts apart, nothing left out unsaid, busy-CPU notes, file and model columns,
and mistakes (--out, an edge-convert manifest for an input) that give one short error line and
write nothing. No model, no timing: synthetic edge-bench documents built with
tests/test_bench.py's helpers."""

from __future__ import annotations

import copy
import errno
import json
import os
import shutil
from pathlib import Path

import pytest

import edge_runtime._contention as contention
from edge_runtime._bench import validate_bench
from edge_runtime._contention import BUSY_SHARE, busy_note
from test_bench import _doc, _record, merge_bench  # merge_bench: benchmarks/ is on sys.path there

ROOT = Path(__file__).resolve().parents[1]
VNNI = ["avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "sse2"]
AVX2 = ["avx2", "fma", "sse2"]


def _int8(seq, threads=2, batch=1, p50=2.0, metrics=None):
    metrics = {"cosine_mean": 0.9986} if metrics is None else metrics
    return _record(
        "onnx-int8", "int8", seq, [p50] * 3, metrics, batch=batch, threads=threads,
        nbytes=23_000_000,
    )


def _epyc(flags, records, created="2026-12-01T10:00:00+00:00"):
    doc = _doc("AMD EPYC 9R14 96-Core Processor", "x86_64", flags, None, records)
    doc["created_utc"] = created
    return doc


def _write(path: Path, doc) -> Path:
    assert validate_bench(doc) == [], "the synthetic document is a valid edge-bench result"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))
    return path


def _listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def _table_rows(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("| ") and "onnx-" in line]


def _one_error_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("merge_bench: error: ") and "Traceback" not in err
    return lines[0]


@pytest.fixture
def inputs(tmp_path):
    """Two valid files of one device in inputs/: a.json (32 and 64 tokens, 2 and 4 threads)
    and b.json (128 tokens)."""
    a = _write(
        tmp_path / "inputs" / "a.json",
        _epyc(AVX2, [_int8(32), _int8(64), _int8(32, threads=4), _int8(64, threads=4)]),
    )
    b = _write(tmp_path / "inputs" / "b.json", _epyc(AVX2, [_int8(128)], "2026-12-02T10:00:00Z"))
    return [a, b]


# -- 1: the latency legend ---------------------------------------------------------------------
def test_latency_legend_tells_apart_flags_files_and_threads(tmp_path):
    vnni = _write(tmp_path / "vnni.json", _epyc(VNNI, [_int8(32), _int8(128), _int8(32, 4)]))
    run1 = _write(tmp_path / "avx2-run1.json", _epyc(AVX2, [_int8(32), _int8(128)]))
    run2 = _write(
        tmp_path / "avx2-run2.json", _epyc(AVX2, [_int8(32), _int8(128)], "2026-12-03T08:00:00Z")
    )
    docs = merge_bench.load_results([vnni, run1, run2])
    labels = [line["label"] for line in merge_bench.latency_series(docs)]
    assert len(labels) == 4 and len(set(labels)) == 4, labels
    assert sorted(labels) == sorted(
        [
            "AMD EPYC 9R14 96-Core Processor (x86_64; avx2 fma avx512f avx512bw avx512_vnni): "
            "onnx-int8, 2 threads",
            "AMD EPYC 9R14 96-Core Processor (x86_64; avx2 fma avx512f avx512bw avx512_vnni): "
            "onnx-int8, 4 threads",
            "AMD EPYC 9R14 96-Core Processor (x86_64; avx2 fma) [avx2-run1.json]: "
            "onnx-int8, 2 threads",
            "AMD EPYC 9R14 96-Core Processor (x86_64; avx2 fma) [avx2-run2.json]: "
            "onnx-int8, 2 threads",
        ]
    )
    png = merge_bench.render_latency(docs)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_latency_legend_names_a_batch_other_than_one(tmp_path):
    path = _write(tmp_path / "b2.json", _epyc(AVX2, [_int8(32, batch=2), _int8(32, batch=4)]))
    docs = merge_bench.load_results([path])
    assert [line["label"] for line in merge_bench.latency_series(docs)] == [
        "AMD EPYC 9R14 96-Core Processor (x86_64; avx2 fma): onnx-int8, 2 threads, batch 2"
    ]
    assert "`b2.json`: latency plot at batch 2 (left out: batch x seq 4 x 32)" in (
        merge_bench.markdown(docs)
    )


# -- 2: the trade-off plot ---------------------------------------------------------------------
def test_tradeoff_plot_keeps_every_file_and_every_thread_count(inputs):
    docs = merge_bench.load_results(inputs)
    panels = merge_bench.tradeoff_panels(docs)
    assert sorted((p["files"], p["shape"]) for p in panels) == [
        (["a.json"], (1, 64)),  # a.json never measured 128 tokens: its own longest length
        (["b.json"], (1, 128)),
    ]
    a_panel = next(p for p in panels if p["files"] == ["a.json"])
    assert "(x86_64; avx2 fma)" in a_panel["title"]
    assert "batch 1 x 64 tokens" in a_panel["title"]
    [point] = a_panel["points"]
    assert point["text"] == "onnx-int8\n2 threads: 2.0 ms\n4 threads: 2.0 ms"
    text = merge_bench.markdown(docs)
    assert (
        "- `a.json`: latency plot at batch 1; trade-off plot at batch 1 x 64 tokens, every "
        "thread count (left out: batch x seq 1 x 32:" in text
    )
    assert "- `b.json`: latency plot at batch 1; trade-off plot at batch 1 x 128 tokens" in text
    assert merge_bench.render_tradeoff(docs)[:8] == b"\x89PNG\r\n\x1a\n"


def test_tradeoff_says_which_files_and_artifacts_lack_accuracy(inputs, tmp_path):
    no_acc = _write(tmp_path / "noacc.json", _epyc(VNNI, [_int8(128, metrics={})]))
    docs = merge_bench.load_results([*inputs, no_acc])
    assert all("noacc.json" not in p["files"] for p in merge_bench.tradeoff_panels(docs))
    assert "- `noacc.json`: latency plot at batch 1; not in the trade-off plot: no accuracy " \
        "metric" in merge_bench.markdown(docs)
    mixed = _epyc(AVX2, [_int8(128), _record("onnx-x", "int8", 128, [3.0] * 3, {})])
    docs = merge_bench.load_results([_write(tmp_path / "mixed.json", mixed)])
    assert "without an accuracy metric, not in the trade-off plot: onnx-x" in (
        merge_bench.markdown(docs)
    )


def test_two_runs_of_one_device_share_a_panel_and_keep_their_files_apart(inputs, tmp_path):
    again = _write(tmp_path / "c.json", _epyc(AVX2, [_int8(128, threads=4, p50=3.0)], "2027"))
    docs = merge_bench.load_results([inputs[1], again])
    [panel] = merge_bench.tradeoff_panels(docs)
    assert panel["files"] == ["b.json", "c.json"]
    [point] = panel["points"]
    assert point["text"] == "onnx-int8\n[b.json] 2 threads: 2.0 ms\n[c.json] 4 threads: 3.0 ms"
    assert point["p50_ms"] == 2.0


# -- 3: busy CPU -------------------------------------------------------------------------------
def test_a_busy_cpu_is_flagged_per_file_and_per_row(tmp_path, monkeypatch):
    busy_share = BUSY_SHARE + 0.2
    busy_doc = _epyc(AVX2, [_int8(32), _int8(128)])
    busy_doc["records"][0]["latency"]["cpu_wait_share"] = 0.01
    busy_doc["records"][1]["latency"]["cpu_wait_share"] = busy_share
    edge_doc = _epyc(VNNI, [_int8(32)])
    edge_doc["records"][0]["latency"]["cpu_wait_share"] = BUSY_SHARE  # at the line: not busy
    unreadable = _epyc(VNNI, [_int8(64)], "2027")
    unreadable["records"][0]["latency"]["cpu_wait_share"] = None
    old = _epyc(AVX2, [_int8(64)], "2025")  # written before cpu_wait_share existed
    paths = [
        _write(tmp_path / name, doc)
        for name, doc in (
            ("busy.json", busy_doc),
            ("edge.json", edge_doc),
            ("unreadable.json", unreadable),
            ("old.json", old),
        )
    ]
    text = merge_bench.markdown(merge_bench.load_results(paths))
    assert f"**Note:** `busy.json`: {busy_note(busy_share)}." in text
    assert text.count("**Note:**") == 1 and text.count("the CPU was busy during") == 1
    file_lines = [line for line in text.splitlines() if line.startswith("- `")]
    assert "CPU wait not recorded" in next(line for line in file_lines if "`old.json`:" in line)
    assert "CPU wait unreadable" in next(
        line for line in text.splitlines() if "`unreadable.json`:" in line
    )
    rows = _table_rows(text)
    busy_row = next(r for r in rows if "| 1 x 128 |" in r and "busy.json" in r)
    assert f"| {busy_share:.0%} busy |" in busy_row
    assert "| 1% |" in next(r for r in rows if "| 1 x 32 |" in r and "busy.json" in r)
    assert f"| {BUSY_SHARE:.0%} |" in next(r for r in rows if "edge.json" in r)
    # the threshold is edge_runtime._contention's, not a copy of it
    monkeypatch.setattr(contention, "BUSY_SHARE", 0.9)
    assert "**Note:**" not in merge_bench.markdown(merge_bench.load_results(paths))


# -- 4: the file column and duplicates ---------------------------------------------------------
def test_a_file_column_tells_rows_of_one_shape_apart(tmp_path):
    monday = _write(tmp_path / "run1" / "result.json", _epyc(AVX2, [_int8(128)]))
    tuesday = _write(
        tmp_path / "run2" / "result.json", _epyc(AVX2, [_int8(128)], "2026-12-02T10:00:00Z")
    )
    written = merge_bench.merge([monday, tuesday], tmp_path / "out" / "m")
    rows = _table_rows(written[0].read_text())
    assert len(rows) == 2
    assert "| `run1/result.json` | all-MiniLM-L6-v2 | x86-avx2 | onnx-int8 |" in rows[0]
    assert "| `run2/result.json` | all-MiniLM-L6-v2 | x86-avx2 | onnx-int8 |" in rows[1]
    header = next(line for line in written[0].read_text().splitlines() if "| artifact |" in line)
    assert header.startswith("| device (CPU; flags) | file | model | target | artifact |")


@pytest.mark.parametrize("spelling", ["same", "dot-dot", "symlink", "copy"])
def test_the_same_file_twice_is_refused(inputs, tmp_path, capsys, spelling):
    first = inputs[0]
    if spelling == "same":
        second = first
    elif spelling == "dot-dot":
        second = first.parent / ".." / first.parent.name / first.name
    elif spelling == "symlink":
        second = tmp_path / "link.json"
        second.symlink_to(first)
    else:
        second = tmp_path / "copy.json"
        shutil.copyfile(first, second)
    out = tmp_path / "out"
    out.mkdir()
    assert merge_bench.main([str(first), str(inputs[1]), str(second), "--out", str(out)]) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert "give it once" in line and str(second) in line
    assert _listing(out) == []


# -- 5 and 6: --out, and nothing written on a failure ------------------------------------------
@pytest.mark.parametrize(
    "out, says",
    [
        ("", "--out is empty"),
        ("   ", "--out is empty"),
        ("afile/x", "afile is a file, not a directory"),
        ("afile/deeper/x", "afile is a file, not a directory"),
        ("clash", "clash.md is a directory"),
        ("/sys/kernel/x", "/sys/kernel"),
        ("art/golden/m", "inside the artifact directory"),  # not in its manifest: signed loads refuse it
        ("art/", "inside the artifact directory"),
    ],
)
def test_a_bad_out_gives_one_error_line_and_writes_nothing(
    inputs, tmp_path, monkeypatch, capsys, out, says
):
    if out.startswith("/sys") and not Path("/sys/kernel").is_dir():
        pytest.skip("no /sys/kernel here")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("not a directory")
    (tmp_path / "clash.md").mkdir()
    (tmp_path / "art" / "golden").mkdir(parents=True)
    (tmp_path / "art" / "manifest.json").write_text(json.dumps({"schema_version": 1, "artifacts": [], "source": {}}))
    before = _listing(tmp_path)
    assert merge_bench.main([*map(str, inputs), "--out", out]) == 1
    captured = capsys.readouterr()
    assert says in _one_error_line(captured.err) and captured.out == ""
    assert _listing(tmp_path) == before
    assert not Path("/sys/kernel/x.md").exists()


def test_an_input_without_accuracy_fails_before_anything_is_written(tmp_path, capsys):
    no_acc = _write(tmp_path / "noacc.json", _epyc(AVX2, [_int8(128, metrics={})]))
    assert merge_bench.main([str(no_acc), "--out", str(tmp_path / "new" / "sub" / "m")]) == 1
    assert "accuracy metric" in _one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "new").exists(), "no directory, no .md, no -latency.png left behind"


def _earlier_merge(inputs, out: Path, capsys) -> dict[str, bytes]:
    """A merge into `out` that later runs must leave as it is; its files by name."""
    assert merge_bench.main([*map(str, inputs), "--out", str(out)]) == 0
    capsys.readouterr()
    return {p.name: p.read_bytes() for p in out.parent.iterdir()}


def _failing_on_call(real, number: int, code: int, calls: list):
    """`real`, _write_bytes(path, data) or os.replace(source, target), made to raise OSError `code`
    on its `number`-th call, naming the file it was writing (path, or target)."""
    def call(first, second):
        calls.append(first)
        if len(calls) == number:
            raise OSError(code, os.strerror(code), str(second if isinstance(second, (str, Path)) else first))
        real(first, second)

    return call


def test_a_failed_write_leaves_no_partial_output_and_keeps_older_results(
    inputs, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "results" / "m"
    older = _earlier_merge(inputs, out, capsys)
    assert sorted(older) == ["m-latency.png", "m-tradeoff.png", "m.md"]
    calls: list = []
    monkeypatch.setattr(merge_bench, "_write_bytes", _failing_on_call(merge_bench._write_bytes, 3, errno.ENOSPC, calls))
    assert merge_bench.main([str(inputs[1]), "--out", str(out)]) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert "m-tradeoff.png" in line and "No space left on device" in line
    assert {p.name: p.read_bytes() for p in out.parent.iterdir()} == older, "no temporary left"
    # into a directory the merge would have created: the directory goes again too
    calls.clear()
    assert merge_bench.main([*map(str, inputs), "--out", str(tmp_path / "fresh" / "m")]) == 1
    assert not (tmp_path / "fresh").exists()


def test_a_rename_failing_after_another_puts_the_earlier_merges_file_back(inputs, tmp_path, monkeypatch, capsys):
    """The second rename failed after the first had replaced m.md: the earlier merge's m.md was
    deleted by the clean-up, against "nothing written"."""
    out = tmp_path / "results" / "m"
    older = _earlier_merge(inputs, out, capsys)
    monkeypatch.setattr(os, "replace", _failing_on_call(os.replace, 2, errno.EIO, []))
    assert merge_bench.main([str(inputs[1]), "--out", str(out)]) == 1
    assert "nothing written" in _one_error_line(capsys.readouterr().err)
    assert {p.name: p.read_bytes() for p in out.parent.iterdir()} == older, "older files as they were, no leftovers"


def test_inputs_in_which_nothing_was_measured_say_so(tmp_path, capsys):
    record = _int8(128)
    record.update(status="error", error="golden mismatch", latency=None, throughput=None)
    failed = _write(tmp_path / "failed.json", _epyc(AVX2, [record]))
    assert merge_bench.main([str(failed), "--out", str(tmp_path / "m")]) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert "nothing was measured in any input" in line and "golden mismatch" in line, line


def test_an_existing_directory_or_a_trailing_slash_means_write_inside(inputs, tmp_path, capsys):
    existing = tmp_path / "merged"
    existing.mkdir()
    assert merge_bench.main([*map(str, inputs), "--out", str(existing)]) == 0
    names = ["edge_bench.md", "edge_bench-latency.png", "edge_bench-tradeoff.png"]
    assert capsys.readouterr().out.split() == [str(existing / n) for n in names]
    assert _listing(existing) == sorted(names)
    assert not (tmp_path / "merged.md").exists()
    assert merge_bench.main([*map(str, inputs), "--out", str(tmp_path / "new") + "/"]) == 0
    assert _listing(tmp_path / "new") == sorted(names)
    assert not (tmp_path / "new.md").exists()


def test_the_default_out_is_the_current_directory_and_help_says_so(
    inputs, tmp_path, monkeypatch, capsys
):
    with pytest.raises(SystemExit) as exit_:
        merge_bench.main(["--help"])
    assert exit_.value.code == 0
    help_text = " ".join(capsys.readouterr().out.split())
    assert "Default: edge_bench, i.e. ./edge_bench.md etc. in the current directory" in help_text
    assert "An existing directory or a path ending in '/' means DIR/edge_bench.md" in help_text
    results = ROOT / "benchmarks" / "results"
    repo_before = {p.name: p.stat().st_mtime_ns for p in results.iterdir()}
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    assert merge_bench.main([str(p) for p in inputs]) == 0
    assert _listing(cwd) == ["edge_bench-latency.png", "edge_bench-tradeoff.png", "edge_bench.md"]
    assert {p.name: p.stat().st_mtime_ns for p in results.iterdir()} == repo_before


def test_an_unreadable_input_gives_one_line(tmp_path, capsys):
    binary = tmp_path / "binary.json"
    binary.write_bytes(b"\xff\xfe\x00")
    out = tmp_path / "out"
    for path in (binary, tmp_path / "missing.json", tmp_path):
        assert merge_bench.main([str(path), "--out", str(out)]) == 1
        assert "cannot read an edge-bench JSON file" in _one_error_line(capsys.readouterr().err)
    invalid = _epyc(AVX2, [_int8(128)])
    invalid = copy.deepcopy(invalid) | {"records": "none"}
    (tmp_path / "invalid.json").write_text(json.dumps(invalid))
    assert merge_bench.main([str(tmp_path / "invalid.json"), "--out", str(out)]) == 1
    assert "not a valid edge-bench result" in _one_error_line(capsys.readouterr().err)
    assert not out.exists() and not (tmp_path / "out.md").exists()


# -- 5: the source model (review 3, F4 and F9) ---------------------------------------------------
def test_a_manifest_given_for_a_result_is_one_short_line(tmp_path, capsys):
    """An edge-convert manifest.json was a ~3 KB line: every schema problem quoted its value,
    the whole target profile with its notes."""
    directory = tmp_path / "out1"
    directory.mkdir()
    profile = {"id": "x86-avx2", "notes": "a measured note " * 150}
    manifest = {"schema_version": 1, "created_by": {"converter": "0.1.0"}, "target": profile,
                "source": {"name": "tiny"}, "artifacts": [{"name": "onnx-int8"}]}
    (directory / "manifest.json").write_text(json.dumps(manifest))
    assert merge_bench.main([str(directory / "manifest.json"), "--out", str(tmp_path / "m")]) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert line == (
        f"merge_bench: error: {directory / 'manifest.json'}: an edge-convert manifest, not an "
        f"edge-bench result; benchmark that directory with `edge-bench {directory} --json OUT` "
        "and merge OUT"
    )
    # any other wrong document: each problem quotes at most PROBLEM_CHARS of what it found
    (tmp_path / "other.json").write_text(json.dumps({"schema_version": 1, "target": profile}))
    assert merge_bench.main([str(tmp_path / "other.json"), "--out", str(tmp_path / "m")]) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert "$.target: expected str" in line and "…" in line
    assert "a measured note " * 20 not in line
    assert not list(tmp_path.glob("m*"))


def _model_docs(tmp_path):
    """One device, two files converted from two models."""
    tiny = _epyc(AVX2, [_int8(32, p50=0.7)]) | {"source_model": "tiny"}
    minilm = _epyc(AVX2, [_int8(32)], "2026-12-02T10:00:00Z")
    return merge_bench.load_results(
        [_write(tmp_path / "eb1.json", tiny), _write(tmp_path / "mini.json", minilm)]
    )


def test_the_table_and_plots_name_the_model(tmp_path):
    """Results of two models on one device were told apart only by their file names."""
    docs = _model_docs(tmp_path)
    text = merge_bench.markdown(docs)
    rows = _table_rows(text)
    assert "| `eb1.json` | tiny | x86-avx2 | onnx-int8 |" in rows[0]
    assert "| `mini.json` | all-MiniLM-L6-v2 | x86-avx2 | onnx-int8 |" in rows[1]
    assert (
        "- `eb1.json`: AMD EPYC 9R14 96-Core Processor (x86_64; avx2 fma), model tiny, "
        "target x86-avx2" in text
    )
    labels = [line["label"] for line in merge_bench.latency_series(docs)]
    cpu = "AMD EPYC 9R14 96-Core Processor (x86_64; avx2 fma)"
    assert labels == [
        f"{cpu} [eb1.json]: onnx-int8 of tiny, 2 threads",
        f"{cpu} [mini.json]: onnx-int8 of all-MiniLM-L6-v2, 2 threads",
    ]
    [panel] = merge_bench.tradeoff_panels(docs)  # one device, one shape: one panel, two models
    assert panel["models"] == ["tiny", "all-MiniLM-L6-v2"]
    assert "\ntiny, all-MiniLM-L6-v2\n" in panel["title"]
    assert sorted(p["text"].splitlines()[0] for p in panel["points"]) == [
        "onnx-int8 of all-MiniLM-L6-v2", "onnx-int8 of tiny"]
    title = merge_bench.figure_title(docs, "size vs accuracy")
    assert title == "edge-bench, several models: size vs accuracy"
    # one model: its name in the titles, the legend and the points as before
    one = docs[1:]
    assert merge_bench.figure_title(one, "x") == "edge-bench, all-MiniLM-L6-v2: x"
    assert [line["label"] for line in merge_bench.latency_series(one)] == [
        f"{cpu}: onnx-int8, 2 threads"
    ]
    [panel] = merge_bench.tradeoff_panels(one)
    assert "all-MiniLM-L6-v2" not in panel["title"]
    assert panel["points"][0]["text"].startswith("onnx-int8\n")
    # a result without a recorded model: its artifact directory stands in
    nameless = copy.deepcopy(docs[0]) | {"source_model": None}
    assert merge_bench.model_name(nameless) == "/data/out"
