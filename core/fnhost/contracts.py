"""The classes plugins implement: runtimes, stores and triggers.

A plugin returns subclasses from its registration hook (`fnhost_runtimes`,
`fnhost_stores`, `fnhost_triggers`). The core builds one object per selected
class from the class's own config section (validated into `Config`) and the
platform, then awaits `start()`; at shutdown it awaits `stop()`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar

import msgspec

from fnhost.errors import InvalidField
from fnhost.models import (
    ApiKey,
    App,
    FunctionDefinition,
    FunctionMetrics,
    FunctionSpec,
    InvocationRecord,
    InvocationRequest,
    InvocationResult,
    LogQuery,
    StoredFunction,
)

if TYPE_CHECKING:
    from fnhost.platform import Platform


class NoConfig(msgspec.Struct, forbid_unknown_fields=True):
    """The config of a plugin class that takes none."""


class PluginObject:
    """Common shape: a unique `name`, a `Config` Struct, built from (config, platform)."""

    name: ClassVar[str]
    Config: ClassVar[type[msgspec.Struct]] = NoConfig

    def __init__(self, config: Any, platform: Platform) -> None:
        self.config = config
        self.platform = platform

    async def start(self) -> None:
        """Acquire resources; called once before serving."""

    async def stop(self) -> None:
        """Release every resource (processes, connections); called once at shutdown."""


class Runtime(PluginObject, ABC):
    """Runs function code. Raises `fnhost.errors` exceptions, never HTTP statuses."""

    @abstractmethod
    async def check(self, function: FunctionSpec) -> None:
        """Load the code and verify it parses and has a default-export function.

        Raise `CodeCheckFailed` with the compiler's message (and line) otherwise.
        """

    @abstractmethod
    async def invoke(self, function: FunctionSpec, request: InvocationRequest) -> InvocationResult:
        """Run one invocation. Failures are outcomes in the result, not exceptions:
        "error" (thrown), "bad_return" (not a Response), "timeout", "memory", "crash"."""

    @abstractmethod
    async def evict(self, function: FunctionDefinition) -> None:
        """Drop every warm worker of this function (all revisions), letting calls in flight end."""


class Store(PluginObject, ABC):
    """Keeps functions (with versions), ciphertext env vars, invocation records, apps and keys."""

    # functions
    @abstractmethod
    async def save_function(self, function: StoredFunction, expected_revision: int | None) -> None:
        """Insert (`expected_revision` None) or update a function, atomically.

        Raise `Conflict` when inserting an existing function, or when the stored
        revision is not `expected_revision` (a concurrent change). A new `version`
        is also kept in the function's version history.
        """

    @abstractmethod
    async def get_function(self, app_id: str, name: str) -> StoredFunction | None:
        """The function, or None."""

    @abstractmethod
    async def list_functions(self, app_id: str | None = None) -> list[StoredFunction]:
        """Functions of one app (or of every app when None), ordered by app and name.

        Names are case-sensitive; `env_var_names` are the sorted keys of `encrypted_env`.
        """

    @abstractmethod
    async def count_functions(self, app_id: str) -> int:
        """How many functions the app has, without loading them."""

    @abstractmethod
    async def delete_function(self, app_id: str, name: str) -> bool:
        """Delete a function with its versions, env vars and invocation records."""

    # invocation records
    @abstractmethod
    async def append_invocations(self, records: list[InvocationRecord]) -> None:
        """Append records in one transaction; durable when this returns."""

    @abstractmethod
    async def query_invocations(
        self, app_id: str, name: str, query: LogQuery
    ) -> list[InvocationRecord]:
        """Records of one function, newest first, filtered by `query`.

        `since` is inclusive; level "error" keeps failed invocations only.
        """

    @abstractmethod
    async def prune_invocations(self, before: datetime, keep_per_function: int) -> int:
        """Log retention: delete records older than `before` and, for each function, all
        but its newest `keep_per_function` (0: no count limit); return how many."""

    @abstractmethod
    async def function_metrics(self, app_id: str, name: str) -> FunctionMetrics:
        """Aggregates over all recorded invocations of one function.

        Percentiles are nearest-rank (durations 1..100 give p50 = 50, p95 = 95);
        `error_rate` is a percent rounded to 2 decimals; zeros and None when empty.
        """

    # cron fire claims: each fire time runs once across every process sharing the store
    @abstractmethod
    async def claim_cron_fire(
        self,
        app_id: str,
        name: str,
        fire_time: datetime,
        owner: str,
        unfinished_since: datetime | None = None,
    ) -> bool:
        """Claim one fire time of a function's cron trigger for `owner` (a process id).

        Return True for exactly one caller across all processes sharing this store
        (backed by a unique row per function and fire time, or the database's own
        locking), False for every other caller of the same (app_id, name, fire_time).

        With `unfinished_since`, refuse it also (False for every caller) while an earlier
        fire time of the function claimed at or after `unfinished_since` is not finished
        (`finish_cron_fire`): that run may still be going, and runs must not overlap. A
        refused fire time stays claimed: it is skipped, not run later.
        """

    @abstractmethod
    async def finish_cron_fire(self, app_id: str, name: str, fire_time: datetime) -> None:
        """Mark the run of a claimed fire time as ended, whatever its outcome."""

    @abstractmethod
    async def prune_cron_claims(self, before: datetime) -> int:
        """Delete claims of fire times before `before`; return how many were deleted."""

    # apps and keys
    @abstractmethod
    async def get_app(self, app_id: str) -> App | None:
        """The app, or None."""

    @abstractmethod
    async def save_app(self, app: App) -> None:
        """Insert or replace an app."""

    @abstractmethod
    async def add_api_key(self, key: ApiKey) -> None:
        """Store a new key (its hash only)."""

    @abstractmethod
    async def find_api_key(self, key_hash: str) -> ApiKey | None:
        """The key with that hash, revoked or not, or None."""

    @abstractmethod
    async def list_api_keys(self, app_id: str | None = None) -> list[ApiKey]:
        """Keys of one app, or every key (admin included) when None."""

    @abstractmethod
    async def revoke_api_key(self, key_id: str) -> bool:
        """Mark a key revoked; False if there is no such key."""


class Trigger(PluginObject):
    """A trigger type. Validates its own per-function config; fires through the platform."""

    TriggerConfig: ClassVar[type[msgspec.Struct]] = NoConfig

    def validate(self, config: dict[str, Any], field: str) -> dict[str, Any]:
        """Validate one function's trigger config and return it normalized.

        Raise `InvalidField` naming `field` (e.g. "triggers[0].config.schedule").
        """
        try:
            value = msgspec.convert(config, self.TriggerConfig)
        except msgspec.ValidationError as exc:
            raise InvalidField(validation_message(exc, field), {"field": field}) from None
        return msgspec.to_builtins(value, order="deterministic")  # type: ignore[no-any-return]

    def describe(self, function: FunctionDefinition) -> dict[str, Any]:
        """Extra fields shown in the function's details (e.g. the next fire time)."""
        return {}

    async def publish(self, app_id: str, channel: str, data: Any) -> None:
        """Deliver a function's `ctx.publish(channel, data)` to this trigger's subscribers
        of that app (on every process). Triggers without subscribers ignore it."""


def validation_message(exc: msgspec.ValidationError, prefix: str) -> str:
    """Turn msgspec's "Expected `int` - at `$.x`" into "prefix.x: expected int"."""
    text = str(exc)
    message, _, where = text.partition(" - at `$")
    path = where.rstrip("`")
    field = prefix + path if path else prefix
    unknown = "Object contains unknown field `"
    if message.startswith(unknown):
        return f"{field}.{message.removeprefix(unknown).rstrip('`')}: unknown key"
    missing = "Object missing required field `"
    if message.startswith(missing):
        return f"{field}.{message.removeprefix(missing).rstrip('`')}: required".lstrip(".")
    message = message.replace("`", "")
    return f"{field}: {message[0].lower()}{message[1:]}" if field else message
