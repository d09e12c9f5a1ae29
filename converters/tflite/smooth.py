"""Pass: SmoothQuant-style rescaling of every FULLY_CONNECTED input of an FP32 .tflite (before
the dynamic-range recipe gptq_wi8_afp32; gptq_wi4b32_afp32 when its config asks).

XNNPACK's dynamic-range kernels quantize an FC's input per token (one int8 scale per row, set by
the row's largest |x|). BERT-style encoders carry a few outlier channels in every token's
activations (litert-torch even folds the LayerNorm's gamma into the FC weights, so the FC reads
the bare normalized x with its outliers): one outlier channel makes the int8 steps coarse for
every other channel of the token, and short texts, where a few tokens make the embedding,
suffer most. For y = x W^T the rewrite

    x' = x * (1/s)   (one inserted MUL per input tensor)      W' = W diag(s)   (in the weight)

leaves the FP32 result unchanged up to rounding and moves part of the range into the weights,
which are quantized per output channel (INT8) or per 32-block (INT4). s_j = rms_j^alpha /
max_i |W_ij|^(1 - alpha) (Xiao et al., SmoothQuant, 2022, with the channel's RMS over the fit
texts instead of its maximum), normalized to a geometric mean of 1 and clipped to [1e-2, 1e2].
The RMS is the square root of the GPTQ Hessian's diagonal (the same fit rows, the same
weighting), so it costs no extra pass, and the smoothed weights' Hessians follow exactly:
H' = diag(1/s) H diag(1/s).

FCs that read the same tensor (query, key and value) share one MUL and one s (the maximum of
|W_ij| over all of them). Measured on all-MiniLM-L6-v2 (RESULTS.md run AI; validation texts).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from converters._errors import ConversionError
from converters.tflite.flatbuffer import FC, Weight, find_weights, float_weights, read_model, schema, write_model
from converters.tflite.signatures import synthetic_cosines

__all__ = ["SMOOTH_ALPHA", "Smoothing", "smooth_fc_inputs"]

# Migration strength. Chosen on the validation texts (RESULTS.md run AI).
SMOOTH_ALPHA = 0.5
_CLIP = (1e-2, 1e2)


@dataclass
class Smoothing:
    """What smooth_fc_inputs did, keyed by the smoothed file's buffer indices (reading a model
    renumbers its buffers: ai-edge-litert drops empty ones): s per FC weight and its Hessian
    on the smoothed model (H' = diag(1/s) H diag(1/s): the input divided by s)."""

    alpha: float
    scales: dict[int, np.ndarray] = field(default_factory=dict)
    hessians: dict[int, np.ndarray] = field(default_factory=dict)
    mul_ops: int = 0  # MULs inserted: one per input tensor and signature

    def describe(self) -> dict[str, Any]:
        values = np.concatenate(list(self.scales.values())) if self.scales else np.ones(1)
        return {"alpha": self.alpha, "statistic": "RMS of each input channel on the fit rows (GPTQ Hessian diagonal)",
                "weights": len(self.scales), "mul_ops": self.mul_ops,
                "scale_range": [round(float(values.min()), 4), round(float(values.max()), 4)]}


def _groups(weights: dict[int, Weight]) -> list[tuple[int, ...]]:
    """The FC weights that read one input tensor, as groups of buffers; a weight whose group is
    not the same in every signature (never seen in litert-torch exports) is left out."""
    per_weight: dict[int, set[tuple[int, ...]]] = {}
    for subgraph in sorted({s for w in weights.values() for s, _ in w.inputs}):
        readers: dict[int, set[int]] = {}
        for weight in weights.values():
            for s, tensor in weight.inputs:
                if s == subgraph:
                    readers.setdefault(tensor, set()).add(weight.buffer)
        for buffers in readers.values():
            for buffer in buffers:
                per_weight.setdefault(buffer, set()).add(tuple(sorted(buffers)))
    return sorted({next(iter(g)) for g in per_weight.values() if len(g) == 1})


def _scale(hessian: np.ndarray, weights: list[np.ndarray], alpha: float) -> np.ndarray:
    rms = np.sqrt(np.maximum(np.diag(hessian), 0.0))
    peak = np.max([np.abs(w).max(axis=0) for w in weights], axis=0)  # W [out, in]: per input channel
    s = np.maximum(rms, 1e-5) ** alpha / np.maximum(peak, 1e-5) ** (1.0 - alpha)
    s = s / np.exp(np.mean(np.log(s)))
    return np.clip(s, *_CLIP).astype(np.float32)


def _mul_opcode(fb, model) -> int:
    for index, code in enumerate(model.operatorCodes):
        if max(code.builtinCode, code.deprecatedBuiltinCode) == fb.BuiltinOperator.MUL:
            return index
    code = fb.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = fb.BuiltinOperator.MUL
    code.version = 1
    model.operatorCodes.append(code)
    return len(model.operatorCodes) - 1


def _mul_op(fb, opcode: int, x: int, inverse: int, out: int):
    op = fb.OperatorT()
    op.opcodeIndex = opcode
    op.inputs = np.array([x, inverse], np.int32)
    op.outputs = np.array([out], np.int32)
    op.builtinOptionsType = fb.BuiltinOptions.MulOptions
    op.builtinOptions = fb.MulOptionsT()  # no fused activation
    return op


def smooth_fc_inputs(in_path: Path, out_path: Path, hessians: dict[int, np.ndarray],
                     alpha: float = SMOOTH_ALPHA) -> Smoothing:
    """Write `in_path` smoothed to `out_path`. `hessians`: {FP32 buffer: input Hessian} of the
    model's constant float FC weights (find_weights) on the fit rows; weights without one are
    left as they are. Postcondition, checked on the shortest signature: it computes what it did
    (cosine 0.9999 on a synthetic input); otherwise ConversionError, and `out_path` is removed."""
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha {alpha} must be in (0, 1)")
    fb = schema()
    data = Path(in_path).read_bytes()  # one read for the three views below (91 MB for MiniLM)
    fcs = {b: w for b, w in find_weights(data).items() if w.kind == FC and b in hessians}
    floats = float_weights(data, list(fcs.values()))
    model = read_model(data)
    del data

    def stored(weight: Weight) -> int:  # the weight's buffer index in `model` (and the output)
        subgraph, op, _ = weight.uses[0]
        graph = model.subgraphs[subgraph]
        return graph.tensors[graph.operators[op].inputs[1]].buffer

    result = Smoothing(alpha)
    for buffer, weight in fcs.items():  # as they are unless a group below rescales them
        result.hessians[stored(weight)] = hessians[buffer]
    opcode = _mul_opcode(fb, model)
    inserts: dict[int, list[tuple[int, Any]]] = {}
    for number, group in enumerate(_groups(fcs)):
        s = _scale(hessians[group[0]], [floats[b] for b in group], alpha)
        for buffer in group:
            new = stored(fcs[buffer])
            model.buffers[new].data = (floats[buffer] * s[None, :]).astype(np.float32).view(np.uint8).reshape(-1)
            result.scales[new] = s
            result.hessians[new] = hessians[buffer] / np.outer(s, s)
        inverse = fb.BufferT()
        inverse.data = (1.0 / s).astype(np.float32).view(np.uint8)
        model.buffers.append(inverse)
        inverse_buffer = len(model.buffers) - 1
        for subgraph, x in sorted(set(fcs[group[0]].inputs)):  # the same inputs for every weight of the group
            graph = model.subgraphs[subgraph]
            # The ops of this group reading x (a weight shared by several layers, as ALBERT's
            # are, is read from several inputs: each gets its own MUL, the weight is scaled once).
            readers = {o for b in group for s_, o, _ in fcs[b].uses
                       if s_ == subgraph and graph.operators[o].inputs[0] == x}
            const = fb.TensorT()
            const.shape, const.type, const.buffer = np.array([s.size], np.int32), fb.TensorType.FLOAT32, inverse_buffer
            # Short names, unique in the model (ai-edge-quantizer needs that): litert-torch's run to
            # ~500 bytes, 0.1 MB for MiniLM's 96 new tensors.
            const.name = f"smooth_{number}/inverse_scale#{subgraph}.{x}".encode()
            scaled = copy.deepcopy(graph.tensors[x])
            scaled.buffer, scaled.quantization = 0, None
            scaled.name = f"smooth_{number}/input#{subgraph}.{x}".encode()
            graph.tensors += [const, scaled]
            for o in readers:
                graph.operators[o].inputs[0] = len(graph.tensors) - 1
            inserts.setdefault(subgraph, []).append(
                (min(readers), _mul_op(fb, opcode, x, len(graph.tensors) - 2, len(graph.tensors) - 1)))
            result.mul_ops += 1
    for subgraph, ops in inserts.items():
        for position, op in sorted(ops, key=lambda item: -item[0]):  # later positions first
            model.subgraphs[subgraph].operators.insert(position, op)
    write_model(model, out_path)
    try:
        _check_same(in_path, out_path)
    except BaseException:
        Path(out_path).unlink(missing_ok=True)  # a refused rewrite leaves nothing behind
        raise
    return result


def _check_same(float_path: Path, smoothed_path: Path) -> None:
    """The shortest signature of both models on one synthetic input: a rewrite that broke the
    graph shows there (every signature is rewritten alike; tests/test_tflite_smooth.py compares
    them all on text)."""
    [(key, cosine)] = synthetic_cosines(float_path, smoothed_path, shortest_only=True).items()
    if not cosine >= 0.9999:
        raise ConversionError(f"smoothing the FC inputs of {Path(float_path).name} changed signature "
                              f"{key}'s output (cosine {cosine:.6f} against the float model)")
