"""Use cases: deploy, get, list, delete, patch env, invoke, logs, metrics.

The service owns validation, encryption and invocation records; the store and
runtime plugins own mechanism.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Any

import msgspec

from fnhost.errors import Conflict, InvalidField, NotFound, RateLimited, TooLarge, Unavailable
from fnhost.limits import ConcurrencyLimiter
from fnhost.models import (
    FunctionMetrics,
    FunctionSpec,
    InvocationRecord,
    InvocationRequest,
    InvocationResult,
    LogLine,
    LogQuery,
    StoredFunction,
    TriggerSpec,
)
from fnhost.names import IDENTIFIER, check_app_id, check_env_name, check_function_name
from fnhost.records import RecordWriter
from fnhost.schemas import DeployRequest, TriggerBody

if TYPE_CHECKING:
    from fnhost.platform import Platform

log = logging.getLogger("fnhost.service")

MAX_DEPLOY_RETRIES = 5
MAX_CACHED_DEFINITIONS = 10_000
STALE_READ_SECONDS = 2.0
RETENTION_INTERVAL_SECONDS = 3600
LATE_LOGS_MARGIN_S = 5.0


def utcnow() -> datetime:
    return datetime.now(UTC)


class FunctionService:
    def __init__(self, platform: Platform) -> None:
        self.platform = platform
        self.records = RecordWriter(platform)
        self.limits = platform.config.limits
        self.in_flight = ConcurrencyLimiter(self.limits.max_concurrent_per_function)
        self._late_records: set[asyncio.Task[None]] = set()
        self._specs: dict[tuple[str, str], FunctionSpec] = {}
        self._definitions: dict[tuple[str, str], tuple[float, StoredFunction | None]] = {}

    async def start(self) -> None:
        self.platform.cipher.load()
        await self.records.start()
        self._retention = asyncio.create_task(self._retention_loop(), name="fnhost-retention")

    async def stop(self) -> None:
        retention = getattr(self, "_retention", None)
        if retention is not None:
            retention.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await retention
        if self._late_records:  # records still waiting for waitUntil work: the runtime
            await asyncio.wait(self._late_records, timeout=LATE_LOGS_MARGIN_S)  # ends it soon
        await self.records.stop()

    async def enforce_retention(self) -> int:
        """Delete invocation records past `limits.log_retention_days` or beyond the newest
        `limits.log_retention_per_function` of each function; return how many."""
        days = self.limits.log_retention_days
        before = utcnow() - timedelta(days=days) if days > 0 else datetime.min.replace(tzinfo=UTC)
        deleted = await self.platform.store.prune_invocations(
            before, self.limits.log_retention_per_function
        )
        if deleted:
            log.info("log retention deleted %d invocation records", deleted)
        return deleted

    async def _retention_loop(self) -> None:
        while True:
            try:
                await self.enforce_retention()
            except Exception as exc:  # the store may be down; try again next round
                log.warning("log retention failed: %s", type(exc).__name__)
            await asyncio.sleep(RETENTION_INTERVAL_SECONDS)

    # -- deploy, read, delete ------------------------------------------------------

    async def deploy(self, app_id: str, request: DeployRequest) -> tuple[StoredFunction, bool]:
        """Create or update a function; return it and whether it was created.

        The code is checked by the runtime before anything is stored, so a
        rejected deploy leaves the stored function untouched.
        """
        check_app_id(app_id)
        check_function_name(request.name)
        max_code = self.platform.config.server.max_code_bytes
        if len(request.code.encode()) > max_code:
            raise TooLarge(f"code: larger than {max_code} bytes", {"field": "code"})
        if not request.code.strip():
            raise InvalidField("code: must not be empty", {"field": "code"})
        for field, text in (("code", request.code), ("description", request.description)):
            if text and "\x00" in text:  # PostgreSQL text cannot hold NUL
                raise InvalidField(f"{field}: must not contain NUL characters", {"field": field})
        triggers = self._validate_triggers(request)
        env = self._validate_env(request.env_vars or {}) if request.env_vars is not None else None
        for _ in range(MAX_DEPLOY_RETRIES):
            current = await self.platform.store.get_function(app_id, request.name)
            if current is None:
                await self._check_function_count(app_id)
            now = utcnow()
            encrypted_env = (
                {k: self.platform.cipher.encrypt(v) for k, v in env.items()}
                if env is not None
                else (current.encrypted_env if current else {})
            )
            function = StoredFunction(
                app_id=app_id,
                name=request.name,
                code=request.code,
                description=request.description or "",
                triggers=triggers,
                timeout_ms=request.timeout_ms,
                memory_limit_mb=request.memory_limit_mb,
                env_var_names=tuple(sorted(encrypted_env)),
                encrypted_env=encrypted_env,
                version=current.version + 1 if current else 1,
                revision=current.revision + 1 if current else 1,
                created_at=current.created_at if current else now,
                updated_at=now,
            )
            await self.platform.runtime.check(self.spec_of(function))
            try:
                await self.platform.store.save_function(
                    function, current.revision if current else None
                )
            except Conflict:
                continue  # a concurrent deploy won; build on top of it
            self._forget(app_id, request.name)
            await self.platform.notify(
                "fnhost_function_deployed", platform=self.platform, function=function
            )
            return function, current is None
        raise Conflict("the function is being changed concurrently; retry")

    def _validate_triggers(self, request: DeployRequest) -> tuple[TriggerSpec, ...]:
        if request.triggers is not None:
            bodies, field = request.triggers, "triggers"
        elif request.trigger is not None:
            bodies, field = [request.trigger], "trigger"
        else:
            bodies, field = [TriggerBody(type="http")], "trigger"
        if not bodies:
            raise InvalidField("triggers: at least one trigger is required", {"field": field})
        seen: set[str] = set()
        specs = []
        for index, body in enumerate(bodies):
            where = f"{field}[{index}]" if field == "triggers" else field
            trigger = self.platform.triggers.get(body.type)
            if trigger is None:
                known = ", ".join(sorted(self.platform.triggers))
                raise InvalidField(
                    f"{where}.type: unknown trigger type {body.type!r} (known: {known})",
                    {"field": f"{where}.type"},
                )
            if body.type in seen:
                raise InvalidField(
                    f"{where}.type: at most one {body.type!r} trigger per function",
                    {"field": f"{where}.type"},
                )
            seen.add(body.type)
            specs.append(TriggerSpec(body.type, trigger.validate(body.config, f"{where}.config")))
        return tuple(specs)

    def _validate_env(self, env: dict[str, Any], field: str = "envVars") -> dict[str, Any]:
        self._check_env_count(len(env), field)
        max_bytes = self.limits.max_env_value_bytes
        for key, value in env.items():
            check_env_name(key, f"{field}.{key}")
            if value is not None and max_bytes and len(value.encode()) > max_bytes:
                raise TooLarge(
                    f"{field}.{key}: value larger than {max_bytes} bytes",
                    {"field": f"{field}.{key}"},
                )
        return env

    def _check_env_count(self, count: int, field: str) -> None:
        limit = self.limits.max_env_vars
        if limit and count > limit:
            raise InvalidField(f"{field}: at most {limit} env vars", {"field": field})

    async def _check_function_count(self, app_id: str) -> None:
        limit = self.limits.max_functions_per_app
        if limit and await self.platform.store.count_functions(app_id) >= limit:
            raise Conflict(f"app {app_id!r} has reached limits.max_functions_per_app ({limit})")

    async def get(self, app_id: str, name: str) -> StoredFunction:
        check_app_id(app_id)
        _check_could_exist(app_id, name)
        function = await self.platform.store.get_function(app_id, name)
        if function is None:
            raise NotFound(f"function {name!r} not found in app {app_id!r}")
        return function

    async def resolve(self, app_id: str, name: str) -> StoredFunction:
        """`get` for the hot path of calls: served from memory for
        `server.function_cache_seconds`; this process's own changes apply at once."""
        ttl = self.platform.config.server.function_cache_seconds
        key = (app_id, name)
        cached = self._definitions.get(key)
        now = time.monotonic()
        if cached is None or cached[0] < now:
            check_app_id(app_id)
            _check_could_exist(app_id, name)
            try:
                read = self.platform.store.get_function(app_id, name)
                # With a definition to fall back on, a store that does not answer is down.
                function = await (asyncio.wait_for(read, STALE_READ_SECONDS) if cached else read)
            except (Unavailable, ConnectionError, TimeoutError):  # a store may not wrap them
                if cached is None:
                    raise
                # The store is down: keep serving the definition we last saw.
                log.warning("store unavailable; serving %s/%s from cache", app_id, name)
                return _found(cached[1], app_id, name)
            if ttl > 0:
                if len(self._definitions) >= MAX_CACHED_DEFINITIONS:
                    self._definitions.clear()  # bounded: unknown names must not grow it forever
                self._definitions[key] = (now + ttl, function)
        else:
            function = cached[1]
        return _found(function, app_id, name)

    def _forget(self, app_id: str, name: str) -> None:
        self._definitions.pop((app_id, name), None)
        self._specs.pop((app_id, name), None)

    async def list_functions(self, app_id: str) -> list[StoredFunction]:
        check_app_id(app_id)
        return await self.platform.store.list_functions(app_id)

    async def delete(self, app_id: str, name: str) -> None:
        function = await self.get(app_id, name)
        if not await self.platform.store.delete_function(app_id, name):
            raise NotFound(f"function {name!r} not found in app {app_id!r}")
        self._forget(app_id, name)
        await self.platform.runtime.evict(function)
        await self.platform.notify(
            "fnhost_function_deleted", platform=self.platform, function=function
        )

    async def patch_env(
        self, app_id: str, name: str, changes: dict[str, str | None]
    ) -> StoredFunction:
        """Merge env vars; a None value removes the key. Takes effect on the next call."""
        self._validate_env(changes, "env")
        for _ in range(MAX_DEPLOY_RETRIES):
            current = await self.get(app_id, name)
            encrypted = dict(current.encrypted_env)
            for key, value in changes.items():
                if value is None:
                    encrypted.pop(key, None)
                else:
                    encrypted[key] = self.platform.cipher.encrypt(value)
            self._check_env_count(len(encrypted), "env")
            function = msgspec.structs.replace(
                current,
                encrypted_env=encrypted,
                env_var_names=tuple(sorted(encrypted)),
                revision=current.revision + 1,
                updated_at=utcnow(),
            )
            try:
                await self.platform.store.save_function(function, current.revision)
            except Conflict:
                continue
            self._forget(app_id, name)
            await self.platform.notify(
                "fnhost_function_deployed", platform=self.platform, function=function
            )
            return function
        raise Conflict("the function is being changed concurrently; retry")

    # -- invocations ----------------------------------------------------------------

    def spec_of(self, function: StoredFunction) -> FunctionSpec:
        """The runnable form of a function: env decrypted, cached per revision."""
        key = (function.app_id, function.name)
        cached = self._specs.get(key)
        if cached is not None and cached.revision == function.revision:
            return cached
        fields = msgspec.structs.asdict(function)
        encrypted = fields.pop("encrypted_env")
        spec = FunctionSpec(
            **fields, env={k: self.platform.cipher.decrypt(v) for k, v in encrypted.items()}
        )
        self._specs[key] = spec
        return spec

    async def invoke(
        self,
        function: StoredFunction,
        request: InvocationRequest,
        *,
        trigger: str,
        path: str,
        buffer: bool = True,
    ) -> tuple[InvocationResult, InvocationRecord]:
        """Run one invocation and record it (every outcome, exactly once).

        A streamed body is read to the end first when `buffer` is true. Otherwise the
        result's `stream` is handed back wrapped, the record returned is provisional,
        and the final record is written when the stream ends or the caller goes away.
        """
        started = utcnow()
        clock = time.perf_counter()
        try:
            with self.in_flight.hold(f"{function.app_id}/{function.name}", function.name):
                result = await self.platform.runtime.invoke(self.spec_of(function), request)
        except (TooLarge, RateLimited):
            raise
        except Exception as exc:
            # A runtime bug must not lose the record nor leak a traceback to the caller.
            log.exception(
                "runtime %s failed to invoke %s/%s",
                self.platform.runtime.name,
                function.app_id,
                function.name,
            )
            result = InvocationResult(
                outcome="crash", error=f"runtime failure: {type(exc).__name__}"
            )
        # The result is updated in place (stream end, late logs), so this always reads it whole.
        make_record = partial(self._record, result, function, request, trigger, path, started)
        if result.stream is not None:
            if not buffer:
                result.stream = self._recorded_stream(
                    result.stream, result, function, make_record, clock
                )
                return result, make_record()
            result.body = b"".join([chunk async for chunk in result.stream])
            result.stream = None
        if not result.duration_ms:
            result.duration_ms = (time.perf_counter() - clock) * 1000
        if result.late_logs is not None:
            if not buffer:
                # ctx.waitUntil work is still running: answer now, record once it settles.
                task = asyncio.create_task(
                    self._finish_after_late_logs(result, function, make_record)
                )
                self._late_records.add(task)
                task.add_done_callback(self._late_records.discard)
                return result, make_record()
            await self._add_late_logs(result, function)
        record = make_record()
        await self._finish(function, record)
        return result, record

    async def _add_late_logs(self, result: InvocationResult, function: StoredFunction) -> None:
        late, result.late_logs = result.late_logs, None
        if late is None:
            return
        try:  # the runtime settles it by the timeout; the margin guards against a runtime bug
            result.logs = [
                *result.logs,
                *await asyncio.wait_for(
                    asyncio.ensure_future(late), function.timeout_ms / 1000 + LATE_LOGS_MARGIN_S
                ),
            ]
        except TimeoutError:
            result.logs = [*result.logs, LogLine("warn", "[fnhost] waitUntil logs lost", utcnow())]

    async def _finish_after_late_logs(
        self,
        result: InvocationResult,
        function: StoredFunction,
        make_record: Callable[[], InvocationRecord],
    ) -> None:
        await self._add_late_logs(result, function)
        await self._finish(function, make_record())

    async def _recorded_stream(
        self,
        chunks: AsyncIterator[bytes],
        result: InvocationResult,
        function: StoredFunction,
        make_record: Callable[[], InvocationRecord],
        clock: float,
    ) -> AsyncIterator[bytes]:
        try:
            async for chunk in chunks:
                yield chunk
        finally:
            if not result.duration_ms:
                result.duration_ms = (time.perf_counter() - clock) * 1000
            # Shielded: a caller that disconnects mid-stream cancels us, not the record.
            await asyncio.shield(
                asyncio.ensure_future(self._finish_after_late_logs(result, function, make_record))
            )

    def _record(
        self,
        result: InvocationResult,
        function: StoredFunction,
        request: InvocationRequest,
        trigger: str,
        path: str,
        started: datetime,
    ) -> InvocationRecord:
        return InvocationRecord(
            id=request.invocation_id,
            app_id=function.app_id,
            function_name=function.name,
            function_version=function.version,
            timestamp=started,
            trigger=trigger,
            method=request.method,
            path=path.replace("\x00", "%00"),  # callers choose it; stores may refuse NUL
            status_code=caller_status(result),
            duration_ms=round(result.duration_ms, 3),
            memory_mb=round(result.memory_mb, 1),
            error=result.error.replace("\x00", "\ufffd")
            if result.outcome != "ok" and result.error is not None
            else None,
            level="info" if result.outcome == "ok" else "error",
            logs=self._bounded_logs(result.logs),
        )

    def _bounded_logs(self, lines: list[LogLine]) -> tuple[LogLine, ...]:
        """Console lines as recorded: at most `max_log_lines_per_invocation`, each at most
        `max_log_line_bytes`, with a marker saying what was cut (as Supabase and Appwrite do)."""
        max_lines = self.limits.max_log_lines_per_invocation or len(lines)
        max_bytes = self.limits.max_log_line_bytes
        kept = []
        for line in lines[:max_lines]:
            raw = line.message.encode()
            if max_bytes and len(raw) > max_bytes:
                cut = raw[:max_bytes].decode("utf-8", "ignore")
                line = LogLine(
                    line.level, f"{cut}… [truncated {len(raw) - max_bytes} bytes]", line.timestamp
                )
            kept.append(line)
        if len(lines) > max_lines:
            kept.append(
                LogLine(
                    "warn",
                    f"[truncated: {len(lines) - max_lines} more log lines]",
                    lines[max_lines].timestamp,
                )
            )
        return tuple(kept)

    async def _finish(self, function: StoredFunction, record: InvocationRecord) -> None:
        await self.records.append(record)
        await self.platform.notify(
            "fnhost_invocation_finished", platform=self.platform, function=function, record=record
        )

    async def logs(self, app_id: str, name: str, query: LogQuery) -> list[InvocationRecord]:
        await self.get(app_id, name)
        return await self.platform.store.query_invocations(app_id, name, query)

    async def metrics(self, app_id: str, name: str) -> FunctionMetrics:
        return await self.platform.store.function_metrics(app_id, name)


OUTCOME_STATUS = {"error": 500, "bad_return": 500, "timeout": 504, "memory": 502, "crash": 502}


def caller_status(result: InvocationResult) -> int:
    """The status the caller sees: the function's own, or the one its failure maps to."""
    return result.status_code if result.outcome == "ok" else OUTCOME_STATUS[result.outcome]


def _check_could_exist(app_id: str, name: str) -> None:
    """A name no deploy could have created is not found, without asking the store (which
    may refuse it: PostgreSQL text cannot hold NUL)."""
    if not IDENTIFIER.fullmatch(name):
        raise NotFound(f"function {name!r} not found in app {app_id!r}")


def _found(function: StoredFunction | None, app_id: str, name: str) -> StoredFunction:
    if function is None:
        raise NotFound(f"function {name!r} not found in app {app_id!r}")
    return function


def new_invocation_id() -> str:
    return uuid.uuid4().hex
