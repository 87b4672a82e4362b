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

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from sqlalchemy import Engine, Row, select
from sqlalchemy.orm import Session

from modelcrate.manifest import Manifest, parse_manifest
from modelcrate.registry.db import ParentRow, VersionRow, read_session

MAX_NODES = 1000  # per direction
BATCH = 500  # keys per IN (every database's parameter limit)


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


def index_rows(manifest: Manifest) -> list[ParentRow]:
    """The lineage index rows a version adds when it is published."""
    if manifest.lineage is None:
        return []
    rows: dict[str, ParentRow] = {}
    for parent in manifest.lineage.parents:
        rows.setdefault(
            parent.digest,
            ParentRow(
                parent_digest=parent.digest,
                seq=len(rows) + 1,
                parent_ref=parent.ref,
                operation=manifest.lineage.operation,
            ),
        )
    return list(rows.values())


def lineage_of(engine: Engine, manifest: Manifest, limit: int = MAX_NODES) -> LineageGraph:
    start = [(row.parent_digest, row.parent_ref) for row in index_rows(manifest)]
    with read_session(engine) as session:
        ancestors, cut_up = _walk_up(session, manifest.digest, start, limit)
        descendants, cut_down = _walk_down(session, manifest.digest, limit)
    operation = manifest.lineage.operation if manifest.lineage else None
    return LineageGraph(
        manifest.ref,
        manifest.digest,
        operation,
        ancestors,
        descendants,
        truncated=cut_up or cut_down,
    )


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


def _walk_up(
    session: Session, start: str, parents: list[tuple[str, str | None]], limit: int
) -> tuple[list[LineageNode], bool]:
    nodes: list[LineageNode] = []
    seen, level, depth = {start}, parents, 1
    while level:
        fresh = [(d, r) for d, r in dict(level).items() if d not in seen]
        seen.update(d for d, _ in fresh)
        known = {row.digest: row for row in _versions(session, [d for d, _ in fresh])}
        edges = _parents_of(session, [d for d, _ in fresh if d in known])
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


def _walk_down(session: Session, start: str, limit: int) -> tuple[list[LineageNode], bool]:
    nodes: list[LineageNode] = []
    seen, level, depth = {start}, [start], 1
    while level:
        children = {row.digest: row for row in _children(session, level) if row.digest not in seen}
        seen.update(children)
        edges = _parents_of(session, list(children))
        level = []
        for digest, row in children.items():
            if len(nodes) == limit:
                return nodes, True
            nodes.append(_node(row, edges.get(digest, []), depth))
            level.append(digest)
        depth += 1
    return nodes, False


def _node(row: Row[str, str, str], parents: list[ParentRow], depth: int) -> LineageNode:
    """A version found in the registry, with its parents (the index rows it wrote)."""
    return LineageNode(
        f"{row.name}@{row.version}",
        row.digest,
        parents[0].operation if parents else None,
        depth,
        parents=[e.parent_digest for e in parents],
    )


def _batches(keys: Iterable[str]) -> Iterator[list[str]]:
    wanted = list(dict.fromkeys(keys))
    for start in range(0, len(wanted), BATCH):
        yield wanted[start : start + BATCH]


def _versions(session: Session, digests: list[str]) -> list[Row[str, str, str]]:
    found: list[Row[str, str, str]] = []
    for batch in _batches(digests):
        query = select(VersionRow.digest, VersionRow.name, VersionRow.version)
        found.extend(session.execute(query.where(VersionRow.digest.in_(batch))).all())
    return found


def _parents_of(session: Session, digests: list[str]) -> dict[str, list[ParentRow]]:
    """Each version's parent rows, in its manifest's order."""
    found: dict[str, list[ParentRow]] = {}
    for batch in _batches(digests):
        query = (
            select(VersionRow.digest, ParentRow)
            .join(ParentRow, ParentRow.version_id == VersionRow.id)
            .where(VersionRow.digest.in_(batch))
            .order_by(VersionRow.digest, ParentRow.seq)
        )
        for digest, edge in session.execute(query):
            found.setdefault(digest, []).append(edge)
    return found


def _children(session: Session, digests: list[str]) -> list[Row[str, str, str]]:
    """Versions that name one of ``digests`` as a parent, oldest first."""
    found: list[Row[str, str, str]] = []
    for batch in _batches(digests):
        query = (
            select(VersionRow.digest, VersionRow.name, VersionRow.version)
            .join(ParentRow, ParentRow.version_id == VersionRow.id)
            .where(ParentRow.parent_digest.in_(batch))
            .order_by(VersionRow.id)
        )
        found.extend(session.execute(query).all())
    return found
