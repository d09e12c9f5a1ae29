"""The benchmark's held-out texts stay held out (issue 10): no built-in calibration text may
near-duplicate a line of benchmarks/data/heldout_en.txt.

Two word-level measures per (calibration text, held-out line) pair, words = lowercase runs of
[a-z0-9']:
- the longest run of consecutive words the two share (catches a held-out sentence copied into a
  longer text: the removed vaccine paragraph shared an 11-word run, at a 3-gram Jaccard of 0.09);
- the Jaccard index of their word 3-gram sets (catches short near-copies).

Measured 2026-12-02 over 357 x 54 pairs. Before the clean-up: longest runs 11 and 7 (the vaccine
and printer sentences, near word-for-word copies), then 4, 4, 4, 4; 3-gram Jaccard maxima 0.28
(printer), 0.25 ("how to boil eggs" / "how to boil an egg"), 0.21 (the sequel opinion), then
0.12 and below. After it: longest run 4 (one pair, the stock phrase "even better than the"),
3 for nine pairs, 1 at the median; 3-gram Jaccard max 0.111, 99th percentile 0.067, median 0.
THRESHOLDS: a run of >= 5 shared words or a 3-gram Jaccard > 0.15 fails. Both lie between what
unrelated English sentences share by chance (stock phrases of up to 4 words, Jaccard <= 0.12)
and the copies found (run >= 7, Jaccard >= 0.21).

n-grams do not see paraphrases: the ones found by reading both files side by side are listed in
REMOVED and must not come back.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CALIBRATION = ROOT / "converters" / "data" / "calibration_en.txt"
HELDOUT = ROOT / "benchmarks" / "data" / "heldout_en.txt"

MAX_SHARED_RUN = 4
MAX_TRIGRAM_JACCARD = 0.15
MIN_CALIBRATION_TEXTS = 300  # the clean-up replaced what it removed; keep the set this large

# Removed 2026-12-02, each a near-copy or paraphrase of the held-out line it is paired with
# (calibration text first, shortened).
REMOVED = [
    ("Vaccines train the immune system to recognise a pathogen without causing the disease itself.",
     "Vaccines train the immune system to recognise a pathogen without causing disease."),
    ("The printer on the third floor is jammed again", "The printer on the third floor is out of toner again."),
    ("Honestly the sequel was better than the original, fight me.",
     "I think the sequel was even better than the original film."),
    ("how to boil eggs", "how to boil an egg"),
    ("Parliament passed the budget bill by a narrow margin",
     "The parliament passed the budget after a long and heated debate."),
    ("The central bank kept interest rates unchanged at 3.75 percent, citing stubborn inflation",
     "Interest rates are expected to stay high until inflation falls further."),
    ("The underdogs stunned the champions with a late penalty",
     "The football season ended in dramatic fashion ... after a late penalty."),
    ("bitcoin price today", "price of gold today"),
    ("Remind me at 6 pm.", "Please remind me to call the dentist at nine tomorrow."),
    ("What time does the pharmacy close on Sundays?", "What are the opening hours of the public library?"),
    ("best budget laptop for programming 2026 under 800 dollars", "Where can I buy a cheap laptop for university?"),
    ("Neural networks learn representations by adjusting weights to minimise a loss function.",
     "Gradient descent updates parameters in the direction that reduces the loss."),
    ("Edge devices such as the Raspberry Pi have limited memory and compute, so deploying a transformer",
     "The research team trained a small transformer ... deployed it on low-power devices"),
    ("My grandmother's soup always tasted better on the second day.",
     "My grandmother's recipe uses cardamom, cinnamon and a little orange zest."),
    ("haha no way", "lol that's hilarious"),
    ("Hi, I ordered a blue sweater but received a green one. Can I exchange it",
     "I'd like to return these shoes because they are too small."),
    ("The printing press, developed in the German city of Mainz",
     "... monks prepared parchment ... and copied each book by hand."),
    ("what is the difference between a roth ira and a traditional ira",
     "Can you explain the difference between a virus and a bacterium?"),
]


def _lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip() and not line.startswith("#")]


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


def _trigrams(words: list[str]) -> set[tuple[str, ...]]:
    return {tuple(words[i : i + 3]) for i in range(len(words) - 2)}


def _jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a | b else 0.0


def _shared_run(a: list[str], b: list[str]) -> int:
    """Longest run of consecutive words common to `a` and `b` (longest common substring)."""
    best, previous = 0, [0] * (len(b) + 1)
    for x in a:
        current = [0] * (len(b) + 1)
        for j, y in enumerate(b, 1):
            if x == y:
                current[j] = previous[j - 1] + 1
                best = max(best, current[j])
        previous = current
    return best


def _too_close(calibration: str, heldout: str) -> str | None:
    a, b = _words(calibration), _words(heldout)
    run, jaccard = _shared_run(a, b), _jaccard(_trigrams(a), _trigrams(b))
    if run > MAX_SHARED_RUN or jaccard > MAX_TRIGRAM_JACCARD:
        return f"shared run {run} words, 3-gram Jaccard {jaccard:.3f}"
    return None


def test_no_calibration_text_near_duplicates_a_heldout_line():
    heldout = _lines(HELDOUT)
    assert len(heldout) >= 50
    failures = []
    for text in _lines(CALIBRATION):
        for line in heldout:
            why = _too_close(text, line)
            if why:
                failures.append(f"{why}:\n  calibration: {text[:120]}\n  held-out:    {line}")
    assert not failures, "calibration texts near-duplicate held-out lines:\n" + "\n".join(failures)


def test_removed_paraphrases_stay_out():
    texts = _lines(CALIBRATION)
    back = [removed for removed, _ in REMOVED if any(t.startswith(removed[:40]) for t in texts)]
    assert not back, f"texts removed as held-out paraphrases are back in {CALIBRATION.name}: {back}"


def test_calibration_set_keeps_its_size_and_has_no_duplicates():
    texts = _lines(CALIBRATION)
    assert len(texts) >= MIN_CALIBRATION_TEXTS
    assert len(set(texts)) == len(texts)


@pytest.mark.parametrize(
    ("calibration", "heldout"),
    [
        # the two near-copies the clean-up removed: the measure must flag them
        (("Vaccines train the immune system to recognise a pathogen without causing the disease itself. "
          "Some contain weakened or inactivated viruses."),
         "Vaccines train the immune system to recognise a pathogen without causing disease."),
        ("The printer on the third floor is jammed again, can someone from IT take a look?",
         "The printer on the third floor is out of toner again."),
        ("how to boil eggs", "how to boil an egg"),
    ],
)
def test_the_measure_flags_known_copies(calibration, heldout):
    assert _too_close(calibration, heldout) is not None


def test_the_measure_passes_unrelated_sentences_with_stock_phrases():
    assert _too_close("Comfortable shoes that look even better than the photos.",
                      "I think the sequel was even better than the original film.") is None
