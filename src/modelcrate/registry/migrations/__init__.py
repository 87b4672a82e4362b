"""Alembic migrations of the registry database (SQLite and PostgreSQL alike)."""
