"""The metadata database: SQLAlchemy 2 engine (SQLite file by default, PostgreSQL in production) and
Alembic migrations run at start. Each service owns its tables (prefixed with its name) and its own
Alembic version table, so services migrate independently in one database."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from alembic.config import Config
from alembic.runtime.environment import EnvironmentContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Executable, Row, create_engine, event, text
from sqlalchemy.engine import make_url


class Database:
    def __init__(self, url: str) -> None:
        self.url = url
        parsed = make_url(url)
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        if self.is_sqlite:
            if parsed.database:
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None hands transaction control to us: read() and write() send BEGIN themselves.
            self.engine = create_engine(url, connect_args={"isolation_level": None, "timeout": 30,
                                                           "check_same_thread": False})
            event.listen(self.engine, "connect", _sqlite_pragmas)
        else:
            self.engine = create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=10,
                                        connect_args={"connect_timeout": 5})

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A read-write transaction (on SQLite it takes the write lock up front, so it never deadlocks:
        a deferred transaction that reads and then writes can fail at once with "database is locked" when
        another process wrote in between; IMMEDIATE waits for the lock instead)."""
        with self._transaction("BEGIN IMMEDIATE") as conn:
            yield conn

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A read-only transaction (on SQLite it does not block writers)."""
        with self._transaction("BEGIN") as conn:
            yield conn

    def first(self, statement: Executable, params: dict) -> Row | None:
        """The first row of one read-only statement, run without BEGIN/COMMIT: a single statement reads one
        consistent snapshot by itself, and two fewer round trips make the hottest reads (GetTrainingJob) cheaper."""
        with self.engine.connect() as conn:
            return conn.execute(statement, params).first()

    @contextmanager
    def _transaction(self, sqlite_begin: str) -> Iterator[Connection]:
        # An explicit BEGIN rather than a "begin" event listener: any engine event puts every statement
        # on SQLAlchemy's slower dispatching path (a single-row read took twice as long).
        with self.engine.connect() as conn, conn.begin():
            if self.is_sqlite:
                conn.exec_driver_sql(sqlite_begin)
            yield conn

    def ping(self) -> None:
        with self.read() as conn:
            conn.execute(text("SELECT 1"))

    def migrate(self, owner: str, versions_dir: Path) -> None:
        """Upgrade `owner`'s tables to the newest revision found in `versions_dir`."""
        script = ScriptDirectory(str(versions_dir), version_locations=[str(versions_dir)])
        with self.write() as conn:
            with EnvironmentContext(Config(), script, fn=lambda rev, _: script._upgrade_revs("head", rev),
                                    destination_rev="head") as env:
                env.configure(connection=conn, version_table=f"alembic_version_{owner}")
                env.run_migrations()

    def dispose(self) -> None:
        self.engine.dispose()


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cursor = dbapi_conn.cursor()
    # WAL lets readers run beside the one writer; the busy timeout makes writers queue, not fail.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()

