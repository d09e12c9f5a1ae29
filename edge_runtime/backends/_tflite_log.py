"""LiteRT's native log lines: kept off stderr and passed to the logger "edge_runtime.litert".

Its own module because fd 2 is process-wide state that outlives any one session: the capture is
used around session creation and close (edge_runtime.backends.tflite), around the weight cache's
child process output (edge_runtime.backends._tflite_crash), and once more at exit.

Runtime log lines: LiteRT and TFLite print INFO lines on stderr from native code (accelerator
registration, "Created TensorFlow Lite XNNPACK delegate for CPU", ...), which no Python API or
setting turns off. While a session is created and closed, file descriptor 2 is pointed at a
temporary file and the lines are passed to the Python logger "edge_runtime.litert": INFO and
VERBOSE as DEBUG, WARNING as INFO, ERROR and FATAL as WARNING (so by default, with no logging
configured, only errors are shown). To see all of them:
`logging.getLogger("edge_runtime.litert").setLevel(logging.DEBUG)` with a handler, or
`logging.basicConfig(level=logging.DEBUG)`. Anything else written to stderr meanwhile (not in the
runtime's "LEVEL: " format) is written back to stderr unchanged. Python log records made
meanwhile (edge_runtime's own warnings among them) never go through the capture: every handler
holds them until fd 2 is restored, so an application format such as "%(levelname)s: %(message)s"
is not taken for the runtime's. LiteRT also makes one process-wide Environment at the first
CompiledModel tensor write (so the first session with a weight cache runs its shortest bucket
once at load, inside the capture) and tears it down in a C++ static destructor after Python has
finalized; from then (silence_after_finalization), not before, fd 2 goes to /dev/null, so the
application's own exit handlers and their child processes still write to stderr.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import os
import re
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["native_log"]

# The runtime's own (native) log lines, see the module docstring.
native_log = logging.getLogger("edge_runtime.litert")

# TFLite's minimal logger and LiteRT's logger write "<SEVERITY>: <message>" ("INFO: Created
# TensorFlow Lite XNNPACK delegate for CPU.", "WARNING: [npu_registry.cc:34] ...", "FATAL ERROR:
# This binary was compiled with lse enabled ..."). Python log records never reach the capture
# (_HeldRecords), so an application's "%(levelname)s: %(message)s" format is not taken for it.
_NATIVE_LINE = re.compile(r"^(VERBOSE|INFO|WARNING|ERROR|FATAL)( [A-Z]+)?: ")
_NATIVE_LEVELS = {
    "VERBOSE": logging.DEBUG,
    "INFO": logging.DEBUG,
    "WARNING": logging.INFO,
    "ERROR": logging.WARNING,
    "FATAL": logging.WARNING,
}
# fd 2 is process-wide: one capture at a time (a nested one, same thread, joins the outer).
_capture_lock = threading.RLock()
_capture_depth = 0


def _forward_native(
    text: str, passthrough: Callable[[str], Any], level: int | None = None
) -> list[str]:
    """Log the runtime's lines of `text` to native_log (at their own level, or `level`); hand
    every other non-blank line to passthrough. Returns the runtime's lines."""
    native = []
    for line in text.splitlines():
        match = _NATIVE_LINE.match(line)
        if match:
            native_log.log(level or _NATIVE_LEVELS[match.group(1)], "%s", line)
            native.append(line)
        elif line.strip():
            passthrough(line + "\n")
    return native


def _write_stderr(text: str) -> None:
    try:
        os.write(2, text.encode("utf-8", "replace"))
    except OSError:
        pass  # stderr closed: nowhere to write it anyway


class _HeldRecords:
    """While fd 2 is captured (within `with`), every logging handler (the last resort one too)
    holds the records it would emit; emit() emits them once fd 2 is restored. A handler writing
    to stderr would otherwise put them among the runtime's lines, where one formatted
    "WARNING: ..." is taken for the runtime's and logged again, demoted (edge_runtime's own cache
    warnings vanished that way). Held, not dropped: the record passed the handler's own filters,
    which run before this one, so emit() does not run them again."""

    def __init__(self) -> None:
        self._filters: list[tuple[logging.Handler, Callable[[logging.LogRecord], bool]]] = []
        self._held: list[tuple[logging.Handler, logging.LogRecord]] = []
        self._lock = threading.Lock()

    def __enter__(self) -> None:
        loggers = [logging.getLogger(), *list(logging.Logger.manager.loggerDict.values())]
        handlers = {h for lg in loggers for h in getattr(lg, "handlers", ())}
        if logging.lastResort is not None:
            handlers.add(logging.lastResort)
        for handler in handlers:
            hold = functools.partial(self._hold, handler)
            handler.addFilter(hold)
            self._filters.append((handler, hold))

    def _hold(self, handler: logging.Handler, record: logging.LogRecord) -> bool:
        with self._lock:
            self._held.append((handler, record))
        return False

    def __exit__(self, *exc_info: Any) -> None:
        for handler, hold in self._filters:
            handler.removeFilter(hold)
        self._filters = []

    def emit(self) -> None:
        """Emit what was held, each record by the handler that held it."""
        with self._lock:
            held, self._held = self._held, []
        for handler, record in held:
            handler.acquire()
            try:
                handler.emit(record)
            finally:
                handler.release()


@contextlib.contextmanager
def _native_log_to_logger() -> Iterator[list[str]]:
    """Point fd 2 at a temporary file while the runtime's native code runs, then forward what it
    wrote (see the module docstring). Yields a list that holds the runtime's lines afterwards."""
    global _capture_depth
    lines: list[str] = []
    with _capture_lock:
        if _capture_depth:
            yield lines
            return
        try:
            sink = tempfile.TemporaryFile()
        except OSError:  # no writable temporary directory: leave stderr alone
            yield lines
            return
        with sink:
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(AttributeError, OSError, ValueError):
                    stream.flush()
            try:
                saved = os.dup(2)
            except OSError:  # fd 2 is closed: nothing to silence
                yield lines
                return
            held = _HeldRecords()
            try:
                with held:
                    os.dup2(sink.fileno(), 2)
                    _capture_depth += 1
                    try:
                        yield lines
                    finally:
                        _capture_depth -= 1
                        with contextlib.suppress(AttributeError, OSError, ValueError):
                            sys.stderr.flush()  # Python-level writes meanwhile belong to the sink
                        os.dup2(saved, 2)
                        os.close(saved)
            finally:
                try:
                    sink.seek(0)
                    text = sink.read().decode("utf-8", "replace")
                    lines.extend(_forward_native(text, _write_stderr))
                finally:
                    held.emit()  # after the runtime's lines, which mostly came first


def silence_after_finalization() -> bool:
    """Point fd 2 at /dev/null at the last moment: after Python has finalized (every atexit
    handler, the application's included, has run) and before the runtime's C++ static
    destructors print their teardown lines. Two C exit handlers (__cxa_atexit) do it; the C
    library runs them in reverse order of registration, so called after the runtime registered
    its destructors (at its first environment), they run first: close(2), then dup(/dev/null),
    which takes the lowest free descriptor, 2 (so a file a later destructor opens cannot become
    stderr). False where the C library offers no such hook; the caller then silences fd 2 from
    Python's exit instead (_silence_native_teardown)."""
    try:
        libc = ctypes.CDLL(None)
        register = libc.__cxa_atexit
        close, dup = (ctypes.cast(f, ctypes.c_void_p) for f in (libc.close, libc.dup))
        devnull = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)  # kept open to the end
    except (AttributeError, OSError):
        return False
    register.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
    register.restype = ctypes.c_int
    if register(dup, devnull, None) != 0:
        os.close(devnull)
        return False
    return register(close, 2, None) == 0


def _silence_native_teardown() -> None:
    """Where silence_after_finalization cannot be had, at Python's exit: from here to the end of
    the process, fd 2 goes to /dev/null, and Python's writers move to
    a copy of the real stderr: sys.stderr and sys.__stderr__ (finalization restores the latter),
    logging handlers that wrote to the old sys.stderr, faulthandler. The runtime's static
    destructors print into nothing; Python's last messages still show."""
    old = sys.stderr
    try:
        fd = old.fileno()
    except (AttributeError, OSError, ValueError):
        fd = None
    if fd != 2:
        return  # sys.stderr was redirected elsewhere by the application: leave it all alone
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        real = os.dup(2)
    except OSError:
        return
    stream = open(  # noqa: SIM115 - lives until the process ends
        real, "w", buffering=1, encoding=old.encoding or "utf-8", errors="backslashreplace"
    )
    with contextlib.suppress(OSError, ValueError):
        old.flush()
    os.dup2(devnull, 2)
    os.close(devnull)
    sys.stderr = sys.__stderr__ = stream
    loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
    for handler in {h for lg in loggers for h in getattr(lg, "handlers", ())}:
        if isinstance(handler, logging.StreamHandler) and handler.stream is old:
            handler.setStream(stream)
    import faulthandler

    if faulthandler.is_enabled():
        faulthandler.enable(file=stream, all_threads=True)
