"""benchmarks/bench_pruning_refit.py's data variants: what the re-fit sees comes from the fit texts
alone (an augmented copy never carries a word of another text set), and a share of the fit texts is
spread over the whole file, not its first domain."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

from bench_pruning_refit import AUGMENTS, augmented, spread_share  # noqa: E402

FIT = tuple(f"text{i} alpha{i} beta{i} gamma{i}" for i in range(40))


VOCABULARY = ("delta", "epsilon", "zeta")


def test_augmented_copies_use_only_the_fit_texts_words():
    """...and, for "substitute", whole words of the tokenizer's vocabulary (never another text set's)."""
    words = {w for t in FIT for w in t.split()}
    for kind in AUGMENTS:
        copies = augmented(FIT, [kind], vocabulary=VOCABULARY)
        assert len(copies) == len(FIT)
        allowed = words | set(VOCABULARY) if kind == "substitute" else words
        assert all(c and set(c.split()) <= allowed for c in copies)
    substituted = augmented(FIT, ["substitute"], vocabulary=VOCABULARY)
    replaced = sum(a != b for c, t in zip(substituted, FIT) for a, b in zip(c.split(), t.split()))
    assert 0.15 < replaced / sum(len(t.split()) for t in FIT) < 0.45  # about 30 % of the words
    assert augmented(FIT, ["shuffle"]) == augmented(FIT, ["shuffle"])  # seeded: reproducible
    # A shuffle keeps each text's words; a span is a contiguous run of them.
    assert [sorted(c.split()) for c in augmented(FIT, ["shuffle"])] == [sorted(t.split()) for t in FIT]
    assert all(c in t for c, t in zip(augmented(FIT, ["spans"]), FIT))
    assert len(augmented(FIT, list(AUGMENTS), vocabulary=VOCABULARY)) == len(AUGMENTS) * len(FIT)


def test_a_share_of_the_fit_texts_is_spread_over_the_file():
    quarter = spread_share(FIT, 0.25)
    assert len(quarter) == 10 and len(set(quarter)) == 10
    assert quarter[0] == FIT[0] and quarter[-1] == FIT[36]
    assert spread_share(FIT, 1.0) == FIT
