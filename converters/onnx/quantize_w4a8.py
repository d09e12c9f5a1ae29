"""Pass: 4-bit weight storage for an INT8 GEMM graph ("W4A8": 4-bit weights, 8-bit activations).

The dynamic INT8 graph (quantize_int8: per-column symmetric int8 weights W8 [K, N] with scale
s[n], activations quantized per run) is what onnxruntime's CPU kernels run fastest. This pass
keeps that graph and stores chosen W8 in 4 bits: per block of `block_size` rows and per column,
a step f (float16, in units of s[n]) and a zero point z (uint4), so that

    W8[k, n] = clip(round((q[k, n] - z[b, n]) * f[b, n]), int8 range),  q in 0..15,  b = k // block

In the file `{w}_quantized` is no longer an initializer but the output of Cast/Sub/Mul/Reshape/
Round/Clip/Cast on constants, which onnxruntime folds into a plain int8 initializer when the
session starts (any graph optimization level >= basic) and then prepacks for its INT8 GEMM like
any other weight. The file is 4-bit; the arithmetic, speed and memory after load are the INT8
artifact's. The rounding to int8 is part of the grid the codes are chosen on, so the values the
GEMM multiplies are exactly the ones the search measured. (An integer step f, which makes the
rounding vanish, coarsens blocks with a small range: measured worse on MiniLM.)

Why not onnxruntime's MatMulNBits: at batch 1 x 128 tokens the encoder GEMMs are compute-bound,
and its 4-bit kernels (accuracy_level 4 quantizes activations per block) measured 0.59-0.77x
of FP32 time per GEMM on x86 against 0.31x for the INT8 GEMM (benchmarks/RESULTS.md).

Codes are chosen by GPTQ on the fixed 4-bit grid (converters/core/gptq.py); the grid (m, z) of each
block is the one with the least input-energy-weighted squared error among a few candidates.
Preconditions: the output of quantize_int8 in dynamic operator form with symmetric int8
weights (`{w}_quantized`, `{w}_scale`), opset >= 21 (UINT4 tensors).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from converters._console import CountCallback
from converters._errors import ConversionError
from converters.core._activations import BatchProgress
from converters.core.gptq import GPTQ_POLICY, GptqConfig, HessianPolicy, Int8Rounding, gptq
from converters.core.search import Budget, LaneScorer, ProbeSpace, SearchResult, greedy_search
from converters.onnx.prefix import OnnxPrefixCuts, sample_rows

__all__ = ["W4A8Config", "W4A8Space", "W4A8Weights", "fit_w4a8", "grid_params"]

log = logging.getLogger("converters")

CONFIG_VERSION = 1


@dataclass(frozen=True)
class W4A8Config:
    block_size: int = 32
    # GPTQ statistics and damping: None = the shared INT4 policy (converters/core/gptq.py,
    # GPTQ_POLICY["int4"]), read when the weights are rounded.
    policy: HessianPolicy | None = None
    # Input rows with the largest energy (sum x^2 over calibration tokens) stay in 8 bits, at
    # most one per 64 rows: encoders put a massive activation on a few channels of token 0
    # ([CLS]), which multiplies those rows' error by ~25. On MiniLM (all weights 4-bit) 8 rows
    # raised the calibration cosine from 0.9908 / 0.9614 to 0.9918 / 0.9661 for 0.18 MB.
    outlier_rows: int = 8

    def __post_init__(self) -> None:
        if self.block_size < 2:
            raise ValueError(f"W4A8Config.block_size {self.block_size} must be >= 2")

    def describe(self) -> dict[str, Any]:
        policy = self.policy or GPTQ_POLICY["int4"]
        return {"config_version": CONFIG_VERSION, **asdict(self), "policy": policy.describe()}


def grid_params(
    units: np.ndarray, importance: np.ndarray, block: int, qrange: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Per block of `block` rows and per column of `units` [K, N] (weights in int8 steps):
    step f (float16) and zero point z in 0..15 minimising sum_k importance[k] * error^2, the
    error measured after the final rounding to int8. Candidates shrink the block's range (clip
    its extremes for finer steps) by the ratios of _SHRINK, each with the zero point rounded
    three ways."""
    rows, cols = units.shape
    padded_rows = -(-rows // block) * block
    u = np.zeros((padded_rows, cols), np.float64)
    u[:rows] = units
    h = np.zeros(padded_rows, np.float64)
    h[:rows] = importance
    u = u.reshape(-1, block, cols)  # [nb, block, N]
    h = h.reshape(-1, block, 1)
    low, high = np.minimum(u.min(1), 0.0), np.maximum(u.max(1), 0.0)  # [nb, N]
    best_err = np.full(low.shape, np.inf)
    best_f, best_z = np.ones_like(low, np.float16), np.zeros_like(low)
    for ratio in _SHRINK:
        f = np.maximum((high - low) * ratio / 15.0, 1e-3).astype(np.float16)
        f32 = f.astype(np.float32)
        for dz in (-1, 0, 1):
            z = np.clip(np.rint(-low * ratio / f32) + dz, 0, 15)
            q = _codes(u, f32[:, None, :], z[:, None, :])
            err = (h * (u - _int8(q, z[:, None, :], f32[:, None, :], qrange)) ** 2).sum(1)
            better = err < best_err
            best_err = np.where(better, err, best_err)
            best_f, best_z = np.where(better, f, best_f), np.where(better, z, best_z)
    return best_f.astype(np.float16), best_z.astype(np.uint8)


_SHRINK = np.linspace(1.0, 0.7, 7)


def _codes(u, f, z) -> np.ndarray:
    return np.clip(np.rint(u / f) + z, 0, 15)


def _int8(q, z, f, qrange: tuple[int, int]) -> np.ndarray:
    """The int8 value of code q, computed as the graph does: float32 (q - z) * f, rounded half
    to even (ONNX Round), clipped to the int8 range."""
    product = (q.astype(np.float32) - z.astype(np.float32)) * f.astype(np.float32)
    return np.clip(np.rint(product), *qrange)


@dataclass
class _Codes:
    q: np.ndarray  # uint8 [K, N], 0..15 (placeholders on the 8-bit rows)
    step: np.ndarray  # float16 [nb, N], in int8 units
    zero: np.ndarray  # uint8 [nb, N], 0..15
    rows: np.ndarray  # int64 [r]: input rows stored in 8 bits
    row_values: np.ndarray  # int8 [r, N]

    def int8(self, block: int, qrange: tuple[int, int]) -> np.ndarray:
        count = self.q.shape[0]
        per_row = np.repeat(np.arange(self.step.shape[0]), block)[:count]
        values = _int8(self.q, self.zero[per_row], self.step[per_row], qrange).astype(np.int8)
        values[self.rows] = self.row_values
        return values


def _entry_bytes(size: int) -> int:
    """Bytes of a length-delimited protobuf field of `size` bytes with a one-byte tag (ONNX's
    graph, node and initializer fields): the tag, the length's varint, the message."""
    return 1 + max(1, -(-size.bit_length() // 7)) + size


def _pack_uint4(values: np.ndarray) -> bytes:
    """ONNX UINT4 layout: the flattened tensor, two per byte, first in the low nibble."""
    flat = values.astype(np.uint8).reshape(-1)
    if flat.size % 2:
        flat = np.append(flat, np.uint8(0))
    return (flat[0::2] | (flat[1::2] << 4)).astype(np.uint8).tobytes()


class W4A8Weights:
    """The float weights, Hessians and scales of one INT8 graph, with cached 4-bit and 8-bit
    GPTQ codes per weight, to write any mix of the two cheaply (the size search builds many)."""

    def __init__(
        self,
        int8_path: Path,
        float_path: Path,
        stats_path: Path,
        batches: list[dict[str, np.ndarray]],
        qrange: tuple[int, int],
        config: W4A8Config = W4A8Config(),
        progress: BatchProgress | None = None,  # told the Hessians' pass over `batches`
    ):
        import onnx
        from onnx import numpy_helper

        self.config, self.qrange = config, qrange
        # A small batch a ranking proves its cut points on (converters/onnx/prefix.py).
        self.sample = sample_rows(batches[0]) if batches else None
        self._int8 = onnx.load(str(int8_path))
        inits = {i.name: i for i in self._int8.graph.initializer}
        self.policy = config.policy or GPTQ_POLICY["int4"]
        self._rounding = Int8Rounding(float_path, stats_path, batches, qrange, self.policy, progress=progress)
        self._floats = self._rounding.weights
        self.weights = [w for w in self._floats if f"{w}_quantized" in inits]
        if not self.weights:
            raise ConversionError(f"{Path(int8_path).name} has no dynamic INT8 weights to store in 4 bits")
        self._scales = {w: numpy_helper.to_array(inits[f"{w}_scale"]).astype(np.float64) for w in self.weights}
        self._four: dict[str, _Codes] = {}
        self._unpacked: dict[str, np.ndarray] = {}  # four_bit(w).int8(...), per weight
        self._sizes: tuple | None = None  # what size() adds up, made on first use

    def shape(self, weight: str) -> tuple[int, int]:
        return tuple(self._floats[weight].shape)  # type: ignore[return-value]

    def extra_bytes_8bit(self, weight: str) -> int:
        """Bytes an 8-bit weight costs over its 4-bit form (about: ignores the 8-bit rows)."""
        rows, cols = self.shape(weight)
        blocks = -(-rows // self.config.block_size)
        return rows * cols - (-(-rows * cols // 2) + 2 * blocks * cols + -(-blocks * cols // 2))

    def four_bit(self, weight: str) -> _Codes:
        if weight not in self._four:
            w, block = self._floats[weight].astype(np.float64), self.config.block_size
            scale = np.broadcast_to(self._scales[weight], (w.shape[1],))
            hessian = self._rounding.hessian(weight)
            energy = np.diag(hessian)
            count = min(self.config.outlier_rows, w.shape[0] // 64, int((energy > 0).sum()))
            rows = np.sort(np.argsort(-energy, kind="stable")[:count]).astype(np.int64)
            eight = set(rows.tolist())
            units = w / scale
            units[rows] = 0.0  # the 8-bit rows do not widen their blocks' 4-bit range
            step, zero = grid_params(units, energy, block, self.qrange)
            qmin, qmax = self.qrange

            def row(k: int, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
                if k in eight:
                    q8 = np.clip(np.rint(values / scale), qmin, qmax)
                    return q8, q8 * scale
                f, z = step[k // block].astype(np.float32), zero[k // block]
                q = _codes(values / scale, f, z)
                return q, _int8(q, z, f, self.qrange) * scale

            codes = gptq(w, hessian, row, GptqConfig(damp=self.policy.damp))
            row_values = codes[rows].astype(np.int8)
            codes[rows] = zero[rows // block]  # placeholder codes: overwritten after unpacking
            self._four[weight] = _Codes(codes.astype(np.uint8), step, zero, rows, row_values)
        return self._four[weight]

    def solve(self, progress: CountCallback | None = None) -> None:
        """Every weight's 4-bit codes (the size search starts from all of them), told to
        `progress(weights done, weights)` after the Hessians' own pass."""
        tell = progress or (lambda done, total: None)
        self._rounding.hessian(self.weights[0])  # the one pass over the batches, counted apart
        tell(0, len(self.weights))
        for done, weight in enumerate(self.weights, 1):
            self.four_bit(weight)
            tell(done, len(self.weights))

    def unpacked(self, weight: str) -> np.ndarray:
        """The int8 values the 4-bit form of `weight` stands for (what the graph computes)."""
        if weight not in self._unpacked:
            self._unpacked[weight] = self.four_bit(weight).int8(self.config.block_size, self.qrange)
        return self._unpacked[weight]

    def build(self, four_bit: set[str], unpacked: bool = False):
        """The INT8 graph with `four_bit` weights stored as 4-bit codes, the rest as GPTQ int8.
        `unpacked`: the `four_bit` weights as the int8 initializers the 4-bit graph computes
        when a session starts (the values `check` proves it computes), for scoring only."""
        import onnx
        from onnx import numpy_helper

        model = onnx.ModelProto()
        model.CopyFrom(self._int8)
        graph = model.graph
        inits = {i.name: i for i in graph.initializer}
        unpack, removed = [], set()
        for weight in self.weights:
            name = f"{weight}_quantized"
            if weight not in four_bit:
                inits[name].CopyFrom(self._eight_bit(weight))
            elif unpacked:
                inits[name].CopyFrom(numpy_helper.from_array(self.unpacked(weight), name))
            else:
                tensors, nodes = self._four_bit_parts(weight)
                graph.initializer.extend(tensors)
                unpack.extend(nodes)
                removed.add(name)
        kept = [i for i in graph.initializer if i.name not in removed]
        del graph.initializer[:]
        graph.initializer.extend(kept)
        nodes = list(graph.node)
        del graph.node[:]
        graph.node.extend(unpack + nodes)  # constants first: topological order holds
        return model

    def size(self, four_bit: set[str]) -> int:
        """build(four_bit).ByteSize(), without building it: a graph's size is the sum of its
        entries (each weight's 8-bit initializer, or its 4-bit initializers and unpacking nodes,
        plus what every candidate shares), and the model's adds the graph field around it. A
        build takes ~0.1 s of the GIL on MiniLM, and a size search asks for hundreds."""
        if self._sizes is None:
            from onnx import numpy_helper

            # The INT8 graph as read, with its own int8 weights: their entries weigh what the GPTQ
            # codes' will (same name, type and shape), so no 8-bit code is solved for a size.
            graph = self._int8.graph.ByteSize()
            inits = {i.name: i for i in self._int8.graph.initializer}
            own = sum(_entry_bytes(inits[f"{w}_quantized"].ByteSize()) for w in self.weights)
            eight = {w: _entry_bytes(numpy_helper.from_array(np.zeros(self.shape(w), np.int8), f"{w}_quantized").ByteSize())
                     for w in self.weights}
            four = {}
            for weight in self.weights:
                tensors, nodes = self._four_bit_parts(weight)
                four[weight] = sum(_entry_bytes(m.ByteSize()) for m in [*tensors, *nodes])
            self._sizes = (self._int8.ByteSize() - _entry_bytes(graph), graph - own, eight, four)
        other, shared, eight, four = self._sizes
        graph = shared + sum(four[w] if w in four_bit else eight[w] for w in self.weights)
        return other + _entry_bytes(graph)

    def _eight_bit(self, weight: str):
        """The GPTQ int8 initializer of `weight` (its 8-bit form)."""
        from onnx import numpy_helper

        codes = self._rounding.codes(weight, self._scales[weight]).astype(np.int8)
        return numpy_helper.from_array(codes, f"{weight}_quantized")

    def _four_bit_parts(self, weight: str) -> tuple[list, list]:
        """(initializers, nodes) of `weight`'s 4-bit form: the codes, steps and zero points, and
        the constant nodes that unpack them into the int8 initializer `{weight}_quantized`."""
        from onnx import TensorProto, helper, numpy_helper

        codes, block, name = self.four_bit(weight), self.config.block_size, f"{weight}_quantized"
        rows, cols = self.shape(weight)
        blocks = codes.step.shape[0]
        q = np.zeros((blocks * block, cols), np.uint8)
        q[:rows] = codes.q
        p = f"{weight}_w4"
        qmin, qmax = self.qrange
        tensors = [
            helper.make_tensor(f"{p}_codes", TensorProto.UINT4, [blocks, block, cols], _pack_uint4(q), raw=True),
            helper.make_tensor(f"{p}_zero", TensorProto.UINT4, [blocks, 1, cols], _pack_uint4(codes.zero), raw=True),
            numpy_helper.from_array(codes.step.reshape(blocks, 1, cols), f"{p}_step"),
            numpy_helper.from_array(np.array([blocks * block, cols], np.int64), f"{p}_shape"),
            numpy_helper.from_array(np.array(qmin, np.float32), f"{p}_qmin"),
            numpy_helper.from_array(np.array(qmax, np.float32), f"{p}_qmax"),
        ]
        nodes = [
            helper.make_node("Cast", [f"{p}_codes"], [f"{p}_q"], to=TensorProto.FLOAT, name=f"{p}_cast_q"),
            helper.make_node("Cast", [f"{p}_zero"], [f"{p}_z"], to=TensorProto.FLOAT, name=f"{p}_cast_z"),
            helper.make_node("Cast", [f"{p}_step"], [f"{p}_f"], to=TensorProto.FLOAT, name=f"{p}_cast_f"),
            helper.make_node("Sub", [f"{p}_q", f"{p}_z"], [f"{p}_centered"], name=f"{p}_sub"),
            helper.make_node("Mul", [f"{p}_centered", f"{p}_f"], [f"{p}_units"], name=f"{p}_mul"),
            helper.make_node("Round", [f"{p}_units"], [f"{p}_rounded"], name=f"{p}_round"),
            helper.make_node("Clip", [f"{p}_rounded", f"{p}_qmin", f"{p}_qmax"], [f"{p}_clipped"], name=f"{p}_clip"),
            helper.make_node("Reshape", [f"{p}_clipped", f"{p}_shape"], [f"{p}_flat"], name=f"{p}_reshape"),
        ]
        last = f"{p}_flat"
        if codes.rows.size:
            tensors += [numpy_helper.from_array(codes.rows.reshape(-1, 1), f"{p}_rows"),
                        numpy_helper.from_array(codes.row_values, f"{p}_row_values")]
            nodes += [
                helper.make_node("Cast", [f"{p}_row_values"], [f"{p}_row_units"], to=TensorProto.FLOAT, name=f"{p}_cast_rows"),
                helper.make_node("ScatterND", [last, f"{p}_rows", f"{p}_row_units"], [f"{p}_merged"], name=f"{p}_rows8"),
            ]
            last = f"{p}_merged"
        if blocks * block != rows:  # padded rows
            tensors += [numpy_helper.from_array(np.array([0], np.int64), f"{p}_start"),
                        numpy_helper.from_array(np.array([rows], np.int64), f"{p}_stop")]
            nodes.append(helper.make_node("Slice", [last, f"{p}_start", f"{p}_stop"], [f"{p}_sliced"], name=f"{p}_slice"))
            last = f"{p}_sliced"
        # Integral floats within the int8 range: the cast is exact.
        nodes.append(helper.make_node("Cast", [last], [name], to=TensorProto.INT8, name=f"{p}_to_int8"))
        return tensors, nodes

    def check(self, model, four_bit: set[str]) -> None:
        """Postcondition: the int8 weights the graph computes are the codes' exact values."""
        import onnx
        import onnxruntime as ort

        outputs = [f"{w}_quantized" for w in sorted(four_bit)]
        if not outputs:
            return
        probe = onnx.ModelProto()
        probe.CopyFrom(model)
        del probe.graph.output[:]
        probe.graph.output.extend(onnx.helper.make_tensor_value_info(o, onnx.TensorProto.INT8, None) for o in outputs)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
        feeds = {i.name: np.zeros([1 if isinstance(d, str) or d is None else d for d in i.shape], np.int64)
                 for i in session.get_inputs()}
        for name, got in zip(outputs, session.run(outputs, feeds)):
            weight = name[: -len("_quantized")]
            want = self.unpacked(weight)
            if got.shape != want.shape or not np.array_equal(got, want):
                raise ConversionError(f"W4A8: the unpacked int8 weight {weight} differs from its codes")


class W4A8Space(ProbeSpace):
    """The size-budget search's view of W4A8Weights (converters/core/search.py): a candidate is
    a weight stored in 8 bits instead of 4. Each candidate is written to `probe`, where
    `rank(path)` (fit texts) and `judge(path)` (validation texts) score it."""

    def __init__(self, weights: W4A8Weights, probe: Path, rank: Callable[[Path], dict[str, float]],
                 judge: Callable[[Path], dict[str, float]]):
        super().__init__(probe, rank, judge)
        self.weights = weights
        self._cuts: OnnxPrefixCuts | None = None  # while ranking: candidates scored from where they differ

    def candidates(self) -> list[str]:
        return list(self.weights.weights)

    def write(self, moved: frozenset[str], path: Path) -> int:
        """Writes the candidate with its 4-bit weights unpacked to int8 initializers: the same
        GEMM operands, so the same scores, while onnxruntime no longer folds the unpacking at
        every candidate's session start (MiniLM on a masked-AVX2 Xeon: 0.16-0.24 -> 0.07 s;
        benchmarks/RESULTS.md run AG); while ranking, only its suffix (prefix.py). The size
        returned is the whole 4-bit file's, the one the budget is about."""
        import onnx

        four_bit = set(self.weights.weights) - set(moved)
        model = self.weights.build(four_bit, unpacked=True)
        if self._cuts is not None:
            self._cuts.save_cut(model, path)
        else:
            onnx.save(model, str(path))
        return self.weights.size(four_bit)

    def rank_each(self, moves, done=lambda n: None):
        """The shared ranking, each candidate scored from its first changed node on (prefix.py)
        when the ranking scorer can open files; the same metrics, bit for bit."""
        whole = self._rank
        if not isinstance(whole, LaneScorer) or whole.through is None or whole.opener is None \
                or self.weights.sample is None:
            return super().rank_each(moves, done)
        try:
            cuts = OnnxPrefixCuts(self.weights.build(set(self.weights.weights), unpacked=True), self.probe.parent,
                                  whole.opener, self.weights.sample, [f"{w}_quantized" for w in self.weights.weights])
        except Exception as exc:  # noqa: BLE001 -- a graph the cut does not handle: rank whole (same numbers)
            log.info("ranking every candidate whole (no cut points found in the start model: %s)", exc)
            return super().rank_each(moves, done)
        if not cuts.active:
            return super().rank_each(moves, done)
        return self.rank_cut(cuts, moves, done)


def fit_w4a8(space: W4A8Space, budget_bytes: int, progress: Callable[[str], None] = lambda m: None,
             shortfall: Callable[[dict[str, float]], float] | None = None) -> SearchResult:
    """All weights in 4 bits, then the ones whose 8-bit form removes the most measured loss per
    added byte move to 8 bits while the artifact stays within `budget_bytes` (the shared search's
    budget policy; `shortfall`: how far metrics miss the artifact's floor). The result's `moved`
    are the 8-bit weights."""
    return greedy_search(space, Budget(budget_bytes, shortfall), move="8-bit", progress=progress)
