"""Rollouts: a candidate version takes over an alias step by step, watched by the servers.

    registry.start_rollout("digits", "prod", "1.1.0", steps=[10, 50, 100], interval_s=60,
                           max_error_rate=0.01, max_p99_ms=50, max_disagreement=0.05)
    registry.rollout("digits", "prod")     # its state and the figures that decide it
    registry.promote_rollout("digits", "prod") / registry.abort_rollout("digits", "prod")

A rollout is registry state, so every server following the alias sees it and it survives
restarts. Canary mode: servers send ``steps[step]`` percent of the alias's requests to the
candidate; shadow mode: every request is answered by the stable version and a copy runs on
the candidate. The alias itself moves only when the rollout is promoted (after the last
step stayed healthy for an interval, or by hand); a breach ends it ``rolled_back`` and the
alias never moved. The server holding the decision lease (``claim_rollout``) decides;
every step, promotion, rollback and abort is audited and sent to webhooks (``rollout``;
a breach also as ``alert``).
"""

from __future__ import annotations

import dataclasses
import json
import time
from typing import TYPE_CHECKING, Any

from modelcrate.errors import NotFound, RegistryError, UsageError
from modelcrate.refs import Ref, check_alias
from modelcrate.registry.audit import record
from modelcrate.registry.db import Database, Row, Transaction, columns, stored_manifest
from modelcrate.registry.records import AliasEvent, Rollout, VersionInfo

MODES = ("canary", "shadow")
SLOS = ("max_error_rate", "max_p99_ms", "max_disagreement")
Figures = dict[str, dict[str, float]]
JSON_COLUMNS = ("steps", "slos", "figures")
State = dict[str, Any]  # a rollouts row, changed in place and saved by _save
SELECT = f"SELECT {', '.join(columns('rollouts'))} FROM rollouts"


class RolloutMixin:
    """The registry's rollout methods (mixed into ``Registry``)."""

    db: Database
    actor: str

    if TYPE_CHECKING:  # provided by Registry and AliasMixin

        def resolve(self, ref: str | Ref) -> VersionInfo: ...

        def _resolve_row(self, tx: Transaction, ref: Ref) -> Row: ...

        def _move(
            self,
            tx: Transaction,
            name: str,
            alias: str,
            version: str,
            action: str,
            allow_breaking: bool,
        ) -> AliasEvent: ...

    def start_rollout(
        self,
        name: str,
        alias: str,
        candidate: str,
        *,
        mode: str = "canary",
        steps: list[int] | None = None,
        interval_s: float = 60.0,
        max_error_rate: float | None = None,
        max_p99_ms: float | None = None,
        max_disagreement: float | None = None,
        allow_breaking: bool = False,
    ) -> Rollout:
        """Record a rollout of ``candidate`` on ``name@alias`` (which must exist); the servers
        following the alias load and warm the candidate before it gets any traffic."""
        check_alias(alias)
        if mode not in MODES:
            raise UsageError(f"rollout mode {mode!r}: expected canary or shadow")
        plan = [0] if mode == "shadow" else _check_steps(steps or [10, 100])
        if not interval_s > 0:
            raise UsageError(f"--interval {interval_s}: must be more than 0 seconds")
        slos = {
            k: float(v)
            for k, v in (
                ("max_error_rate", max_error_rate),
                ("max_p99_ms", max_p99_ms),
                ("max_disagreement", max_disagreement),
            )
            if v is not None
        }
        if any(v < 0 for v in slos.values()):
            raise UsageError(f"SLO limits cannot be negative: {slos}")
        target = self.resolve(f"{name}@{candidate}")
        with self.db.write() as tx:
            current = tx.scalar(
                "SELECT version FROM aliases WHERE name = ? AND alias = ?", name, alias
            )
            if current is None:
                raise NotFound(f"{name}@{alias}: no such alias (set it to the stable version)")
            if current == target.version:
                raise UsageError(f"{name}@{alias} already points at {target.version}")
            if _running(tx, name, alias) is not None:
                raise RegistryError(
                    f"a rollout on {name}@{alias} is running; promote or abort it first"
                )
            stable_row = self._resolve_row(tx, Ref(name, version=current))
            candidate_row = self._resolve_row(tx, Ref(name, version=target.version))
            from modelcrate.compatibility import check_move

            note = check_move(
                f"{name}@{alias}",
                stored_manifest(stable_row),
                stored_manifest(candidate_row),
                allow_breaking,
            )
            now = time.time()
            row: State = {
                "name": name,
                "alias": alias,
                "stable": current,
                "candidate": target.version,
                "mode": mode,
                "steps": json.dumps(plan),
                "step": 0,
                "interval_s": float(interval_s),
                "slos": json.dumps(slos),
                "state": "running",
                "started_at": now,
                "step_started_at": now,
                "ended_at": None,
                "reason": "",
                "figures": "{}",
                "decider": None,
                "lease_until": 0.0,
                "started_by": self.actor,
            }
            row["id"] = tx.insert("rollouts", **row)
            _audit(self.actor, tx, row, "rollout-start", note)
            return _rollout(row)

    def rollout(self, name: str, alias: str) -> Rollout | None:
        """The latest rollout on ``name@alias`` (running or ended), or None."""
        with self.db.read() as tx:
            row = tx.first(
                f"{SELECT} WHERE name = ? AND alias = ? ORDER BY id DESC LIMIT 1", name, alias
            )
        return _rollout(row._asdict()) if row is not None else None

    def promote_rollout(
        self,
        name: str,
        alias: str,
        *,
        reason: str = "promoted by hand",
        figures: Figures | None = None,
    ) -> Rollout:
        """Move the alias to the candidate now and end the rollout ``promoted``."""
        with self.db.write() as tx:
            row = _require_running(tx, name, alias)
            # the signature check passed (or was allowed) when the rollout started
            self._move(tx, name, alias, row["candidate"], "set", True)
            return _end(self.actor, tx, row, "promoted", reason, figures)

    def abort_rollout(self, name: str, alias: str, *, reason: str = "aborted by hand") -> Rollout:
        """End the rollout ``aborted``: all traffic back on the stable version now."""
        with self.db.write() as tx:
            row = _require_running(tx, name, alias)
            return _end(self.actor, tx, row, "aborted", reason, None)

    def rollback_rollout(self, rollout_id: int, reason: str, figures: Figures) -> Rollout | None:
        """End a running rollout ``rolled_back`` after an SLO breach (audited with the
        figures, and an ``alert`` to webhooks); None if it already ended."""
        with self.db.write() as tx:
            row = _running_by_id(tx, rollout_id)
            if row is None:
                return None
            ended = _end(self.actor, tx, row, "rolled_back", reason, figures)
            measured = "; ".join(
                f"{version}: " + ", ".join(f"{k} {v:.4g}" for k, v in sorted(values.items()))
                for version, values in figures.items()
            )
            record(
                tx,
                self.actor,
                "slo-breach",
                name=row["name"],
                version=row["candidate"],
                detail=f"{row['alias']}: {reason} (measured {measured})",
                facts={"alias": row["alias"], "figures": figures, "rollout": row["id"]},
            )
            return ended

    def advance_rollout(self, rollout_id: int, figures: Figures) -> Rollout | None:
        """The candidate stayed healthy for an interval: take the next step, or promote it
        after the last. None if the rollout already ended."""
        with self.db.write() as tx:
            row = _running_by_id(tx, rollout_id)
            if row is None:
                return None
            steps = json.loads(row["steps"])
            if row["step"] + 1 >= len(steps):
                self._move(tx, row["name"], row["alias"], row["candidate"], "set", True)
                reason = f"healthy through {len(steps)} step(s)"
                return _end(self.actor, tx, row, "promoted", reason, figures)
            row["step"] += 1
            row["step_started_at"] = time.time()
            row["figures"] = json.dumps(figures)
            _save(tx, row)
            _audit(self.actor, tx, row, "rollout-step", f"now {steps[row['step']]}%")
            return _rollout(row)

    def report_rollout(self, rollout_id: int, figures: Figures) -> None:
        """Keep the latest live figures (what ``rollout status`` shows)."""
        with self.db.write() as tx:
            tx.execute(
                "UPDATE rollouts SET figures = ? WHERE id = ? AND state = 'running'",
                json.dumps(figures),
                rollout_id,
            )

    def claim_rollout(self, rollout_id: int, holder: str, lease_s: float) -> bool:
        """Whether ``holder`` decides for this rollout: it holds (or now takes) the lease,
        so with several servers or workers on one registry the decision is made once."""
        now = time.time()
        with self.db.write() as tx:
            row = _running_by_id(tx, rollout_id)
            if row is None:
                return False
            if row["decider"] not in (None, holder) and row["lease_until"] > now:
                return False
            row["decider"], row["lease_until"] = holder, now + lease_s
            _save(tx, row)
            return True


def _check_steps(steps: list[int]) -> list[int]:
    if not all(0 < s <= 100 for s in steps) or steps != sorted(set(steps)) or steps[-1] != 100:
        raise UsageError(
            f"--steps {','.join(map(str, steps))}: rising percentages from 1 to 100, ending at 100"
        )
    return steps


def _running(tx: Transaction, name: str, alias: str) -> State | None:
    row = tx.first(f"{SELECT} WHERE name = ? AND alias = ? AND state = 'running'", name, alias)
    return None if row is None else dict(row._asdict())


def _running_by_id(tx: Transaction, rollout_id: int) -> State | None:
    """The rollout, locked for this transaction, if it is still running."""
    row = tx.first(f"{SELECT} WHERE id = ? AND state = 'running'{tx.for_update()}", rollout_id)
    return None if row is None else dict(row._asdict())


def _require_running(tx: Transaction, name: str, alias: str) -> State:
    row = _running(tx, name, alias)
    if row is None:
        raise NotFound(f"no rollout is running on {name}@{alias}")
    return row


def _save(tx: Transaction, row: State) -> None:
    """Write back what a rollout's life changes."""
    changing = (
        "step",
        "step_started_at",
        "state",
        "ended_at",
        "reason",
        "figures",
        "decider",
        "lease_until",
    )
    tx.execute(
        f"UPDATE rollouts SET {', '.join(f'{c} = ?' for c in changing)} WHERE id = ?",
        *(row[c] for c in changing),
        row["id"],
    )


def _end(
    actor: str, tx: Transaction, row: State, state: str, reason: str, figures: Figures | None
) -> Rollout:
    row["state"], row["reason"], row["ended_at"] = state, reason, time.time()
    if figures is not None:
        row["figures"] = json.dumps(figures)
    _save(tx, row)
    action = {"promoted": "rollout-promote", "aborted": "rollout-abort"}.get(
        state, "rollout-rollback"
    )
    _audit(actor, tx, row, action, reason)
    return _rollout(row)


def _audit(actor: str, tx: Transaction, row: State, action: str, detail: str) -> None:
    facts: dict[str, Any] = {
        "alias": row["alias"],
        "rollout": row["id"],
        "stable": row["stable"],
        "candidate": row["candidate"],
        "mode": row["mode"],
        "state": row["state"],
        "weight": _weight(row),
        "figures": json.loads(row["figures"]),
    }
    summary = (
        f"{row['alias']}: {row['stable']} -> {row['candidate']} ({row['mode']}, {_weight(row)}%)"
    )
    record(
        tx,
        actor,
        action,
        name=row["name"],
        version=row["candidate"],
        detail=f"{summary}; {detail}" if detail else summary,
        facts=facts,
    )


def _weight(row: State) -> int:
    return int(json.loads(row["steps"])[row["step"]]) if row["mode"] == "canary" else 0


def _rollout(row: State) -> Rollout:
    stored = {f.name for f in dataclasses.fields(Rollout)} - {"weight", *JSON_COLUMNS}
    return Rollout(
        **{k: row[k] for k in stored},
        **{k: json.loads(row[k]) for k in JSON_COLUMNS},
        weight=_weight(row),
    )
