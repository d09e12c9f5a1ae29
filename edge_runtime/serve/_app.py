"""HTTP routes, shaped like Hugging Face text-embeddings-inference (TEI) so its clients work.

POST /embed, /predict, /v1/embeddings (OpenAI's shape, with usage); GET /health, /info, /metrics;
POST /admin/reload and /admin/check for loopback clients that are not web pages (403; a body not
JSON: 415). Request and response shapes, error JSON and status codes follow TEI's router
(router/src/http/server.rs and types.rs): errors are {"error": ..., "error_type": ...} (on
/v1/embeddings OpenAI's {"message", "code", "type"}), with 422 Validation/Tokenizer, 429
Overloaded, 424 Backend, 503 Unhealthy and 400 Empty; a body over the payload limit gets 413, as
in TEI. Starlette is imported here only: `import edge_runtime`
never loads it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ipaddress
import json
import logging
import time
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

import edge_runtime
from edge_runtime.serve._config import ServeError
from edge_runtime.serve._engine import normalize_rows
from edge_runtime.serve._inflight import ClientGone, unless_gone
from edge_runtime.serve._requests import (
    _body,
    _dimensions,
    _encoding_format,
    _flag,
    _options,
    _require_json_type,
    _texts,
)
from edge_runtime.serve._service import Service

__all__ = ["create_app"]

log = logging.getLogger("edge_runtime.serve")

_MODEL_NAMES_WARNED = 64  # distinct model names a warning is logged for


def _loopback(host: str) -> bool:
    """Whether a peer address is loopback: 127.0.0.0/8, ::1, and IPv4 loopback as an IPv6 socket
    reports it (`--host ::` accepts IPv4 clients as ::ffff:127.0.0.1, which Python < 3.13 does not
    call loopback). Anything that is not an address (no peer, a Unix socket) is not."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


# Sec-Fetch-Site values no other site's page sends: the user's own navigation ("none") or a page
# of this server itself ("same-origin"; edge-serve serves none). Fetch Metadata, W3C.
_OWN_FETCH_SITES = ("none", "same-origin")


def _from_a_web_page(request: Request) -> str:
    """Why `request` looks sent by a web page, "" if it does not. Browsers send Origin with every
    POST a page makes (fetch, a form) and Sec-Fetch-Site with every request; curl, scripts and
    SDKs send neither. A loopback peer alone does not make a request the user's: any page open in
    a browser on this machine can POST to 127.0.0.1, and a text/plain body needs no CORS preflight
    (a "simple" request), so the page need not read the answer to reload the model."""
    origin = request.headers.get("origin")
    if origin is not None:
        return f"it carries the Origin header {origin[:100]!r}"
    site = request.headers.get("sec-fetch-site")
    if site is not None and site.strip().lower() not in _OWN_FETCH_SITES:
        return f"its Sec-Fetch-Site header is {site[:40]!r}"
    return ""


def _json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    text = json.dumps(body, separators=(",", ":"), allow_nan=False)
    return Response(text, status_code=status, headers=headers, media_type="application/json")


def _floats(rows: np.ndarray) -> list:
    """float32 rows as JSON-ready Python floats with 9 significant digits: enough to give back
    every float32 bit for bit (TEI also sends float32 values), about 0.6x the bytes of their
    float64 reprs, and faster to serialize."""
    return [[float(f"{x:.9g}") for x in row] for row in np.asarray(rows, np.float32).tolist()]


def _error(exc: ServeError, openai: bool = False) -> Response:
    if openai:  # TEI's OpenAICompatErrorResponse
        body = {"message": exc.message, "code": exc.status, "type": exc.kind}
    else:
        body = exc.body()
    return _json_response(body, exc.status)


def _headers(timing: dict[str, Any], started: float, chars: int) -> dict[str, str]:
    """TEI's per-response timing headers (milliseconds)."""
    return {
        "x-compute-type": "cpu",
        "x-compute-time": str(int((time.perf_counter() - started) * 1000)),
        "x-compute-characters": str(chars),
        "x-compute-tokens": str(timing["tokens"]),
        "x-total-time": str(int((time.perf_counter() - started) * 1000)),
        "x-tokenization-time": str(int(timing["tokenization"] * 1000)),
        "x-queue-time": str(int(timing["queue"] * 1000)),
        "x-inference-time": str(int(timing["inference"] * 1000)),
    }


def create_app(service: Service) -> Starlette:
    """The ASGI application serving `service` (started and drained by the app's lifespan)."""
    config, metrics = service.config, service.metrics

    async def handle(
        request: Request, route: str | None, field: str, answer, openai: bool = False
    ) -> Response:
        """`route` None (POST /): the route of the model served once the body is in, with its
        answer (a reload that changes the kind of model may land while the body is read)."""
        started = time.perf_counter()
        method, counted = "single", False
        try:
            with service.inflight.track():  # the drain's cut answers what is still running
                body = await _body(request, config.payload_limit)
                if route is None:
                    predicts = service.slot.current.task == "text-classification"
                    route, answer = ("predict", predict_answer) if predicts else ("embed", embed_answer)
                method = "batch" if isinstance(body.get(field), list) else "single"
                metrics.request_count.inc(method=method)
                counted = True
                service.slot.current.require(route)  # the wrong route is said first, as TEI does
                texts, batched = _texts(body, field, config.max_client_batch_size)
                truncate = (
                    _flag(body, "truncate", config.auto_truncate)
                    if not openai
                    else config.auto_truncate
                )
                _options(
                    body, route, openai, service.slot.current
                )  # refuse bad options before any work
                # A client gone while its inputs wait is noticed, and they are dropped unrun.
                served, result, timing = await unless_gone(
                    service.infer(route, texts, truncate, openai), request.receive
                )
                # Serialized here, inside the try: a payload JSON cannot carry (NaN) is a 424
                # like any backend failure, and success is counted only for what was sent.
                response = _json_response(
                    answer(body, served, result, batched, timing),
                    headers=_headers(timing, started, sum(map(len, texts))),
                )
        except ServeError as exc:
            if not counted:  # the body itself was refused (too large, not JSON)
                metrics.request_count.inc(method=method)
            metrics.failed(exc.err)
            return _error(exc, openai)
        except (ClientDisconnect, ClientGone):  # the client left: nobody to answer, not our fault
            if not counted:  # it left mid-body: count = success + failures (docs/guarantees.md)
                metrics.request_count.inc(method=method)
            metrics.failed("disconnect")
            return Response(status_code=499)
        except asyncio.CancelledError:
            if not service.inflight.cut_here():
                raise
            if not counted:
                metrics.request_count.inc(method=method)
            metrics.failed("shutdown")
            return _error(ServeError("Unhealthy", "the server is shutting down and its drain "
                                     "ran out of time (or a second stop signal cut it short) "
                                     "before this request was answered",
                                     err="shutdown"), openai)
        except Exception as exc:  # e.g. NaN outputs: TEI's 424 Backend, never a bare 500
            log.exception("request failed")
            if not counted:
                metrics.request_count.inc(method=method)
            metrics.failed("inference")
            return _error(
                ServeError("Backend", f"Backend error: {type(exc).__name__}: {exc}"), openai
            )
        metrics.request_success.inc(method=method)
        metrics.request_duration.observe(time.perf_counter() - started)
        metrics.tokenization_duration.observe(timing["tokenization"])
        metrics.queue_duration.observe(timing["queue"])
        metrics.inference_duration.observe(timing["inference"])
        return response

    def vectors(body, served, result) -> np.ndarray:
        # the model's own size (its manifest's truncate_dim, Matryoshka) unless `dimensions` cuts more
        dim = _dimensions(body, served.model._dim(served.output) or result.outputs.shape[-1])
        out = result.outputs[:, :dim]
        return normalize_rows(out) if _flag(body, "normalize", True) else out

    def embed_answer(body, served, result, batched, timing):
        return _floats(vectors(body, served, result))

    async def embed(request: Request) -> Response:
        return await handle(request, "embed", "inputs", embed_answer)

    # OpenAI SDKs must send a model name (text-embedding-3-small, ...): one warning per name,
    # not one per request (a log flooding an SD card). Bounded: clients choose the names.
    warned: set[str] = set()

    def _warn_model_once(named: Any, model_id: str) -> None:
        key = repr(named)[:200]
        if key in warned or len(warned) > _MODEL_NAMES_WARNED:
            return
        warned.add(key)
        if len(warned) > _MODEL_NAMES_WARNED:
            log.warning("requests name more than %d other models; no longer said",
                        _MODEL_NAMES_WARNED)
            return
        log.warning("a request names model %s; serving %r (said once per name)", key, model_id)

    async def openai_embeddings(request: Request) -> Response:
        def answer(body, served, result, batched, timing):
            body = {k: v for k, v in body.items() if k != "normalize"}  # OpenAI: always normalized
            fmt = _encoding_format(body)
            rows = vectors(body, served, result).astype("<f4")
            data = [
                {
                    "object": "embedding",
                    "index": i,
                    "embedding": base64.b64encode(row.tobytes()).decode()
                    if fmt == "base64"
                    else _floats(row[None])[0],
                }
                for i, row in enumerate(rows)
            ]
            model_id = _model_id(served)
            named = body.get("model")
            if named not in (None, "", model_id):
                _warn_model_once(named, model_id)
            return {
                "object": "list",
                "data": data,
                "model": model_id,
                "usage": {"prompt_tokens": timing["tokens"], "total_tokens": timing["tokens"]},
            }

        return await handle(request, "embed", "input", answer, openai=True)

    def predict_answer(body, served, result, batched, timing):
        raw = _flag(body, "raw_scores", False)
        rows = [served.predictions(logits, raw) for logits in result.outputs]
        return rows if batched else rows[0]

    async def predict(request: Request) -> Response:
        return await handle(request, "predict", "inputs", predict_answer)

    async def root(request: Request) -> Response:
        """TEI serves POST / with the model's own route: huggingface_hub's InferenceClient, given
        the server's URL as its model, posts there. Chosen once the body is in (handle)."""
        return await handle(request, None, "inputs", None)

    async def health(request: Request) -> Response:
        reason = service.unhealthy()
        if reason:
            return _error(ServeError("Unhealthy", reason, err="unhealthy"))
        return Response(status_code=200)

    async def info(request: Request) -> Response:
        served = service.slot.current
        manifest = served.model.manifest
        if served.task == "feature-extraction":
            model_type = {"embedding": {"pooling": served.pooling}}
        else:
            labels = {str(i): name for i, name in enumerate(served.labels)}
            model_type = {
                "classifier": {
                    "id2label": labels,
                    "label2id": {v: int(k) for k, v in labels.items()},
                }
            }
        return _json_response(
            {
                "model_id": _model_id(served),
                "model_sha": manifest.get("source", {}).get("sha256"),
                "model_dtype": served.model.artifact["precision"],
                "served_model_name": _model_id(served),
                "model_type": model_type,
                "max_concurrent_requests": config.max_concurrent_requests,
                "max_input_length": served.max_length,
                "max_batch_tokens": config.max_batch_tokens,
                "max_batch_requests": config.max_batch_requests,
                "max_client_batch_size": config.max_client_batch_size,
                "auto_truncate": config.auto_truncate,
                "tokenization_workers": 1,
                "version": edge_runtime.__version__,
                "sha": None,
                "docker_label": None,
                # ours: what exactly is being served, and how
                "artifact": served.info(),
                "target": manifest.get("target", {}).get("id"),
                "task": served.task,
                "batch_invariant": config.batch_invariant,
                "workers": config.workers,
                "max_batch_wait_ms": config.max_batch_wait_ms,
                "golden_interval_s": config.golden_interval_s,
            }
        )

    async def prometheus(request: Request) -> Response:
        return Response(
            metrics.registry.render(), media_type="text/plain; version=0.0.4; charset=utf-8"
        )

    def _admin_only(request: Request) -> None:
        """Loopback clients that are not web pages, sending JSON if anything (the routes change
        what is served: reachable by a page in a browser, they are a cross-site request forgery)."""
        host = request.client.host if request.client else ""
        if not _loopback(host):
            # TEI has no error type for a refused client; "Validation" keeps the body TEI-shaped.
            raise ServeError(
                "Validation",
                "admin routes answer loopback clients only",
                err="forbidden",
                status=403,
            )
        page = _from_a_web_page(request)
        if page:
            raise ServeError(
                "Validation",
                f"admin routes refuse requests from web browsers, and {page}: a web page open on "
                "this machine must not reload or check the model. Call them from a script or curl "
                "on this machine (which send no Origin or Sec-Fetch-Site header)",
                err="forbidden",
                status=403,
            )
        _require_json_type(request)

    async def admin_reload(request: Request) -> Response:
        from starlette.concurrency import run_in_threadpool

        try:
            _admin_only(request)
            # Whatever was sent (a chunked body has no content-length); nothing is {}.
            body = await _body(request, config.payload_limit, empty={})
            path = body.get("path")
            if path is not None and not isinstance(path, str):
                raise ServeError("Validation", "`path` must be a string", err="validation")
            allow_change = body.get("allow_change", False)
            if not isinstance(allow_change, bool):
                raise ServeError("Validation", "`allow_change` must be true or false", err="validation")
            if path is not None and not path.strip():
                # Path("") is ".": the server's working directory would be loaded instead
                raise ServeError(
                    "Validation",
                    "`path` is empty: give an artifact directory, or send no `path` to re-read "
                    "the current one",
                    err="validation",
                )
        except ServeError as exc:
            return _error(exc)
        outcome = await run_in_threadpool(service.reloader.reload, path, allow_change)
        if outcome["ok"]:
            return _json_response(outcome)
        return _json_response(
            {
                **outcome,
                "error": f"reload failed; still serving {outcome['serving']['artifact']} "
                f"from {outcome['serving']['path']}: {outcome['error']}",
                "error_type": "Validation",
            },
            422,
        )

    async def admin_check(request: Request) -> Response:
        import asyncio

        try:
            _admin_only(request)
            outcome = await asyncio.wrap_future(service.watchdog.schedule())
        except ServeError as exc:
            return _error(exc)
        return _json_response(outcome, 200 if outcome["ok"] else 503)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        service.start()
        try:
            yield
        finally:
            service.stop()  # uvicorn has finished every in-flight request by now

    routes = [
        Route("/", root, methods=["POST"]),
        Route("/embed", embed, methods=["POST"]),
        Route("/predict", predict, methods=["POST"]),
        Route("/v1/embeddings", openai_embeddings, methods=["POST"]),
        Route("/embeddings", openai_embeddings, methods=["POST"]),
        Route("/health", health, methods=["GET"]),
        Route("/info", info, methods=["GET"]),
        Route("/metrics", prometheus, methods=["GET"]),
        Route("/admin/reload", admin_reload, methods=["POST"]),
        Route("/admin/check", admin_check, methods=["POST"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


def _model_id(served) -> str:
    name = served.model.manifest.get("source", {}).get("name") or served.name
    return name.removesuffix(" (built-in)")
