"""The input-statistics tap: E[x^T x] of every FULLY_CONNECTED weight's input in a .tflite.

GPTQ (converters/core/gptq.py) rounds a weight against the second moment of the activations that
reach it. Here they are read from the FP32 .tflite itself, not from PyTorch: the interpreter
keeps every intermediate tensor (builtin kernels), each calibration row runs on the bucket that
holds it, and only its real tokens count. Short "prefix" rows are added because short inputs
set the minimum cosine and calibration files rarely hold enough of them.

The interpreter runs one row at a time: ~45 s for MiniLM's ~1,000 rows on 2 cores, a fifth of a
Raspberry Pi conversion. When the same model's plain FP32 ONNX export is at hand (the profiles
that ship both formats), the same statistics are read from onnxruntime instead, in batches of
equal-length rows (several times faster; benchmarks/RESULTS.md runs AG and AJ): every FC weight
of the .tflite is matched by value to its ONNX MatMul weight (litert-torch writes W^T, or
W^T * gamma where it folded the LayerNorm before it, bit for bit) and its input is the MatMul's
input (minus beta, over gamma, for a folded LayerNorm). On
MiniLM all 36 match and the statistics agree within 1e-6 (relative); the test compares both
ways on a model with trained-like LayerNorms. A weight without a twin sends the whole set back
to the interpreter.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from converters.core._activations import BatchProgress, GramSums, token_rows
from converters.core.gptq import HessianPolicy
from converters.tflite.flatbuffer import Weight
from converters.tflite.signatures import Signatures, calibration_rows

__all__ = ["HessianCache", "OnnxTwin", "TfliteHessians", "collect_hessians", "hessian_rows", "onnx_twin_hessians",
           "with_prefixes"]


def with_prefixes(
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


def hessian_rows(calibration: list[dict[str, np.ndarray]], longest: int,
                 policy: HessianPolicy) -> tuple[list[dict[str, np.ndarray]], list[dict[str, np.ndarray]]]:
    """(one row per calibration text, cut to `longest` tokens; those rows plus their short
    prefixes): the second set is what GPTQ's Hessians and SmoothQuant's statistics are read on,
    by every recipe here (the pipeline prefetches the statistics on it: HessianCache.prefetch)."""
    rows = calibration_rows(calibration, longest)
    return rows, with_prefixes(rows, policy.prefix_tokens)


def collect_hessians(
    path: Path, weights: dict[int, Weight], rows: list[dict[str, np.ndarray]], weighting: str = "row",
    progress: BatchProgress | None = None,
) -> dict[int, np.ndarray]:
    """E[x^T x] of each FC weight's input over the real tokens of every row, summed over the
    signatures sharing it. weighting "row": each row weighted alike (a short row counts as much
    as a long one); "token": every token alike (HessianPolicy, converters/core/gptq.py).
    `progress(rows done, rows)` hears the pass over the rows."""
    signatures = Signatures(path, preserve=True)
    by_subgraph: dict[int, list[tuple[int, int]]] = {}
    for weight in weights.values():
        for subgraph, tensor in weight.inputs:
            by_subgraph.setdefault(subgraph, []).append((weight.buffer, tensor))
    grams = GramSums()  # one product per weight over many rows: per-row products were 90% of the time
    tell = progress or (lambda done, total: None)
    tell(0, len(rows))
    for done, row in enumerate(rows, 1):
        n = row["attention_mask"].shape[1]
        _, length, subgraph = signatures.run(row)
        for buffer, tensor in by_subgraph.get(subgraph, []):
            x = signatures.interpreter.get_tensor(tensor, subgraph)
            x = x.reshape(-1, x.shape[-1])
            if x.shape[0] == length:  # one row per token position: keep the real ones
                x = x[:n]
            x = x.astype(np.float64)
            if weighting == "row":
                x /= np.sqrt(len(x))
            grams.add(buffer, x)
        tell(done, len(rows))
    return {buffer: h / len(rows) for buffer, h in grams.sums().items()}


def _weight_key(values: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(values, dtype=np.float32).tobytes()).hexdigest()


def _twin_inputs(graph) -> dict[str, tuple[str, tuple[np.ndarray, np.ndarray] | None]]:
    """{value key of the FC weight litert-torch would write: (the ONNX MatMul's input tensor,
    (beta, gamma) to undo on it, or None)} for every MatMul (and Gemm) of `graph` with a
    constant 2-D float weight W [K, N]. litert-torch folds a LayerNorm's gamma into the FC that follows
    (weight float32(W^T * gamma), bit for bit; its input is then the normalized x, i.e. the
    ONNX MatMul's input minus beta, over gamma); other FCs store W^T as it is. Keys of two
    different MatMuls (tied or equal weights) are left out: ambiguous, no twin."""
    import onnx
    from onnx import numpy_helper

    inits = {i.name: i for i in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    found: dict[str, tuple[str, tuple[np.ndarray, np.ndarray] | None] | None] = {}

    def add(key: str, value) -> None:
        old = found.get(key, value)
        if old is not None and old[0] == value[0]:
            # One MatMul seen both ways (gamma all ones): folded wins, it is what litert-torch
            # does after every LayerNorm (the input is then x - beta even with gamma = 1).
            found[key] = value if value[1] is not None else old
        else:
            found[key] = None

    for node in graph.node:
        if node.op_type not in ("MatMul", "Gemm") or len(node.input) < 2 or node.input[1] not in inits:
            continue
        weight = numpy_helper.to_array(inits[node.input[1]])
        if weight.ndim != 2 or weight.dtype != np.float32:
            continue
        if node.op_type == "Gemm":  # torch.onnx writes a Linear on 2-D inputs (a pooler) as Gemm
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            if attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0:
                continue
            if attrs.get("transB", 0):
                weight = weight.T  # stored [N, K]: as MatMul's [K, N]
        x = node.input[0]
        add(_weight_key(weight.T), (x, None))
        norm = producers.get(x)
        if norm is not None and norm.op_type == "LayerNormalization" and norm.input[1] in inits:
            gamma = numpy_helper.to_array(inits[norm.input[1]]).astype(np.float32)
            beta = (numpy_helper.to_array(inits[norm.input[2]]).astype(np.float32)
                    if len(norm.input) > 2 and norm.input[2] in inits else np.zeros_like(gamma))
            # Undoing gamma divides by it: a near-zero channel would amplify rounding.
            if gamma.shape == (weight.shape[0],) and np.abs(gamma).min() > 1e-3:
                add(_weight_key((weight.T * gamma[None, :]).astype(np.float32)), (x, (beta, gamma)))
    return {k: v for k, v in found.items() if v is not None}


# A twin collection's products: per input tensor, at most this many bytes of rows wait (the sums
# of a tensor are the same bit for bit whichever other tensors are summed: GramSums(per_key)).
TWIN_BLOCK_BYTES = 4 << 20


class OnnxTwin:
    """The plain FP32 ONNX export of the model a .tflite was exported from, as a source of its FC
    weights' input statistics: every MatMul input a FULLY_CONNECTED weight can read, as it is or
    normalized (minus beta, over gamma) after a LayerNorm whose gamma litert-torch folds into the
    weight (_twin_inputs)."""

    def __init__(self, path: Path):
        import onnx

        self.path = path
        model = onnx.load(str(path))  # the weights too: FC weights are matched by value
        self.inputs = _twin_inputs(model.graph)  # {weight value key: (input tensor, (beta, gamma) or None)}
        self.dtypes = {i.name: onnx.helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type)
                       for i in model.graph.input}

    def match(self, path: Path, weights: dict[int, Weight]) -> dict[int, tuple[str, bool]] | None:
        """{buffer: (its input tensor here, normalized)} for `weights` of the .tflite at `path`,
        or None when one of them has no twin (the interpreter must tap)."""
        from converters.tflite.flatbuffer import float_weights

        floats = float_weights(path, list(weights.values()))
        matched = {b: self.inputs.get(_weight_key(v)) for b, v in floats.items()}
        if not matched or None in matched.values():
            return None
        return {b: (x, norm is not None) for b, (x, norm) in matched.items()}

    def fits(self, rows: list[dict[str, np.ndarray]]) -> bool:
        """Whether `rows` hold what this export reads (an attention mask among them)."""
        return bool(rows) and "attention_mask" in self.dtypes and all(name in rows[0] for name in self.dtypes)

    def gram_sums(self, rows: list[dict[str, np.ndarray]], weighting: str = "row",
                  progress: BatchProgress | None = None, threads: int | None = None) -> dict[tuple[str, bool], np.ndarray]:
        """{(input tensor, normalized): sum x^T x} over the real tokens of `rows` (fits(rows)), for
        every input of `inputs` at once: onnxruntime runs the export once for all of them. No sum
        depends on which others were computed (GramSums(per_key)), so a .tflite's Hessians are
        the same bit for bit whether they were computed for it or before it existed (the pipeline
        does this while the TFLite export runs in its second process). `threads`: onnxruntime's."""
        # The rows as onnxruntime feeds: only the export's inputs, in its integer type, stacked by
        # length (rows are unpadded, so a batch of equal lengths needs no padding).
        by_length: dict[int, list[dict[str, np.ndarray]]] = {}
        for row in rows:
            by_length.setdefault(row["attention_mask"].shape[1], []).append(row)
        batches = []
        for _, group in sorted(by_length.items()):
            for start in range(0, len(group), 64):  # bounded memory for the activations kept
                chunk = group[start : start + 64]
                batches.append({name: np.concatenate([r[name] for r in chunk]).astype(dtype)
                                for name, dtype in self.dtypes.items()})

        # One sum per (tensor, normalized or not); the FCs reading the same input share it.
        sources = {(x, norm is not None): norm for x, norm in self.inputs.values()}
        grams = GramSums(TWIN_BLOCK_BYTES, per_key=True)
        tensors = sorted({x for x, _ in sources})
        for feeds, values in zip(batches, token_rows(self.path, tensors, batches, progress, threads)):
            lengths = feeds["attention_mask"].sum(axis=1).astype(np.int64)
            for (x_name, normalized), norm in sources.items():
                x = values[x_name].astype(np.float64)
                if normalized:
                    x = (x - norm[0]) / norm[1]
                if weighting == "row" and len(x) == len(lengths) * lengths[0]:  # one row per real token
                    x /= np.sqrt(np.repeat(lengths, lengths)[:, None].astype(np.float64))
                grams.add((x_name, normalized), x)
        return grams.sums()


def onnx_twin_hessians(
    path: Path, weights: dict[int, Weight], rows: list[dict[str, np.ndarray]], twin: Path, weighting: str = "row",
    progress: BatchProgress | None = None,
) -> dict[int, np.ndarray] | None:
    """What collect_hessians returns, read from `twin` (the plain FP32 ONNX export of the same
    model) by onnxruntime; None when a weight has no twin there (the interpreter must tap).
    `progress(batches done, batches)` hears onnxruntime's pass."""
    source = OnnxTwin(twin)
    matched = source.match(path, weights)
    if matched is None or not source.fits(rows):
        return None
    sums = source.gram_sums(rows, weighting, progress)
    return {b: sums[key] / len(rows) for b, key in matched.items()}


def _rows_digest(rows: list[dict[str, np.ndarray]]) -> str:
    digest = hashlib.sha256()
    for row in rows:
        for name in sorted(row):
            digest.update(name.encode())
            digest.update(np.ascontiguousarray(row[name]).tobytes())
    return digest.hexdigest()


class HessianCache:
    """Hessians of one FP32 .tflite's FC weights on one set of rows, collected once and shared:
    gptq_wi8_afp32 and gptq_wi4b32_afp32 round against the same statistics (same export, same
    rows), and so do the targets of one run. Collecting them is the costly part (tapping the
    interpreter over ~1,000 rows: 45-85 s for MiniLM on 2 cores; the ONNX twin: a few seconds), GPTQ
    itself a few seconds. The cache is passed explicitly (the pipeline keeps one per run); a
    model file that only renames tensors and moves buffers (flatbuffer.compact_copy) shares its
    original's entry via `source`: weights are matched by the op that reads them."""

    TWIN, INTERPRETER = "onnxruntime on the plain ONNX export", "the TFLite interpreter"

    def __init__(self, twin: Path | None = None) -> None:
        """`twin`: the plain FP32 ONNX export of the model the .tflite files were exported from,
        read instead of tapping the interpreter when every weight has its twin there
        (OnnxTwin); None: always tap."""
        self.twin = twin
        self._twin: OnnxTwin | None = None  # read on first use
        # (rows, weighting) -> the twin's Gram sums on those rows, prefetched and not read yet
        self._twin_sums: dict[tuple[str, str], dict[tuple[str, bool], np.ndarray]] = {}
        # (model, rows, weighting) -> {first op reading a weight: (its Hessian, where it came from)}
        self._store: dict[tuple[str, str, str], dict[tuple[int, ...], tuple[np.ndarray, str]]] = {}
        self.collected = 0  # weights whose statistics were collected (the rest were reused)
        self.from_twin = 0  # of those, read from the ONNX twin rather than the interpreter

    def _onnx_twin(self) -> OnnxTwin | None:
        if self.twin is not None and self._twin is None:
            self._twin = OnnxTwin(self.twin)
        return self._twin

    def prefetch(self, rows: list[dict[str, np.ndarray]], weighting: str = "row",
                 progress: BatchProgress | None = None, threads: int | None = None) -> bool:
        """Compute the twin's statistics on `rows` now, before any .tflite exists (the pipeline
        calls this while it waits for the TFLite export, on the core the export leaves idle):
        the next get() on the same rows reads them instead of running onnxruntime. False when
        there is nothing to compute (no twin, rows it cannot read, or prefetched already)."""
        twin = self._onnx_twin()
        key = (_rows_digest(rows), weighting)
        if twin is None or key in self._twin_sums or not twin.fits(rows):
            return False
        self._twin_sums[key] = twin.gram_sums(rows, weighting, progress, threads)
        return True

    def _from_twin(self, path: Path, weights: dict[int, Weight], rows: list[dict[str, np.ndarray]],
                   weighting: str, progress: BatchProgress | None) -> dict[int, np.ndarray] | None:
        """What collect_hessians returns, from the twin's sums on `rows` (computed here unless
        prefetched); None when a weight has no twin there."""
        twin = self._onnx_twin()
        matched = None if twin is None or not twin.fits(rows) else twin.match(path, weights)
        if matched is None:
            return None
        # A prefetch is read once: the Hessians made from it are what later calls reuse (the
        # sums of every twin input, ~150 MB for MiniLM, are not kept beside them).
        sums = self._twin_sums.pop((_rows_digest(rows), weighting), None)
        if sums is None:
            sums = twin.gram_sums(rows, weighting, progress)
        return {b: sums[source] / len(rows) for b, source in matched.items()}

    def get(self, path: Path, weights: dict[int, Weight], rows: list[dict[str, np.ndarray]],
            source: Path | None = None, weighting: str = "row",
            progress: BatchProgress | None = None) -> dict[int, tuple[np.ndarray, str]]:
        """{buffer: (Hessian, what it was read with: TWIN or INTERPRETER)} for `weights`;
        `progress(done, total)` hears a collection's pass (batches of the twin, or rows)."""
        key = (str(Path(source or path).resolve()), _rows_digest(rows), weighting)
        store = self._store.setdefault(key, {})
        # By the first op reading the weight: compact_copy keeps ops in place, not buffer indices.
        use = {b: tuple(w.uses[0][:2]) for b, w in weights.items()}
        missing = {b: w for b, w in weights.items() if use[b] not in store}
        if missing:
            origin = self.TWIN
            found = self._from_twin(path, missing, rows, weighting, progress)
            if found is None:
                origin, found = self.INTERPRETER, collect_hessians(path, missing, rows, weighting, progress)
            else:
                self.from_twin += len(missing)
            for buffer, hessian in found.items():
                store[use[buffer]] = (hessian, origin)
            self.collected += len(missing)
        return {b: store[use[b]] for b in weights}

    def put(self, path: Path, weights: dict[int, Weight], rows: list[dict[str, np.ndarray]],
            hessians: dict[int, np.ndarray], origin: str, weighting: str = "row") -> None:
        """Record `hessians` ({buffer: Hessian} of `weights`) as the statistics of the model at
        `path` on `rows`, replacing what was there: for a model derived from one whose Hessians
        are known (smooth.smooth_fc_inputs: its inputs rescaled, so its Hessians follow exactly)."""
        key = (str(Path(path).resolve()), _rows_digest(rows), weighting)
        store = self._store[key] = {}
        for buffer, weight in weights.items():
            store[tuple(weight.uses[0][:2])] = (hessians[buffer], origin)


class TfliteHessians:
    """The TFLite adapter of the GPTQ driver's HessianSource (converters/core/gptq.py): the
    Hessians of `weights` (by FP32 buffer) of the model at `path` on `rows`, through `cache`."""

    def __init__(self, path: Path, weights: dict[int, Weight], rows: list[dict[str, np.ndarray]],
                 weighting: str, cache: HessianCache | None = None, source: Path | None = None,
                 progress: BatchProgress | None = None):
        found = (cache or HessianCache()).get(path, weights, rows, source=source, weighting=weighting,
                                              progress=progress)
        self._hessians = {b: hessian for b, (hessian, _) in found.items()}
        # For the manifest: what the statistics were read with.
        self.origin = ", ".join(sorted({origin for _, origin in found.values()}))

    def hessian(self, weight: int) -> np.ndarray:
        return self._hessians[weight]
