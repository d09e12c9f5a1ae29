"""TFLite backend: ai-edge-litert (CompiledModel or Interpreter), or tflite-runtime's Interpreter.

A TFLite artifact from converters/export_tflite.py holds one signature per sequence bucket
(batch 1, int32 inputs, static shapes), e.g. seq32/seq64/seq128/seq256. This session hides
that: it takes [batch, seq] feeds like the ONNX backend, pads each row to the smallest bucket
>= seq (ids 0, attention_mask 0: masked positions do not change the unmasked outputs), runs the
bucket's signature row by row and cuts the outputs back to seq. Buckets, input and output names
are read from the file's signatures, so the manifest needs no extra fields.

XNNPACK weight cache (`weight_cache_dir`): packed weights written once and memory-mapped by
later loads, through ai-edge-litert's CompiledModel, built first in a child process because
that API can kill the process on some CPUs (ARMv8.0, issue 8). Where that API is missing or
crashed, the Interpreter runs the model without a cache. The details and the measurements are
in edge_runtime.backends._tflite_cache.

tflite-runtime 2.14 (the last release) needs numpy<2 and returns wrong numbers, without an error,
for per-channel INT8 models (ai-edge-quantizer leaves the op versions of the float model, so
2.14 does not refuse them); the golden self-check at load catches that.

This module is the session: bucketing, feeds and outputs, lifetime. The pieces beside it:
- edge_runtime.backends._tflite_engines: the Interpreter and CompiledModel APIs, one interface
- edge_runtime.backends._tflite_cache: weight cache files and the child process that builds them
- edge_runtime.backends._tflite_crash: what that child's death says, the per-CPU crash marker
- edge_runtime.backends._tflite_log: the runtime's native stderr lines to the logger
  "edge_runtime.litert" (by default only its errors are shown)
LiteRT also makes one process-wide Environment at the first CompiledModel tensor write (so the
first session with a weight cache runs its shortest bucket once at load, inside the log
capture) and tears it down after Python has finalized, when fd 2 is silenced
(_tflite_log.silence_after_finalization; where that hook is missing, _at_exit below does it).
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime._errors import BackendUnavailableError, InputError, ModelLoadError
from edge_runtime.backends import _tflite_cache
from edge_runtime.backends._tflite_cache import open_with_cache, weight_cache_file
from edge_runtime.backends._tflite_crash import crash_marker
from edge_runtime.backends._tflite_engines import (
    _compiled_model_api,
    _CompiledEngine,
    _InterpreterEngine,
)
from edge_runtime.backends._tflite_log import (
    _native_log_to_logger,
    _silence_native_teardown,
    silence_after_finalization,
)

__all__ = [
    "TfliteSession",
    "available",
    "crash_marker",
    "installed_package",
    "open_session",
    "weight_cache_file",
    "weight_cache_supported",
]


def available() -> bool:
    return any(
        importlib.util.find_spec(name) is not None for name in ("ai_edge_litert", "tflite_runtime")
    )


def installed_package() -> str | None:
    """The package this backend runs with here (ai-edge-litert preferred), without importing it."""
    if importlib.util.find_spec("ai_edge_litert") is not None:
        return "ai-edge-litert"
    if importlib.util.find_spec("tflite_runtime") is not None:
        return "tflite-runtime"
    return None


def weight_cache_supported() -> bool:
    """True when the installed runtime can write and map an XNNPACK weight cache."""
    return _compiled_model_api() is not None


# -- the session --------------------------------------------------------------------------------


class _Bucket:
    def __init__(
        self,
        key: str,
        length: int,
        runner: Callable[..., dict],
        input_dtypes: dict[str, np.dtype],
        output_shapes: dict[str, tuple[int, ...]],
    ):
        self.key = key
        self.length = length
        self.runner = runner
        self.input_dtypes = input_dtypes
        self.output_shapes = output_shapes


class TfliteSession:
    backend_name = "litert"

    def __init__(
        self,
        model_path: Path,
        threads: int = 0,
        xnnpack: bool = True,
        weight_cache_dir: Path | None = None,
        model_sha256: str | None = None,
    ):
        """threads: interpreter threads (0 = physical cores). xnnpack=False runs the builtin
        reference kernels only (slow; for telling a delegate bug from a model bug).

        weight_cache_dir: where to keep XNNPACK weight cache files (created if missing); None
        for no cache. Used when the runtime supports it and xnnpack is on; otherwise ignored
        (`weight_cache_state` says which). model_sha256: the model file's sha256 if already
        known (edge_runtime.load has verified it against the manifest); else it is computed.
        """
        if threads < 0:
            raise InputError(f"threads must be >= 0, got {threads}")
        if threads == 0:
            from edge_runtime._select import physical_cores

            threads = physical_cores()
        self.threads = threads
        self.providers = ["XNNPACK"] if xnnpack else ["builtin"]
        model_path = Path(model_path)
        # off: not asked for; unsupported: the runtime lacks it, or its CompiledModel crashed
        # on this CPU (weight_cache_note says which); created / reused: cache file in use;
        # failed: asked for and supported but could not be used (logged).
        self.weight_cache_state = "off"
        self.weight_cache_note: str | None = None
        self.weight_cache: Path | None = None
        self._engine: _InterpreterEngine | _CompiledEngine | None = None
        self._buckets: list[_Bucket] = []
        with _native_log_to_logger():
            engine = None
            if weight_cache_dir is not None and xnnpack:
                opened = open_with_cache(model_path, threads, Path(weight_cache_dir), model_sha256)
                engine = opened.engine
                self.weight_cache_state = opened.weight_cache_state
                self.weight_cache_note = opened.weight_cache_note
                self.weight_cache = opened.weight_cache
            if engine is None:
                engine = _InterpreterEngine(model_path, threads, xnnpack)
            self._engine = engine
            self.backend_name = engine.package
            self.backend_version = engine.version
            self._buckets = self._read_signatures(model_path)
            if not isinstance(engine, _InterpreterEngine):  # a CompiledModel
                _start_process_environment(self._buckets[0])
        _live_sessions.add(self)
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

    def close(self) -> None:
        """Release the runtime's objects now; their teardown lines go to the logger too. The
        session cannot run afterwards. Called when the session is collected and at exit."""
        engine, buckets = self._engine, self._buckets
        self._engine, self._buckets = None, []
        if engine is None:
            return
        with _native_log_to_logger():
            del engine, buckets  # the last references: the runtime tears down here

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # at interpreter shutdown modules may be gone
            self.close()

    def discard_weight_cache(self) -> None:
        """Delete this session's cache file (e.g. after it failed the golden check), so the next
        load builds a fresh one. This session keeps working from its mapping."""
        if self.weight_cache is not None:
            _tflite_cache._discard(self.weight_cache)  # the file and its sha256 record

    @property
    def buckets(self) -> list[int]:
        return [b.length for b in self._buckets]

    def _read_signatures(self, model_path: Path) -> list[_Bucket]:
        keys = self._engine.signature_keys()
        if not keys:
            raise ModelLoadError(
                f"{model_path.name} has no signatures; edge_runtime runs TFLite files from "
                "edge-convert (one signature per sequence bucket)"
            )
        buckets, problems = [], []
        for key in keys:
            inputs, outputs, runner = self._engine.signature(key)
            shapes = {name: shape for name, (shape, _) in inputs.items()}
            lengths = {s[1] for s in shapes.values() if len(s) == 2 and s[0] == 1}
            if len(lengths) != 1 or any(len(s) != 2 or s[0] != 1 for s in shapes.values()):
                problems.append(f"{key}: inputs {shapes} (expected [1, L] for all)")
                continue
            buckets.append(
                _Bucket(
                    key,
                    lengths.pop(),
                    runner,
                    {name: dtype for name, (_, dtype) in inputs.items()},
                    {name: shape for name, (shape, _) in outputs.items()},
                )
            )
        if buckets and not problems:
            names = {
                (tuple(sorted(b.input_dtypes)), tuple(sorted(b.output_shapes))) for b in buckets
            }
            if len(names) != 1:
                problems.append(f"signatures disagree on input/output names: {sorted(names)}")
        if problems or not buckets:
            raise ModelLoadError(
                f"{model_path.name} is not a bucketed edge-convert model: " + "; ".join(problems)
            )
        buckets.sort(key=lambda b: b.length)
        if len({b.length for b in buckets}) != len(buckets):
            raise ModelLoadError(
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
            f"{self._buckets[-1].length} tokens (embed() and classify() do: edge-convert exports buckets up "
            "to the tokenizer's max_length, which sentence_bert_config.json's max_seq_length sets), or run "
            "an ONNX artifact, which takes up to the model's positions"
        )

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._engine is None:
            raise InputError("this TFLite session was closed; load the artifact again")
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
                # positions beyond seq stay zero from np.zeros: never written
                padded[name][0, :seq] = array[row]
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


# Sessions still open at exit are closed before the interpreter tears modules down, so the
# runtime's teardown lines reach the logger rather than stderr.
_live_sessions: weakref.WeakSet[TfliteSession] = weakref.WeakSet()
# LiteRT makes one more Environment, process-wide, at the first tensor write of any
# CompiledModel and destroys it in a C++ static destructor, after Python has finalized (measured
# with ai-edge-litert 2.3: two "DestroyAccelerator" INFO lines at every exit).
_process_environment = False
_silenced_after_finalization = False  # else fd 2 is silenced from Python's exit (_at_exit)


def _start_process_environment(bucket: _Bucket) -> None:
    """Run the shortest bucket once (zeros) while the caller captures fd 2, so the process-wide
    environment is made, and logged, at load rather than at the first inference; then arrange
    for its teardown lines to go nowhere (registered after the runtime's destructor: run before)."""
    global _process_environment, _silenced_after_finalization
    if _process_environment:
        return
    _process_environment = True
    bucket.runner(
        **{name: np.zeros((1, bucket.length), dtype) for name, dtype in bucket.input_dtypes.items()}
    )
    _silenced_after_finalization = silence_after_finalization()


@atexit.register
def _at_exit() -> None:
    for session in list(_live_sessions):
        with contextlib.suppress(Exception):
            session.close()
    if _process_environment and not _silenced_after_finalization:
        # fd 2 to /dev/null from here: also for the exit handlers registered before this
        # module was imported (they run after this one), a loss the C exit hook avoids.
        _silence_native_teardown()


def open_session(model_path: Path, **options: Any) -> TfliteSession:
    if not available():
        raise BackendUnavailableError("neither ai-edge-litert nor tflite-runtime is installed")
    return TfliteSession(model_path, **options)
