"""What one edge-serve process is told (ServeConfig) and the errors it answers with (ServeError).

Defaults and meanings follow text-embeddings-inference's router flags (router/src/main.rs), except
the host: TEI listens on 0.0.0.0, we on 127.0.0.1, because a device on a home or factory network
should not expose a model to everyone by accident.
"""

from __future__ import annotations

import json
import operator
import os
from dataclasses import dataclass
from pathlib import Path

from edge_runtime._errors import EdgeRuntimeError

__all__ = [
    "ERROR_STATUS",
    "HTTP_CHOICES",
    "LOOP_CHOICES",
    "ServeConfig",
    "ServeConfigError",
    "ServeError",
    "manifest_max_length",
    "server_stack",
]

HTTP_CHOICES = ("auto", "h11", "httptools")
LOOP_CHOICES = ("auto", "asyncio", "uvloop")

# TEI's ErrorType -> HTTP status (router/src/http/server.rs,
# `impl From<&ErrorType> for StatusCode`).
ERROR_STATUS = {
    "Unhealthy": 503,
    "Backend": 424,
    "Overloaded": 429,
    "Tokenizer": 422,
    "Validation": 422,
    "Empty": 400,
}


class ServeError(EdgeRuntimeError):
    """An error answered as TEI writes it: {"error": message, "error_type": kind} with the status
    TEI gives that kind. `err` is the te_request_failure label TEI counts it under."""

    def __init__(self, kind: str, message: str, err: str | None = None, status: int | None = None):
        if kind not in ERROR_STATUS:
            raise ValueError(f"unknown error type {kind!r}; known: {sorted(ERROR_STATUS)}")
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.err = err or kind.lower()
        self.status = status or ERROR_STATUS[kind]

    def body(self) -> dict:
        return {"error": self.message, "error_type": self.kind}


class ServeConfigError(ValueError):
    """A ServeConfig setting out of range, found when the config is made (before anything is
    loaded); `parameter` names the field, so edge-serve can name its flag (a usage error)."""

    def __init__(self, parameter: str, message: str):
        super().__init__(f"{parameter} {message}")
        self.parameter = parameter
        self.message = message


@dataclass(frozen=True)
class ServeConfig:
    """How to serve an artifact directory. Library names; edge-serve's flags map onto them."""

    path: Path
    artifact: str | None = None
    threads: int | None = None
    trusted_keys: tuple[str, ...] | None = None
    # load()'s device_cache: False runs only the artifact's own (signed) files at every load.
    device_cache: bool = True
    host: str = "127.0.0.1"
    port: int = 3000
    # TEI: permits per input; a request that cannot get one per input is answered 429 Overloaded.
    # Bounds the memory queued requests may take.
    max_concurrent_requests: int = 512
    # Padded tokens (rows x longest row) one backend call may take: activation memory scales
    # with it.
    max_batch_tokens: int = 16384
    max_batch_requests: int | None = None
    max_client_batch_size: int = 32
    # How long the worker waits for more requests once one is queued and the batch has room. Under
    # load requests queue while the model runs, so batches fill without waiting; the wait only
    # matters at low load, where it adds at most this much latency.
    max_batch_wait_ms: float = 2.0
    # A request without "truncate" truncates (TEI's --auto-truncate, default true since 1.6).
    auto_truncate: bool = True
    # embed()'s batch_invariant: artifacts whose numbers depend on the batch (dynamic INT8) run
    # each input alone, so a text's vector never depends on who else was in the queue.
    batch_invariant: bool = True
    # Worker threads taking batches off the queue, each calling the backend with `threads`
    # intra-op threads. 1: one call at a time on every core. On a device with C cores serving
    # batch-invariantly a batch-dependent artifact (inputs one by one), C workers on 1 thread each
    # keep every core busy with short inputs that a multi-threaded call cannot split well
    # (MiniLM INT8, 54 sentences, 2 cores: 1.25x; benchmarks/RESULTS.md run R). Backends that
    # are not thread-safe (TFLite) still run one call at a time.
    workers: int = 1
    # With one worker serving a batch-dependent artifact batch-invariantly on several threads, run
    # a batch's rows on that many single-threaded lanes side by side (a second, single-threaded
    # session of the same artifact); a lone row still gets every thread (_engine.Served).
    lanes: bool = True
    # Seconds between golden re-runs on the serving backend; 0 turns the watchdog off.
    golden_interval_s: float = 300.0
    payload_limit: int = 2_000_000
    graceful_timeout_s: float = 30.0
    # How long an idle keep-alive connection stays open. Longer than the 60 s upstream idle
    # timeout of common proxies and load balancers (nginx's keepalive_timeout, AWS ALB): a
    # server that closes first (uvicorn's own default is 5 s) races the proxy's next request
    # on that connection, which the proxy then answers 502. An idle connection costs a socket
    # and a few kB; a drain closes idle ones at once.
    keep_alive_timeout_s: float = 75.0
    # uvicorn's HTTP parser and event loop. "auto": httptools / uvloop when installed (the
    # [serve] extra installs them where wheels exist: x86_64, aarch64), else the pure-Python
    # h11 / asyncio. MiniLM INT8, 16 clients, 2-vCPU AVX-512 VNNI Xeon: batched requests 1.07-1.09x
    # faster with them (benchmarks/RESULTS.md run S).
    http: str = "auto"
    loop: str = "auto"

    def __post_init__(self):
        object.__setattr__(self, "path", Path(os.fspath(self.path)))
        for name in (
            "max_concurrent_requests",
            "max_batch_tokens",
            "max_client_batch_size",
            "payload_limit",
            "workers",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ServeConfigError(name, f"must be an integer >= 1, got {value!r}")
        if self.max_batch_requests is not None and self.max_batch_requests < 1:
            raise ServeConfigError(
                "max_batch_requests", f"must be >= 1, got {self.max_batch_requests!r}"
            )
        self._check_threads()
        # Finite and bounded: an infinite or NaN wait would park the worker (a wait it cannot
        # express: OverflowError) and every request with it.
        for name, most in (("max_batch_wait_ms", 60_000.0), ("golden_interval_s", 7 * 86_400.0),
                           ("graceful_timeout_s", 3_600.0),
                           ("keep_alive_timeout_s", 3_600.0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= most:
                raise ServeConfigError(name, f"must be a number from 0 to {most:g}, got {value!r}")
        for name, known in (("http", HTTP_CHOICES), ("loop", LOOP_CHOICES)):
            if getattr(self, name) not in known:
                value = getattr(self, name)
                raise ServeConfigError(name, f"must be one of {', '.join(known)}, got {value!r}")
        port = self.port
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise ServeConfigError("port", f"must be an integer in 0..65535, got {port!r}")

    def _check_threads(self) -> None:
        """load()'s rule (_load_args), checked here so that a bad count is refused before the
        address is bound or anything is read, as the other settings are."""
        if self.threads is None:
            return
        # Imported here: the module stays standard-library only (edge-serve --help imports it).
        from edge_runtime._load_args import threads_problem

        try:  # any integer type, as load() takes it; not a bool
            count = None if isinstance(self.threads, bool) else operator.index(self.threads)
        except TypeError:
            count = None
        if count is None:
            raise ServeConfigError(
                "threads", f"must be an integer >= 0 or None, got {self.threads!r}"
            )
        problem = threads_problem(count)
        if problem:
            raise ServeConfigError("threads", problem)


def server_stack(config: ServeConfig) -> tuple[str, str]:
    """The (HTTP parser, event loop) uvicorn runs for `config`: "auto" resolved as uvicorn
    resolves it (the C-accelerated one when importable). A named one that is not installed is
    a ServeError naming the package."""
    import importlib.util

    chosen = []
    for name, value, fast, fallback in (("http", config.http, "httptools", "h11"),
                                        ("loop", config.loop, "uvloop", "asyncio")):
        installed = importlib.util.find_spec(fast) is not None
        if value == "auto":
            value = fast if installed else fallback
        elif value == fast and not installed:
            raise EdgeRuntimeError(f"{name}={fast} needs the {fast} package: pip install {fast}")
        chosen.append(value)
    return chosen[0], chosen[1]


def manifest_max_length(path: str | os.PathLike) -> int | None:
    """The model's maximum input length as DIR/manifest.json records it (tokenizer.max_length),
    read lightly, without loading or verifying anything: so that a --max-batch-tokens below it is
    refused before the port is bound and the model loaded (seconds to minutes on a small board).
    None when the manifest cannot be read or has no such field; the check after the load
    (_reload.check_limits) covers those, and every reload."""
    from edge_runtime._manifest_bytes import read_manifest_bytes

    try:  # bounded and non-blocking: read before any signature check (and a FIFO must not hang us)
        value = json.loads(read_manifest_bytes(Path(path) / "manifest.json"))["tokenizer"]["max_length"]
    except (EdgeRuntimeError, ValueError, KeyError, TypeError, RecursionError):
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        return None
    return value
