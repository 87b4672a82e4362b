"""Lineage: which versions a version came from, and which came from it.

Every derived crate (optimized, fine-tuned, distilled, encrypted, composed)
names its parents by digest in its manifest. Ancestors are found by following
those digests; descendants by finding the manifests that name a digest. A
parent that is not (or no longer) in this registry still appears, by the
reference its child recorded.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import Engine, select

from modelcrate.manifest import Manifest, parse_manifest
from modelcrate.registry.db import VersionRow, read_session


@dataclass(frozen=True)
class LineageNode:
    ref: str
    digest: str
    operation: str | None  # how this node was made from its parent(s)
    depth: int  # 1 = direct parent / child
    in_registry: bool = True
    parents: list[str] = field(default_factory=list)  # digests


@dataclass(frozen=True)
class LineageGraph:
    ref: str
    digest: str
    operation: str | None
    ancestors: list[LineageNode]
    descendants: list[LineageNode]


def lineage_of(engine: Engine, manifest: Manifest) -> LineageGraph:
    with read_session(engine) as session:
        rows = {row.digest: row for row in session.scalars(select(VersionRow)).all()}
    manifests = {
        digest: parse_manifest(row.manifest.encode(), stored=True) for digest, row in rows.items()
    }
    ancestors = _walk_up(manifest, manifests)
    descendants = _walk_down(manifest.digest, manifests)
    operation = manifest.lineage.operation if manifest.lineage else None
    return LineageGraph(manifest.ref, manifest.digest, operation, ancestors, descendants)


def dependents(engine: Engine, digest: str) -> list[str]:
    """Refs of the compositions that run the version ``digest``."""
    with read_session(engine) as session:
        rows = session.scalars(select(VersionRow).where(VersionRow.manifest.contains(digest))).all()
        found = []
        for row in rows:
            manifest = parse_manifest(row.manifest.encode(), stored=True)
            members = manifest.composition.members if manifest.composition else []
            if any(m.digest == digest for m in members):
                found.append(manifest.ref)
        return found


def _parents(manifest: Manifest) -> list[tuple[str, str | None]]:
    if manifest.lineage is None:
        return []
    return [(p.digest, p.ref) for p in manifest.lineage.parents]


def _walk_up(start: Manifest, manifests: dict[str, Manifest]) -> list[LineageNode]:
    nodes, seen = [], {start.digest}
    frontier = [(digest, ref, 1) for digest, ref in _parents(start)]
    while frontier:
        digest, ref, depth = frontier.pop(0)
        if digest in seen:
            continue
        seen.add(digest)
        known = manifests.get(digest)
        if known is None:
            nodes.append(LineageNode(ref or digest[:19], digest, None, depth, in_registry=False))
            continue
        parents = _parents(known)
        operation = known.lineage.operation if known.lineage else None
        nodes.append(LineageNode(known.ref, digest, operation, depth,
                                 parents=[d for d, _ in parents]))  # fmt: skip
        frontier.extend((d, r, depth + 1) for d, r in parents)
    return nodes


def _walk_down(start: str, manifests: dict[str, Manifest]) -> list[LineageNode]:
    children: dict[str, list[Manifest]] = {}
    for manifest in manifests.values():
        for digest, _ in _parents(manifest):
            children.setdefault(digest, []).append(manifest)
    nodes, seen = [], {start}
    frontier = [(child, 1) for child in children.get(start, [])]
    while frontier:
        manifest, depth = frontier.pop(0)
        if manifest.digest in seen:
            continue
        seen.add(manifest.digest)
        operation = manifest.lineage.operation if manifest.lineage else None
        parents = [d for d, _ in _parents(manifest)]
        nodes.append(LineageNode(manifest.ref, manifest.digest, operation, depth, parents=parents))
        frontier.extend((child, depth + 1) for child in children.get(manifest.digest, []))
    return nodes
