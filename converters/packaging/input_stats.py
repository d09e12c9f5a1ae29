"""The input distribution an artifact was validated on, for drift monitoring on the device.

    "input_stats": {"texts": "validation", "count": 87,
                    "token_length":   {"quantiles": {"0.05": 9, ..., "0.95": 41}},
                    "embedding_norm": {"quantiles": {"0.05": 3.1, ..., "0.95": 5.2}}}

Quantiles (every 5 %) of the validation texts' token counts (special tokens included, after
truncation: what the device's tokenizer produces) and, for embedding models, of the norm of the
pooled sentence vector before normalization, from the PyTorch FP32 model. edge-serve compares
the inputs it serves with them (edge_runtime/serve/_health.py, `edge_input_drift`, a
Kolmogorov-Smirnov distance); without them it can only compare against its own first requests.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from converters.core.validate import Reference
from converters.inputs.source import SourceModel
from edge_runtime._text import pool

__all__ = ["QUANTILES", "input_stats"]

QUANTILES = tuple(round(0.05 * i, 2) for i in range(1, 20))


def _quantiles(values: np.ndarray) -> dict[str, float]:
    return {f"{q:g}": round(float(np.quantile(values, q)), 4) for q in QUANTILES}


def input_stats(source: SourceModel, reference: Reference) -> dict[str, Any]:
    """The stats of `reference` (the validation texts and their PyTorch FP32 outputs)."""
    lengths = np.concatenate([feeds["attention_mask"].sum(axis=1) for feeds in reference.batches])
    stats: dict[str, Any] = {"texts": "validation", "count": int(len(lengths)),
                             "token_length": {"quantiles": _quantiles(lengths)}}
    post = source.postprocess or {}
    if source.task == "feature-extraction" and post.get("pooling"):
        norms = np.concatenate([
            np.linalg.norm(pool(hidden, feeds["attention_mask"], post["pooling"], False).astype(np.float64), axis=-1)
            for feeds, hidden in zip(reference.batches, reference.outputs)
        ])
        stats["embedding_norm"] = {"quantiles": _quantiles(norms)}
    return stats
