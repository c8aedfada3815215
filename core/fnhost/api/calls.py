"""Public calls: ANY /v1/{app_id}/fn/{name}[/{path}] runs a function with an http trigger.

No management key is needed; the caller's Authorization header reaches the
function as is (end-user tokens are the function's business).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any

import msgspec
from litestar import Request, route
from litestar.enums import HttpMethod
from litestar.openapi import ResponseSpec
from litestar.params import FromPath
from litestar.response.base import ASGIResponse
from litestar.response.streaming import ASGIStreamingResponse

from fnhost.api.state import platform_of
from fnhost.errors import NotFound, TooLarge
from fnhost.models import InvocationRequest, InvocationResult
from fnhost.names import check_app_id
from fnhost.service import new_invocation_id

# Hop-by-hop headers (RFC 9110 7.6.1) belong to one connection, not to the function.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# Set by fnhost from the connection; what a caller sends under these names is replaced.
FORWARDED = frozenset({"x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"})
NOT_FORWARDED = HOP_BY_HOP | FORWARDED
FAILURE_MESSAGES = {
    "error": "the function threw an error",
    "bad_return": "the function did not return a Response",
    "timeout": "the function timed out",
    "memory": "memory limit exceeded",
    "crash": "the function's worker failed",
}
ALL_METHODS = [
    HttpMethod.GET,
    HttpMethod.POST,
    HttpMethod.PUT,
    HttpMethod.PATCH,
    HttpMethod.DELETE,
    HttpMethod.OPTIONS,
    HttpMethod.HEAD,
]


PUBLIC_CALL = {
    "http_method": ALL_METHODS,
    "tags": ["calls"],
    "summary": "Call a deployed function (any method); the request reaches it as is",
    # The function's own status, headers and body; fnhost's errors (invalid app id, no
    # such function, ...) share statuses with the function's, so no body shape is declared.
    "status_code": 200,
    "response_description": "The function's response",
    "responses": {400: ResponseSpec(None, description="An invalid app id, or the function's 400")},
}


@route("/v1/{app_id:str}/fn/{name:str}", **PUBLIC_CALL)  # type: ignore[arg-type]
async def call_function(
    request: Request[Any, Any, Any], app_id: FromPath[str], name: FromPath[str]
) -> ASGIResponse:
    return await run_public_call(request, app_id, name, "/")


@route("/v1/{app_id:str}/fn/{name:str}/{subpath:path}", **PUBLIC_CALL)  # type: ignore[arg-type]
async def call_function_path(
    request: Request[Any, Any, Any],
    app_id: FromPath[str],
    name: FromPath[str],
    subpath: FromPath[str],
) -> ASGIResponse:
    return await run_public_call(request, app_id, name, subpath)


async def run_public_call(
    request: Request[Any, Any, Any], app_id: str, name: str, subpath: str
) -> ASGIResponse:
    platform = platform_of(request)
    check_app_id(app_id)
    platform.call_limiter.acquire(app_id, f"calls of app {app_id!r}")
    function = await platform.service.resolve(app_id, name)
    http = function.trigger_of("http")
    if http is None:
        raise NotFound(f"function {name!r} has no http trigger")
    method = request.method.upper()
    allowed = http.config.get("method")
    if allowed and method != allowed:
        return json_response(
            405,
            {"error": f"method {method} not allowed; this function accepts {allowed}"},
            [("allow", allowed)],
        )
    user = await platform.end_users.user_of(
        app_id, request.headers.get("authorization"), http.config.get("auth", "none")
    )
    limit = platform.config.server.max_body_bytes
    body = await request.body()
    if len(body) > limit:
        raise TooLarge(f"request body larger than {limit} bytes")
    path = subpath if subpath.startswith("/") else "/" + subpath
    invocation = InvocationRequest(
        invocation_id=new_invocation_id(),
        method=method,
        url=_function_url(request, path),
        headers=_forwarded_headers(request),
        body=body,
        trigger={"type": "http"},
        user=user,
    )
    result, record = await platform.service.invoke(
        function, invocation, trigger="http", path=path, buffer=method == "HEAD"
    )
    if result.outcome != "ok":
        return json_response(
            record.status_code,
            {"error": FAILURE_MESSAGES[result.outcome], "detail": {"invocationId": record.id}},
        )
    headers = [
        (k, v)
        for k, v in result.headers
        if k.lower() not in HOP_BY_HOP and k.lower() != "content-length"
    ]
    if result.stream is not None:
        # Headers given to the constructor win over media_type (set only when absent).
        return ASGIStreamingResponse(
            iterator=_cut_on_failure(result, record.id),
            status_code=result.status_code,
            headers=headers,  # type: ignore[arg-type]  # a list keeps repeated headers
            media_type="application/octet-stream",
            is_head_response=method == "HEAD",
        )
    return ASGIResponse(
        body=b"" if method == "HEAD" else result.body,
        status_code=result.status_code,
        headers=headers,
        media_type="application/octet-stream",  # only when the function set no Content-Type
        is_head_response=method == "HEAD",
    )


def json_response(
    status: int, body: dict[str, Any], headers: list[tuple[str, str]] | None = None
) -> ASGIResponse:
    return ASGIResponse(
        body=msgspec.json.encode(body),
        status_code=status,
        headers=headers,
        media_type="application/json",
    )


def _function_url(request: Request[Any, Any, Any], path: str) -> str:
    host = request.headers.get("host", "localhost")
    query = request.scope.get("query_string", b"").decode("latin-1")
    return f"{request.url.scheme}://{host}{path}" + (f"?{query}" if query else "")


def _forwarded_headers(request: Request[Any, Any, Any]) -> list[tuple[str, str]]:
    headers = [
        (name, value.decode("latin-1"))
        for key, value in request.scope["headers"]
        if (name := key.decode("latin-1")).lower() not in NOT_FORWARDED
    ]
    client = request.client.host if request.client else ""
    prior = request.headers.get("x-forwarded-for")
    headers.append(("x-forwarded-for", f"{prior}, {client}" if prior else client))
    headers.append(("x-forwarded-proto", request.url.scheme))
    headers.append(("x-forwarded-host", request.headers.get("host", "")))
    return headers


class StreamCut(Exception):
    """A streamed body the function did not finish: it threw, timed out or its worker
    died after the status line was sent. Raised after the last chunk so that the server
    closes the connection without the final chunk: the caller sees a truncated body as
    truncated, never as a whole one."""


async def _cut_on_failure(result: InvocationResult, invocation_id: str) -> AsyncIterator[bytes]:
    assert result.stream is not None
    async for chunk in result.stream:
        yield chunk
    if result.outcome != "ok":  # final once the stream has ended
        raise StreamCut(
            f"response stream of invocation {invocation_id} cut: {FAILURE_MESSAGES[result.outcome]}"
        )


ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]


class StreamCutLogFilter(logging.Filter):
    """The server logs an exception escaping the app with its traceback; a `StreamCut` is
    expected (its invocation record has the details), so it becomes one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        cut = _stream_cut_in(record.exc_info)
        if cut is not None:
            record.msg, record.args = "%s", (str(cut),)
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


def _stream_cut_in(exc_info: ExcInfo | tuple[None, None, None] | None) -> StreamCut | None:
    """The StreamCut behind a logged exception: Litestar wraps it in its own exception,
    raised from the group of the task that streamed."""
    pending = [exc_info[1]] if exc_info and exc_info[1] is not None else []
    for _ in range(10):
        if not pending:
            return None
        error = pending.pop()
        if isinstance(error, StreamCut):
            return error
        if isinstance(error, BaseExceptionGroup):
            pending.extend(error.exceptions)
        cause = error.__cause__ or error.__context__
        if cause is not None:
            pending.append(cause)
    return None
