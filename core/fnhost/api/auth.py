"""The management auth guard: `Authorization: Bearer <admin key | app key>`."""

from __future__ import annotations

from typing import Any

from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler

from fnhost.api.state import platform_of
from fnhost.names import check_app_id


async def require_app_access(
    connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler
) -> None:
    """401 without a valid key; 403 when an app key is used on another app."""
    platform = platform_of(connection)
    principal = await platform.keys.authenticate(connection.headers.get("authorization"))
    app_id = check_app_id(str(connection.path_params.get("app_id", "")))
    principal.require_app(app_id)
    platform.management_limiter.acquire(app_id, f"management calls of app {app_id!r}")
