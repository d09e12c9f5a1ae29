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
from converters.tflite.flatbuffer import schema
from edge_runtime._bench_config import DEFAULT_SHAPE

__all__ = ["Signatures", "calibration_rows", "signature_lengths"]


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
