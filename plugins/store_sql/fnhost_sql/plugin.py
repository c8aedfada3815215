"""Entry point of the fnhost-sql distribution: provides the store "sql"."""

from __future__ import annotations

from fnhost import hookimpl
from fnhost.contracts import Store
from fnhost_sql.store import SqlStore


@hookimpl
def fnhost_stores() -> list[type[Store]]:
    return [SqlStore]
