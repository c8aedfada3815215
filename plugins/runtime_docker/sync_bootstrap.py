"""Copy the "deno" runtime's bootstrap into this plugin, with the docker runtime's edits.

    python plugins/runtime_docker/sync_bootstrap.py          # rewrite fnhost_docker/bootstrap.ts
    python plugins/runtime_docker/sync_bootstrap.py --check  # exit 1 when it is out of date

Both runtimes run the same bootstrap, so a function sees the same Request, ctx, console
and errors on both. A plugin may not import another, so the file is copied (a development
step, like code generation): the only edits are the header comment and `writeCode`, which
writes the code received in the init frame into the container's tmpfs before importing it.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE.parent / "runtime_deno" / "fnhost_deno" / "bootstrap.ts"
TARGET = HERE / "fnhost_docker" / "bootstrap.ts"
START = "import { AsyncLocalStorage }"
HERE_NAME = Path(__file__).name

HEADER = """\
// fnhost function container: loads one function revision and runs its invocations.
//
// GENERATED from the "deno" runtime's bootstrap by plugins/runtime_docker/sync_bootstrap.py
// (edit that one, then run the script): a function sees exactly the same Request, ctx,
// console and errors on both runtimes. The container's stdin/stdout, attached through the
// Docker engine, carry frames:
//   u32 BE header length | u32 BE body length | JSON header | raw body bytes
// so binary bodies travel untouched. Several invocations run at once, each tagged by an
// id; AsyncLocalStorage attributes console output to the invocation that made it.
//
// The code and the env vars arrive in the first frame (never on the container's command
// line or environment, which `docker inspect` would show); the code is written to the
// container's own tmpfs and write access is revoked before it is imported.
//
// Everything the function must not reach (the real stdin/stdout, Deno.exit, the process
// environment) is captured or replaced here before the function's module is imported.

"""

LOAD = "async function load(header: Header): Promise<void> {\n"
MODULE = "const moduleUrl = String(header.module);"
WRITE_CODE = """\
const CODE_DIR = "/tmp/fn";

function writeCode(code: string): string {
  Deno.mkdirSync(CODE_DIR, { recursive: true });
  Deno.writeTextFileSync(`${CODE_DIR}/handler.ts`, code);
  Deno.permissions.revokeSync({ name: "write" });
  return new URL(`file://${CODE_DIR}/handler.ts`).href;
}

"""


def docker_bootstrap(deno: str) -> str:
    """The docker runtime's bootstrap made from the deno runtime's."""
    if deno.count(LOAD) != 1 or deno.count(MODULE) != 1 or START not in deno:
        raise SystemExit(f"{SOURCE}: load() changed shape; update {Path(__file__).name}")
    body = deno[deno.index(START) :]
    body = body.replace(LOAD, WRITE_CODE + LOAD)
    body = body.replace(MODULE, "const moduleUrl = writeCode(String(header.code));")
    return HEADER + body


def main() -> None:
    wanted = docker_bootstrap(SOURCE.read_text())
    if "--check" in sys.argv[1:]:
        if TARGET.read_text() != wanted:
            sys.exit(f"{TARGET} is out of date: run python plugins/runtime_docker/{HERE_NAME}")
        return
    TARGET.write_text(wanted)
    print(f"wrote {TARGET}")


if __name__ == "__main__":
    main()
