"""Texts used to calibrate quantization and to validate every artifact against PyTorch FP32."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from converters._errors import SourceModelError

__all__ = ["TextSet", "load_texts"]

BUILTIN = Path(__file__).resolve().parent / "data" / "calibration_en.txt"
MIN_TEXTS = 8


@dataclass(frozen=True)
class TextSet:
    texts: tuple[str, ...]
    source: str  # "builtin" or the user's file path
    sha256: str

    def describe(self) -> dict:
        return {"source": self.source, "count": len(self.texts), "sha256": self.sha256}


def _parse(path: Path) -> list[str]:
    raw = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        texts = []
        for number, line in enumerate(raw.splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                texts.append(record["text"] if isinstance(record, dict) else str(record))
            except (json.JSONDecodeError, KeyError) as exc:
                raise SourceModelError(
                    f"{path}:{number}: expected a JSON object with a 'text' field ({exc})"
                ) from None
        return texts
    return [line.strip() for line in raw.splitlines() if line.strip() and not line.startswith("#")]


def load_texts(path: Path | None = None) -> TextSet:
    """The built-in English set, or a user file: .txt (one text per line) or .jsonl ({"text": ...})."""
    source = BUILTIN if path is None else Path(path)
    if not source.is_file():
        raise SourceModelError(f"calibration file {source} does not exist")
    texts = _parse(source)
    if len(texts) < MIN_TEXTS:
        raise SourceModelError(
            f"calibration file {source} has {len(texts)} texts; at least {MIN_TEXTS} are needed "
            "for meaningful accuracy figures"
        )
    digest = hashlib.sha256("\n".join(texts).encode()).hexdigest()
    return TextSet(tuple(texts), "builtin" if path is None else str(source), digest)
