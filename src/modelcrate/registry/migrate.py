"""Schema migrations: alembic (through SQLAlchemy) brings a registry database to the newest
schema. Only run when ``db.py`` finds the schema behind, so everyday commands never import
SQLAlchemy."""

from __future__ import annotations

from typing import Any

from modelcrate.errors import RegistryError, first_line

SCHEMA_HEAD = "0008"  # the newest migration in registry/migrations/versions
MIGRATION_LOCK = 0x6D637261  # PostgreSQL advisory lock key


def upgrade(url: str, head: str = SCHEMA_HEAD, *, busy_timeout_s: float = 60.0) -> None:
    """Migrate the database at ``url`` (a SQLAlchemy URL) to ``head`` under the write lock,
    so concurrent openers migrate once. A database made by a release without migrations
    (tables but no ``alembic_version``) is adopted first."""
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import create_engine, event, inspect, text
    from sqlalchemy.exc import OperationalError

    engine = create_engine(
        url, connect_args={"timeout": busy_timeout_s} if url.startswith("sqlite") else {}
    )
    if engine.dialect.name == "sqlite":

        @event.listens_for(engine, "connect")
        def _configure(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.isolation_level = None  # BEGIN IMMEDIATE is emitted below

        @event.listens_for(engine, "begin")
        def _begin(connection: Any) -> None:
            connection.exec_driver_sql("BEGIN IMMEDIATE")

    try:
        with engine.begin() as connection:
            if engine.dialect.name == "postgresql":
                connection.execute(
                    text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK}
                )
            tables = set(inspect(connection).get_table_names())
            if "alembic_version" in tables:
                current = connection.execute(
                    text("SELECT version_num FROM alembic_version")
                ).scalar()
                if current == head:
                    return
            config = Config()
            config.set_main_option("script_location", "modelcrate.registry:migrations")
            config.attributes["connection"] = connection
            if "versions" in tables and "alembic_version" not in tables:
                # Made by a release without migrations (tables from create_all): adopt it.
                command.stamp(config, "0002" if "signatures" in tables else "0001")
            command.upgrade(config, head)
    except OperationalError as exc:
        raise RegistryError(
            f"cannot migrate the registry database: {first_line(exc.orig or exc)}"
        ) from None
    finally:
        engine.dispose()
