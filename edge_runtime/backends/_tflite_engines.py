"""How one signature of a TFLite file runs: the two runtime APIs behind one interface.

An engine opens a model and hands out, per signature key, its input and output details and a
runner called with keyword arrays. _InterpreterEngine is the tf.lite-style Interpreter of
ai-edge-litert or tflite-runtime (runs everywhere, no weight cache); _CompiledEngine is
ai-edge-litert's CompiledModel on the CPU, the only API that takes an XNNPACK weight cache
file. The session (edge_runtime.backends.tflite) and the cache build
(edge_runtime.backends._tflite_cache) use them alike.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime._errors import BackendUnavailableError, ModelLoadError

__all__: list[str] = []


def _interpreter_api() -> tuple[Any, Any, str, str]:
    """(Interpreter, OpResolverType, package name, version), preferring ai-edge-litert.

    An installed runtime that fails to import (a native library or numpy ABI the device lacks,
    a half-finished install) is an error that quotes its ImportError, never a reason to run the
    other one: artifacts made for ai-edge-litert compute wrong numbers on tflite-runtime 2.14
    (per-channel INT8), silently when loaded with verify=False. Installed means found on the
    path (importlib.util.find_spec), as available() and installed_package() see it."""
    if importlib.util.find_spec("ai_edge_litert") is not None:
        try:
            import ai_edge_litert
            from ai_edge_litert import interpreter
        except Exception as exc:  # noqa: BLE001 - whatever the import raised, it is the reason
            other = importlib.util.find_spec("tflite_runtime") is not None
            raise BackendUnavailableError(
                f"ai-edge-litert is installed but cannot be imported ({type(exc).__name__}: "
                f"{exc})"
                + ("; tflite-runtime, installed too, is not used in its place (artifacts made "
                   "for ai-edge-litert can compute wrong numbers on it)" if other else "")
                + ". Reinstall it (pip install --force-reinstall ai-edge-litert)"
                + (", or uninstall it to run tflite-runtime" if other else "")
            ) from exc
        return (
            interpreter.Interpreter,
            interpreter.OpResolverType,
            "ai-edge-litert",
            ai_edge_litert.__version__,
        )
    if importlib.util.find_spec("tflite_runtime") is None:
        raise BackendUnavailableError(
            "neither ai-edge-litert nor tflite-runtime is installed (pip install ai-edge-litert)"
        )
    try:
        import tflite_runtime
        from tflite_runtime import interpreter
    except Exception as exc:  # noqa: BLE001 - as above
        raise BackendUnavailableError(
            f"tflite-runtime is installed but cannot be imported ({type(exc).__name__}: {exc}); "
            f"reinstall it (pip install --force-reinstall tflite-runtime; it needs numpy<2), or "
            f"install ai-edge-litert"
        ) from exc
    return (
        interpreter.Interpreter,
        interpreter.OpResolverType,
        "tflite-runtime",
        tflite_runtime.__version__,
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
            raise ModelLoadError(
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
