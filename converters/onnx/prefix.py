"""ONNX ranking candidates scored from where they first differ from the search's start model.

The ONNX twin of converters/tflite/prefix.py. A ranking candidate is the search's start model with
one weight in another form (8 bits instead of 4 in W4A8): the same nodes, other initializer
values. Every node before the first node that reads a changed value computes what the start
model computes, so `OnnxPrefixCuts` runs only the candidate's suffix:

1. Cut points: node positions before which fewest activation tensors are alive (the "crossing"
   tensors; at a BERT layer's start and after its attention LayerNorm: the attention mask and
   the hidden state), inside the span of the weights' first readers, chosen with
   core/prefix_points.py for the nodes they let candidates skip within a memory budget.
2. The tap: the start model with the crossing tensors as extra outputs, run once per ranking
   batch (on its first sight) and kept.
3. `cut`: a candidate becomes its suffix from the latest cut point at or before its first changed
   node: those nodes, the constant nodes they read, their initializers, the crossing tensors as
   graph inputs.
4. `runner`: the kept tensors fed to the suffix's session (opened by the scorer's own opener: the
   target's arithmetic, core/arithmetic.py), the model's outputs returned.

Unlike a TFLite interpreter, onnxruntime rewrites the graph it is given (fusions, constant
folding), and a fusion across a cut would make the suffix compute other numbers. So every cut
point is proven on the start model before it is used: its suffix, fed from the tap, must give the
start model's outputs bit for bit on a sample batch; a point that does not is dropped (its
candidates cut at an earlier point, or scored whole). Checked: tests/test_onnx_prefix.py;
benchmarks/RESULTS.md run BB (MiniLM: every artifact byte-identical, the time saved).
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable, Collection
from pathlib import Path

import numpy as np

from converters._graph import without_weight_values
from converters.core.prefix_points import choose_points

__all__ = ["OnnxPrefixCuts", "sample_rows"]

log = logging.getLogger("converters")

Runner = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]
Opener = Callable[[Path, "int | None"], Runner]  # a file's run(feeds), as the scorer runs files

# Kept crossing tensors per token of a batch row, at most (bytes, summed over the chosen points,
# measured on the proof sample). MiniLM: the hidden state, 1.5 KB a token, and the attention mask
# [batch, 1, seq, seq] (kept once; 4 x seq bytes a token): its twelve points fit.
BYTES_PER_TOKEN = 24 << 10
# A point may have at most this many crossing tensors more than the position with the fewest
# (MiniLM: the hidden state alone after the last attention block; the hidden state and the
# attention mask at each layer's start and after its attention LayerNorm; inside the attention
# block, three and more, left out). Counted, not sized: the mask [batch, 1, seq, seq] grows
# with the sequence, so its bytes per token depend on the sample.
NARROW = 1
# ... and at most this multiple of the median such point's bytes per token: the budget admits as
# many points as the widest candidate point fits, and MiniLM's FFN activations (1536 floats a
# token, two tensors with the hidden state) left room for three points instead of eleven. (The
# median, not the thinnest: the mask's bytes per token grow with the sample's length, and on a
# tiny model it outweighs the hidden state at the points that have it.)
WIDE = 1.5


def sample_rows(feeds: dict[str, np.ndarray], rows: int = 2) -> dict[str, np.ndarray]:
    """The first `rows` rows of a padded batch, cut to their longest real length (attention_mask):
    a small batch to prove cut points on, padding included."""
    arrays = {name: np.asarray(value)[:rows] for name, value in feeds.items()}
    mask = arrays.get("attention_mask")
    if mask is not None and mask.ndim == 2 and mask.shape[1] > 1:
        length = max(2, int(mask.sum(axis=1).max()))
        arrays = {name: value[:, :length] if value.ndim == 2 and value.shape == mask.shape else value
                  for name, value in arrays.items()}
    return arrays


class _Analysis:
    """The start graph's constants and, at each node position among the weights' first readers,
    the crossing tensors; `choose` picks the cut points once their sizes are measured."""

    def __init__(self, model, weights: Collection[str]):
        graph = model.graph
        self.nodes = list(graph.node)
        inits = {i.name for i in graph.initializer}
        self.outputs = [o.name for o in graph.output]
        self.points: list[int] = []
        self.crossing: dict[int, list[str]] = {}  # the chosen points'
        self.types: dict[str, object] = {}  # TypeProto of each chosen point's crossing tensor
        self.positions: dict[int, list[str]] = {}  # every position's crossing tensors
        self.changes: list[int] = []  # the weights' first readers
        self.constant_node = [False] * len(self.nodes)
        if any(a.type in (a.GRAPH, a.GRAPHS) for n in self.nodes for a in n.attribute):
            return  # control flow reads outer names implicitly: no cut is proven safe
        # Constants: initializers and what nodes compute from constants alone (a suffix recomputes them).
        constant = set(inits)
        for k, node in enumerate(self.nodes):
            if all(not i or i in constant for i in node.input):
                self.constant_node[k] = True
                constant.update(node.output)
        made = {i.name: -1 for i in graph.input if i.name not in inits}
        last: dict[str, int] = {}
        for k, node in enumerate(self.nodes):
            if not self.constant_node[k]:
                made.update((o, k) for o in node.output if o)
            for name in node.input:
                if name in made:
                    last[name] = k
        for name in self.outputs:
            if name in made:
                last[name] = len(self.nodes)
        first_reader: dict[str, int] = {}
        for k, node in enumerate(self.nodes):
            for name in node.input:
                if name in weights:
                    first_reader.setdefault(name, k)
        self.changes = sorted(set(first_reader.values()))
        if not self.changes:
            return
        alive: set[str] = {n for n, k in made.items() if k == -1 and n in last}
        for c in range(len(self.nodes)):
            if c > 0:
                alive.update(o for o in self.nodes[c - 1].output if made.get(o) == c - 1 and o in last)
                alive = {t for t in alive if last[t] >= c}
            if self.changes[0] <= c <= self.changes[-1] and not self.constant_node[c] and alive:
                self.positions[c] = sorted(alive)

    def choose(self, measured: dict[str, np.ndarray], tokens: int, inferred: dict[str, object]) -> None:
        """Pick the cut points from the crossing tensors' `measured` values on a sample of `tokens`
        tokens (batch x sequence): bytes per token decide which points are narrow and how many fit."""
        width = {c: sum(measured[t].nbytes for t in alive) / tokens
                 for c, alive in self.positions.items() if all(t in measured for t in alive)}
        if not width:
            return
        fewest = min(len(self.positions[c]) for c in width)
        few = [c for c in width if len(self.positions[c]) <= fewest + NARROW]
        typical = float(np.median([width[c] for c in few]))
        narrow = [c for c in few if width[c] <= WIDE * typical]
        self.points = choose_points(narrow, self.changes, width, BYTES_PER_TOKEN)
        self.crossing = {p: self.positions[p] for p in self.points}
        self.types = {t: _tensor_type(t, measured[t], inferred) for p in self.points for t in self.crossing[p]}


def _inferred(model) -> dict[str, object]:
    """The ValueInfo onnx's shape inference gives the start model's tensors, by name."""
    import onnx

    graph = onnx.shape_inference.infer_shapes(without_weight_values(model), strict_mode=False).graph
    return {info.name: info for info in [*graph.value_info, *graph.input, *graph.output]
            if info.type.HasField("tensor_type") and info.type.tensor_type.HasField("shape")}


def _tensor_type(name: str, value: np.ndarray, inferred: dict[str, object]):
    """A suffix input's type: the start model's inferred one (its dims named as the whole model's
    inference names them), else the measured element type and rank, every dim free."""
    from onnx import helper

    info = inferred.get(name)
    if info is not None and len(info.type.tensor_type.shape.dim) == value.ndim:
        return info.type
    return helper.make_tensor_type_proto(helper.np_dtype_to_tensor_dtype(value.dtype), [None] * value.ndim)


class OnnxPrefixCuts:
    """The cut points, the tap and the kept tensors of one ranking (see the module docstring).
    `start`: the search's start model (nothing moved; not changed); `work`: where the tap and
    proof files go; `opener(path, threads)`: run(feeds) of a file as the ranking scores files;
    `sample`: a small batch of feeds (sample_rows) every cut point is proven on; `weights`: the
    initializers the candidates change (their first readers are where candidates first differ:
    the cut points lie among them). Thread-safe for the ranking's lanes (each lane cuts and
    scores its own probe file)."""

    def __init__(self, start, work: Path, opener: Opener, sample: dict[str, np.ndarray], weights: Collection[str]):
        import onnx

        self._start, self._opener = start, opener
        self._analysis = _Analysis(start, set(weights))
        self._inferred: dict[str, object] = {}
        self._digests = _digests(start)
        self._values: dict[bytes, dict[str, np.ndarray]] = {}
        self._lock = threading.Lock()
        self._cuts: dict[Path, int] = {}
        self._tap_path = Path(work) / "prefix-tap.onnx"
        self._tap: Runner | None = None
        if not self._analysis.positions:
            return
        self._inferred = _inferred(start)
        self._analysis.choose(self._survey(Path(work), sample), int(np.asarray(next(iter(sample.values()))).size),
                              self._inferred)
        if not self._analysis.points:
            return
        try:
            onnx.save(self._tap_model(), str(self._tap_path))
            self._prove(Path(work), sample)
        except BaseException:  # the caller scores whole (or stops): no tap left in its work directory
            self.close()
            raise

    @property
    def points(self) -> list[int]:
        return list(self._analysis.points)

    @property
    def active(self) -> bool:
        return bool(self._analysis.points)

    def close(self) -> None:
        self._tap, self._values = None, {}
        self._tap_path.unlink(missing_ok=True)

    # -- cutting a candidate ----------------------------------------------------------------

    def cut(self, model):
        """(suffix model, cut point) of a candidate model when a cut point lies at or before its
        first changed node; None: score it whole."""
        first = self._first_change(model)
        point = max((p for p in self._analysis.points if p <= first), default=None)
        suffix = None if point is None else self._suffix(model, point)
        return None if suffix is None else (suffix, point)

    def save_cut(self, model, path: Path) -> bool:
        """Write the candidate's suffix to `path` when it can be cut (True), else the whole
        candidate (False); the runner of a cut file is `runner(path, threads)`."""
        import onnx

        path = Path(path)
        with self._lock:
            self._cuts.pop(path, None)
        cut = self.cut(model) if self.active else None
        onnx.save(cut[0] if cut else model, str(path))
        if cut:
            with self._lock:
                self._cuts[path] = cut[1]
        return cut is not None

    def is_cut(self, path: Path) -> bool:
        with self._lock:
            return Path(path) in self._cuts

    def _first_change(self, model) -> int:
        """The position of the first node of `model` that may compute something else than the start
        model's: another node, or a reader of a changed constant."""
        start = self._start.graph
        graph = model.graph
        if (len(graph.node) != len(start.node) or list(graph.input) != list(start.input)
                or list(graph.output) != list(start.output) or list(model.opset_import) != list(self._start.opset_import)):
            return 0
        theirs = _digests(model)
        changed = {name for name in set(theirs) | set(self._digests) if theirs.get(name) != self._digests.get(name)}
        constant_node = self._analysis.constant_node
        for k, (ours, node) in enumerate(zip(start.node, graph.node)):
            if ours != node:
                if not constant_node[k]:
                    return k
                changed.update(node.output)
                continue
            if any(name in changed for name in node.input):
                if not constant_node[k]:
                    return k
                changed.update(node.output)
        return len(graph.node)

    def _suffix(self, model, point: int):
        """`model`'s nodes from `point` on, with the constant nodes before it that they read, its
        initializers that they read, and the crossing tensors at `point` as inputs; None when a
        kept node reads something none of these give (a candidate wired otherwise than the
        start after the cut: scored whole, not loaded as an invalid model)."""
        import onnx

        analysis, graph = self._analysis, model.graph
        nodes = list(graph.node)
        needed = {name for node in nodes[point:] for name in node.input} | set(analysis.outputs)
        head = []
        for k in range(point - 1, -1, -1):  # constant nodes before the cut, last reader first
            node = nodes[k]
            if analysis.constant_node[k] and any(o in needed for o in node.output):
                head.append(node)
                needed.update(node.input)
        kept = [*reversed(head), *nodes[point:]]
        suffix = onnx.ModelProto()
        for field in ("ir_version", "producer_name", "producer_version", "domain", "model_version"):
            setattr(suffix, field, getattr(model, field))
        suffix.opset_import.extend(model.opset_import)
        out = suffix.graph
        out.name = graph.name
        out.node.extend(kept)
        out.initializer.extend(i for i in graph.initializer if i.name in needed)
        crossing = analysis.crossing[point]
        given = set(crossing) | {i.name for i in out.initializer}
        for node in kept:
            if any(name and name not in given for name in node.input):
                return None
            given.update(node.output)
        for name in crossing:
            out.input.add().CopyFrom(onnx.helper.make_value_info(name, analysis.types[name]))
        produced = {o for node in kept for o in node.output}
        out.output.extend(o for o in graph.output if o.name in produced)
        # The whole model's inferred shapes as hints: onnxruntime fuses some ops only where it
        # proves shapes equal (Add + LayerNormalization into SkipLayerNormalization needs the same
        # named dims on both inputs), and a suffix inferred on its own names its dims otherwise
        # (measured on MiniLM: ulp-level differences without them, none with them).
        ends = set(crossing) | {o.name for o in out.output}
        out.value_info.extend(self._inferred[name] for name in sorted(produced - ends) if name in self._inferred)
        return suffix

    # -- scoring a cut candidate ------------------------------------------------------------

    def runner(self, path: Path, threads: int | None) -> Runner:
        """run(feeds) over the cut file at `path` that returns what the whole candidate's session
        returns: the start model's crossing tensors at its cut point (from the tap) fed to it."""
        with self._lock:
            point = self._cuts[Path(path)]
        return self._runner(self._opener(Path(path), threads), point, threads)

    def _runner(self, run: Runner, point: int, threads: int | None) -> Runner:
        crossing, outputs = self._analysis.crossing[point], self._analysis.outputs

        def suffix_run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            kept = self._kept(feeds, threads)
            values = run({name: kept[name] for name in crossing})
            return {name: values[name] if name in values else kept[name] for name in outputs}

        return suffix_run

    def _kept(self, feeds: dict[str, np.ndarray], threads: int | None) -> dict[str, np.ndarray]:
        """The start model's crossing tensors (and outputs) on `feeds`, from the tap on their
        first sight."""
        digest = hashlib.sha256()
        for name in sorted(feeds):
            value = np.ascontiguousarray(feeds[name])
            digest.update(f"{name}{value.dtype}{value.shape}".encode())
            digest.update(value.tobytes())
        key = digest.digest()
        with self._lock:
            if key not in self._values:
                if self._tap is None:
                    self._tap = self._opener(self._tap_path, threads)
                self._values[key] = {name: np.array(value) for name, value in self._tap(feeds).items()}
            return self._values[key]

    def _survey(self, work: Path, sample: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Every position's crossing tensors on `sample`, from one run of the start model with all
        of them as outputs (their sizes choose the points; shape inference leaves many unknown)."""
        import onnx

        survey = onnx.ModelProto()
        survey.CopyFrom(self._start)
        have = {o.name for o in survey.graph.output}
        names = sorted({t for ts in self._analysis.positions.values() for t in ts} - have)
        survey.graph.output.extend(onnx.helper.make_empty_tensor_value_info(name) for name in names)
        path = work / "prefix-survey.onnx"
        try:
            onnx.save(survey, str(path))
            return self._opener(path, None)(sample)
        finally:
            path.unlink(missing_ok=True)

    def _tap_model(self):
        import onnx

        tap = onnx.ModelProto()
        tap.CopyFrom(self._start)
        have = {o.name for o in tap.graph.output}
        kept = sorted({t for ts in self._analysis.crossing.values() for t in ts} - have)
        # Untyped: a declared type on an extra output changes what onnxruntime fuses around it
        # (measured: the tap then no longer computed the start model's numbers).
        tap.graph.output.extend(onnx.helper.make_empty_tensor_value_info(name) for name in kept)
        return tap

    def _prove(self, work: Path, sample: dict[str, np.ndarray]) -> None:
        """Keep the cut points whose suffix of the start model, fed from the tap, gives the start
        model's outputs bit for bit on `sample` (onnxruntime optimizes each file on its own)."""
        import onnx

        start_path, proof_path = work / "prefix-start.onnx", work / "prefix-proof.onnx"
        try:
            onnx.save(self._start, str(start_path))
            want = self._opener(start_path, None)(sample)
            proven = []
            for point in self._analysis.points:
                suffix = self._suffix(self._start, point)
                try:  # one point that cannot be proven is dropped, not every point
                    if suffix is None:
                        raise ValueError("its suffix reads a tensor the cut does not give")
                    onnx.save(suffix, str(proof_path))
                    got = self._runner(self._opener(proof_path, None), point, None)(sample)
                except Exception as exc:  # noqa: BLE001 -- an unprovable point: left out, said why
                    log.info("prefix cut before node %d (%s) left out: %s", point, self._analysis.nodes[point].name, exc)
                    continue
                if all(np.array_equal(got[name], want[name], equal_nan=True) for name in self._analysis.outputs):
                    proven.append(point)
                else:
                    log.info("prefix cut before node %d (%s) left out: its suffix does not reproduce the start "
                             "model's outputs", point, self._analysis.nodes[point].name)
        finally:
            start_path.unlink(missing_ok=True)
            proof_path.unlink(missing_ok=True)
        self._analysis.points = proven
        self._analysis.crossing = {p: self._analysis.crossing[p] for p in proven}
        if not proven:
            self.close()


def _digests(model) -> dict[str, bytes]:
    """Each initializer's content hash, by name."""
    return {init.name: hashlib.blake2b(init.SerializeToString(), digest_size=16).digest()
            for init in model.graph.initializer}
