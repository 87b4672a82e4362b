"""``modelcrate diff A B``: what changed between two versions (or any two crates).

Signature (each change breaking or compatible for A's clients), labels, files, per-tensor
weight changes (streamed, ``diff/tensors.py``), metrics, parity and optimization report,
lineage and provenance. The CLI prints it as tables or ``--json``; the web UI's comparison
page shows the same ``CrateDiff``.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any

from modelcrate.compatibility import SignatureChange, signature_changes
from modelcrate.crate import Crate
from modelcrate.diff.tensors import TensorChange, TensorDiff, diff_tensors
from modelcrate.manifest import Manifest
from modelcrate.refs import is_local_crate
from modelcrate.registry import ModelRegistry, as_registry

__all__ = ["CrateDiff", "SignatureChange", "TensorChange", "TensorDiff", "diff", "diff_crates"]


@dataclass(frozen=True)
class Delta:
    """One named figure on both sides (None where a side lacks it)."""

    name: str
    a: float | None
    b: float | None

    @property
    def change(self) -> float | None:
        return None if self.a is None or self.b is None else self.b - self.a


@dataclass
class CrateDiff:
    """Everything that differs between crate ``a`` and crate ``b``."""

    a: str  # name@version
    b: str
    a_digest: str
    b_digest: str
    signature: list[SignatureChange]
    labels: dict[str, Any] | None  # {"a": count, "b": count, "changed": [indices]} if changed
    files: dict[str, Any]  # added, removed, changed (paths), unchanged (count), sizes
    tensors: TensorDiff
    metrics: list[Delta]
    parity: list[Delta]  # artifacts' parity and the optimization report's figures
    lineage: dict[str, Any]
    provenance: dict[str, Any]

    @property
    def breaking(self) -> list[SignatureChange]:
        return [change for change in self.signature if change.breaking]

    @property
    def identical(self) -> bool:
        return self.a_digest == self.b_digest

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values (what ``modelcrate diff --json`` prints)."""
        data = asdict(self)
        data["breaking"] = bool(self.breaking)
        data["identical"] = self.identical
        for key in ("metrics", "parity"):
            data[key] = [{**vars(d), "change": d.change} for d in getattr(self, key)]
        return data


def diff(
    a: str | os.PathLike[str] | Crate,
    b: str | os.PathLike[str] | Crate,
    *,
    registry: ModelRegistry | str | os.PathLike[str] | None = None,
) -> CrateDiff:
    """What changed from ``a`` to ``b``: references (``digits@1.0.0``, ``digits@prod``) in
    ``registry``, ``.crate`` files, crate directories, or ``Crate`` objects."""
    holder: list[ModelRegistry] = []

    def crate(target: str | os.PathLike[str] | Crate) -> Crate:
        if isinstance(target, Crate):
            return target
        if isinstance(target, os.PathLike) or is_local_crate(str(target)):
            return Crate.open(target)
        if not holder:
            holder.append(as_registry(registry))
        return holder[0].get(str(target))

    return diff_crates(crate(a), crate(b))


def diff_crates(a: Crate, b: Crate) -> CrateDiff:
    left, right = a.manifest, b.manifest
    return CrateDiff(
        a=left.ref,
        b=right.ref,
        a_digest=a.digest,
        b_digest=b.digest,
        signature=signature_changes(left.signature, right.signature),
        labels=_labels(left, right),
        files=_files(left, right),
        tensors=diff_tensors(a, b),
        metrics=_deltas(left.metrics, right.metrics),
        parity=_deltas(_parity(left), _parity(right)),
        lineage={"a": _lineage(left), "b": _lineage(right), **_descent(left, right)},
        provenance=_provenance(left, right),
    )


def _labels(a: Manifest, b: Manifest) -> dict[str, Any] | None:
    if a.labels == b.labels:
        return None
    one, two = a.labels or [], b.labels or []
    changed = [i for i in range(min(len(one), len(two))) if one[i] != two[i]]
    return {"a": len(one), "b": len(two), "changed": changed[:100]}


def _files(a: Manifest, b: Manifest) -> dict[str, Any]:
    one = {f.path: f for f in a.files}
    two = {f.path: f for f in b.files}
    shared = sorted(set(one) & set(two))
    changed = [p for p in shared if one[p].sha256 != two[p].sha256]
    return {
        "added": sorted(set(two) - set(one)),
        "removed": sorted(set(one) - set(two)),
        "changed": changed,
        "unchanged": len(shared) - len(changed),
        "size_a": sum(f.size for f in a.files),
        "size_b": sum(f.size for f in b.files),
    }


def _deltas(a: dict[str, float], b: dict[str, float]) -> list[Delta]:
    return [Delta(name, a.get(name), b.get(name)) for name in sorted({*a, *b})]


def _parity(manifest: Manifest) -> dict[str, float]:
    figures = {
        f"parity {artifact.kind} ({artifact.precision}) max abs diff": artifact.parity.max_abs_diff
        for artifact in manifest.artifacts
        if artifact.parity is not None
    }
    if manifest.report is not None:
        report = manifest.report.to_dict()
        figures.update(
            {f"report {key}": float(value) for key, value in report.items() if _number(value)}
        )
    return figures


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _lineage(manifest: Manifest) -> dict[str, Any]:
    lineage = manifest.lineage
    if lineage is None:
        return {"operation": None, "parents": []}
    return {
        "operation": lineage.operation,
        "parents": [p.ref or p.digest for p in lineage.parents],
        "parameters": dict(lineage.parameters),
    }


def _descent(a: Manifest, b: Manifest) -> dict[str, bool]:
    def parents(manifest: Manifest) -> set[str]:
        return {p.digest for p in manifest.lineage.parents} if manifest.lineage else set()

    return {"b_derives_from_a": a.digest in parents(b), "a_derives_from_b": b.digest in parents(a)}


def _provenance(a: Manifest, b: Manifest) -> dict[str, Any]:
    """Both sides' provenance, and each field that differs: {field: {"a": …, "b": …}}."""
    one = a.provenance.to_dict() if a.provenance else None
    two = b.provenance.to_dict() if b.provenance else None
    left, right = _flat(one), _flat(two)
    changed = {
        key: {"a": left.get(key), "b": right.get(key)}
        for key in dict.fromkeys([*left, *right])
        if left.get(key) != right.get(key)
    }
    return {"a": one, "b": two, "changed": changed}


def _flat(provenance: dict[str, Any] | None) -> dict[str, Any]:
    if provenance is None:
        return {}
    values = dict(provenance)
    values.update(values.pop("source"))
    return values
