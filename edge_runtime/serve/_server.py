"""Running the app under uvicorn, with the signals a device's service manager sends.

SIGTERM (systemd stop): uvicorn stops accepting connections, lets every in-flight request finish
(up to graceful_timeout_s), then the app's lifespan drains the queue and stops the worker; the
process then exits 0. SIGHUP: reload the artifact directory in the background (_reload.py).
uvicorn is imported here only; it parses HTTP with httptools and runs uvloop when they are installed
(ServeConfig.http / loop), else with the pure-Python h11 and asyncio.
"""

from __future__ import annotations

import logging
import signal

from edge_runtime.serve._config import ServeConfig, server_stack
from edge_runtime.serve._service import Service

__all__ = ["run"]

log = logging.getLogger("edge_runtime.serve")


def run(config: ServeConfig, service: Service | None = None) -> None:
    """Load, verify and serve `config.path` until SIGTERM/SIGINT; returns after draining.
    Raises the load error (EdgeRuntimeError) if the model cannot be served at all."""
    import uvicorn

    from edge_runtime.serve._app import create_app

    http, loop = server_stack(config)
    service = service or Service(config)
    app = create_app(service)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=config.host,
            port=config.port,
            http=http,
            loop=loop,
            log_level="warning",
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=config.graceful_timeout_s,
            # Connections beyond the permits would only queue in the kernel; the 429 comes from the
            # permits (max_concurrent_requests), not from refusing sockets.
            backlog=2048,
        )
    )

    def _reload(signum, frame):
        log.info("SIGHUP: reloading %s", service.reloader.path)
        service.reloader.request()

    def _stopped(signum, frame):
        # uvicorn re-raises the signal that stopped it once it has drained; the drain is done,
        # so the process ends normally (exit 0) instead of being killed by the default handler.
        log.info("drained; exiting after %s", signal.Signals(signum).name)

    previous = {
        sig: signal.signal(sig, handler)
        for sig, handler in (
            (signal.SIGHUP, _reload),
            (signal.SIGTERM, _stopped),
            (signal.SIGINT, _stopped),
        )
    }
    try:
        log.info("edge-serve on http://%s:%d (HTTP parser %s, event loop %s)", config.host, config.port,
                 http, loop)
        server.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
