"""edge-convert's and edge-sign's entry points: their modules (torch, transformers and the
pipeline: seconds) are imported inside the Ctrl-C guard of edge_runtime/_entry.py, so a Ctrl-C
while they load ends the command with one line and status 130, not a traceback (a review)."""

from __future__ import annotations

from edge_runtime._entry import run_guarded

__all__ = ["edge_convert", "edge_sign"]


def edge_convert() -> int:
    return run_guarded("edge-convert", "converters.cli")


def edge_sign() -> int:
    return run_guarded("edge-sign", "converters.cli_sign")
