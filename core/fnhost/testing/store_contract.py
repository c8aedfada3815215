"""The contract every store passes: `class TestMyStore(StoreContract)` with a `store` fixture.

The tests go only through `fnhost.contracts.Store`, so a third-party store proves
itself exactly as the bundled sql store does. The fixture yields a started store
on an empty database and stops it afterwards.

Percentiles follow the nearest-rank method: p is the smallest duration with at
least p percent of the records at or below it.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import msgspec
import pytest

from fnhost.contracts import Store
from fnhost.errors import Conflict
from fnhost.models import (
    ApiKey,
    App,
    FunctionMetrics,
    InvocationRecord,
    LogLine,
    LogQuery,
    StoredFunction,
    TriggerSpec,
)

# Microseconds on purpose: a store must keep them.
T0 = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)
MiB = 1024 * 1024


def make_function(app_id: str = "app1", name: str = "hello", **fields: Any) -> StoredFunction:
    """A StoredFunction with plausible defaults; `fields` override any of them."""
    env = fields.pop("encrypted_env", {})
    values: dict[str, Any] = {
        "app_id": app_id,
        "name": name,
        "code": "export default async () => new Response('hi')",
        "created_at": T0,
        "updated_at": T0,
        "encrypted_env": env,
        "env_var_names": tuple(sorted(env)),
    }
    values.update(fields)
    return StoredFunction(**values)


def redeploy(function: StoredFunction, **fields: Any) -> StoredFunction:
    """The function as the core saves it on a new deploy: next version and revision."""
    values: dict[str, Any] = {
        "version": function.version + 1,
        "revision": function.revision + 1,
        "updated_at": function.updated_at + timedelta(seconds=1),
    }
    values.update(fields)
    return _replace(function, **values)


def with_env(function: StoredFunction, encrypted_env: dict[str, str]) -> StoredFunction:
    """The function as the core saves it after an env patch: same version, next revision."""
    return _replace(
        function,
        encrypted_env=encrypted_env,
        env_var_names=tuple(sorted(encrypted_env)),
        revision=function.revision + 1,
    )


def make_record(
    number: int,
    app_id: str = "app1",
    name: str = "hello",
    **fields: Any,
) -> InvocationRecord:
    """Record `number` of a function, started `number` seconds after T0."""
    values: dict[str, Any] = {
        "id": f"{app_id}-{name}-{number:06d}",
        "app_id": app_id,
        "function_name": name,
        "function_version": 1,
        "timestamp": T0 + timedelta(seconds=number),
        "trigger": "http",
        "method": "GET",
        "path": "/",
        "status_code": 200,
        "duration_ms": 10.0,
        "memory_mb": 32.0,
    }
    values.update(fields)
    return InvocationRecord(**values)


def make_key(key_id: str, app_id: str | None = "app1", **fields: Any) -> ApiKey:
    values: dict[str, Any] = {
        "id": key_id,
        "role": "app" if app_id else "admin",
        "app_id": app_id,
        "key_hash": f"hash-of-{key_id}",
        "created_at": T0,
    }
    values.update(fields)
    return ApiKey(**values)


def _replace(function: StoredFunction, **fields: Any) -> StoredFunction:
    return msgspec.structs.replace(function, **fields)


def assert_utc(value: datetime | None) -> None:
    assert value is not None
    assert value.tzinfo is not None and value.utcoffset() == timedelta(0)


class StoreContract:
    """Tests of every `Store` method. Subclass it and provide a `store` fixture.

    A store that several fnhost processes can share also overrides `second_store`: another
    started store object on the same database, as a second process has.
    """

    @pytest.fixture
    def second_store(self) -> Store:
        pytest.skip("this store provides no `second_store` on the database of `store`")

    # functions: insert, update, conflicts

    async def test_get_missing_function_is_none(self, store: Store) -> None:
        assert await store.get_function("app1", "nope") is None

    async def test_insert_round_trips_every_field(self, store: Store) -> None:
        function = make_function(
            description="says hello",
            triggers=(
                TriggerSpec("http", {"method": "POST", "auth": "required"}),
                TriggerSpec("cron", {"schedule": "*/5 * * * *", "timezone": "Europe/Paris"}),
            ),
            timeout_ms=1234,
            memory_limit_mb=256,
            version=3,
            revision=7,
            created_at=T0,
            updated_at=T0 + timedelta(hours=1),
            encrypted_env={"B_KEY": "gAAAA-b", "A_KEY": "gAAAA-a"},
        )
        await store.save_function(function, None)
        assert await store.get_function("app1", "hello") == function

    async def test_insert_existing_function_conflicts(self, store: Store) -> None:
        await store.save_function(make_function(code="first"), None)
        with pytest.raises(Conflict):
            await store.save_function(make_function(code="second"), None)
        stored = await store.get_function("app1", "hello")
        assert stored is not None and stored.code == "first"

    async def test_update_at_expected_revision(self, store: Store) -> None:
        original = make_function()
        await store.save_function(original, None)
        updated = redeploy(original, code="v2", description="new", timeout_ms=5000)
        await store.save_function(updated, original.revision)
        assert await store.get_function("app1", "hello") == updated

    async def test_update_at_stale_revision_conflicts(self, store: Store) -> None:
        original = make_function()
        await store.save_function(original, None)
        first = redeploy(original, code="first writer")
        await store.save_function(first, original.revision)
        with pytest.raises(Conflict):
            await store.save_function(redeploy(original, code="second writer"), original.revision)
        assert await store.get_function("app1", "hello") == first

    async def test_update_of_missing_function_conflicts(self, store: Store) -> None:
        with pytest.raises(Conflict):
            await store.save_function(make_function(revision=2), 1)
        assert await store.get_function("app1", "hello") is None

    async def test_failed_update_changes_nothing(self, store: Store) -> None:
        original = make_function(encrypted_env={"KEY": "gAAAA-old"})
        await store.save_function(original, None)
        stale = with_env(redeploy(original, code="lost"), {"KEY": "gAAAA-new"})
        with pytest.raises(Conflict):
            await store.save_function(stale, original.revision + 5)
        assert await store.get_function("app1", "hello") == original

    async def test_concurrent_updates_only_one_wins(self, store: Store) -> None:
        original = make_function()
        await store.save_function(original, None)
        contenders = [redeploy(original, code=f"writer {i}") for i in range(4)]
        results = await asyncio.gather(
            *(store.save_function(f, original.revision) for f in contenders),
            return_exceptions=True,
        )
        assert sum(r is None for r in results) == 1
        assert all(isinstance(r, Conflict) for r in results if r is not None)
        stored = await store.get_function("app1", "hello")
        assert stored in contenders

    async def test_redeploys_advance_the_version(self, store: Store) -> None:
        function = make_function(code="v1")
        await store.save_function(function, None)
        for number in (2, 3, 4):
            previous = function
            function = redeploy(function, code=f"v{number}")
            await store.save_function(function, previous.revision)
        stored = await store.get_function("app1", "hello")
        assert stored is not None
        assert (stored.version, stored.revision, stored.code) == (4, 4, "v4")
        assert stored.created_at == T0
        assert stored.updated_at == T0 + timedelta(seconds=3)

    async def test_env_change_keeps_version_and_advances_revision(self, store: Store) -> None:
        function = make_function()
        await store.save_function(function, None)
        patched = with_env(function, {"TOKEN": "gAAAA-token"})
        await store.save_function(patched, function.revision)
        stored = await store.get_function("app1", "hello")
        assert stored is not None
        assert (stored.version, stored.revision) == (1, 2)
        assert stored.encrypted_env == {"TOKEN": "gAAAA-token"}

    async def test_names_are_case_sensitive(self, store: Store) -> None:
        await store.save_function(make_function(name="Hello", code="upper"), None)
        await store.save_function(make_function(name="hello", code="lower"), None)
        upper = await store.get_function("app1", "Hello")
        lower = await store.get_function("app1", "hello")
        assert upper is not None and upper.code == "upper"
        assert lower is not None and lower.code == "lower"

    async def test_same_name_in_two_apps_are_two_functions(self, store: Store) -> None:
        await store.save_function(make_function("app1", code="one"), None)
        await store.save_function(make_function("app2", code="two"), None)
        one = await store.get_function("app1", "hello")
        two = await store.get_function("app2", "hello")
        assert one is not None and one.code == "one"
        assert two is not None and two.code == "two"

    # env vars: ciphertext only, kept as given

    async def test_env_ciphertext_round_trips_and_keys_are_removed(self, store: Store) -> None:
        function = make_function(encrypted_env={"A": "gAAAA-a", "B": "gAAAA-b", "C": "gAAAA-c"})
        await store.save_function(function, None)
        patched = with_env(function, {"A": "gAAAA-a2", "C": "gAAAA-c"})
        await store.save_function(patched, function.revision)
        stored = await store.get_function("app1", "hello")
        assert stored is not None
        assert stored.encrypted_env == {"A": "gAAAA-a2", "C": "gAAAA-c"}
        assert stored.env_var_names == ("A", "C")

    async def test_removing_every_env_var(self, store: Store) -> None:
        function = make_function(encrypted_env={"A": "gAAAA-a"})
        await store.save_function(function, None)
        await store.save_function(with_env(function, {}), function.revision)
        stored = await store.get_function("app1", "hello")
        assert stored is not None
        assert stored.encrypted_env == {} and stored.env_var_names == ()

    async def test_env_is_kept_per_function(self, store: Store) -> None:
        await store.save_function(make_function(name="a", encrypted_env={"K": "gAAAA-1"}), None)
        await store.save_function(make_function(name="b", encrypted_env={"K": "gAAAA-2"}), None)
        await store.save_function(make_function("app2", "a", encrypted_env={"K": "gAAAA-3"}), None)
        found = [
            await store.get_function(app, name)
            for app, name in (("app1", "a"), ("app1", "b"), ("app2", "a"))
        ]
        assert [f.encrypted_env["K"] for f in found if f] == ["gAAAA-1", "gAAAA-2", "gAAAA-3"]

    async def test_long_ciphertext(self, store: Store) -> None:
        ciphertext = "gAAAA" + "x" * 100_000
        await store.save_function(make_function(encrypted_env={"BIG": ciphertext}), None)
        stored = await store.get_function("app1", "hello")
        assert stored is not None and stored.encrypted_env == {"BIG": ciphertext}

    # listing

    async def test_list_is_empty_at_first(self, store: Store) -> None:
        assert await store.list_functions() == []
        assert await store.list_functions("app1") == []

    async def test_list_is_ordered_by_app_then_name(self, store: Store) -> None:
        for app_id, name in (
            ("b-app", "zeta"),
            ("a-app", "mid"),
            ("b-app", "alpha"),
            ("a-app", "alpha"),
            ("a-app", "zeta"),
        ):
            await store.save_function(make_function(app_id, name), None)
        listed = [(f.app_id, f.name) for f in await store.list_functions()]
        assert listed == [
            ("a-app", "alpha"),
            ("a-app", "mid"),
            ("a-app", "zeta"),
            ("b-app", "alpha"),
            ("b-app", "zeta"),
        ]

    async def test_list_filters_by_app(self, store: Store) -> None:
        await store.save_function(make_function("app1", "one"), None)
        await store.save_function(make_function("app1", "two"), None)
        await store.save_function(make_function("app2", "three"), None)
        assert [f.name for f in await store.list_functions("app1")] == ["one", "two"]
        assert [f.name for f in await store.list_functions("app2")] == ["three"]
        assert await store.list_functions("app3") == []

    async def test_count_functions_per_app(self, store: Store) -> None:
        await store.save_function(make_function("app1", "one"), None)
        await store.save_function(make_function("app1", "two"), None)
        await store.save_function(make_function("app2", "three"), None)
        assert await store.count_functions("app1") == 2
        assert await store.count_functions("app2") == 1
        assert await store.count_functions("app3") == 0
        await store.delete_function("app1", "one")
        assert await store.count_functions("app1") == 1

    async def test_list_returns_whole_functions_with_env(self, store: Store) -> None:
        first = make_function(name="first", encrypted_env={"K": "gAAAA-1"}, description="d")
        second = make_function(name="second", triggers=(TriggerSpec("websocket", {"event": "e"}),))
        await store.save_function(first, None)
        await store.save_function(second, None)
        assert await store.list_functions("app1") == [first, second]

    # deleting

    async def test_delete_reports_whether_it_existed(self, store: Store) -> None:
        await store.save_function(make_function(), None)
        assert await store.delete_function("app1", "hello") is True
        assert await store.get_function("app1", "hello") is None
        assert await store.delete_function("app1", "hello") is False
        assert await store.list_functions() == []

    async def test_delete_removes_env_records_and_history(self, store: Store) -> None:
        function = make_function(encrypted_env={"SECRET": "gAAAA-s"})
        await store.save_function(function, None)
        await store.save_function(redeploy(function, code="v2"), function.revision)
        await store.append_invocations([make_record(n) for n in range(5)])
        assert await store.delete_function("app1", "hello")

        assert await store.query_invocations("app1", "hello", LogQuery()) == []
        assert await store.function_metrics("app1", "hello") == FunctionMetrics()
        # A new function of the same name starts from scratch, version history included.
        fresh = make_function(code="fresh")
        await store.save_function(fresh, None)
        assert await store.get_function("app1", "hello") == fresh
        assert await store.query_invocations("app1", "hello", LogQuery()) == []

    async def test_delete_leaves_other_functions_alone(self, store: Store) -> None:
        for app_id, name in (("app1", "gone"), ("app1", "kept"), ("app2", "gone")):
            await store.save_function(make_function(app_id, name, encrypted_env={"K": "c"}), None)
            await store.append_invocations([make_record(1, app_id, name)])
        assert await store.delete_function("app1", "gone")
        assert [(f.app_id, f.name) for f in await store.list_functions()] == [
            ("app1", "kept"),
            ("app2", "gone"),
        ]
        for app_id, name in (("app1", "kept"), ("app2", "gone")):
            stored = await store.get_function(app_id, name)
            assert stored is not None and stored.encrypted_env == {"K": "c"}
            assert len(await store.query_invocations(app_id, name, LogQuery())) == 1

    # content: unicode, size, datetimes

    async def test_unicode_round_trips(self, store: Store) -> None:
        function = make_function(
            code="export default () => new Response('héllo 世界 🚀')",
            description="Ünïcödé 🎉 — ok",
            triggers=(TriggerSpec("websocket", {"event": "чат"}),),
            encrypted_env={"GREETING": "gAAAA-✓"},
        )
        await store.save_function(function, None)
        assert await store.get_function("app1", "hello") == function
        record = make_record(
            1,
            path="/caf\u00e9/🚀",
            error="TypeError: ☠",
            logs=(LogLine("info", "日本語 🍣", T0),),
        )
        await store.append_invocations([record])
        assert await store.query_invocations("app1", "hello", LogQuery()) == [record]

    async def test_one_mib_of_code(self, store: Store) -> None:
        code = "// " + "x" * (MiB - 4) + "\n"
        assert len(code.encode()) == MiB
        function = make_function(code=code)
        await store.save_function(function, None)
        stored = await store.get_function("app1", "hello")
        assert stored is not None and stored.code == code
        await store.save_function(redeploy(function, code=code[::-1]), function.revision)
        stored = await store.get_function("app1", "hello")
        assert stored is not None and stored.code == code[::-1]

    async def test_function_datetimes_are_utc_with_microseconds(self, store: Store) -> None:
        paris = timezone(timedelta(hours=2))
        created = datetime(2024, 7, 14, 9, 30, 15, 654321, tzinfo=paris)
        function = make_function(created_at=created, updated_at=created + timedelta(microseconds=1))
        await store.save_function(function, None)
        stored = await store.get_function("app1", "hello")
        assert stored is not None
        assert stored.created_at == created
        assert stored.updated_at == created + timedelta(microseconds=1)
        assert_utc(stored.created_at)
        assert_utc(stored.updated_at)
        assert stored.created_at.hour == 7 and stored.created_at.microsecond == 654321

    # invocation records

    async def test_append_and_query_newest_first(self, store: Store) -> None:
        # Appended out of order: the query orders by timestamp, not by arrival.
        records = [make_record(n) for n in (3, 1, 4, 2, 0)]
        await store.append_invocations(records)
        found = await store.query_invocations("app1", "hello", LogQuery())
        assert [r.id for r in found] == [make_record(n).id for n in (4, 3, 2, 1, 0)]

    async def test_record_round_trips_every_field(self, store: Store) -> None:
        record = make_record(
            1,
            function_version=3,
            trigger="cron",
            method="POST",
            path="/sub/path?x=1&y=%20",
            status_code=504,
            duration_ms=30000.125,
            memory_mb=97.5,
            error="timed out after 30000 ms",
            level="error",
            logs=(
                LogLine("debug", "starting", T0),
                LogLine("info", "line\nwith newline", T0 + timedelta(microseconds=1)),
                LogLine("warn", "careful", T0 + timedelta(milliseconds=2)),
                LogLine("error", '{"json": "inside"}', T0 + timedelta(seconds=3)),
            ),
        )
        await store.append_invocations([record])
        assert await store.query_invocations("app1", "hello", LogQuery()) == [record]

    async def test_record_datetimes_are_utc_with_microseconds(self, store: Store) -> None:
        tokyo = timezone(timedelta(hours=9))
        started = datetime(2024, 1, 2, 3, 4, 5, 678901, tzinfo=tokyo)
        record = make_record(1, timestamp=started, logs=(LogLine("info", "x", started),))
        await store.append_invocations([record])
        (found,) = await store.query_invocations("app1", "hello", LogQuery())
        assert found.timestamp == started
        assert_utc(found.timestamp)
        assert found.timestamp.microsecond == 678901
        assert found.logs[0].timestamp == started

    async def test_empty_batch_is_a_no_op(self, store: Store) -> None:
        await store.append_invocations([])
        assert await store.query_invocations("app1", "hello", LogQuery()) == []

    async def test_large_batch(self, store: Store) -> None:
        await store.append_invocations([make_record(n) for n in range(500)])
        found = await store.query_invocations("app1", "hello", LogQuery(limit=1000))
        assert len(found) == 500
        assert found[0].id == make_record(499).id and found[-1].id == make_record(0).id

    async def test_batch_is_all_or_nothing(self, store: Store) -> None:
        # The duplicate id makes the batch fail: none of it may be kept.
        batch = [make_record(1), make_record(2), make_record(1, path="/duplicate")]
        with pytest.raises(Exception):  # noqa: B017 - which error is the store's choice
            await store.append_invocations(batch)
        assert await store.query_invocations("app1", "hello", LogQuery()) == []

    async def test_batches_add_up(self, store: Store) -> None:
        await store.append_invocations([make_record(1)])
        await store.append_invocations([make_record(2), make_record(3)])
        found = await store.query_invocations("app1", "hello", LogQuery())
        assert [r.timestamp for r in found] == [T0 + timedelta(seconds=s) for s in (3, 2, 1)]

    async def test_query_limit(self, store: Store) -> None:
        await store.append_invocations([make_record(n) for n in range(10)])
        found = await store.query_invocations("app1", "hello", LogQuery(limit=3))
        assert [r.id for r in found] == [make_record(n).id for n in (9, 8, 7)]
        assert len(await store.query_invocations("app1", "hello", LogQuery(limit=50))) == 10

    async def test_query_since_is_inclusive(self, store: Store) -> None:
        await store.append_invocations([make_record(n) for n in range(10)])
        since = T0 + timedelta(seconds=6)
        found = await store.query_invocations("app1", "hello", LogQuery(since=since))
        assert [r.timestamp for r in found] == [T0 + timedelta(seconds=s) for s in (9, 8, 7, 6)]

    async def test_query_since_respects_microseconds(self, store: Store) -> None:
        await store.append_invocations([make_record(1)])
        exact = make_record(1).timestamp
        assert len(await store.query_invocations("app1", "hello", LogQuery(since=exact))) == 1
        later = exact + timedelta(microseconds=1)
        assert await store.query_invocations("app1", "hello", LogQuery(since=later)) == []

    async def test_query_since_in_another_zone(self, store: Store) -> None:
        await store.append_invocations([make_record(n) for n in range(4)])
        since = (T0 + timedelta(seconds=2)).astimezone(timezone(timedelta(hours=-5)))
        found = await store.query_invocations("app1", "hello", LogQuery(since=since))
        assert len(found) == 2

    async def test_query_level_error_returns_failed_only(self, store: Store) -> None:
        records = [
            make_record(
                n, level="error" if n % 3 == 0 else "info", error="boom" if n % 3 == 0 else None
            )
            for n in range(10)
        ]
        await store.append_invocations(records)
        errors = await store.query_invocations("app1", "hello", LogQuery(level="error"))
        assert [r.id for r in errors] == [make_record(n).id for n in (9, 6, 3, 0)]
        assert all(r.level == "error" for r in errors)
        everything = await store.query_invocations("app1", "hello", LogQuery(level="info"))
        assert len(everything) == 10

    async def test_query_combines_level_since_and_limit(self, store: Store) -> None:
        await store.append_invocations(
            [make_record(n, level="error" if n % 2 else "info") for n in range(20)]
        )
        query = LogQuery(level="error", since=T0 + timedelta(seconds=5), limit=3)
        found = await store.query_invocations("app1", "hello", query)
        assert [r.timestamp for r in found] == [T0 + timedelta(seconds=s) for s in (19, 17, 15)]

    async def test_query_is_scoped_to_one_function(self, store: Store) -> None:
        await store.append_invocations(
            [make_record(1), make_record(2, name="other"), make_record(3, app_id="app2")]
        )
        found = await store.query_invocations("app1", "hello", LogQuery())
        assert [r.id for r in found] == [make_record(1).id]
        assert await store.query_invocations("app1", "missing", LogQuery()) == []

    async def test_records_without_a_stored_function(self, store: Store) -> None:
        # An invocation may finish after its function was deleted; recording it must work.
        await store.append_invocations([make_record(1, name="ghost")])
        assert len(await store.query_invocations("app1", "ghost", LogQuery())) == 1

    # metrics

    async def test_metrics_without_records(self, store: Store) -> None:
        metrics = await store.function_metrics("app1", "hello")
        assert metrics == FunctionMetrics()
        assert metrics.total_invocations == 0 and metrics.last_invocation is None
        assert metrics.p50_duration_ms == 0.0 and metrics.error_rate == 0.0

    async def test_metrics_aggregates(self, store: Store) -> None:
        await store.append_invocations(
            [
                make_record(5, duration_ms=10.0),
                make_record(9, duration_ms=20.0, level="error", error="boom"),
                make_record(2, duration_ms=60.0),  # appended last but not the latest
            ]
        )
        metrics = await store.function_metrics("app1", "hello")
        assert metrics.total_invocations == 3
        assert metrics.error_count == 1
        assert metrics.error_rate == 33.33
        assert metrics.avg_duration_ms == pytest.approx(30.0)
        assert metrics.last_invocation == T0 + timedelta(seconds=9)
        assert_utc(metrics.last_invocation)

    async def test_metrics_percentiles(self, store: Store) -> None:
        # Durations 1..100 appended in a scrambled order.
        durations = [float((n * 37) % 100 + 1) for n in range(100)]
        await store.append_invocations(
            [make_record(n, duration_ms=d) for n, d in enumerate(durations)]
        )
        metrics = await store.function_metrics("app1", "hello")
        assert metrics.p50_duration_ms == 50.0
        assert metrics.p95_duration_ms == 95.0
        assert metrics.avg_duration_ms == pytest.approx(50.5)

    async def test_metrics_percentiles_of_few_records(self, store: Store) -> None:
        await store.append_invocations([make_record(1, duration_ms=7.25)])
        metrics = await store.function_metrics("app1", "hello")
        assert (metrics.p50_duration_ms, metrics.p95_duration_ms) == (7.25, 7.25)
        await store.append_invocations([make_record(n, duration_ms=float(n)) for n in (2, 3, 4)])
        # Durations 2, 3, 4, 7.25: nearest rank 2 for p50, rank 4 for p95.
        metrics = await store.function_metrics("app1", "hello")
        assert (metrics.p50_duration_ms, metrics.p95_duration_ms) == (3.0, 7.25)

    async def test_metrics_error_rate(self, store: Store) -> None:
        await store.append_invocations([make_record(n, level="error", error="x") for n in range(2)])
        metrics = await store.function_metrics("app1", "hello")
        assert (metrics.error_count, metrics.error_rate) == (2, 100.0)
        await store.append_invocations([make_record(n) for n in range(2, 8)])
        metrics = await store.function_metrics("app1", "hello")
        assert (metrics.error_count, metrics.error_rate) == (2, 25.0)
        await store.append_invocations([make_record(8)])
        assert (await store.function_metrics("app1", "hello")).error_rate == 22.22

    async def test_metrics_are_scoped_to_one_function(self, store: Store) -> None:
        await store.append_invocations(
            [
                make_record(1, duration_ms=1.0),
                make_record(2, name="other", duration_ms=100.0, level="error"),
                make_record(3, app_id="app2", duration_ms=100.0),
            ]
        )
        metrics = await store.function_metrics("app1", "hello")
        assert metrics.total_invocations == 1 and metrics.error_count == 0
        assert metrics.avg_duration_ms == 1.0 and metrics.p95_duration_ms == 1.0
        assert metrics.last_invocation == T0 + timedelta(seconds=1)

    # log retention

    async def test_prune_by_age(self, store: Store) -> None:
        await store.save_function(make_function(), None)
        await store.append_invocations([make_record(n) for n in range(1, 11)])
        deleted = await store.prune_invocations(T0 + timedelta(seconds=4), 0)
        assert deleted == 3
        left = await store.query_invocations("app1", "hello", LogQuery(limit=100))
        assert [r.id for r in left][-1] == make_record(4).id and len(left) == 7

    async def test_prune_keeps_newest_per_function(self, store: Store) -> None:
        await store.save_function(make_function(), None)
        await store.save_function(make_function(name="other"), None)
        await store.append_invocations(
            [make_record(n) for n in range(1, 11)]
            + [make_record(n, name="other") for n in range(1, 3)]
        )
        deleted = await store.prune_invocations(T0, 4)
        assert deleted == 6
        kept = await store.query_invocations("app1", "hello", LogQuery(limit=100))
        assert [r.id for r in kept] == [make_record(n).id for n in (10, 9, 8, 7)]
        other = await store.query_invocations("app1", "other", LogQuery(limit=100))
        assert len(other) == 2

    # cron fire claims

    async def test_claim_cron_fire_once(self, store: Store) -> None:
        assert await store.claim_cron_fire("app1", "hello", T0, "process-a") is True
        assert await store.claim_cron_fire("app1", "hello", T0, "process-b") is False
        assert await store.claim_cron_fire("app1", "hello", T0, "process-a") is False

    async def test_concurrent_claims_have_one_winner(self, store: Store) -> None:
        claims = [store.claim_cron_fire("app1", "hello", T0, f"process-{n}") for n in range(20)]
        assert (await asyncio.gather(*claims)).count(True) == 1

    async def test_claims_through_two_store_objects_have_one_winner(
        self, store: Store, second_store: Store
    ) -> None:
        # Two store objects on one database are two fnhost processes; several rounds so
        # that either may be first.
        for minute in range(5):
            fire_time = T0 + timedelta(minutes=minute)
            claims = [
                one.claim_cron_fire("app1", "hello", fire_time, f"{side}-{n}")
                for n in range(6)
                for side, one in (("a", store), ("b", second_store))
            ]
            assert (await asyncio.gather(*claims)).count(True) == 1
        assert await second_store.claim_cron_fire("app1", "hello", T0, "b") is False

    async def test_claims_of_other_fire_times_and_functions_are_independent(
        self, store: Store
    ) -> None:
        assert await store.claim_cron_fire("app1", "hello", T0, "a") is True
        for app_id, name, fire_time in (
            ("app1", "hello", T0 + timedelta(seconds=1)),
            ("app1", "hello", T0 + timedelta(microseconds=1)),  # microseconds are kept
            ("app1", "other", T0),
            ("app1", "Hello", T0),  # names are case-sensitive
            ("app2", "hello", T0),
        ):
            assert await store.claim_cron_fire(app_id, name, fire_time, "b") is True
            assert await store.claim_cron_fire(app_id, name, fire_time, "c") is False

    async def test_claim_compares_instants_not_zones(self, store: Store) -> None:
        tokyo = T0.astimezone(timezone(timedelta(hours=9)))
        assert await store.claim_cron_fire("app1", "hello", tokyo, "a") is True
        assert await store.claim_cron_fire("app1", "hello", T0, "b") is False

    async def test_a_claim_waits_for_an_earlier_unfinished_run(self, store: Store) -> None:
        recent = datetime.now(UTC) - timedelta(minutes=5)
        minute = [T0 + timedelta(minutes=n) for n in range(5)]
        assert await store.claim_cron_fire("app1", "hello", minute[0], "a", recent) is True
        # minute[0] is still running: the next fire time is refused, and stays taken.
        assert await store.claim_cron_fire("app1", "hello", minute[1], "b", recent) is False
        assert await store.claim_cron_fire("app1", "hello", minute[1], "c", recent) is False
        # Other functions do not wait for it; without `unfinished_since` nothing does.
        assert await store.claim_cron_fire("app1", "other", minute[1], "b", recent) is True
        assert await store.claim_cron_fire("app1", "hello", minute[2], "b") is True
        await store.finish_cron_fire("app1", "hello", minute[0])
        await store.finish_cron_fire("app1", "hello", minute[2])
        assert await store.claim_cron_fire("app1", "hello", minute[3], "b", recent) is True
        # A run claimed before `unfinished_since` is taken for dead (its process died).
        later = datetime.now(UTC) + timedelta(seconds=1)
        assert await store.claim_cron_fire("app1", "hello", minute[4], "c", later) is True

    async def test_finishing_an_unknown_fire_time_is_harmless(self, store: Store) -> None:
        await store.finish_cron_fire("app1", "nothing", T0)

    async def test_prune_cron_claims(self, store: Store) -> None:
        hours = [T0 + timedelta(hours=n) for n in range(4)]
        for fire_time in hours:
            assert await store.claim_cron_fire("app1", "hello", fire_time, "a")
        assert await store.claim_cron_fire("app2", "other", hours[0], "a")
        # `before` is exclusive: claims at hours[2] and later stay.
        assert await store.prune_cron_claims(hours[2]) == 3
        assert await store.claim_cron_fire("app1", "hello", hours[0], "b") is True
        assert await store.claim_cron_fire("app2", "other", hours[0], "b") is True
        assert await store.claim_cron_fire("app1", "hello", hours[2], "b") is False
        assert await store.claim_cron_fire("app1", "hello", hours[3], "b") is False
        assert await store.prune_cron_claims(T0) == 0

    # apps

    async def test_get_missing_app_is_none(self, store: Store) -> None:
        assert await store.get_app("nope") is None

    async def test_app_round_trips(self, store: Store) -> None:
        app = App(
            id="app1",
            created_at=T0,
            settings={
                "require_token": True,
                "jwt": {"issuer": "me", "audiences": ["a", "b"]},
                "limit": 10,
                "ratio": 0.5,
                "note": "ünï 🚀",
                "nothing": None,
            },
        )
        await store.save_app(app)
        stored = await store.get_app("app1")
        assert stored == app
        assert stored is not None
        assert_utc(stored.created_at)

    async def test_save_app_replaces(self, store: Store) -> None:
        await store.save_app(App(id="app1", created_at=T0, settings={"a": 1, "b": 2}))
        replaced = App(id="app1", created_at=T0, settings={"c": 3})
        await store.save_app(replaced)
        assert await store.get_app("app1") == replaced

    async def test_apps_are_independent(self, store: Store) -> None:
        one = App(id="app1", created_at=T0)
        two = App(id="App1", created_at=T0 + timedelta(days=1), settings={"x": "y"})
        await store.save_app(one)
        await store.save_app(two)
        assert await store.get_app("app1") == one
        assert await store.get_app("App1") == two

    # api keys

    async def test_find_api_key_by_hash(self, store: Store) -> None:
        key = make_key("k1", name="ci deploys")
        await store.add_api_key(key)
        assert await store.find_api_key(key.key_hash) == key
        assert await store.find_api_key("hash-of-nothing") is None

    async def test_admin_key_has_no_app(self, store: Store) -> None:
        admin = make_key("admin", app_id=None)
        await store.add_api_key(admin)
        found = await store.find_api_key(admin.key_hash)
        assert found == admin
        assert found is not None and found.role == "admin" and found.app_id is None

    async def test_list_api_keys_by_app_and_all(self, store: Store) -> None:
        admin = make_key("admin", app_id=None)
        first = make_key("k1", "app1", created_at=T0 + timedelta(seconds=1))
        second = make_key("k2", "app1", created_at=T0 + timedelta(seconds=2))
        other = make_key("k3", "app2", created_at=T0 + timedelta(seconds=3))
        for key in (second, other, admin, first):
            await store.add_api_key(key)
        assert await store.list_api_keys("app1") == [first, second]
        assert await store.list_api_keys("app2") == [other]
        assert await store.list_api_keys("app3") == []
        assert await store.list_api_keys() == [admin, first, second, other]

    async def test_revoke_api_key(self, store: Store) -> None:
        key = make_key("k1")
        await store.add_api_key(key)
        before = datetime.now(UTC)
        assert await store.revoke_api_key("k1") is True
        found = await store.find_api_key(key.key_hash)
        assert found is not None and found.revoked_at is not None
        assert_utc(found.revoked_at)
        assert found.revoked_at >= before - timedelta(seconds=5)
        (listed,) = await store.list_api_keys("app1")
        assert listed.revoked_at == found.revoked_at

    async def test_revoke_twice_keeps_the_key_revoked(self, store: Store) -> None:
        await store.add_api_key(make_key("k1"))
        assert await store.revoke_api_key("k1") is True
        first = await store.find_api_key("hash-of-k1")
        assert await store.revoke_api_key("k1") is True
        second = await store.find_api_key("hash-of-k1")
        assert first is not None and first.revoked_at is not None
        assert second is not None and second.revoked_at is not None

    async def test_revoke_unknown_key(self, store: Store) -> None:
        assert await store.revoke_api_key("nope") is False

    async def test_revoking_one_key_leaves_others(self, store: Store) -> None:
        await store.add_api_key(make_key("k1"))
        await store.add_api_key(make_key("k2"))
        await store.revoke_api_key("k1")
        other = await store.find_api_key("hash-of-k2")
        assert other is not None and other.revoked_at is None

    async def test_key_revoked_at_given_is_kept(self, store: Store) -> None:
        key = make_key("k1", revoked_at=T0 + timedelta(minutes=1))
        await store.add_api_key(key)
        assert await store.find_api_key(key.key_hash) == key
