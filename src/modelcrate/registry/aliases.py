"""Aliases: movable names for versions (``prod``, ``staging``), their history, rollback.

Every move is recorded in the alias's history and the audit log, in the same transaction
as the move. A move whose target breaks the signature the current target's clients call
is refused unless it is explicitly allowed (``modelcrate.compatibility``).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from modelcrate.errors import NotFound, RegistryError
from modelcrate.refs import Ref, check_alias
from modelcrate.registry.audit import record
from modelcrate.registry.db import Database, Row, Transaction, stored_manifest
from modelcrate.registry.records import AliasEvent, VersionInfo


class AliasMixin:
    """The alias half of ``Registry``."""

    db: Database
    actor: str

    if TYPE_CHECKING:  # provided by Registry

        def resolve(self, ref: str | Ref) -> VersionInfo: ...

        def _resolve_row(self, tx: Transaction, ref: Ref) -> Row: ...

        def _require_model(self, tx: Transaction, name: str) -> None: ...

    def set_alias(
        self, name: str, alias: str, version: str, *, allow_breaking: bool = False
    ) -> AliasEvent:
        """Point ``name@alias`` at ``version`` (which must exist); the move is recorded.

        A target whose signature breaks the current target's clients (see
        ``modelcrate.compatibility``) is refused with BreakingChange unless
        ``allow_breaking``; an allowed breaking move says so in the audit log."""
        check_alias(alias)
        target = self.resolve(f"{name}@{version}")  # a version, a digest or another alias
        with self.db.write() as tx:
            return self._move(tx, name, alias, target.version, "set", allow_breaking)

    def _move(
        self,
        tx: Transaction,
        name: str,
        alias: str,
        version: str,
        action: str,
        allow_breaking: bool,
    ) -> AliasEvent:
        previous = _target(tx, name, alias)
        note = ""
        if previous is not None and previous != version:
            old, new = (
                stored_manifest(self._resolve_row(tx, Ref(name, version=v)))
                for v in (previous, version)
            )
            from modelcrate.compatibility import check_move

            note = check_move(f"{name}@{alias}", old, new, allow_breaking)
        now = time.time()
        if previous is None:
            tx.insert("aliases", name=name, alias=alias, version=version, updated_at=now)
        else:
            tx.execute(
                "UPDATE aliases SET version = ?, updated_at = ? WHERE name = ? AND alias = ?",
                version,
                now,
                name,
                alias,
            )
        tx.insert(
            "alias_events",
            name=name,
            alias=alias,
            action=action,
            version=version,
            previous=previous,
            at=now,
        )
        record(
            tx,
            self.actor,
            f"alias-{action}",
            name=name,
            version=version,
            detail=f"{alias}: {previous or '(new)'} -> {version}{note}",
            facts={"alias": alias, "previous": previous},
        )
        return AliasEvent(alias, action, version, previous, now)

    def alias_history(self, name: str, alias: str) -> list[AliasEvent]:
        """Every move of ``name@alias``, oldest first."""
        check_alias(alias)
        with self.db.read() as tx:
            rows = tx.all(
                "SELECT alias, action, version, previous, at FROM alias_events "
                "WHERE name = ? AND alias = ? ORDER BY id",
                name,
                alias,
            )
            if not rows:
                self._require_model(tx, name)
                raise NotFound(f"{name}@{alias}: no such alias")
            return [AliasEvent(r.alias, r.action, r.version, r.previous, r.at) for r in rows]

    def rollback(self, name: str, alias: str, *, allow_breaking: bool = False) -> AliasEvent:
        """Move ``alias`` back to what it pointed to before it was set to its current target
        (refused, like ``set_alias``, when that breaks the current target's clients)."""
        check_alias(alias)
        with self.db.write() as tx:
            current = _target(tx, name, alias)
            if current is None:
                self._require_model(tx, name)
                raise NotFound(f"{name}@{alias}: no such alias")
            # The latest plain 'set' to the current target says where it came from;
            # rollbacks are skipped so that repeated rollbacks keep walking back.
            previous = tx.scalar(
                "SELECT previous FROM alias_events WHERE name = ? AND alias = ? "
                "AND action = 'set' AND version = ? ORDER BY id DESC LIMIT 1",
                name,
                alias,
                current,
            )
            if previous is None:
                raise RegistryError(f"{name}@{alias} has no earlier target to roll back to")
            if (
                tx.scalar("SELECT 1 FROM versions WHERE name = ? AND version = ?", name, previous)
                is None
            ):
                raise RegistryError(
                    f"{name}@{alias} would roll back to {previous}, which was deleted"
                )
            return self._move(tx, name, alias, previous, "rollback", allow_breaking)

    def delete_alias(self, name: str, alias: str) -> None:
        check_alias(alias)
        with self.db.write() as tx:
            version = _target(tx, name, alias)
            if version is None:
                raise NotFound(f"{name}@{alias}: no such alias")
            tx.execute("DELETE FROM aliases WHERE name = ? AND alias = ?", name, alias)
            self._alias_deleted(tx, name, alias, version)

    def _alias_deleted(self, tx: Transaction, name: str, alias: str, previous: str) -> None:
        tx.insert(
            "alias_events",
            name=name,
            alias=alias,
            action="delete",
            version=None,
            previous=previous,
            at=time.time(),
        )
        record(
            tx,
            self.actor,
            "alias-delete",
            name=name,
            version=previous,
            detail=alias,
            facts={"alias": alias, "previous": previous},
        )


def _target(tx: Transaction, name: str, alias: str) -> str | None:
    """The version ``name@alias`` points at (None: no such alias)."""
    return tx.scalar(  # type: ignore[no-any-return]
        "SELECT version FROM aliases WHERE name = ? AND alias = ?", name, alias
    )
