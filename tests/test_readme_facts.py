"""Sentences of README.md that state what the code decides: checked against the code, so that the
page a user reads first does not drift from what a conversion writes."""

from __future__ import annotations

from pathlib import Path

from converters.packaging import golden

README = Path(__file__).resolve().parents[1] / "README.md"


def _layout_entry(name: str) -> str:
    """The description of `name` in the "What you get" layout block, on one line."""
    block = README.read_text(encoding="utf-8").split("\nDIR/\n", 1)[1].split("```", 1)[0]
    lines = block.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:1] == [name])
    entry = [lines[start].split(name, 1)[1]]
    for line in lines[start + 1:]:
        if not line.startswith(" " * 27):  # the next file's entry
            break
        entry.append(line)
    return " ".join(" ".join(entry).split())


def test_the_layout_says_how_many_golden_samples_an_artifact_holds():
    """It said "one small input/output pair per artifact": converters/packaging/golden.py
    records LARGEST largest-activation texts, one input at the max length and the shortest text
    (tests/test_golden_teeth.py::test_several_stressing_samples_are_recorded checks a conversion)."""
    entry = _layout_entry("golden/*.npz")
    assert entry.startswith(f"{golden.LARGEST + 2} input/output samples per artifact "
                            f"(the {golden.LARGEST} texts with the largest activations, one input at the "
                            "max length, the shortest text)"), entry
