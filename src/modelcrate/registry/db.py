"""Registry metadata through the DB-API: SQLite (``sqlite3``) or PostgreSQL (``psycopg``).

Queries are plain SQL with ``?`` placeholders (rewritten to ``%s`` for psycopg) that both
databases run unchanged; rows come back as named tuples. The schema is made and changed
by the alembic migrations in ``registry/migrations`` (``migrate.py``), which are the only
code that imports SQLAlchemy: opening a registry whose schema is current costs one query.

SQLite runs in WAL mode with ``synchronous=FULL`` and a busy timeout; write
transactions start with ``BEGIN IMMEDIATE`` so two publishers never deadlock
on a lock upgrade (the classic "database is locked" mid-transaction).
"""

from __future__ import annotations

import collections
import functools
import sqlite3
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelcrate.errors import IntegrityError, RegistryError, UsageError, first_line
from modelcrate.registry.migrate import SCHEMA_HEAD, upgrade

if TYPE_CHECKING:
    from modelcrate.manifest import Manifest

BUSY_TIMEOUT_MS = 60_000
WRITE_LOCK = 0x6D637262  # PostgreSQL advisory lock key of writers that must not interleave
BATCH = 500  # keys per IN (...): under every database's parameter limit
POOL_SIZE = 8
Row = Any  # a named tuple of the selected columns

# Every table the migrations make, parents before children, with its columns; the
# primary key's columns come first (backup dumps rows in that order). A test checks the
# migrated schema against this on both databases.
TABLES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "versions": (
        ("id",),
        ("name", "version", "digest", "manifest", "description", "size", "created_at"),
    ),
    "version_files": (("version_id", "path"), ("sha256", "size")),
    "version_tags": (("version_id", "tag"), ()),
    "version_parents": (("version_id", "parent_digest"), ("seq", "parent_ref", "operation")),
    "aliases": (("name", "alias"), ("version", "updated_at")),
    "alias_events": (("id",), ("name", "alias", "action", "version", "previous", "at")),
    "file_chunks": (("file_sha", "seq"), ("chunk_sha", "size")),
    "packs": (("id",), ("size", "created_at")),
    "chunks": (("sha256",), ("pack", "offset", "size")),
    "signatures": (("id",), ("digest", "key_id", "bundle", "created_at")),
    "trusted_keys": (("key_id",), ("name", "pem", "added_at")),
    "settings": (("key",), ("value",)),
    "audit_log": (("id",), ("at", "actor", "action", "name", "version", "digest", "detail")),
    "webhooks": (("id",), ("url", "events", "secret", "created_at", "created_by")),
    "webhook_deliveries": (
        ("id",),
        (
            "webhook_id",
            "event",
            "body",
            "created_at",
            "attempts",
            "next_attempt_at",
            "delivered_at",
            "last_status",
            "last_error",
        ),
    ),
    "evaluations": (
        ("id",),
        ("name", "version", "digest", "at", "actor", "data", "samples", "metrics"),
    ),
    "rollouts": (
        ("id",),
        (
            "name",
            "alias",
            "stable",
            "candidate",
            "mode",
            "steps",
            "step",
            "interval_s",
            "slos",
            "state",
            "started_at",
            "step_started_at",
            "ended_at",
            "reason",
            "figures",
            "decider",
            "lease_until",
            "started_by",
        ),
    ),
}


def columns(table: str) -> tuple[str, ...]:
    key, rest = TABLES[table]
    return key + rest


def quoted(column: str) -> str:
    return f'"{column}"'  # "offset" and "key" are SQL keywords


def stored_manifest(row: Row) -> Manifest:
    """A ``versions`` row's manifest, checked and matched to its digest (the manifest module
    is imported here, not by commands that only list)."""
    from modelcrate.manifest import parse_manifest

    manifest = parse_manifest(row.manifest.encode())
    if manifest.digest != row.digest:
        raise IntegrityError(f"{row.name}@{row.version}: stored manifest does not match its digest")
    return manifest


class Transaction:
    """One transaction: run SQL with ``?`` placeholders, read named-tuple rows."""

    def __init__(self, cursor: Any, database: Database) -> None:
        self.cursor, self.database, self.dialect = cursor, database, database.dialect
        self.after_commit: list[Callable[[], None]] = []  # run once the commit succeeded
        self.info: dict[str, Any] = {}

    def execute(self, sql: str, *params: Any) -> int:
        """Run one statement; the number of rows it changed."""
        self.cursor.execute(_native(sql, self.dialect), params)
        return int(self.cursor.rowcount)

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            self.cursor.executemany(_native(sql, self.dialect), rows)

    def all(self, sql: str, *params: Any) -> list[Row]:
        self.cursor.execute(_native(sql, self.dialect), params)
        return list(self.cursor.fetchall())

    def first(self, sql: str, *params: Any) -> Row | None:
        self.cursor.execute(_native(sql, self.dialect), params)
        return self.cursor.fetchone()

    def scalar(self, sql: str, *params: Any) -> Any:
        row = self.first(sql, *params)
        return None if row is None else row[0]

    def column(self, sql: str, *params: Any) -> list[Any]:
        return [row[0] for row in self.all(sql, *params)]

    def insert(self, table: str, **values: Any) -> int | None:
        """Insert one row; its new ``id`` when the table has one."""
        names = ", ".join(quoted(c) for c in values)
        sql = f"INSERT INTO {table} ({names}) VALUES ({marks(len(values))})"
        if TABLES[table][0] == ("id",) and "id" not in values:
            return int(self.scalar(sql + " RETURNING id", *values.values()))
        self.execute(sql, *values.values())
        return None

    def insert_rows(self, table: str, rows: list[dict[str, Any]], conflict: str = "") -> None:
        """Insert many rows (dicts with the same keys) in batches; ``conflict``: an
        ``ON CONFLICT …`` clause both databases accept."""
        if not rows:
            return
        names = list(rows[0])
        sql = (
            f"INSERT INTO {table} ({', '.join(quoted(c) for c in names)}) "
            f"VALUES ({marks(len(names))}) {conflict}"
        )
        values = [[row[c] for c in names] for row in rows]
        for start in range(0, len(values), 5000):
            self.executemany(sql, values[start : start + 5000])

    def values_in(self, sql: str, keys: Iterable[Any]) -> list[Row]:
        """Rows of ``sql`` (whose ``IN (?)`` takes the keys) asked in batches of 500, so a
        big file's thousands of chunks stay under every database's parameter limit."""
        wanted, found = sorted(set(keys)), []
        for start in range(0, len(wanted), BATCH):
            batch = wanted[start : start + BATCH]
            found.extend(self.all(sql.replace("IN (?)", f"IN ({marks(len(batch))})"), *batch))
        return found

    def for_update(self, clause: str = "FOR UPDATE") -> str:
        """A row-locking clause for PostgreSQL (SQLite's writers already hold the lock)."""
        return f" {clause}" if self.dialect == "postgresql" else ""

    def lock_writes(self) -> None:
        """Serialize writers that must not interleave (publish commits and gc). SQLite
        already holds its write lock from BEGIN IMMEDIATE; PostgreSQL takes a transaction
        lock."""
        if self.dialect == "postgresql":
            self.execute("SELECT pg_advisory_xact_lock(?)", WRITE_LOCK)


def marks(count: int) -> str:
    return ", ".join("?" * count)


@functools.lru_cache(maxsize=512)
def _native(sql: str, dialect: str) -> str:
    return sql.replace("?", "%s") if dialect == "postgresql" else sql


class Database:
    """Connections to one registry database, pooled; ``read()`` and ``write()`` give a
    transaction that commits when the block ends and rolls back if it raises."""

    def __init__(
        self,
        connect: Callable[[], Any],
        dialect: str,
        url: str,
        errors: tuple[type[Exception], ...],
        location: str = "",
    ) -> None:
        """``url``: where the database is, as SQLAlchemy spells it for the migrations;
        ``errors``: the driver's exceptions, reported as RegistryError; ``location``: the
        database as shown to people (no password; default ``url``)."""
        self.connect, self.dialect, self.url, self.errors = connect, dialect, url, errors
        self.location = location or url
        self.idle: collections.deque[tuple[Any, float]] = collections.deque()
        self.lock = threading.Lock()

    @contextmanager
    def read(self) -> Iterator[Transaction]:
        with self._transaction(write=False) as tx:
            yield tx

    @contextmanager
    def write(self) -> Iterator[Transaction]:
        """A transaction that takes the write lock up front (SQLite: BEGIN IMMEDIATE)."""
        with self._transaction(write=True) as tx:
            yield tx

    @contextmanager
    def _transaction(self, *, write: bool) -> Iterator[Transaction]:
        try:
            connection = self._take()
        except self.errors as exc:
            raise RegistryError(f"cannot open the registry database: {exc}") from exc
        tx = Transaction(connection.cursor(), self)
        try:
            if self.dialect == "sqlite":
                tx.cursor.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            yield tx
            connection.commit()
        except BaseException as exc:
            try:
                connection.rollback()
                self._give(connection)
            except Exception:
                connection.close()  # broken: not returned to the pool
            if isinstance(exc, self.errors):
                raise RegistryError(
                    f"registry database: {first_line(exc)}; nothing was changed"
                ) from exc
            raise
        self._give(connection)
        for callback in tx.after_commit:
            callback()

    def _take(self) -> Any:
        with self.lock:
            while self.idle:
                connection, since = self.idle.pop()
                if self.dialect == "sqlite" or _alive(connection, since):
                    return connection
                connection.close()
        return self.connect()

    def _give(self, connection: Any) -> None:
        with self.lock:
            if len(self.idle) < POOL_SIZE:
                self.idle.append((connection, time.monotonic()))
                return
        connection.close()

    def close(self) -> None:
        with self.lock:
            while self.idle:
                self.idle.pop()[0].close()


def _alive(connection: Any, since: float) -> bool:
    """A pooled PostgreSQL connection still works (checked when idle over a second)."""
    if connection.closed or connection.broken:
        return False
    if time.monotonic() - since < 1.0:
        return True
    try:
        connection.execute("SELECT 1")
        connection.rollback()
    except Exception:
        return False
    return True


def _named_rows(cursor: sqlite3.Cursor, values: tuple[Any, ...]) -> Row:
    return _row_class(tuple(d[0] for d in cursor.description))(*values)


@functools.lru_cache(maxsize=256)
def _row_class(names: tuple[str, ...]) -> Any:
    return collections.namedtuple("Row", names, rename=True)


def sqlite_database(path: Path) -> Database:
    """The embedded registry's database at ``path``, migrated to the newest schema."""

    def connect() -> sqlite3.Connection:
        connection = sqlite3.connect(
            path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False
        )
        connection.row_factory = _named_rows
        for pragma in ("journal_mode=WAL", "synchronous=FULL", "foreign_keys=ON"):
            connection.execute(f"PRAGMA {pragma}")
        connection.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        return connection

    database = Database(connect, "sqlite", f"sqlite:///{path}", (sqlite3.Error,))
    _migrate(database)
    return database


def redacted(url: str) -> str:
    """``url`` as shown to people and kept in ``Registry.location``: a password, in the
    address or as a ``password=`` parameter, reads ``***``."""
    parts = urllib.parse.urlsplit(url)
    netloc, query = parts.netloc, parts.query
    if parts.password is not None:
        user, _, host = netloc.rpartition("@")
        netloc = f"{user.split(':', 1)[0]}:***@{host}"
    pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
    if any(key == "password" for key, _ in pairs):
        shown = [(key, "***" if key == "password" else value) for key, value in pairs]
        query = urllib.parse.urlencode(shown, safe="/:*")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc, query=query))


def postgres_database(url: str) -> tuple[Database, str]:
    """The database of a ``postgresql://…?blobs=LOCATION`` URL, and the blob location."""
    try:
        import psycopg
        from psycopg.rows import namedtuple_row
    except ImportError:
        raise UsageError(
            "a PostgreSQL registry needs psycopg: pip install 'modelcrate[shared]'"
        ) from None
    parts = urllib.parse.urlsplit(url.replace("postgres://", "postgresql://", 1))
    query = urllib.parse.parse_qsl(parts.query)
    blobs = next((v for k, v in query if k == "blobs"), "")
    if not blobs:
        raise UsageError(
            "a PostgreSQL registry needs a blob store: add ?blobs=s3://bucket/prefix "
            "(or ?blobs=/shared/directory) to the URL"
        )
    rest = urllib.parse.urlencode([(k, v) for k, v in query if k != "blobs"])
    conninfo = urllib.parse.urlunsplit(parts._replace(query=rest))
    shown = redacted(conninfo)

    def connect() -> Any:
        try:
            return psycopg.connect(conninfo, row_factory=namedtuple_row)
        except psycopg.OperationalError as exc:
            raise RegistryError(f"cannot reach PostgreSQL at {shown}: {first_line(exc)}") from None

    url_for_migrations = conninfo.replace("postgresql://", "postgresql+psycopg://", 1)
    database = Database(connect, "postgresql", url_for_migrations, (psycopg.Error,), shown)
    _migrate(database)
    return database, blobs


def _migrate(database: Database) -> None:
    """Bring the schema to the newest migration, importing alembic only when it is not."""
    tables = (
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name = ?"
        if database.dialect == "sqlite"
        else "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() AND tablename = ?"
    )
    with database.read() as tx:
        migrated = tx.scalar(tables, "alembic_version") is not None
        if migrated and tx.scalar("SELECT version_num FROM alembic_version") == SCHEMA_HEAD:
            return
    upgrade(database.url, SCHEMA_HEAD, busy_timeout_s=BUSY_TIMEOUT_MS / 1000)
