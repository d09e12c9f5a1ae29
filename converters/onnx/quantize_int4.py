"""Pass: INT4 weight-only quantization for onnxruntime (MatMulNBits + GatherBlockQuantized).

    MatMul(x, W)        W: float [K, N] constant  ->  com.microsoft.MatMulNBits, 4-bit (or 8-bit for
                                                       `int8_nodes`), blocks of `block_size` along K
    Gather(T, ids)      T: float [rows, dim], large ->  com.microsoft.GatherBlockQuantized, UINT4,
                                                       blocks of `embedding_block_size` along dim

Both are asymmetric (a UINT4 zero point per block), which measured better than symmetric on
MiniLM (docs/notes/int4-findings.md). Graph structure and the 8-bit weights come from
onnxruntime's MatMulNBitsQuantizer; the 4-bit values come from one of two algorithms:

- "rtn": onnxruntime's round-to-nearest over each block's [min, max].
- "clip_search": per block, a grid over shrink ratios of min and max that minimises
  sum_k E[x_k^2] (w_k - dq(w_k))^2, the output error of the layer when inputs are uncorrelated,
  with E[x_k^2] measured on the calibration batches (tables: plain squared error).
- "auto": build both, measure each against the FP32 model on the calibration batches, keep
  the better one.

Accuracy is measured, through edge_runtime's ONNX session, as the cosine between the candidate's
and the FP32 model's first output on the calibration batches: per sequence after mask-mean
pooling (the loss ranks on this, mean + 0.25 x worst) and per real token. With `size_budget`,
MatMuls move to 8-bit by the shared search's budget policy (converters/core/search.py): in order
of measured loss removed per added byte, each move kept only if the assembled file still fits
(its real serialized size) and the validation loss drops.

`accuracy_level` 4 makes MatMulNBits quantize activations to INT8 per block and use integer
dot products (ORT matmul_nbits.cc); on x86 it measured fastest with unchanged accuracy.
Preconditions: an unfused export (Q/K/V as MatMuls: MatMulNBitsQuantizer skips the weights of
fused `Attention`, which are then reported in `unquantized`), opset <= 21.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from converters._console import CountCallback
from converters._errors import (
    AccuracyError,
    ConversionError,
    UnsupportedModelError,
)
from converters._graph import model_bytes
from converters.core.search import RANKING_TEXTS, Budget, ProbeSpace, greedy_search, search_loss
from converters.core.validate import AgainstFile
from converters.onnx.int4_blocks import (
    _clip_matmul_weight,
    _clip_table,
    _name_nodes,
    _ort_quantize,
    _Parts,
    _targets,
    _to_opset21,
    _with_values,
)
from edge_runtime._bench_config import DEFAULT_SHAPE

__all__ = ["ALGORITHMS", "Int4Config", "quantize_int4", "quantize_tables_int4"]

ALGORITHMS = ("rtn", "clip_search", "auto")
CONFIG_VERSION = 1
# Standalone use (no rank given): the first batches of the calibration set rank the 8-bit moves,
# as many as hold the shared search's RANKING_TEXTS at 16 texts per batch.
RANKING_BATCHES = -(-RANKING_TEXTS // 16)
_BIG_FP32 = 4096  # FP32 initializers with at least this many elements are listed if left over

logger = logging.getLogger(__name__)
Score = Callable[[Path], dict[str, float]]


@dataclass(frozen=True)
class Int4Config:
    block_size: int = 32
    algorithm: str = "auto"
    accuracy_level: int = 4
    embedding_block_size: int = 128
    int8_nodes: tuple[str, ...] = ()  # MatMuls stored as 8-bit MatMulNBits (mixed precision)
    size_budget: float | None = (
        None  # max bytes vs FP32; moves sensitive MatMuls to 8-bit within it
    )
    int8_block_size: int = 128  # 8-bit layers: block 128 measured faster than 32 at equal accuracy
    embedding_min_elements: int = 1 << 16  # smaller tables (token types) stay FP32

    def __post_init__(self):
        problems = []
        if self.algorithm not in ALGORITHMS:
            problems.append(f"algorithm {self.algorithm!r} is not one of {list(ALGORITHMS)}")
        for name in ("block_size", "embedding_block_size", "int8_block_size"):
            value = getattr(self, name)
            if value < 16 or value & (value - 1):
                problems.append(
                    f"{name} {value} must be a power of two >= 16 (MatMulNBits/GatherBlockQuantized)"
                )
        if self.accuracy_level not in (0, 1, 2, 3, 4):
            problems.append(
                f"accuracy_level {self.accuracy_level} must be 0-4 (4: INT8 activations)"
            )
        if self.size_budget is not None and not 0.0 < self.size_budget <= 1.0:
            problems.append(
                f"size_budget {self.size_budget} must be a fraction of the FP32 bytes in (0, 1]"
            )
        if problems:
            raise ValueError("invalid Int4Config: " + "; ".join(problems))

    def describe(self) -> dict[str, Any]:
        return {
            "config_version": CONFIG_VERSION,
            **asdict(self),
            "int8_nodes": list(self.int8_nodes),
        }


class _Variants:
    """The FP32 graph plus every quantized form of its targets, to assemble any mix cheaply:
    onnxruntime builds the nodes once (4-bit RTN, 8-bit RTN, 4-bit tables); clip_search only
    swaps values into copies of them."""

    def __init__(
        self,
        model,
        matmuls: dict[str, str],
        tables: dict[str, str],
        config: Int4Config,
        fp32_path: Path,
        batches: list[dict[str, np.ndarray]],
    ):
        import onnx

        self.model, self.matmuls, self.tables, self.config = model, matmuls, tables, config
        self._fp32_path, self._batches = fp32_path, batches
        self._skeleton = onnx.ModelProto()
        self._skeleton.CopyFrom(model)
        for name in (
            "node",
            "initializer",
            "value_info",
        ):  # value_info of replaced nodes would go stale
            self._skeleton.graph.ClearField(name)
        if not any(o.domain == "com.microsoft" for o in self._skeleton.opset_import):
            self._skeleton.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
        level = config.accuracy_level
        self._matmul4 = {
            "rtn": _ort_quantize(model, matmuls, "MatMul", 4, config.block_size, level)
        }
        self._tables4 = {
            "rtn": _ort_quantize(model, tables, "Gather", 4, config.embedding_block_size, level)
        }
        self._matmul8: _Parts | None = None

    def _eight(self) -> _Parts:
        if self._matmul8 is None:  # 8-bit: RTN is already within ~1e-3 cosine of FP32
            c = self.config
            self._matmul8 = _ort_quantize(
                self.model, self.matmuls, "MatMul", 8, c.int8_block_size, c.accuracy_level
            )
        return self._matmul8

    def _clip_search(self) -> None:
        import copy

        from onnx import numpy_helper

        from converters.core._activations import channel_mean_square

        inits = {i.name: i for i in self.model.graph.initializer}
        inputs = {n.name: n.input[0] for n in self.model.graph.node if n.name in self.matmuls}
        stats = channel_mean_square(self._fp32_path, sorted(set(inputs.values())), self._batches)
        # A weight read by several MatMuls gets one set of values: weight its error by their mean input.
        consumers: dict[str, list[str]] = {}
        for node, weight in self.matmuls.items():
            consumers.setdefault(weight, []).append(node)
        matmul = copy.deepcopy(self._matmul4["rtn"])
        for weight, nodes in consumers.items():
            mean_square = np.mean([stats[inputs[n]] for n in nodes], axis=0).astype(np.float32)
            values = _clip_matmul_weight(
                numpy_helper.to_array(inits[weight]).astype(np.float32),
                self.config.block_size,
                mean_square,
            )
            for node in nodes:
                _with_values(matmul, node, values)
        tables = copy.deepcopy(self._tables4["rtn"])
        for node, table in self.tables.items():
            values = _clip_table(
                numpy_helper.to_array(inits[table]).astype(np.float32),
                self.config.embedding_block_size,
            )
            _with_values(tables, node, values)
        self._matmul4["clip_search"], self._tables4["clip_search"] = matmul, tables

    def build(self, algorithm: str, int8: set[str]):
        import onnx

        if algorithm not in self._matmul4:
            self._clip_search()
        four, tables = self._matmul4[algorithm], self._tables4[algorithm]
        eight = self._eight() if int8 else None
        model = onnx.ModelProto()
        model.CopyFrom(self._skeleton)
        nodes, added = [], {}
        for node in self.model.graph.node:
            parts = (
                eight
                if node.name in int8
                else four
                if node.name in self.matmuls
                else tables
                if node.name in self.tables
                else None
            )
            if parts is None:
                nodes.append(node)
            else:
                nodes.append(parts.nodes[node.name])
                added.update(parts.initializers[node.name])
        model.graph.node.extend(nodes)
        used = {name for node in nodes for name in node.input}
        model.graph.initializer.extend(
            i for i in self.model.graph.initializer if i.name in used and i.name not in added
        )
        model.graph.initializer.extend(added.values())
        return model


def _onnx_outputs(path: Path, batches) -> list[np.ndarray]:
    """The first output of the ONNX file at `path` for each batch, through the runtime's session."""
    from edge_runtime.backends.onnx import OnnxSession

    session = OnnxSession(Path(path), threads=DEFAULT_SHAPE.threads)
    return [next(iter(session.run(feeds).values())) for feeds in batches]


class _Space(ProbeSpace):
    """The 8-bit upgrades as the shared search sees them (converters/core/search.py): a
    candidate is a MatMul stored as 8-bit MatMulNBits instead of 4-bit, on top of `int8`."""

    def __init__(self, variants: _Variants, algorithm: str, int8: set[str], probe: Path,
                 rank: Score, judge: Score):
        super().__init__(probe, rank, judge)
        self.variants, self.algorithm, self.int8 = variants, algorithm, set(int8)

    def candidates(self) -> list[str]:
        return [n for n in self.variants.matmuls if n not in self.int8]

    def write(self, moved: frozenset[str], path: Path) -> int:
        import onnx

        model = self.variants.build(self.algorithm, self.int8 | set(moved))
        onnx.save(model, str(path))
        return model.ByteSize()


def quantize_int4(
    fp32_path: Path,
    out_path: Path,
    config: Int4Config,
    calibration_batches: list[dict[str, np.ndarray]],
    validation_batches: list[dict[str, np.ndarray]] | None = None,
    progress: Callable[[str], None] = lambda message: None,
    rank: Score | None = None,
    judge: Score | None = None,
    shortfall: Callable[[dict[str, float]], float] | None = None,
) -> dict[str, Any]:
    """Write the INT4 form of the FP32 ONNX model `fp32_path` to `out_path` (one file, weights
    inline) and return what changed: algorithm chosen and each candidate's accuracy against
    FP32 on the validation batches, bits per MatMul, embedding scheme, bytes before/after.

    `calibration_batches` fit (clip-search statistics, the size-budget ranking);
    `validation_batches` score (the algorithm choice, each budget step, the final metrics).
    None: the calibration batches do both (in-sample; for callers without a split).
    `progress` hears how far the size-budget search is (converters/_console.count messages).
    `rank` / `judge` score a candidate file (fit texts / validation texts); the pipeline passes
    its one evaluator. None: agreement with the FP32 graph on the given batches. `shortfall`:
    how far metrics miss the artifact's floor, weighed by the budget search."""
    import onnx

    fp32_path, out_path = Path(fp32_path), Path(out_path)
    batches = list(calibration_batches)
    if not batches:
        raise ValueError(
            "quantize_int4 needs calibration batches (tokenized feeds with an attention_mask) to "
            "measure its candidates: pass converters.core.validate.make_batches(source, texts)"
        )
    model = _to_opset21(onnx.load(str(fp32_path)))
    _name_nodes(model)
    matmuls, tables = _targets(model, config.embedding_min_elements)
    if not matmuls:
        raise UnsupportedModelError(
            f"{fp32_path.name} has no MatMul with a constant 2-D float weight to quantize. A graph with "
            "fused Attention keeps its projections inside Attention: export with fusion disabled for INT4."
        )
    unknown = sorted(set(config.int8_nodes) - set(matmuls))
    if unknown:
        raise UnsupportedModelError(
            f"int8_nodes {unknown} are not quantizable MatMuls of {fp32_path.name}; "
            f"these are: {sorted(matmuls)}"
        )

    bytes_before = model_bytes(fp32_path)
    variants = _Variants(model, matmuls, tables, config, fp32_path, batches)
    if rank is None or judge is None:  # standalone: agreement with the FP32 graph (core/validate.py)
        # the FP32 graph runs on the calibration batches only when they rank or judge
        fitted = AgainstFile(_onnx_outputs, fp32_path, batches) if rank is None or validation_batches is None else None
        rank = rank or (lambda path: fitted.metrics(path, range(min(RANKING_BATCHES, len(batches)))))
        judge = judge or (fitted if validation_batches is None else
                          AgainstFile(_onnx_outputs, fp32_path, validation_batches)).metrics
    probe = out_path.with_name(out_path.stem + ".probe.onnx")
    int8 = set(config.int8_nodes)
    search: list[dict[str, Any]] = []
    try:
        algorithms = ("rtn", "clip_search") if config.algorithm == "auto" else (config.algorithm,)
        candidates = {}
        for algorithm in algorithms:
            onnx.save(variants.build(algorithm, int8), str(probe))
            candidates[algorithm] = judge(probe)
        chosen = min(candidates, key=lambda a: search_loss(candidates[a]))
        if config.size_budget is not None:
            budget = int(config.size_budget * bytes_before)
            size = variants.build(chosen, int8).ByteSize()
            if size > budget:
                # The target's size budget cannot be met by this model (small models are
                # dominated by biases and norms): refused, like one below the accuracy floor.
                raise AccuracyError(
                    f"the all-4-bit model is {size} bytes, above the size budget of {budget} bytes: raise "
                    "size_budget, drop int8_nodes, or use a larger block_size / embedding_block_size"
                )
            space = _Space(variants, chosen, int8, probe, rank, judge)
            result = greedy_search(space, Budget(budget, shortfall), move="8-bit", progress=progress,
                                   start_metrics=candidates[chosen])
            int8, search = int8 | set(result.moved), result.steps
    finally:
        probe.unlink(missing_ok=True)
    result = variants.build(chosen, int8)
    onnx.save(result, str(out_path))
    metrics = judge(out_path)  # measured on the bytes that ship
    _check_result(out_path, matmuls, tables, int8)

    inits = {i.name: i for i in model.graph.initializer}
    kept = [
        {"initializer": i.name, "shape": list(i.dims)}
        for i in result.graph.initializer
        if i.name in inits and i.data_type == onnx.TensorProto.FLOAT and len(i.dims) >= 2
    ]
    for entry in kept:
        logger.info("INT4: %s %s stays FP32", entry["initializer"], entry["shape"])
    return {
        "config": config.describe(),
        "algorithm": chosen,
        "candidates": candidates,
        "metrics": metrics,
        "nodes": {
            node: {
                "bits": 8 if node in int8 else 4,
                "block_size": config.int8_block_size if node in int8 else config.block_size,
                "weight_shape": list(inits[weight].dims),
            }
            for node, weight in matmuls.items()
        },
        "embeddings": [
            {
                "node": node,
                "initializer": table,
                "shape": list(inits[table].dims),
                "scheme": f"GatherBlockQuantized uint4 asymmetric, block {config.embedding_block_size} along dim",
            }
            for node, table in tables.items()
        ],
        "unquantized": kept,  # float initializers no INT4 op reads (small tables, fused Attention)
        "promoted": {"to": "int8", "weights": sorted(int8)},
        "search": search,
        "bytes_before": bytes_before,
        "bytes_after": out_path.stat().st_size,
        "size_ratio": out_path.stat().st_size / bytes_before,
    }


def _check_result(
    path: Path, matmuls: dict[str, str], tables: dict[str, str], int8: set[str]
) -> None:
    """Postcondition on the written file: every target became its quantized op with the bits asked."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    bits = {
        n.name: next((a.i for a in n.attribute if a.name == "bits"), None)
        for n in graph.node
        if n.op_type == "MatMulNBits"
    }
    gathers = {n.name for n in graph.node if n.op_type == "GatherBlockQuantized"}
    wrong = [
        m for m in matmuls if bits.get(f"{m}_Q{8 if m in int8 else 4}") != (8 if m in int8 else 4)
    ]
    wrong += [t for t in tables if f"{t}_Q4" not in gathers]
    if wrong:
        raise ConversionError(f"INT4 pass: {wrong} were not rewritten as planned in {path}")


def quantize_tables_int4(model_path: Path, out_path: Path, config: Int4Config,
                         progress: CountCallback | None = None) -> list[dict[str, Any]]:
    """Embedding tables only: every large Gather table of `model_path` becomes
    GatherBlockQuantized UINT4 (blocks of `config.embedding_block_size` along the row, values
    from the clip search), written to `out_path` at opset 21. MatMuls are left as they are,
    for passes that store them their own way (quantize_w4a8). Returns what changed.
    `progress(rows done, rows)`: the clip search's table rows, all tables together."""
    import onnx

    model = _to_opset21(onnx.load(str(model_path)))
    _name_nodes(model)
    _, tables = _targets(model, config.embedding_min_elements)
    inits = {i.name: i for i in model.graph.initializer}
    parts = _ort_quantize(model, tables, "Gather", 4, config.embedding_block_size, config.accuracy_level)
    total, before = sum(inits[table].dims[0] for table in tables.values()), 0
    if progress is not None and tables:
        progress(0, total)
    for node, table in tables.items():
        told = None if progress is None else (lambda done, _rows, base=before: progress(base + done, total))
        values = _clip_table(_float_array(inits[table]), config.embedding_block_size, told)
        before += inits[table].dims[0]
        _with_values(parts, node, values)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    nodes = []
    for node in model.graph.node:
        nodes.append(parts.nodes.get(node.name, node))
    added = {name: init for node in tables for name, init in parts.initializers[node].items()}
    used = {name for node in nodes for name in node.input}
    kept = [i for i in model.graph.initializer if i.name in used and i.name not in added]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept + list(added.values()))
    onnx.save(model, str(out_path))
    return [
        {"node": node, "initializer": table, "shape": list(inits[table].dims),
         "scheme": f"GatherBlockQuantized uint4 asymmetric, block {config.embedding_block_size} along dim"}
        for node, table in tables.items()
    ]


def _float_array(tensor) -> np.ndarray:
    from onnx import numpy_helper

    return numpy_helper.to_array(tensor).astype(np.float32)
