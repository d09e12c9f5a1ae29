"""Ranking candidates scored from where they first differ from the search's start model.

A ranking candidate is the search's start model with one weight moved (INT8 instead of INT4,
float instead of INT8). Every op before the first op whose inputs differ reads the same tensors
and the same constant bytes as in the start model, so it computes the same numbers, bit for bit
(an op's kernel sees its inputs, not what follows it). `PrefixCuts` scores such a candidate by
running only its suffix:

1. Cut points, per signature: FULLY_CONNECTED ops before which few activation tensors are alive
   (the "crossing" tensors: at a BERT layer's start, the attention mask and the hidden state),
   chosen for the ops they let candidates skip, within a memory budget per bucket token.
2. The tap: the start model with the crossing tensors as extra outputs, run once per ranking text
   (on its first sight) and kept.
3. `cut`: each candidate file is rewritten in place as its suffix, from the latest cut point
   before its first changed op: its operators from there, the crossing tensors as the
   signature's inputs. A patch of a few offsets in the flatbuffer plus a small appended table,
   not a re-serialization (reading a model into Python objects takes ~0.2 s, as long as a fifth
   of a candidate's scoring).
4. `runner`: each row padded to its bucket as edge_runtime's TfliteSession pads it, the kept
   tensors fed, the outputs cut back to the row's length.

A candidate that differs before the first cut point, or in a way this module does not prove
equal (an unknown quantization detail), is scored whole.

The search's walk (`follow=True`) judges its trials the same way, on the validation texts, against
a start that moves: each accepted trial becomes it (`accept`). A trial's suffix also outputs the
crossing tensors of the cut points after its own, so an accepted trial leaves the kept tensors of
its own model behind and needs no new tap. Checked: tests/test_tflite_prefix.py
(suffix outputs equal the whole candidate's bit for bit); benchmarks/RESULTS.md run AM (MiniLM:
every artifact byte-identical, the ranking's metrics identical, the time saved).
"""

from __future__ import annotations

import hashlib
import os
import struct
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from converters.core.prefix_points import choose_points
from converters.tflite.flatbuffer import FC, code_name, read_model, schema, write_model
from converters.tflite.flatbuffer_raw import (Patches, RawTensors, Tail, Unprovable, op_signature, op_tensors,
                                               patch_cut, patch_outputs, tensor_names)

__all__ = ["PrefixCuts"]

Runner = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]

# Kept crossing tensors per token of a row's bucket, at most (float32 bytes, summed over the
# chosen cut points). MiniLM: 769 floats (3 KB) per point; 24 KB holds seven, ~150 MB for a
# 64-text ranking subset at its buckets (~7,000 tokens; run AM measured +0.1 GB of peak RSS).
BYTES_PER_TOKEN = 24 << 10
# A cut point's crossing tensors may hold at most this multiple of the narrowest point's floats
# per token (MiniLM: the layer starts, 769; right after the Q projection, 1153, is left out).
NARROW = 1.25
# Signature names of the kept tensors ("<prefix><tensor index>"): the tap's extra outputs, the
# cut files' inputs; no model's own output is named so.
KEPT = "edge_prefix_cut_"


class _Graph:
    """One signature's subgraph of the start model: its ops, cut points and crossing tensors."""

    def __init__(self, model, signature, fc_code: set[int]):
        key, index = signature.SignatureKey().decode(), signature.SubgraphIndex()
        graph = model.Subgraphs(index)
        self.key, self.index = key, index
        self.ops = [graph.Operators(o) for o in range(graph.OperatorsLength())]
        self.signatures: list[tuple] | None = None  # op_signature of each op, made on first use
        self.inputs = [int(t) for t in graph.InputsAsNumpy()]
        outputs = {int(t) for t in graph.OutputsAsNumpy()}
        constant = {t for t in range(graph.TensorsLength()) if _is_constant(model, graph.Tensors(t))}
        shapes = {t: int(np.prod(graph.Tensors(t).ShapeAsNumpy())) for t in range(graph.TensorsLength())}
        length = self.length = max(int(graph.Tensors(t).ShapeAsNumpy()[-1]) for t in self.inputs)
        # crossing[c]: activation tensors made before op c (or fed) and read from op c on.
        produced, crossing = set(self.inputs), {}
        needed_after = [set() for _ in range(len(self.ops) + 1)]
        needed_after[len(self.ops)] = set(outputs)
        for o in range(len(self.ops) - 1, -1, -1):
            needed_after[o] = needed_after[o + 1] | {int(t) for t in self.ops[o].InputsAsNumpy() if t >= 0}
        fcs = [o for o, op in enumerate(self.ops) if op.OpcodeIndex() in fc_code]
        for o, op in enumerate(self.ops):
            if o in fcs:
                crossing[o] = sorted((needed_after[o] & produced) - constant)
            produced.update(int(t) for t in op.OutputsAsNumpy() if t >= 0)
        per_token = {o: sum(shapes[t] for t in ts) / length for o, ts in crossing.items()}
        narrowest = min(per_token.values(), default=0.0)
        narrow = [o for o in fcs if 0 < o and per_token[o] <= NARROW * narrowest]
        width = {o: 4 * sum(shapes[t] for t in crossing[o]) / length for o in narrow}  # float32 bytes per token
        self.points = choose_points(narrow, fcs, width, BYTES_PER_TOKEN)
        self.crossing = {o: crossing[o] for o in self.points}
        self._tensors = [op_tensors(op) for op in self.ops]
        self.outputs = [int(t) for t in graph.OutputsAsNumpy()]
        self.names = tensor_names(signature)

    def later(self, point: int) -> list[int]:
        """The crossing tensors of the cut points after `point` that the suffix from `point`
        computes (those crossing `point` too are fed to it, unchanged)."""
        fed = set(self.crossing[point])
        return sorted({t for p in self.points if p > point for t in self.crossing[p]} - fed)

    def same_wiring(self, sub, signature, point: int) -> bool:
        """Whether the candidate's subgraph `sub` reads and writes, from op `point` on, the tensors
        this one does, with the same outputs and signature names: then its suffix needs exactly
        this point's crossing tensors (its ops before `point` equal ours: _first_change). A
        candidate wired otherwise is scored whole, not fed too little."""
        if sub.OperatorsLength() != len(self.ops) or [int(t) for t in sub.OutputsAsNumpy()] != self.outputs:
            return False
        if tensor_names(signature) != self.names:
            return False
        return all(op_tensors(sub.Operators(o)) == self._tensors[o] for o in range(point, len(self.ops)))

    def same_structure(self, model) -> bool:
        """Whether `model`'s subgraph has this one's operators reading and writing the same
        tensors (so the same cut points and crossings); it becomes the one compared with."""
        sub = model.Subgraphs(self.index)
        ops = [sub.Operators(o) for o in range(sub.OperatorsLength())]
        if [op_tensors(op) for op in ops] != self._tensors:
            return False
        self.ops, self.signatures = ops, None
        return True


def _is_constant(model, tensor) -> bool:
    buffer = tensor.Buffer()
    if buffer <= 0:
        return False
    entry = model.Buffers(buffer)
    return entry.DataLength() > 0 or entry.Offset() > 1


class PrefixCuts:
    """The cut points, the tap and the kept tensors of one ranking or walk (see the module
    docstring). `start`: the search's start model (nothing moved), left unchanged; `work`: where
    the tap model is written. Thread-safe for the ranking's lanes (each lane cuts and scores its
    own probe file). `follow`: for a walk, whose accepted trials become the start (`accept`)."""

    def __init__(self, start: Path, work: Path, follow: bool = False):
        self.start, self.follow = Path(start), follow
        self._rebase(self.start.read_bytes())
        self.graphs: dict[str, _Graph] = {}
        fc_code = {c for c in range(self._model.OperatorCodesLength())
                   if code_name(self._model.OperatorCodes(c)) == FC}
        for s in range(self._model.SignatureDefsLength()):
            signature = self._model.SignatureDefs(s)
            self.graphs[signature.SignatureKey().decode()] = _Graph(self._model, signature, fc_code)
        self._cuts: dict[Path, dict[str, int]] = {}  # cut file -> signature -> cut point
        self._values: dict[tuple[str, bytes], dict[int, np.ndarray]] = {}
        self._lock = threading.Lock()
        self._tap_path = Path(work) / (self.start.stem + ".tap.tflite")
        self._tap = None
        self._tap_signatures: dict[str, tuple] = {}  # one runner per signature, made on first use
        self._tap_current, self._taps = True, 0  # whether the tap is the start model's; taps rewritten
        self._whole: dict[Path, bytes] = {}  # follow: a cut file's bytes before the cut
        self._later: dict[Path, dict[tuple[str, bytes], dict[int, np.ndarray]]] = {}  # follow: its later crossings
        if any(g.points for g in self.graphs.values()):
            _write_tap(self._data, self._tap_path, self.graphs)

    def _rebase(self, data: bytes) -> None:
        """`data` (a whole model's bytes) is the model candidates are compared with."""
        self._data = data
        self._model = schema().Model.GetRootAs(data, 0)
        self._raw: dict[int, RawTensors] = {}  # the start model's tensor keys, per subgraph
        self._digests: dict[int, bytes] = {}  # the start model's buffer hashes
        self._codes = _codes(self._model)

    @property
    def active(self) -> bool:
        """Whether any signature has a cut point (else every candidate is scored whole)."""
        return any(g.points for g in self.graphs.values())

    def close(self) -> None:
        self._tap, self._tap_signatures, self._values, self._whole, self._later = None, {}, {}, {}, {}
        self._tap_path.unlink(missing_ok=True)

    # -- cutting a candidate ------------------------------------------------------------------

    def cut(self, path: Path) -> bool:
        """Rewrite the candidate at `path` in place as its suffix when every signature has a cut
        point before its first changed op; False (file untouched): it is scored whole."""
        path = Path(path)
        self._cuts.pop(path, None)
        self._whole.pop(path, None)
        self._later.pop(path, None)
        if not self.active:
            return False
        with open(path, "r+b") as handle:
            data = bytearray(os.fstat(handle.fileno()).st_size)
            handle.readinto(data)
            model = schema().Model.GetRootAs(data, 0)
            if model.SignatureDefsLength() != len(self.graphs):
                return False
            codes = _codes(model)
            points: dict[str, int] = {}
            digests: dict[int, bytes] = {}
            for s in range(model.SignatureDefsLength()):
                signature = model.SignatureDefs(s)
                graph = self.graphs.get(signature.SignatureKey().decode())
                if graph is None or signature.SubgraphIndex() != graph.index:
                    return False
                first = self._first_change(model, data, graph, digests, codes)
                point = max((p for p in graph.points if p <= first), default=0)
                if point == 0 or not graph.same_wiring(model.Subgraphs(graph.index), signature, point):
                    return False
                points[graph.key] = point
            whole = bytes(data) if self.follow else b""
            tail, patched = Tail(len(data)), Patches(data)
            try:  # into the bytes in memory: the file is written only once every patch is made
                for s in range(model.SignatureDefsLength()):
                    signature = model.SignatureDefs(s)
                    graph = self.graphs[signature.SignatureKey().decode()]
                    point, sub = points[graph.key], model.Subgraphs(graph.index)
                    if self.follow:  # before patch_cut: it reads the signature's own outputs
                        patch_outputs(patched, tail, sub, signature, graph.later(point), KEPT)
                    patch_cut(patched, tail, sub, signature, point, graph.crossing[point], KEPT)
            except (Unprovable, struct.error):  # a field the patch needs is absent: scored whole
                return False
            for position, size in patched.spans:  # a few words in place, the new tables at the end
                handle.seek(position)
                handle.write(data[position:position + size])
            handle.seek(0, 2)
            handle.write(tail.bytes())
        self._cuts[path] = points
        if self.follow:
            self._whole[path], self._later[path] = whole, {}
        return True

    def accept(self, path: Path) -> None:
        """follow: the candidate at `path`, cut and scored or whole, becomes the start model: later
        candidates are compared with it and fed its crossing tensors. Those of a cut candidate
        came out of its own run (cut points after its own); after a whole one, a new tap."""
        path = Path(path)
        later = self._later.pop(path, None)
        whole = self._whole.pop(path, None)
        self._rebase(whole if whole is not None else path.read_bytes())
        if not all(graph.same_structure(self._model) for graph in self.graphs.values()):
            for graph in self.graphs.values():  # other cut points: every later candidate scored whole
                graph.points, graph.crossing = [], {}
            later = None
        if later is None:  # scored whole: every kept tensor may have changed
            self._values = {}
        else:
            # A row the candidate did not run keeps tensors of the old start: computed anew.
            self._values = {row: {**kept, **later[row]} for row, kept in self._values.items() if row in later}
        self._tap_current = False

    def _first_change(self, model, data, graph: _Graph, digests: dict[int, bytes], codes: list) -> int:
        """The index of the first op of `graph` in the candidate (`model` over `data`) that
        differs from the start model's: another op or options, other tensors, or other constant
        bytes. `digests`: the candidate's buffer hashes, shared by its signatures."""
        sub = model.Subgraphs(graph.index)
        if sub.OperatorsLength() != len(graph.ops):
            return 0
        try:
            theirs_keys = RawTensors(model, data, sub, digests)
            ours_keys = self._raw.get(graph.index)
            if ours_keys is None:
                ours_keys = self._raw[graph.index] = RawTensors(
                    self._model, self._data, self._model.Subgraphs(graph.index), self._digests)
            if graph.signatures is None:
                graph.signatures = [op_signature(op, self._codes) for op in graph.ops]
            for o, ours in enumerate(graph.signatures):
                if ours != op_signature(sub.Operators(o), codes) or \
                        any(ours_keys.key(t) != theirs_keys.key(t) for t in ours[1] if t >= 0):
                    return o
        except (Unprovable, struct.error, IndexError):  # not what this reader can vouch for
            return 0
        return len(graph.ops)

    # -- scoring a cut candidate ----------------------------------------------------------------

    def is_cut(self, path: Path) -> bool:
        return Path(path) in self._cuts

    def runner(self, path: Path, threads: int | None) -> Runner:
        """run(feeds) over the cut file at `path` that returns what edge_runtime's TfliteSession
        returns for the whole candidate: [batch, seq] integer feeds, each row padded to the
        smallest bucket that holds it, outputs of the sequence axis cut back to seq."""
        from edge_runtime._bench_config import DEFAULT_SHAPE
        from edge_runtime.backends._tflite_engines import _InterpreterEngine

        threads = threads or DEFAULT_SHAPE.threads
        points = self._cuts[Path(path)]
        later = self._later.get(Path(path))
        engine = _InterpreterEngine(Path(path), threads, True)
        signatures = {key: engine.signature(key) for key in points}
        lengths = {key: self.graphs[key].length for key in points}  # the buckets: the start's input lengths
        buckets = sorted((length, key) for key, length in lengths.items())
        # Outputs along the sequence axis, as TfliteSession tells them: dim 1 follows the bucket.
        details = next(iter(signatures.values()))[1]
        names = [name for name in details if not name.startswith(KEPT)]  # follow: KEPT ones are for accept()
        sequence = {name for name in names
                    if all(len(signatures[k][1][name][0]) >= 2 and signatures[k][1][name][0][1] == lengths[k]
                           for k in points) and (len(points) > 1 or len(details[name][0]) >= 3)}

        def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            arrays = {name: np.asarray(value) for name, value in feeds.items()}
            batch, seq = next(iter(arrays.values())).shape
            length, key = next((b for b in buckets if b[0] >= seq), buckets[-1])
            rows: dict[str, list[np.ndarray]] = {name: [] for name in names}
            runner = signatures[key][2]
            for row in range(batch):
                digest, kept = self._kept(key, length, {name: a[row] for name, a in arrays.items()}, threads)
                values = runner(**{f"{KEPT}{t}": kept[t] for t in self.graphs[key].crossing[points[key]]})
                if later is not None:  # follow: this candidate's own crossings, for accept()
                    later[(key, digest)] = {int(name[len(KEPT):]): np.array(value)
                                            for name, value in values.items() if name.startswith(KEPT)}
                for name in names:
                    rows[name].append(values[name][:, :seq] if name in sequence else values[name])
            return {name: np.concatenate(parts, axis=0) for name, parts in rows.items()}

        return run

    def _kept(self, key: str, length: int, row: dict[str, np.ndarray], threads: int
              ) -> tuple[bytes, dict[int, np.ndarray]]:
        """(the padded row's digest, the crossing tensors of the start model on it): this row
        padded to `length`, from the tap on the row's first sight."""
        with self._lock:
            inputs, _, runner = self._tap_signature(key, threads)
            padded = {name: np.zeros((1, length), dtype) for name, (_, dtype) in inputs.items()}
            for name, value in row.items():
                padded[name][0, : value.shape[0]] = value
            digest = hashlib.sha256(b"".join(padded[n].tobytes() for n in sorted(padded))).digest()
            if (key, digest) not in self._values:
                if not self._tap_current:  # the start moved (accept): a tap of the model it is now
                    self._retap()
                    runner = self._tap_signature(key, threads)[2]
                outputs = runner(**padded)
                self._values[(key, digest)] = {
                    int(name[len(KEPT):]): np.array(value) for name, value in outputs.items() if name.startswith(KEPT)}
            return digest, self._values[(key, digest)]

    def _tap_signature(self, key: str, threads: int) -> tuple:
        if self._tap is None:
            from edge_runtime.backends._tflite_engines import _InterpreterEngine

            self._tap = _InterpreterEngine(self._tap_path, threads, True)
        if key not in self._tap_signatures:
            self._tap_signatures[key] = self._tap.signature(key)
        return self._tap_signatures[key]

    def _retap(self) -> None:
        """A tap of the start model as it is now, in a new file (the old one may still be mapped)."""
        old, self._taps = self._tap_path, self._taps + 1
        self._tap_path = old.with_name(f"{self.start.stem}.{self._taps}.tap.tflite")
        self._tap, self._tap_signatures = None, {}
        _write_tap(self._data, self._tap_path, self.graphs)
        old.unlink(missing_ok=True)
        self._tap_current = True


def _codes(model) -> list[tuple[str, int, bytes | None]]:
    """(builtin name, version, custom op name) of every operator code of `model`, by index (two
    custom ops are both CUSTOM by their builtin name)."""
    return [(code_name(model.OperatorCodes(i)), model.OperatorCodes(i).Version(), model.OperatorCodes(i).CustomCode())
            for i in range(model.OperatorCodesLength())]


def _write_tap(start: bytes, out: Path, graphs: dict[str, _Graph]) -> None:
    """The start model with every kept crossing tensor as an extra output "<KEPT><index>" of its
    signature (read and written once per ranking: the object API's 0.3 s do not matter here)."""
    fb = schema()
    model = read_model(start)
    for signature in model.signatureDefs:
        graph = graphs[signature.signatureKey.decode()]
        kept = sorted({t for ts in graph.crossing.values() for t in ts})
        sub = model.subgraphs[signature.subgraphIndex]
        outputs = [int(t) for t in sub.outputs]
        sub.outputs = np.array(outputs + [t for t in kept if t not in outputs], np.int32)
        for t in kept:
            entry = fb.TensorMapT()
            entry.name, entry.tensorIndex = f"{KEPT}{t}".encode(), t
            signature.outputs.append(entry)
    write_model(model, out)
