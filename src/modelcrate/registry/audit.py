"""The audit log: who published, signed, moved, rolled back or deleted what, and when.

Every entry is written inside the transaction of the change it records, so the log and
the registry never disagree; so are the webhook deliveries the change causes (outbox.py).
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from modelcrate.registry.db import AuditRow, read_session
from modelcrate.registry.outbox import enqueue
from modelcrate.registry.records import AuditEntry


def record(
    session: Session,
    actor: str,
    action: str,
    *,
    name: str | None = None,
    version: str | None = None,
    digest: str | None = None,
    detail: str = "",
    facts: dict[str, Any] | None = None,
) -> None:
    """Add one audit entry inside the caller's transaction, and queue the webhook event it
    is (if any; ``facts`` are extra fields for its body)."""
    at = time.time()
    session.add(
        AuditRow(
            at=at,
            actor=actor,
            action=action,
            name=name,
            version=version,
            digest=digest,
            detail=detail,
        )
    )
    payload = {"actor": actor, "model": name, "version": version, "digest": digest}
    enqueue(session, action, {**payload, "detail": detail, **(facts or {})})


def audit_entries(engine: Engine, name: str | None = None, limit: int = 200) -> list[AuditEntry]:
    """The latest ``limit`` audit entries (of model ``name``), oldest first."""
    with read_session(engine) as session:
        query = select(AuditRow).order_by(AuditRow.id.desc()).limit(limit)
        if name:
            query = query.where(AuditRow.name == name)
        rows = list(session.scalars(query).all())
    return [
        AuditEntry(r.at, r.actor, r.action, r.name, r.version, r.digest, r.detail)
        for r in reversed(rows)
    ]
