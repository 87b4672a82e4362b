"""Lineage: which versions a version came from, and which came from it.

Every derived crate (optimized, fine-tuned, distilled, encrypted, composed)
names its parents by digest in its manifest; publishing also writes them to the
lineage index (``version_parents``), so ancestors and descendants are found by
indexed lookups, level by level, never by reading every manifest. A walk stops
after ``limit`` nodes in each direction (``truncated`` says so). A parent that is
not (or no longer) in this registry still appears, by the reference its child
recorded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from modelcrate.registry.db import Database, Row, Transaction

if TYPE_CHECKING:
    from modelcrate.manifest import Manifest

MAX_NODES = 1000  # per direction


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
    truncated: bool = False  # a direction had more than the walk's limit of nodes


def index_parents(manifest: Manifest, version_id: Any = None) -> list[dict[str, Any]]:
    """The lineage index rows (``version_parents``) a version adds when it is published."""
    if manifest.lineage is None:
        return []
    rows: dict[str, dict[str, Any]] = {}
    for parent in manifest.lineage.parents:
        rows.setdefault(
            parent.digest,
            {
                "version_id": version_id,
                "parent_digest": parent.digest,
                "seq": len(rows) + 1,
                "parent_ref": parent.ref,
                "operation": manifest.lineage.operation,
            },
        )
    return list(rows.values())


def lineage_of(db: Database, manifest: Manifest, limit: int = MAX_NODES) -> LineageGraph:
    start = [(row["parent_digest"], row["parent_ref"]) for row in index_parents(manifest)]
    with db.read() as tx:
        ancestors, cut_up = _walk_up(tx, manifest.digest, start, limit)
        descendants, cut_down = _walk_down(tx, manifest.digest, limit)
    operation = manifest.lineage.operation if manifest.lineage else None
    return LineageGraph(
        manifest.ref,
        manifest.digest,
        operation,
        ancestors,
        descendants,
        truncated=cut_up or cut_down,
    )


def dependents(tx: Transaction, digest: str) -> list[str]:
    """Refs of the compositions that run the version ``digest``."""
    from modelcrate.manifest import parse_manifest

    # A digest is hex and "sha256:": no LIKE wildcards to escape.
    rows = tx.column("SELECT manifest FROM versions WHERE manifest LIKE ?", f"%{digest}%")
    found = []
    for text in rows:
        manifest = parse_manifest(text.encode())
        members = manifest.composition.members if manifest.composition else []
        if any(m.digest == digest for m in members):
            found.append(manifest.ref)
    return found


def _walk_up(
    tx: Transaction, start: str, parents: list[tuple[str, str | None]], limit: int
) -> tuple[list[LineageNode], bool]:
    nodes: list[LineageNode] = []
    seen, level, depth = {start}, parents, 1
    while level:
        fresh = [(d, r) for d, r in dict(level).items() if d not in seen]
        seen.update(d for d, _ in fresh)
        known = {row.digest: row for row in _versions(tx, [d for d, _ in fresh])}
        edges = _parents_of(tx, [d for d, _ in fresh if d in known])
        level = []
        for digest, ref in fresh:
            if len(nodes) == limit:
                return nodes, True
            row = known.get(digest)
            if row is None:
                missing = LineageNode(ref or digest[:19], digest, None, depth, in_registry=False)
                nodes.append(missing)
                continue
            own = edges.get(digest, [])
            nodes.append(_node(row, own, depth))
            level.extend((e.parent_digest, e.parent_ref) for e in own)
        depth += 1
    return nodes, False


def _walk_down(tx: Transaction, start: str, limit: int) -> tuple[list[LineageNode], bool]:
    nodes: list[LineageNode] = []
    seen, level, depth = {start}, [start], 1
    while level:
        children = {row.digest: row for row in _children(tx, level) if row.digest not in seen}
        seen.update(children)
        edges = _parents_of(tx, list(children))
        level = []
        for digest, row in children.items():
            if len(nodes) == limit:
                return nodes, True
            nodes.append(_node(row, edges.get(digest, []), depth))
            level.append(digest)
        depth += 1
    return nodes, False


def _node(row: Row, parents: list[Row], depth: int) -> LineageNode:
    """A version found in the registry, with its parents (the index rows it wrote)."""
    return LineageNode(
        f"{row.name}@{row.version}",
        row.digest,
        parents[0].operation if parents else None,
        depth,
        parents=[e.parent_digest for e in parents],
    )


def _versions(tx: Transaction, digests: list[str]) -> list[Row]:
    return tx.values_in("SELECT digest, name, version FROM versions WHERE digest IN (?)", digests)


def _parents_of(tx: Transaction, digests: list[str]) -> dict[str, list[Row]]:
    """Each version's parent rows, in its manifest's order."""
    found: dict[str, list[Row]] = {}
    rows = tx.values_in(
        "SELECT v.digest, p.parent_digest, p.parent_ref, p.operation, p.seq "
        "FROM versions v JOIN version_parents p ON p.version_id = v.id WHERE v.digest IN (?)",
        digests,
    )
    for edge in sorted(rows, key=lambda r: (r.digest, r.seq)):
        found.setdefault(edge.digest, []).append(edge)
    return found


def _children(tx: Transaction, digests: list[str]) -> list[Row]:
    """Versions that name one of ``digests`` as a parent, oldest first."""
    rows = tx.values_in(
        "SELECT v.id, v.digest, v.name, v.version FROM versions v "
        "JOIN version_parents p ON p.version_id = v.id WHERE p.parent_digest IN (?)",
        digests,
    )
    return sorted(rows, key=lambda r: r.id)
