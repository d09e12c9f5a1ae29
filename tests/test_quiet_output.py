"""edge-convert prints its own progress, not the libraries' (issue 9, "Quiet, useful output").

The progress printer's ETA and throttling, the capture of every output channel a library uses,
the CLI's --verbose and failure paths (with a stand-in conversion that makes each kind of
noise), and one real conversion in a subprocess whose terminal output must hold none of it.
"""

from __future__ import annotations

import io
import logging
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from click.testing import CliRunner

from converters._console import ProgressPrinter, captured_output, count, parse_count
from converters.cli import main as edge_convert

# What a conversion printed before this was fixed (torch 2.10, torchao, transformers 5,
# litert-torch, ai-edge-quantizer 0.10, ai-edge-litert), one pattern per source.
NOISE = {
    "torchao kernels for other builds": r"Failed to load .*torchao",
    "torch pytree deprecation (W-lines)": r"torch/utils/_pytree\.py|register_constant\(\)",
    "Python warnings": r"(Future|Deprecation|User|Runtime)Warning",
    "ai-edge-quantizer tqdm bar": r"Applying Transformations to tensors",
    "ai-edge-quantizer overwrite warning": r"WARNING:root:|already exists",
    "transformers weight-loading bar": r"Loading weights",
    "any tqdm bar": r"\d+it/s\]|\?it/s\]",
    "absl/glog native lines": r"^[IWEF]\d{4} \d|absl::InitializeLog|flatbuffer_export\.cc",
    "TFLite/LiteRT native INFO lines": r"^(VERBOSE|INFO|WARNING|ERROR): |XNNPACK delegate",
}
OURS = re.compile(r"^\[ *\d+\.\d+s\] ", re.MULTILINE)


def _noise_in(text: str) -> dict[str, list[str]]:
    return {
        name: re.findall(f"(?:{p}).*", text, re.MULTILINE)
        for name, p in NOISE.items()
        if re.search(p, text, re.MULTILINE)
    }


class _Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


# --- the progress printer ------------------------------------------------------------------------


def test_count_messages_survive_a_prefix_and_other_messages_are_not_counts():
    assert parse_count(count("  sensitivity", 3, 48)) == ("sensitivity", 3, 48)
    assert parse_count("[tflite-int4] " + count("  INT4 sensitivity", 0, 7)) == (
        "[tflite-int4] INT4 sensitivity",
        0,
        7,
    )
    for message in (
        "[onnx-int8] building",
        "GPTQ: 12/12 weights rounded",
        "cosine 0.99 / 0.98",
        "odd 5/3",
        "none 0/0",
    ):
        assert parse_count(message) is None, message


def test_a_count_followed_from_its_middle_paces_only_the_steps_seen():
    """A count whose first message is past 0 (a loop that reports after its first step, or a
    second process followed once the conversion waits for it) starts its clock there: the ETA
    is the pace of the steps after it, not of all done ones."""
    clock, stream = _Clock(), io.StringIO()
    printer = ProgressPrinter(stream, started=0.0, tty=False, clock=clock)
    printer(count("export, stage", 6, 12))
    assert printer.eta() is None  # no step seen yet
    clock.now = 5.0
    printer(count("export, stage", 7, 12))
    assert printer.eta() == pytest.approx(25.0)  # 5 s a step, 5 left (not 5/7 s a step)


def test_eta_is_the_average_pace_times_what_is_left():
    clock, stream = _Clock(), io.StringIO()
    printer = ProgressPrinter(stream, started=0.0, tty=False, clock=clock)
    assert printer.eta() is None
    printer(count("search", 0, 10))
    assert printer.eta() is None  # no step finished: no pace yet
    clock.now = 4.0
    printer(count("search", 2, 10))
    assert printer.eta() == pytest.approx(16.0)  # 2 s a step, 8 left
    clock.now = 10.0
    printer(count("search", 5, 10))
    assert printer.eta() == pytest.approx(10.0)
    assert "ETA 10s" in stream.getvalue().splitlines()[-1]
    # a new count (another label) restarts the clock
    printer(count("other", 0, 4))
    clock.now = 13.0
    printer(count("other", 1, 4))
    assert printer.eta() == pytest.approx(9.0)


def test_non_tty_prints_a_line_per_tenth_or_ten_seconds_and_the_end():
    clock, stream = _Clock(), io.StringIO()
    printer = ProgressPrinter(stream, started=0.0, tty=False, clock=clock)
    for done in range(201):  # 20 s of steps: one line per 10 %
        clock.now = done * 0.1
        printer(count("steady", done, 200))
    lines = stream.getvalue().splitlines()
    assert len(lines) == 11, lines
    assert lines[0].endswith("steady 0/200 (0%) in 0s, ETA ?")
    assert "steady 200/200 (100%)" in lines[-1] and lines[-1].endswith("done")

    stream.truncate(0), stream.seek(0)
    for done in range(201):  # over in 2 s: a tenth at most once a second, so the first, one, the last
        clock.now = 50 + done * 0.01
        printer(count("fast", done, 200))
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3, lines
    assert "fast 0/200" in lines[0] and "fast 100/200 (50%)" in lines[1] and lines[-1].endswith("done")

    stream.truncate(0), stream.seek(0)
    for done in range(31):  # slow steps, 4 s each, of a long count: every ~10 s
        clock.now = 100 + done * 4.0
        printer(count("slow", done, 1000))
    lines = stream.getvalue().splitlines()
    assert 10 <= len(lines) <= 12, lines  # 120 s: a line every 3rd step (12 s), plus the first
    assert "ETA 1h04m" in lines[-1]  # 4 s a step, 970 steps left: 3880 s


def test_tty_draws_one_updating_line_and_keeps_plain_lines_apart():
    clock, stream = _Clock(), io.StringIO()
    printer = ProgressPrinter(stream, started=0.0, tty=True, clock=clock)
    for done in range(5):
        clock.now = done * 1.0
        printer(count("[onnx-int8] sensitivity", done, 4))
        if done == 2:
            printer("[onnx-int8]   keeping 1 node(s) in FP32")
    text = stream.getvalue()
    assert text.count("\n") == 2  # the plain line and the finished bar
    assert "\r" in text and "[####################....]" not in text
    assert "[########################] 4/4" in text
    plain = next(line for line in text.split("\n") if "keeping" in line)
    assert plain.split("\r")[-1].startswith("\x1b[K[   2.0s] [onnx-int8]   keeping")


# --- the capture -----------------------------------------------------------------------------------


def _make_noise(marker: str) -> None:
    """Every channel a library wrote to during a conversion."""
    os.write(2, f"I0000 00:00:1.0  42 flatbuffer_export.cc:4410] {marker} native stderr\n".encode())
    os.write(1, f"{marker} native stdout\n".encode())
    print(f"{marker} python print")
    print(f"{marker} python stderr", file=sys.stderr)
    warnings.warn(f"{marker} a FutureWarning", FutureWarning, stacklevel=1)
    logging.getLogger("ai_edge_quantizer_like").warning("%s a logging warning", marker)
    logging.getLogger("quiet-output-test").warning("%s via a handler made earlier", marker)
    import tqdm

    for _ in tqdm.tqdm(range(3), desc=f"{marker} Applying Transformations to tensors"):
        pass
    subprocess.run(
        [sys.executable, "-c", f"import sys; sys.stderr.write('{marker} child process\\n')"],
        check=True,
    )


def test_captured_output_takes_every_channel_and_restores_them(tmp_path, capfd):
    early = logging.getLogger("quiet-output-test")
    handler = logging.StreamHandler(sys.stderr)
    early.addHandler(handler)
    streams = sys.stdout, sys.stderr
    try:
        with captured_output(tmp_path / "c.log") as capture:
            capture.display.write("[   0.0s] our own line\n")
            _make_noise("NOISE")
    finally:
        early.removeHandler(handler)
    assert (sys.stdout, sys.stderr) == streams and handler.stream is streams[1]
    shown = capfd.readouterr()
    assert "our own line" in shown.err
    assert "NOISE" not in shown.out + shown.err
    log = (tmp_path / "c.log").read_text()
    # ("a logging warning" goes to the root logger, whose handler here is pytest's log capture)
    for channel in (
        "native stderr",
        "native stdout",
        "python print",
        "python stderr",
        "a FutureWarning",
        "via a handler made earlier",
        "child process",
    ):
        assert f"NOISE {channel}" in log, channel
    assert "Applying Transformations" not in log  # tqdm is off, not only hidden
    print("after")
    assert capfd.readouterr().out == "after\n"


def test_captured_output_lets_exceptions_through_with_streams_back(tmp_path, capfd):
    with pytest.raises(KeyError, match="ours"), captured_output(tmp_path / "c.log"):
        os.write(2, b"native line before the error\n")
        raise KeyError("ours")
    print("visible", file=sys.stderr)
    assert "visible" in capfd.readouterr().err
    assert "native line before the error" in (tmp_path / "c.log").read_text()


# --- the CLI, with a stand-in conversion -------------------------------------------------------------


@pytest.fixture
def fake_convert(monkeypatch):
    """converters.convert replaced by one that reports progress (a count included), makes every
    kind of noise, and then returns, or raises `fake_convert.error`."""
    import converters
    from converters.pipeline import ArtifactResult, ConvertResult

    class Fake:
        error: BaseException | None = None
        silent: bool = False  # raise `error` at once, before any output (a refusal up front)

        def __call__(self, config, progress):
            if self.silent and self.error is not None:
                raise self.error
            progress("target x86-avx2: a stand-in")
            for done in range(4):
                progress("[onnx-int8] " + count("  sensitivity", done, 3))
                if done == 2:
                    _make_noise("NOISE")
            if self.error is not None:
                raise self.error
            return ConvertResult(
                Path(config.out),
                config.target,
                "feature-extraction",
                "m",
                [ArtifactResult("onnx-fp32", "onnx", "fp32", 1000, {"cosine_mean": 1.0}, 1.0)],
                0.5,
            )

    fake = Fake()
    monkeypatch.setattr(converters, "convert", fake)
    return fake


def test_cli_shows_progress_not_noise_and_keeps_the_log(fake_convert, tmp_path, capfd):
    out = tmp_path / "o" / "x86"
    result = CliRunner().invoke(edge_convert, ["--target", "x86-avx2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    fds = capfd.readouterr()
    shown = result.output + fds.out + fds.err
    assert _noise_in(shown) == {} and "NOISE" not in shown
    assert OURS.search(result.stderr) and "[onnx-int8] sensitivity 3/3 (100%)" in result.stderr
    log = out.parent / "x86.convert.log"
    assert "NOISE native stderr" in log.read_text()
    assert f"library output (warnings, native log lines): {log}" in result.stderr


def test_cli_verbose_shows_the_captured_lines(fake_convert, tmp_path, capfd):
    result = CliRunner().invoke(
        edge_convert, ["--target", "x86-avx2", "--out", str(tmp_path / "o"), "--verbose"]
    )
    assert result.exit_code == 0, result.output
    echoed = "\n".join(line for line in result.stderr.splitlines() if line.startswith("  | "))
    for channel in (
        "native stderr",
        "native stdout",
        "python print",
        "a FutureWarning",
        "child process",
    ):
        assert f"NOISE {channel}" in echoed, result.stderr
    fds = capfd.readouterr()
    assert "NOISE" not in fds.out + fds.err  # shown once, through our stream


def test_cli_failure_shows_the_libraries_last_lines(fake_convert, tmp_path):
    fake_convert.error = RuntimeError("an invariant broke")
    result = CliRunner().invoke(
        edge_convert, ["--target", "x86-avx2", "--out", str(tmp_path / "o")]
    )
    assert isinstance(result.exception, RuntimeError)
    assert "the libraries' last" in result.stderr and "  | NOISE child process" in result.stderr


def test_cli_conversion_error_names_the_log(fake_convert, tmp_path):
    from converters import ConversionError

    fake_convert.error = ConversionError("the model is not supported")
    result = CliRunner().invoke(
        edge_convert, ["--target", "x86-avx2", "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 1
    assert "the model is not supported" in result.stderr
    assert f"output during the conversion is in {tmp_path / 'o.convert.log'}" in result.stderr


def test_a_run_that_prints_nothing_keeps_the_earlier_log(fake_convert, tmp_path):
    log = tmp_path / "o.convert.log"
    log.write_text("the earlier conversion's lines\n")
    from converters import ConversionError

    fake_convert.error, fake_convert.silent = ConversionError("o already exists; pass force=True"), True
    rejected = CliRunner().invoke(edge_convert, ["--target", "x86-avx2", "--out", str(tmp_path / "o")])
    assert rejected.exit_code == 1 and "already exists; pass --force" in rejected.stderr
    assert "library output" not in rejected.stderr and "output during the conversion" not in rejected.stderr
    assert log.read_text() == "the earlier conversion's lines\n" and not (tmp_path / "o.convert.log.previous").exists()
    fake_convert.error = None
    converted = CliRunner().invoke(edge_convert, ["--target", "x86-avx2", "--out", str(tmp_path / "o")])
    assert converted.exit_code == 0, converted.output
    assert "NOISE" in log.read_text() and "earlier" not in log.read_text()  # this run's lines only
    assert not (tmp_path / "o.convert.log.previous").exists()
    # A run that finished without library output leaves no log: the earlier one described an
    # output that this run replaced.
    from converters.cli import _settle_log

    (tmp_path / "o.convert.log.previous").write_text("the earlier conversion's lines\n")
    log.write_text("")
    assert _settle_log(log, None, finished=True) is False
    assert not log.exists() and not (tmp_path / "o.convert.log.previous").exists()


# --- a real conversion ---------------------------------------------------------------------------------


@pytest.mark.slow  # converts a tiny model for rpi5 (ONNX and TFLite): ~1-2 min on 2 cores
def test_real_conversion_prints_no_library_noise(tiny_model_factory, tmp_path):
    model = tiny_model_factory("bert", "feature-extraction")
    out = tmp_path / "rpi5"
    run = subprocess.run(
        [sys.executable, "-m", "converters.cli", str(model), "--target", "rpi5", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
        env={**os.environ, "PYTHONWARNINGS": "default"},
    )
    assert run.returncode == 0, run.stderr[-3000:]
    shown = run.stdout + run.stderr
    assert _noise_in(shown) == {}, _noise_in(shown)
    ours = OURS.findall(run.stderr)
    assert (
        len(ours) >= 10
        and "[tflite-int8] building" in run.stderr
        and "writing manifest.json" in run.stderr
    )
    # what was hidden is kept: TensorFlow Lite's native lines at least
    log = (tmp_path / "rpi5.convert.log").read_text()
    assert re.search(
        NOISE["TFLite/LiteRT native INFO lines"] + "|" + NOISE["absl/glog native lines"],
        log,
        re.MULTILINE,
    )
