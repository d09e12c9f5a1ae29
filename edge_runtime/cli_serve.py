"""edge-serve: serve an artifact directory over HTTP (TEI-compatible). Thin: parse, call, print.

Flag names and meanings are text-embeddings-inference's (router/src/main.rs) where it has them.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys

# stdlib only: no starlette yet
from edge_runtime import _load_args
from edge_runtime.serve._config import (
    HTTP_CHOICES,
    LOOP_CHOICES,
    ServeConfig,
    ServeConfigError,
    manifest_max_length,
)


def _bool(text: str) -> bool:
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="edge-serve",
        description="Serve an edge-convert artifact directory over HTTP with text-embeddings-"
        "inference's API (/embed, /predict, /v1/embeddings, /health, /info, /metrics).",
        epilog="Exit status: 0 once SIGTERM or Ctrl-C stopped it and every request was answered; "
        "1 when the directory cannot be served or the address cannot be had; 2 for a bad flag; "
        "143 (128 + SIGTERM; 130 after Ctrl-C/SIGINT) when --graceful-timeout ran out, or a "
        "second signal cut the drain short, with requests unanswered (they were answered 503; "
        "the log line says how many).",
    )
    p.add_argument("artifacts", help="artifact directory (with manifest.json); SIGHUP re-reads it")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default: 127.0.0.1, "
        "this device only; 0.0.0.0 for every interface)",
    )
    p.add_argument("--port", type=int, default=3000, help="port (default: 3000)")
    p.add_argument("--artifact", help="artifact name (default: best for this device)")
    p.add_argument("--threads", type=int, help="intra-op threads (default: tuned, else profile)")
    p.add_argument(
        "--max-concurrent-requests",
        type=int,
        default=512,
        help="inputs queued or running at once; more are answered 429 (default: 512)",
    )
    p.add_argument(
        "--max-batch-tokens",
        type=int,
        default=16384,
        help="padded tokens (rows x longest) per backend call (default: 16384)",
    )
    p.add_argument("--max-batch-requests", type=int, help="inputs per batch (default: no limit)")
    p.add_argument(
        "--max-client-batch-size",
        type=int,
        default=32,
        help="inputs one request may send; more are answered 422 (default: 32)",
    )
    p.add_argument(
        "--max-batch-wait-ms",
        type=float,
        default=2.0,
        help="how long a batch with room waits for more requests (default: 2)",
    )
    p.add_argument(
        "--auto-truncate",
        type=_bool,
        default=True,
        metavar="BOOL",
        help="truncate inputs over the model's length when a request does not say (default: true)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="batches run side by side, each call on --threads threads (default: 1). With a "
        "dynamic-INT8 artifact served batch-invariantly, --workers CORES --threads 1 keeps "
        "every core busy with short inputs",
    )
    p.add_argument(
        "--no-lanes",
        dest="lanes",
        action="store_false",
        help="run a batch's batch-invariant rows one after another on all --threads instead of "
        "side by side on single-threaded lanes (the default with one worker)",
    )
    p.add_argument(
        "--no-batch-invariant",
        dest="batch_invariant",
        action="store_false",
        help="batch inputs into one backend call even for artifacts whose numbers "
        "depend on the batch (dynamic INT8): faster, but a vector then depends on its "
        "batch neighbours (by up to ~0.02 per element on MiniLM, docs/serve.md)",
    )
    p.add_argument(
        "--golden-interval",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="re-run the golden samples on the serving backend this often; 0: never (default: 300)",
    )
    p.add_argument(
        "--payload-limit", type=int, default=2_000_000, help="request body bytes (default: 2000000)"
    )
    p.add_argument(
        "--graceful-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="on SIGTERM, wait this long for in-flight requests; those still unanswered then "
        "are answered 503 and the exit status is 143 (default: 30)",
    )
    p.add_argument(
        "--keep-alive-timeout",
        type=float,
        default=75.0,
        metavar="SECONDS",
        help="close a keep-alive connection idle this long; keep it above the upstream idle "
        "timeout of a proxy or load balancer in front (often 60 s), or it races them into 502s "
        "(default: 75)",
    )
    p.add_argument(
        "--trusted-key",
        action="append",
        metavar="PEM",
        help="public key (PEM) whose signature (model.sig) the directory must carry, at "
        "start and at every reload; repeat to trust several keys (docs/signing.md)",
    )
    p.add_argument(
        "--no-device-cache",
        dest="device_cache",
        action="store_false",
        help="load (and reload) from the artifact's own files only, without the device cache "
        "(slower loads; docs/signing.md, 'What a signature covers')",
    )
    p.add_argument(
        "--http",
        default="auto",
        choices=HTTP_CHOICES,
        help="HTTP parser: httptools (C, the [serve] extra installs it on x86_64/aarch64) or h11 "
        "(pure Python); auto: httptools when installed (default: auto)",
    )
    p.add_argument(
        "--loop",
        default="auto",
        choices=LOOP_CHOICES,
        help="event loop: uvloop or asyncio; auto: uvloop when installed (default: auto)",
    )
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return p


_FLAGS = {
    "max_batch_tokens": "--max-batch-tokens",
    "max_concurrent_requests": "--max-concurrent-requests",
    "max_client_batch_size": "--max-client-batch-size",
    "max_batch_requests": "--max-batch-requests",
    "payload_limit": "--payload-limit",
    "max_batch_wait_ms": "--max-batch-wait-ms",
    "workers": "--workers",
    "golden_interval_s": "--golden-interval",
    "graceful_timeout_s": "--graceful-timeout",
    "keep_alive_timeout_s": "--keep-alive-timeout",
    "trusted_keys": "--trusted-key",
}


# ServeConfig field -> the flag that sets it, for ServeConfigError (looked up by field name; the
# short names are not replaced inside other messages, where "port" or "threads" mean themselves)
_SETTING_FLAGS = {
    **_FLAGS, "port": "--port", "threads": "--threads", "http": "--http", "loop": "--loop"
}


def _as_flags(message: str) -> str:
    message = message.replace("trusted_keys=None", "no --trusted-key")
    for name, flag in _FLAGS.items():
        message = message.replace(name, flag)
    return message


class _EarlyHups:
    """SIGHUP's handler from main()'s first line until run() installs its own, which takes over
    what this one recorded: a `systemctl reload` right after a start must not end the process
    (SIGHUP's default action, exit 129; the serve extra's imports and the config checks take
    ~0.2 s here, longer on a small board)."""

    def __init__(self) -> None:
        self.recorded: list[int] = []

    def __call__(self, signum, frame) -> None:
        self.recorded.append(signum)


def main(argv: list[str] | None = None) -> int:
    if hasattr(signal, "SIGHUP"):
        previous = signal.signal(signal.SIGHUP, _EarlyHups())
        try:
            return _main(argv)
        finally:
            signal.signal(signal.SIGHUP, previous)
    return _main(argv)


def _main(argv: list[str] | None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if not args.artifacts:  # Path("") is the working directory: never what was meant
        print(f"edge-serve: error: {_load_args.EMPTY_DIRECTORY}", file=sys.stderr)
        return 2
    try:  # every setting checked here, before the serve extra is imported or anything is read
        config = ServeConfig(
            path=args.artifacts,
            artifact=args.artifact,
            threads=args.threads,
            trusted_keys=tuple(args.trusted_key) if args.trusted_key else None,
            device_cache=args.device_cache,
            host=args.host,
            port=args.port,
            max_concurrent_requests=args.max_concurrent_requests,
            max_batch_tokens=args.max_batch_tokens,
            max_batch_requests=args.max_batch_requests,
            max_client_batch_size=args.max_client_batch_size,
            max_batch_wait_ms=args.max_batch_wait_ms,
            auto_truncate=args.auto_truncate,
            batch_invariant=args.batch_invariant,
            workers=args.workers,
            lanes=args.lanes,
            golden_interval_s=args.golden_interval,
            payload_limit=args.payload_limit,
            graceful_timeout_s=args.graceful_timeout,
            keep_alive_timeout_s=args.keep_alive_timeout,
            http=args.http,
            loop=args.loop,
        )
    except ServeConfigError as exc:  # a bad flag: a usage error, as argparse's own (exit 2)
        flag = _SETTING_FLAGS.get(exc.parameter, exc.parameter)
        print(f"edge-serve: error: {flag} {exc.message}", file=sys.stderr)
        return 2
    # Signed: nothing of the directory is read before its signature is checked (docs/signing.md);
    # the check after the load (Service) says the same then.
    longest = None if config.trusted_keys else manifest_max_length(config.path)
    if longest is not None and config.max_batch_tokens < longest:
        # TEI refuses to start in this case too: an input of the model's full length could never
        # be batched. Said from the manifest before any load (Service checks again after it).
        print(
            f"edge-serve: error: --max-batch-tokens ({config.max_batch_tokens}) is below the "
            f"model's maximum input length ({longest}, {config.path}/manifest.json "
            f"tokenizer.max_length): raise it to at least {longest}",
            file=sys.stderr,
        )
        return 2
    import edge_runtime

    try:
        import starlette  # noqa: F401  (the serve extra: imported here so a missing one is said
        import uvicorn  # noqa: F401   at once, not as a traceback once the model has loaded)

        from edge_runtime.serve import run
    except ImportError as exc:
        print(
            f"edge-serve: error: {exc}; install the serve extra: pip install '.[serve]' in a checkout of edge-runtime, "
            "or the device wheel with [serve] (pip install 'edge_runtime-0.1.0-py3-none-any.whl[onnx,serve]')",
            file=sys.stderr,
        )
        return 1
    try:
        drained = run(config)
    except edge_runtime.EdgeRuntimeError as exc:
        print(f"edge-serve: error: {_as_flags(str(exc))}", file=sys.stderr)
        return 1
    except OSError as exc:  # the port is taken, the address is not ours
        print(f"edge-serve: error: {exc}", file=sys.stderr)
        return 1
    # A drain cut short ends as the signal would have: 128 + its number.
    status = 128 + (drained.signal or signal.SIGTERM) if drained.dropped else 0
    if drained.abandoned:
        # A batch is still inside the backend. Interpreter exit would join the thread running
        # it (the whole batch: past --graceful-timeout, into the service manager's SIGKILL), or
        # finalize under a daemon thread inside onnxruntime, whose C++ runtime then aborts
        # (SIGABRT, a core dump, not the status above). Nothing is left to save: leave now.
        logging.shutdown()  # flushes every handler
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    return status

if __name__ == "__main__":
    sys.exit(main())
