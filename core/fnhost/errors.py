"""The exceptions of fnhost. Each is mapped to an HTTP status once, in the API layer.

Plugins raise these (never HTTP codes); the core turns them into JSON errors.
"""

from typing import Any


class FnhostError(Exception):
    """Base of every error fnhost reports to a user."""

    def __init__(self, message: str, detail: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail


class BadInput(FnhostError):
    """The request cannot be understood (malformed JSON, missing field, bad code)."""


class InvalidField(FnhostError):
    """A field is present but its value is not acceptable."""


class Unauthenticated(FnhostError):
    """No credentials, or credentials that match nothing."""


class Forbidden(FnhostError):
    """Valid credentials that do not grant access to this resource."""


class NotFound(FnhostError):
    """The app, function or route does not exist."""


class Conflict(FnhostError):
    """The request conflicts with the current state (a concurrent change)."""


class TooLarge(FnhostError):
    """A body, code or value exceeds a configured limit."""


class RateLimited(FnhostError):
    """Too many requests; retry after `retry_after` seconds."""

    def __init__(self, message: str, retry_after: float, detail: Any = None) -> None:
        super().__init__(message, detail)
        self.retry_after = retry_after


class Unavailable(FnhostError):
    """A dependency (store, runtime engine) cannot be reached right now."""


class ConfigError(FnhostError):
    """The configuration is invalid; start-up stops with this one-line message."""


class PluginError(FnhostError):
    """Plugins are missing, duplicated or broken; start-up stops with this message."""


class CodeCheckFailed(BadInput):
    """A runtime refused a function's code (syntax error, no default-export function)."""
