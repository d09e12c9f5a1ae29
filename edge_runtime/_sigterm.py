"""SIGTERM handled like Ctrl-C by the long-running commands (edge-convert, edge-bench).

`timeout(1)`, a service manager stopping a unit, a CI job being cancelled and `kill PID` all send
SIGTERM, whose default action ends the process at once: an edge-convert stopped so left its work
directory (hundreds of MB of temporary graphs) in the temp dir until the next conversion removed it
(converters/packaging/package.py). Inside `sigterm_as_ctrl_c()` a SIGTERM raises `Terminated` (a
KeyboardInterrupt) in the main thread instead, so the command's Ctrl-C path runs: temporary
directories are removed, nothing half-made is published, the user reads what was kept. The exit
status stays the signal's (128 + 15 = 143), as a shell expects of a terminated process. A second
SIGTERM while cleaning up ends the process at once (the default action again).

Python drops a KeyboardInterrupt raised while a `__del__` or a weakref callback runs ("Exception
ignored in ..."): a Ctrl-C or SIGTERM that landed in a library's finalizer (regex's, during a
garbage collection) was lost, and the conversion ran on, published its result and exited 0. So
the block's handlers also record the signal, and `check_interrupted()` raises it again at the
commands' safe points (every progress line, before a result is published) until the code that
handles it says so (`interrupt_handled()`).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

__all__ = ["TERMINATED_EXIT", "Terminated", "check_interrupted", "interrupt_handled", "sigterm_as_ctrl_c"]

TERMINATED_EXIT = 128 + signal.SIGTERM
INTERRUPTED_EXIT = 130  # what the commands exit with after Ctrl-C (128 + SIGINT)


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived: handled as Ctrl-C is."""


_pending: int | None = None  # the stop signal received in the block and not yet handled


def check_interrupted() -> None:
    """Raise the stop signal the block received again if nothing has handled it yet (it may have
    been raised where Python drops it). In the main thread only: elsewhere it would end that
    thread alone."""
    if _pending is not None and threading.current_thread() is threading.main_thread():
        raise Terminated if _pending == signal.SIGTERM else KeyboardInterrupt


def interrupt_handled() -> None:
    """The code that caught the KeyboardInterrupt acts on it (e.g. packages what was built before
    it): later safe points go on. A new signal is recorded again."""
    global _pending
    _pending = None


@contextlib.contextmanager
def sigterm_as_ctrl_c() -> Iterator[None]:
    """Within the block, SIGTERM raises Terminated; a SystemExit(130) that the Ctrl-C path raises
    for it leaves as SystemExit(143). Both it and Ctrl-C are recorded for check_interrupted(). Nothing changes outside the main thread or where a SIGTERM
    handler is already installed (an application embedding these commands keeps its own)."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) not in (
        signal.SIG_DFL,
        None,
    ):
        yield
        return
    global _pending
    received = False

    def handler(signum, frame) -> None:
        global _pending
        nonlocal received
        received = True
        _pending = signal.SIGTERM
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second one ends the process at once
        raise Terminated

    def ctrl_c(signum, frame) -> None:  # Python's own, plus the record
        global _pending
        _pending = _pending or signal.SIGINT
        raise KeyboardInterrupt

    _pending = None
    own_ctrl_c = signal.getsignal(signal.SIGINT) is signal.default_int_handler
    signal.signal(signal.SIGTERM, handler)
    if own_ctrl_c:
        signal.signal(signal.SIGINT, ctrl_c)
    try:
        yield
    except SystemExit as exc:
        if received and exc.code == INTERRUPTED_EXIT:
            raise SystemExit(TERMINATED_EXIT) from None
        raise
    finally:
        _pending = None
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        if own_ctrl_c:
            signal.signal(signal.SIGINT, signal.default_int_handler)
