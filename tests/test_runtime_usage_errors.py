"""Mistakes a user makes with the device package's API and CLIs get an error that names what to
fix, before anything is read or measured; interruptions end quietly. No artifacts needed: each
check fires before the directory is opened (or the library call is replaced)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

import edge_runtime
from edge_runtime import _bench_report, _load_args, cli, cli_bench, cli_serve, cli_tune
from edge_runtime._select import max_threads


@pytest.mark.parametrize(
    "kwargs, named",
    [
        ({"spinning": "no"}, "spinning"),  # a truthy string would have turned spinning on
        ({"spinning": 1}, "spinning"),
        ({"tune": "yes"}, "tune"),
        ({"memory_budget_mb": "a"}, "memory_budget_mb"),
        ({"memory_budget_mb": -5}, "memory_budget_mb"),
        ({"memory_budget_mb": 0}, "memory_budget_mb"),
        ({"memory_budget_mb": math.nan}, "memory_budget_mb"),
        ({"memory_budget_mb": True}, "memory_budget_mb"),
        ({"device_cache": ""}, "device_cache"),  # would have cached into the working directory
        ({"device_cache": 0}, "device_cache"),
        ({"device_cache": "no"}, r"device_cache='no' reads as a switch.*pass True or False"),  # made ./no
        ({"device_cache": "False"}, r"device_cache='False' reads as a switch"),
        ({"artifact": ["onnx-int8"]}, r"artifact must be one artifact name \(str\) or None"),  # unhashable
        ({"verify": "yes"}, "verify"),
        ({"threads": 100_000}, "threads=100000 is more than"),  # a typo that grew past 16 GB while loading
    ],
)
def test_load_arguments_are_checked_before_the_directory_is_read(tmp_path, kwargs, named):
    with pytest.raises(edge_runtime.InputError, match=named):
        edge_runtime.load(tmp_path / "not-even-there", **kwargs)


def test_thread_counts_up_to_the_limit_pass_and_edge_bench_says_the_limit():
    from edge_runtime._bench_config import BenchConfig, BenchConfigError
    from edge_runtime._select import max_threads, usable_cpus

    assert max_threads() == max(64, 8 * usable_cpus())
    assert _load_args.check_threads(max_threads()) == max_threads()
    BenchConfig(threads=(0, max_threads())).check()
    with pytest.raises(BenchConfigError, match=f"to {max_threads()} "):
        BenchConfig(threads=(max_threads() + 1,)).check()


_TOO_MANY = str(max_threads() + 1)
_BAD_NUMBERS = [
    (cli, ["hi"], "--threads", "-1"), (cli, ["hi"], "--threads", _TOO_MANY), (cli, ["hi"], "--threads", "two"),
    *((cli_bench, ["-q"], flag, value) for flag, value in (
        ("--threads", "-1"), ("--threads", _TOO_MANY), ("--runs", "0"), ("--warmup", "-1"), ("--rounds", "0"),
        ("--seq", "0"), ("--batch", "1,-2"), ("--seq", "x"))),
    *((cli_tune, [], "--rounds", value) for value in ("0", "-3", "x")),
    *((cli_serve, ["--port", "0"], flag, value) for flag, value in (
        ("--threads", "-1"), ("--threads", _TOO_MANY), ("--workers", "-2"), ("--workers", "x"), ("--port", "-1"),
        ("--port", "70000"), ("--max-concurrent-requests", "0"), ("--max-batch-tokens", "0"),
        ("--max-batch-requests", "0"), ("--max-client-batch-size", "0"), ("--max-batch-wait-ms", "-1"),
        ("--max-batch-wait-ms", "nan"), ("--golden-interval", "-1"), ("--payload-limit", "0"),
        ("--graceful-timeout", "inf"))),
]


@pytest.mark.parametrize("module, extra, flag, value", _BAD_NUMBERS,
                         ids=[f"{m.__name__.rsplit('.', 1)[1]}{f}={v}" for m, _, f, v in _BAD_NUMBERS])
def test_a_bad_number_for_any_flag_is_a_usage_error_naming_it(tmp_path, capsys, monkeypatch, module, extra,
                                                              flag, value):
    """Exit status 2 (what edge-serve's --help promised; edge-run and edge-serve said 1 for a bad
    --threads, found only when load() started: review item 8), the flag named, and nothing read:
    the directory does not exist (else that would be the error, status 1), and nothing loads."""
    def must_not_load(*args, **kwargs):
        raise AssertionError(f"{flag} {value}: loaded a model before refusing the flag")

    monkeypatch.setattr(edge_runtime, "load", must_not_load)
    try:
        status = module.main([str(tmp_path / "missing"), *extra, flag, value])
    except SystemExit as exited:  # argparse's own refusals (not a number at all)
        status = exited.code
    err = capsys.readouterr().err
    assert status == 2, err
    assert flag in err and "does not exist" not in err and "Traceback" not in err


def test_edge_run_without_arguments_asks_for_the_directory_only(capsys):
    """Texts are optional (--info); argparse's intermixed parsing named them as required too."""
    with pytest.raises(SystemExit) as stopped:
        cli.main([])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert err.rstrip().endswith("required: artifacts (an edge-convert output directory)") and "texts" not in err.splitlines()[-1]


def test_load_names_a_path_that_is_not_one():
    with pytest.raises(edge_runtime.InputError, match="path must be an artifact directory.*got None"):
        edge_runtime.load(None)


def test_good_load_arguments_pass_the_checks(tmp_path):
    _load_args.check_options(True, None, None, None)
    _load_args.check_options("full", False, True, 64.5)
    assert _load_args.cache_dirs(False, tmp_path) == ({}, None)
    dirs, records = _load_args.cache_dirs(True, tmp_path)
    assert dirs == {"tflite": tmp_path / "xnnpack", "onnx": tmp_path / "onnxruntime"} and records == tmp_path
    dirs, records = _load_args.cache_dirs(str(tmp_path / "c"), tmp_path)
    assert set(dirs.values()) == {tmp_path / "c"} and records == tmp_path / "c"


def test_the_missing_backend_message_names_only_what_would_help(tmp_path):
    onnx_only = _load_args.no_backend_message(tmp_path, ["onnx"])
    assert "onnxruntime (the device wheel's [onnx] extra)" in onnx_only and "litert" not in onnx_only
    both = _load_args.no_backend_message(tmp_path, ["onnx", "tflite"])
    assert "onnxruntime" in both and "ai-edge-litert" in both


def test_edge_run_names_a_text_argument_that_is_not_valid_in_the_locale(tmp_path, capsys):
    assert cli.main([str(tmp_path), "fine", "caf\udce9"]) == 2
    err = capsys.readouterr().err
    assert "text argument 2 is not valid" in err and "byte 0xe9 at character 3" in err
    assert "Traceback" not in err


def test_edge_run_info_takes_artifact_by_name_and_refuses_an_unknown_one(tmp_path, capsys):
    from test_manifest_reader import _valid  # a complete manifest over real (tiny) files

    manifest = _valid(tmp_path)
    manifest["refused"] = [{"name": "onnx-int4", "format": "onnx", "precision": "int4",
                            "reason": "cosine 0.91 on validation, below the floor 0.98"}]
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    assert cli.main([str(tmp_path), "--info", "--artifact", "nope"]) == 1
    err = capsys.readouterr().err
    assert "no artifact 'nope'" in err and "it has: a" in err and "refused" not in err
    # One the converter refused: its reason, not just "no artifact" (load() and edge-tune/bench alike).
    assert cli.main([str(tmp_path), "--info", "--artifact", "onnx-int4"]) == 1
    err = capsys.readouterr().err
    assert "the converter refused 'onnx-int4': cosine 0.91 on validation, below the floor 0.98" in err
    with pytest.raises(edge_runtime.InputError, match="the converter refused 'onnx-int4': cosine 0.91"):
        edge_runtime.load(tmp_path, artifact="onnx-int4")
    assert cli.main([str(tmp_path), "--info", "--artifact", "a", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["asked"] == "a"
    if info["selection"] is not None:  # onnxruntime installed and the artifact allowed here
        assert info["selection"]["artifact"] == "a" and "asked for by name" in info["selection"]["reason"]
    else:
        assert "a" in info["not_tried"]


@pytest.mark.parametrize("module, call", [(cli, "_main"), (cli_bench, "run_bench"), (cli_tune, "_tune")])
def test_ctrl_c_ends_each_cli_with_a_line_and_status_130(tmp_path, capsys, monkeypatch, module, call):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    if call == "_tune":
        monkeypatch.setattr(module._tune, "tune", interrupted)
        monkeypatch.setattr(module.edge_runtime, "read_manifest", lambda path: {"artifacts": []})
    else:
        monkeypatch.setattr(module, call, interrupted)
    assert module.main([str(tmp_path)]) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "Traceback" not in err


def test_edge_bench_checks_the_json_path_before_measuring(tmp_path, capsys, monkeypatch):
    def must_not_run(*args, **kwargs):
        raise AssertionError("measured although the result could not be written")

    monkeypatch.setattr(cli_bench, "run_bench", must_not_run)
    read_only = tmp_path / "ro"
    read_only.mkdir()
    (read_only / "file").write_text("x")
    artifacts = tmp_path / "art"
    artifacts.mkdir()
    (artifacts / "manifest.json").write_text("{}")
    for bad, words in ((tmp_path, "is a directory"),
                       (read_only / "file" / "x.json", f"{read_only / 'file'} is a file, not a directory"),
                       # edge-bench DIR --json DIR/manifest.json replaced the manifest
                       (artifacts / "manifest.json", f"would overwrite manifest.json in the artifact directory {artifacts}")):
        assert cli_bench.main([str(artifacts), "--json", str(bad)]) == 2
        err = capsys.readouterr().err
        assert f"--json {bad}: {words}" in err
    assert (artifacts / "manifest.json").read_text() == "{}"
    # a path that can be written is left as it was: no empty file, no directory from the check
    good = tmp_path / "new" / "bench.json"
    monkeypatch.setattr(cli_bench, "run_bench", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    assert cli_bench.main([str(artifacts), "--json", str(good)]) == 130 and not good.parent.exists()


def test_edge_bench_keeps_the_result_when_the_json_write_fails_after_all(tmp_path, capsys, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the kept file goes with tmp_path
    out = tmp_path / "gone" / "bench.json"
    (tmp_path / "gone").write_text("a file took its directory's name during the run")
    assert cli_bench._write_json(out, {"a": 1}) is False
    err = capsys.readouterr().err
    kept = err.rsplit("the result is in ", 1)[1].strip()
    assert f"could not write {out}" in err and json.loads(open(kept).read()) == {"a": 1}
    assert Path(kept).parent == tmp_path


def test_a_multi_line_error_stays_in_its_table_row():
    record = {
        "artifact": "onnx-int8", "precision": "int8", "bytes": 1, "batch": 1, "seq": 8, "threads": 2,
        "status": "error", "error": "GoldenMismatchError: a | b\n  sample 0: cosine 0.5\n  sample 1: x",
        "golden": "failed", "latency": None, "throughput": None, "metrics": {},
        "load_first": {"load_to_first_result_s": None, "device_cache": None, "memory": None},
        "load_second": {"load_to_first_result_s": None, "device_cache": None, "memory": None},
    }
    row = _bench_report._row(_bench_report._cells(record))
    assert "\n" not in row and "a / b sample 0: cosine 0.5 sample 1: x" in row


def test_onnxruntime_is_imported_without_its_telemetry_warning(tmp_path):
    """Where the home directory cannot be written (a service user, a read-only root), importing
    onnxruntime prints a coloured telemetry warning on stderr at every start: edge_runtime
    imports it with ORT_DISABLE_TELEMETRY=1 unless the environment set it (then as set)."""
    import os
    import subprocess
    import sys

    blocked = tmp_path / "a-file"
    blocked.write_text("x")  # a home under a file cannot be created, even by root
    env = {**os.environ, "HOME": str(blocked / "home"), "XDG_CACHE_HOME": str(blocked / "cache")}
    env.pop("ORT_DISABLE_TELEMETRY", None)
    # onnxruntime turns its telemetry off by itself where one of these CI markers is set (the
    # names are in libonnxruntime's strings): CI runs this test with CI=true, so without them.
    for marker in ("CI", "TF_BUILD", "GITHUB_ACTIONS", "GITLAB_CI", "CIRCLECI", "TRAVIS", "JENKINS_URL",
                   "CODEBUILD_BUILD_ID", "BUILDKITE", "TEAMCITY_VERSION"):
        env.pop(marker, None)
    probe = ("import os, edge_runtime.backends as b; b.import_onnxruntime(); "
             "print(os.environ['ORT_DISABLE_TELEMETRY'])")
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "1", done.stderr
    assert "telemetry" not in done.stderr
    # Without it, the same import warns (what the default avoids; if onnxruntime ever stops
    # warning, this half says the test no longer shows anything).
    plain = subprocess.run([sys.executable, "-c", "import onnxruntime"], env=env, capture_output=True,
                           text=True, timeout=120)
    assert "telemetry" in plain.stderr
    kept = subprocess.run([sys.executable, "-c", probe], env={**env, "ORT_DISABLE_TELEMETRY": "0"},
                          capture_output=True, text=True, timeout=120)
    assert kept.stdout.strip() == "0"


def _stdin(monkeypatch, data: bytes, terminal: bool = False):
    import io
    import sys

    class Stdin(io.TextIOWrapper):
        def isatty(self):
            return terminal

    monkeypatch.setattr(sys, "stdin", Stdin(io.BytesIO(data)))


def test_edge_run_says_how_to_end_standard_input_typed_by_hand(tmp_path, capsys, monkeypatch):
    from test_manifest_reader import _valid  # a complete manifest over real (tiny) files

    (tmp_path / "manifest.json").write_text(json.dumps(_valid(tmp_path)))
    _stdin(monkeypatch, b"typed text\n", terminal=True)
    assert cli.main([str(tmp_path), "-"]) == 1  # read, then its one artifact (not a model) fails
    assert "reading texts from standard input, one per line; end with Ctrl-D" in capsys.readouterr().err


def test_edge_run_names_a_wrong_directory_before_reading_standard_input(tmp_path, capsys, monkeypatch):
    import sys

    class Unread:
        def isatty(self):
            raise AssertionError("standard input was read before the directory was checked")

    monkeypatch.setattr(sys, "stdin", Unread())
    assert cli.main([str(tmp_path / "missing"), "-"]) == 1
    assert "missing does not exist" in capsys.readouterr().err
    (tmp_path / "manifest.json").write_text("{}")
    monkeypatch.setattr(sys, "stdin", None)  # started with standard input closed (<&-)
    assert cli.main([str(tmp_path), "-"]) == 1  # the manifest is checked first: it is incomplete
    from test_manifest_reader import _valid

    (tmp_path / "manifest.json").write_text(json.dumps(_valid(tmp_path)))
    assert cli.main([str(tmp_path), "-"]) == 2
    assert "- reads standard input, but it is closed" in capsys.readouterr().err


@pytest.mark.parametrize(
    "data, lines",
    [
        (b"a\nb\n", ["a", "b"]),
        (b"a\nb", ["a", "b"]),  # no newline at the end
        (b"\n\n", ["", ""]),  # empty lines are empty texts: rows stay aligned with input lines
        (b"a\r\nb\r\n", ["a", "b"]),  # CRLF
        (b"\xef\xbb\xbfhello\n", ["hello"]),  # a byte-order mark is not text
        # Form feed, vertical tab, NEL, U+2028 and FS end no line (str.splitlines() would split).
        ("a\x0cb\nc\u2028d\ne\x0bf\ng\x85h\ni\x1cj\n".encode(), ["a\x0cb", "c\u2028d", "e\x0bf", "g\x85h", "i\x1cj"]),
        (b"x\ry\n", ["x\ry"]),  # a lone CR inside a line stays
    ],
)
def test_edge_run_standard_input_lines_are_wc_lines(monkeypatch, data, lines):
    _stdin(monkeypatch, data)
    assert cli._stdin_lines() == lines


def test_edge_run_names_the_line_of_bad_utf8_on_standard_input(monkeypatch):
    for data in (b"ok\nbad\xff\n", b"\xef\xbb\xbfok\nbad\xff\n", b"a\rb\rc\n\xff"):
        _stdin(monkeypatch, data)
        with pytest.raises(edge_runtime.InputError, match=r"not valid UTF-8 \(line 2, byte 0xff\)"):
            cli._stdin_lines()


def test_unknown_artifact_message_names_each_once_with_the_refusal_reasons(tmp_path):
    from edge_runtime._manifest import unknown_artifacts

    manifest = {"artifacts": [{"name": "a"}], "refused": [
        {"name": "onnx-int4", "reason": "cosine 0.91; below the floor"},
        {"name": "tflite-int4", "reason": ""},
        {"name": ["not", "a", "name"], "reason": "r"},  # malformed entries are passed over
        "not an entry",
    ]}
    message = unknown_artifacts(tmp_path, manifest, ["onnx-int4", "nope", "onnx-int4", "tflite-int4"])
    assert message.splitlines() == [
        f"no artifact 'onnx-int4', 'nope', 'tflite-int4' in {tmp_path}; it has: a",
        "  the converter refused 'onnx-int4': cosine 0.91; below the floor",
        "  the converter refused 'tflite-int4': (no reason recorded)",
    ]


def test_edge_bench_refuses_an_empty_list_and_points_outside_the_artifact_directory(tmp_path, capsys,
                                                                                 monkeypatch):
    monkeypatch.setattr(cli_bench, "run_bench", lambda *a, **k: pytest.fail("measured despite a bad flag"))
    for flag in ("--seq", "--batch", "--threads"):  # `--seq ,,` measured at the default 128
        with pytest.raises(SystemExit) as stopped:
            cli_bench.main([str(tmp_path), flag, ",,"])
        assert stopped.value.code == 2
        assert f"argument {flag}: expected comma-separated integers, got ',,'" in capsys.readouterr().err
    artifacts = tmp_path / "art"
    (artifacts / "golden").mkdir(parents=True)
    for inside in (artifacts, artifacts / "golden"):  # a file put there breaks signed loads
        assert cli_bench.main([str(artifacts), "--json", str(inside)]) == 2
        err = capsys.readouterr().err
        assert f"is a directory in the artifact directory {artifacts}" in err
        assert f"e.g. {tmp_path.resolve() / 'art-bench.json'}" in err and "art/bench.json" not in err
