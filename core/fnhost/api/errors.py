"""Every error leaves fnhost as JSON `{"error": message, "detail": ...}` with its status,
mapped here once. Nothing a user sends yields a traceback."""

from __future__ import annotations

import logging
import math
import traceback
from http import HTTPStatus
from typing import Any

from litestar import Request, Response
from litestar.exceptions import (
    HTTPException,
    NotAuthorizedException,
    NotFoundException,
    PermissionDeniedException,
    ValidationException,
)
from litestar.openapi import ResponseSpec
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR

from fnhost import errors
from fnhost.schemas import ErrorBody

log = logging.getLogger("fnhost.api")

STATUS_OF: dict[type[errors.FnhostError], int] = {
    errors.BadInput: 400,
    errors.InvalidField: 422,
    errors.Unauthenticated: 401,
    errors.Forbidden: 403,
    errors.NotFound: 404,
    errors.Conflict: 409,
    errors.TooLarge: 413,
    errors.RateLimited: 429,
    errors.Unavailable: 503,
    errors.ConfigError: 500,
    errors.PluginError: 500,
}


def error_response(
    status: int, message: str, detail: Any = None, headers: dict[str, str] | None = None
) -> Response[Any]:
    body: dict[str, Any] = {"error": message}
    if detail is not None:
        body["detail"] = detail
    return Response(body, status_code=status, headers=headers, media_type="application/json")


def status_of(exc: errors.FnhostError) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS_OF:
            return STATUS_OF[cls]  # type: ignore[index]
    return 500


def handle_fnhost_error(_: Request[Any, Any, Any], exc: errors.FnhostError) -> Response[Any]:
    status = status_of(exc)
    headers = None
    if isinstance(exc, errors.RateLimited):
        headers = {"Retry-After": str(max(1, math.ceil(exc.retry_after)))}
    elif isinstance(exc, errors.Unauthenticated):
        headers = {"WWW-Authenticate": "Bearer"}
    if status >= 500:
        log.error("%s: %s", type(exc).__name__, exc.message)
    return error_response(status, exc.message, exc.detail, headers)


def handle_validation_error(_: Request[Any, Any, Any], exc: ValidationException) -> Response[Any]:
    """Litestar's body/parameter validation: a missing field or a body of the wrong shape is
    400 (bad input); a present field with a bad value is 422, and the message names it."""
    problems = exc.extra if isinstance(exc.extra, list) else []
    if not problems:
        return error_response(400, str(exc.detail) or "invalid request")
    first = problems[0]
    message = str(first.get("message", "invalid value")).replace("`", "")
    key = str(first.get("key", ""))
    source = getattr(first.get("source"), "value", first.get("source"))  # ParamType -> "query"
    if message.startswith("Object missing required field"):
        field = message.rsplit(" ", 1)[-1]
        return error_response(400, f"{field}: required", {"field": field})
    text = f"{message[0].lower()}{message[1:]}"
    if source not in ("body", None):
        return error_response(400, f"{source} parameter {key}: {text}", {"field": key})
    if key in ("", "data"):
        # The whole body: the wrong shape is bad input; a bad value inside it is invalid.
        if message.startswith("Object contains unknown field") or (
            message.startswith("Expected")
            and not message.startswith(("Expected object", "Expected array"))
        ):
            return error_response(422, f"request body: {text}", None)
        return error_response(400, "request body: expected a JSON object", None)
    return error_response(422, f"{key}: {text}", {"field": key})


def handle_http_exception(_: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    status = exc.status_code
    message = exc.detail
    if isinstance(exc, NotFoundException):
        message = "not found"
    elif isinstance(exc, NotAuthorizedException | PermissionDeniedException):
        message = exc.detail
    elif status == 413:
        message = "request body too large"
    elif status == 400 and "JSON" in str(exc.detail):
        message = "request body is not valid JSON"
    headers = {
        k: v for k, v in (exc.headers or {}).items() if k.lower() in ("allow", "retry-after")
    }
    return error_response(status, str(message), None, headers or None)


def handle_unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    if isinstance(exc, RecursionError | UnicodeDecodeError) and _raised_decoding_json(exc):
        # msgspec raises these, not DecodeError, for JSON nested too deeply and for
        # invalid UTF-8 inside a string; Litestar lets them through its body parsing.
        what = "nested too deeply" if isinstance(exc, RecursionError) else "not valid UTF-8"
        return error_response(400, f"request body is not valid JSON: {what}")
    if isinstance(exc, ConnectionError | TimeoutError):
        # A plugin let a connection failure through instead of raising Unavailable.
        log.warning("unavailable: %s: %s", type(exc).__name__, exc)
        return error_response(
            503, f"a service fnhost depends on cannot be reached ({type(exc).__name__}); retry"
        )
    log.exception("unexpected error", exc_info=exc)
    return error_response(HTTP_500_INTERNAL_SERVER_ERROR, "internal error")


def _raised_decoding_json(exc: BaseException) -> bool:
    return any(frame.name == "decode_json" for frame in traceback.extract_tb(exc.__traceback__))


def error_responses(*statuses: int) -> dict[int, ResponseSpec]:
    """OpenAPI entries for fnhost's errors, so the schema shows the `{"error", "detail"}`
    bodies actually sent (Litestar would document its own 400 shape instead)."""
    return {
        status: ResponseSpec(
            ErrorBody, description=HTTPStatus(status).phrase, generate_examples=False
        )
        for status in statuses
    }


MANAGEMENT_ERRORS = error_responses(400, 401, 403, 404, 409, 413, 422, 429, 503)

EXCEPTION_HANDLERS: dict[Any, Any] = {
    errors.FnhostError: handle_fnhost_error,
    ValidationException: handle_validation_error,
    HTTPException: handle_http_exception,
    Exception: handle_unexpected,
}
