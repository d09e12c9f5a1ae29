"""The console scripts' entry points. Each command's module (numpy, the backends, tokenizers: ~0.2 s
here, seconds on a Pi) is imported inside a Ctrl-C guard, so a Ctrl-C while it loads ends the
command with one line and status 130, as at any later moment (a review: a 12-23 line
KeyboardInterrupt traceback and death by the signal). This module and the package's __init__
import nothing heavy for that reason (edge_runtime/__init__.py resolves its names on first use)."""

from __future__ import annotations

import importlib
import sys

__all__ = ["edge_bench", "edge_run", "edge_serve", "edge_tune", "run_guarded"]


def run_guarded(prog: str, module: str) -> int:
    """`module`.main(), its import interruptible like the command itself."""
    try:
        main = importlib.import_module(module).main
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    return main()


def edge_run() -> int:
    return run_guarded("edge-run", "edge_runtime.cli")


def edge_bench() -> int:
    return run_guarded("edge-bench", "edge_runtime.cli_bench")


def edge_tune() -> int:
    return run_guarded("edge-tune", "edge_runtime.cli_tune")


def edge_serve() -> int:
    return run_guarded("edge-serve", "edge_runtime.cli_serve")
