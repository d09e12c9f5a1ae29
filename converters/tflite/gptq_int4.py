"""gptq_wi4b32_afp32's writer: GPTQ-rounded INT4 blocks in ai-edge-quantizer's INT4 layout.

1. ai-edge-quantizer lays the graph out (mixed_recipe): every FULLY_CONNECTED weight INT4 in
   32-element blocks (XNNPACK's qd8 x qb4w kernels; activations are quantized per token at run
   time), the word-embedding table INT4 in 32-element blocks (a few outlier columns made
   per-row INT4 useless: blocks keep them local), small tables float, and the weights a search
   chose INT8 per channel.
2. The INT4 FULLY_CONNECTED values and block scales are then replaced in place (same tensors,
   types and byte sizes) by GPTQ rounding (converters/core/gptq.py, act-order) on a grid whose block
   scales come from a clip search weighted by the layer's input energy. ai-edge-quantizer's own
   INT4 algorithms (min-max, OCTAV, MSE, Hadamard rotation, its GPTQ) reached at best
   0.970 / 0.861 on MiniLM.

Which weights are INT8 is decided by the shared search (converters/core/search.py); the Hessians
come from hessians.py.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from converters._console import counter
from converters._errors import AccuracyError, ConversionError
from converters.tflite.config import BLOCK, GptqInt4Config
from converters.tflite.edge_quantizer import QuantizerSession, scoped_entries
from converters.tflite.flatbuffer import (
    EMBEDDING,
    FC,
    Weight,
    buffer_view,
    find_weights,
    float_weights,
    schema,
    weight_tensors,
)
from converters.tflite.hessians import HessianCache, TfliteHessians
from converters.tflite.recipes import GPTQ_RECIPE

__all__ = ["Int4Builder", "gptq_int4", "pack_int4", "unpack_int4", "write_int4"]

# How a size-budget refusal names the budget; the pipeline names the profile's setting instead
# (converters/_artifacts_tflite.py: int4_size_budget in targets/<id>.toml).
BUDGET_PARAMETER = "GptqInt4Config.size_budget"

Progress = Callable[[str], None]

_CLIP_RATIOS = np.linspace(0.7, 1.0, 13)  # shrinks of a block's max tried for its scale


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
    blocks = weight.reshape(rows, cols // BLOCK, BLOCK).astype(np.float64)
    energy = energy.reshape(cols // BLOCK, BLOCK)
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


def gptq_int4(
    weight: np.ndarray, hessian: np.ndarray, damp: float
) -> tuple[np.ndarray, np.ndarray]:
    """(codes int8 [out, in] in [-8, 7], scales float32 [out, in / BLOCK]) for an FC weight
    [out, in] (y = x W^T)."""
    from converters.core.gptq import GptqConfig, gptq

    scales = _block_scales(weight, np.diag(hessian))
    step = np.repeat(scales.astype(np.float64), BLOCK, axis=1)  # [out, in]

    def row(k: int, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        q = np.clip(np.rint(values / step[:, k]), -8, 7)
        return q, q * step[:, k]

    codes = gptq(weight.T, hessian, row, GptqConfig(damp=damp, act_order=True))
    return codes.T.astype(np.int8), scales


def pack_int4(codes: np.ndarray) -> np.ndarray:
    """Two values per byte, the first in the low nibble (ai-edge-quantizer's pack_data)."""
    flat = codes.reshape(-1).astype(np.uint8) & 0x0F
    if flat.size % 2:
        flat = np.append(flat, np.uint8(0))
    return (flat[0::2] | (flat[1::2] << 4)).astype(np.uint8)


def unpack_int4(packed: np.ndarray, count: int) -> np.ndarray:
    """The first `count` signed 4-bit values of `packed` (pack_int4's inverse), as int8."""
    low = (packed & 0x0F).astype(np.int8)
    high = (packed >> 4).astype(np.int8)
    flat = np.empty(packed.size * 2, np.int8)
    flat[0::2], flat[1::2] = low, high
    flat = np.where(flat > 7, flat - 16, flat).astype(np.int8)
    return flat[:count]


# -- writing them --------------------------------------------------------------------------------


def write_int4(
    path: Path,
    weights: dict[int, Weight],
    floats: dict[int, np.ndarray],
    values: dict[int, tuple[np.ndarray, np.ndarray]],
    checked: dict[int, tuple[np.ndarray, np.ndarray]] | None = None,
) -> list[int]:
    """Overwrite, in place, the INT4 blockwise FC weights of the quantized model at `path` with
    `values` ({FP32 buffer: (codes, scales)}); `floats` holds their FP32 values. Returns the
    FP32 buffers written.

    Precondition, checked per weight: the quantizer's codes are round-to-nearest of the float
    weight on its own float16 scales, [out, in / 32] (the layout this writer assumes); anything
    else means ai-edge-quantizer changed its format, and writing on a wrong layout would
    corrupt the model. `checked` (kept by a caller that writes many candidates of one model)
    remembers the quantizer's bytes of each weight that passed: the same bytes again need no
    second check."""
    fb = schema()
    data = bytearray(Path(path).read_bytes())
    model = fb.Model.GetRootAs(data, 0)
    problems, written = [], []
    for buffer, (codes, scales) in values.items():
        weight = weights[buffer]
        targets = set()
        for graph, tensor in weight_tensors(model, weight):
            quant = tensor.Quantization()
            if (
                tensor.Type() != fb.TensorType.INT4
                or quant is None
                or quant.DetailsType() != fb.QuantizationDetails.BlockwiseQuantization
            ):
                targets.add(None)
                continue
            details = fb.BlockwiseQuantization()
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
        packed = buffer_view(data, model, data_buffer)
        stored = buffer_view(data, model, scale_buffer)
        theirs = stored.view(np.float16).astype(np.float32)
        if block != BLOCK or theirs.size != scales.size or packed.size != (codes.size + 1) // 2:
            problems.append(
                f"{weight.name}: block {block}, {theirs.size} scales, {packed.size} bytes; "
                f"expected block {BLOCK}, {scales.size} scales, {(codes.size + 1) // 2} bytes"
            )
            continue
        before = checked.get(buffer) if checked is not None else None
        if before is None or not (np.array_equal(before[0], packed) and np.array_equal(before[1], stored)):
            step = np.repeat(theirs.reshape(scales.shape), BLOCK, axis=1)
            nearest = np.clip(np.rint(floats[buffer] / step), -8, 7)
            if np.mean(unpack_int4(packed, codes.size).reshape(codes.shape) != nearest) > 0.001:
                problems.append(f"{weight.name}: codes are not round-to-nearest on its scales")
                continue
            if checked is not None:
                checked[buffer] = (packed.copy(), stored.copy())
        packed[:] = pack_int4(codes)
        stored[:] = scales.astype(np.float16).view(np.uint8).reshape(-1)
        written.append(buffer)
    if problems:
        raise ConversionError(
            f"{GPTQ_RECIPE}: unexpected INT4 layout in {Path(path).name}: " + "; ".join(problems)
        )
    Path(path).write_bytes(bytes(data))
    return sorted(written)


def _mixed_recipe(
    weights: dict[int, Weight], int8: set[int], embedding_min_elements: int
) -> list[dict[str, Any]]:
    """Every op named by its exact scope (ai-edge-quantizer matches regexes on scopes), so one
    weight's choice applies in every signature and nowhere else."""
    choices = []
    for weight in weights.values():
        if weight.kind == EMBEDDING:
            if int(np.prod(weight.shape)) < embedding_min_elements or weight.shape[-1] % BLOCK:
                continue  # stays float
            bits, block = 4, BLOCK
        elif weight.buffer in int8 or weight.shape[-1] % BLOCK:
            bits, block = 8, 0
        else:
            bits, block = 4, BLOCK
        choices += [(scope, weight.kind, bits, block) for _, _, scope in weight.uses]
    return scoped_entries(choices)


class Int4Builder:
    """Builds the INT4 model for a set of INT8 FC weights; GPTQ codes are computed once."""

    def __init__(self, fp32_path: Path, config: GptqInt4Config, source: Path | None = None):
        """`fp32_path`: the model candidates are written from (a compact_copy); `source`: the
        export it was copied from, whose Hessians it shares (None: itself)."""
        self.fp32_path, self.config, self.source = fp32_path, config, source
        self.weights = find_weights(fp32_path)
        # Blocks run along the input axis: a weight whose input width is not a multiple of the
        # block (none in BERT-style encoders) is stored INT8 per channel instead.
        self.int4 = [w for w in self.weights.values() if w.kind == FC and not w.shape[-1] % BLOCK]
        self.floats = float_weights(fp32_path, self.int4)
        self.codes: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self.hessians_from = ""  # what round() read the input statistics with
        self.quantizer = QuantizerSession(fp32_path)
        self.checked: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # write_int4's layout checks passed

    def round(self, rows: list[dict[str, np.ndarray]], progress: Progress,
              hessians: HessianCache | None = None) -> None:
        """GPTQ codes of every INT4 weight, from input statistics on `rows`."""
        count = len(self.int4)
        progress(f"GPTQ: input statistics of {count} FULLY_CONNECTED weights, {len(rows)} rows")
        policy = self.config.gptq_policy()
        source = TfliteHessians(self.fp32_path, {w.buffer: w for w in self.int4}, rows, policy.weighting,
                                hessians, self.source,
                                progress=counter(progress, "GPTQ input statistics, step"))
        self.hessians_from = source.origin
        rounded = counter(progress, "GPTQ rounding, weight")
        rounded(0, count)
        for index, weight in enumerate(self.int4, 1):
            self.codes[weight.buffer] = gptq_int4(
                self.floats[weight.buffer], source.hessian(weight.buffer), policy.damp
            )
            rounded(index, count)

    def check_some_int4(self) -> None:
        if not self.int4:
            raise AccuracyError(f"no weight of this model can be stored in INT4 blocks: {self.unblocked()}; "
                                "ship the INT8 artifact for this model")

    def budget_advice(self) -> str:
        """The end of a size-budget refusal: raising the budget helps only when every weight
        that can be 4-bit is; else it would ship an "INT4" artifact of 8-bit weights."""
        unblocked = self.unblocked()
        if unblocked:
            return f", and raising it would not make these 4-bit: {unblocked}; ship the INT8 artifact for this model"
        return ": raise the budget, or ship the INT8 artifact for this model"

    def unblocked(self) -> str:
        """What cannot be 4-bit because its input width is not a multiple of the block, said for
        a refusal ("" when every FC weight and large embedding table can)."""
        fcs = [w for w in self.weights.values() if w.kind == FC]
        odd = sorted({w.shape[-1] for w in fcs if w.shape[-1] % BLOCK})
        tables = [w for w in self.weights.values() if w.kind == EMBEDDING and w.shape[-1] % BLOCK
                  and int(np.prod(w.shape)) >= self.config.embedding_min_elements]
        parts = []
        if odd:
            parts.append(f"{len(fcs) - len(self.int4)} of {len(fcs)} FULLY_CONNECTED weights have an input "
                         f"width ({', '.join(map(str, odd))}) that is not a multiple of the {BLOCK}-wide INT4 "
                         "block and stay INT8")
        if tables:
            parts.append(f"{len(tables)} embedding table(s) {tables[0].shape[-1]} wide stay float")
        return "; ".join(parts)

    def label(self, buffer: int) -> str:
        """The weight's tensor name (short already: the builder reads a compact_copy)."""
        return self.weights[buffer].name

    def build(self, out_path: Path, int8: set[int]) -> int:
        """The model with `int8` weights INT8 and the others INT4 (GPTQ values once round()
        ran, ai-edge-quantizer's round-to-nearest before); returns its size in bytes."""
        recipe = _mixed_recipe(self.weights, int8, self.config.embedding_min_elements)
        self.quantizer.run(out_path, recipe)
        values = {b: v for b, v in self.codes.items() if b not in int8}
        write_int4(out_path, self.weights, self.floats, values, self.checked)
        return out_path.stat().st_size

    def schemes(self, int8: set[int]) -> dict[str, dict[str, Any]]:
        """Per weight (by its short tensor name): op, shape and how it is stored."""
        layers = {}
        for weight in self.weights.values():
            if weight.buffer in self.codes and weight.buffer not in int8:
                scheme = f"int4 block {BLOCK}, GPTQ"
            elif weight.kind == FC:
                scheme = "int8 per channel"
            elif (
                int(np.prod(weight.shape)) >= self.config.embedding_min_elements
                and not weight.shape[-1] % BLOCK
            ):
                scheme = f"int4 block {BLOCK}, min-max"
            else:
                scheme = "float32"
            layers[weight.name] = {"op": weight.kind, "shape": list(weight.shape), "scheme": scheme}
        return layers
