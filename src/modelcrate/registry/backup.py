"""Backup and restore of a whole registry, and disk usage.

A backup is an uncompressed tar: ``registry.json`` (every metadata table, rows in
primary-key order: versions, files, tags, aliases and their history,
signatures, trusted keys, settings, audit log) followed by every blob a
version references, at ``blobs/sha256/<digest>``, sorted, with fixed mtimes, so
backing up the same registry twice gives the same bytes. Restoring goes into an
empty registry only; every blob is re-hashed as it is stored and every
manifest checked against its digest before the metadata is committed in one
transaction.
"""

from __future__ import annotations

import io
import json
import os
import re
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelcrate.crate import tar_info
from modelcrate.errors import CrateFormatError, IntegrityError, RegistryError, UnsafeContentError
from modelcrate.manifest import parse_manifest
from modelcrate.registry.db import TABLES, columns, quoted

if TYPE_CHECKING:
    from modelcrate.registry.api import Registry

FORMAT = "modelcrate-backup-v1"
METADATA = "registry.json"
STORAGE_TABLES = frozenset({"file_chunks", "chunks", "packs"})
_BLOB = re.compile(r"blobs/sha256/([0-9a-f]{64})")


@dataclass(frozen=True)
class BackupReport:
    versions: int
    blobs: int
    bytes: int


@dataclass(frozen=True)
class VersionUsage:
    version: str
    logical_bytes: int  # the version's files
    new_bytes: int  # chunks no earlier version (of the model) had


@dataclass(frozen=True)
class DiskUsage:
    logical_bytes: int
    stored_bytes: int
    versions: list[VersionUsage]
    cache_bytes: int = 0  # the local file cache (loaded versions, materialized once)


def backup(registry: Registry, target: str | os.PathLike[str]) -> BackupReport:
    """Write the whole registry to ``target`` (written aside, then renamed into place)."""
    tables = _dump(registry)
    shas = sorted({row["sha256"]: row["size"] for row in tables["version_files"]}.items())
    metadata = json.dumps({"format": FORMAT, "tables": tables}, sort_keys=True).encode()
    path = Path(target)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent or Path("."))
    total = 0
    try:
        with (
            os.fdopen(fd, "wb") as raw,
            tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar,
        ):
            tar.addfile(tar_info(METADATA, len(metadata)), io.BytesIO(metadata))
            for sha, size in shas:
                with registry.files.open(sha) as stream:
                    tar.addfile(tar_info(f"blobs/sha256/{sha}", size), stream)
                total += size
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return BackupReport(len(tables["versions"]), len(shas), total)


def restore(registry: Registry, source: str | os.PathLike[str]) -> BackupReport:
    """Load a backup into ``registry``, which must be empty."""
    with registry.db.read() as tx:
        if tx.scalar("SELECT 1 FROM versions LIMIT 1") is not None:
            raise RegistryError("restore needs an empty registry; this one has versions")
    path = Path(source)
    tables: dict[str, list[dict[str, Any]]] | None = None
    sizes: dict[str, int] = {}
    recipes: dict[str, list[tuple[str, int]]] = {}
    try:
        with tarfile.open(path, mode="r:") as tar, registry.files.writer() as writer:
            for member in tar:
                if not member.isreg():
                    raise UnsafeContentError(f"{path.name}: {member.name!r} is not a regular file")
                if member.name == METADATA and tables is None:
                    tables = _load_metadata(tar, member)
                    sizes = {row["sha256"]: row["size"] for row in tables["version_files"]}
                    continue
                match = _BLOB.fullmatch(member.name)
                if tables is None or match is None or match.group(1) not in sizes:
                    raise UnsafeContentError(f"{path.name}: unexpected member {member.name!r}")
                stream = tar.extractfile(member)
                assert stream is not None
                sha = match.group(1)
                recipes[sha] = registry.files.stage(stream, sha, sizes[sha], writer=writer)
    except tarfile.TarError as exc:
        raise CrateFormatError(f"{path.name} is not a readable backup: {exc}") from None
    if tables is None:
        raise CrateFormatError(f"{path.name} has no {METADATA}")
    missing = [sha for sha in sizes if sha not in recipes]
    if missing:
        raise IntegrityError(f"{path.name} lacks {len(missing)} file(s) its versions reference")
    with registry.db.write() as tx:
        for table in TABLES:
            rows = [{c: row.get(c) for c in columns(table)} for row in tables.get(table, [])]
            tx.insert_rows(table, rows)
            if rows and tx.dialect == "postgresql" and TABLES[table][0] == ("id",):
                # ids were given: move the sequence past them for the next insert
                tx.execute(
                    f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                    f"(SELECT max(id) FROM {table}))"
                )
        for sha, recipe in recipes.items():
            registry.files.record(tx, sha, recipe)
    return BackupReport(len(tables["versions"]), len(sizes), sum(sizes.values()))


def disk_usage(registry: Registry, name: str | None = None) -> DiskUsage:
    """Bytes the versions (of ``name``) hold, and bytes they take once blobs are shared."""
    with registry.db.read() as tx:
        query = "SELECT id, name, version, size FROM versions"
        if name is None:
            versions = tx.all(f"{query} ORDER BY id")
        else:
            versions = tx.all(f"{query} WHERE name = ? ORDER BY id", name)
        files_of = {
            row.id: tx.all("SELECT sha256, size FROM version_files WHERE version_id = ?", row.id)
            for row in versions
        }
    seen: set[str] = set()
    usage, stored, logical = [], 0, 0
    for row in versions:
        fresh = {}
        for file in files_of[row.id]:
            recipe = registry.files.recipe(file.sha256) or [(file.sha256, file.size)]
            fresh.update({sha: size for sha, size in recipe if sha not in seen})
        seen.update(fresh)
        usage.append(VersionUsage(f"{row.name}@{row.version}", row.size, sum(fresh.values())))
        stored += sum(fresh.values())
        logical += row.size
    cache = registry.files.cache.size() if registry.files.cache is not None else 0
    return DiskUsage(logical, stored, usage, cache)


def _dump(registry: Registry) -> dict[str, list[dict[str, Any]]]:
    tables: dict[str, list[dict[str, Any]]] = {}
    with registry.db.read() as tx:
        for table, (key, _) in TABLES.items():
            if table in STORAGE_TABLES:  # how files are stored is the store's business
                continue
            listed = ", ".join(quoted(c) for c in columns(table))
            query = f"SELECT {listed} FROM {table} ORDER BY {', '.join(quoted(c) for c in key)}"
            tables[table] = [dict(row._asdict()) for row in tx.all(query)]
    return tables


def _load_metadata(
    tar: tarfile.TarFile, member: tarfile.TarInfo
) -> dict[str, list[dict[str, Any]]]:
    stream = tar.extractfile(member)
    assert stream is not None
    try:
        document = json.loads(stream.read())
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CrateFormatError(f"{METADATA} is not valid JSON") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise CrateFormatError(f"not a {FORMAT} backup")
    tables: dict[str, list[dict[str, Any]]] = document["tables"]
    known = set(TABLES) - STORAGE_TABLES
    if set(tables) - known:
        raise CrateFormatError(f"backup has unknown tables: {sorted(set(tables) - known)}")
    for row in tables.get("versions", []):  # every manifest must match its digest
        if parse_manifest(row["manifest"].encode()).digest != row["digest"]:
            raise IntegrityError(f"{row['name']}@{row['version']}: manifest != its digest")
    return tables
