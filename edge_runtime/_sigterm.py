"""SIGTERM handled like Ctrl-C by the long-running commands (edge-convert, edge-bench).

`timeout(1)`, a service manager stopping a unit, a CI job being cancelled and `kill PID` all send
SIGTERM, whose default action ends the process at once: an edge-convert stopped so left its work
directory (hundreds of MB of temporary graphs) in the temp dir until the next conversion removed it
(converters/packaging/package.py). Inside `sigterm_as_ctrl_c()` a SIGTERM raises `Terminated` (a
KeyboardInterrupt) in the main thread instead, so the command's Ctrl-C path runs: temporary
directories are removed, nothing half-made is published, the user reads what was kept. The exit
status stays the signal's (128 + 15 = 143), as a shell expects of a terminated process. A second
SIGTERM while cleaning up ends the process at once (the default action again).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

__all__ = ["TERMINATED_EXIT", "Terminated", "sigterm_as_ctrl_c"]

TERMINATED_EXIT = 128 + signal.SIGTERM
INTERRUPTED_EXIT = 130  # what the commands exit with after Ctrl-C (128 + SIGINT)


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived: handled as Ctrl-C is."""


@contextlib.contextmanager
def sigterm_as_ctrl_c() -> Iterator[None]:
    """Within the block, SIGTERM raises Terminated; a SystemExit(130) that the Ctrl-C path raises
    for it leaves as SystemExit(143). Nothing changes outside the main thread or where a SIGTERM
    handler is already installed (an application embedding these commands keeps its own)."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) not in (
        signal.SIG_DFL,
        None,
    ):
        yield
        return
    received = False

    def handler(signum, frame) -> None:
        nonlocal received
        received = True
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second one ends the process at once
        raise Terminated

    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    except SystemExit as exc:
        if received and exc.code == INTERRUPTED_EXIT:
            raise SystemExit(TERMINATED_EXIT) from None
        raise
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
