"""Management routes: /v1/{app_id}/functions[...] (admin key or that app's key)."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any
from urllib.parse import urlencode

import msgspec
from litestar import Controller, Request, Response, delete, get, patch, post
from litestar.openapi import ResponseSpec
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter

from fnhost.api.auth import require_app_access
from fnhost.api.errors import MANAGEMENT_ERRORS
from fnhost.api.state import platform_of
from fnhost.api.views import body_text, function_view, log_line_views, record_view
from fnhost.errors import InvalidField
from fnhost.models import InvocationRequest, LogQuery
from fnhost.schemas import (
    DeployRequest,
    FunctionList,
    FunctionView,
    InvokeRequest,
    InvokeResponse,
    LogList,
)
from fnhost.service import new_invocation_id

Request_ = Request[Any, Any, Any]
HTTP_METHOD = re.compile(r"[!#$%&'*+.^_`|~0-9A-Z-]{1,16}")  # RFC 9110 token (upper-cased)
AppId = FromPath[str]
Name = FromPath[str]


class FunctionsController(Controller):
    path = "/v1/{app_id:str}/functions"
    guards = [require_app_access]
    tags = ["functions"]
    security = [{"bearer": []}]

    @post(
        "/",
        summary="Deploy or update a function",
        status_code=200,
        responses={201: ResponseSpec(FunctionView, description="Created"), **MANAGEMENT_ERRORS},
    )
    async def deploy(
        self, request: Request_, app_id: AppId, data: JSONBody[DeployRequest]
    ) -> Response[FunctionView]:
        platform = platform_of(request)
        function, created = await platform.service.deploy(app_id, data)
        view = function_view(platform, function, str(request.base_url), with_code=True)
        return Response(view, status_code=201 if created else 200)

    @get("/", summary="List functions (without code)", responses=MANAGEMENT_ERRORS)
    async def list_functions(self, request: Request_, app_id: AppId) -> FunctionList:
        platform = platform_of(request)
        functions = await platform.service.list_functions(app_id)
        base = str(request.base_url)
        return FunctionList([function_view(platform, f, base) for f in functions])

    @get(
        "/{name:str}",
        summary="Function details, with code and metrics",
        responses=MANAGEMENT_ERRORS,
    )
    async def details(self, request: Request_, app_id: AppId, name: Name) -> FunctionView:
        platform = platform_of(request)
        function = await platform.service.get(app_id, name)
        metrics = await platform.service.metrics(app_id, name)
        return function_view(
            platform, function, str(request.base_url), with_code=True, metrics=metrics
        )

    @delete(
        "/{name:str}",
        summary="Delete a function with its versions, env vars and logs",
        responses=MANAGEMENT_ERRORS,
    )
    async def remove(self, request: Request_, app_id: AppId, name: Name) -> None:
        await platform_of(request).service.delete(app_id, name)

    @patch(
        "/{name:str}/env",
        summary="Merge env vars; a null value removes a key",
        responses=MANAGEMENT_ERRORS,
    )
    async def patch_env(
        self,
        request: Request_,
        app_id: AppId,
        name: Name,
        data: JSONBody[dict[str, str | None]],
    ) -> FunctionView:
        platform = platform_of(request)
        function = await platform.service.patch_env(app_id, name, data)
        return function_view(platform, function, str(request.base_url))

    @get("/{name:str}/logs", summary="Invocation logs, newest first", responses=MANAGEMENT_ERRORS)
    async def logs(
        self,
        request: Request_,
        app_id: AppId,
        name: Name,
        limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 50,
        since: FromQuery[datetime | None] = None,
        level: Annotated[str, QueryParameter(pattern="^(info|error)$")] = "info",
    ) -> LogList:
        if since is not None and since.tzinfo is None:
            raise InvalidField(
                "since: expected an ISO 8601 time with a timezone (e.g. Z)", {"field": "since"}
            )
        query = LogQuery(limit=limit, since=since, level=level)  # type: ignore[arg-type]
        records = await platform_of(request).service.logs(app_id, name, query)
        return LogList([record_view(r) for r in records])

    @post(
        "/{name:str}/invoke",
        summary="Test-invoke a function (any trigger type)",
        status_code=200,
        responses=MANAGEMENT_ERRORS,
    )
    async def invoke(
        self, request: Request_, app_id: AppId, name: Name, data: JSONBody[InvokeRequest]
    ) -> InvokeResponse:
        platform = platform_of(request)
        function = await platform.service.get(app_id, name)
        path = data.path if data.path.startswith("/") else "/" + data.path
        query = data.query if isinstance(data.query, str) else urlencode(data.query or {})
        headers = {k.lower(): v for k, v in data.headers.items()}
        body = _test_body(data.body, headers)
        method = data.method.upper()
        if not HTTP_METHOD.fullmatch(method):
            raise InvalidField(
                "method: expected an HTTP method (a token of 1-16 characters)", {"field": "method"}
            )
        if method in ("GET", "HEAD") and body:
            raise InvalidField("body: a GET or HEAD request cannot have a body", {"field": "body"})
        first = function.triggers[0]
        host = request.headers.get("host", "localhost")
        invocation = InvocationRequest(
            invocation_id=new_invocation_id(),
            method=method,
            url=f"{request.url.scheme}://{host}{path}" + (f"?{query.lstrip('?')}" if query else ""),
            headers=list(headers.items()),
            body=body,
            trigger={"type": first.type, **first.config, "test": True},
        )
        result, record = await platform.service.invoke(
            function, invocation, trigger="test", path=path
        )
        text, encoding = body_text(result.body)
        return InvokeResponse(
            status_code=record.status_code,
            headers=dict(result.headers),
            body=text if result.outcome == "ok" else "",
            body_encoding=encoding,
            duration_ms=record.duration_ms,
            memory_mb=record.memory_mb,
            error=record.error,
            logs=log_line_views(record.logs),
            invocation_id=record.id,
        )


def _test_body(body: Any, headers: dict[str, str]) -> bytes:
    if body is None:
        return b""
    if isinstance(body, str):
        return body.encode()
    headers.setdefault("content-type", "application/json")
    return msgspec.json.encode(body)
