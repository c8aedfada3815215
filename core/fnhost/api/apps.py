"""App settings: end-user token verification and WebSocket policy, per app."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec
from litestar import Controller, Request, get, put
from litestar.params import FromPath, JSONBody

from fnhost.api.auth import require_app_access
from fnhost.api.errors import MANAGEMENT_ERRORS
from fnhost.api.state import platform_of
from fnhost.enduser import public_view
from fnhost.models import App
from fnhost.names import check_app_id
from fnhost.schemas import AppSettingsRequest, AppSettingsView


class AppSettingsController(Controller):
    path = "/v1/{app_id:str}/settings"
    guards = [require_app_access]
    tags = ["apps"]
    security = [{"bearer": []}]

    @get("/", summary="An app's settings (secrets are never returned)", responses=MANAGEMENT_ERRORS)
    async def read(self, request: Request[Any, Any, Any], app_id: FromPath[str]) -> AppSettingsView:
        app = await platform_of(request).store.get_app(check_app_id(app_id))
        return settings_view(app_id, app.settings if app else {})

    @put(
        "/",
        summary="Replace an app's settings; an omitted jwtSecret keeps the current one",
        responses=MANAGEMENT_ERRORS,
    )
    async def replace(
        self,
        request: Request[Any, Any, Any],
        app_id: FromPath[str],
        data: JSONBody[AppSettingsRequest],
    ) -> AppSettingsView:
        platform = platform_of(request)
        store = platform.store
        app = await store.get_app(check_app_id(app_id))
        current = dict(app.settings) if app else {}
        settings = dict(current)
        if data.auth is not None:
            settings["auth"] = platform.end_users.to_stored(data.auth, current.get("auth", {}))
        if data.websocket is not None:
            settings["websocket"] = msgspec.to_builtins(data.websocket)
        await store.save_app(
            App(
                id=app_id,
                created_at=app.created_at if app else datetime.now(UTC),
                settings=settings,
            )
        )
        platform.end_users.forget(app_id)
        return settings_view(app_id, settings)


def settings_view(app_id: str, settings: dict[str, Any]) -> AppSettingsView:
    return AppSettingsView(
        app_id=app_id,
        auth=public_view(settings.get("auth", {})),
        websocket=settings.get("websocket", {"requireToken": False}),
    )
