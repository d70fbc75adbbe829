"""The state store's identity and its marker: a store that had state and lost it is refused,
a first start just works, and what cannot be known is logged and exported."""

from __future__ import annotations

import gc
import json
import logging
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from agent.state import (
    CREATED_METRIC,
    StateLost,
    StateStoreError,
    StoreCreatedCollector,
    check_store,
    open_store,
    store_identity,
)
from tests.support.privileges import as_unprivileged


def url(path: Path) -> str:
    return f"sqlite:///{path}"


def marker(db: Path) -> dict[str, object]:
    return dict(json.loads(db.with_name(db.name + ".identity").read_text()))


def rows(engine: Engine) -> int:
    with engine.connect() as connection:
        return int(connection.execute(text("SELECT count(*) FROM probe")).scalar_one())


def write_rows(engine: Engine, count: int) -> None:
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE IF NOT EXISTS probe (n INTEGER)"))
        for n in range(count):
            connection.execute(text("INSERT INTO probe VALUES (:n)"), {"n": n})


KILLED_WRITER = textwrap.dedent("""
    import os, signal, sys
    from sqlalchemy import text
    from agent.state import open_store
    engine = open_store(sys.argv[1])
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE IF NOT EXISTS probe (n INTEGER)"))
        for n in range(20):
            connection.execute(text("INSERT INTO probe VALUES (:n)"), {"n": n})
    if sys.argv[2] == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    # "exit": a normal exit without closing anything by hand
""")


def run_writer(db: Path, how: str) -> None:
    """20 rows committed by another process that then dies (SIGKILL) or just exits."""
    result = subprocess.run([sys.executable, "-c", KILLED_WRITER, url(db), how],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == (-9 if how == "kill" else 0), result.stderr


def test_first_start_creates_the_identity_and_the_marker(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    db = tmp_path / "state.db"
    with caplog.at_level(logging.ERROR, logger="agent.state"):
        engine = open_store(url(db), clock=lambda: 1_700_000_000.0)
    identity = store_identity(engine)
    assert identity is not None and identity.created_at == 1_700_000_000.0
    assert marker(db)["store_id"] == identity.store_id
    # Nothing tells a first start from a volume lost with its marker: said, once, loudly.
    (record,) = [r for r in caplog.records if r.name == "agent.state"]
    assert "created a new, empty state store" in record.getMessage()
    assert record.levelno == logging.ERROR
    (family,) = StoreCreatedCollector(identity).collect()
    assert family.name == CREATED_METRIC
    assert family.samples[0].value == 1_700_000_000.0
    engine.dispose()
    assert marker(db)["open_by"] is None  # closed cleanly: every commit is in the file

    again = open_store(url(db))
    assert store_identity(again) == identity
    again.dispose()


def test_deleted_store_is_refused_then_accepted(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    engine = open_store(url(db))
    write_rows(engine, 5)
    identity = store_identity(engine)
    engine.dispose()
    db.unlink()

    for attempt in (lambda: check_store(url(db)), lambda: open_store(url(db))):
        with pytest.raises(StateLost) as info:
            attempt()
        message = str(info.value)
        assert message.startswith(f"state store {db} was lost: the database file is missing")
        assert identity is not None and identity.store_id in message
        assert "--accept-empty-state" in message and "\n" not in message
    assert not db.exists()  # refusing created nothing

    check_store(url(db), accept_empty=True)
    fresh = open_store(url(db))
    new = store_identity(fresh)
    assert new is not None and new.store_id != identity.store_id
    assert new.created_at >= identity.created_at
    fresh.dispose()


@pytest.mark.parametrize("size", [0, 4096, 5000])
def test_truncated_store_is_refused_and_set_aside_when_accepted(tmp_path: Path,
                                                               size: int) -> None:
    db = tmp_path / "state.db"
    engine = open_store(url(db))
    write_rows(engine, 2000)
    engine.dispose()
    assert db.stat().st_size > 3 * 4096
    os.truncate(db, size)

    with pytest.raises(StateLost, match=r"the database file is (empty|truncated)"):
        check_store(url(db))
    check_store(url(db), accept_empty=True)
    (aside,) = tmp_path.glob("state.db.lost-*")
    assert aside.stat().st_size == size  # kept for a post-mortem, not deleted
    fresh = open_store(url(db))
    assert "probe" not in {name for (name,) in fresh.connect().execute(
        text("SELECT name FROM sqlite_master"))}
    fresh.dispose()


def test_killed_process_then_wal_removed_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    run_writer(db, "kill")
    wal = tmp_path / "state.db-wal"
    assert wal.exists() and marker(db)["open_by"]
    wal.unlink()

    with pytest.raises(StateLost, match=r"its write-ahead log state\.db-wal is missing") as info:
        check_store(url(db))
    assert "to go on with what is left" in str(info.value)
    identity = marker(db)["store_id"]
    check_store(url(db), accept_empty=True)  # keeps the database: it is sound, only older
    engine = open_store(url(db))
    identity_after = store_identity(engine)
    assert identity_after is not None and identity_after.store_id == identity
    engine.dispose()


def test_killed_process_with_its_wal_recovers_everything(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    run_writer(db, "kill")
    check_store(url(db))
    engine = open_store(url(db))
    assert rows(engine) == 20
    engine.dispose()
    assert not (tmp_path / "state.db-wal").exists()
    assert marker(db)["open_by"] is None


def test_normal_exit_leaves_a_closed_marker(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    run_writer(db, "exit")
    assert not (tmp_path / "state.db-wal").exists()
    assert marker(db)["open_by"] is None
    check_store(url(db))


def test_engine_dropped_without_dispose_is_not_taken_for_a_loss(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    engine = open_store(url(db))
    write_rows(engine, 3)
    del engine
    gc.collect()  # connections closed behind the pool's back: no close() hook ran
    again = open_store(url(db))
    assert rows(again) == 3
    again.dispose()


def test_replaced_by_another_store_is_refused(tmp_path: Path) -> None:
    db, other = tmp_path / "state.db", tmp_path / "other" / "state.db"
    other.parent.mkdir()
    open_store(url(db)).dispose()
    open_store(url(other)).dispose()
    db.write_bytes(other.read_bytes())
    with pytest.raises(StateLost, match="the database is another store"):
        check_store(url(db))


def test_emptied_store_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    open_store(url(db)).dispose()
    db.unlink()
    sqlite3.connect(db).execute("CREATE TABLE x (a)").connection.close()
    with pytest.raises(StateLost, match="has no store identity"):
        check_store(url(db))


def test_damaged_store_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    open_store(url(db)).dispose()
    data = bytearray(db.read_bytes())
    data[:16] = b"not sqlite at al"
    db.write_bytes(bytes(data))
    with pytest.raises(StateLost, match="not a SQLite database any more"):
        check_store(url(db))


def test_store_from_before_identities_is_adopted(tmp_path: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    db = tmp_path / "state.db"
    connection = sqlite3.connect(db)
    connection.execute("CREATE TABLE probe (n INTEGER)")
    connection.execute("INSERT INTO probe VALUES (1)")
    connection.commit()
    connection.close()
    with caplog.at_level(logging.WARNING, logger="agent.state"):
        engine = open_store(url(db))
    assert rows(engine) == 1
    assert any("had no identity yet" in r.getMessage() for r in caplog.records)
    assert not any(r.levelno >= logging.ERROR for r in caplog.records)
    engine.dispose()


def test_volume_lost_with_its_marker_is_a_new_store_with_a_new_time(tmp_path: Path) -> None:
    """What the marker cannot survive: the new creation time is what the alert sees."""
    volume = tmp_path / "volume"
    volume.mkdir()
    engine = open_store(url(volume / "state.db"), clock=lambda: 1000.0)
    engine.dispose()
    for path in volume.iterdir():
        path.unlink()
    engine = open_store(url(volume / "state.db"), clock=lambda: 2000.0)
    identity = store_identity(engine)
    assert identity is not None and identity.created_at == 2000.0
    engine.dispose()


def test_missing_directory_is_one_line(tmp_path: Path) -> None:
    db = tmp_path / "nope" / "state.db"
    with pytest.raises(StateStoreError) as info:
        open_store(url(db))
    assert str(info.value) == (f"state store {db}: directory {db.parent} does not exist: "
                               "check state.url and the volume mounted there")


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A folder user nobody can reach (pytest's own tmp_path is root's, mode 0700)."""
    path = Path(tempfile.mkdtemp(prefix="steward-state-test-"))
    path.chmod(0o755)
    yield path
    for child in path.rglob("*"):
        child.chmod(0o755)
    shutil.rmtree(path)


def _check_as_nobody(db: Path) -> str:
    def ask() -> str:
        try:
            check_store(url(db))
        except StateStoreError as exc:
            return str(exc)
        return "no error"

    return as_unprivileged(ask)


def test_read_only_directory_is_one_line(shared_dir: Path) -> None:
    directory = shared_dir / "ro"
    directory.mkdir(mode=0o555)
    assert _check_as_nobody(directory / "state.db") == (
        f"state store {directory / 'state.db'}: cannot create files in {directory} "
        "(Permission denied): check the volume is mounted read-write and writable by this "
        "user")


def test_unreadable_directory_is_one_line(shared_dir: Path) -> None:
    directory = shared_dir / "closed"
    directory.mkdir(mode=0o700)
    assert _check_as_nobody(directory / "sub" / "state.db") == (
        f"state store {directory / 'sub' / 'state.db'}: cannot reach directory "
        f"{directory / 'sub'} (Permission denied): check the volume is mounted and this user "
        "may enter it")


def test_unwritable_database_file_is_one_line(shared_dir: Path) -> None:
    db = shared_dir / "state.db"
    open_store(url(db)).dispose()
    shared_dir.chmod(0o777)
    db.chmod(0o444)
    assert _check_as_nobody(db) == (f"state store {db}: cannot open {db} for writing "
                                    "(Permission denied): check its owner and permissions")


def test_in_memory_and_other_databases_skip_the_file_checks() -> None:
    check_store("sqlite://")
    engine = open_store("sqlite://")
    assert store_identity(engine) is not None
    engine.dispose()


OPENER = "import sys; from agent.state import open_store, store_identity; " \
         "print(store_identity(open_store(sys.argv[1])).store_id)"


@pytest.mark.slow  # a dozen interpreters started at once
def test_replicas_starting_together_agree_on_one_store(tmp_path: Path) -> None:
    """Three processes create the same new store at once, then exit while others start:
    one identity, no refusal (the creation race and the close race both once refused)."""
    for round_ in range(8):
        db = tmp_path / f"round-{round_}" / "state.db"
        db.parent.mkdir()
        processes = [subprocess.Popen([sys.executable, "-c", OPENER, url(db)],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True) for _ in range(3)]
        results = [(p.communicate(timeout=60), p.returncode) for p in processes]
        assert [code for _, code in results] == [0, 0, 0], [err for (_, err), _ in results]
        assert len({out.strip() for (out, _), _ in results}) == 1
