"""The fnhost Deno worker, shared by every runtime that runs functions in Deno.

A library, not a plugin (it registers nothing): the "deno" runtime runs the bootstrap as
a local process, the "docker" runtime inside a container, and both talk to it through
`protocol` and keep their calls in a `calls.CallTable`, so a function sees the same
Request, ctx, console and errors whichever runtime runs it.
"""

from pathlib import Path

BOOTSTRAP = Path(__file__).resolve().with_name("bootstrap.ts")
