"""Registry metadata as SQLAlchemy 2 models, and the SQLite engine set up for safe concurrency.

SQLite runs in WAL mode with ``synchronous=FULL`` and a busy timeout; write
transactions start with ``BEGIN IMMEDIATE`` so two publishers never deadlock
on a lock upgrade (the classic "database is locked" mid-transaction).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from sqlalchemy import (
    BigInteger,
    Engine,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    inspect,
    select,
    text,
)
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship

from modelcrate.errors import IntegrityError, RegistryError, UsageError
from modelcrate.manifest import Manifest, parse_manifest

BUSY_TIMEOUT_MS = 60_000
SCHEMA_HEAD = "0008"  # the newest migration in registry/migrations/versions
MIGRATION_LOCK = 0x6D637261  # PostgreSQL advisory lock keys: migrations, writes
WRITE_LOCK = 0x6D637262


class Base(DeclarativeBase):
    pass


class VersionRow(Base):
    __tablename__ = "versions"
    __table_args__ = (UniqueConstraint("name", "version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), index=True)
    version: Mapped[str] = mapped_column(String(64))
    digest: Mapped[str] = mapped_column(String(71), unique=True)
    manifest: Mapped[str] = mapped_column(Text)  # canonical JSON
    description: Mapped[str] = mapped_column(Text, default="")
    size: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[float] = mapped_column(Float, default=time.time)
    files: Mapped[list[FileRow]] = relationship(cascade="all, delete-orphan")
    tags: Mapped[list[TagRow]] = relationship(cascade="all, delete-orphan")
    parents: Mapped[list[ParentRow]] = relationship(cascade="all, delete-orphan")

    def stored_manifest(self) -> Manifest:
        """The manifest as published (checked against the schema then), matched to its digest."""
        manifest = parse_manifest(self.manifest.encode(), stored=True)
        if manifest.digest != self.digest:
            raise IntegrityError(
                f"{self.name}@{self.version}: stored manifest does not match its digest"
            )
        return manifest


class FileRow(Base):
    __tablename__ = "version_files"

    version_id: Mapped[int] = mapped_column(
        ForeignKey("versions.id", ondelete="CASCADE"), primary_key=True
    )
    path: Mapped[str] = mapped_column(String(600), primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    size: Mapped[int] = mapped_column(BigInteger)


class TagRow(Base):
    __tablename__ = "version_tags"

    version_id: Mapped[int] = mapped_column(
        ForeignKey("versions.id", ondelete="CASCADE"), primary_key=True
    )
    tag: Mapped[str] = mapped_column(String(128), primary_key=True, index=True)


class ParentRow(Base):
    """One parent a version records in its lineage (the lineage index)."""

    __tablename__ = "version_parents"

    version_id: Mapped[int] = mapped_column(
        ForeignKey("versions.id", ondelete="CASCADE"), primary_key=True
    )
    parent_digest: Mapped[str] = mapped_column(String(71), primary_key=True, index=True)
    seq: Mapped[int] = mapped_column(Integer)  # the manifest's order of parents
    parent_ref: Mapped[str | None] = mapped_column(Text, nullable=True)
    operation: Mapped[str | None] = mapped_column(Text, nullable=True)


class AliasRow(Base):
    __tablename__ = "aliases"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    alias: Mapped[str] = mapped_column(String(32), primary_key=True)
    version: Mapped[str] = mapped_column(String(64))
    updated_at: Mapped[float] = mapped_column(Float, default=time.time)


class AliasEventRow(Base):
    """One move of an alias; ``previous`` is what it pointed to before (None if new)."""

    __tablename__ = "alias_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), index=True)
    alias: Mapped[str] = mapped_column(String(32))
    action: Mapped[str] = mapped_column(String(16))  # set | rollback | delete
    version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    previous: Mapped[str | None] = mapped_column(String(64), nullable=True)
    at: Mapped[float] = mapped_column(Float, default=time.time)


class FileChunkRow(Base):
    """One chunk of a stored file: files are kept as content-defined chunks (dedup)."""

    __tablename__ = "file_chunks"

    file_sha: Mapped[str] = mapped_column(String(64), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    chunk_sha: Mapped[str] = mapped_column(String(64), index=True)
    size: Mapped[int] = mapped_column(BigInteger)


class PackRow(Base):
    """A pack file: chunks appended to one file, written once (see packs.py)."""

    __tablename__ = "packs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[float] = mapped_column(Float, default=time.time)


class ChunkRow(Base):
    """Where a chunk lives: its pack and the byte range in it (the pack index)."""

    __tablename__ = "chunks"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    pack: Mapped[str] = mapped_column(String(32), index=True)
    offset: Mapped[int] = mapped_column(BigInteger)
    size: Mapped[int] = mapped_column(Integer)


class SignatureRow(Base):
    """A sigstore bundle over one version's files (several keys may sign one version)."""

    __tablename__ = "signatures"
    __table_args__ = (UniqueConstraint("digest", "key_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    digest: Mapped[str] = mapped_column(String(71), index=True)
    key_id: Mapped[str] = mapped_column(String(64))
    bundle: Mapped[str] = mapped_column(Text)
    created_at: Mapped[float] = mapped_column(Float, default=time.time)


class TrustedKeyRow(Base):
    __tablename__ = "trusted_keys"

    key_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    pem: Mapped[str] = mapped_column(Text)
    added_at: Mapped[float] = mapped_column(Float, default=time.time)


class SettingRow(Base):
    __tablename__ = "settings"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class AuditRow(Base):
    """Who changed what, when: publish, alias moves, deletes, signatures, policy."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[float] = mapped_column(Float, default=time.time, index=True)
    actor: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(32))
    name: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    digest: Mapped[str | None] = mapped_column(String(71), nullable=True)
    detail: Mapped[str] = mapped_column(Text, default="")


class WebhookRow(Base):
    """A receiver of registry events (``events``: comma-separated kinds)."""

    __tablename__ = "webhooks"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    url: Mapped[str] = mapped_column(Text)
    events: Mapped[str] = mapped_column(Text)
    secret: Mapped[str] = mapped_column(Text)
    created_at: Mapped[float] = mapped_column(Float, default=time.time)
    created_by: Mapped[str] = mapped_column(String(128))


class DeliveryRow(Base):
    """One event for one webhook: the outbox entry, kept (with its last attempt) until sent."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    webhook_id: Mapped[int] = mapped_column(
        ForeignKey("webhooks.id", ondelete="CASCADE"), index=True
    )
    event: Mapped[str] = mapped_column(String(32))
    body: Mapped[str] = mapped_column(Text)  # the JSON sent, fixed when the event happened
    created_at: Mapped[float] = mapped_column(Float)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[float] = mapped_column(Float, index=True)
    delivered_at: Mapped[float | None] = mapped_column(Float, nullable=True, index=True)
    last_status: Mapped[int | None] = mapped_column(Integer, nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)


class EvaluationRow(Base):
    """One measurement of a version on a data set (``metrics``: JSON name -> number)."""

    __tablename__ = "evaluations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), index=True)
    version: Mapped[str] = mapped_column(String(64))
    digest: Mapped[str] = mapped_column(String(71), index=True)
    at: Mapped[float] = mapped_column(Float)
    actor: Mapped[str] = mapped_column(String(128))
    data: Mapped[str] = mapped_column(String(71))  # sha256 fingerprint of the data set
    samples: Mapped[int] = mapped_column(Integer)
    metrics: Mapped[str] = mapped_column(Text)


class RolloutRow(Base):
    """A candidate taking over an alias (see registry/rollouts.py)."""

    __tablename__ = "rollouts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), index=True)
    alias: Mapped[str] = mapped_column(String(32))
    stable: Mapped[str] = mapped_column(String(64))
    candidate: Mapped[str] = mapped_column(String(64))
    mode: Mapped[str] = mapped_column(String(16))  # canary | shadow
    steps: Mapped[str] = mapped_column(Text)  # JSON list of traffic percentages
    step: Mapped[int] = mapped_column(Integer)  # index into steps
    interval_s: Mapped[float] = mapped_column(Float)
    slos: Mapped[str] = mapped_column(Text)  # JSON: max_error_rate, max_p99_ms, max_disagreement
    state: Mapped[str] = mapped_column(String(16), index=True)
    started_at: Mapped[float] = mapped_column(Float)
    step_started_at: Mapped[float] = mapped_column(Float)
    ended_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    reason: Mapped[str] = mapped_column(Text, default="")
    figures: Mapped[str] = mapped_column(Text, default="{}")  # JSON: version -> measurements
    decider: Mapped[str | None] = mapped_column(String(128), nullable=True)
    lease_until: Mapped[float] = mapped_column(Float, default=0.0)
    started_by: Mapped[str] = mapped_column(String(128))


def sqlite_engine(path: Path) -> Engine:
    """An engine on ``path`` with WAL, full fsync, busy timeout and IMMEDIATE write transactions."""
    engine = create_engine(f"sqlite:///{path}", connect_args={"timeout": BUSY_TIMEOUT_MS / 1000})

    @event.listens_for(engine, "connect")
    def _configure(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we emit BEGIN ourselves, below
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection: Any) -> None:
        immediate = connection.get_execution_options().get("sqlite_immediate", False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    migrate(engine)
    return engine


def migrate(engine: Engine) -> None:
    """Bring the database to the newest schema with the alembic migrations (fast when it is
    there already). Runs under the write lock, so concurrent openers migrate once."""
    with engine.execution_options(sqlite_immediate=True).begin() as connection:
        if engine.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
        tables = set(inspect(connection).get_table_names())
        if "alembic_version" in tables:
            current = connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
            if current == SCHEMA_HEAD:
                return
        from alembic import command
        from alembic.config import Config

        config = Config()
        config.set_main_option("script_location", "modelcrate.registry:migrations")
        config.attributes["connection"] = connection
        if "versions" in tables and "alembic_version" not in tables:
            # Made by a release without migrations (tables from create_all): adopt it.
            command.stamp(config, "0002" if "signatures" in tables else "0001")
        command.upgrade(config, "head")


def postgres_engine(url: str) -> tuple[Engine, str]:
    """An engine for a ``postgresql://…?blobs=LOCATION`` URL, and the blob location."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url.replace("postgres://", "postgresql://", 1))
    blobs = parsed.query.get("blobs")
    if not isinstance(blobs, str) or not blobs:
        raise UsageError(
            "a PostgreSQL registry needs a blob store: add ?blobs=s3://bucket/prefix "
            "(or ?blobs=/shared/directory) to the URL"
        )
    parsed = parsed.difference_update_query(["blobs"]).set(drivername="postgresql+psycopg")
    engine = create_engine(parsed, pool_pre_ping=True)
    try:
        migrate(engine)
    except OperationalError as exc:
        engine.dispose()
        raise RegistryError(
            f"cannot reach PostgreSQL at {parsed.render_as_string(hide_password=True)}: "
            f"{str(exc.orig).strip().splitlines()[0] if exc.orig else exc}"
        ) from None
    return engine, blobs


def lock_writes(session: Session) -> None:
    """Serialize writers that must not interleave (publish commits and gc). SQLite already
    holds its write lock from BEGIN IMMEDIATE; PostgreSQL takes a transaction lock."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": WRITE_LOCK})


def write_session(engine: Engine) -> Session:
    """A session whose transactions take the write lock up front."""
    return Session(engine.execution_options(sqlite_immediate=True), expire_on_commit=False)


def read_session(engine: Engine) -> Session:
    return Session(engine, expire_on_commit=False)


def values_in(session: Session, column: Any, key: Any, keys: Iterable[str]) -> set[Any]:
    """``column`` of the rows whose ``key`` is one of ``keys``, asked in batches of 500 so a
    big file's thousands of chunks stay under every database's parameter limit."""
    wanted, found = sorted(set(keys)), set[Any]()
    for start in range(0, len(wanted), 500):
        found.update(session.scalars(select(column).where(key.in_(wanted[start : start + 500]))))
    return found
