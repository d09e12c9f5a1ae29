"""The child processes of the measurement scripts (benchmarks/, tools/): the paths they are given
and how their failures are reported.

The scripts start their children with cwd=ROOT (the repository), where a path the user typed
relative to their own directory names another file or none: `bench_artifacts.py --keep keepm`
converted and timed for five minutes, then its load probe failed on "keepm/x86-avx2 does not
exist" (review 3, F5). So every path argument is made absolute when the arguments are parsed
(`user_path`, an argparse type), against the directory the user ran the script from.

A child that fails is reported as one line, what failed and the last line of its stderr (a
Python child's exception), followed by the few stderr lines before it (`ChildError`); never as
subprocess.CalledProcessError, whose message is the whole command: the probe script's source,
with the child's stderr thrown away.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

__all__ = ["ChildError", "run_child", "user_path"]

CONTEXT_LINES = 4  # stderr lines shown under the summary: a traceback's last frames


def user_path(text: str) -> Path:
    """argparse `type=`: the path as the user meant it, absolute against the working directory
    the script was started from (not normalized through symbolic links: the names shown stay
    the user's)."""
    return Path(os.getcwd()) / Path(text).expanduser()


class ChildError(RuntimeError):
    """A child process failed: the message is one summary line, then the last lines of its
    stderr before the one quoted (indented)."""

    @classmethod
    def of(
        cls, what: str, done: subprocess.CompletedProcess, problem: str | None = None
    ) -> ChildError:
        """`what` failed: by its exit status, or (exit 0) by `problem`, e.g. no result line."""
        stderr = done.stderr or ""
        if isinstance(stderr, bytes):
            stderr = stderr.decode(errors="replace")
        # Python 3.11's "^^^^" markers under a traceback's source lines say nothing here.
        lines = [line.rstrip() for line in stderr.splitlines() if line.strip().strip("^~")]
        status = f"exit {done.returncode}"
        if done.returncode < 0:
            try:
                status = f"killed by {signal.Signals(-done.returncode).name}"
            except ValueError:  # a number this Python has no name for
                status = f"killed by signal {-done.returncode}"
        summary = f"{what} failed ({status})"
        if problem:
            summary += f": {problem}"
        if lines:
            summary += f": {lines[-1].strip()}"
        elif not problem:
            summary += ": nothing on stderr"
        context = [f"  | {line}" for line in lines[-1 - CONTEXT_LINES : -1]]
        return cls("\n".join([summary, *context]))


def run_child(what: str, command: list[str], **kwargs) -> subprocess.CompletedProcess:
    """subprocess.run with stdout and stderr captured as text; ChildError if it exits non-zero."""
    done = subprocess.run(command, capture_output=True, text=True, check=False, **kwargs)
    if done.returncode:
        raise ChildError.of(what, done)
    return done
