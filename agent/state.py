"""The state store: one SQLAlchemy engine over ``state.url`` and the metadata of its tables.

Components declare their tables on :data:`metadata` in their own modules (the notifier's
outbox, the hygiene audit log) and call :func:`open_store` once. SQLite is the default;
any SQLAlchemy URL works (PostgreSQL for an HA controller).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, MetaData, create_engine, event

metadata = MetaData()


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL: readers do not block the writer; FULL: a commit survives power loss, which the
    # notifier's "persist before 200" and the hygiene restore records rely on.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def open_store(url: str, *, create: bool = True) -> Engine:
    """An engine for ``url``; creates the declared tables that do not exist yet."""
    engine = create_engine(url, future=True)
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    if create:
        metadata.create_all(engine)
    return engine
