"""gptq_wi8_afp32's writer: GPTQ-rounded INT8 codes in dynamic_wi8_afp32's own layout.

ai-edge-quantizer lays out the model (int8 per-channel FULLY_CONNECTED weights and embedding
tables, activations quantized per run by XNNPACK's QD8 kernels); this module then replaces the
FULLY_CONNECTED codes in place by GPTQ rounding (converters/core/gptq.py) on the quantizer's own
scales, so tensors, types and sizes stay exactly the stock recipe's. On MiniLM the stock
recipe's minimum cosine on the calibration texts is 0.984, GPTQ's 0.989 (targets/rpi5.toml).
Which weights stay float is decided by the shared search (converters/core/search.py), not here.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from converters._console import counter
from converters._errors import ConversionError
from converters.core.gptq import GPTQ_POLICY, HessianPolicy, HessianSource
from converters.tflite.edge_quantizer import QuantizerSession, scoped_entries
from converters.tflite.flatbuffer import (
    FC,
    Weight,
    buffer_view,
    find_weights,
    float_weights,
    schema,
    short_name,
    weight_tensors,
)
from converters.tflite.hessians import HessianCache, TfliteHessians
from converters.tflite.recipes import GPTQ_INT8_RECIPE

__all__ = ["Int8Builder", "gptq_int8", "write_int8"]

Progress = Callable[[str], None]


def gptq_int8(weight: np.ndarray, hessian: np.ndarray, scales: np.ndarray, damp: float) -> np.ndarray:
    """int8 codes [out, in] in [-127, 127] of an FC weight [out, in] (y = x W^T) on fixed
    per-output-channel `scales` (the quantizer's own)."""
    from converters.core.gptq import GptqConfig, gptq

    step = scales.astype(np.float64)

    def row(k: int, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        q = np.clip(np.rint(values / step), -127, 127)
        return q, q * step

    codes = gptq(weight.T, hessian, row, GptqConfig(damp=damp, act_order=True))
    return codes.T.astype(np.int8)


def write_int8(
    path: Path,
    weights: dict[int, Weight],
    floats: dict[int, np.ndarray],
    hessians: HessianSource,
    progress: Progress,
    codes: dict[int, np.ndarray],
    damp: float,
) -> int:
    """Replace, in place, the int8 per-channel FC weights of the quantized model at `path` by
    GPTQ codes on the same scales. Returns how many weights were rewritten.

    Precondition, checked per weight: one INT8 tensor shared by the signatures, symmetric
    (zero points 0), one scale per output channel, and codes that are round-to-nearest of the
    float weight on those scales (the layout this writer assumes). `codes` caches the GPTQ
    codes by FP32 buffer across calls."""
    fb = schema()
    data = bytearray(Path(path).read_bytes())
    model = fb.Model.GetRootAs(data, 0)
    problems, written = [], 0
    rounded = counter(progress, "GPTQ rounding, weight")
    for index, (buffer, weight) in enumerate(weights.items(), 1):
        targets, scales = set(), None
        for _, tensor in weight_tensors(model, weight):
            quant = tensor.Quantization()
            if (
                tensor.Type() != fb.TensorType.INT8
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
        stored = buffer_view(data, model, targets.pop()).view(np.int8)
        if stored.size != floats[buffer].size:
            problems.append(f"{weight.name}: {stored.size} int8 values for shape {weight.shape}")
            continue
        stored = stored.reshape(weight.shape)
        nearest = np.clip(np.rint(floats[buffer] / scales[:, None]), -127, 127)
        if np.mean(stored != nearest) > 0.001:
            problems.append(f"{weight.name}: codes are not round-to-nearest on its scales")
            continue
        if buffer not in codes:  # the scales depend on the weight only: reused by every build
            if not codes:
                rounded(index - 1, len(weights))
            codes[buffer] = gptq_int8(floats[buffer], hessians.hessian(buffer), scales, damp)
            rounded(index, len(weights))
        stored[:] = codes[buffer]
        written += 1
    if problems:
        raise ConversionError(
            f"{GPTQ_INT8_RECIPE}: unexpected INT8 layout in {Path(path).name}: "
            + "; ".join(problems)
        )
    Path(path).write_bytes(bytes(data))
    return written


def _int8_recipe(weights: dict[int, Weight], float_fcs: set[int]) -> list[dict[str, Any]]:
    """dynamic_wi8_afp32's choices written per op (int8 per-channel FULLY_CONNECTED weights and
    embedding tables), except the FCs in `float_fcs`, which stay float."""
    return scoped_entries((scope, weight.kind, 8, 0) for weight in weights.values()
                          if weight.buffer not in float_fcs for _, _, scope in weight.uses)


class Int8Builder:
    """Builds gptq_wi8_afp32 models for a set of float FCs; GPTQ codes are computed once."""

    def __init__(
        self, fp32_path: Path, hessian_rows: list[dict[str, np.ndarray]], progress: Progress,
        hessians: HessianCache | None = None, policy: HessianPolicy | None = None,
    ):
        """`hessian_rows`: the calibration rows with policy.prefix_tokens' rows added; `policy`:
        None = the shared INT8 policy (converters/core/gptq.py)."""
        self.fp32_path, self.progress = fp32_path, progress
        self.policy = policy or GPTQ_POLICY["int8"]
        self.weights = find_weights(fp32_path)
        self.fcs = {b: w for b, w in self.weights.items() if w.kind == FC}
        self.floats = float_weights(fp32_path, list(self.fcs.values()))
        progress(
            f"GPTQ: input statistics of {len(self.fcs)} FULLY_CONNECTED weights, "
            f"{len(hessian_rows)} rows"
        )
        self.hessians = TfliteHessians(fp32_path, self.fcs, hessian_rows, self.policy.weighting, hessians,
                                       progress=counter(progress, "GPTQ input statistics, step"))
        self.codes: dict[int, np.ndarray] = {}
        self.quantizer = QuantizerSession(fp32_path)

    def label(self, buffer: int) -> str:
        """A readable name for reports (litert-torch's are full module paths of fused ops)."""
        return short_name(self.fcs[buffer].name.encode(), 0, buffer).decode()

    def build(self, out_path: Path, float_fcs: set[int]) -> int:
        """The model with the FCs in `float_fcs` float and the others GPTQ INT8 at `out_path`;
        returns how many weights were written INT8."""
        self.quantizer.run(out_path, _int8_recipe(self.weights, float_fcs))
        int8 = {b: w for b, w in self.fcs.items() if b not in float_fcs}
        return write_int8(out_path, int8, self.floats, self.hessians, self.progress, self.codes, self.policy.damp)
