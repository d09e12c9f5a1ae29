"""GPTQ rounding: choose integer weights that minimise the layer's output error, not the weight error.

The one GPTQ driver of the converter (`gptq`): every writer (ONNX INT8 and W4A8, TFLite INT8 and
INT4) passes its grid as a row quantizer and its statistics from a HessianSource, gathered per
the HessianPolicy of its precision (GPTQ_POLICY).

Round-to-nearest makes each weight's error as small as possible but lets the errors of one
output add up. GPTQ (Frantar et al., 2022, "GPTQ: Accurate Post-Training Quantization for
Generative Pre-trained Transformers") quantizes the input rows of W (y = x W) one at a time and
pushes each row's rounding error onto the rows not yet quantized, weighted by the inverse of
H = sum x^T x over calibration tokens, so that x W_q stays close to x W for the inputs the
layer actually sees. The grid (scales, zero points, integer range) is fixed beforehand by the
caller; GPTQ only picks which grid point each weight gets. On MiniLM with 7-bit per-channel
weights it lifts the held-out sentence-cosine minimum of weight-only quantization from 0.987
to 0.993 (benchmarks/RESULTS.md).

`damp` (added to H's diagonal as a fraction of its mean) and how H is gathered are one HessianPolicy
per precision (GPTQ_POLICY below, with the measurement it was chosen by: RESULTS.md run N). Fewer
calibration tokens than input channels (the 1536-wide FFN output sees ~1400 tokens) make H
singular; damping is what generalises.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from converters._console import CountCallback
from converters.core._activations import BatchProgress

__all__ = ["GPTQ_POLICY", "GptqConfig", "HessianPolicy", "HessianSource", "Int8Rounding", "gptq", "input_hessians", "inverse_cholesky",
           "pair_limited_scale", "pair_sums", "prefix_batches"]

# Quantizes input row `k` (original index) of the weight: returns (integer codes, dequantized).
RowQuantizer = Callable[[int, np.ndarray], tuple[np.ndarray, np.ndarray]]


class HessianSource(Protocol):
    """Where the GPTQ driver's statistics come from: H = E[x^T x] of one weight's input,
    gathered per the HessianPolicy of its precision. Two adapters: Int8Rounding (ONNX graphs,
    onnxruntime's tensors through input_hessians) and converters/tflite/hessians.TfliteHessians
    (the TFLite interpreter's tensors); every writer hands `gptq` what they return."""

    def hessian(self, weight: Hashable) -> np.ndarray: ...


@dataclass(frozen=True)
class HessianPolicy:
    """How GPTQ's statistics are gathered and damped, for every format alike (the ONNX writers
    read H from onnxruntime, the TFLite ones from the interpreter: converters/tflite/hessians.py).

    weighting: "row" counts every text alike (a text's tokens share one unit of weight), "token"
    counts every token (long texts dominate). prefix_tokens: per text and k, an extra short
    input of its first k + 1 tokens and its last one ("[CLS] w1 [SEP]"): short inputs set the
    minimum cosine and calibration files hold few. damp: added to H's diagonal as a fraction of
    its mean."""

    damp: float
    weighting: str = "row"
    prefix_tokens: tuple[int, ...] = (1, 2, 3)

    def __post_init__(self) -> None:
        if not 0.0 < self.damp < 1.0:
            raise ValueError(f"HessianPolicy.damp {self.damp} must be in (0, 1)")
        if self.weighting not in ("row", "token"):
            raise ValueError(f"HessianPolicy.weighting {self.weighting!r} must be 'row' or 'token'")
        if any(k < 1 for k in self.prefix_tokens):
            raise ValueError(f"HessianPolicy.prefix_tokens {self.prefix_tokens} must be >= 1")

    def describe(self) -> dict:
        return {"damp": self.damp, "weighting": self.weighting, "prefix_tokens": list(self.prefix_tokens)}


# One policy per precision, read at use (not copied into configs) so that a measurement can
# swap it. Chosen on the validation split (87 texts; MiniLM, rpi5 profile, searches off; mean /
# min cosine vs PyTorch; benchmarks/bench_gptq_policy.py, RESULTS.md run N):
#                               ONNX INT8       ONNX 4-bit      TFLite INT8     TFLite INT4 (min)
#   row+prefix, 0.05 / 0.2      0.9986/0.9948   0.9881/0.9744   0.9980/0.9903   0.9563
#   row+prefix, 0.05 / 0.1      0.9986/0.9948   0.9883/0.9700   0.9980/0.9903   0.9538
#   row+prefix, 0.03 / 0.03     0.9985/0.9930   0.9884/0.9635   0.9981/0.9904   0.9465
#   token, no prefix, 0.05/0.2  0.9986/0.9935   min 0.9566      min 0.9899      0.9344
# (the last row is what the ONNX writers used before; the TFLite ones used row+prefix, 0.03).
GPTQ_POLICY: dict[str, HessianPolicy] = {
    "int8": HessianPolicy(damp=0.05),
    "int4": HessianPolicy(damp=0.2),
}


@dataclass(frozen=True)
class GptqConfig:
    damp: float  # GPTQ_POLICY[precision].damp: the one place it is chosen
    block: int = 128  # rows updated lazily per block (speed only; same result)
    act_order: bool = True  # rows with the largest input energy first (the GPTQ paper's choice)

    def __post_init__(self) -> None:
        if not 0.0 < self.damp < 1.0:
            raise ValueError(f"GptqConfig.damp {self.damp} must be in (0, 1)")
        if self.block < 1:
            raise ValueError(f"GptqConfig.block {self.block} must be >= 1")


def gptq(
    weight: np.ndarray, hessian: np.ndarray, quantize_row: RowQuantizer, config: GptqConfig
) -> np.ndarray:
    """Integer codes [K, N] for `weight` [K, N] (y = x @ weight) on the caller's grid.

    `hessian` is sum x^T x [K, K] over calibration tokens. Input channels that never fire
    (zero diagonal) cannot affect the output: their rows are quantized as they are.
    """
    w = weight.astype(np.float64, copy=True)
    h = hessian.astype(np.float64, copy=True)
    rows, cols = w.shape
    if h.shape != (rows, rows):
        raise ValueError(f"hessian {h.shape} does not match weight {w.shape}")
    dead = np.diag(h) <= 0
    h[dead, dead] = 1.0
    order = np.argsort(-np.diag(h), kind="stable") if config.act_order else np.arange(rows)
    w, h = w[order], h[order][:, order]
    h[np.diag_indices(rows)] += config.damp * np.mean(np.diag(h))
    # Upper Cholesky factor of H^-1: row i holds the error-propagation weights of input row i.
    inverse = inverse_cholesky(h)
    codes = np.zeros((rows, cols), np.int32)
    for start in range(0, rows, config.block):
        stop = min(start + config.block, rows)
        block, errors = w[start:stop].copy(), np.zeros((stop - start, cols))
        local = inverse[start:stop, start:stop]
        for i in range(stop - start):
            q, dq = quantize_row(int(order[start + i]), block[i])
            codes[start + i] = q
            error = (block[i] - dq) / local[i, i]
            block[i + 1 :] -= np.outer(local[i, i + 1 :], error)
            errors[i] = error
        w[stop:] -= inverse[start:stop, stop:].T @ errors
    restored = np.empty_like(codes)
    restored[order] = codes
    return restored


def inverse_cholesky(h: np.ndarray) -> np.ndarray:
    """The upper-triangular U with U^T U = h^-1 (the upper Cholesky factor of h's inverse), without
    forming the inverse: reversing rows and columns turns h's Cholesky factor into an upper V with
    h = V V^T, and U = V^-1. One factorization and one triangular inverse instead of a general
    inverse and a second factorization: 3.7x faster on the 1536-wide FFN Hessians (11.7 s of
    thread time in a masked rpi4 conversion went to np.linalg.inv and cholesky), equal to
    `np.linalg.cholesky(np.linalg.inv(h)).T` within 1e-15 (relative; tests/test_gptq.py)."""
    from scipy.linalg import lapack

    lower, info = lapack.dpotrf(np.ascontiguousarray(h[::-1, ::-1]), lower=1, clean=1)
    if info != 0:
        raise np.linalg.LinAlgError(f"GPTQ Hessian is not positive definite (LAPACK dpotrf info {info})")
    upper, info = lapack.dtrtri(np.ascontiguousarray(lower[::-1, ::-1]), lower=0)
    if info != 0:
        raise np.linalg.LinAlgError(f"GPTQ Hessian factor is singular (LAPACK dtrtri info {info})")
    return upper


def prefix_batches(batches: list[dict[str, np.ndarray]], prefix_tokens: tuple[int, ...]) -> list[dict[str, np.ndarray]]:
    """Per text of `batches` (right-padded int64 feeds) and k in prefix_tokens: its first k + 1
    tokens and its last one, as unpadded batches of equal-length rows (HessianPolicy)."""
    by_length: dict[int, list[dict[str, np.ndarray]]] = {}
    for feeds in batches:
        for r, n in enumerate(feeds["attention_mask"].sum(axis=1)):
            n = int(n)
            for k in prefix_tokens:
                if n > k + 2:
                    row = {name: np.concatenate([v[r, : k + 1], v[r, n - 1 : n]]) for name, v in feeds.items()}
                    by_length.setdefault(k + 2, []).append(row)
    out = []
    for _, rows in sorted(by_length.items()):
        for start in range(0, len(rows), 64):
            chunk = rows[start : start + 64]
            out.append({name: np.stack([r[name] for r in chunk]) for name in chunk[0]})
    return out


def input_hessians(
    model_path: Path, weights: set[str], batches: list[dict[str, np.ndarray]], weighting: str = "token",
    progress: BatchProgress | None = None,
) -> dict[str, np.ndarray]:
    """sum x^T x over real tokens of the input of every MatMul reading one of `weights`
    (constant [K, N] initializers), keyed by weight; MatMuls sharing a weight add up.
    weighting "row": each text's tokens scaled by 1 / sqrt(its length), so every text counts
    alike (HessianPolicy)."""
    import onnx

    from converters.core._activations import GramSums, token_rows

    graph = onnx.load(str(model_path), load_external_data=False).graph
    inputs: dict[str, list[str]] = {}
    for node in graph.node:
        if node.op_type == "MatMul" and len(node.input) > 1 and node.input[1] in weights:
            inputs.setdefault(node.input[1], []).append(node.input[0])
    missing = sorted(weights - set(inputs))
    if missing:
        raise ValueError(f"no MatMul in {Path(model_path).name} reads {missing}")
    # One sum per input tensor: MatMuls reading the same input (Q, K and V unpacked) share it.
    grams = GramSums()
    tensors = sorted({x for names in inputs.values() for x in names})
    for feeds, rows in zip(batches, token_rows(model_path, tensors, batches, progress)):
        lengths = feeds["attention_mask"].sum(axis=1).astype(np.int64)
        scale = np.repeat(1.0 / np.sqrt(np.maximum(lengths, 1)), lengths) if weighting == "row" else None
        for name in tensors:
            x = rows[name].astype(np.float64)
            if scale is not None and len(x) == len(scale):  # [batch, sequence, K] inputs
                x *= scale[:, None]
            grams.add(name, x)
    sums = grams.sums()
    hessians: dict[str, np.ndarray] = {}
    for weight, names in inputs.items():
        for name in names:  # a weight read by several MatMuls adds their inputs' sums
            hessians[weight] = sums[name] if weight not in hessians else hessians[weight] + sums[name]
    return hessians


def pair_sums(codes: np.ndarray) -> np.ndarray:
    """|q[2k]| + |q[2k+1]| for every adjacent pair of input rows [K // 2, N] (an odd last row
    is paired with the zero padding kernels add)."""
    q = np.abs(codes.astype(np.int32))
    if len(q) % 2:
        q = np.concatenate([q, np.zeros((1, q.shape[1]), np.int32)])
    return q[0::2] + q[1::2]


def pair_limited_scale(weight: np.ndarray, limit: int) -> np.ndarray:
    """Per-column scale [N] under which round-to-nearest of the float pairs stays near `limit`:
    the column's largest |w[2k]| + |w[2k+1]| maps to `limit`, and no code exceeds 127."""
    w = np.abs(weight.astype(np.float64))
    if len(w) % 2:
        w = np.concatenate([w, np.zeros((1, w.shape[1]))])
    scale = np.maximum((w[0::2] + w[1::2]).max(axis=0) / limit, w.max(axis=0) / 127)
    return np.where(scale > 0, scale, 1.0).astype(np.float32)


def _pair_safe_nearest(codes: np.ndarray, scale: np.ndarray, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """Round-to-nearest of the weight `codes * scale` on a grid whose adjacent-row pairs stay
    within `limit`: the largest pair maps to limit - 1, since rounding two values up adds at most
    one to their sum. `scale` is per column [N] or per tensor [1]."""
    values = codes.astype(np.float64) * scale.astype(np.float64)
    column = pair_limited_scale(values, limit - 1).astype(np.float64)
    new_scale = column if scale.size == codes.shape[1] and scale.size > 1 else np.array([column.max()])
    rounded = np.clip(np.rint(values / new_scale), -min(127, limit), min(127, limit)).astype(np.int8)
    return rounded, new_scale.astype(np.float32).reshape(scale.shape)


class Int8Rounding:
    """GPTQ rounding for the symmetric INT8 weights that onnxruntime's quantizers write
    (`{w}_quantized` int8 [K, N] with `{w}_scale` per column or per tensor, zero point 0, in
    both the operator (MatMulInteger) and QDQ forms). The grid stays onnxruntime's; only the
    integer values change.

    Float weights and Hessians are read once; each weight's codes are cached, since the
    mixed-precision search re-quantizes the same graph many times with different exclusions.

    `pair_limit` > 0 (int8.pair_sum_limit): the grid becomes our own, per column
    (pair_limited_scale), and every code is chosen with |q[2k]| + |q[2k+1]| <= pair_limit, so
    that kernels adding adjacent u8 x s8 products in int16 (AVX2) never saturate.
    """

    def __init__(
        self,
        float_path: Path,
        stats_path: Path,
        batches: list[dict[str, np.ndarray]],
        qrange: tuple[int, int],
        policy: HessianPolicy | None = None,
        pair_limit: int = 0,
        progress: BatchProgress | None = None,
        solve_progress: CountCallback | None = None,
    ):
        """float_path: the graph that was quantized (weights by name). stats_path: a graph
        computing the same MatMul inputs with [batch, sequence, K] shapes (before passes that
        slice the sequence), run on `batches` for the Hessians (told to `progress` as they go).
        `solve_progress(done, weights)`: apply()'s GPTQ solves of weights not solved before."""
        import onnx
        from onnx import numpy_helper

        self.policy = policy or GPTQ_POLICY["int8"]
        self.config = GptqConfig(damp=self.policy.damp)
        self.qrange, self.pair_limit = qrange, pair_limit
        graph = onnx.load(str(float_path)).graph
        inits = {i.name: i for i in graph.initializer}
        self.weights = {
            node.input[1]: numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
            for node in graph.node
            if node.op_type == "MatMul"
            and len(node.input) > 1
            and node.input[1] in inits
            and len(inits[node.input[1]].dims) == 2
        }
        self._stats_path, self._batches, self._progress = Path(stats_path), batches, progress
        self._solve_progress = solve_progress
        self._hessians: dict[str, np.ndarray] | None = None
        self._codes: dict[str, np.ndarray] = {}  # weight -> int codes (valid for one scale)

    def describe(self) -> dict:
        return {"algorithm": "gptq", **self.policy.describe(), "act_order": self.config.act_order,
                "integer_range": list(self.qrange), "pair_sum_limit": self.pair_limit or None}

    def hessian(self, name: str) -> np.ndarray:
        if self._hessians is None:
            batches = self._batches + prefix_batches(self._batches, self.policy.prefix_tokens)
            self._hessians = input_hessians(self._stats_path, set(self.weights), batches, self.policy.weighting,
                                            self._progress)
        return self._hessians[name]

    def codes(self, name: str, scale: np.ndarray) -> np.ndarray:
        """GPTQ integer codes of weight `name` on the grid `scale` (per column or per tensor)."""
        if name not in self._codes:
            weight = self.weights[name]
            qmin, qmax = self.qrange
            step = np.broadcast_to(scale.astype(np.float64), (weight.shape[1],))

            done: dict[int, np.ndarray] = {}  # row -> codes, for the pair limit

            def row(k: int, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
                low, high = qmin, qmax
                if self.pair_limit:  # no single code above the limit either
                    low, high = max(qmin, -self.pair_limit), min(qmax, self.pair_limit)
                if self.pair_limit and (k ^ 1) in done:
                    # The partner row was quantized first (act_order): this code gets what is left.
                    room = self.pair_limit - np.abs(done[k ^ 1])
                    low, high = np.maximum(qmin, -room), np.minimum(qmax, room)
                q = np.clip(np.rint(values / step), low, high)
                done[k] = q
                return q, q * step

            self._codes[name] = gptq(weight, self.hessian(name), row, self.config)
        return self._codes[name]

    def _grid(self, name: str, ort_scale: np.ndarray) -> np.ndarray:
        """The scale the codes of `name` are chosen on: onnxruntime's, or the pair-limited one."""
        return pair_limited_scale(self.weights[name], self.pair_limit) if self.pair_limit else ort_scale

    def apply(self, quantized_path: Path) -> list[str]:
        """Rewrite the INT8 weights of `quantized_path` in place; returns the weights changed.

        Precondition, checked per weight: onnxruntime's own values are round-to-nearest on
        the grid this object assumes (scale, zero point 0, qrange); anything else means the
        quantizer's layout changed, and rounding on a wrong grid would corrupt the model."""
        import onnx
        from onnx import numpy_helper

        from converters._errors import ConversionError

        model = onnx.load(str(quantized_path))
        inits = {i.name: i for i in model.graph.initializer}
        changed = []
        unsolved = [name for name in self.weights if f"{name}_quantized" in inits and name not in self._codes]
        tell = self._solve_progress if unsolved and self._solve_progress is not None else (lambda done, total: None)
        if unsolved:
            self.hessian(unsolved[0])  # the pass over the batches, counted apart
        solved = 0
        tell(solved, len(unsolved))
        for name, weight in self.weights.items():
            quantized = inits.get(f"{name}_quantized")
            if quantized is None:  # kept in FP32 by the caller
                continue
            values = numpy_helper.to_array(quantized)
            scale = numpy_helper.to_array(inits[f"{name}_scale"]).astype(np.float32)
            zero = inits.get(f"{name}_zero_point")
            problems = []
            if values.dtype != np.int8 or values.shape != weight.shape:
                problems.append(f"{values.dtype} {values.shape}, expected int8 {weight.shape}")
            elif zero is not None and np.any(numpy_helper.to_array(zero) != 0):
                problems.append("non-zero zero points (asymmetric weights)")
            elif scale.ndim > 1 or scale.size not in (1, weight.shape[1]):
                problems.append(f"scale of shape {scale.shape}")
            elif self.pair_limit and scale.size != weight.shape[1]:
                problems.append("one scale per tensor; the pair limit needs one per column")
            else:
                nearest = np.clip(np.rint(weight / scale), *self.qrange)
                if np.mean(nearest != values) > 0.001:  # ties may round either way
                    problems.append(f"values differ from round-to-nearest on range {self.qrange}")
            if problems:
                raise ConversionError(
                    f"GPTQ rounding: weight {name} in {Path(quantized_path).name} has an "
                    f"unexpected INT8 layout ({'; '.join(problems)})"
                )
            grid = self._grid(name, scale)
            codes = self.codes(name, grid).astype(np.int8)
            if name in unsolved:
                solved += 1
                tell(solved, len(unsolved))
            if self.pair_limit:
                worst = int(pair_sums(codes).max())
                if worst > self.pair_limit:  # guarded by the row quantizer; never ship a saturating code
                    raise ConversionError(f"GPTQ rounding: weight {name} has a pair sum {worst} > {self.pair_limit}")
                scale_init = inits[f"{name}_scale"]
                scale_init.CopyFrom(numpy_helper.from_array(grid.astype(np.float32), scale_init.name))
            quantized.CopyFrom(numpy_helper.from_array(codes, quantized.name))
            changed.append(name)
        if self.pair_limit:
            # Every other INT8 weight in the graph too: onnxruntime also quantizes ops this class
            # does not round (a classifier's Gemm, stored transposed for MatMulInteger), with
            # unconstrained 8-bit codes. Those are re-rounded to the nearest point of a pair-safe
            # grid; then every weight is checked.
            handled = {f"{name}_quantized" for name in self.weights}
            for init in model.graph.initializer:
                if not (init.name.endswith("_quantized") and init.data_type == onnx.TensorProto.INT8
                        and len(init.dims) == 2):
                    continue
                codes = numpy_helper.to_array(init)
                if init.name not in handled and pair_sums(codes).max() > self.pair_limit:
                    scale_init = inits.get(init.name[: -len("_quantized")] + "_scale")
                    if scale_init is None:
                        raise ConversionError(f"INT8 weight {init.name} has no scale to re-round it with")
                    codes, scale = _pair_safe_nearest(codes, numpy_helper.to_array(scale_init), self.pair_limit)
                    init.CopyFrom(numpy_helper.from_array(codes, init.name))
                    scale_init.CopyFrom(numpy_helper.from_array(scale, scale_init.name))
                    changed.append(init.name)
                worst = int(pair_sums(codes).max())
                if worst > self.pair_limit:
                    raise ConversionError(f"INT8 weight {init.name} has a pair sum {worst} > {self.pair_limit}")
        onnx.save(model, str(quantized_path))
        return changed
