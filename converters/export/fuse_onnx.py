"""Pass: fuse transformer subgraphs (Attention, SkipLayerNorm, BiasGelu) with onnxruntime's
offline optimizer, for profiles whose runtime executes ORT's contrib ops (`onnx.fusion`).

Only opt_level 0 (pure pattern fusion) is applied offline: it is portable across CPUs and ORT
builds. Hardware-specific layout passes run on the device when the session is created.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from converters.inputs.source import SourceModel

__all__ = ["FusionConfig", "fuse_onnx"]


@dataclass(frozen=True)
class FusionConfig:
    num_heads: int
    hidden_size: int


def fuse_onnx(model_path: Path, out_path: Path, config: FusionConfig) -> dict[str, int]:
    """Write the fused model to `out_path`; returns how many of each fused op were created."""
    from onnxruntime.transformers.optimizer import optimize_model

    # The optimizer logs every fusion at INFO; our progress line says what matters.
    logging.getLogger("onnxruntime.transformers").setLevel(logging.WARNING)
    for name in ("fusion_base", "onnx_model_bert", "onnx_model", "fusion_utils"):
        logging.getLogger(name).setLevel(logging.WARNING)
    from onnxruntime.transformers.fusion_options import FusionOptions

    options = FusionOptions("bert")
    # EmbedLayerNormalization would swallow the embedding Gathers (and their tables) into one
    # contrib op; keeping them as Gather + LayerNorm lets quantize_embeddings store the table as
    # INT8 rows, for the cost of one unfused LayerNorm per inference.
    options.enable_embed_layer_norm = False
    optimized = optimize_model(
        str(model_path),
        model_type="bert",  # BERT, DistilBERT and RoBERTa share the encoder block pattern
        num_heads=config.num_heads,
        hidden_size=config.hidden_size,
        optimization_options=options,
        opt_level=0,
        use_gpu=False,
    )
    stats = {op: n for op, n in optimized.get_fused_operator_statistics().items() if n}
    optimized.save_model_to_file(str(out_path))
    return stats


def fusion_config(source: SourceModel) -> FusionConfig:
    return FusionConfig(num_heads=source.num_heads, hidden_size=source.hidden_size)
