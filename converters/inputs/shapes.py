"""Which saved weights differ in shape from what config.json describes: transformers refuses such
a checkpoint with "ignore_mismatched_sizes is False ... look at the above report", the report
itself going to its log. converters/inputs/source.py names them in its error instead."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["shape_mismatches"]


def shape_mismatches(model_dir: Path, auto: Any, limit: int = 4) -> list[str]:
    """"name: saved [a, b], config.json gives [c, d]" for up to `limit` weights of the
    safetensors files in `model_dir`, against the model `auto` builds from its config on the meta
    device (no memory, no weights read); [] when that cannot be told (.bin weights, a config
    transformers cannot build)."""
    try:
        import torch
        import transformers
        from safetensors import safe_open

        config = transformers.AutoConfig.from_pretrained(model_dir, local_files_only=True)
        with torch.device("meta"):
            expected = {name: list(t.shape) for name, t in auto.from_config(config).state_dict().items()}
        found = []
        for path in sorted(Path(model_dir).glob("*.safetensors")):
            with safe_open(str(path), "pt") as weights:
                for name in weights.keys():
                    saved = list(weights.get_slice(name).get_shape())
                    if name in expected and expected[name] != saved:
                        found.append(f"{name}: saved {saved}, config.json gives {expected[name]}")
    except Exception:  # noqa: BLE001 -- a hint for an error message, never a new failure
        return []
    return found[:limit] + ([f"and {len(found) - limit} more"] if len(found) > limit else [])
