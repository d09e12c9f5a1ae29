#!/usr/bin/env python3
"""Write a large calibration file from text every Python install carries (the sentences of the
standard library's pydoc topics, `pydoc_data.topics`): what a user's domain corpus of a few
thousand lines costs a conversion, measured without a download (benchmarks/RESULTS.md run AY).
Deterministic for one Python release; it holds no text of benchmarks/data/heldout_en.txt
(checked here: the held-out texts stay unseen).

    .venv/bin/python benchmarks/make_large_calibration.py /tmp/large.txt [--lines 2438]
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

HELDOUT = Path(__file__).resolve().parent / "data" / "heldout_en.txt"


def sentences(limit: int | None = None) -> list[str]:
    """Distinct sentences of 20-400 characters from pydoc_data.topics, in the module's order."""
    import pydoc_data.topics

    found: dict[str, None] = {}
    for topic in pydoc_data.topics.topics.values():
        for sentence in re.split(r"(?<=[.!?])\s+", " ".join(topic.split())):
            if 20 < len(sentence) < 400 and not sentence.startswith("#"):
                found.setdefault(sentence)
    texts = list(found)
    return texts if limit is None else texts[:limit]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="the .txt file to write (one text per line)")
    parser.add_argument("--lines", type=int, default=None, help="at most this many texts (default: every sentence)")
    args = parser.parse_args(argv)
    texts = sentences(args.lines)
    heldout = set(HELDOUT.read_text(encoding="utf-8").splitlines())
    overlap = heldout & set(texts)
    if overlap:  # would score artifacts on a text they were fitted on
        print(f"error: {len(overlap)} sentence(s) are held-out texts, e.g. {sorted(overlap)[0][:60]!r}", file=sys.stderr)
        return 1
    args.out.write_text("\n".join(texts) + "\n", encoding="utf-8")
    print(f"{args.out}: {len(texts)} texts, {sum(map(len, texts))} characters (Python {sys.version.split()[0]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
