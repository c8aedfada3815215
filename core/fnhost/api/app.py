"""The Litestar app factory."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from litestar import Litestar, get
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme

from fnhost import __version__
from fnhost.api.apps import AppSettingsController
from fnhost.api.calls import StreamCutLogFilter, call_function, call_function_path
from fnhost.api.errors import EXCEPTION_HANDLERS
from fnhost.api.functions import FunctionsController
from fnhost.config import Config, load_config
from fnhost.platform import Platform

OnReady = Callable[[Platform, str | None], None]


@get("/health", summary="Liveness", tags=["health"], include_in_schema=True)
async def health() -> dict[str, str]:
    return {"status": "ok"}


def create_app(
    platform: Platform | None = None,
    config: Config | None = None,
    on_ready: OnReady | None = None,
) -> Litestar:
    """Build the app. The platform starts with the app's lifespan and stops with it.

    `on_ready(platform, generated_admin_key)` runs once everything is started; the
    key is set only on the start that generated it.
    """
    platform = platform or Platform(config or load_config())
    server_log = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, StreamCutLogFilter) for f in server_log.filters):
        server_log.addFilter(StreamCutLogFilter())

    @asynccontextmanager
    async def lifespan(_: Litestar) -> AsyncIterator[None]:
        await platform.start()
        try:
            generated = await platform.keys.ensure_admin_key()
            if on_ready is not None:
                on_ready(platform, generated)
            yield
        finally:
            await platform.stop()

    plugin_routes: list[Any] = [
        handler
        for handlers in platform.pm.hook.fnhost_routes(app_config=platform.config)
        for handler in handlers or []
    ]
    app = Litestar(
        route_handlers=[
            health,
            FunctionsController,
            AppSettingsController,
            call_function,
            call_function_path,
            *plugin_routes,
        ],
        lifespan=[lifespan],
        exception_handlers=EXCEPTION_HANDLERS,
        request_max_body_size=platform.config.server.max_body_bytes,
        openapi_config=OpenAPIConfig(
            title="fnhost",
            version=__version__,
            path="/schema",
            render_plugins=[SwaggerRenderPlugin()],
            components=Components(
                security_schemes={
                    "bearer": SecurityScheme(
                        type="http",
                        scheme="bearer",
                        description="The admin key or an API key of the app",
                    )
                }
            ),
        ),
        debug=False,
    )
    app.state.platform = platform
    return app
