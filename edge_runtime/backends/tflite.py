"""TFLite backend: ai-edge-litert's Interpreter, or tflite-runtime's where only that is installed.

A TFLite artifact from converters/export_tflite.py holds one signature per sequence bucket
(batch 1, int32 inputs, static shapes), e.g. seq32/seq64/seq128/seq256. This session hides
that: it takes [batch, seq] feeds like the ONNX backend, pads each row to the smallest bucket
>= seq (ids 0, attention_mask 0: masked positions do not change the unmasked outputs), runs the
bucket's signature row by row and cuts the outputs back to seq. Buckets, input and output names
are read from the file's signatures, so the manifest needs no extra fields.

tflite-runtime 2.14 (the last release) needs numpy<2 and returns wrong numbers for some
per-channel INT8 models; the golden self-check at load is what catches that.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime._errors import BackendUnavailableError, InputError

__all__ = ["TfliteSession", "available", "open_session"]


def available() -> bool:
    return any(
        importlib.util.find_spec(name) is not None for name in ("ai_edge_litert", "tflite_runtime")
    )


def _interpreter_api() -> tuple[Any, Any, str, str]:
    """(Interpreter, OpResolverType, package name, version), preferring ai-edge-litert."""
    try:
        import ai_edge_litert
        from ai_edge_litert import interpreter
    except ImportError:
        try:
            import tflite_runtime
            from tflite_runtime import interpreter
        except ImportError:
            raise BackendUnavailableError(
                "neither ai-edge-litert nor tflite-runtime is installed "
                "(pip install ai-edge-litert)"
            ) from None
        return (
            interpreter.Interpreter,
            interpreter.OpResolverType,
            "tflite-runtime",
            tflite_runtime.__version__,
        )
    return (
        interpreter.Interpreter,
        interpreter.OpResolverType,
        "ai-edge-litert",
        ai_edge_litert.__version__,
    )


class _Bucket:
    def __init__(
        self,
        key: str,
        length: int,
        runner: Any,
        input_dtypes: dict[str, Any],
        output_shapes: dict[str, tuple[int, ...]],
    ):
        self.key = key
        self.length = length
        self.runner = runner
        self.input_dtypes = input_dtypes
        self.output_shapes = output_shapes


class TfliteSession:
    backend_name = "litert"

    def __init__(self, model_path: Path, threads: int = 0, xnnpack: bool = True):
        """threads: interpreter threads (0 = physical cores). xnnpack=False runs the builtin
        reference kernels only (slow; for telling a delegate bug from a model bug)."""
        interpreter_cls, resolver, package, version = _interpreter_api()
        self.backend_name = package
        self.backend_version = version
        if threads < 0:
            raise InputError(f"threads must be >= 0, got {threads}")
        if threads == 0:
            from edge_runtime._model import physical_cores

            threads = physical_cores()
        self.threads = threads
        self.providers = ["XNNPACK"] if xnnpack else ["builtin"]
        model_path = Path(model_path)
        try:
            # model_path (not bytes): the flatbuffer is memory-mapped, weights stay off the heap.
            self._interpreter = interpreter_cls(
                model_path=str(model_path),
                num_threads=threads,
                experimental_op_resolver_type=resolver.AUTO
                if xnnpack
                else resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
            )
        except (ValueError, RuntimeError) as exc:
            raise BackendUnavailableError(
                f"{package} {version} could not load {model_path.name}: {exc}"
            ) from exc
        self._buckets = self._read_signatures(model_path)
        first = self._buckets[0]
        self.input_names = sorted(first.input_dtypes)
        self.output_names = sorted(first.output_shapes)
        # An output carries the sequence axis when its dim 1 follows the bucket length
        # (last_hidden_state, token logits); pooled or sequence logits do not.
        self._sequence_outputs = {
            name
            for name in self.output_names
            if all(
                len(b.output_shapes[name]) >= 2 and b.output_shapes[name][1] == b.length
                for b in self._buckets
            )
            and (len(self._buckets) > 1 or len(first.output_shapes[name]) >= 3)
        }

    @property
    def buckets(self) -> list[int]:
        return [b.length for b in self._buckets]

    def _read_signatures(self, model_path: Path) -> list[_Bucket]:
        signatures = self._interpreter.get_signature_list()
        if not signatures:
            raise BackendUnavailableError(
                f"{model_path.name} has no signatures; edge_runtime runs TFLite files from "
                "edge-convert (one signature per sequence bucket)"
            )
        buckets, problems = [], []
        for key in signatures:
            runner = self._interpreter.get_signature_runner(key)
            inputs = runner.get_input_details()
            outputs = runner.get_output_details()
            shapes = {
                name: tuple(int(d) for d in detail["shape"]) for name, detail in inputs.items()
            }
            lengths = {s[1] for s in shapes.values() if len(s) == 2 and s[0] == 1}
            if len(lengths) != 1 or any(len(s) != 2 or s[0] != 1 for s in shapes.values()):
                problems.append(f"{key}: inputs {shapes} (expected [1, L] for all)")
                continue
            buckets.append(
                _Bucket(
                    key,
                    lengths.pop(),
                    runner,
                    {name: detail["dtype"] for name, detail in inputs.items()},
                    {
                        name: tuple(int(d) for d in detail["shape"])
                        for name, detail in outputs.items()
                    },
                )
            )
        if buckets and not problems:
            names = {
                (tuple(sorted(b.input_dtypes)), tuple(sorted(b.output_shapes))) for b in buckets
            }
            if len(names) != 1:
                problems.append(f"signatures disagree on input/output names: {sorted(names)}")
        if problems or not buckets:
            raise BackendUnavailableError(
                f"{model_path.name} is not a bucketed edge-convert model: " + "; ".join(problems)
            )
        buckets.sort(key=lambda b: b.length)
        if len({b.length for b in buckets}) != len(buckets):
            raise BackendUnavailableError(
                f"{model_path.name}: two signatures share a sequence length: "
                f"{[b.key for b in buckets]}"
            )
        return buckets

    def _bucket_for(self, seq: int) -> _Bucket:
        for bucket in self._buckets:
            if bucket.length >= seq:
                return bucket
        raise InputError(
            f"sequence length {seq} exceeds the longest this TFLite artifact takes "
            f"({self._buckets[-1].length}; buckets {self.buckets}): truncate inputs to "
            f"{self._buckets[-1].length} tokens or convert with a larger bucket"
        )

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = sorted(set(self.input_names) - set(feeds))
        extra = sorted(set(feeds) - set(self.input_names))
        if missing or extra:
            raise InputError(
                f"inputs do not match the model: missing {missing}, unexpected {extra}; "
                f"it takes {self.input_names}"
            )
        arrays = {name: np.asarray(value) for name, value in feeds.items()}
        shapes = {name: a.shape for name, a in arrays.items()}
        if any(a.ndim != 2 for a in arrays.values()) or len(set(shapes.values())) != 1:
            raise InputError(f"inputs must all have the same [batch, seq] shape; got {shapes}")
        if any(not np.issubdtype(a.dtype, np.integer) for a in arrays.values()):
            raise InputError(
                f"inputs must be integer arrays; got "
                f"{ {n: str(a.dtype) for n, a in arrays.items()} }"
            )
        batch, seq = next(iter(shapes.values()))
        bucket = self._bucket_for(seq)
        rows: dict[str, list[np.ndarray]] = {name: [] for name in self.output_names}
        padded = {
            name: np.zeros((1, bucket.length), bucket.input_dtypes[name])
            for name in self.input_names
        }
        for row in range(batch):
            for name, array in arrays.items():
                padded[name][0, :seq] = array[
                    row
                ]  # zeros beyond seq from np.zeros, never rewritten
            outputs = bucket.runner(**padded)
            for name in self.output_names:
                value = outputs[name]
                rows[name].append(value[:, :seq] if name in self._sequence_outputs else value)
        result = {}
        for name in self.output_names:
            if rows[name]:
                result[name] = np.concatenate(rows[name], axis=0)
            else:  # batch 0: the right trailing shape, no rows
                shape = list(bucket.output_shapes[name])
                if name in self._sequence_outputs:
                    shape[1] = seq
                result[name] = np.zeros((0, *shape[1:]), np.float32)
        return result


def open_session(model_path: Path, **options: Any) -> TfliteSession:
    if not available():
        raise BackendUnavailableError("neither ai-edge-litert nor tflite-runtime is installed")
    return TfliteSession(model_path, **options)
