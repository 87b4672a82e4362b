"""Evaluation history: what ``modelcrate eval`` measured for each version, and when.

registry.record_evaluation(info, data_fingerprint, samples, {"accuracy": 0.97, ...})
registry.evaluations("digits")            # every version's, oldest first
"""

from __future__ import annotations

import json
import math
import time

from sqlalchemy import Engine, select

from modelcrate.errors import UsageError
from modelcrate.registry.audit import record
from modelcrate.registry.db import EvaluationRow, read_session, write_session
from modelcrate.registry.records import Evaluation, VersionInfo


class EvaluationMixin:
    """The registry's evaluation methods (mixed into ``Registry``)."""

    engine: Engine
    actor: str

    def record_evaluation(
        self, version: VersionInfo, data: str, samples: int, metrics: dict[str, float]
    ) -> Evaluation:
        """Keep one evaluation of ``version`` (audited as ``eval``)."""
        bad = sorted(k for k, v in metrics.items() if not math.isfinite(v))
        if bad:
            raise UsageError(f"evaluation metrics must be finite numbers: {bad}")
        row = EvaluationRow(
            name=version.name,
            version=version.version,
            digest=version.digest,
            at=time.time(),
            actor=self.actor,
            data=data,
            samples=samples,
            metrics=json.dumps(metrics, sort_keys=True),
        )
        with write_session(self.engine) as session, session.begin():
            session.add(row)
            summary = ", ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items()))
            record(
                session,
                self.actor,
                "eval",
                name=version.name,
                version=version.version,
                digest=version.digest,
                detail=f"{samples} samples of {data[:19]}: {summary}",
            )
        return _evaluation(row)

    def evaluations(self, name: str, version: str | None = None) -> list[Evaluation]:
        """Evaluations of model ``name`` (or one ``version``), oldest first."""
        with read_session(self.engine) as session:
            query = select(EvaluationRow).where(EvaluationRow.name == name)
            if version is not None:
                query = query.where(EvaluationRow.version == version)
            rows = session.scalars(query.order_by(EvaluationRow.at, EvaluationRow.id)).all()
        return [_evaluation(r) for r in rows]


def _evaluation(row: EvaluationRow) -> Evaluation:
    return Evaluation(
        row.name,
        row.version,
        row.digest,
        row.at,
        row.actor,
        row.data,
        row.samples,
        json.loads(row.metrics),
    )
