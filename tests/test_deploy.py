"""Deploy, list, details and delete through the REST API."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import HELLO, Api

SEED = {
    "description": "A simple greeting function",
    "trigger": {"type": "http", "config": {}},
    "envVars": {"API_KEY": "secret123"},
    "timeoutMs": 30000,
    "memoryLimitMb": 128,
}


async def test_seed_deploy_then_call(api: Api) -> None:
    created = await api.deploy("hello-world", HELLO, expect=201, **SEED)
    body = created.json()
    assert body["name"] == "hello-world"
    assert body["description"] == "A simple greeting function"
    assert body["version"] == 1
    assert body["envVarNames"] == ["API_KEY"]
    assert "secret123" not in created.text
    assert body["trigger"] == {"type": "http", "config": {"auth": "none", "method": None}}
    assert body["triggers"] == [body["trigger"]]
    assert body["timeoutMs"] == 30000 and body["memoryLimitMb"] == 128
    assert body["url"].endswith("/v1/demo/fn/hello-world")
    assert body["createdAt"].endswith("Z") and body["updatedAt"].endswith("Z")

    called = await api.call("hello-world")
    assert called.status_code == 200
    assert called.json() == {"message": "Hello!"}
    assert called.headers["content-type"] == "application/json"


async def test_redeploy_updates_with_200_and_bumps_version(api: Api) -> None:
    await api.deploy("fn", HELLO, expect=201)
    updated = await api.deploy("fn", "export default () => new Response('v2')", expect=200)
    assert updated.json()["version"] == 2
    assert updated.json()["createdAt"] <= updated.json()["updatedAt"]
    assert (await api.call("fn")).text == "v2"


async def test_redeploy_without_env_vars_keeps_env(api: Api) -> None:
    code = "export default (req, ctx) => new Response(ctx.env.TOKEN ?? 'none')"
    await api.deploy("keep", code, expect=201, envVars={"TOKEN": "t1"})
    await api.deploy("keep", code + "\n", expect=200)
    assert (await api.call("keep")).text == "t1"
    await api.deploy("keep", code, expect=200, envVars={})
    assert (await api.call("keep")).text == "none"


async def test_list_has_no_code_and_details_have_code_and_metrics(api: Api) -> None:
    await api.deploy("b-fn", HELLO, expect=201)
    await api.deploy("a-fn", HELLO, expect=201, description="first")
    listed = await api.get("/functions")
    assert listed.status_code == 200
    functions = listed.json()["functions"]
    assert [f["name"] for f in functions] == ["a-fn", "b-fn"]
    assert all("code" not in f for f in functions)
    details = (await api.get("/functions/a-fn")).json()
    assert details["code"] == HELLO
    assert details["metrics"] == {
        "total_invocations": 0,
        "error_count": 0,
        "error_rate": 0.0,
        "avg_duration_ms": 0.0,
        "p50_duration_ms": 0.0,
        "p95_duration_ms": 0.0,
        "last_invocation": None,
    }


async def test_apps_are_separate_namespaces(api: Api) -> None:
    await api.deploy("same", HELLO, expect=201)
    other = Api(api.client, "other-app")
    await other.deploy("same", "export default () => new Response('other')", expect=201)
    assert (await api.call("same")).json() == {"message": "Hello!"}
    assert (await other.call("same")).text == "other"
    assert [f["name"] for f in (await other.get("/functions")).json()["functions"]] == ["same"]


async def test_delete_removes_function_logs_and_calls(api: Api) -> None:
    await api.deploy("gone", HELLO, expect=201)
    assert (await api.call("gone")).status_code == 200
    deleted = await api.delete("/functions/gone")
    assert deleted.status_code == 204 and deleted.content == b""
    assert (await api.get("/functions/gone")).status_code == 404
    assert (await api.get("/functions/gone/logs")).status_code == 404
    assert (await api.call("gone")).status_code == 404
    again = await api.delete("/functions/gone")
    assert again.status_code == 404 and again.json()["error"]
    # A new function of that name starts from scratch: version 1, no old logs.
    recreated = await api.deploy("gone", HELLO, expect=201)
    assert recreated.json()["version"] == 1
    assert await api.logs("gone") == []


async def test_cron_and_websocket_triggers_are_stored(api: Api) -> None:
    triggers = [
        {"type": "http", "config": {"auth": "optional"}},
        {"type": "cron", "config": {"schedule": "*/5 * * * *", "timezone": "Europe/Berlin"}},
        {"type": "websocket", "config": {"event": "chat_message"}},
    ]
    body = (await api.deploy("multi", HELLO, expect=201, triggers=triggers)).json()
    assert [t["type"] for t in body["triggers"]] == ["http", "cron", "websocket"]
    assert body["triggers"][1]["config"] == triggers[1]["config"]
    assert body["triggers"][2]["config"] == {"event": "chat_message"}
    cron_only = await api.deploy(
        "tick", HELLO, expect=201, trigger={"type": "cron", "config": {"schedule": "0 * * * * *"}}
    )
    assert cron_only.json()["trigger"]["config"] == {"schedule": "0 * * * * *", "timezone": "UTC"}
    assert cron_only.json()["url"] is None
    # No http trigger: not callable over /fn/.
    assert (await api.call("tick")).status_code == 404


async def test_code_check_reports_syntax_error_with_line(api: Api) -> None:
    bad = "export default async function handler(req) {\n  const x = ;\n  return new Response();\n}"
    response = await api.deploy("broken", bad, expect=400)
    error = response.json()["error"]
    assert "handler.ts:2" in error, error
    assert "/tmp" not in error and ".fnhost" not in error
    assert (await api.get("/functions/broken")).status_code == 404


async def test_code_check_requires_default_export_function(api: Api) -> None:
    response = await api.deploy(
        "nodefault", "export const handler = () => new Response('x')", expect=400
    )
    assert "default export" in response.json()["error"]
    await api.deploy("notfn", "export default 42", expect=400)


async def test_failed_redeploy_keeps_the_running_version(api: Api) -> None:
    await api.deploy("stable", HELLO, expect=201)
    await api.deploy("stable", "export default function (", expect=400)
    await api.deploy("stable", HELLO, expect=422, timeoutMs=0)
    details = (await api.get("/functions/stable")).json()
    assert details["version"] == 1 and details["code"] == HELLO
    assert (await api.call("stable")).status_code == 200


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"code": HELLO}, 400, "name"),
        ({"name": "x"}, 400, "code"),
        ({"name": "", "code": HELLO}, 422, "name"),
        ({"name": "-starts-with-dash", "code": HELLO}, 422, "name"),
        ({"name": "a" * 101, "code": HELLO}, 422, "name"),
        ({"name": "has space", "code": HELLO}, 422, "name"),
        ({"name": "ok", "code": ""}, 422, "code"),
        ({"name": 5, "code": HELLO}, 422, "name"),
        ({"name": "ok", "code": HELLO, "timeoutMs": 0}, 422, "timeoutMs"),
        ({"name": "ok", "code": HELLO, "timeoutMs": 300001}, 422, "timeoutMs"),
        ({"name": "ok", "code": HELLO, "memoryLimitMb": 63}, 422, "memoryLimitMb"),
        ({"name": "ok", "code": HELLO, "memoryLimitMb": 1025}, 422, "memoryLimitMb"),
        ({"name": "ok", "code": HELLO, "envVars": {"1BAD": "x"}}, 422, "envVars.1BAD"),
        ({"name": "ok", "code": HELLO, "envVars": {"A": 1}}, 422, "envVars"),
        ({"name": "ok", "code": HELLO, "trigger": {"type": "smtp"}}, 422, "trigger.type"),
        (
            {"name": "ok", "code": HELLO, "trigger": {"type": "cron", "config": {}}},
            422,
            "trigger.config.schedule",
        ),
        (
            {
                "name": "ok",
                "code": HELLO,
                "trigger": {"type": "cron", "config": {"schedule": "61 * * * *"}},
            },
            422,
            "trigger.config.schedule",
        ),
        (
            {
                "name": "ok",
                "code": HELLO,
                "trigger": {"type": "cron", "config": {"schedule": "* * *"}},
            },
            422,
            "trigger.config.schedule",
        ),
        (
            {
                "name": "ok",
                "code": HELLO,
                "trigger": {
                    "type": "cron",
                    "config": {"schedule": "* * * * *", "timezone": "Mars/Base"},
                },
            },
            422,
            "trigger.config.timezone",
        ),
        (
            {"name": "ok", "code": HELLO, "trigger": {"type": "websocket", "config": {}}},
            422,
            "trigger.config.event",
        ),
        (
            {"name": "ok", "code": HELLO, "trigger": {"type": "http", "config": {"auth": "maybe"}}},
            422,
            "trigger.config.auth",
        ),
        ({"name": "ok", "code": HELLO, "triggers": []}, 422, "triggers"),
        (
            {"name": "ok", "code": HELLO, "triggers": [{"type": "http"}, {"type": "http"}]},
            422,
            "triggers[1].type",
        ),
    ],
)
async def test_bad_deploy_is_rejected_and_changes_nothing(
    api: Api, body: dict[str, Any], status: int, field: str
) -> None:
    response = await api.client.post("/v1/demo/functions", json=body, headers=api.headers)
    assert response.status_code == status, response.text
    error = response.json()
    assert field in error["error"], error
    assert (await api.get("/functions")).json() == {"functions": []}


@pytest.mark.parametrize("raw", [b"{not json", b"[]", b'"text"', b""])
async def test_malformed_body_is_400(api: Api, raw: bytes) -> None:
    response = await api.client.post(
        "/v1/demo/functions",
        content=raw,
        headers={**api.headers, "content-type": "application/json"},
    )
    assert response.status_code == 400, response.text
    assert set(response.json()) <= {"error", "detail"}


async def test_bad_app_id_is_400(api: Api) -> None:
    response = await api.client.get("/v1/bad.app!/functions", headers=api.headers)
    assert response.status_code == 400
    assert "app id" in response.json()["error"]


async def test_unknown_function_is_404(api: Api) -> None:
    for response in (
        await api.get("/functions/nope"),
        await api.get("/functions/nope/logs"),
        await api.patch_env("nope", {"A": "b"}),
        await api.invoke("nope"),
        await api.call("nope"),
    ):
        assert response.status_code == 404, response.text
        assert "nope" in response.json()["error"]


async def test_openapi_schema_lists_every_route(api: Api) -> None:
    schema = (await api.client.get("/schema/openapi.json")).json()
    paths = schema["paths"]
    for path in (
        "/v1/{app_id}/functions",
        "/v1/{app_id}/functions/{name}",
        "/v1/{app_id}/functions/{name}/invoke",
        "/v1/{app_id}/functions/{name}/logs",
        "/v1/{app_id}/functions/{name}/env",
        "/v1/{app_id}/fn/{name}",
    ):
        assert path in paths, sorted(paths)
