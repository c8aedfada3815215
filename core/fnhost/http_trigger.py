"""The built-in "http" trigger: a function is called at /v1/{app_id}/fn/{name}."""

from __future__ import annotations

from typing import Literal

import msgspec

from fnhost.contracts import Trigger
from fnhost.hookspecs import hookimpl

HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


class HttpTriggerConfig(msgspec.Struct, forbid_unknown_fields=True):
    # Accept only this method (any when None).
    method: Literal["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"] | None = None
    auth: Literal["none", "optional", "required"] = "none"


class HttpTrigger(Trigger):
    name = "http"
    TriggerConfig = HttpTriggerConfig


@hookimpl
def fnhost_triggers() -> list[type[Trigger]]:
    return [HttpTrigger]
