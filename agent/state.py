"""The state store: one SQLAlchemy engine over ``state.url``, and the store's identity, which
makes losing the store loud.

Components declare their tables on a ``MetaData`` of their own, in their own modules (the
notifier's outbox, the hygiene audit log), and hand it to :func:`open_store`: what a store
holds is what its opener names, never what happened to be imported first. SQLite is the default;
any SQLAlchemy URL works (PostgreSQL for an HA controller or notifier).

Identity: a store records, when it is created, one row (a random id and its creation time)
in ``steward_store``; every component exports that time as
``steward_state_store_created_timestamp_seconds``. A store that is replaced by an empty one
therefore shows a new creation time, which the StewardStateStoreRecreated alert watches.

A SQLite store also has a marker file beside it, ``<database>.identity``, holding the same
identity and whether a process had the store open when it was last seen. The marker is how
a component knows that the store *had* state: with a marker and a database file that is
missing, empty, truncated, damaged, of another identity, or open by a process that died
and now without its write-ahead log, :func:`check_store` and :func:`open_store` refuse to
start (:class:`StateLost`) until the loss is accepted with ``--accept-empty-state``. What
the marker cannot survive (the whole volume lost, or a PostgreSQL database emptied) is
logged as an error when the new store is created, and the alert fires on the new time.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import logging
import os
import sqlite3
import tempfile
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import (
    CheckConstraint,
    Column,
    Engine,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    create_engine,
    event,
    insert,
    inspect,
    select,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError, SQLAlchemyError

log = logging.getLogger(__name__)

_identity = MetaData()

identity_table = Table(
    "steward_store", _identity,
    # One row: two replicas creating the store at once cannot both write an identity.
    Column("id", Integer, CheckConstraint("id = 1"), primary_key=True),
    Column("store_id", String(32), nullable=False),
    Column("created_at", Float, nullable=False),
)

CREATED_METRIC: Final = "steward_state_store_created_timestamp_seconds"
ACCEPT_FLAG: Final = "--accept-empty-state"
_SQLITE_HEADER: Final = b"SQLite format 3\x00"
# Identifies this process in a marker's ``open_by``: a pid is reused across containers.
_PROCESS_TOKEN: Final = uuid.uuid4().hex


class StateStoreError(Exception):
    """The state store cannot be used. The message is one line that names the store."""


class StateLost(StateStoreError):
    """The store had state and it is gone (or damaged): refuse until the loss is accepted."""

    def __init__(self, store: str, what: str, identity: StoreIdentity | None, *,
                 keep_database: bool = False) -> None:
        had = f" (it held store {identity.store_id}, created {identity.created_iso})" \
            if identity is not None else ""
        accept = "go on with what is left" if keep_database else \
            "set what is left aside and begin with an empty store"
        super().__init__(f"state store {store} was lost: {what}{had}: restore it from a "
                         f"backup, or start once with {ACCEPT_FLAG} to {accept}")
        self.store = store
        self.what = what
        self.identity = identity


@dataclass(frozen=True)
class StoreIdentity:
    store_id: str
    created_at: float

    @property
    def created_iso(self) -> str:
        return datetime.fromtimestamp(self.created_at, UTC).isoformat(timespec="seconds")


# -- SQLite files: the marker beside the database ----------------------------------------

@dataclass(frozen=True)
class _Files:
    database: Path

    @property
    def marker(self) -> Path:
        return self.database.with_name(self.database.name + ".identity")

    @property
    def lock(self) -> Path:
        return self.database.with_name(self.database.name + ".lock")

    @property
    def wal(self) -> Path:
        return self.database.with_name(self.database.name + "-wal")

    @property
    def sidecars(self) -> tuple[Path, ...]:
        name = self.database.name
        return tuple(self.database.with_name(name + suffix)
                     for suffix in ("-wal", "-shm", "-journal"))


@dataclass(frozen=True)
class _Marker:
    identity: StoreIdentity | None  # None: the marker exists but cannot be read
    open_by: str | None


def _sqlite_files(url: str) -> _Files | None:
    """The database file of a SQLite URL; None for other databases and in-memory SQLite."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return None
    database = parsed.database or ""
    if database in ("", ":memory:") or database.startswith("file:") or \
            parsed.query.get("mode") == "memory":
        return None
    return _Files(Path(database).absolute())


def _read_marker(files: _Files) -> _Marker | None:
    try:
        text = files.marker.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StateStoreError(f"state store {files.database}: cannot read its marker "
                              f"{files.marker} ({exc.strerror or exc})") from exc
    try:
        data = json.loads(text)
        identity = StoreIdentity(str(data["store_id"]), float(data["created_at"]))
        open_by = data.get("open_by")
        return _Marker(identity, str(open_by) if open_by else None)
    except (ValueError, KeyError, TypeError):
        # Garbled, yet it says a store was here: treat it as one whose identity is unknown.
        return _Marker(None, None)


def _write_marker(files: _Files, identity: StoreIdentity, *, open_by: str | None) -> None:
    # Replaced whole (rename), never fsynced: it must survive the process (the page cache
    # does), not a power cut. A marker update lost to one errs safe: "not open" with the
    # log SQLite itself kept, or no marker at all, which is a first start's behaviour.
    data = {"store_id": identity.store_id, "created_at": identity.created_at,
            "created": identity.created_iso, "database": str(files.database),
            "open_by": open_by}
    fd, tmp = tempfile.mkstemp(dir=files.marker.parent, prefix=f".{files.marker.name}.")
    try:
        os.fchmod(fd, 0o644)  # readable like the database beside it (mkstemp makes 0600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle)
            handle.write("\n")
        os.replace(tmp, files.marker)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _check_directory(files: _Files) -> None:
    """StateStoreError, one line naming the path, when SQLite could not work here."""
    directory = files.database.parent
    try:
        is_dir = directory.is_dir()
    except OSError as exc:  # a parent this user may not enter
        raise StateStoreError(
            f"state store {files.database}: cannot reach directory {directory} "
            f"({exc.strerror or exc}): check the volume is mounted and this user may enter "
            "it") from exc
    if not is_dir:
        raise StateStoreError(f"state store {files.database}: directory {directory} does not "
                              "exist: check state.url and the volume mounted there")
    try:
        # SQLite creates its -wal and -shm files beside the database: the directory must
        # take new files, and only trying tells (a read-only mount, another owner, root).
        fd, probe = tempfile.mkstemp(dir=directory, prefix=".steward-write-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise StateStoreError(
            f"state store {files.database}: cannot create files in {directory} "
            f"({exc.strerror or exc}): check the volume is mounted read-write and writable "
            "by this user") from exc
    for path in (files.database, *files.sidecars):
        if not path.exists():
            continue
        try:
            with path.open("r+b"):
                pass
        except OSError as exc:
            raise StateStoreError(
                f"state store {files.database}: cannot open {path} for writing "
                f"({exc.strerror or exc}): check its owner and permissions") from exc


def _header_problem(files: _Files) -> str | None:
    """Why the database file is not the store it was (None when its header is sound)."""
    try:
        size = files.database.stat().st_size
    except FileNotFoundError:
        return "the database file is missing"
    if size == 0:
        return "the database file is empty (0 bytes)"
    with files.database.open("rb") as handle:
        header = handle.read(100)
    if len(header) < 100 or not header.startswith(_SQLITE_HEADER):
        return "the database file is not a SQLite database any more"
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    if page_size < 512 or size % page_size:
        return f"the database file is truncated ({size} bytes, not whole pages)"
    pages = int.from_bytes(header[28:32], "big")
    counter_valid = header[24:28] == header[92:96]
    # With a write-ahead log present, a checkpoint cut short may leave the file shorter
    # than its header says until the log is replayed; only a file without one must match.
    if counter_valid and pages and not files.wal.exists() and size < pages * page_size:
        return (f"the database file is truncated ({size} bytes; its header says "
                f"{pages * page_size})")
    return None


def _read_identity_sqlite(files: _Files) -> StoreIdentity | None:
    """The identity row, read straight from the file (no engine, no tables created)."""
    connection = sqlite3.connect(str(files.database), timeout=5)
    try:
        row = connection.execute(
            "SELECT store_id, created_at FROM steward_store WHERE id = 1").fetchone()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return None
        raise
    finally:
        connection.close()
    return StoreIdentity(str(row[0]), float(row[1])) if row else None


@dataclass(frozen=True)
class _Loss:
    what: str
    # The database itself is sound (only its log is gone): accepting keeps what it has.
    keep_database: bool = False


def _loss(files: _Files, marker: _Marker) -> _Loss | None:
    """What was lost of a store whose marker says it had state (None: nothing)."""
    problem = _header_problem(files)
    if problem is not None:
        return _Loss(problem)
    if marker.open_by not in (None, _PROCESS_TOKEN) and not files.wal.exists() and \
            not _held_by_a_live_process(files):
        # The process that had it open died without closing it (a clean close folds the
        # log into the database and clears open_by): its last commits were in the log.
        return _Loss(f"its write-ahead log {files.wal.name} is missing (the last commits "
                     "are gone)", keep_database=True)
    try:
        found = _read_identity_sqlite(files)
    except sqlite3.DatabaseError as exc:
        return _Loss(f"the database file is damaged ({exc})")
    if found is None:
        return _Loss("the database has no store identity (it was emptied or replaced)")
    if marker.identity is not None and found.store_id != marker.identity.store_id:
        return _Loss(f"the database is another store ({found.store_id}, created "
                     f"{found.created_iso})")
    _closed_cleanly(files)  # reading it folded a dead process's log into the database
    return None


def _set_aside(files: _Files) -> list[Path]:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    moved = []
    for path in (files.database, *files.sidecars):
        if path.exists():
            target = path.with_name(f"{path.name}.lost-{stamp}")
            path.rename(target)
            moved.append(target)
    return moved


def check_store(url: str, *, accept_empty: bool = False) -> None:
    """Before a component starts: can its store be used, and is it the store it had?

    Raises :class:`StateStoreError` when a SQLite store's directory or files cannot be
    written, and :class:`StateLost` when the store had state that is gone. With
    ``accept_empty`` a loss is logged as an error instead, what is left of the store is
    renamed ``*.lost-<time>`` (a database without its log is kept), and the next
    :func:`open_store` begins a new store. Other databases are checked by ``open_store``.
    """
    files = _sqlite_files(url)
    if files is None:
        return
    _check_directory(files)
    marker = _read_marker(files)
    if marker is None:
        return  # a first start, or a store from before identities: open_store adopts it
    loss = _loss(files, marker)
    if loss is None:
        return
    if not accept_empty:
        raise StateLost(str(files.database), loss.what, marker.identity,
                        keep_database=loss.keep_database)
    # Without its marker the store left behind is adopted by the next open_store as it is
    # (a database that only lost its log keeps its identity, or gets a new one).
    moved = [] if loss.keep_database else _set_aside(files)
    files.marker.unlink(missing_ok=True)
    log.error("state store loss accepted (%s): %s", ACCEPT_FLAG, loss.what, extra={
        "store": str(files.database),
        "store_id": marker.identity.store_id if marker.identity else None,
        "set_aside": [str(path) for path in moved]})


# -- Tracking whether a SQLite store is open ---------------------------------------------

_tracked_lock = threading.Lock()
_tracked: dict[Path, bool] = {}  # database -> whether this process marked it open
_engines: weakref.WeakSet[Engine] = weakref.WeakSet()
_holds: dict[Path, int] = {}  # database -> descriptor of its lock file, held shared


def _hold(files: _Files) -> None:
    """Hold the store's lock file shared until this process exits (the kernel lets go of
    it however the process ends). A process that finds it held knows a live process has
    the store open, so a log missing for a moment while that one closes is not a loss."""
    with _tracked_lock:
        if files.database in _holds:
            return
        fd = os.open(files.lock, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_SH)
        _holds[files.database] = fd


def _held_by_a_live_process(files: _Files) -> bool:
    try:
        fd = os.open(files.lock, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # also lets go of the exclusive lock when it was granted
    return False


def _closed_cleanly(files: _Files) -> None:
    """After a close: once the write-ahead log is gone, every commit is in the database
    file, so the marker stops saying that a process has the store open."""
    if files.wal.exists():
        return
    marker = _read_marker(files) if files.marker.exists() else None
    if marker is not None and marker.identity is not None and marker.open_by is not None:
        with contextlib.suppress(OSError):
            _write_marker(files, marker.identity, open_by=None)
    with _tracked_lock:
        _tracked[files.database] = False


def _mark_open(files: _Files) -> None:
    with _tracked_lock:
        if _tracked.get(files.database):
            return
    marker = _read_marker(files)
    if marker is None or marker.identity is None or not files.wal.exists():
        return
    _write_marker(files, marker.identity, open_by=_PROCESS_TOKEN)
    with _tracked_lock:
        _tracked[files.database] = True


def _connection_class(files: _Files) -> type[sqlite3.Connection]:
    class TrackedConnection(sqlite3.Connection):
        def close(self) -> None:
            super().close()
            with contextlib.suppress(OSError, StateStoreError):
                _closed_cleanly(files)

    return TrackedConnection


@atexit.register
def _close_all() -> None:
    # Before the interpreter tears objects down (closing connections behind our back),
    # close every engine so that the markers of clean exits say so.
    for engine in list(_engines):
        with contextlib.suppress(Exception):
            engine.dispose()
    with _tracked_lock:
        databases = list(_tracked)
    for database in databases:
        with contextlib.suppress(OSError, StateStoreError):
            _closed_cleanly(_Files(database))


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL: readers do not block the writer; FULL: a commit survives power loss, which the
    # notifier's "persist before 200" and the hygiene restore records rely on.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _tracking(files: _Files) -> Callable[[Any, Any], None]:
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        # The log file appears with the first read; the marker says "open" only after it.
        dbapi_connection.execute("SELECT count(*) FROM sqlite_master").fetchone()
        with contextlib.suppress(OSError, StateStoreError):
            _mark_open(files)

    return on_connect


# -- Opening a store ---------------------------------------------------------------------

def _display(url: str) -> str:
    files = _sqlite_files(url)
    if files is not None:
        return str(files.database)
    return make_url(url).render_as_string(hide_password=True)


def _ensure_identity(engine: Engine, *, existed: bool, display: str,
                     clock: Callable[[], float]) -> StoreIdentity:
    with engine.begin() as connection:
        row = connection.execute(select(identity_table.c.store_id,
                                        identity_table.c.created_at)).first()
    if row is not None:
        return StoreIdentity(str(row.store_id), float(row.created_at))
    identity = StoreIdentity(uuid.uuid4().hex, clock())
    try:
        with engine.begin() as connection:
            connection.execute(insert(identity_table).values(
                id=1, store_id=identity.store_id, created_at=identity.created_at))
        if engine.dialect.name == "sqlite":
            # Into the database file now, not only the log: a store that later loses its
            # log still knows which store it is.
            with engine.connect() as connection:
                connection.exec_driver_sql("PRAGMA wal_checkpoint(FULL)")
    except IntegrityError:  # another replica created it first
        found = store_identity(engine)
        assert found is not None
        return found
    if existed:
        log.warning("state store had no identity yet (written by an older version): "
                    "recorded one", extra={"store": display, "store_id": identity.store_id})
    else:
        # First start, or a store lost with its volume: nothing here can tell them apart.
        log.error("created a new, empty state store; if this component had state before, it "
                  "is lost (StewardStateStoreRecreated fires on the new "
                  f"{CREATED_METRIC})", extra={"store": display,
                                               "store_id": identity.store_id})
    return identity


def _create_tables(engine: Engine, tables: Sequence[MetaData], *, attempts: int = 3) -> None:
    # create_all checks, then creates: two replicas starting on a new store race between
    # the two, and the loser's CREATE fails on a table the winner just made. Checking
    # again sees it.
    for attempt in range(attempts):
        try:
            for declared in tables:
                declared.create_all(engine)
            return
        except (OperationalError, ProgrammingError, IntegrityError):
            if attempt == attempts - 1:
                raise
            time.sleep(0.05 * (attempt + 1))


def open_store(url: str, *, tables: Iterable[MetaData] = (), create: bool = True,
               clock: Callable[[], float] = time.time) -> Engine:
    """An engine for ``url``. With ``create`` (components that write), the store is first
    checked like :func:`check_store` does (:class:`StateLost` when it lost its state), the
    tables declared on ``tables`` (and the identity's) that do not exist yet are created,
    and the identity is recorded.
    Raises :class:`StateStoreError` with one line naming the store when it cannot be used.
    """
    files = _sqlite_files(url)
    display = _display(url)
    existed = False
    if files is not None and create:
        check_store(url)
        existed = files.database.exists() and files.database.stat().st_size > 0
    connect_args = {"factory": _connection_class(files)} if files is not None else {}
    engine = create_engine(url, future=True, connect_args=connect_args)
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
        if files is not None:
            event.listen(engine, "connect", _tracking(files))
            _engines.add(engine)
    if not create:
        return engine
    declared = [_identity, *tables]
    try:
        if files is None:
            names = {name for one in declared for name in one.tables}
            existed = bool(set(inspect(engine).get_table_names()) & names)
        _create_tables(engine, declared)
        identity = _ensure_identity(engine, existed=existed, display=display, clock=clock)
    except SQLAlchemyError as exc:
        engine.dispose()
        reason = " ".join(str(getattr(exc, "orig", None) or exc).split())  # one line
        raise StateStoreError(f"state store {display}: {reason}: check state.url and that "
                              "the database is reachable and writable") from exc
    if files is not None:
        marker = _read_marker(files)
        if marker is not None and marker.identity is not None and \
                marker.identity.store_id != identity.store_id:
            engine.dispose()
            raise StateLost(str(files.database), f"the database is another store "
                            f"({identity.store_id}, created {identity.created_iso})",
                            marker.identity)
        _hold(files)
        if marker is None or marker.identity != identity or marker.open_by != _PROCESS_TOKEN:
            _write_marker(files, identity, open_by=_PROCESS_TOKEN)
        with _tracked_lock:
            _tracked[files.database] = True
    return engine


def store_identity(engine: Engine) -> StoreIdentity | None:
    """The identity recorded in the store (None before :func:`open_store` created it)."""
    try:
        with engine.connect() as connection:
            row = connection.execute(select(identity_table.c.store_id,
                                            identity_table.c.created_at)).first()
    except SQLAlchemyError:
        return None
    return StoreIdentity(str(row.store_id), float(row.created_at)) if row else None


class StoreCreatedCollector(Collector):
    """``steward_state_store_created_timestamp_seconds`` for a store opened by this process.

    The identity never changes while the process runs (a replaced store is refused or
    logged at start), so it is read once and a scrape never waits on the database.
    """

    def __init__(self, identity: StoreIdentity | None) -> None:
        self._identity = identity

    def collect(self) -> Iterable[Metric]:
        if self._identity is None:
            return []
        family = GaugeMetricFamily(
            CREATED_METRIC, "When this component's state store was created. A new value "
            "means the store was replaced by an empty one and its state lost.")
        family.add_metric([], self._identity.created_at)
        return [family]
