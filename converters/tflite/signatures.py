"""Running a bucketed .tflite on calibration rows, one row at a time.

export.py writes one signature per sequence bucket (static shapes). Measuring a model on real
text therefore means: strip each calibration row of its padding, run it on the smallest bucket
that holds it, and cut the outputs back to its real tokens. The Hessian tap (hessians.py) and
the judge (judge.py) both feed models this way, so they see the same tokens the device will.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from converters._errors import ConversionError
from converters.core.validate import row_cosine
from converters.tflite.flatbuffer import schema
from edge_runtime._bench_config import DEFAULT_SHAPE

__all__ = ["Signatures", "calibration_rows", "signature_lengths", "synthetic_cosines"]


def calibration_rows(
    calibration: list[dict[str, np.ndarray]], longest: int
) -> list[dict[str, np.ndarray]]:
    """One [1, n] int32 feed per calibration row, padding removed (right padding, as the
    tokenizers pad), cut to `longest` tokens like edge_quantizer.calibration_feeds cuts them."""
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


def signature_lengths(path: Path) -> list[int]:
    """The sequence length of every signature (bucket) of the model at `path`."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    lengths = []
    for key in interpreter.get_signature_list():
        details = interpreter.get_signature_runner(key).get_input_details()
        lengths.append(int(next(iter(details.values()))["shape"][1]))
    return lengths


class Signatures:
    """A .tflite's signatures by bucket length: each row runs on the smallest that fits it."""

    def __init__(self, path: Path, preserve: bool = False, threads: int = DEFAULT_SHAPE.threads):
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        kwargs: dict[str, Any] = {"model_path": str(path), "num_threads": threads}
        if preserve:
            # Intermediate tensors are only readable on the builtin kernels (XNNPACK fuses them).
            kwargs.update(
                experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
                experimental_preserve_all_tensors=True,
            )
        self.interpreter = Interpreter(**kwargs)
        model = schema().Model.GetRootAs(Path(path).read_bytes(), 0)
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
                f"a calibration row has {n} tokens; "
                f"the longest signature takes {self._buckets[-1][0]}"
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


def _synthetic_feed(inputs: list[str], details: dict[str, dict], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A fixed input for one signature: [1, L] integer inputs get a text-like half (ids 5-99,
    mask 1, token types 0) and padding after it; any other input a standard normal sample."""
    feed = {}
    for name in inputs:
        shape, dtype = tuple(details[name]["shape"]), details[name]["dtype"]
        if np.issubdtype(dtype, np.integer) and len(shape) == 2:
            used = max(1, shape[1] // 2)
            value = np.zeros(shape, dtype)
            if name == "attention_mask":
                value[:, :used] = 1
            elif name == "input_ids":
                value[:, :used] = rng.integers(5, 100, (shape[0], used))
            feed[name] = value
        elif np.issubdtype(dtype, np.integer):
            feed[name] = np.zeros(shape, dtype)
        else:
            feed[name] = rng.normal(size=shape).astype(dtype)
    return feed


def synthetic_cosines(float_path: Path, other_path: Path, *, shortest_only: bool = False) -> dict[str, float]:
    """{signature: cosine of all its outputs, `other_path` against `float_path`} on one fixed
    synthetic input per signature (one thread, so it is repeatable).

    Not an accuracy metric (the pipeline validates on real text): a cheap postcondition of a
    rewrite, which catches NaN, zeros or a signature wired to the wrong subgraph.
    `shortest_only`: the signature with the fewest tokens alone, for a rewrite that changes
    every signature alike (preparing each costs XNNPACK's weight packing, ~0.1 s for MiniLM)."""
    from ai_edge_litert.interpreter import Interpreter

    want_it = Interpreter(model_path=str(float_path), num_threads=1)
    got_it = Interpreter(model_path=str(other_path), num_threads=1)
    signatures = want_it.get_signature_list()
    details = {key: want_it.get_signature_runner(key).get_input_details() for key in signatures}

    def tokens(key: str) -> int:  # the sequence length of a [1, L] signature, else 0
        shape = details[key][signatures[key]["inputs"][0]]["shape"]
        return int(shape[1]) if len(shape) > 1 else 0

    keys = [min(signatures, key=tokens)] if shortest_only else list(signatures)
    rng = np.random.default_rng(0)
    cosines = {}
    for key in keys:
        feed = _synthetic_feed(signatures[key]["inputs"], details[key], rng)
        want = want_it.get_signature_runner(key)(**feed)
        got = got_it.get_signature_runner(key)(**feed)
        a = np.concatenate([v.ravel() for v in want.values()])
        b = np.concatenate([got[k].ravel() for k in want])
        cosines[key] = float(row_cosine(a, b))
    return cosines
