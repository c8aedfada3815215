"""Cron functions end to end in one fnhost process: deployed over the REST API, run by real
Deno on real time, checked through the logs, metrics and details a user sees."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from fnhost.api import create_app
from fnhost.errors import ConfigError
from fnhost.models import LogQuery
from fnhost.platform import Platform
from fnhost.testing import make_config
from fnhost_cron.trigger import CronTrigger
from tests.conftest import ADMIN_KEY, HELLO, Api

# Logs what it received; the scheduled time it echoes is what the tests compare with.
ECHO = """export default async function handler(req, ctx) {
  const body = await req.json();
  console.log(JSON.stringify({
    body, trigger: ctx.trigger, method: req.method, url: req.url,
    contentType: req.headers.get("content-type"), greeting: ctx.env.GREETING ?? null,
  }));
  return new Response("ok");
}"""

THROWS = """export default async function handler(req) {
  console.log(JSON.stringify({ body: await req.json() }));
  throw new Error("cron boom");
}"""

SLOW = """export default async function handler(req) {
  console.log(JSON.stringify({ body: await req.json() }));
  await new Promise((resolve) => setTimeout(resolve, 3000));
  return new Response("done");
}"""

EVERY_SECOND = {"type": "cron", "config": {"schedule": "* * * * * *"}}
# Lateness above this fails a test: the issue asks for "within a second".
MAX_LATENESS_S = 1.0


@dataclass(frozen=True)
class Fire:
    """One cron invocation as its log record shows it."""

    scheduled: datetime  # the scheduledTime the function received
    started: datetime  # the record's timestamp: when the invocation started
    record: dict[str, Any]
    output: dict[str, Any]  # what the function logged

    @property
    def lateness(self) -> float:
        return (self.started - self.scheduled).total_seconds()


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def now() -> datetime:
    return datetime.now(UTC)


async def fires(api: Api, name: str) -> list[Fire]:
    """Every cron invocation of `name`, oldest first."""
    found = []
    for record in reversed(await api.logs(name, limit=1000)):
        output = json.loads(record["logs"][0]["message"])
        scheduled = parse_time(output["body"]["scheduledTime"])
        found.append(Fire(scheduled, parse_time(record["timestamp"]), record, output))
    return found


async def wait_for_fires(
    api: Api, name: str, count: int, within: float, after: datetime | None = None
) -> list[Fire]:
    """All fires of `name` once `count` of them are scheduled after `after` (any time)."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        found = await fires(api, name)
        if len([f for f in found if after is None or f.scheduled > after]) >= count:
            return found
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{count} fires of {name!r} expected within {within} s: {found}")
        await asyncio.sleep(0.2)


def assert_on_time(found: list[Fire]) -> None:
    for fire in found:
        assert 0 <= fire.lateness < MAX_LATENESS_S, fire
    print(f"\nmax lateness of {len(found)} fires: {max(f.lateness for f in found) * 1000:.1f} ms")


def assert_consecutive(found: list[Fire], every: timedelta) -> None:
    """Each fire time once, none missing between the first and the last."""
    times = [fire.scheduled for fire in found]
    assert [b - a for a, b in pairwise(times)] == [every] * (len(times) - 1)


def cron_jobs(platform: Platform) -> dict[str, datetime | None]:
    trigger = platform.triggers["cron"]
    assert isinstance(trigger, CronTrigger)
    return trigger.scheduler.jobs()


@asynccontextmanager
async def fnhost(data_dir: Path, **sections: Any) -> AsyncIterator[tuple[Api, Platform]]:
    server = {"data_dir": str(data_dir), "admin_key": ADMIN_KEY}
    platform = Platform(make_config(data_dir, server=server, **sections))
    async with AsyncTestClient(app=create_app(platform), timeout=60) as client:
        yield Api(client), platform


async def test_fires_on_time_with_the_scheduled_time(tmp_path: Path) -> None:
    async with fnhost(tmp_path) as (api, platform):
        schedule = "*/2 * * * * *"
        deployed = await api.deploy(
            "tick",
            ECHO,
            expect=201,
            envVars={"GREETING": "one"},
            trigger={"type": "cron", "config": {"schedule": schedule}},
        )
        next_fire = parse_time(deployed.json()["trigger"]["nextFireTime"])
        assert timedelta(0) < next_fire - now() <= timedelta(seconds=2)
        assert next_fire.second % 2 == 0 and next_fire.microsecond == 0

        await wait_for_fires(api, "tick", 2, within=6)
        # An env change keeps the schedule: the next fires come on time, with the new env.
        patched = await api.patch_env("tick", {"GREETING": "two"})
        assert patched.status_code == 200, patched.text
        patched_at = now()
        found = await wait_for_fires(api, "tick", 2, within=6, after=patched_at)

        assert_on_time(found)
        assert_consecutive(found, timedelta(seconds=2))
        assert found[0].output["greeting"] == "one" and found[-1].output["greeting"] == "two"
        for fire in found:
            scheduled_time = fire.output["body"]["scheduledTime"]
            assert scheduled_time.endswith("Z") and fire.scheduled.second % 2 == 0
            assert fire.output["trigger"] == {
                "type": "cron",
                "schedule": schedule,
                "timezone": "UTC",
                "scheduledTime": scheduled_time,
            }
            assert fire.output["method"] == "POST"
            assert fire.output["url"] == "http://cron.fnhost.local/"
            assert fire.output["contentType"] == "application/json"
            record = fire.record
            assert (record["trigger"], record["method"], record["path"]) == ("cron", "POST", "/")
            assert (record["status_code"], record["level"], record["error"]) == (200, "info", None)

        details = (await api.get("/functions/tick")).json()
        assert details["metrics"]["total_invocations"] >= len(found)
        assert details["metrics"]["error_count"] == 0
        assert parse_time(details["trigger"]["nextFireTime"]) > found[-1].scheduled
        listed = (await api.get("/functions")).json()["functions"]
        assert listed[0]["triggers"][0]["nextFireTime"] is not None
        assert list(cron_jobs(platform)) == ["demo/tick"]


async def test_a_failing_run_is_an_error_record_and_the_schedule_goes_on(tmp_path: Path) -> None:
    async with fnhost(tmp_path) as (api, _):
        await api.deploy("boom", THROWS, expect=201, trigger=EVERY_SECOND)
        found = await wait_for_fires(api, "boom", 3, within=6)
        assert_on_time(found)
        assert_consecutive(found, timedelta(seconds=1))
        for fire in found:
            assert fire.record["trigger"] == "cron"
            assert (fire.record["level"], fire.record["status_code"]) == ("error", 500)
            assert "cron boom" in fire.record["error"]
        errors = await api.logs("boom", level="error")
        assert len(errors) >= len(found)
        metrics = (await api.get("/functions/boom")).json()["metrics"]
        assert metrics["error_count"] == metrics["total_invocations"] >= len(found)
        assert metrics["error_rate"] == 100.0


async def test_a_store_failure_at_fire_time_does_not_stop_the_schedule(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with fnhost(tmp_path) as (api, platform):
        claim = platform.store.claim_cron_fire
        failures: list[tuple[Any, ...]] = []

        async def failing_twice(*args: Any) -> bool:
            if len(failures) < 2:
                failures.append(args)
                raise RuntimeError("store hiccup")
            return await claim(*args)

        monkeypatch.setattr(platform.store, "claim_cron_fire", failing_twice)
        await api.deploy("tick", ECHO, expect=201, trigger=EVERY_SECOND)
        found = await wait_for_fires(api, "tick", 2, within=6)
        assert len(failures) == 2
        assert found[0].scheduled > failures[-1][2]  # the failed fire times did not run
        assert_consecutive(found, timedelta(seconds=1))


async def test_changes_take_effect_at_once(tmp_path: Path) -> None:
    async with fnhost(tmp_path) as (api, platform):
        yearly = {"type": "cron", "config": {"schedule": "0 0 1 1 *"}}
        deployed = (await api.deploy("moving", ECHO, expect=201, trigger=yearly)).json()
        assert deployed["trigger"]["nextFireTime"] == f"{now().year + 1}-01-01T00:00:00Z"

        # Rescheduled by a redeploy: fires from the very next second.
        await asyncio.sleep(1.1)
        assert await fires(api, "moving") == []
        redeployed_at = now()
        await api.deploy("moving", ECHO, expect=200, trigger=EVERY_SECOND)
        found = await wait_for_fires(api, "moving", 2, within=4)
        assert found[0].scheduled - redeployed_at <= timedelta(seconds=1)
        assert_on_time(found)

        # The cron trigger removed by a redeploy: no fire after it.
        await api.deploy("moving", ECHO, expect=200, triggers=[{"type": "http"}])
        removed_at = now()
        assert "demo/moving" not in cron_jobs(platform)
        details = (await api.get("/functions/moving")).json()
        assert [t["type"] for t in details["triggers"]] == ["http"]
        await asyncio.sleep(2.2)
        assert [f for f in await fires(api, "moving") if f.scheduled > removed_at] == []

        # Back on a schedule, then deleted: no fire after the delete, not even unrecorded
        # by the API (the store keeps records appended after a delete).
        await api.deploy("moving", ECHO, expect=200, trigger=EVERY_SECOND)
        await wait_for_fires(api, "moving", 1, within=3, after=removed_at + timedelta(seconds=2))
        assert (await api.delete("/functions/moving")).status_code == 204
        assert "demo/moving" not in cron_jobs(platform)
        await asyncio.sleep(2.2)
        assert await platform.store.query_invocations("demo", "moving", LogQuery()) == []
        assert cron_jobs(platform) == {}


async def test_restart_schedules_again_from_the_store_without_duplicates(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    async with fnhost(data_dir) as (api, platform):
        await api.deploy("tick", ECHO, expect=201, trigger=EVERY_SECOND)
        await api.deploy("plain", HELLO, expect=201)
        await api.deploy("gone", ECHO, expect=201, trigger=EVERY_SECOND)
        assert (await api.delete("/functions/gone")).status_code == 204
        before = await wait_for_fires(api, "tick", 2, within=4)
        assert list(cron_jobs(platform)) == ["demo/tick"]
    stopped_at = now()

    async with fnhost(data_dir) as (api, platform):
        assert list(cron_jobs(platform)) == ["demo/tick"]
        found = await wait_for_fires(api, "tick", 2, within=4, after=stopped_at)
    assert len(found) >= len(before) + 2
    assert max(Counter(f.scheduled for f in found).values()) == 1
    after_restart = [f for f in found if f.scheduled > stopped_at]
    assert_on_time(after_restart)
    assert_consecutive(after_restart, timedelta(seconds=1))


async def test_changes_through_another_process_are_followed(tmp_path: Path) -> None:
    # Two platforms on one SQLite file behave as two processes sharing a store.
    fast_sync = {"cron": {"sync_seconds": 0.5}}
    async with (
        fnhost(tmp_path, trigger=fast_sync) as (one, first),
        fnhost(tmp_path, trigger=fast_sync) as (two, second),
    ):
        await one.deploy("tick", ECHO, expect=201, trigger=EVERY_SECOND)
        await asyncio.sleep(1)
        assert list(cron_jobs(second)) == ["demo/tick"]  # learnt from the store
        found = await wait_for_fires(two, "tick", 3, within=5)
        assert max(Counter(f.scheduled for f in found).values()) == 1
        assert_consecutive(found, timedelta(seconds=1))

        # Unscheduled through the first: the second never runs it again, even before it
        # reads the store (each fire re-reads its function).
        await one.deploy("tick", ECHO, expect=200, triggers=[{"type": "http"}])
        removed_at = now()
        await asyncio.sleep(1.5)
        assert cron_jobs(second) == {}
        assert [f for f in await fires(two, "tick") if f.scheduled > removed_at] == []

        await one.deploy("tick", ECHO, expect=200, trigger=EVERY_SECOND)
        await wait_for_fires(two, "tick", 1, within=3, after=removed_at + timedelta(seconds=1))
        assert (await one.delete("/functions/tick")).status_code == 204
        await asyncio.sleep(1.5)
        assert cron_jobs(first) == cron_jobs(second) == {}
        assert await second.store.query_invocations("demo", "tick", LogQuery()) == []


async def test_a_run_still_going_is_not_started_again(tmp_path: Path) -> None:
    async with fnhost(tmp_path) as (api, _):
        await api.deploy("slow", SLOW, expect=201, trigger=EVERY_SECOND)
        found = await wait_for_fires(api, "slow", 2, within=10)
    assert_on_time(found)
    for earlier, later in pairwise(found):
        ended = earlier.started + timedelta(milliseconds=earlier.record["duration_ms"])
        assert earlier.record["duration_ms"] >= 3000
        assert later.started >= ended  # no overlap
        # The fire times that came while it ran were skipped, not queued.
        assert later.scheduled - earlier.scheduled >= timedelta(seconds=3)


@pytest.mark.parametrize(
    ("trigger", "field", "message"),
    [
        ({"schedule": "61 * * * *"}, "trigger.config.schedule", "invalid cron expression"),
        ({"schedule": "* * *"}, "trigger.config.schedule", "expected 5 fields"),
        ({"schedule": "* * * * * * *"}, "trigger.config.schedule", "got 7"),
        ({"schedule": "* * * * 9"}, "trigger.config.schedule", "out of range 0-7"),
        ({"schedule": "0 0 30 2 *"}, "trigger.config.schedule", "never fires"),
        (
            {"schedule": "* * * * *", "timezone": "Mars/Olympus"},
            "trigger.config.timezone",
            "unknown timezone",
        ),
    ],
)
async def test_invalid_schedules_are_rejected(
    tmp_path: Path, trigger: dict[str, Any], field: str, message: str
) -> None:
    async with fnhost(tmp_path) as (api, _):
        response = await api.deploy("bad", ECHO, trigger={"type": "cron", "config": trigger})
        assert response.status_code == 422, response.text
        body = response.json()
        assert body["error"].startswith(f"{field}: ") and message in body["error"]
        assert body["detail"] == {"field": field}
        assert (await api.get("/functions/bad")).status_code == 404


async def test_invalid_trigger_in_a_list_names_its_index(tmp_path: Path) -> None:
    async with fnhost(tmp_path) as (api, _):
        triggers = [{"type": "http"}, {"type": "cron", "config": {"schedule": "* * * * 8"}}]
        response = await api.deploy("bad", ECHO, triggers=triggers)
        assert response.status_code == 422
        assert response.json()["detail"] == {"field": "triggers[1].config.schedule"}
        missing = await api.deploy("bad", ECHO, trigger={"type": "cron", "config": {}})
        assert missing.status_code == 422
        assert "schedule" in missing.json()["error"]


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ({"bogus": 1}, "trigger.cron.bogus"),
        ({"sync_seconds": 0}, "trigger.cron.sync_seconds"),
        ({"misfire_grace_seconds": "soon"}, "trigger.cron.misfire_grace_seconds"),
        ({"claim_retention_hours": 0.001}, "trigger.cron.claim_retention_hours"),
    ],
)
def test_config_section_is_checked(tmp_path: Path, section: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        Platform(make_config(tmp_path, trigger={"cron": section}))
