"""Invocation logs (filters, fields) and metrics."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from tests.conftest import Api

FLAKY = """export default (req) => {
  const fail = new URL(req.url).searchParams.get('fail');
  console.info('call', fail);
  if (fail) throw new Error('asked to fail');
  return new Response('ok');
}"""


async def test_log_records_carry_every_field(api: Api) -> None:
    await api.deploy("flaky", FLAKY, expect=201)
    await api.call("flaky", "/a/b", method="POST")
    [record] = await api.logs("flaky")
    assert set(record) >= {
        "id",
        "timestamp",
        "trigger",
        "method",
        "path",
        "status_code",
        "duration_ms",
        "memory_mb",
        "error",
        "level",
        "logs",
    }
    assert record["trigger"] == "http" and record["method"] == "POST"
    assert record["path"] == "/a/b" and record["status_code"] == 200
    assert record["error"] is None and record["level"] == "info"
    assert record["duration_ms"] > 0 and record["memory_mb"] > 0
    assert record["logs"][0]["level"] == "info" and record["logs"][0]["message"] == "call null"
    datetime.fromisoformat(record["timestamp"])


async def test_logs_newest_first_with_limit_level_and_since(api: Api) -> None:
    await api.deploy("flaky", FLAKY, expect=201)
    for fail in ("", "1", "", "1", ""):
        await api.call("flaky", params={"fail": fail} if fail else None)
    records = await api.logs("flaky")
    assert len(records) == 5
    stamps = [r["timestamp"] for r in records]
    assert stamps == sorted(stamps, reverse=True)
    assert [r["status_code"] for r in records] == [200, 500, 200, 500, 200]
    assert len(await api.logs("flaky", limit=2)) == 2
    errors = await api.logs("flaky", level="error")
    assert len(errors) == 2 and all(r["error"] == "asked to fail" for r in errors)
    future = (datetime.now(UTC) + timedelta(minutes=1)).isoformat().replace("+00:00", "Z")
    assert await api.logs("flaky", since=future) == []
    assert len(await api.logs("flaky", since="2026-01-01T00:00:00Z")) == 5
    middle = records[2]["timestamp"]
    assert len(await api.logs("flaky", since=middle)) == 3


async def test_bad_log_queries_are_rejected(api: Api) -> None:
    await api.deploy("flaky", FLAKY, expect=201)
    for params in (
        {"limit": 0},
        {"limit": 1001},
        {"limit": "x"},
        {"level": "debug"},
        {"since": "yesterday"},
        {"since": "2026-01-01T00:00:00"},
    ):
        response = await api.get("/functions/flaky/logs", params=params)
        assert response.status_code in (400, 422), (params, response.text)
        assert "error" in response.json()


async def test_metrics_aggregate_invocations(api: Api) -> None:
    await api.deploy("flaky", FLAKY, expect=201)
    for fail in ("", "", "", "1"):
        await api.call("flaky", params={"fail": fail} if fail else None)
    metrics = (await api.get("/functions/flaky")).json()["metrics"]
    assert metrics["total_invocations"] == 4
    assert metrics["error_count"] == 1
    assert metrics["error_rate"] == 25.0
    assert metrics["avg_duration_ms"] > 0
    assert 0 < metrics["p50_duration_ms"] <= metrics["p95_duration_ms"]
    assert metrics["last_invocation"].endswith("Z")


async def test_log_retention_keeps_the_newest_records(api: Api, platform: Any) -> None:
    await api.deploy("flaky", FLAKY, expect=201)
    for _ in range(6):
        await api.call("flaky")
    platform.config.limits.log_retention_per_function = 4
    assert await platform.service.enforce_retention() == 2
    assert len(await api.logs("flaky")) == 4
    platform.config.limits.log_retention_days = 0.00001  # about a second
    await asyncio.sleep(1.0)
    assert await platform.service.enforce_retention() == 4
    assert await api.logs("flaky") == []
