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
from sqlalchemy import Connection, Select, create_engine, event, text
from sqlalchemy.engine import Dialect, make_url
from sqlalchemy.exc import DBAPIError


class Database:
    def __init__(self, url: str) -> None:
        self.url = url
        self._compiled: dict[Select, _Compiled] = {}
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

    def first(self, statement: Select, params: dict) -> dict | None:
        """The first row of one read-only statement, as a dict of column values; None when there is none.

        For the hottest reads (GetTrainingJob): the statement runs on a pooled DBAPI connection, compiled once,
        without BEGIN/COMMIT (a single statement reads one consistent snapshot by itself) and without
        SQLAlchemy's per-call Connection and Result objects, which cost several times the query itself.
        Failures still surface as SQLAlchemy errors, and a lost connection leaves the pool."""
        compiled = self._compiled.get(statement)
        if compiled is None:
            compiled = self._compiled[statement] = _Compiled(statement, self.engine.dialect)
        args = [params[name] for name in compiled.names] if compiled.names is not None else params
        dialect = self.engine.dialect
        lost = False
        try:
            conn = self.engine.raw_connection()
            try:
                cursor = conn.cursor()
                cursor.execute(compiled.sql, args)
                row = cursor.fetchone()
                cursor.close()
            except dialect.loaded_dbapi.Error as error:
                lost = dialect.is_disconnect(error, conn.dbapi_connection, None)
                if lost:
                    conn.invalidate(error)
                raise
            finally:
                conn.close()
        except dialect.loaded_dbapi.Error as error:
            raise DBAPIError.instance(compiled.sql, args, error, dialect.loaded_dbapi.Error,
                                      connection_invalidated=lost, dialect=dialect) from error
        if row is None:
            return None
        values = dict(zip(compiled.keys, row))
        for key, convert in compiled.conversions:
            values[key] = convert(values[key])
        return values

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


class _Compiled:
    """A select compiled for one dialect: its SQL, the order of its parameters (positional paramstyles) and
    SQLAlchemy's conversion of each result column (e.g. SQLite's 0/1 to a bool)."""

    def __init__(self, statement: Select, dialect: Dialect) -> None:
        compiled = statement.compile(dialect=dialect)
        self.sql = compiled.string
        self.names = tuple(compiled.positiontup) if dialect.positional else None
        self.keys = [column.key for column in statement.selected_columns]
        processors = [(column.key, column.type.dialect_impl(dialect).result_processor(dialect, None))
                      for column in statement.selected_columns]
        self.conversions = [(key, convert) for key, convert in processors if convert is not None]


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cursor = dbapi_conn.cursor()
    # WAL lets readers run beside the one writer; the busy timeout makes writers queue, not fail.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()

