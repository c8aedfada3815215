"""Where the API finds the platform: the Litestar app's state."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from litestar.connection import ASGIConnection

if TYPE_CHECKING:
    from fnhost.platform import Platform


def platform_of(connection: ASGIConnection[Any, Any, Any, Any]) -> Platform:
    return connection.app.state.platform  # type: ignore[no-any-return]
