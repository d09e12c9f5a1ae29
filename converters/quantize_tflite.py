"""Pass: quantize an FP32 .tflite (from export_tflite) with a named recipe.

Every signature (one per sequence bucket) is kept and the weights they share are quantized once.
Two kinds of recipe:

- ai-edge-quantizer's own, applied as they are (names follow its convention: w = weights,
  a = activations, i8/i4 = integer bits, b32 = 32-element blocks, fp32 = float).
- gptq_wi4b32_afp32, ours, for the INT4 artifact. It needs calibration feeds and decides per
  model, from measurements against the FP32 .tflite on them:
  1. ai-edge-quantizer lays the graph out: every FULLY_CONNECTED weight INT4 in 32-element
     blocks (XNNPACK's qd8 x qb4w kernels; activations are quantized per token at run time),
     the word-embedding table INT4 in 32-element blocks (a few outlier columns made per-row
     INT4 useless: blocks keep them local), small tables float.
  2. The INT4 FULLY_CONNECTED values and block scales are then replaced in place (same
     tensors, types and byte sizes) by GPTQ rounding (converters/gptq.py, act-order) on a grid
     whose block scales come from a clip search weighted by the layer's input energy. The
     Hessians are taken from the FP32 .tflite on the calibration rows and short prefixes of
     them. ai-edge-quantizer's own INT4 algorithms (min-max, OCTAV, MSE, Hadamard rotation,
     its GPTQ) reached at best 0.970 / 0.861 on MiniLM.
  3. With a size budget, the FULLY_CONNECTED weights whose INT4 form costs the most accuracy
     per byte (each measured alone, then accepted one by one only if the calibration loss
     drops) are stored INT8 per channel instead, while the file fits. The result lists them.
  The tensor names litert-torch writes (the full Python module path of every fused op, about
  1 MB in an INT4 MiniLM) are shortened first: the size budget is what they would eat.

Measured on all-MiniLM-L6-v2 (4 buckets; held-out texts, sentence-embedding cosine vs PyTorch
FP32; p50 vs the FP32 .tflite on XNNPACK, batch 1 x 128 tokens, 2 threads, Zen 4; see
docs/notes/tflite-findings.md, "Converter side: calibrated INT4 and static INT8"):
- dynamic_wi8_afp32: 0.29x size, 0.42x p50, cosine 0.9976 mean / 0.981 min.
- dynamic_wi4b32_afp32: 0.160x size, 0.50x p50, cosine 0.957 / 0.824: offered so the pipeline
  can measure and reject it per model.
- gptq_wi4b32_afp32: all INT4 0.151x, 0.50x, 0.986 / 0.962; with size budget 0.16 (8 of 36
  weights INT8) 0.158x, 0.49x, 0.990 / 0.969.
- static_wi8_ai8 / static_wi8_ai16: refused, see _REFUSED.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import io
import logging
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from converters._errors import AccuracyError, ConversionError
from converters.validate import probe_loss, row_cosine

__all__ = ["GPTQ_INT8_RECIPE", "GPTQ_RECIPE", "RECIPES", "GptqInt4Config", "TfliteRecipe", "quantize_tflite"]

log = logging.getLogger(__name__)

Progress = Callable[[str], None]


@dataclass(frozen=True)
class TfliteRecipe:
    name: str  # an ai_edge_quantizer.recipe function of the same name, or one of ours
    precision: str  # manifest precision of the result
    needs_calibration: bool
    note: str
    ours: bool = False  # built by this module (GPTQ + measured mixed precision)


GPTQ_RECIPE = "gptq_wi4b32_afp32"
GPTQ_INT8_RECIPE = "gptq_wi8_afp32"
RECIPES = {
    r.name: r
    for r in (
        TfliteRecipe(
            "dynamic_wi8_afp32",
            "int8",
            False,
            "int8 per-channel weights, activations quantized per run (XNNPACK QD8 kernels)",
        ),
        TfliteRecipe(
            "dynamic_wi4b32_afp32",
            "int4",
            False,
            "int4 weights in 32-element blocks, activations quantized per run; accuracy is "
            "model-dependent (MiniLM cosine 0.96 / min 0.82): validate before shipping",
        ),
        TfliteRecipe(
            "weight_only_wi8_afp32",
            "int8",
            False,
            "int8 weights dequantized to FP32 at load: 4x smaller file, FP32 speed and accuracy",
        ),
        TfliteRecipe(
            GPTQ_INT8_RECIPE,
            "int8",
            True,
            "dynamic_wi8_afp32's layout (int8 per-channel weights, activations quantized per "
            "run) with the FULLY_CONNECTED codes rounded by GPTQ on the calibration texts",
            ours=True,
        ),
        TfliteRecipe(
            GPTQ_RECIPE,
            "int4",
            True,
            "int4 weights in 32-element blocks rounded by GPTQ on the calibration texts, int4 "
            "word embeddings; the most sensitive layers int8 within the size budget; "
            "activations quantized per run (XNNPACK QD8 kernels)",
            ours=True,
        ),
    )
}

# Recipes ai-edge-quantizer offers that we refuse, with the measured reason.
_REFUSED = {
    "static_wi8_ai8": (
        "static int8 activations give wrong numbers on BERT-style encoders with ai-edge-quantizer "
        "0.10 / ai-edge-litert 2.3 (MiniLM sentence cosine 0.288 in the prototype, 0.42 mean / "
        "0.19 min re-measured): the decomposed LayerNorm (MEAN, SQUARED_DIFFERENCE, MUL, ADD) "
        "cannot be computed in per-tensor int8, and the graph splits into 62 XNNPACK partitions. "
        "Static int8 on the FULLY_CONNECTED ops alone stays in one partition but is no faster "
        "than dynamic_wi8_afp32 (0.42x vs 0.41x FP32) and less accurate (0.953 / 0.84: the "
        "FFN-output inputs need more than one int8 range per tensor). See "
        "docs/notes/tflite-findings.md."
    ),
    "static_wi8_ai16": (
        "int16 activations run on reference kernels (int16 ops are not delegated to XNNPACK), "
        "many times slower than FP32 with XNNPACK, and on MiniLM were not accurate either with "
        "every op int16 (see docs/notes/tflite-findings.md)."
    ),
}

# -- gptq_wi4b32_afp32 settings ------------------------------------------------------------------
GPTQ_INT4_VERSION = 1
# Blockwise INT4 as XNNPACK runs it (qb4w: bf16 scales, blocks a multiple of 32). 32 is the
# most accurate: round-to-nearest on MiniLM gave 0.961 mean at block 32, 0.943 at 128.
_BLOCK = 32
_CLIP_RATIOS = np.linspace(0.7, 1.0, 13)  # shrinks of a block's max tried for its scale
_HESSIAN_CHUNK = 128  # calibration rows per Hessian update (memory vs GEMM size)
_FC, _EMBEDDING = "FULLY_CONNECTED", "EMBEDDING_LOOKUP"
_SENSITIVITY_ROWS = 256  # calibration rows (evenly spread) used to rank layers by sensitivity


@dataclass(frozen=True)
class GptqInt4Config:
    """Settings of gptq_wi4b32_afp32; serialized into the manifest with the result."""

    # Max bytes of the result / bytes of the FP32 input; filled with INT8 layers by measured
    # sensitivity. None: every FULLY_CONNECTED weight INT4, no search.
    size_budget: float | None = None
    # GPTQ damping (fraction of the mean Hessian diagonal). MiniLM held-out minimum cosine,
    # all-INT4, PyTorch simulation: 0.03 and 0.1 within noise (0.963 / 0.958), 0.01 worse.
    damp: float = 0.03
    # Extra Hessian rows per calibration row: its first k + 1 tokens and its last one
    # ("[CLS] w1 [SEP]" for BERT-style tokenizers). Short inputs set the minimum cosine; on
    # MiniLM these rows lifted the held-out minimum from 0.956 to 0.969 (same budget).
    prefix_tokens: tuple[int, ...] = (1, 2, 3)
    embedding_min_elements: int = 1 << 16  # smaller tables (token types) stay float
    sensitivity_rows: int = _SENSITIVITY_ROWS
    version: int = GPTQ_INT4_VERSION

    def __post_init__(self) -> None:
        problems = []
        if self.size_budget is not None and not 0.0 < self.size_budget <= 1.0:
            problems.append(f"size_budget {self.size_budget} must be in (0, 1]")
        if not 0.0 < self.damp < 1.0:
            problems.append(f"damp {self.damp} must be in (0, 1)")
        if any(k < 1 for k in self.prefix_tokens):
            problems.append(f"prefix_tokens {self.prefix_tokens} must be >= 1")
        if self.sensitivity_rows < 1:
            problems.append(f"sensitivity_rows {self.sensitivity_rows} must be >= 1")
        if problems:
            raise ConversionError("GptqInt4Config: " + "; ".join(problems))

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "block_size": _BLOCK}


# -- calibration rows ----------------------------------------------------------------------------


def _rows(calibration: list[dict[str, np.ndarray]], longest: int) -> list[dict[str, np.ndarray]]:
    """One [1, n] int32 feed per calibration row, padding removed (right padding, as the
    tokenizers pad), cut to `longest` tokens like _calibration_feeds cuts them."""
    rows = []
    for sample in calibration:
        if "attention_mask" not in sample:
            raise ConversionError(
                f"calibration samples need an attention_mask to tell real tokens from padding; "
                f"got inputs {sorted(sample)}"
            )
        values = {k: np.atleast_2d(np.asarray(v)) for k, v in sample.items()}
        for r in range(values["attention_mask"].shape[0]):
            n = min(int(values["attention_mask"][r].sum()), longest)
            if n:
                rows.append({k: v[r : r + 1, :n].astype(np.int32) for k, v in values.items()})
    return rows


def _with_prefixes(
    rows: list[dict[str, np.ndarray]], prefix_tokens: tuple[int, ...]
) -> list[dict[str, np.ndarray]]:
    """rows plus, per row and k in prefix_tokens, its first k + 1 tokens followed by its last
    one: "[CLS] w1 [SEP]"-like inputs for BERT/RoBERTa/XLM-R tokenizers, whose first and last
    tokens are the special ones. Short inputs give the lowest cosines, and calibration files
    rarely hold enough of them for GPTQ to fit them too."""
    extra = []
    for row in rows:
        n = row["attention_mask"].shape[1]
        for k in prefix_tokens:
            if n > k + 2:
                extra.append(
                    {
                        name: np.concatenate([v[:, : k + 1], v[:, n - 1 :]], 1)
                        for name, v in row.items()
                    }
                )
    return rows + extra


# -- reading the flatbuffer ----------------------------------------------------------------------


def _schema():
    from ai_edge_litert import schema_py_generated as schema

    return schema


def _op_name(schema, model, op) -> str:
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    code = model.OperatorCodes(op.OpcodeIndex())
    return names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), "UNKNOWN")


def _buffer_view(data: bytearray | bytes, model, index: int) -> np.ndarray:
    """The bytes of buffer `index` as a uint8 view into `data` (writable if `data` is)."""
    buffer = model.Buffers(index)
    if buffer.Offset() > 1:  # stored after the flatbuffer (files > 2 GB, or by choice)
        return np.frombuffer(data, np.uint8, buffer.Size(), buffer.Offset())
    if buffer.DataLength() == 0:
        return np.zeros(0, np.uint8)
    return buffer.DataAsNumpy()


def _scope(graph, op) -> str:
    """ai-edge-quantizer's op scope: output tensor names joined by ';', with a trailing ';'."""
    names = [graph.Tensors(t).Name().decode() for t in op.OutputsAsNumpy() if t >= 0]
    return ";".join(names) + ";" if names else ""


@dataclass
class _Weight:
    """One constant weight buffer and every op reading it (one per signature)."""

    kind: str  # _FC or _EMBEDDING
    buffer: int  # index in the FP32 model
    shape: tuple[int, ...]
    name: str  # the weight tensor's name in the first subgraph that reads it
    uses: list[tuple[int, int, str]]  # (subgraph, op index, scope)
    inputs: list[tuple[int, int]]  # (subgraph, activation tensor index) for FCs


def _weights(path: Path) -> dict[int, _Weight]:
    schema = _schema()
    data = Path(path).read_bytes()
    model = schema.Model.GetRootAs(data, 0)
    found: dict[int, _Weight] = {}
    for s in range(model.SubgraphsLength()):
        graph = model.Subgraphs(s)
        for o in range(graph.OperatorsLength()):
            op = graph.Operators(o)
            kind = _op_name(schema, model, op)
            if kind not in (_FC, _EMBEDDING) or op.InputsLength() < 2:
                continue
            tensor = graph.Tensors(op.Inputs(1))  # FC: (x, weight, bias); lookup: (ids, table)
            if (
                tensor.Type() != schema.TensorType.FLOAT32
                or not _buffer_view(data, model, tensor.Buffer()).size
            ):
                continue  # not a constant float weight
            entry = found.setdefault(
                tensor.Buffer(),
                _Weight(
                    kind,
                    tensor.Buffer(),
                    tuple(int(d) for d in tensor.ShapeAsNumpy()),
                    tensor.Name().decode(),
                    [],
                    [],
                ),
            )
            entry.uses.append((s, o, _scope(graph, op)))
            if kind == _FC:
                entry.inputs.append((s, op.Inputs(0)))
    return found


def _float_weights(path: Path, weights: list[_Weight]) -> dict[int, np.ndarray]:
    schema = _schema()
    data = Path(path).read_bytes()
    model = schema.Model.GetRootAs(data, 0)
    return {
        w.buffer: _buffer_view(data, model, w.buffer).view(np.float32).reshape(w.shape).copy()
        for w in weights
    }


def _short_name(name: bytes | None, subgraph: int, index: int) -> bytes:
    """A readable, unique short form of a litert-torch tensor name, which is the full Python
    module path of every op fused into it (';;'-joined), ~500 bytes: 1 MB of an INT4 MiniLM
    (7% of the file) was tensor names. Kept: the first fused location naming a Linear (the
    weight's own: a key projection is named 'LayerNorm;;Linear_key;;Linear_query'), else the
    last, as its last four module names, plus subgraph and tensor index (ai-edge-quantizer needs
    names unique across the model, and fused names repeat), e.g.
    'BertLayer_0/BertAttention_attention/BertSelfAttention_self/Linear_key#0.29'."""
    parts = (name or b"").decode("utf-8", errors="replace").rstrip(";").split(";;")
    own = next((p for p in parts if "Linear_" in p.rsplit("/", 1)[-1]), parts[-1])
    short = "/".join(segment.rsplit(".", 1)[-1] for segment in own.split("/")[-4:])
    return f"{short[-96:]}#{subgraph}.{index}".encode()


def _compact_copy(in_path: Path, out_path: Path) -> None:
    """`in_path` with short tensor names (_short_name) written to `out_path`; numerics, ops,
    signatures and weights unchanged. Buffers of 1 KB or more go after the flatbuffer, 16-byte
    aligned, the layout ai-edge-quantizer writes (model_modifier._serialize_model)."""
    from ai_edge_litert.tools import flatbuffer_utils

    schema = _schema()
    model = flatbuffer_utils.read_model_from_bytearray(bytearray(Path(in_path).read_bytes()))
    for subgraph, graph in enumerate(model.subgraphs):
        for index, tensor in enumerate(graph.tensors):
            tensor.name = _short_name(tensor.name, subgraph, index)
    large = {}
    for index, buffer in enumerate(model.buffers):
        if buffer.data is not None and len(buffer.data) >= 1024:
            large[index] = np.asarray(buffer.data, np.uint8).reshape(-1)
            buffer.data, buffer.offset, buffer.size = None, 1, 1  # reserve the fields
    head = bytearray(flatbuffer_utils.convert_object_to_bytearray(model))
    packed = schema.Model.GetRootAs(head, 0)
    offset, pieces = (len(head) + 15) & ~15, []
    for index, values in large.items():
        flatbuffer_utils.update_packed_buffer(
            packed.Buffers(index), offset=offset, size=values.size
        )
        pieces.append((offset, values))
        offset = (offset + values.size + 15) & ~15
    out = bytearray(offset)
    out[: len(head)] = head
    for start, values in pieces:
        out[start : start + values.size] = values.tobytes()
    Path(out_path).write_bytes(bytes(out))


# -- running signatures --------------------------------------------------------------------------


def _signature_lengths(path: Path) -> list[int]:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    lengths = []
    for key in interpreter.get_signature_list():
        details = interpreter.get_signature_runner(key).get_input_details()
        lengths.append(int(next(iter(details.values()))["shape"][1]))
    return lengths


class _Signatures:
    """A .tflite's signatures by bucket length: each row runs on the smallest that fits it."""

    def __init__(self, path: Path, preserve: bool = False, threads: int = 2):
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        schema = _schema()
        kwargs: dict[str, Any] = {"model_path": str(path), "num_threads": threads}
        if preserve:
            # Intermediate tensors are only readable on the builtin kernels (XNNPACK fuses them).
            kwargs.update(
                experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
                experimental_preserve_all_tensors=True,
            )
        self.interpreter = Interpreter(**kwargs)
        model = schema.Model.GetRootAs(Path(path).read_bytes(), 0)
        self._buckets = []
        for i in range(model.SignatureDefsLength()):
            sig = model.SignatureDefs(i)
            key = sig.SignatureKey().decode()
            runner = self.interpreter.get_signature_runner(key)
            details = runner.get_input_details()
            length = int(next(iter(details.values()))["shape"][1])
            self._buckets.append((length, key, sig.SubgraphIndex(), runner, details))
        self._buckets.sort(key=lambda b: b[0])

    def run(self, row: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], int, int]:
        """(outputs cut to the row's n tokens, bucket length, subgraph index)."""
        n = row["attention_mask"].shape[1]
        fits = [b for b in self._buckets if b[0] >= n]
        if not fits:
            raise ConversionError(
                f"a calibration row has {n} tokens; the longest signature takes {self._buckets[-1][0]}"
            )
        length, _, subgraph, runner, details = fits[0]
        feeds = {}
        for name, detail in details.items():
            value = np.zeros((1, length), detail["dtype"])
            value[:, :n] = row[name]
            feeds[name] = value
        outputs = runner(**feeds)
        cut = {
            k: v[:, :n] if v.ndim >= 2 and v.shape[1] == length else v for k, v in outputs.items()
        }
        return cut, length, subgraph


def _hessians(
    path: Path, weights: dict[int, _Weight], rows: list[dict[str, np.ndarray]]
) -> dict[int, np.ndarray]:
    """E[x^T x] of each FC weight's input over the real tokens of every row, each row weighted
    alike (a short row counts as much as a long one), summed over the signatures sharing it."""
    signatures = _Signatures(path, preserve=True)
    by_subgraph: dict[int, list[tuple[int, int]]] = {}
    for weight in weights.values():
        for subgraph, tensor in weight.inputs:
            by_subgraph.setdefault(subgraph, []).append((weight.buffer, tensor))
    sums: dict[int, np.ndarray] = {}
    pending: dict[int, list[np.ndarray]] = {}

    def flush() -> None:
        # One GEMM per weight over many rows: per-row products of a few tokens were 90% of the
        # time. float32 products of at most _HESSIAN_CHUNK rows, accumulated in float64.
        for buffer, parts in pending.items():
            x = np.concatenate(parts)
            sums[buffer] = sums.get(buffer, 0.0) + (x.T @ x).astype(np.float64)
        pending.clear()

    for count, row in enumerate(rows, 1):
        n = row["attention_mask"].shape[1]
        _, length, subgraph = signatures.run(row)
        for buffer, tensor in by_subgraph.get(subgraph, []):
            x = signatures.interpreter.get_tensor(tensor, subgraph)
            x = x.reshape(-1, x.shape[-1])
            if x.shape[0] == length:  # one row per token position: keep the real ones
                x = x[:n]
            pending.setdefault(buffer, []).append(x.astype(np.float32) / np.sqrt(len(x)))
        if count % _HESSIAN_CHUNK == 0:
            flush()
    flush()
    return {buffer: h / len(rows) for buffer, h in sums.items()}


# -- INT4 values ---------------------------------------------------------------------------------


def _bf16(values: np.ndarray) -> np.ndarray:
    """Round to bfloat16 (kept as float32): XNNPACK's qb4w kernels take bf16 block scales, and
    ai-edge-quantizer rounds blockwise scales the same way before storing them as float16."""
    import ml_dtypes

    return values.astype(ml_dtypes.bfloat16).astype(np.float32)


def _block_scales(weight: np.ndarray, energy: np.ndarray) -> np.ndarray:
    """Per [out, block] scale of symmetric INT4 ([-8, 7] x scale): the shrink of the block's max
    that minimises sum_k E[x_k^2] (w_k - q_k)^2, i.e. the output error with round-to-nearest."""
    rows, cols = weight.shape
    blocks = weight.reshape(rows, cols // _BLOCK, _BLOCK).astype(np.float64)
    energy = energy.reshape(cols // _BLOCK, _BLOCK)
    peak = np.abs(blocks).max(-1, keepdims=True)
    best_error = best_scale = None
    for ratio in _CLIP_RATIOS:
        scale = _bf16(np.maximum(peak * ratio / 7.0, 1e-12)).astype(np.float64)
        error = (((np.clip(np.rint(blocks / scale), -8, 7) * scale - blocks) ** 2) * energy).sum(
            -1, keepdims=True
        )
        if best_error is None:
            best_error, best_scale = error, scale
        else:
            better = error < best_error
            best_error = np.where(better, error, best_error)
            best_scale = np.where(better, scale, best_scale)
    return best_scale[..., 0].astype(np.float32)


def _gptq_int4(
    weight: np.ndarray, hessian: np.ndarray, damp: float
) -> tuple[np.ndarray, np.ndarray]:
    """(codes int8 [out, in] in [-8, 7], scales float32 [out, in / _BLOCK]) for an FC weight
    [out, in] (y = x W^T)."""
    from converters.gptq import GptqConfig, gptq

    scales = _block_scales(weight, np.diag(hessian))
    step = np.repeat(scales.astype(np.float64), _BLOCK, axis=1)  # [out, in]

    def row(k: int, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        q = np.clip(np.rint(values / step[:, k]), -8, 7)
        return q, q * step[:, k]

    codes = gptq(weight.T, hessian, row, GptqConfig(damp=damp, act_order=True))
    return codes.T.astype(np.int8), scales


def _pack_int4(codes: np.ndarray) -> np.ndarray:
    """Two values per byte, the first in the low nibble (ai-edge-quantizer's pack_data)."""
    flat = codes.reshape(-1).astype(np.uint8) & 0x0F
    if flat.size % 2:
        flat = np.append(flat, np.uint8(0))
    return (flat[0::2] | (flat[1::2] << 4)).astype(np.uint8)


def _unpack_int4(packed: np.ndarray, count: int) -> np.ndarray:
    low = (packed & 0x0F).astype(np.int8)
    high = (packed >> 4).astype(np.int8)
    flat = np.empty(packed.size * 2, np.int8)
    flat[0::2], flat[1::2] = low, high
    flat = np.where(flat > 7, flat - 16, flat).astype(np.int8)
    return flat[:count]


def _weight_tensors(model, weight: _Weight) -> list[tuple[Any, Any]]:
    """(subgraph, tensor) each op using `weight` reads it from, in a quantized copy of the model
    (the quantizers keep subgraph and op order, so the FP32 model's op indices still apply)."""
    tensors = []
    for subgraph, op_index, _ in weight.uses:
        graph = model.Subgraphs(subgraph)
        tensors.append((graph, graph.Tensors(graph.Operators(op_index).Inputs(1))))
    return tensors


def _write_int4(
    path: Path,
    weights: dict[int, _Weight],
    floats: dict[int, np.ndarray],
    values: dict[int, tuple[np.ndarray, np.ndarray]],
) -> list[int]:
    """Overwrite, in place, the INT4 blockwise FC weights of the quantized model at `path` with
    `values` ({FP32 buffer: (codes, scales)}); `floats` holds their FP32 values. Returns the
    FP32 buffers written.

    Precondition, checked per weight: the quantizer's codes are round-to-nearest of the float
    weight on its own float16 scales, [out, in / 32] (the layout this writer assumes); anything
    else means ai-edge-quantizer changed its format, and writing on a wrong layout would
    corrupt the model."""
    schema = _schema()
    data = bytearray(Path(path).read_bytes())
    model = schema.Model.GetRootAs(data, 0)
    problems, written = [], []
    for buffer, (codes, scales) in values.items():
        weight = weights[buffer]
        targets = set()
        for graph, tensor in _weight_tensors(model, weight):
            quant = tensor.Quantization()
            if (
                tensor.Type() != schema.TensorType.INT4
                or quant is None
                or quant.DetailsType() != schema.QuantizationDetails.BlockwiseQuantization
            ):
                targets.add(None)
                continue
            details = schema.BlockwiseQuantization()
            details.Init(quant.Details().Bytes, quant.Details().Pos)
            targets.add(
                (tensor.Buffer(), graph.Tensors(details.Scales()).Buffer(), details.BlockSize())
            )
        if None in targets or len(targets) != 1:
            problems.append(
                f"{weight.name}: not one INT4 blockwise tensor shared by its signatures ({targets})"
            )
            continue
        data_buffer, scale_buffer, block = targets.pop()
        packed = _buffer_view(data, model, data_buffer)
        stored = _buffer_view(data, model, scale_buffer)
        theirs = stored.view(np.float16).astype(np.float32)
        if block != _BLOCK or theirs.size != scales.size or packed.size != (codes.size + 1) // 2:
            problems.append(
                f"{weight.name}: block {block}, {theirs.size} scales, {packed.size} bytes; "
                f"expected block {_BLOCK}, {scales.size} scales, {(codes.size + 1) // 2} bytes"
            )
            continue
        step = np.repeat(theirs.reshape(scales.shape), _BLOCK, axis=1)
        nearest = np.clip(np.rint(floats[buffer] / step), -8, 7)
        if np.mean(_unpack_int4(packed, codes.size).reshape(codes.shape) != nearest) > 0.001:
            problems.append(f"{weight.name}: codes are not round-to-nearest on its scales")
            continue
        packed[:] = _pack_int4(codes)
        stored[:] = scales.astype(np.float16).view(np.uint8).reshape(-1)
        written.append(buffer)
    if problems:
        raise ConversionError(
            f"{GPTQ_RECIPE}: unexpected INT4 layout in {Path(path).name}: " + "; ".join(problems)
        )
    Path(path).write_bytes(bytes(data))
    return sorted(written)


# -- recipes for ai-edge-quantizer ---------------------------------------------------------------


def _entry(regex: str, operation: str, bits: int, block: int) -> dict[str, Any]:
    granularity = f"BLOCKWISE_{block}" if block else "CHANNELWISE"
    return {
        "regex": regex,
        "operation": operation,
        "algorithm_key": "min_max_uniform_quantize",
        "op_config": {
            "weight_tensor_config": {
                "num_bits": bits,
                "symmetric": True,
                "granularity": granularity,
                "dtype": "INT",
                "block_size": block,
            },
            # INTEGER compute without explicit dequantize: XNNPACK's dynamic-range kernels
            "compute_precision": "INTEGER",
            "explicit_dequantize": False,
            "skip_checks": False,
        },
    }


def _mixed_recipe(
    weights: dict[int, _Weight], int8: set[int], embedding_min_elements: int
) -> list[dict[str, Any]]:
    """Every op named by its exact scope (ai-edge-quantizer matches regexes on scopes; the last
    match wins), so one weight's choice applies in every signature and nowhere else."""
    recipe = []
    for weight in weights.values():
        if weight.kind == _EMBEDDING:
            if int(np.prod(weight.shape)) < embedding_min_elements or weight.shape[-1] % _BLOCK:
                continue  # stays float
            bits, block = 4, _BLOCK
        elif weight.buffer in int8 or weight.shape[-1] % _BLOCK:
            bits, block = 8, 0
        else:
            bits, block = 4, _BLOCK
        for _, _, scope in weight.uses:
            recipe.append(_entry("^" + re.escape(scope) + "$", weight.kind, bits, block))
    return recipe


def _run_quantizer(in_path: Path, out_path: Path, recipe, calibration=None) -> None:
    from ai_edge_quantizer import quantizer

    qt = quantizer.Quantizer(str(in_path), recipe)
    calibrated = None
    if qt.need_calibration:
        calibrated = qt.calibrate(_calibration_feeds(in_path, calibration), num_threads=1)
    try:
        # All-zero weight blocks (e.g. the padding row of an embedding table) get scale 0 and
        # numpy warns on 0/0; those blocks dequantize to 0 whatever the cast gave.
        with (
            contextlib.redirect_stdout(io.StringIO()),
            np.errstate(invalid="ignore", divide="ignore"),
        ):
            result = qt.quantize(
                calibrated, enable_progress_bar=False, enable_progress_report=False
            )
        result.export_model(str(out_path), overwrite=True)
    except (RuntimeError, ValueError, KeyError) as exc:
        raise ConversionError(
            f"ai-edge-quantizer could not quantize {in_path.name}: {exc}"
        ) from exc


# -- measuring candidates ------------------------------------------------------------------------


class _Judge:
    """Agreement of a candidate with the FP32 .tflite on the calibration rows: cosine per row of
    the first output, mean-pooled over the tokens when it has a sequence axis (what sentence
    embeddings compare; a per-token cosine would hide errors that all tokens share)."""

    def __init__(self, fp32_path: Path, rows: list[dict[str, np.ndarray]], fp32_bytes: int):
        self.rows = rows
        self.fp32_bytes = fp32_bytes  # of the artifact the size budget refers to
        self.reference = self._outputs(fp32_path, rows)

    @staticmethod
    def _outputs(path: Path, rows) -> list[np.ndarray]:
        signatures = _Signatures(path)
        outputs = []
        for row in rows:
            got, _, _ = signatures.run(row)
            value = next(iter(got.values()))[0]  # export_tflite writes one output
            outputs.append(value.mean(0) if value.ndim == 2 else value.reshape(-1))
        return outputs

    def metrics(self, path: Path, subset: np.ndarray | None = None) -> dict[str, float]:
        picked = np.arange(len(self.rows)) if subset is None else subset
        got = np.stack(self._outputs(path, [self.rows[i] for i in picked]))
        cos = row_cosine(got, np.stack([self.reference[i] for i in picked]))
        if not np.isfinite(cos).all():
            raise ConversionError(f"{Path(path).name} computes non-finite outputs")
        return {"cosine_mean": float(cos.mean()), "cosine_min": float(cos.min())}


# -- gptq_wi4b32_afp32 ---------------------------------------------------------------------------


class _Int4Builder:
    """Builds the INT4 model for a set of INT8 FC weights; GPTQ codes are computed once."""

    def __init__(self, fp32_path: Path, config: GptqInt4Config):
        self.fp32_path, self.config = fp32_path, config
        self.weights = _weights(fp32_path)
        # Blocks run along the input axis: a weight whose input width is not a multiple of the
        # block (none in BERT-style encoders) is stored INT8 per channel instead.
        self.int4 = [w for w in self.weights.values() if w.kind == _FC and not w.shape[-1] % _BLOCK]
        self.floats = _float_weights(fp32_path, self.int4)
        self.codes: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def round(self, rows: list[dict[str, np.ndarray]], progress: Progress) -> None:
        """GPTQ codes of every INT4 weight, from input statistics on `rows`."""
        count = len(self.int4)
        progress(f"GPTQ: input statistics of {count} FULLY_CONNECTED weights, {len(rows)} rows")
        hessians = _hessians(self.fp32_path, {w.buffer: w for w in self.int4}, rows)
        for index, weight in enumerate(self.int4, 1):
            self.codes[weight.buffer] = _gptq_int4(
                self.floats[weight.buffer], hessians[weight.buffer], self.config.damp
            )
            if index % 12 == 0 or index == count:
                progress(f"GPTQ: {index}/{count} weights rounded")

    def build(self, out_path: Path, int8: set[int]) -> int:
        """The model with `int8` weights INT8 and the others INT4 (GPTQ values once round()
        ran, ai-edge-quantizer's round-to-nearest before); returns its size in bytes."""
        recipe = _mixed_recipe(self.weights, int8, self.config.embedding_min_elements)
        _run_quantizer(self.fp32_path, out_path, recipe)
        values = {b: v for b, v in self.codes.items() if b not in int8}
        _write_int4(out_path, self.weights, self.floats, values)
        return out_path.stat().st_size

    def schemes(self, int8: set[int]) -> dict[str, dict[str, Any]]:
        """Per weight (by its short tensor name): op, shape and how it is stored."""
        layers = {}
        for weight in self.weights.values():
            if weight.buffer in self.codes and weight.buffer not in int8:
                scheme = f"int4 block {_BLOCK}, GPTQ"
            elif weight.kind == _FC:
                scheme = "int8 per channel"
            elif (
                int(np.prod(weight.shape)) >= self.config.embedding_min_elements
                and not weight.shape[-1] % _BLOCK
            ):
                scheme = f"int4 block {_BLOCK}, min-max"
            else:
                scheme = "float32"
            layers[weight.name] = {"op": weight.kind, "shape": list(weight.shape), "scheme": scheme}
        return layers


def _fit_budget(
    builder: _Int4Builder, judge: _Judge, budget: int, probe: Path, progress: Progress
) -> tuple[set[int], list[dict[str, Any]]]:
    """Move FC weights to INT8, most calibration loss removed per added byte first, while the
    file stays within `budget` bytes and each move measurably lowers the loss (the scheme of
    quantize_int4._fit_budget for ONNX)."""
    base_size = builder.build(probe, set())
    # Ranking needs only the order: an evenly spread subset of rows (short and long) is enough.
    count = builder.config.sensitivity_rows
    subset = np.unique(np.linspace(0, len(judge.rows) - 1, count).astype(int))
    base = probe_loss(judge.metrics(probe, subset))
    progress(f"ranking {len(builder.codes)} INT4 weights by measured sensitivity")
    gains = {}
    for buffer in builder.codes:
        size = builder.build(probe, {buffer})
        gains[buffer] = (base - probe_loss(judge.metrics(probe, subset)), size - base_size)
    ranked = sorted(
        (b for b in gains if gains[b][0] > 0),
        key=lambda b: gains[b][0] / max(gains[b][1], 1),
        reverse=True,
    )
    chosen: set[int] = set()
    size = base_size
    builder.build(probe, chosen)  # the probe holds the last ranking candidate
    metrics = judge.metrics(probe)
    search: list[dict[str, Any]] = [{"int8": [], "bytes": base_size, "metrics": metrics}]
    for buffer in ranked:
        name = builder.weights[buffer].name
        step = {"weight": name, "sensitivity": gains[buffer][0], "added_bytes": gains[buffer][1]}
        if size + gains[buffer][1] > budget:  # sizes add up (16-byte padding aside)
            search.append({**step, "accepted": False, "why": "over budget"})
            continue
        trial_size = builder.build(probe, chosen | {buffer})
        if trial_size > budget:
            search.append({**step, "bytes": trial_size, "accepted": False, "why": "over budget"})
            continue
        trial = judge.metrics(probe)
        accepted = probe_loss(trial) < probe_loss(metrics)
        search.append({**step, "bytes": trial_size, "accepted": accepted, "metrics": trial})
        if accepted:
            chosen.add(buffer)
            metrics, size = trial, trial_size
            progress(
                f"  INT8 {len(chosen)}: {name} -> cosine {trial['cosine_mean']:.4f} / "
                f"{trial['cosine_min']:.4f}, {size / judge.fp32_bytes:.4f}x FP32"
            )
    return chosen, search


def _quantize_gptq_int4(
    in_path: Path,
    out_path: Path,
    calibration: list[dict[str, np.ndarray]],
    config: GptqInt4Config,
    progress: Progress,
) -> dict[str, Any]:
    rows = _rows(calibration, max(_signature_lengths(in_path)))
    hessian_rows = _with_prefixes(rows, config.prefix_tokens)
    compact = out_path.with_name(out_path.stem + ".compact.tflite")
    probe = out_path.with_name(out_path.stem + ".probe.tflite")
    fp32_bytes = in_path.stat().st_size
    try:
        _compact_copy(in_path, compact)
        builder = _Int4Builder(compact, config)
        if config.size_budget is not None:
            # The size does not depend on the values: refuse before the expensive part.
            size = builder.build(probe, set())
            if size > config.size_budget * fp32_bytes:
                # Small models are dominated by what stays float (norms, biases, positions).
                raise AccuracyError(
                    f"the all-INT4 model is {size} bytes ({size / fp32_bytes:.3f}x FP32), above "
                    f"the size budget of {config.size_budget}x FP32 (a profile's [tflite] "
                    "int4_size_budget): raise it, or ship the INT8 artifact for this model"
                )
        builder.round(hessian_rows, progress)
        # The judge sees the calibration texts only: with the prefix rows too it ranked layers
        # for synthetic inputs and took 25% longer, for the same held-out accuracy on MiniLM.
        judge = _Judge(compact, rows, fp32_bytes)
        chosen: set[int] = set()
        search: list[dict[str, Any]] = []
        if config.size_budget is not None:
            budget = int(config.size_budget * fp32_bytes)
            chosen, search = _fit_budget(builder, judge, budget, probe, progress)
        builder.build(out_path, chosen)
        metrics = judge.metrics(out_path)  # measured on the bytes that ship
    finally:
        compact.unlink(missing_ok=True)
        probe.unlink(missing_ok=True)
    layers = builder.schemes(chosen)
    for name, layer in layers.items():
        if not layer["scheme"].startswith("int4"):
            log.info("%s: %s %s stays %s", GPTQ_RECIPE, layer["op"], name, layer["scheme"])
    return {
        "config": config.as_dict(),
        "calibration_rows": len(rows),
        "hessian_rows": len(hessian_rows),
        "layers": layers,
        "kept_int8": [builder.weights[b].name for b in sorted(chosen)],
        "budget_search": search,
        "calibration_metrics": metrics,
    }


# -- gptq_wi8_afp32 -----------------------------------------------------------------------------
_INT8_DAMP = 0.03  # as for INT4 (GptqInt4Config.damp)
_INT8_PREFIX_TOKENS = (1, 2, 3)  # short-input Hessian rows, as for INT4


def _gptq_int8(weight: np.ndarray, hessian: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """int8 codes [out, in] in [-127, 127] of an FC weight [out, in] (y = x W^T) on fixed
    per-output-channel `scales` (the quantizer's own)."""
    from converters.gptq import GptqConfig, gptq

    step = scales.astype(np.float64)

    def row(k: int, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        q = np.clip(np.rint(values / step), -127, 127)
        return q, q * step

    return gptq(weight.T, hessian, row, GptqConfig(damp=_INT8_DAMP, act_order=True)).T.astype(np.int8)


def _write_int8(
    path: Path, weights: dict[int, _Weight], floats: dict[int, np.ndarray],
    hessians: dict[int, np.ndarray], progress: Progress, codes: dict[int, np.ndarray],
) -> int:
    """Replace, in place, the int8 per-channel FC weights of the quantized model at `path` by
    GPTQ codes on the same scales. Returns how many weights were rewritten.

    Precondition, checked per weight: one INT8 tensor shared by the signatures, symmetric
    (zero points 0), one scale per output channel, and codes that are round-to-nearest of the
    float weight on those scales (the layout this writer assumes). `codes` caches the GPTQ
    codes by FP32 buffer across calls."""
    schema = _schema()
    data = bytearray(Path(path).read_bytes())
    model = schema.Model.GetRootAs(data, 0)
    problems, written = [], 0
    for index, (buffer, weight) in enumerate(weights.items(), 1):
        targets, scales = set(), None
        for _, tensor in _weight_tensors(model, weight):
            quant = tensor.Quantization()
            if (
                tensor.Type() != schema.TensorType.INT8
                or quant is None
                or quant.ScaleLength() != weight.shape[0]
                or quant.QuantizedDimension() != 0
                or (quant.ZeroPointLength() and np.any(quant.ZeroPointAsNumpy()))
            ):
                targets.add(None)
                continue
            targets.add(tensor.Buffer())
            scales = quant.ScaleAsNumpy().astype(np.float32)
        if None in targets or len(targets) != 1:
            problems.append(f"{weight.name}: not one symmetric per-channel INT8 tensor ({targets})")
            continue
        stored = _buffer_view(data, model, targets.pop()).view(np.int8)
        if stored.size != floats[buffer].size:
            problems.append(f"{weight.name}: {stored.size} int8 values for shape {weight.shape}")
            continue
        stored = stored.reshape(weight.shape)
        nearest = np.clip(np.rint(floats[buffer] / scales[:, None]), -127, 127)
        if np.mean(stored != nearest) > 0.001:
            problems.append(f"{weight.name}: codes are not round-to-nearest on its scales")
            continue
        if buffer not in codes:  # the scales depend on the weight only: reused by every build
            codes[buffer] = _gptq_int8(floats[buffer], hessians[buffer], scales)
            if index % 12 == 0 or index == len(weights):
                progress(f"GPTQ: {index}/{len(weights)} weights rounded")
        stored[:] = codes[buffer]
        written += 1
    if problems:
        raise ConversionError(
            f"{GPTQ_INT8_RECIPE}: unexpected INT8 layout in {Path(path).name}: " + "; ".join(problems)
        )
    Path(path).write_bytes(bytes(data))
    return written


def _int8_recipe(weights: dict[int, _Weight], float_fcs: set[int]) -> list[dict[str, Any]]:
    """dynamic_wi8_afp32's choices written per op (int8 per-channel FULLY_CONNECTED weights and
    embedding tables), except the FCs in `float_fcs`, which stay float."""
    recipe = []
    for weight in weights.values():
        if weight.buffer in float_fcs:
            continue
        for _, _, scope in weight.uses:
            recipe.append(_entry("^" + re.escape(scope) + "$", weight.kind, 8, 0))
    return recipe


class _Int8Builder:
    """Builds gptq_wi8_afp32 models for a set of float FCs; GPTQ codes are computed once."""

    def __init__(self, fp32_path: Path, hessian_rows: list[dict[str, np.ndarray]], progress: Progress):
        self.fp32_path, self.progress = fp32_path, progress
        self.weights = _weights(fp32_path)
        self.fcs = {b: w for b, w in self.weights.items() if w.kind == _FC}
        self.floats = _float_weights(fp32_path, list(self.fcs.values()))
        progress(f"GPTQ: input statistics of {len(self.fcs)} FULLY_CONNECTED weights, {len(hessian_rows)} rows")
        self.hessians = _hessians(fp32_path, self.fcs, hessian_rows)
        self.codes: dict[int, np.ndarray] = {}

    def label(self, buffer: int) -> str:
        """A readable name for reports (litert-torch's are full module paths of fused ops)."""
        return _short_name(self.fcs[buffer].name.encode(), 0, buffer).decode()

    def build(self, out_path: Path, float_fcs: set[int]) -> int:
        _run_quantizer(self.fp32_path, out_path, _int8_recipe(self.weights, float_fcs))
        int8 = {b: w for b, w in self.fcs.items() if b not in float_fcs}
        return _write_int8(out_path, int8, self.floats, self.hessians, self.progress, self.codes)


def _meets(metrics: dict[str, float], floor: tuple[float, float]) -> bool:
    return metrics["cosine_mean"] >= floor[0] and metrics["cosine_min"] >= floor[1]


def _quantize_gptq_int8(
    in_path: Path, out_path: Path, calibration: list[dict[str, np.ndarray]],
    floor: tuple[float, float] | None, progress: Progress,
) -> dict[str, Any]:
    """GPTQ INT8; with a floor (cosine mean, min vs the FP32 .tflite on the calibration rows)
    that the all-INT8 model misses, the FCs whose float form recovers the most (each measured
    alone) are kept float, one at a time, until it is met."""
    rows = _rows(calibration, max(_signature_lengths(in_path)))
    hessian_rows = _with_prefixes(rows, _INT8_PREFIX_TOKENS)
    builder = _Int8Builder(in_path, hessian_rows, progress)
    written = builder.build(out_path, set())
    report: dict[str, Any] = {
        "gptq": {"weights": written, "damp": _INT8_DAMP, "prefix_tokens": list(_INT8_PREFIX_TOKENS),
                 "calibration_rows": len(rows), "hessian_rows": len(hessian_rows)},
        "kept_float": [],
    }
    if floor is None:
        return report
    judge = _Judge(in_path, rows, in_path.stat().st_size)
    metrics = judge.metrics(out_path)
    report["calibration_metrics"] = metrics
    if _meets(metrics, floor):
        return report
    progress(f"all-INT8 cosine {metrics['cosine_mean']:.4f} / {metrics['cosine_min']:.4f} vs FP32 .tflite, "
             f"floor {floor[0]} / {floor[1]}: ranking {len(builder.fcs)} FULLY_CONNECTED weights")
    probe = out_path.with_name(out_path.stem + ".probe.tflite")
    try:
        count = min(len(rows), _SENSITIVITY_ROWS)
        subset = np.unique(np.linspace(0, len(rows) - 1, count).astype(int))
        base = probe_loss(judge.metrics(out_path, subset))
        gains = {}
        for buffer in builder.fcs:
            builder.build(probe, {buffer})
            gains[buffer] = base - probe_loss(judge.metrics(probe, subset))
        kept: list[int] = []  # in the order they were added
        search = []
        for buffer in sorted((b for b in gains if gains[b] > 0), key=gains.get, reverse=True):
            kept.append(buffer)
            builder.build(probe, set(kept))
            metrics = judge.metrics(probe)
            search.append({"weight": builder.label(buffer), "metrics": metrics})
            progress(f"  float {len(kept)}: {builder.label(buffer)} -> cosine "
                     f"{metrics['cosine_mean']:.4f} / {metrics['cosine_min']:.4f}")
            if _meets(metrics, floor):
                break
        report["gptq"]["weights"] = builder.build(out_path, set(kept))
    finally:
        probe.unlink(missing_ok=True)
    report.update(kept_float=[builder.label(b) for b in kept], calibration_metrics=metrics, search=search)
    return report


# -- the pass ------------------------------------------------------------------------------------


def _calibration_feeds(
    path: Path, calibration: list[dict[str, np.ndarray]]
) -> dict[str, list[dict[str, np.ndarray]]]:
    """Per signature, each calibration row cut/padded to the signature's length (pad 0, mask 0)."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    feeds: dict[str, list[dict[str, np.ndarray]]] = {}
    for key, spec in interpreter.get_signature_list().items():
        details = interpreter.get_signature_runner(key).get_input_details()
        length = int(details[spec["inputs"][0]]["shape"][1])
        rows = []
        for sample in calibration:
            missing = set(spec["inputs"]) - set(sample)
            if missing:
                raise ConversionError(
                    f"calibration sample lacks inputs {sorted(missing)}; "
                    f"the model takes {spec['inputs']}"
                )
            batch = np.atleast_2d(np.asarray(sample[spec["inputs"][0]])).shape[0]
            for row in range(batch):
                feed = {}
                for name in spec["inputs"]:
                    value = np.atleast_2d(np.asarray(sample[name]))[row, :length]
                    padded = np.zeros((1, length), details[name]["dtype"])
                    padded[0, : value.shape[0]] = value
                    feed[name] = padded
                rows.append(feed)
        feeds[key] = rows
    return feeds


def _outputs_close(float_path: Path, quant_path: Path) -> dict[str, float]:
    """Cosine of each signature's output, quantized vs float, on a fixed synthetic input.

    Not an accuracy metric (the pipeline validates on real text): a cheap postcondition that
    catches a broken rewrite (NaN, zeros, a signature wired to the wrong subgraph)."""
    from ai_edge_litert.interpreter import Interpreter

    ref_it = Interpreter(model_path=str(float_path), num_threads=1)
    q_it = Interpreter(model_path=str(quant_path), num_threads=1)
    cosines = {}
    rng = np.random.default_rng(0)
    for key, spec in ref_it.get_signature_list().items():
        ref_runner = ref_it.get_signature_runner(key)
        details = ref_runner.get_input_details()
        length = int(details[spec["inputs"][0]]["shape"][1])
        used = max(1, length // 2)
        feed = {}
        for name in spec["inputs"]:
            value = np.zeros((1, length), np.int32)
            if name == "attention_mask":
                value[0, :used] = 1
            elif name == "input_ids":
                value[0, :used] = rng.integers(5, 100, used)
            feed[name] = value
        want = ref_runner(**feed)
        got = q_it.get_signature_runner(key)(**feed)
        a = np.concatenate([v.ravel() for v in want.values()]).astype(np.float64)
        b = np.concatenate([got[k].ravel() for k in want]).astype(np.float64)
        cosines[key] = float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-30))
    return cosines


def quantize_tflite(
    in_path: Path,
    out_path: Path,
    recipe: str,
    calibration: list[dict[str, np.ndarray]] | None = None,
    *,
    int4: GptqInt4Config | None = None,
    progress: Progress = lambda message: None,
    floor: tuple[float, float] | None = None,
) -> dict[str, Any]:
    """Quantize the FP32 .tflite at `in_path` with `recipe` into `out_path`.

    Precondition: `in_path` is a float model with named signatures (export_tflite's output).
    Postcondition (checked on the written file): the same signatures with the same inputs and
    outputs, and outputs that are finite and point the same way as the float model's.
    `calibration` (named int [batch, seq] arrays with an attention_mask, e.g. from
    converters.validate.make_batches) is used only by recipes that need it. `int4` configures
    gptq_wi4b32_afp32 (default GptqInt4Config()); with a size_budget that the all-INT4 model
    already exceeds, AccuracyError is raised (the pipeline refuses the artifact). `floor`
    (cosine mean, min against the FP32 .tflite on the calibration rows) lets gptq_wi8_afp32
    keep its most sensitive FULLY_CONNECTED weights float until it is met.
    """
    if recipe in _REFUSED:
        raise ConversionError(
            f"TFLite recipe {recipe!r} is not supported: {_REFUSED[recipe]} "
            f"Supported: {', '.join(RECIPES)}"
        )
    if recipe not in RECIPES:
        raise ConversionError(f"unknown TFLite recipe {recipe!r}; supported: {', '.join(RECIPES)}")
    spec = RECIPES[recipe]
    if spec.needs_calibration and not calibration:
        raise ConversionError(
            f"TFLite recipe {recipe!r} needs calibration samples (tokenized texts); none were given"
        )
    if int4 is not None and recipe != GPTQ_RECIPE:
        raise ConversionError(
            f"GptqInt4Config applies to {GPTQ_RECIPE} only; {recipe!r} is ai-edge-quantizer's own"
        )
    in_path, out_path = Path(in_path), Path(out_path)

    from ai_edge_litert.interpreter import Interpreter

    before = Interpreter(model_path=str(in_path)).get_signature_list()
    started = time.perf_counter()
    details: dict[str, Any] = {}
    if recipe == GPTQ_INT8_RECIPE:
        details = _quantize_gptq_int8(in_path, out_path, calibration, floor, progress)
    elif spec.ours:
        config = int4 or GptqInt4Config()
        details = _quantize_gptq_int4(in_path, out_path, calibration, config, progress)
    else:
        from ai_edge_quantizer import recipe as recipes

        _run_quantizer(in_path, out_path, getattr(recipes, recipe)(), calibration)
    seconds = time.perf_counter() - started

    after = Interpreter(model_path=str(out_path)).get_signature_list()
    if after != before:
        raise ConversionError(
            f"quantizing {in_path.name} with {recipe!r} changed its signatures: {before} -> {after}"
        )
    cosines = _outputs_close(in_path, out_path)
    broken = {k: c for k, c in cosines.items() if not np.isfinite(c) or c < 0.5}
    if broken:
        raise ConversionError(
            f"{recipe!r} broke {in_path.name}: output cosine vs the float model "
            + ", ".join(f"{k} {c:.3f}" for k, c in broken.items())
        )

    from converters.export_tflite import op_counts

    return {
        "path": str(out_path),
        "recipe": recipe,
        "precision": spec.precision,
        "note": spec.note,
        "bytes": out_path.stat().st_size,
        "size_ratio": out_path.stat().st_size / in_path.stat().st_size,
        "signatures": sorted(after),
        "cosine_vs_float_synthetic": cosines,
        "op_counts": op_counts(out_path),
        "seconds": round(seconds, 2),
        "tool": {"ai_edge_quantizer": importlib.metadata.version("ai-edge-quantizer")},
        **details,
    }
