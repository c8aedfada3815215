"""fnhost store "sql": SQLAlchemy 2 async on SQLite (default), PostgreSQL or MariaDB/MySQL."""

from fnhost_sql.store import SqlStore, SqlStoreConfig

__all__ = ["SqlStore", "SqlStoreConfig"]
