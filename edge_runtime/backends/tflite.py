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

Crash isolation (issue 8): every LiteRT Environment -- ours and the ones CompiledModel creates
internally, whatever `runtime_path` says -- dlopens libLiteRtWebGpuAccelerator.so, which
ai-edge-litert 2.3's aarch64 wheel builds for ARMv8.1 atomics (LSE). On an ARMv8.0 core
(Cortex-A72: Raspberry Pi 4) its initializer stops the process with "This binary was compiled
with lse enabled, but this feature is not available on this processor" and SIGILL: measured under
qemu-aarch64 -cpu cortex-a72 (tools/arm64-check); cortex-a76 (Pi 5, with LSE) runs it. A crash
cannot be caught in-process, so the CompiledModel path is first taken in a child process: it
builds the weight cache (and runs the smallest signature once) there, and this process maps the
finished file. A child killed by a signal leaves a marker named after the runtime version and
the CPU (`compiled-model-litert<version>-<cpu>.crashed`, next to the caches, with the signal and
the runtime's last words); from then on this CPU runs TFLite artifacts with the Interpreter (no
weight cache), without trying again, whatever build of the runtime is installed. Delete the marker
to retry, e.g. after upgrading ai-edge-litert (a new version is tried anyway: it is in the name).
The Interpreter path never loads the GPU accelerators and runs on ARMv8.0.

Runtime log lines: LiteRT and TFLite print INFO lines on stderr from native code (accelerator
registration, "Created TensorFlow Lite XNNPACK delegate for CPU", ...), which no Python API or
setting turns off. While a session is created and closed, file descriptor 2 is pointed at a
temporary file and the lines are passed to the Python logger "edge_runtime.litert": INFO and
VERBOSE as DEBUG, WARNING as INFO, ERROR and FATAL as WARNING (so by default, with no logging
configured, only errors are shown). To see all of them:
`logging.getLogger("edge_runtime.litert").setLevel(logging.DEBUG)` with a handler, or
`logging.basicConfig(level=logging.DEBUG)`. Anything else written to stderr meanwhile (not in the
runtime's "LEVEL: " format) is written back to stderr unchanged. LiteRT also makes one
process-wide Environment at the first CompiledModel tensor write (so the first session with a
weight cache runs its shortest bucket once at load, inside the capture) and tears it down in a
C++ static destructor after Python has finalized: at exit, once that happened, fd 2 goes to
/dev/null while Python's own stderr moves to a copy of the real one (_silence_native_teardown).
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import uuid
import weakref
from collections.abc import Callable, Iterator
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
# The runtime's own (native) log lines, see the module docstring.
native_log = logging.getLogger("edge_runtime.litert")

_CACHE_SUFFIX = ".xnnpack"
_CRASH_SUFFIX = ".crashed"


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


# -- the runtime's native log lines -------------------------------------------------------------

# TFLite's minimal logger and LiteRT's logger write "<SEVERITY>: <message>" ("INFO: Created
# TensorFlow Lite XNNPACK delegate for CPU.", "WARNING: [npu_registry.cc:34] ...", "FATAL ERROR:
# This binary was compiled with lse enabled ..."). Python's own logging formats put no space
# before the colon ("WARNING:edge_runtime:..."), so they are not taken for the runtime's.
_NATIVE_LINE = re.compile(r"^(VERBOSE|INFO|WARNING|ERROR|FATAL)( [A-Z]+)?: ")
_NATIVE_LEVELS = {
    "VERBOSE": logging.DEBUG,
    "INFO": logging.DEBUG,
    "WARNING": logging.INFO,
    "ERROR": logging.WARNING,
    "FATAL": logging.WARNING,
}
# fd 2 is process-wide: one capture at a time (a nested one, same thread, joins the outer).
_capture_lock = threading.RLock()
_capture_depth = 0


def _forward_native(
    text: str, passthrough: Callable[[str], Any], level: int | None = None
) -> list[str]:
    """Log the runtime's lines of `text` to native_log (at their own level, or `level`); hand
    every other non-blank line to passthrough. Returns the runtime's lines."""
    native = []
    for line in text.splitlines():
        match = _NATIVE_LINE.match(line)
        if match:
            native_log.log(level or _NATIVE_LEVELS[match.group(1)], "%s", line)
            native.append(line)
        elif line.strip():
            passthrough(line + "\n")
    return native


def _write_stderr(text: str) -> None:
    try:
        os.write(2, text.encode("utf-8", "replace"))
    except OSError:
        pass  # stderr closed: nowhere to write it anyway


@contextlib.contextmanager
def _native_log_to_logger() -> Iterator[list[str]]:
    """Point fd 2 at a temporary file while the runtime's native code runs, then forward what it
    wrote (see the module docstring). Yields a list that holds the runtime's lines afterwards."""
    global _capture_depth
    lines: list[str] = []
    with _capture_lock:
        if _capture_depth:
            yield lines
            return
        try:
            sink = tempfile.TemporaryFile()
        except OSError:  # no writable temporary directory: leave stderr alone
            yield lines
            return
        with sink:
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(AttributeError, OSError, ValueError):
                    stream.flush()
            try:
                saved = os.dup(2)
            except OSError:  # fd 2 is closed: nothing to silence
                yield lines
                return
            os.dup2(sink.fileno(), 2)
            _capture_depth += 1
            try:
                yield lines
            finally:
                _capture_depth -= 1
                with contextlib.suppress(AttributeError, OSError, ValueError):
                    sys.stderr.flush()  # Python-level writes made meanwhile belong to the sink
                os.dup2(saved, 2)
                os.close(saved)
                sink.seek(0)
                text = sink.read().decode("utf-8", "replace")
                lines.extend(_forward_native(text, _write_stderr))


# -- crash isolation ----------------------------------------------------------------------------


def crash_marker(cache_dir: Path, runtime_version: str) -> Path:
    """The file that records a CompiledModel crash on this CPU with this runtime version."""
    safe_version = "".join(c if c.isalnum() or c in ".-" else "_" for c in runtime_version)
    return Path(cache_dir) / f"compiled-model-litert{safe_version}-{_cpu_tag()}{_CRASH_SUFFIX}"


def _child_command(model_path: Path, cache_path: Path, threads: int) -> list[str]:
    # The child imports this very package: where it is installed, its directory is on the child's
    # sys.path already and nothing changes; a source tree the parent put on sys.path goes first,
    # as the parent has it.
    package_root = str(Path(__file__).resolve().parents[2])
    code = (
        "import sys; root = sys.argv.pop(1); "
        "sys.path.insert(0, root) if root not in sys.path else None; "
        "from edge_runtime.backends.tflite import _build_cache_main; "
        "sys.exit(_build_cache_main(sys.argv[1:]))"
    )
    return [
        sys.executable,
        "-c",
        code,
        package_root,
        str(model_path),
        str(cache_path),
        str(threads),
    ]


def _build_cache_main(argv: list[str]) -> int:
    """Child process: build the weight cache argv[1] for the model argv[0] with argv[2] threads,
    run the shortest signature once, print one JSON line. Killed by a signal, it prints nothing."""
    model_path, cache_path, threads = Path(argv[0]), Path(argv[1]), int(argv[2])
    try:
        api = _compiled_model_api()
        if api is None:
            raise BackendUnavailableError("this ai-edge-litert has no CompiledModel weight cache")
        engine = _CompiledEngine(api, model_path, threads, cache_path)
        if not _looks_finalized(cache_path):
            raise RuntimeError(f"XNNPACK did not write a complete cache to {cache_path}")
        # The kernels XNNPACK picked for this CPU run once here too, not first in the parent.
        shortest = None
        for key in engine.signature_keys():
            inputs, _, runner = engine.signature(key)
            size = sum(int(np.prod(shape)) for shape, _ in inputs.values())
            if shortest is None or size < shortest[0]:
                shortest = (size, inputs, runner)
        if shortest is not None:
            shortest[2](
                **{name: np.zeros(shape, dtype) for name, (shape, dtype) in shortest[1].items()}
            )
    except Exception as exc:  # noqa: BLE001 - any failure is reported to the parent, which falls back
        print(json.dumps({"ok": False, "error": f"{type(exc).__name__}: {exc}"}), flush=True)
        return 1
    print(json.dumps({"ok": True}), flush=True)
    return 0


def _build_in_child(model_path: Path, cache_path: Path, threads: int) -> tuple[str, str]:
    """("ok" | "failed" | "crashed", detail): the cache build run in a child process."""
    done = subprocess.run(
        _child_command(model_path.resolve(), cache_path, threads),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        errors="replace",
        check=False,
    )
    # All at DEBUG: a failure is summarized by the caller's own message, with the last words.
    native = _forward_native(
        done.stderr, lambda line: native_log.debug("%s", line.rstrip()), logging.DEBUG
    )
    report = None
    for line in reversed(done.stdout.splitlines()):
        with contextlib.suppress(ValueError):
            report = json.loads(line)
            break
    if done.returncode == 0 and isinstance(report, dict) and report.get("ok"):
        return "ok", ""
    if isinstance(report, dict) and "error" in report:
        return "failed", str(report["error"])
    last = [line for line in native if line.startswith(("FATAL", "ERROR"))]
    last = last or [line for line in done.stderr.splitlines() if line.strip()]
    words = f": {' | '.join(line.rstrip('.') for line in last[-3:])}" if last else ""
    if done.returncode >= 0:
        # Python itself failed (an import error, say): a broken install, not this CPU's fault.
        return "failed", f"the child process exited with status {done.returncode}{words}"
    try:
        how = f"killed by {signal.Signals(-done.returncode).name}"
    except ValueError:
        how = f"killed by signal {-done.returncode}"
    return "crashed", how + words


def _can_isolate() -> bool:
    return bool(sys.executable) and os.access(sys.executable, os.X_OK)


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
                engine = self._open_with_cache(
                    model_path, threads, Path(weight_cache_dir), model_sha256
                )
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
        marker = crash_marker(cache_dir, ai_edge_litert.__version__)
        if marker.exists():
            self.weight_cache_state = "unsupported"
            self.weight_cache_note = (
                f"ai-edge-litert {ai_edge_litert.__version__}'s CompiledModel crashed on this "
                f"CPU before ({_read_marker(marker)}; recorded in {marker}, delete it to retry)"
            )
            log.info("%s: %s; using the Interpreter", model_path.name, self.weight_cache_note)
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
        if not _can_isolate():
            # Without an interpreter to start, a crash could not be told from a result.
            self.weight_cache_state = "unsupported"
            self.weight_cache_note = (
                f"no Python executable to build the cache in a child process "
                f"(sys.executable is {sys.executable!r})"
            )
            log.info("%s: %s; using the Interpreter", model_path.name, self.weight_cache_note)
            return None
        # Build under a name no other process uses; XNNPACK truncates and rewrites the file it
        # is given, so building in place could clobber a file another process has mapped.
        tmp = final.with_name(f".{final.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            # In a child process: the first use of CompiledModel on a CPU may kill the process
            # (module docstring, "Crash isolation").
            outcome, detail = _build_in_child(model_path, tmp, threads)
            if outcome == "crashed":
                _record_crash(marker, model_path.name, detail)
                self.weight_cache_state = "unsupported"
                self.weight_cache_note = (
                    f"ai-edge-litert {ai_edge_litert.__version__}'s CompiledModel crashed on this "
                    f"CPU ({detail})"
                )
                log.warning(
                    "%s: %s. TFLite artifacts run with the Interpreter here, without the XNNPACK "
                    "weight cache; recorded in %s (delete it to try again)",
                    model_path.name,
                    self.weight_cache_note,
                    marker,
                )
                return None
            if outcome != "ok":
                raise RuntimeError(detail)
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
            # Gone after a successful rename; otherwise (error, crash, KeyboardInterrupt) never
            # left behind. A SIGKILL can still leave it: _remove_orphans sweeps it later.
            tmp.unlink(missing_ok=True)
        try:
            engine = _CompiledEngine(api, model_path, threads, final)
        except (RuntimeError, ValueError) as exc:
            final.unlink(missing_ok=True)
            self.weight_cache_state = "failed"
            log.warning(
                "could not load %s with the weight cache it just built (%s); loading without it",
                model_path.name,
                exc,
            )
            return None
        self.weight_cache, self.weight_cache_state = final, "created"
        return engine

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


def _record_crash(marker: Path, model_name: str, detail: str) -> None:
    try:
        marker.write_text(json.dumps({"model": model_name, "detail": detail}) + "\n")
    except OSError as exc:  # the next load will try (and crash in its child) again
        log.warning("could not record the CompiledModel crash in %s: %s", marker, exc)


def _read_marker(marker: Path) -> str:
    try:
        return str(json.loads(marker.read_text())["detail"])
    except (OSError, ValueError, KeyError, TypeError):
        return "no details recorded"


# Sessions still open at exit are closed before the interpreter tears modules down, so the
# runtime's teardown lines reach the logger rather than stderr.
_live_sessions: weakref.WeakSet[TfliteSession] = weakref.WeakSet()
# LiteRT makes one more Environment, process-wide, at the first tensor write of any
# CompiledModel and destroys it in a C++ static destructor, after Python has finalized (measured
# with ai-edge-litert 2.3: two "DestroyAccelerator" INFO lines at every exit).
_process_environment = False


def _start_process_environment(bucket: _Bucket) -> None:
    """Run the shortest bucket once (zeros) while the caller captures fd 2, so the process-wide
    environment is made, and logged, at load rather than at the first inference."""
    global _process_environment
    if _process_environment:
        return
    _process_environment = True
    bucket.runner(
        **{name: np.zeros((1, bucket.length), dtype) for name, dtype in bucket.input_dtypes.items()}
    )


def _silence_native_teardown() -> None:
    """From here to the end of the process, fd 2 goes to /dev/null, and Python's writers move to
    a copy of the real stderr: sys.stderr and sys.__stderr__ (finalization restores the latter),
    logging handlers that wrote to the old sys.stderr, faulthandler. The runtime's static
    destructors print into nothing; Python's last messages still show."""
    old = sys.stderr
    try:
        fd = old.fileno()
    except (AttributeError, OSError, ValueError):
        fd = None
    if fd != 2:
        return  # sys.stderr was redirected elsewhere by the application: leave it all alone
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        real = os.dup(2)
    except OSError:
        return
    stream = open(  # noqa: SIM115 - lives until the process ends
        real, "w", buffering=1, encoding=old.encoding or "utf-8", errors="backslashreplace"
    )
    with contextlib.suppress(OSError, ValueError):
        old.flush()
    os.dup2(devnull, 2)
    os.close(devnull)
    sys.stderr = sys.__stderr__ = stream
    loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
    for handler in {h for lg in loggers for h in getattr(lg, "handlers", ())}:
        if isinstance(handler, logging.StreamHandler) and handler.stream is old:
            handler.setStream(stream)
    import faulthandler

    if faulthandler.is_enabled():
        faulthandler.enable(file=stream, all_threads=True)


@atexit.register
def _at_exit() -> None:
    for session in list(_live_sessions):
        with contextlib.suppress(Exception):
            session.close()
    if _process_environment:
        _silence_native_teardown()


def open_session(model_path: Path, **options: Any) -> TfliteSession:
    if not available():
        raise BackendUnavailableError("neither ai-edge-litert nor tflite-runtime is installed")
    return TfliteSession(model_path, **options)
