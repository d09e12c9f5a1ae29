"""Pass: INT8 quantization with onnxruntime's tools, as the target profile's Int8Scheme says.

dynamic: weights quantized offline, activations per inference (MatMulInteger / QAttention, or
         DynamicQuantizeMatMul after ORT's session fusions).
static:  QDQ with activation ranges calibrated on text (for TensorRT and S8S8 ARM kernels).
`exclude` keeps named nodes in FP32: the mixed-precision fallback uses it.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from targets import Int8Scheme

__all__ = ["Int8Config", "int8_range", "ort_reduce_range", "quantizable_nodes", "quantize_int8"]

# MatMul (and fused Attention) carry the FLOPs. Embedding tables are handled by the
# quantize_embeddings pass (per-row scales) rather than ORT's per-tensor Gather quantization.
DEFAULT_OP_TYPES = ("MatMul", "Attention")


@dataclass(frozen=True)
class Int8Config:
    scheme: Int8Scheme
    op_types: tuple[str, ...] = DEFAULT_OP_TYPES
    exclude: tuple[str, ...] = ()
    calibration_batches: tuple = field(default=(), repr=False)  # feeds for static mode

    def describe(self, rounding: Any = None) -> dict:
        """The settings for the manifest; `rounding`: the Int8Rounding the pass was given."""
        s = self.scheme
        return {
            "mode": s.mode,
            "activation_type": s.activation_type,
            "weight_type": s.weight_type,
            "per_channel": s.per_channel,
            "reduce_range": ort_reduce_range(s),
            "pair_sum_limit": s.pair_sum_limit or None,
            "quant_format": s.quant_format,
            "calibration_method": s.calibration_method if s.mode == "static" else None,
            "embeddings": s.embeddings,
            "op_types": list(self.op_types),
            "exclude": list(self.exclude),
            "weight_rounding": rounding.describe() if rounding else "nearest",
        }


def ort_reduce_range(scheme: Int8Scheme) -> bool:
    """Whether onnxruntime writes 7-bit weights. Under a pair-sum limit it writes 8 bits: the
    GPTQ rounding then sets each column's scale and codes (converters/core/gptq.py)."""
    return scheme.reduce_range and not scheme.pair_sum_limit


def int8_range(scheme: Int8Scheme) -> tuple[int, int]:
    """Integer range of the symmetric weights onnxruntime writes for `scheme`
    (onnxruntime.quantization.quant_utils: reduced range is [-64, 64], symmetric [-127, 127])."""
    if scheme.weight_type != "int8":
        raise ValueError(f"symmetric weight range is defined for int8 weights, not {scheme.weight_type}")
    return (-64, 64) if ort_reduce_range(scheme) else (-127, 127)


def quantizable_nodes(model_path: Path, op_types: tuple[str, ...] = DEFAULT_OP_TYPES) -> list[str]:
    """Names of nodes the INT8 pass would quantize: ops of `op_types` with a constant weight."""
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    constants = {init.name for init in model.graph.initializer}
    return [
        node.name
        for node in model.graph.node
        if node.op_type in op_types and len(node.input) > 1 and node.input[1] in constants
    ]


# Shape inference cannot type the outputs of fused contrib ops (BiasGelu, SkipLayerNorm); all
# tensors in these graphs are float, so say so instead of failing.
_FLOAT_DEFAULT = {"DefaultTensorType": 1}  # onnx.TensorProto.FLOAT


def _uniform_rows(batches) -> list[dict[str, np.ndarray]]:
    """One [1, L] feed per text, all padded to the longest text. onnxruntime's histogram
    calibrators (percentile, entropy) stack activations across feeds, which needs equal shapes;
    MinMax reduces per feed and takes the batches as they are."""
    length = max(b["input_ids"].shape[1] for b in batches)
    rows = []
    for batch in batches:
        mask = batch["attention_mask"]
        padded = batch["input_ids"][mask == 0]
        pad_id = int(padded[0]) if padded.size else 0
        for r in range(len(mask)):
            row = {}
            for name, value in batch.items():
                fill = pad_id if name == "input_ids" else 0
                out = np.full((1, length), fill, dtype=value.dtype)
                out[0, : value.shape[1]] = value[r]
                row[name] = out
            rows.append(row)
    return rows


class _Reader:
    """onnxruntime CalibrationDataReader over pre-tokenized batches."""

    def __init__(self, batches):
        self._iter = iter(batches)

    def get_next(self):
        return next(self._iter, None)


@contextlib.contextmanager
def _quiet_root_logger():
    """onnxruntime.quantization warns on the root logger ("consider pre-processing") on every
    call; the pipeline validates the result instead, so keep the user's terminal readable."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def quantize_int8(model_path: Path, out_path: Path, config: Int8Config, rounding: Any = None,
                  ranges: Path | None = None) -> Path:
    """Quantize `model_path` into `out_path` per `config` (plain data). State between calls is
    passed explicitly, never carried in the config: `rounding`, a converters.core.gptq.Int8Rounding
    that rewrites the weights with its GPTQ codes (it caches them between calls), or None for
    onnxruntime's round-to-nearest; `ranges` (static mode), a JSON file where onnxruntime keeps
    the activation ranges it calibrated and reads them back on the next call (None: calibrate
    every call). A ranges file is only valid for one model file and one set of batches: the
    FP32 fallback search (mixed_precision.py) builds up to 40 candidates that differ only in
    excluded nodes, which calibration does not look at."""
    limit = config.scheme.pair_sum_limit
    if limit and getattr(rounding, "pair_limit", 0) != limit:
        # onnxruntime alone would write unconstrained 8-bit codes: wrong results on AVX2.
        raise ValueError(f"int8.pair_sum_limit = {limit} needs the GPTQ rounding that enforces it "
                         "(converters.core.gptq.Int8Rounding(..., pair_limit=...))")
    with _quiet_root_logger():
        _quantize(model_path, out_path, config, ranges)
    if rounding is not None:
        rounding.apply(out_path)
    _share_duplicate_initializers(out_path)
    return out_path


def _share_duplicate_initializers(path: Path) -> int:
    """The quantizer writes one quantized copy of a weight per consuming node; a weight shared
    by several MatMuls (split_first_token) would be stored twice. Point every consumer at one
    copy. Returns the number of initializers removed."""
    import hashlib

    import onnx

    model = onnx.load(str(path))
    graph = model.graph
    first: dict[tuple, str] = {}
    rename: dict[str, str] = {}
    for init in graph.initializer:
        if init.data_location == onnx.TensorProto.EXTERNAL or len(init.raw_data) < 1024:
            continue
        key = (init.data_type, tuple(init.dims), hashlib.sha256(init.raw_data).hexdigest())
        if key in first:
            rename[init.name] = first[key]
        else:
            first[key] = init.name
    if not rename:
        return 0
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]
    kept = [init for init in graph.initializer if init.name not in rename]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    onnx.save(model, str(path))
    return len(rename)


def _activation_matmuls(path: Path) -> list[str]:
    """MatMul nodes whose second input is not a weight: attention's Q x K^T and probabilities x V.
    onnxruntime's QDQ quantizer does not honour MatMulConstBOnly and gave their inputs calibrated
    ranges: the softmax's probabilities got about +-0.43 from the calibration texts, and a 1-3 token
    text, whose probabilities reach 0.5-0.8, was clipped (cosine 0.966 on "" against a manifest
    minimum of 0.997; a review, session 50). They stay float, as in the dynamic artifacts."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    weights = {init.name for init in graph.initializer} | {
        out for node in graph.node if node.op_type == "Constant" for out in node.output}
    return [node.name for node in graph.node
            if node.op_type == "MatMul" and len(node.input) > 1 and node.input[1] not in weights]


def _quantize(model_path: Path, out_path: Path, config: Int8Config, ranges: Path | None) -> Path:
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    logging.getLogger("onnxruntime.quantization").setLevel(logging.WARNING)
    scheme = config.scheme
    qtype = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}
    if scheme.mode == "dynamic":
        quantize_dynamic(
            str(model_path),
            str(out_path),
            op_types_to_quantize=list(config.op_types),
            per_channel=scheme.per_channel,
            reduce_range=ort_reduce_range(scheme),
            weight_type=qtype[scheme.weight_type],
            nodes_to_exclude=list(config.exclude),
            extra_options={"MatMulConstBOnly": True, **_FLOAT_DEFAULT},
        )
        return out_path

    if not config.calibration_batches:
        raise ValueError("static INT8 needs calibration batches")
    method = {
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
        "entropy": CalibrationMethod.Entropy,
    }[scheme.calibration_method]
    symmetric_activations = scheme.activation_type == "int8"
    quantize_static(
        str(model_path),
        str(out_path),
        _Reader(
            list(config.calibration_batches)
            if scheme.calibration_method == "minmax"
            else _uniform_rows(config.calibration_batches)
        ),
        quant_format=QuantFormat.QDQ if scheme.quant_format == "qdq" else QuantFormat.QOperator,
        op_types_to_quantize=list(config.op_types),
        per_channel=scheme.per_channel,
        reduce_range=ort_reduce_range(scheme),
        activation_type=qtype[scheme.activation_type],
        weight_type=qtype[scheme.weight_type],
        nodes_to_exclude=list(config.exclude) + _activation_matmuls(model_path),
        calibrate_method=method,
        calibration_cache_path=ranges,
        extra_options={
            "MatMulConstBOnly": True,
            # TensorRT's explicit quantization reads only symmetric (zero point 0) INT8.
            "ActivationSymmetric": symmetric_activations,
            "WeightSymmetric": True,
            **_FLOAT_DEFAULT,
        },
    )
    return out_path
