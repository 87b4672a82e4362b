"""Aliases: movable names for versions (``prod``, ``staging``), their history, rollback.

Every move is recorded in the alias's history and the audit log, in the same transaction
as the move. A move whose target breaks the signature the current target's clients call
is refused unless it is explicitly allowed (``modelcrate.compatibility``).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from modelcrate.compatibility import check_move
from modelcrate.errors import NotFound, RegistryError
from modelcrate.refs import Ref, check_alias
from modelcrate.registry.audit import record
from modelcrate.registry.db import AliasEventRow, AliasRow, VersionRow, read_session, write_session
from modelcrate.registry.records import AliasEvent, VersionInfo


class AliasMixin:
    """The alias half of ``Registry``."""

    engine: Engine
    actor: str

    if TYPE_CHECKING:  # provided by Registry

        def resolve(self, ref: str | Ref) -> VersionInfo: ...

        def _resolve_row(self, session: Session, ref: Ref) -> VersionRow: ...

        def _require_model(self, session: Session, name: str) -> None: ...

    def set_alias(
        self, name: str, alias: str, version: str, *, allow_breaking: bool = False
    ) -> AliasEvent:
        """Point ``name@alias`` at ``version`` (which must exist); the move is recorded.

        A target whose signature breaks the current target's clients (see
        ``modelcrate.compatibility``) is refused with BreakingChange unless
        ``allow_breaking``; an allowed breaking move says so in the audit log."""
        check_alias(alias)
        target = self.resolve(f"{name}@{version}")  # a version, a digest or another alias
        with write_session(self.engine) as session, session.begin():
            return self._move(session, name, alias, target.version, "set", allow_breaking)

    def _move(
        self,
        session: Session,
        name: str,
        alias: str,
        version: str,
        action: str,
        allow_breaking: bool,
    ) -> AliasEvent:
        row = session.get(AliasRow, (name, alias))
        previous = row.version if row else None
        note = ""
        if previous is not None and previous != version:
            old, new = (
                self._resolve_row(session, Ref(name, version=v)).stored_manifest()
                for v in (previous, version)
            )
            note = check_move(f"{name}@{alias}", old, new, allow_breaking)
        now = time.time()
        if row is None:
            session.add(AliasRow(name=name, alias=alias, version=version, updated_at=now))
        else:
            row.version, row.updated_at = version, now
        session.add(
            AliasEventRow(
                name=name, alias=alias, action=action, version=version, previous=previous, at=now
            )
        )
        record(
            session,
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
        with read_session(self.engine) as session:
            rows = session.scalars(
                select(AliasEventRow)
                .where(AliasEventRow.name == name, AliasEventRow.alias == alias)
                .order_by(AliasEventRow.id)
            ).all()
            if not rows:
                self._require_model(session, name)
                raise NotFound(f"{name}@{alias}: no such alias")
            return [AliasEvent(r.alias, r.action, r.version, r.previous, r.at) for r in rows]

    def rollback(self, name: str, alias: str, *, allow_breaking: bool = False) -> AliasEvent:
        """Move ``alias`` back to what it pointed to before it was set to its current target
        (refused, like ``set_alias``, when that breaks the current target's clients)."""
        check_alias(alias)
        with write_session(self.engine) as session, session.begin():
            current = session.get(AliasRow, (name, alias))
            if current is None:
                self._require_model(session, name)
                raise NotFound(f"{name}@{alias}: no such alias")
            # The latest plain 'set' to the current target says where it came from;
            # rollbacks are skipped so that repeated rollbacks keep walking back.
            origin = session.scalars(
                select(AliasEventRow)
                .where(
                    AliasEventRow.name == name,
                    AliasEventRow.alias == alias,
                    AliasEventRow.action == "set",
                    AliasEventRow.version == current.version,
                )
                .order_by(AliasEventRow.id.desc())
            ).first()
            previous = origin.previous if origin else None
            if previous is None:
                raise RegistryError(f"{name}@{alias} has no earlier target to roll back to")
            if (
                session.scalar(
                    select(func.count()).where(
                        VersionRow.name == name, VersionRow.version == previous
                    )
                )
                == 0
            ):
                raise RegistryError(
                    f"{name}@{alias} would roll back to {previous}, which was deleted"
                )
            return self._move(session, name, alias, previous, "rollback", allow_breaking)

    def delete_alias(self, name: str, alias: str) -> None:
        check_alias(alias)
        with write_session(self.engine) as session, session.begin():
            row = session.get(AliasRow, (name, alias))
            if row is None:
                raise NotFound(f"{name}@{alias}: no such alias")
            session.delete(row)
            self._alias_deleted(session, name, alias, row.version)

    def _alias_deleted(self, session: Session, name: str, alias: str, previous: str) -> None:
        session.add(
            AliasEventRow(
                name=name,
                alias=alias,
                action="delete",
                version=None,
                previous=previous,
                at=time.time(),
            )
        )
        record(
            session,
            self.actor,
            "alias-delete",
            name=name,
            version=previous,
            detail=alias,
            facts={"alias": alias, "previous": previous},
        )
