"""Evaluation history: what ``modelcrate eval`` measured for each version, and when.

registry.record_evaluation(info, data_fingerprint, samples, {"accuracy": 0.97, ...})
registry.evaluations("digits")            # every version's, oldest first
"""

from __future__ import annotations

import dataclasses
import json
import math
import time

from modelcrate.errors import UsageError
from modelcrate.registry.audit import record
from modelcrate.registry.db import Database, Row
from modelcrate.registry.records import Evaluation, VersionInfo


class EvaluationMixin:
    """The registry's evaluation methods (mixed into ``Registry``)."""

    db: Database
    actor: str

    def record_evaluation(
        self, version: VersionInfo, data: str, samples: int, metrics: dict[str, float]
    ) -> Evaluation:
        """Keep one evaluation of ``version`` (audited as ``eval``)."""
        bad = sorted(k for k, v in metrics.items() if not math.isfinite(v))
        if bad:
            raise UsageError(f"evaluation metrics must be finite numbers: {bad}")
        evaluation = Evaluation(
            version.name,
            version.version,
            version.digest,
            time.time(),
            self.actor,
            data,
            samples,
            dict(sorted(metrics.items())),
        )
        with self.db.write() as tx:
            row = {**dataclasses.asdict(evaluation), "metrics": json.dumps(evaluation.metrics)}
            tx.insert("evaluations", **row)
            summary = ", ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items()))
            record(
                tx,
                self.actor,
                "eval",
                name=version.name,
                version=version.version,
                digest=version.digest,
                detail=f"{samples} samples of {data[:19]}: {summary}",
            )
        return evaluation

    def evaluations(self, name: str, version: str | None = None) -> list[Evaluation]:
        """Evaluations of model ``name`` (or one ``version``), oldest first."""
        query = (
            "SELECT name, version, digest, at, actor, data, samples, metrics FROM evaluations "
            "WHERE name = ?"
        )
        with self.db.read() as tx:
            if version is None:
                rows = tx.all(f"{query} ORDER BY at, id", name)
            else:
                rows = tx.all(f"{query} AND version = ? ORDER BY at, id", name, version)
        return [_evaluation(r) for r in rows]


def _evaluation(row: Row) -> Evaluation:
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
