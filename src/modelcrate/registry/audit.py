"""The audit log: who published, signed, moved, rolled back or deleted what, and when.

Every entry is written inside the transaction of the change it records, so the log and
the registry never disagree; so are the webhook deliveries the change causes (outbox.py).
"""

from __future__ import annotations

import time
from typing import Any

from modelcrate.registry.db import Database, Transaction
from modelcrate.registry.outbox import enqueue
from modelcrate.registry.records import AuditEntry


def record(
    tx: Transaction,
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
    tx.insert(
        "audit_log",
        at=at,
        actor=actor,
        action=action,
        name=name,
        version=version,
        digest=digest,
        detail=detail,
    )
    payload = {"actor": actor, "model": name, "version": version, "digest": digest}
    enqueue(tx, action, {**payload, "detail": detail, **(facts or {})})


def audit_entries(db: Database, name: str | None = None, limit: int = 200) -> list[AuditEntry]:
    """The latest ``limit`` audit entries (of model ``name``), oldest first."""
    query = "SELECT at, actor, action, name, version, digest, detail FROM audit_log"
    with db.read() as tx:
        if name:
            rows = tx.all(f"{query} WHERE name = ? ORDER BY id DESC LIMIT ?", name, limit)
        else:
            rows = tx.all(f"{query} ORDER BY id DESC LIMIT ?", limit)
    return [
        AuditEntry(r.at, r.actor, r.action, r.name, r.version, r.digest, r.detail)
        for r in reversed(rows)
    ]
