"""Texts that fit quantization and texts that validate every artifact against PyTorch FP32.

Fitting and scoring use different texts (issue 10; DESIGN.md, "Metrics are out-of-sample"):
split_texts cuts the calibration texts into a fit set (SmoothQuant scales, GPTQ Hessians,
static ranges, sensitivity rankings) and a validation set (metrics, floors, every search's
evaluation), or takes the validation texts from a separate file.
"""

from __future__ import annotations

import hashlib
import json
import math
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from converters._errors import ConversionError, SourceModelError

__all__ = ["MAX_FIT_TEXTS", "MAX_VALIDATION_TEXTS", "TextSet", "TextSplit", "check_cap", "load_texts",
           "split_texts", "validation_share"]

BUILTIN = Path(__file__).resolve().parents[1] / "data" / "calibration_en.txt"  # converters/data
MIN_TEXTS = 8
TEXT_SUFFIXES = (".txt", ".text")  # and .jsonl
# The share of the calibration texts held out for validation. A quarter keeps ~270 of the 357
# built-in texts for fitting (GPTQ Hessians of MiniLM's 1536-wide FFN input want several
# thousand tokens) and ~90 for validation (the minimum cosine is a per-text statistic: ~90
# texts still hold several of each length class, from one word to ~200 tokens).
VALIDATION_SHARE = 0.25
MIN_SPLIT_SIDE = 4  # texts on each side of a split at least
# At most this many texts on each side by default (a deterministic sample, _sampled; None: all).
# Every fitting stage (statistics, GPTQ Hessians, the pruning re-fit) takes time in proportion to
# the fit texts and every search step to the validation texts. MiniLM for x86-avx2 from a
# 2,438-line file (benchmarks/RESULTS.md run AY): 270 / 87 texts 147 s, 512 / 256 262 s, 1,024 /
# 256 358 s, all 1,831 / 607 486 s, with the same held-out accuracy of INT8 (0.9985-0.9986) and
# INT4 (0.989-0.990): quantization gains nothing from fit texts past a few hundred, pruning's
# re-fit slowly does (run Y), hence twice the built-in 270. 256 validation texts are ~3x the
# built-in 87, finer accept/stop decisions; not more, because the profiles' cosine_min floors were
# set on ~90 texts and a minimum over thousands is a stricter test (it only falls as texts are
# added): an uncapped 5,000-text file would refuse artifacts as good as those the floors were made for.
MAX_FIT_TEXTS = 512
MAX_VALIDATION_TEXTS = 256


@dataclass(frozen=True)
class TextSet:
    texts: tuple[str, ...]
    source: str  # "builtin" or the user's file path
    sha256: str
    comments: int = 0  # lines of a .txt file skipped as comments ("#" first): said, never silent

    @property
    def distinct(self) -> int:
        """How many different texts: a repeated text weighs more in fits and metrics, but adds no
        evidence, so every minimum counts these."""
        return len(set(self.texts))

    def counted(self) -> str:
        """"N" or, with repeats, "N (M distinct)"."""
        n = len(self.texts)
        return f"{n}" if self.distinct == n else f"{n} ({self.distinct} distinct)"

    def describe(self) -> dict:
        return {"source": self.source, "count": len(self.texts), "sha256": self.sha256}


def _digest(texts: tuple[str, ...] | list[str]) -> str:
    return hashlib.sha256("\n".join(texts).encode()).hexdigest()


def _sample_rank(text: str) -> int:
    """A second, independent hash position of `text` (SHA-256 bits 32-63): which texts a capped
    side keeps. Like validation_share it depends on the text alone, so editing the file keeps
    the other texts' places, and copies of a text are kept or dropped together."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[4:8], "big")


def validation_share(text: str) -> float:
    """Where `text` falls in [0, 1): the first 32 bits of its UTF-8 SHA-256. Texts below
    VALIDATION_SHARE validate. A text's side depends on the text alone, not on its position or
    on the other texts: editing the file moves no other text across, and duplicates of a text
    always land on the same side (no copy of a validation text is ever fitted)."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:4], "big") / 2**32


@dataclass(frozen=True)
class TextSplit:
    fit: TextSet  # everything that fits sees these texts only
    validation: TextSet  # every metric, floor and search evaluation uses these only
    method: str  # "hash" or "file"
    calibration: TextSet  # what the fit set was taken from (the whole calibration file)
    # Texts each side had before its cap (split_texts' max_fit / max_validation), where it was
    # capped; empty when both sides kept every text.
    available: dict[str, int] = field(default_factory=dict)

    def describe(self) -> dict:
        """The manifest's "calibration" section."""
        if self.method == "hash":
            how = (f"calibration texts split by sha256(text): first 32 bits / 2^32 < {VALIDATION_SHARE} "
                   "-> validation, else fit (converters/inputs/calibration.py)")
        else:
            how = "fit: the calibration texts; validation: a separate file (validation_texts)"
        described = {
            **self.calibration.describe(),
            "split": {"method": self.method, "rule": how},
            "fit": self.fit.describe(),
            "validation": self.validation.describe(),
            "metrics_from": "validation",
            "note": "metrics and accuracy floors are measured on the validation texts, which no fitting "
                    "step (SmoothQuant, GPTQ, static ranges, sensitivity rankings) sees",
        }
        if self.available:
            described["sampled"] = {
                "available": dict(self.available),
                "rule": "a side over its cap (max_fit_texts / max_validation_texts) keeps the texts with the "
                        "smallest sha256(text) bits 32-63, in file order (converters/inputs/calibration.py)",
            }
        return described


def _lines(raw: str) -> list[str]:
    """The file's lines, split at "\n" only (a "\r" before it dropped), as `wc -l` and a JSONL
    reader count them: str.splitlines() also splits at form feeds, U+0085 and U+2028/U+2029,
    which web text carries inside a line and json.dumps(ensure_ascii=False) leaves unescaped."""
    return [line[:-1] if line.endswith("\r") else line for line in raw.split("\n")]


# Characters that show nothing: str.strip() removes whitespace but not U+200B ZERO WIDTH SPACE or
# a U+FEFF byte-order mark inside the file (concatenated files), so lines of them counted as
# texts toward the minimums (they tokenize to [CLS] [SEP]). Unicode's categories Cc, Cf and Z*,
# and the other Default_Ignorable_Code_Point ranges of DerivedCoreProperties.txt (Hangul fillers,
# variation selectors, the combining grapheme joiner, tags).
_INVISIBLE_CATEGORIES = {"Cc", "Cf", "Zs", "Zl", "Zp"}
_IGNORABLE = ((0x034F, 0x034F), (0x115F, 0x1160), (0x17B4, 0x17B5), (0x180B, 0x180F),
              (0x2065, 0x2065), (0x3164, 0x3164), (0xFE00, 0xFE0F), (0xFFA0, 0xFFA0),
              (0xFFF0, 0xFFF8), (0xE0000, 0xE0FFF))


def _invisible(char: str) -> bool:
    code = ord(char)
    return (char.isspace() or unicodedata.category(char) in _INVISIBLE_CATEGORIES
            or any(low <= code <= high for low, high in _IGNORABLE))


def _first_visible(line: str) -> str | None:
    """The first character of `line` that shows, or None when none does (a blank line)."""
    return next((char for char in line if not _invisible(char)), None)


def _parse(path: Path) -> tuple[list[str], int]:
    """The texts of a .txt file (one per line; blank lines and comment lines, whose first visible
    character is "#", are skipped) or a .jsonl file (one {"text": "..."} object per line; blank
    lines skipped, blank texts too, as in .txt). Blank: no visible character (_first_visible).
    A UTF-8 byte-order mark at the start is ignored. Returns (texts, comment lines skipped)."""
    raw = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() == ".jsonl":
        texts = []
        for number, line in enumerate(_lines(raw), 1):
            if _first_visible(line) is None:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise SourceModelError(f"{path}:{number}: not valid JSON ({exc})") from None
            if not isinstance(record, dict) or "text" not in record:
                got = f"keys {sorted(record)}" if isinstance(record, dict) else f"a JSON {type(record).__name__}"
                raise SourceModelError(f"{path}:{number}: expected a JSON object with a 'text' field, got {got}")
            if not isinstance(record["text"], str):
                raise SourceModelError(f"{path}:{number}: 'text' must be a string, got {json.dumps(record['text'])[:40]}")
            if _first_visible(record["text"]) is not None:
                texts.append(record["text"].strip())
        return texts, 0
    if path.suffix.lower() not in TEXT_SUFFIXES:
        # A README, CSV or JSON file read line by line gives markup, headers and quotes as "texts".
        raise SourceModelError(
            f"{path}: expected a .txt file (one text per line) or .jsonl ({{\"text\": ...}} per line), "
            f"not {path.suffix or 'a file without a suffix'}"
        )
    # "#" after indentation too: "   # note" was used as a text. No text of the built-in or
    # benchmark files starts that way (tests/test_converter_inputs.py checks).
    firsts = [(line, _first_visible(line)) for line in _lines(raw)]
    return [line.strip() for line, first in firsts if first not in (None, "#")], sum(first == "#" for _, first in firsts)


def load_texts(path: Path | None = None, minimum: int = MIN_TEXTS, role: str = "calibration") -> TextSet:
    """The built-in English set, or a user file: .txt (one text per line) or .jsonl ({"text": ...})."""
    source = BUILTIN if path is None else Path(path)
    if not source.is_file():
        if source.is_dir():
            what = "is a directory, not a file"
        elif source.exists():  # a pipe (<(...)), a device: read once, while the conversion reads it twice
            what = "is not a regular file (a pipe or a device); save the texts to a .txt or .jsonl file"
        else:
            what = "does not exist"
        raise SourceModelError(f"{role} file {source} {what}")
    try:
        texts, comments = _parse(source)
    except UnicodeDecodeError as exc:
        raise SourceModelError(
            f"{role} file {source} is not UTF-8 text (byte {exc.start}: {exc.reason}); "
            "save it as UTF-8"
        ) from None
    except OSError as exc:
        raise SourceModelError(f"cannot read {role} file {source}: {exc.strerror or exc}") from None
    distinct = len(set(texts))
    if distinct < minimum:
        count = f"{len(texts)} text{'' if len(texts) == 1 else 's'}"
        counted = count if distinct == len(texts) else f"{count} but {distinct} distinct"
        skipped = (f" ({comments} line{'' if comments == 1 else 's'} starting with '#' skipped as comments; "
                   "a .jsonl file keeps such texts)") if comments and path is not None else ""
        raise SourceModelError(
            f"{role} file {source} has {counted}{skipped}; at least {minimum} "
            f"{'are' if distinct == len(texts) else 'different texts are'} needed for meaningful accuracy figures"
        )
    # The built-in file's own comment lines (its provenance) are not the user's to be told about.
    return TextSet(tuple(texts), "builtin" if path is None else str(source), _digest(texts), 0 if path is None else comments)


def _sampled(texts: TextSet, maximum: int | None) -> TextSet:
    """`texts`, or at most `maximum` of them when there are more: those of the smallest
    _sample_rank, in their original order (copies of a text are adjacent in rank, so they are
    kept together unless the cap falls between them)."""
    if maximum is None or len(texts.texts) <= maximum:
        return texts
    chosen = sorted(range(len(texts.texts)), key=lambda i: (_sample_rank(texts.texts[i]), i))[:maximum]
    kept = tuple(texts.texts[i] for i in sorted(chosen))
    return TextSet(kept, f"{texts.source} (sample of {maximum})", _digest(kept))


def check_cap(name: str, value: object) -> None:
    """A text cap is None (every text) or an int of at least MIN_TEXTS; else an error naming `name`."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < MIN_TEXTS):
        raise ConversionError(f"{name} must be an integer of at least {MIN_TEXTS} or None (every text), got {value!r}")


def _capped(split: TextSplit, max_fit: int | None, max_validation: int | None) -> TextSplit:
    check_cap("max_fit_texts", max_fit)
    check_cap("max_validation_texts", max_validation)
    fit, validation = _sampled(split.fit, max_fit), _sampled(split.validation, max_validation)
    available = {side: len(before.texts) for side, before, after in
                 (("fit", split.fit, fit), ("validation", split.validation, validation)) if after is not before}
    return TextSplit(fit, validation, split.method, split.calibration, available)


def split_texts(calibration: TextSet, validation: TextSet | None = None, max_fit: int | None = MAX_FIT_TEXTS,
                max_validation: int | None = MAX_VALIDATION_TEXTS) -> TextSplit:
    """Fit and validation texts, disjoint, each side then capped at `max_fit` / `max_validation`
    texts (a deterministic sample, _sampled; None: no cap; see MAX_FIT_TEXTS for why a cap).

    Without `validation`: the calibration texts split by validation_share (about VALIDATION_SHARE
    of them validate). When the hash leaves fewer than MIN_SPLIT_SIDE distinct texts on a side
    (small files), the ceil(VALIDATION_SHARE * n) texts with the lowest hash validate instead (at least
    MIN_SPLIT_SIDE). With `validation`: every calibration text fits, and a text present in both
    is an error (it would score the artifact on a text it was fitted on)."""
    if validation is not None:
        shared = sorted(set(calibration.texts) & set(validation.texts))
        if shared:
            raise SourceModelError(
                f"{len(shared)} text(s) of the validation file {validation.source} are also calibration "
                f"texts ({calibration.source}), e.g. {shared[0][:60]!r}: metrics must come from texts "
                "that fitting never saw; remove them from one of the files"
            )
        return _capped(TextSplit(calibration, validation, "file", calibration), max_fit, max_validation)
    texts = calibration.texts
    held = [validation_share(t) < VALIDATION_SHARE for t in texts]
    distinct = set(texts)
    # Distinct texts, as the minimums count them: copies of one text all land on its side.
    held_distinct = sum(validation_share(t) < VALIDATION_SHARE for t in distinct)
    if min(held_distinct, len(distinct) - held_distinct) < MIN_SPLIT_SIDE:
        count = max(MIN_SPLIT_SIDE, math.ceil(VALIDATION_SHARE * len(distinct)))
        lowest = set(sorted(distinct, key=validation_share)[:count])
        held = [t in lowest for t in texts]
    fit = tuple(t for t, h in zip(texts, held) if not h)
    val = tuple(t for t, h in zip(texts, held) if h)
    if len(set(fit)) < MIN_SPLIT_SIDE or len(set(val)) < MIN_SPLIT_SIDE:
        raise SourceModelError(
            f"calibration file {calibration.source} has {len(set(texts))} distinct texts: too few to split "
            f"into fit and validation sets of {MIN_SPLIT_SIDE} or more; add texts or pass a validation file"
        )
    label = f"{calibration.source}"
    return _capped(TextSplit(TextSet(fit, f"{label} (fit split)", _digest(fit)),
                             TextSet(val, f"{label} (validation split)", _digest(val)), "hash", calibration),
                   max_fit, max_validation)
