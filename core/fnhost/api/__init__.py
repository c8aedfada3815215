"""The REST API: a Litestar app built by `create_app`."""

from fnhost.api.app import create_app

__all__ = ["create_app"]
