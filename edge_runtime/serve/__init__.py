"""edge-serve: a local HTTP service for an artifact directory, compatible with Hugging Face
text-embeddings-inference (TEI) clients, with Prometheus metrics, a golden-sample watchdog,
input-drift signals and verified hot reloads.

    from edge_runtime.serve import ServeConfig, run
    run(ServeConfig("artifacts/", port=3000))        # or: edge-serve artifacts/

Needs the `serve` extra (starlette, uvicorn): `import edge_runtime` never imports this package,
and this module imports them only when a server is created. Files by idea: _config (settings,
errors), _engine (the loaded model), _batching (queue and worker), _metrics (Prometheus),
_health (golden watchdog, drift), _reload (verified swaps), _inflight (clients that leave, the
drain's cut), _service (wiring), _requests (request bodies and their checks), _app (routes),
_server (uvicorn and signals). docs/serve.md has the details.
"""

from __future__ import annotations

from edge_runtime.serve._config import ServeConfig, ServeError
from edge_runtime.serve._inflight import Drained

__all__ = ["Drained", "ServeConfig", "ServeError", "create_app", "run"]


def create_app(config: ServeConfig):
    """The ASGI app for `config` (model loaded and verified now; worker started by its lifespan)."""
    from edge_runtime.serve._app import create_app as _create
    from edge_runtime.serve._service import Service

    return _create(Service(config))


def run(config: ServeConfig) -> Drained:
    """Serve until SIGTERM/SIGINT, then drain; returns a Drained: how many requests were still
    unanswered when config.graceful_timeout_s ran out (answered 503), after which signal."""
    from edge_runtime.serve._server import run as _run

    return _run(config)
