"""Who delivers a group: exactly one notifier process at a time.

- SQLite (one replica): the process holds an exclusive lock on ``<database>.notifier-lock``
  for its lifetime, so a second notifier on the same file refuses to start instead of
  posting every group twice; within the process the worker runs one step per group.
- PostgreSQL (several replicas): a session-level advisory lock per group, taken with
  ``pg_try_advisory_lock`` on a connection of the delivery thread's own and released after
  the step. A replica that dies (SIGKILL, node lost) loses its connection, and PostgreSQL
  releases its locks at once: another replica takes the group over, finds the write-ahead
  marker of the post in flight and looks it up in Slack before posting. No lease to expire,
  no clocks to agree on. Two groups whose keys hash alike only take turns.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
from pathlib import Path
from typing import Final, Protocol

from sqlalchemy import Connection, Engine, text

log = logging.getLogger(__name__)

# pg_try_advisory_lock(int4, int4): the first key says "a notifier group", so that other
# users of advisory locks in a shared database do not collide with these.
_LOCK_CLASS: Final = 0x5374_6477  # "Stdw"


class StoreInUse(RuntimeError):
    """Another notifier holds this SQLite store."""


class GroupLocks(Protocol):
    def try_lock(self, group_id: str) -> bool: ...

    def unlock(self, group_id: str) -> None: ...

    def close(self) -> None: ...


class ProcessGroupLocks:
    """One notifier per SQLite file; the worker already runs one step per group."""

    def __init__(self, database: str | None) -> None:
        self._fd: int | None = None
        if database and database != ":memory:" and not database.startswith("file::memory:"):
            path = Path(f"{database}.notifier-lock")
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise StoreInUse(
                    f"another notifier is using the state store {database}: SQLite holds "
                    "one notifier; point state.url at PostgreSQL to run several") from None
            self._fd = fd

    def try_lock(self, group_id: str) -> bool:
        return True

    def unlock(self, group_id: str) -> None:
        pass

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # releases the flock
            self._fd = None


def _key(group_id: str) -> int:
    value = int(group_id[:8], 16)
    return value - 2**32 if value >= 2**31 else value  # int4


class PostgresGroupLocks:
    """Advisory locks on a dedicated connection per delivery thread."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._local = threading.local()
        self._all: list[Connection] = []
        self._lock = threading.Lock()

    def _conn(self) -> Connection:
        conn: Connection | None = getattr(self._local, "conn", None)
        if conn is None or conn.closed or conn.invalidated:
            conn = self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    def _drop(self) -> None:
        conn: Connection | None = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.invalidate()
                conn.close()

    def try_lock(self, group_id: str) -> bool:
        try:
            got = self._conn().execute(text("SELECT pg_try_advisory_lock(:c, :k)"),
                                       {"c": _LOCK_CLASS, "k": _key(group_id)}).scalar_one()
        except Exception:
            # A connection lost mid-way may have taken the lock; dropping it releases it.
            log.warning("cannot take a group lock; will retry", exc_info=True)
            self._drop()
            return False
        return bool(got)

    def unlock(self, group_id: str) -> None:
        try:
            self._conn().execute(text("SELECT pg_advisory_unlock(:c, :k)"),
                                 {"c": _LOCK_CLASS, "k": _key(group_id)})
        except Exception:
            # Whatever the state of the lock, closing the session releases it.
            log.warning("cannot release a group lock; dropping its connection", exc_info=True)
            self._drop()

    def close(self) -> None:
        with self._lock:
            conns, self._all = self._all, []
        for conn in conns:
            with contextlib.suppress(Exception):
                conn.close()


def group_locks_for(engine: Engine) -> GroupLocks:
    if engine.dialect.name == "postgresql":
        return PostgresGroupLocks(engine)
    if engine.dialect.name == "sqlite":
        return ProcessGroupLocks(engine.url.database)
    raise ValueError(f"state.url: the notifier supports sqlite and postgresql, not "
                     f"{engine.dialect.name}")
