"""Entry point of the fnhost-deno distribution: registers the "deno" runtime."""

from __future__ import annotations

from fnhost import hookimpl
from fnhost.contracts import Runtime
from fnhost_deno.runtime import DenoRuntime


@hookimpl
def fnhost_runtimes() -> list[type[Runtime]]:
    return [DenoRuntime]
