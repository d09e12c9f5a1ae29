"""TFLite backend: ai-edge-litert (CompiledModel or Interpreter), or tflite-runtime's Interpreter.

A TFLite artifact from converters/export_tflite.py holds one signature per sequence bucket
(batch 1, int32 inputs, static shapes), e.g. seq32/seq64/seq128/seq256. This session hides
that: it takes [batch, seq] feeds like the ONNX backend, pads each row to the smallest bucket
>= seq (ids 0, attention_mask 0: masked positions do not change the unmasked outputs), runs the
bucket's signature row by row and cuts the outputs back to seq. Buckets, input and output names
are read from the file's signatures, so the manifest needs no extra fields.

XNNPACK weight cache (`weight_cache_dir`): XNNPACK repacks every weight matrix into its kernel
layout when a model is loaded, once per signature. With a cache file the packed weights are
written once and memory-mapped by later loads; the buckets also share one packed copy instead
of one each (docs/notes/tflite-findings.md has the measurements). Only ai-edge-litert's
CompiledModel API exposes it (`CpuOptions.xnnpack_weight_cache_path`, a *file* path: a
directory is rejected by XNNPACK with "Is a directory" and nothing is cached). Where that API
is missing (tflite-runtime, older ai-edge-litert) the Interpreter runs the model as before.

XNNPACK does not check that a cache file belongs to the model: it looks packed weights up by
(tensor id, packing parameters), so a cache built for another model with the same structure is
used silently and gives wrong numbers (measured: NaN). Cache files are therefore named after
the model's sha256, the runtime version and the CPU's feature flags, built under a temporary
name and renamed into place only once XNNPACK has finished writing them.

tflite-runtime 2.14 (the last release) needs numpy<2 and returns wrong numbers, without an error,
for per-channel INT8 models (ai-edge-quantizer leaves the op versions of the float model, so
2.14 does not refuse them); the golden self-check at load catches that.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime._errors import BackendUnavailableError, InputError
from edge_runtime.backends._cache import cpu_tag as _cpu_tag
from edge_runtime._manifest import file_sha256 as _sha256

__all__ = [
    "installed_package",
    "TfliteSession",
    "available",
    "open_session",
    "weight_cache_file",
    "weight_cache_supported",
]

log = logging.getLogger("edge_runtime")

_CACHE_SUFFIX = ".xnnpack"


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


def _compiled_model_api() -> Any | None:
    """ai_edge_litert.compiled_model when it can take an XNNPACK weight cache, else None.

    Checked by feature, not version: the module and the CpuOptions argument are what we use."""
    try:
        from ai_edge_litert import compiled_model

        compiled_model.CpuOptions(xnnpack_weight_cache_path="")
    except (ImportError, AttributeError, TypeError):
        return None
    return compiled_model


def weight_cache_supported() -> bool:
    """True when the installed runtime can write and map an XNNPACK weight cache."""
    return _compiled_model_api() is not None


# -- weight cache files -------------------------------------------------------------------------


def weight_cache_file(cache_dir: Path, model_sha256: str, runtime_version: str) -> Path:
    """The cache file for a model (by content) on this runtime and CPU, inside cache_dir."""
    safe_version = "".join(c if c.isalnum() or c in ".-" else "_" for c in runtime_version)
    name = f"{model_sha256[:32]}-litert{safe_version}-{_cpu_tag()}{_CACHE_SUFFIX}"
    return Path(cache_dir) / name


def _looks_finalized(path: Path) -> bool:
    """XNNPACK writes an all-zero version word first and the real header only after the last
    packed buffer (tflite/delegates/xnnpack/weight_cache.cc, WeightCacheBuilder::Start and
    StopBuildStep), so a non-zero first word means the build step completed."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(8)
    except OSError:
        return False
    return len(head) == 8 and head != b"\0" * 8


def _remove_orphans(final: Path) -> None:
    """Delete temporary builds of `final` left by processes that no longer exist."""
    for tmp in final.parent.glob(f".{final.name}.*.tmp"):
        try:
            pid = int(tmp.name[len(final.name) + 2 :].split(".")[0])
            os.kill(pid, 0)  # raises ProcessLookupError when no such process exists
        except ProcessLookupError:
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass  # read-only or raced with another sweep: it is never trusted anyway
        except (ValueError, OSError):
            continue  # not ours to judge: a foreign name, or another user's live process


def _publish(tmp: Path, final: Path) -> None:
    """Make a finished cache visible under its final name, durably (fsync before and after the
    rename: on an SD card a crash could otherwise leave the new name with unwritten data)."""
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, final)
    try:
        fd = os.open(final.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on directories; the rename itself is atomic
    finally:
        os.close(fd)


# -- engines: how one signature runs ------------------------------------------------------------

# name -> (shape, numpy dtype) for a signature's inputs or outputs
_Details = dict[str, tuple[tuple[int, ...], np.dtype]]


def _details(items: dict[str, dict[str, Any]]) -> _Details:
    """Both APIs describe tensors as {name: {"shape": ..., "dtype": ...}}; the Interpreter's
    dtype is a numpy type, CompiledModel's a string like "int32"."""
    return {
        name: (tuple(int(d) for d in info["shape"]), np.dtype(info["dtype"]))
        for name, info in items.items()
    }


class _InterpreterEngine:
    """tf.lite-style Interpreter (ai-edge-litert or tflite-runtime) with signature runners."""

    def __init__(self, model_path: Path, threads: int, xnnpack: bool):
        interpreter_cls, resolver, self.package, self.version = _interpreter_api()
        try:
            # model_path (not bytes): the flatbuffer is memory-mapped, weights stay off the heap.
            self._interpreter = interpreter_cls(
                model_path=str(model_path),
                num_threads=threads,
                experimental_op_resolver_type=resolver.AUTO
                if xnnpack
                else resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
            )
            # tflite-runtime 2.14 applies its default XNNPACK delegate in allocate_tensors()
            # only: through signature runners alone every op stays on the builtin kernels
            # (measured on MiniLM: 0 delegate nodes, first signature 3.5x slower).
            # ai-edge-litert applies it at the first run otherwise; this moves that to load.
            self._interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise BackendUnavailableError(
                f"{self.package} {self.version} could not load {model_path.name}: {exc}"
            ) from exc

    def signature_keys(self) -> list[str]:
        return list(self._interpreter.get_signature_list())

    def signature(self, key: str) -> tuple[_Details, _Details, Callable[..., dict]]:
        runner = self._interpreter.get_signature_runner(key)
        return _details(runner.get_input_details()), _details(runner.get_output_details()), runner


class _CompiledRunner:
    """Runs one signature of a CompiledModel with buffers made once and reused."""

    def __init__(self, model: Any, key: str, inputs: _Details, outputs: _Details):
        self._model = model
        self._key = key
        self._inputs = {name: model.create_input_buffer_by_name(key, name) for name in inputs}
        self._outputs = {name: model.create_output_buffer_by_name(key, name) for name in outputs}
        self._output_details = outputs

    def __call__(self, **feeds: np.ndarray) -> dict[str, np.ndarray]:
        for name, buffer in self._inputs.items():
            buffer.write(feeds[name])
        self._model.run_by_name(self._key, self._inputs, self._outputs)
        return {
            name: self._outputs[name].read(int(np.prod(shape)), dtype).reshape(shape)
            for name, (shape, dtype) in self._output_details.items()
        }


class _CompiledEngine:
    """ai-edge-litert CompiledModel on the CPU (XNNPACK) with a weight cache file."""

    def __init__(self, api: Any, model_path: Path, threads: int, cache_path: Path):
        import ai_edge_litert

        self.package, self.version = "ai-edge-litert", ai_edge_litert.__version__
        # Vendor plugins are looked up in the directories given here; by default ai-edge-litert
        # scans its own vendors/ tree (and warns about every NPU SDK that is not installed).
        # The cache directory holds no plugins: CPU only, the kernels the golden sample is
        # checked against.
        no_plugins = str(cache_path.parent)
        self._environment = api.Environment.create(
            options=api.EnvironmentOptions(
                runtime_path=os.path.dirname(os.path.abspath(ai_edge_litert.__file__)),
                compiler_plugin_path=no_plugins,
                dispatch_library_path=no_plugins,
            )
        )
        options = api.Options(
            hardware_accelerators=api.HardwareAccelerator.CPU,
            cpu_options=api.CpuOptions(
                num_threads=threads, xnnpack_weight_cache_path=str(cache_path)
            ),
        )
        # XNNPACK packs (or maps) the weights of every signature here, not at the first run.
        self._model = api.CompiledModel.from_file(
            str(model_path), environment=self._environment, options=options
        )

    def signature_keys(self) -> list[str]:
        return list(self._model.get_signature_list())

    def signature(self, key: str) -> tuple[_Details, _Details, Callable[..., dict]]:
        inputs = _details(self._model.get_input_tensor_details(key))
        outputs = _details(self._model.get_output_tensor_details(key))
        return inputs, outputs, _CompiledRunner(self._model, key, inputs, outputs)


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
            from edge_runtime._model import physical_cores

            threads = physical_cores()
        self.threads = threads
        self.providers = ["XNNPACK"] if xnnpack else ["builtin"]
        model_path = Path(model_path)
        # off: not asked for; unsupported: runtime lacks it; created / reused: cache file in
        # use; failed: asked for and supported but could not be used (logged).
        self.weight_cache_state = "off"
        self.weight_cache: Path | None = None
        engine = None
        if weight_cache_dir is not None and xnnpack:
            engine = self._open_with_cache(
                model_path, threads, Path(weight_cache_dir), model_sha256
            )
        if engine is None:
            engine = _InterpreterEngine(model_path, threads, xnnpack)
        self._engine = engine
        self.backend_name = engine.package
        self.backend_version = engine.version
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

    def _open_with_cache(
        self, model_path: Path, threads: int, cache_dir: Path, model_sha256: str | None
    ) -> _CompiledEngine | None:
        """A CompiledModel that maps (or first builds) the weight cache; None to fall back."""
        api = _compiled_model_api()
        if api is None:
            self.weight_cache_state = "unsupported"
            return None
        import ai_edge_litert

        try:
            cache_dir.mkdir(parents=True, exist_ok=True)
            sha256 = model_sha256 or _sha256(model_path)
            # XNNPACK aborts the whole process (SIGABRT, weight_cache.cc "Inserting data in the
            # cache failed") when a write fails, e.g. on a full disk: build only with room to
            # spare. Packed weights measured 0.4x (INT8) to 1.6x (weight-only INT8, unpacked to
            # FP32) the file; 4x covers both.
            needed = 4 * model_path.stat().st_size + (64 << 20)
            free = shutil.disk_usage(cache_dir).free
        except OSError as exc:
            self.weight_cache_state = "failed"
            log.warning("XNNPACK weight cache unusable (%s); loading without it", exc)
            return None
        final = weight_cache_file(cache_dir, sha256, ai_edge_litert.__version__)
        _remove_orphans(final)
        if _looks_finalized(final):
            try:
                engine = _CompiledEngine(api, model_path, threads, final)
            except (RuntimeError, ValueError) as exc:
                # Whether the cache or the model is at fault, a fresh cache costs one rebuild.
                final.unlink(missing_ok=True)
                self.weight_cache_state = "failed"
                log.warning("could not load %s with its weight cache (%s)", model_path.name, exc)
                return None
            self.weight_cache, self.weight_cache_state = final, "reused"
            return engine
        if free < needed:
            self.weight_cache_state = "failed"
            log.warning(
                "not building an XNNPACK weight cache for %s: %d MB free in %s, want %d MB",
                model_path.name,
                free >> 20,
                cache_dir,
                needed >> 20,
            )
            return None
        # Build under a name no other process uses; XNNPACK truncates and rewrites the file it
        # is given, so building in place could clobber a file another process has mapped.
        tmp = final.with_name(f".{final.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            engine = _CompiledEngine(api, model_path, threads, tmp)
            if not _looks_finalized(tmp):
                raise RuntimeError(f"XNNPACK did not write a complete cache to {tmp}")
            _publish(tmp, final)
        except (RuntimeError, ValueError, OSError) as exc:
            self.weight_cache_state = "failed"
            log.warning(
                "could not build the XNNPACK weight cache for %s (%s); loading without it",
                model_path.name,
                exc,
            )
            return None
        finally:
            # Gone after a successful rename; otherwise (error, KeyboardInterrupt) never
            # left behind. A SIGKILL can still leave it: _remove_orphans sweeps it later.
            tmp.unlink(missing_ok=True)
        # The engine keeps the renamed file mapped (same inode): it runs from the cache it made.
        self.weight_cache, self.weight_cache_state = final, "created"
        return engine

    def discard_weight_cache(self) -> None:
        """Delete this session's cache file (e.g. after it failed the golden check), so the next
        load builds a fresh one. This session keeps working from its mapping."""
        if self.weight_cache is not None:
            self.weight_cache.unlink(missing_ok=True)

    @property
    def buckets(self) -> list[int]:
        return [b.length for b in self._buckets]

    def _read_signatures(self, model_path: Path) -> list[_Bucket]:
        keys = self._engine.signature_keys()
        if not keys:
            raise BackendUnavailableError(
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


def open_session(model_path: Path, **options: Any) -> TfliteSession:
    if not available():
        raise BackendUnavailableError("neither ai-edge-litert nor tflite-runtime is installed")
    return TfliteSession(model_path, **options)
