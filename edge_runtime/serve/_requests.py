"""What a request asks for: its JSON body read within the payload limit, its inputs and its
options, each checked before any work is queued, with TEI's error types and messages that name
the field (ServeError: 413, 415 for an admin body not sent as JSON, 422 Validation, 400 Empty).
_app.py puts the routes on top."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # starlette is imported by _app.py only
    from starlette.requests import Request

from edge_runtime.serve._config import ServeError

__all__ = [
    "_body",
    "_dimensions",
    "_encoding_format",
    "_flag",
    "_options",
    "_require_json_type",
    "_texts",
]


def _json_media_type(content_type: str) -> bool:
    """application/json or a +json type, its parameters (charset) aside: what axum's Json
    extractor, which reads the bodies of TEI's routes, accepts."""
    kind, _, sub = content_type.split(";", 1)[0].strip().lower().partition("/")
    return kind == "application" and (sub == "json" or sub.endswith("+json"))


def _require_json_type(request: Request) -> None:
    """ServeError 415 when a body is sent as anything but JSON, as TEI answers. No body (neither
    Transfer-Encoding nor a Content-Length above 0: RFC 9112 section 6.3) needs no type. A browser
    page can send text/plain, form or multipart bodies without a CORS preflight, never JSON."""
    headers = request.headers
    length = headers.get("content-length", "0").strip()
    if "transfer-encoding" not in headers and length.isdigit() and int(length) == 0:
        return
    content_type = headers.get("content-type")
    if content_type is None or not _json_media_type(content_type):
        got = "no Content-Type" if content_type is None else f"Content-Type {content_type[:80]!r}"
        raise ServeError(
            "Validation",
            f"request body must be JSON sent with `Content-Type: application/json`, got {got}: "
            "add that header (curl: -H 'Content-Type: application/json'), or send no body",
            err="media_type",
            status=415,
        )


async def _body(request: Request, limit: int, empty: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON object of a request, read up to `limit` bytes; `empty` (when given) stands for
    an empty body."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise ServeError(
            "Validation",
            f"request body of {declared} bytes is over the {limit}-byte limit",
            err="validation",
            status=413,
        )
    chunks, size = [], 0
    async for chunk in request.stream():  # ClientDisconnect if the client leaves mid-body
        size += len(chunk)
        if size > limit:
            raise ServeError(
                "Validation",
                f"request body is over the {limit}-byte limit",
                err="validation",
                status=413,
            )
        chunks.append(chunk)
    if not any(chunks):
        if empty is not None:
            return empty
        # Also an HTTP/1.0 request without Content-Length: its body is not read.
        raise ServeError(
            "Validation",
            "request body is empty: send the request's JSON object, with a Content-Length "
            "header (or chunked)",
            err="validation",
        )
    try:
        body = json.loads(b"".join(chunks))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # RecursionError: nested too deeply
        raise ServeError(
            "Validation", f"request body is not valid JSON: {exc}", err="validation"
        ) from None
    if not isinstance(body, dict):
        raise ServeError("Validation", "request body must be a JSON object", err="validation")
    return body


def _texts(body: dict[str, Any], field: str, max_batch: int) -> tuple[list[str], bool]:
    """(texts, was a batch) from body[field]: a string or a list of strings (TEI's Input;
    OpenAI's `input`)."""
    if field not in body:
        raise ServeError("Validation", f"missing field `{field}`", err="validation")
    value = body[field]
    if isinstance(value, str):
        if not value:
            raise ServeError("Empty", f"`{field}` cannot be empty", err="validation")
        return [value], False
    if not isinstance(value, list):
        raise ServeError(
            "Validation", f"`{field}` must be a string or a list of strings", err="validation"
        )
    if not value:
        raise ServeError("Empty", f"`{field}` cannot be empty", err="validation")
    if len(value) > max_batch:
        raise ServeError(
            "Validation",
            f"batch size {len(value)} > maximum allowed batch size {max_batch}",
            err="batch_size",
        )
    for index, item in enumerate(value):
        if isinstance(item, list):
            what = (
                "token ids are not supported" if item and all(isinstance(i, int) for i in item)
                else "sentence pairs are not supported"
            )
            raise ServeError(
                "Validation",
                f"`{field}[{index}]` is a list: {what}; send one string per input",
                err="validation",
            )
        if not isinstance(item, str):
            raise ServeError(
                "Validation",
                f"`{field}[{index}]` must be a string, got {type(item).__name__}",
                err="validation",
            )
        if not item:
            raise ServeError("Empty", f"`{field}[{index}]` cannot be empty", err="validation")
    return value, True


def _flag(body: dict[str, Any], name: str, default: bool) -> bool:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ServeError(
            "Validation", f"`{name}` must be true or false, got {value!r}", err="validation"
        )
    return value


def _dimensions(body: dict[str, Any], dim: int) -> int:
    value = body.get("dimensions")
    if value is None:
        return dim
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= dim:
        raise ServeError(
            "Validation",
            f"`dimensions` must be an integer in 1..{dim}, got {value!r}",
            err="validation",
        )
    return value


def _encoding_format(body: dict[str, Any]) -> Any:
    """OpenAI's encoding_format; absent, null or "" is "float". Only the value itself: [], 0 or
    false are not a format (422 in _options), not "float" by a falsy accident."""
    fmt = body.get("encoding_format")
    return "float" if fmt is None or fmt == "" else fmt


def _options(body: dict[str, Any], route: str, openai: bool, served) -> None:
    """ServeError 422 for a malformed option of `route`, checked before the input is queued
    (handle() has checked the route against the model's task already: that answers first)."""
    direction = body.get("truncation_direction")
    if direction not in (None, "right", "Right"):
        raise ServeError(
            "Validation",
            f"`truncation_direction` {direction!r} is not supported: inputs "
            "keep their first tokens (right)",
            err="validation",
        )
    if route == "predict":
        _flag(body, "raw_scores", False)
        return
    if not openai:
        _flag(body, "normalize", True)
    else:
        fmt = _encoding_format(body)
        if fmt not in ("float", "base64"):
            raise ServeError(
                "Validation",
                f"`encoding_format` must be float or base64, got {fmt!r}",
                err="validation",
            )
    _dimensions(body, served.model._dim(served.output) or 2**31)
