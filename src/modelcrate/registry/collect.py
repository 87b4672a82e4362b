"""Garbage collection and repacking of the chunk store, and the whole-store check.

gc runs in three steps so that readers are never blocked and publishers only
for the short planning and finishing transactions:

1. under the write lock: drop recipes no version uses, drop index rows of
   chunks nobody needs, and plan which packs to rewrite;
2. without the lock: copy the live chunks of those packs (and loose blobs left
   by earlier releases) into new packs, whose sealing points the index at them;
3. under the write lock: forget the old packs, then delete their files.

A reader that looked a chunk up before step 2 and finds its old pack gone
looks it up again (chunks.py). Anything younger than the grace period stays.
"""

from __future__ import annotations

import hashlib
import time
from collections import defaultdict

from modelcrate.errors import IntegrityError, NotFound
from modelcrate.registry import packs as pack_files
from modelcrate.registry.chunks import FileStore
from modelcrate.registry.db import Row
from modelcrate.registry.packs import Located, PackWriter, read_footer
from modelcrate.registry.records import GcReport, PackCheck

REWRITE_BELOW = 0.5  # a pack with less than this share of live bytes is rewritten
SMALL_SHARE = 0.25  # several packs smaller than this share of the pack size are merged
CHUNKS = 'SELECT sha256, pack, "offset", size FROM chunks'


def collect(files: FileStore, *, grace_seconds: float) -> GcReport:
    """Free what no version needs and compact the packs (see the module docstring)."""
    db, blobs = files.db, files.blobs
    cutoff = time.time() - grace_seconds
    removed = freed = 0
    with db.write() as tx:
        tx.lock_writes()
        referenced = set(tx.column("SELECT sha256 FROM version_files"))
        recipes = set(tx.column("SELECT DISTINCT file_sha FROM file_chunks"))
        unused = [(sha,) for sha in recipes - referenced]
        tx.executemany("DELETE FROM file_chunks WHERE file_sha = ?", unused)
        live = set(tx.column("SELECT chunk_sha FROM file_chunks"))
        packs = {row.id: row for row in tx.all("SELECT id, size, created_at FROM packs")}
        by_pack: dict[str, list[Row]] = defaultdict(list)
        for chunk in tx.all(CHUNKS):
            by_pack[chunk.pack].append(chunk)
        dead, rewrite, dead_chunks = [], [], []
        small = pack_files.PACK_TARGET * SMALL_SHARE
        old_small = [p for p in packs.values() if p.created_at <= cutoff and p.size < small]
        for pack in packs.values():
            if pack.created_at > cutoff:
                continue
            chunks = by_pack.get(pack.id, [])
            live_bytes = sum(c.size for c in chunks if c.sha256 in live)
            if live_bytes == 0:
                dead.append(pack.id)
            elif live_bytes < REWRITE_BELOW * pack.size or (
                pack.size < small and len(old_small) > 1
            ):
                rewrite.append(pack.id)
            for chunk in chunks:
                if chunk.sha256 not in live:
                    dead_chunks.append((chunk.sha256,))
                    removed += 1
                    freed += chunk.size
        tx.executemany("DELETE FROM chunks WHERE sha256 = ?", dead_chunks)
        tx.executemany("DELETE FROM packs WHERE id = ?", [(p,) for p in dead])
        indexed = {c.sha256 for chunks in by_pack.values() for c in chunks}
        loose = list(live - indexed)
        whole = referenced - recipes
    moves = sorted(
        (
            Located(c.sha256, c.size, c.pack, c.offset)
            for pack_id in rewrite
            for c in by_pack[pack_id]
            if c.sha256 in live
        ),
        key=lambda c: (c.pack or "", c.offset),
    )
    with PackWriter(db, blobs, move=True) as writer:
        for moved, data in files.read_chunks(moves):
            if len(data) == moved.size and hashlib.sha256(data).hexdigest() == moved.sha256:
                writer.add(moved.sha256, data)  # a damaged chunk stays for `verify` to name
        moved_loose = []
        for sha in loose:
            if blobs.exists(sha):
                with blobs.open(sha) as stream:
                    data = stream.read()
                if hashlib.sha256(data).hexdigest() == sha:
                    writer.add(sha, data)
                    moved_loose.append(sha)
        rechunked = _rechunk_whole_files(files, writer, whole)
    with db.write() as tx:
        tx.lock_writes()
        for sha, recipe in rechunked.items():
            files.record(tx, sha, recipe)
        still_used = {
            r.pack for r in tx.values_in("SELECT pack FROM chunks WHERE pack IN (?)", rewrite)
        }
        retired = [p for p in rewrite if p not in still_used]
        tx.executemany("DELETE FROM packs WHERE id = ?", [(p,) for p in retired])
    for pack_id in dead + retired:
        blobs.delete_pack(pack_id)
    for sha in moved_loose + list(rechunked):
        blobs.delete(sha)
    for sha, mtime, _ in list(blobs.iter_blobs()):  # loose blobs nobody needs
        if sha not in live and sha not in referenced and mtime <= cutoff:
            freed += blobs.delete(sha)
            removed += 1
    for pack_id, mtime, size in list(blobs.iter_packs()):  # packs whose index never committed
        if pack_id not in packs and mtime <= cutoff and not _indexed(files, pack_id):
            blobs.delete_pack(pack_id)
            freed += size
    blobs.sweep_tmp(grace_seconds)
    if files.cache is not None:  # deleted versions leave no copies behind
        with db.read() as tx:
            digests = set(tx.column("SELECT digest FROM versions"))
            present = set(tx.column("SELECT sha256 FROM version_files"))
        files.cache.retain(digests, present)
    return GcReport(removed, freed, packs_rewritten=len(retired), packs_removed=len(dead))


def _rechunk_whole_files(
    files: FileStore, writer: PackWriter, whole: set[str]
) -> dict[str, list[tuple[str, int]]]:
    """Files stored whole by the first release become chunks in packs (their blob goes)."""
    recipes = {}
    for sha in whole:
        if not files.blobs.exists(sha):
            continue
        with files.db.read() as tx:
            size = tx.scalar("SELECT size FROM version_files WHERE sha256 = ? LIMIT 1", sha)
        if size is None:
            continue
        try:
            with files.blobs.open(sha) as stream:
                recipes[sha] = files.stage(stream, sha, size, writer=writer)
        except IntegrityError:
            continue  # damaged: left in place for `verify` to report
    return recipes


def _indexed(files: FileStore, pack_id: str) -> bool:
    with files.db.read() as tx:
        return tx.scalar("SELECT 1 FROM packs WHERE id = ?", pack_id) is not None


def damaged_versions(files: FileStore) -> list[PackCheck]:
    """Read every pack once: its footer against the index, every chunk against its sha256.
    Each damaged pack is reported with the versions that hold one of its chunks."""
    with files.db.read() as tx:
        packs = tx.all("SELECT id, size FROM packs ORDER BY id")
        index: dict[str, dict[str, tuple[int, int]]] = defaultdict(dict)
        for chunk in tx.all(CHUNKS):
            index[chunk.pack][chunk.sha256] = (chunk.offset, chunk.size)
    checks = []
    for pack in packs:
        problem, bad = _check_pack(files, pack, index.get(pack.id, {}))
        if problem is not None:
            checks.append(PackCheck(pack.id, problem, _versions_using(files, bad)))
    return checks


def _check_pack(
    files: FileStore, pack: Row, chunks: dict[str, tuple[int, int]]
) -> tuple[str | None, set[str]]:
    try:
        listed = {
            sha: (offset, size)
            for sha, offset, size in read_footer(files.blobs, pack.id, pack.size)
        }
    except NotFound:
        return "missing", set(chunks)
    except IntegrityError as exc:
        return str(exc), set(chunks)
    bad = {sha for sha, place in chunks.items() if listed.get(sha) != place}
    located = sorted(
        (Located(sha, size, pack.id, offset) for sha, (offset, size) in chunks.items()),
        key=lambda c: c.offset,
    )
    for chunk, data in files.read_chunks(located):
        if hashlib.sha256(data).hexdigest() != chunk.sha256:
            bad.add(chunk.sha256)
    if not bad:
        return None, bad
    return f"{len(bad)} damaged chunk(s)", bad


def _versions_using(files: FileStore, chunks: set[str]) -> list[str]:
    if not chunks:
        return []
    with files.db.read() as tx:
        query = "SELECT file_sha FROM file_chunks WHERE chunk_sha IN (?)"
        shas = {row.file_sha for row in tx.values_in(query, chunks)}
        rows = tx.values_in(
            "SELECT DISTINCT v.name, v.version FROM versions v "
            "JOIN version_files f ON f.version_id = v.id WHERE f.sha256 IN (?)",
            shas,
        )
    return sorted({f"{name}@{version}" for name, version in rows})
