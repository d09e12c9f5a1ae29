"""Pass: export the PyTorch model to an FP32 ONNX graph with dynamic batch and sequence axes."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

from converters._errors import ConversionError
from converters.inputs.source import SourceModel

__all__ = ["ExportConfig", "export_onnx", "sample_inputs"]


@dataclass(frozen=True)
class ExportConfig:
    opset: int = 17


def sample_inputs(source: SourceModel, batch: int = 2, length: int = 16) -> dict:
    """Token ids with one padded row, so the export sees a real mask. Ids from 5 up skip the
    usual special tokens (load_source refuses a tokenizer of little more than those)."""
    import torch

    generator = torch.Generator().manual_seed(0)
    vocab = source.tokenizer.vocab_size
    ids = torch.randint(min(5, vocab - 1), vocab, (batch, length), generator=generator)
    mask = torch.ones(batch, length, dtype=torch.int64)
    mask[-1, length // 2 :] = 0
    ids[mask == 0] = source.pad_token_id
    feeds = {"input_ids": ids, "attention_mask": mask}
    if "token_type_ids" in source.input_names:
        feeds["token_type_ids"] = torch.zeros_like(ids)
    return feeds


def export_onnx(source: SourceModel, out_path: Path, config: ExportConfig) -> Path:
    import onnx
    import torch

    feeds = sample_inputs(source)
    args = tuple(feeds[name] for name in source.input_names)
    axes = {name: {0: "batch", 1: "sequence"} for name in source.input_names}
    for name in source.output_names:
        axes[name] = {0: "batch", 1: "sequence"} if name == "last_hidden_state" or source.task == "token-classification" else {0: "batch"}
    with warnings.catch_warnings():
        # TorchScript tracer warnings about Python-side shape checks in transformers: the
        # checks are constant for a given config; parity is verified after export.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            source.module,
            args,
            str(out_path),
            dynamo=False,
            opset_version=config.opset,
            input_names=source.input_names,
            output_names=source.output_names,
            dynamic_axes=axes,
            do_constant_folding=True,
        )
    model = onnx.load(str(out_path))
    onnx.checker.check_model(model, full_check=False)
    got = [o.name for o in model.graph.output]
    if got != source.output_names:
        raise ConversionError(f"exported graph outputs {got}, expected {source.output_names}")
    return out_path
