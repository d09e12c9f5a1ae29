"""What edge-convert shows on the terminal: its own progress, with a bar and an ETA for the long
searches, and none of the third-party output printed while it converts.

Two parts, both used by the CLI only (the pipeline stays free of terminal I/O):

- Counted progress. A long loop reports `count(label, done, total)` through the ordinary
  progress callback: a plain message "label done/total", so any callback (a test's list, a
  caller's print) reads it as text, and a prefix added on the way ("[tflite-int4] ...") keeps
  it recognizable. `ProgressPrinter` turns such messages into one updating bar line on a
  terminal, or a line every ~10 % (at most one a second) / ~10 s otherwise, each with the
  elapsed time and an ETA. A loop that ends before its total (early stopping, a walk that finds
  no further step) says so with `stopped(label, done, total)` ("label done/total, stopped
  early"): the count ends there,
  rather than a bar and an ETA staying on screen for steps that never come, or a "total/total".
  (Our own ~60-line printer, not tqdm: tqdm's bar would need its own wiring for the non-TTY
  throttling and the elapsed-time prefix of our other lines, and the converter should not depend
  on a package it only reaches through torch and transformers.)

- `captured_output(log_path)`. While a conversion runs, torch, torchao, transformers,
  litert-torch, ai-edge-quantizer, TensorFlow Lite's C++ code and onnxruntime print warnings,
  log lines and progress bars (see tests/test_quiet_output.py for the list seen). No single
  setting silences them: Python warnings, `logging` handlers, tqdm bars, absl and glog lines
  written by C++ straight to file descriptor 2, and a few native stdout prints. So for the
  duration of the conversion file descriptors 1 and 2, `sys.stdout` / `sys.stderr` and the
  logging handlers bound to them all write into one log file; tqdm bars are switched off
  (TQDM_DISABLE, read by every tqdm at creation). Our own progress goes to a copy of the real
  stderr (`Capture.display`). Nothing is lost: the log file stays, `--verbose` echoes it live,
  and the CLI prints its tail when a conversion fails.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

__all__ = ["Capture", "ProgressPrinter", "captured_output", "count", "parse_count", "parse_stopped", "quiet_loggers",
           "stopped"]

_COUNT = re.compile(r"^(?P<label>.*?)\s*(?P<done>\d+)/(?P<total>\d+)$")
_STOPPED_SUFFIX = ", stopped early"


def count(label: str, done: int, total: int) -> str:
    """A progress message saying that `done` of `total` steps of `label` are finished."""
    return f"{label} {done}/{total}"


# Told (done, total) as a counted step goes: what every pass that counts its steps takes.
CountCallback = Callable[[int, int], None]


def counter(progress: Callable[[str], None], label: str) -> CountCallback:
    """A `(done, total)` callback that tells `progress` a `count` of `label`: what passes that
    count their steps take, for callers that speak progress messages."""
    return lambda done, total: progress(count(label, done, total))


def parse_count(message: str) -> tuple[str, int, int] | None:
    """(label, done, total) of a `count` message, possibly prefixed on its way ("[name] ..."),
    or None for any other message."""
    match = _COUNT.match(message.strip())
    if not match:
        return None
    done, total = int(match["done"]), int(match["total"])
    if total < 1 or done > total:
        return None
    return " ".join(match["label"].split()), done, total


def stopped(label: str, done: int, total: int) -> str:
    """A progress message saying that the count `label` ended after `done` of `total` steps."""
    return count(label, done, total) + _STOPPED_SUFFIX


def parse_stopped(message: str) -> tuple[str, int, int] | None:
    """(label, done, total) of a `stopped` message, possibly prefixed, or None for any other."""
    message = message.strip()
    if not message.endswith(_STOPPED_SUFFIX):
        return None
    return parse_count(message[: -len(_STOPPED_SUFFIX)])


@contextlib.contextmanager
def quiet_loggers(*names: str, level: int = logging.ERROR) -> Iterator[None]:
    """Loggers `names` drop records below `level` inside the block (their levels are restored
    after it). For third-party loggers whose warnings are about the library's own install, not
    about this conversion; errors still pass."""
    loggers = [logging.getLogger(name) for name in names]
    saved = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(max(lg.getEffectiveLevel(), level))
    try:
        yield
    finally:
        for lg, old in zip(loggers, saved):
            lg.setLevel(old)


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


@dataclass
class _Count:
    label: str
    total: int
    started: float
    done: int = 0
    first_done: int = 0  # steps already done at its first message: the pace counts the ones after
    printed_at: float = float("-inf")  # the first message of a count always prints
    printed_tenth: int = -1


@dataclass
class ProgressPrinter:
    """The CLI's progress callback: `printer(message)`. Plain messages become
    "[  12.3s] message" lines; `count` messages a bar with an ETA (see the module docstring).
    `tty` None: whether `stream` is a terminal. `clock` is injectable for tests."""

    stream: TextIO
    started: float | None = None
    tty: bool | None = None
    clock: Callable[[], float] = time.perf_counter
    every_seconds: float = 10.0  # non-TTY: at least this long between two lines of one count...
    every_fraction: float = 0.1  # ...unless another tenth of it is done,
    # and that at least this long after the last line: a count over in two seconds (the reference
    # pass of the built-in texts, a short search) printed eleven lines to a log, now its first and last
    every_fraction_gap: float = 1.0
    redraw_seconds: float = 0.1  # TTY: at most this often
    width: int = 24  # of the bar, in characters
    _count: _Count | None = field(default=None, init=False)
    _bar_shown: bool = field(default=False, init=False)
    _lock: threading.RLock = field(default_factory=threading.RLock, init=False)

    def __post_init__(self) -> None:
        if self.started is None:
            self.started = self.clock()
        if self.tty is None:
            isatty = getattr(self.stream, "isatty", None)
            self.tty = bool(isatty and isatty())

    def __call__(self, message: str) -> None:
        parsed = parse_count(message)
        ended = parse_stopped(message) if parsed is None else None
        with self._lock:
            if parsed is not None:
                self._tick(*parsed)
            elif ended is not None and self._count is not None and self._count.label == ended[0]:
                self._stop(ended[1])
            else:
                self.line(message)

    def eta(self) -> float | None:
        """Seconds left in the current count, from its average pace so far (None: no pace yet)."""
        current = self._count
        if current is None or current.done <= current.first_done:
            return None
        elapsed = self.clock() - current.started
        return elapsed / (current.done - current.first_done) * (current.total - current.done)

    def line(self, message: str) -> None:
        """A plain progress line (also the way `--verbose` echoes captured lines)."""
        with self._lock:
            self._clear_bar()
            self._write(f"[{self.clock() - self.started:6.1f}s] {message}\n")
            self._draw_bar()

    def passthrough(self, text: str) -> None:
        """Lines that are not ours (`--verbose`), kept apart from the bar."""
        with self._lock:
            self._clear_bar()
            self._write(text)
            self._draw_bar()

    def _tick(self, label: str, done: int, total: int) -> None:
        now = self.clock()
        current = self._count
        if (
            current is None
            or current.label != label
            or current.total != total
            or done < current.done
        ):
            # A new count. Its clock starts at its first message, 0/total or, if the loop reported
            # only after some steps (or is followed from its middle: a second process), now; the
            # pace counts the steps after it.
            self._clear_bar()
            current = self._count = _Count(label, total, now, first_done=done)
        current.done = done
        finished = done == total
        if self.tty:
            if finished or now - current.printed_at >= self.redraw_seconds:
                current.printed_at = now
                self._bar_shown = True
                self._write("\r" + self._render(current) + "\x1b[K")
            if finished:
                self._write("\n")
                self._bar_shown = False
                self._count = None
            return
        tenth = int(done / total / self.every_fraction)
        since = now - current.printed_at
        if (
            finished
            or (tenth > current.printed_tenth and since >= self.every_fraction_gap)
            or since >= self.every_seconds
        ):
            current.printed_at, current.printed_tenth = now, tenth
            self._write(self._render(current) + "\n")
        if finished:
            self._count = None

    def _stop(self, done: int) -> None:
        """The current count ended early at `done`: its last line says so, and it is over."""
        current = self._count
        current.done = min(max(done, 0), current.total)
        self._clear_bar()
        self._write(self._render(current, "stopped early") + "\n")
        self._bar_shown = False
        self._count = None

    def _render(self, current: _Count, left: str | None = None) -> str:
        now = self.clock()
        eta = self.eta()
        left = left or (
            "ETA ?"
            if eta is None
            else ("done" if current.done == current.total else f"ETA {_duration(eta)}")
        )
        head = f"[{now - self.started:6.1f}s] {current.label}"
        spent = _duration(now - current.started)
        if self.tty:
            filled = int(self.width * current.done / current.total)
            bar = "#" * filled + "." * (self.width - filled)
            return f"{head} [{bar}] {current.done}/{current.total} in {spent}, {left}"
        percent = 100 * current.done // current.total
        return f"{head} {current.done}/{current.total} ({percent}%) in {spent}, {left}"

    def _clear_bar(self) -> None:
        if self.tty and self._bar_shown:
            self._write("\r\x1b[K")

    def _draw_bar(self) -> None:
        if self.tty and self._bar_shown and self._count is not None:
            self._write(self._render(self._count) + "\x1b[K")

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()


@dataclass
class Capture:
    """What `captured_output` yields: `display` is the real stderr (our own output goes there),
    `log_path` the file everything else went to."""

    display: TextIO
    log_path: Path
    _echo: _Echo | None = field(default=None, repr=False)

    def follow(self, emit: Callable[[str], None]) -> None:
        """From now on hand each captured line to `emit` as it arrives (`--verbose`)."""
        if self._echo is None:
            self._echo = _Echo(self.log_path, emit)
            self._echo.start()

    def lines(self) -> list[str]:
        """The captured lines so far (blank ones left out)."""
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return []
        return [line for line in text.replace("\r", "\n").splitlines() if line.strip()]


def _flush(*streams) -> None:
    for stream in streams:
        with contextlib.suppress(AttributeError, OSError, ValueError):
            stream.flush()


def _fileno(stream) -> int | None:
    try:
        return stream.fileno()
    except (AttributeError, OSError, ValueError):
        return None


class _Echo(threading.Thread):
    """--verbose: follows the log file and hands each new complete line to `emit`."""

    def __init__(self, path: Path, emit: Callable[[str], None]):
        super().__init__(name="edge-convert-log-echo", daemon=True)
        self.path, self.emit, self.partial = path, emit, b""
        self.offset = path.stat().st_size if path.exists() else 0  # only what comes from now on
        self.stopping = threading.Event()

    def drain(self) -> None:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except OSError:
            return
        self.offset += len(data)
        *complete, self.partial = (self.partial + data).replace(b"\r", b"\n").split(b"\n")
        text = "".join(
            f"  | {line}\n"
            for line in (c.decode("utf-8", "replace") for c in complete)
            if line.strip()
        )
        if text:
            self.emit(text)

    def run(self) -> None:
        while not self.stopping.wait(0.2):
            self.drain()

    def stop(self) -> None:
        self.stopping.set()
        self.join()
        self.drain()
        if self.partial.strip():
            self.emit(f"  | {self.partial.decode('utf-8', 'replace')}\n")


def _warning_to(stream: TextIO) -> Callable[..., None]:
    def show(message, category, filename, lineno, file=None, line=None) -> None:
        stream.write(warnings.formatwarning(message, category, filename, lineno, line))

    return show


@contextlib.contextmanager
def captured_output(log_path: Path) -> Iterator[Capture]:
    """Send all third-party output made inside the block to `log_path` (appended), see the module
    docstring; `Capture.follow` echoes it as it arrives. Exceptions pass through unchanged; the streams are
    restored before they propagate, so a traceback reaches the real stderr."""
    log_path = Path(log_path)
    original_out, original_err = sys.stdout, sys.stderr
    _flush(original_out, original_err)
    # Our own output: sys.stderr as it is now. If that is file descriptor 2 itself, a copy of
    # it, since fd 2 is about to point at the log.
    opened_display = None
    if _fileno(original_err) == 2:
        opened_display = open(  # noqa: SIM115 - closed below
            os.dup(2),
            "w",
            buffering=1,
            encoding=getattr(original_err, "encoding", None) or "utf-8",
            errors="backslashreplace",
        )
    display = opened_display or original_err
    capture = Capture(display, log_path)

    log_fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    log_stream = open(  # noqa: SIM115 - closed below
        log_path, "a", buffering=1, encoding="utf-8", errors="backslashreplace"
    )
    saved_fds = {}
    for fd in (1, 2):
        with contextlib.suppress(OSError):  # a closed descriptor has nothing to redirect
            saved_fds[fd] = os.dup(fd)
            os.dup2(log_fd, fd)
    sys.stdout = sys.stderr = log_stream
    # Handlers made before the block (logging.basicConfig, absl) hold the old streams.
    handlers = [
        h
        for lg in (logging.getLogger(), *logging.Logger.manager.loggerDict.values())
        for h in getattr(lg, "handlers", ())
    ]
    rebound = {}
    for handler in set(handlers):
        if isinstance(handler, logging.StreamHandler) and handler.stream in (
            original_out,
            original_err,
        ):
            rebound[handler] = handler.setStream(log_stream)
    saved_tqdm = os.environ.get("TQDM_DISABLE")
    os.environ["TQDM_DISABLE"] = "1"
    restore_tqdm = _tqdm_switched_off()
    try:
        with warnings.catch_warnings():  # filters a library sets meanwhile end with the block
            # Into the log whatever showwarning was in place (a test runner's recorder, say).
            warnings.showwarning = _warning_to(log_stream)
            yield capture
    finally:
        _flush(log_stream)
        for fd, saved in saved_fds.items():
            os.dup2(saved, fd)
            os.close(saved)
        os.close(log_fd)
        sys.stdout, sys.stderr = original_out, original_err
        for handler, old in rebound.items():
            handler.setStream(old)
        # Handlers made inside the block write to the log stream, about to be closed.
        for lg in (logging.getLogger(), *logging.Logger.manager.loggerDict.values()):
            for handler in getattr(lg, "handlers", ()):
                if isinstance(handler, logging.StreamHandler) and handler.stream is log_stream:
                    handler.setStream(original_err)
        restore_tqdm()
        if saved_tqdm is None:
            os.environ.pop("TQDM_DISABLE", None)
        else:
            os.environ["TQDM_DISABLE"] = saved_tqdm
        log_stream.close()
        if capture._echo is not None:
            capture._echo.stop()
        if opened_display is not None:
            _flush(opened_display)
            opened_display.close()


def _tqdm_switched_off() -> Callable[[], None]:
    """Every tqdm bar created from now on is disabled; returns the undo. TQDM_DISABLE alone is
    not enough: tqdm (4.66+) reads its TQDM_* variables once, when it is first imported, so a
    tqdm already imported (transformers imports it) would ignore it."""
    std = sys.modules.get("tqdm.std")
    if std is None:
        return lambda: None
    original = std.tqdm.__init__

    def disabled(self, *args, **kwargs):
        if len(args) > 10:  # disable is the 11th positional parameter
            args = (*args[:10], True, *args[11:])
        else:
            kwargs["disable"] = True
        original(self, *args, **kwargs)

    std.tqdm.__init__ = disabled

    def undo() -> None:
        std.tqdm.__init__ = original

    return undo
