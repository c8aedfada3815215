"""End-user tokens of WebSocket connections: which mode applies to an app, and whose keys
verify a token. The verified claims reach every function the connection triggers as
ctx.user.

The mode is `[trigger.websocket] auth`, raised to "required" for an app whose settings
say `websocket.requireToken`. A token is verified with the app's own keys through the
core's end-user verifier (`platform.end_users`), the one that checks http triggers' tokens.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from fnhost.platform import Platform
    from fnhost_ws.trigger import WebSocketConfig

Mode = Literal["none", "optional", "required"]


class ConnectionAuth:
    def __init__(self, config: WebSocketConfig, platform: Platform) -> None:
        self._config = config
        self._platform = platform

    async def user_of(self, app_id: str, token: str | None) -> dict[str, Any] | None:
        """ctx.user of a new connection: the token's claims, or None for an anonymous one.

        Raise `Unauthenticated` (saying why) when the app requires a valid token.
        """
        return await self._platform.end_users.user_for_token(
            app_id,
            token,
            await self.mode_of(app_id),
            missing="an end-user token is required: Authorization: Bearer <token> or ?token=",
        )

    async def mode_of(self, app_id: str) -> Mode:
        if self._config.auth == "required":
            return "required"
        app = await self._platform.store.get_app(app_id)
        settings = app.settings.get("websocket") if app is not None else None
        if isinstance(settings, dict) and settings.get("requireToken"):
            return "required"
        return self._config.auth


def token_of(authorization: str | None, query_token: str | None) -> str | None:
    """The token of `Authorization: Bearer <token>`, else of `?token=` (browsers cannot set
    headers on a WebSocket)."""
    if authorization:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    return query_token or None
