"""Env vars: encrypted at rest, merged by PATCH, visible only to their own function."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from tests.conftest import Api

READ_ENV = """export default (req, ctx) => Response.json({
  ctx: ctx.env,
  deno: { A: Deno.env.get('A') ?? null, B: Deno.env.get('B') ?? null },
})"""


async def test_patch_merges_and_null_removes(api: Api) -> None:
    await api.deploy("env", READ_ENV, expect=201, envVars={"A": "alpha", "B": "beta"})
    assert (await api.call("env")).json()["ctx"] == {"A": "alpha", "B": "beta"}
    patched = await api.patch_env("env", {"B": None, "C": "gamma"})
    assert patched.status_code == 200, patched.text
    assert patched.json()["envVarNames"] == ["A", "C"]
    assert "alpha" not in patched.text and "gamma" not in patched.text
    # Takes effect on the very next call, on the same version.
    seen = (await api.call("env")).json()
    assert seen["ctx"] == {"A": "alpha", "C": "gamma"}
    assert seen["deno"] == {"A": "alpha", "B": None}
    details = (await api.get("/functions/env")).json()
    assert details["version"] == 1 and details["envVarNames"] == ["A", "C"]


async def test_bad_patches_are_rejected_and_change_nothing(api: Api) -> None:
    await api.deploy("env", READ_ENV, expect=201, envVars={"A": "alpha"})
    for body, status in (({"1X": "v"}, 422), ({"A": 5}, 422), ({"A-B": "v"}, 422)):
        response = await api.patch_env("env", body)
        assert response.status_code == status, (body, response.text)
    not_object = await api.client.patch(
        "/v1/demo/functions/env/env",
        content=b"[1]",
        headers={**api.headers, "content-type": "application/json"},
    )
    assert not_object.status_code == 400
    assert (await api.call("env")).json()["ctx"] == {"A": "alpha"}


async def test_function_sees_only_its_own_env(api: Api) -> None:
    await api.deploy("mine", READ_ENV, expect=201, envVars={"A": "mine-secret"})
    probe = """export default () => {
      const out = {};
      for (const key of ['A', 'PATH', 'HOME', 'FNHOST_SERVER__ADMIN_KEY']) {
        try { out[key] = Deno.env.get(key) ?? null; } catch (e) { out[key] = e.name; }
      }
      return Response.json(out);
    }"""
    await api.deploy("other", probe, expect=201, envVars={"B": "b"})
    seen = (await api.call("other")).json()
    assert seen["A"] in (None, "NotCapable") and "mine-secret" not in str(seen)
    assert seen["PATH"] in (None, "NotCapable") and seen["HOME"] in (None, "NotCapable")


async def test_raw_database_holds_no_plaintext_value(api: Api, tmp_path: Path) -> None:
    secret = "plaintext-canary-7f3a9c"
    await api.deploy("canary", READ_ENV, expect=201, envVars={"A": secret})
    await api.patch_env("canary", {"B": secret + "-patched"})
    assert (await api.call("canary")).json()["ctx"]["A"] == secret
    db = tmp_path / "data" / "fnhost.db"
    raw = db.read_bytes()
    for extra in (db.with_name("fnhost.db-wal"),):
        if extra.exists():
            raw += extra.read_bytes()
    assert secret.encode() not in raw
    with sqlite3.connect(db) as connection:
        dump = "\n".join(connection.iterdump())
    assert secret not in dump and "canary" in dump


async def test_env_values_never_appear_in_responses_or_logs(api: Api) -> None:
    secret = "never-show-me-51d2"
    code = "export default () => new Response('done')"
    await api.deploy("quiet", code, expect=201, envVars={"TOKEN": secret})
    responses = [
        await api.get("/functions"),
        await api.get("/functions/quiet"),
        await api.invoke("quiet"),
        await api.get("/functions/quiet/logs"),
        await api.patch_env("quiet", {"OTHER": "x"}),
    ]
    for response in responses:
        assert secret not in response.text
