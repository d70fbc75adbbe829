"""A real PostgreSQL (Debian ``postgresql``) started by the test run, as TESTING.md says:
``initdb`` as the ``postgres`` user (it refuses root), ``pg_ctl`` on a random port with its
socket in a temp dir, stopped at the end. One server per session; each test that asks for
``postgres_url`` gets a database of its own.

With ``CI=true`` a missing server fails the test; elsewhere it skips.
"""

from __future__ import annotations

import glob
import itertools
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.binaries import in_ci
from tests.support.net import free_port


def postgres_bindir() -> Path | None:
    """The folder of initdb and pg_ctl: Debian keeps them out of PATH."""
    for found in (shutil.which("pg_ctl"),
                  *sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), reverse=True)):
        if found and (Path(found).parent / "initdb").exists():
            return Path(found).resolve().parent
    return None


def require_postgres() -> Path:
    bindir = postgres_bindir()
    if bindir is not None:
        return bindir
    message = "PostgreSQL (initdb, pg_ctl) not found; run scripts/install-test-deps.sh"
    if in_ci():
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@dataclass
class Postgres:
    bindir: Path
    workdir: Path
    port: int
    _as_postgres: list[str]
    _databases = itertools.count(1)

    @property
    def data(self) -> Path:
        return self.workdir / "data"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        """A new, empty database; its SQLAlchemy URL."""
        import psycopg

        name = f"steward_test_{os.getpid()}_{next(self._databases)}"
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres",
                             autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def log(self) -> str:
        path = self.workdir / "postgres.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        subprocess.run([*self._as_postgres, str(self.bindir / "pg_ctl"), "-D", str(self.data),
                        "-m", "fast", "-w", "stop"], capture_output=True, timeout=60,
                       check=False)
        shutil.rmtree(self.workdir, ignore_errors=True)


def start_postgres(*, fsync: bool = True) -> Postgres:
    """A fresh cluster on 127.0.0.1:<free port>; trust authentication for ``postgres``."""
    bindir = require_postgres()
    workdir = Path(tempfile.mkdtemp(prefix="steward-pg-"))
    as_postgres: list[str] = []
    if os.geteuid() == 0:
        # initdb and postgres refuse to run as root: the cluster belongs to "postgres".
        shutil.chown(workdir, "postgres", "postgres")
        as_postgres = ["runuser", "-u", "postgres", "--"]
    result = subprocess.run(
        [*as_postgres, str(bindir / "initdb"), "-D", str(workdir / "data"), "-A", "trust",
         "-U", "postgres", "--no-sync", "-E", "UTF8", "--locale", "C"],
        capture_output=True, text=True, timeout=120, check=False)
    if result.returncode != 0:
        raise AssertionError(f"initdb failed: {result.stderr[-2000:]}")
    port = free_port()
    options = (f"-k {workdir} -p {port} -c listen_addresses=127.0.0.1 "
               f"-c max_connections=300 -c fsync={'on' if fsync else 'off'}")
    result = subprocess.run(
        [*as_postgres, str(bindir / "pg_ctl"), "-D", str(workdir / "data"), "-o", options,
         "-l", str(workdir / "postgres.log"), "-w", "-t", "60", "start"],
        capture_output=True, text=True, timeout=90, check=False)
    server = Postgres(bindir, workdir, port, as_postgres)
    if result.returncode != 0:
        log = server.log()
        server.stop()
        raise AssertionError(f"PostgreSQL did not start: {result.stderr[-1000:]}\n{log[-2000:]}")
    return server


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[Postgres]:
    server = start_postgres()
    yield server
    server.stop()


@pytest.fixture
def postgres_url(postgres_server: Postgres) -> str:
    """A database of this test's own on the session's PostgreSQL."""
    return postgres_server.create_database()
