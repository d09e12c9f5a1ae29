"""The FP32 TFLite export in a second, low-priority process, while the conversion builds its ONNX
artifacts.

litert-torch's conversion (torch.export, decompositions, MLIR lowering, once per signature) is
Python on one core: ~25-30 s for MiniLM's four signatures on a Zen 4 (AVX-512 VNNI), ~45 s on an
AVX2-only Zen 3 (run U), and nothing else runs meanwhile. The ONNX stages before it keep the
second core only partly busy (GPTQ's row loops, protobuf edits, session starts). A child process
started with the conversion soaks up part of that slack: at normal priority it competed with
onnxruntime's and OpenBLAS's threads and slowed the ONNX stages by as much as it saved; at the
lowest priority (nice 19) the ONNX stages take 10-14 s longer and an rpi4 conversion 0.91-0.95x
the time (188-197 s -> 179 s on a 2-vCPU AMD EPYC Zen 4 with AVX-512 VNNI), every artifact
byte-identical (benchmarks/RESULTS.md run AF). When the conversion reaches its TFLite artifacts
it waits for the child, which then has the machine to itself.

The child is a spawned interpreter (no forked torch or onnxruntime thread pools), started before
the conversion loads the model: it loads the same model directory and litert-torch while the
parent loads its own copy (one core each), then waits for the parent's request (the buckets
follow from the model), checks that its weights hash to the parent's, and runs `export_tflite`,
so the file is the one an in-process export writes. A refusal by litert-torch comes back as the same
ConversionError; a child that dies without an answer (killed, out of memory) leaves the export to
the conversion's process. Ctrl-C is the parent's to handle (it ends the child); a child whose
parent is gone stops. Its library output goes where the parent's goes (edge-convert redirects
file descriptors 1 and 2 to its log; a child inherits them).
"""

from __future__ import annotations

import multiprocessing
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from converters._console import CountCallback
from converters._errors import ConversionError
from converters.tflite.export import TfliteExportConfig

if TYPE_CHECKING:
    from converters.inputs.source import SourceModel
    from targets import TargetProfile

__all__ = ["BackgroundExport", "background_key", "background_unavailable", "tflite_export_key", "tflite_export_path"]

# The child's copy of torch and the model: ~1 GB RSS for MiniLM. With less memory available than
# this, the export stays in the conversion's process.
_MIN_AVAILABLE_BYTES = 4 << 30
_NICE = 19  # the lowest priority: the child runs while the conversion's threads wait


def tflite_export_key(profile: TargetProfile, source: SourceModel) -> tuple[str, tuple[int, ...]]:
    """What decides the FP32 .tflite of a run: its signature buckets."""
    buckets = sorted(set(profile.tflite.buckets) | {source.max_length})
    return "tflite-export", tuple(b for b in buckets if b <= source.max_length)


def tflite_export_path(exports: Path, key: tuple[str, tuple[int, ...]]) -> Path:
    folder = exports / ("tflite-export-" + "-".join(map(str, key[1])))
    folder.mkdir(parents=True, exist_ok=True)
    return folder / "export.tflite"


def background_key(key: tuple[str, tuple[int, ...]]) -> tuple[str, tuple[int, ...]]:
    """step.cache key of the running background export (a BackgroundExport) for `key`."""
    return "tflite-export-background", key[1]


def background_unavailable() -> str | None:
    """Why the export should stay in the conversion's process on this machine, or None."""
    import psutil

    from edge_runtime._select import usable_cpus

    if usable_cpus() < 2:
        return "one CPU: no idle core to export on"
    available = psutil.virtual_memory().available
    if available < _MIN_AVAILABLE_BYTES:
        return f"{available / 2**30:.1f} GiB of memory available; a second process would need ~1 GiB more"
    return None


def _stop_with_parent(parent: int) -> None:
    """In the child: exit when the parent process is gone (killed without the chance to end us)."""
    import threading

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _tell(answer, done: int, total: int) -> None:
    """In the child: a finished litert-torch stage, for the parent to show once it waits."""
    try:
        answer.send(("stage", done, total))
    except OSError:  # the parent stopped listening: the export goes on
        pass


def _child(model_dir: str | None, task: str | None, answer, requests, parent: int) -> None:
    """Runs in the spawned process: load the model and litert-torch, wait for the parent's
    request, check the model is the parent's, export, answer."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the parent decides
    _stop_with_parent(parent)
    if hasattr(os, "nice"):
        os.nice(_NICE)
    try:
        import torch

        torch.set_num_threads(1)  # tracing and lowering are single-threaded anyway
        from converters.inputs.source import load_source
        from converters.tflite.export import export_tflite

        source = load_source(None if model_dir is None else Path(model_dir), task)
        import litert_torch  # noqa: F401 -- imported before the request: ~2 s less after it

        try:
            wanted_task, weights_sha256, out_path, config = requests.recv()
        except EOFError:  # the parent needs no export after all
            return
        if source.task != wanted_task or source.weights_sha256 != weights_sha256:
            raise ConversionError(f"{source.name}: its weights changed during the conversion (sha256 "
                                  f"{source.weights_sha256[:12]}..., was {weights_sha256[:12]}...; task "
                                  f"{source.task}, was {wanted_task})")
        outcome: tuple[str, Any] = ("done", export_tflite(source, Path(out_path), config,
                                                          lambda done, total: _tell(answer, done, total)))
    except ConversionError as exc:
        outcome = ("refused", str(exc))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which exports itself
        outcome = ("failed", f"{type(exc).__name__}: {exc}")
    try:
        answer.send(outcome)
    except OSError:  # the parent stopped listening
        pass
    finally:
        answer.close()


class BackgroundExport:
    """`export_tflite` of the model at `model_dir` (None: the built-in one) in a low-priority
    spawned process. Started before the conversion has loaded the model (the child loads its own
    copy and litert-torch meanwhile, on the core the parent's loading leaves idle); `request`
    says what to export once the parent knows it (the buckets follow from the model); `result()`
    waits."""

    def __init__(self, model_dir: Path | None, task: str | None):
        context = multiprocessing.get_context("spawn")
        self._answers, sender = context.Pipe(duplex=False)
        receiver, self._requests = context.Pipe(duplex=False)
        self.started = time.perf_counter()
        self._process = context.Process(
            target=_child, name="edge-convert-tflite-export", daemon=True,
            args=(None if model_dir is None else str(model_dir), task, sender, receiver, os.getpid()))
        self._process.start()
        sender.close()  # the child holds the only sending end: EOF when it dies without answering
        receiver.close()
        self._outcome: tuple[str, Any] | None = None
        self.requested = False

    @classmethod
    def start(cls, model_dir: Path | None, task: str, weights_sha256: str, out_path: Path,
              config: TfliteExportConfig) -> BackgroundExport:
        """A child started and asked at once."""
        background = cls(model_dir, task)
        background.request(task, weights_sha256, out_path, config)
        return background

    def request(self, task: str, weights_sha256: str, out_path: Path, config: TfliteExportConfig) -> None:
        """Export the model into `out_path` with `config`, if the child's copy is the parent's:
        `task` and `weights_sha256` as the parent loaded it (else a refusal)."""
        try:
            self._requests.send((task, weights_sha256, str(out_path), config))
        except OSError:  # the child is gone: result() says so, and the caller exports itself
            pass
        self.requested = True

    def seconds(self) -> float:
        """Since the child was started."""
        return time.perf_counter() - self.started

    def running(self) -> bool:
        """Whether the child is still at work (it exits once it has answered)."""
        return self._outcome is None and self._process.is_alive()

    def result(self, progress: CountCallback | None = None) -> tuple[dict[str, Any] | None, str]:
        """(what export_tflite returned, "") once the child is done, or (None, why) when it died
        without an answer: the caller then exports in its own process. A litert-torch refusal
        raises the ConversionError the in-process export would have raised. `progress(done,
        total)` hears the export's stages while this waits: first the last one finished before,
        then each as it finishes."""
        if not self.requested:
            raise RuntimeError("BackgroundExport.result() before request(): the child would wait forever")
        if self._outcome is None:
            try:
                self._outcome = self._wait(progress or (lambda done, total: None))
            except EOFError:
                self._process.join()
                self._outcome = ("failed", f"the export process ended (exit code {self._process.exitcode}) "
                                           "without an answer")
            self._process.join()
            self._answers.close()
        kind, value = self._outcome
        if kind == "done":
            return value, ""
        if kind == "refused":
            raise ConversionError(value)
        return None, value

    def _wait(self, progress: CountCallback) -> tuple[str, Any]:
        """The child's answer; its stage messages on the way are told to `progress` (those sent
        while nobody waited, only the last)."""
        latest = None
        while self._answers.poll(0):
            message = self._answers.recv()
            if message[0] != "stage":
                return message
            latest = message
        if latest is not None:
            progress(*latest[1:])
        while True:
            message = self._answers.recv()
            if message[0] != "stage":
                return message
            progress(*message[1:])

    def stop(self) -> None:
        """End the child if it still runs (the conversion failed or was interrupted, or no
        export was requested)."""
        self._requests.close()
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(timeout=10)
            if self._process.is_alive():
                self._process.kill()
                self._process.join()
        self._answers.close()
