"""The W4A8 pass's input prepared as the pipeline prepares it, on a tiny exported BERT (shared by
test_w4a8.py and test_onnx_prefix.py)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from converters.core.validate import make_batches
from converters.export.export_onnx import ExportConfig, export_onnx
from converters.inputs.calibration import load_texts
from converters.onnx.pack_projections import pack_projections
from converters.onnx.quantize_int4 import Int4Config, quantize_tables_int4
from converters.onnx.quantize_int8 import Int8Config, int8_range, quantize_int8
from converters.onnx.smooth_activations import SmoothConfig, smooth_activations
from converters.onnx.split_first_token import SplitConfig, split_first_token
from targets import load_profile


def prepare(source, work: Path, tables_progress=None) -> dict:
    """(fp32, smooth, split, int8) paths, fit batches of 48 texts, a held-out batch of 32, the
    INT8 range, the 4-bit tables' report and the work directory."""
    fp32 = export_onnx(source, work / "fp32.onnx", ExportConfig())
    texts = load_texts().texts
    batches = make_batches(source, texts[:48])
    tables = work / "tables.onnx"
    made = quantize_tables_int4(fp32, tables, Int4Config(embedding_min_elements=1000), tables_progress)
    pack_projections(tables, work / "packed.onnx")
    smooth_activations(work / "packed.onnx", work / "smooth.onnx", batches,
                       SmoothConfig(weight_shapes=((32, 64), (32, 32), (32, 96))))
    split_first_token(work / "smooth.onnx", work / "split.onnx", SplitConfig(((32, 64), (64, 32), (32, 32), (32, 96))))
    # As the INT4 builder: W4A8 has no pair-aware rounding and uses the scheme's plain range.
    scheme = dataclasses.replace(load_profile("x86-avx2").int8, pair_sum_limit=0)
    quantize_int8(work / "split.onnx", work / "int8.onnx", Int8Config(scheme=scheme))
    heldout = make_batches(source, texts[48:80], batch_size=32)[0]
    return {"fp32": fp32, "smooth": work / "smooth.onnx", "split": work / "split.onnx", "int8": work / "int8.onnx",
            "batches": batches, "heldout": heldout, "qrange": int8_range(scheme), "work": work, "tables": made}
