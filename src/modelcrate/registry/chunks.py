"""Dedup: a registry stores each file as content-defined chunks (FastCDC), each chunk a blob.

Versions that share tensors share chunks, even when the files differ elsewhere:
ten fine-tunes of one frozen backbone store the backbone once. A file's recipe
(its chunks, in order) is a set of ``file_chunks`` rows written in the same
transaction that makes a version visible. The whole file is verified against
its sha256 as it is read, as before; each chunk is hashed when stored and by
``verify``. Files stored whole by earlier releases are still read as whole blobs.
"""

from __future__ import annotations

import hashlib
import io
import tempfile
from collections.abc import Iterator
from typing import IO, TYPE_CHECKING, BinaryIO

from sqlalchemy import Engine, delete, select
from sqlalchemy.orm import Session

from modelcrate.errors import IntegrityError, NotFound
from modelcrate.registry.blobs import BlobStore, copy_verified
from modelcrate.registry.db import FileChunkRow, FileRow, read_session

if TYPE_CHECKING:
    from modelcrate.manifest import Manifest

MIN_CHUNK, AVG_CHUNK, MAX_CHUNK = 16 * 1024, 64 * 1024, 256 * 1024
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()  # an empty file: no chunks, no blob
Recipe = list[tuple[str, int]]  # (chunk sha256, size), in order; [] for an empty file


class FileStore:
    """Files by sha256, kept as chunk blobs plus recipes in the database."""

    def __init__(self, engine: Engine, blobs: BlobStore) -> None:
        self.engine, self.blobs = engine, blobs

    def _locate(self, sha256: str) -> Recipe | None:
        """The file's recipe when all of it is stored ([] for a file stored whole by an
        earlier release), else None."""
        recipe = self.recipe(sha256)
        if recipe is None:
            return [] if self.blobs.exists(sha256) else None
        if not all(self.blobs.exists(chunk) for chunk, _ in recipe):
            return None  # a chunk went missing: the file must be stored again
        return recipe

    def stored(self, sha256: str) -> bool:
        """Whether the file is stored (a pure read: nothing is touched)."""
        return self._locate(sha256) is not None

    def reuse(self, sha256: str) -> Recipe | None:
        """The recipe of a stored file (its blobs touched, so gc's grace period protects
        them until the publish commits), or None when the file is not stored yet."""
        recipe = self._locate(sha256)
        if recipe is not None:
            whole = not recipe and sha256 != EMPTY_SHA256  # stored whole by an earlier release
            for blob in [sha256] if whole else [chunk for chunk, _ in recipe]:
                self.blobs.touch(blob)
        return recipe

    def stage(self, stream: IO[bytes], sha256: str, size: int) -> Recipe:
        """Verify ``stream`` against ``sha256``/``size`` and store its chunks; returns the
        recipe to ``record`` in the publishing transaction."""
        from fastcdc import fastcdc

        with tempfile.NamedTemporaryFile(prefix="modelcrate-stage-") as staged:
            copy_verified(stream, staged, sha256, size)
            staged.flush()
            if size == 0:
                return []
            recipe: Recipe = []
            for chunk in fastcdc(staged.name, MIN_CHUNK, AVG_CHUNK, MAX_CHUNK, fat=True):
                data = bytes(chunk.data)
                chunk_sha = hashlib.sha256(data).hexdigest()
                if self.blobs.exists(chunk_sha):
                    self.blobs.touch(chunk_sha)
                else:
                    self.blobs.put(io.BytesIO(data), chunk_sha, len(data))
                recipe.append((chunk_sha, len(data)))
        return recipe

    def record(self, session: Session, sha256: str, recipe: Recipe) -> None:
        """Write a file's recipe inside the caller's transaction (no-op when it is there)."""
        if not recipe:
            return
        exists = session.scalar(
            select(FileChunkRow.seq).where(FileChunkRow.file_sha == sha256).limit(1)
        )
        if exists is None:
            session.add_all(
                FileChunkRow(file_sha=sha256, seq=n, chunk_sha=chunk, size=length)
                for n, (chunk, length) in enumerate(recipe)
            )

    def recipe(self, sha256: str) -> Recipe | None:
        """The file's chunks in order; None when it has no recipe (not stored, or stored
        whole by an earlier release)."""
        if sha256 == EMPTY_SHA256:
            return []
        with read_session(self.engine) as session:
            rows = session.execute(
                select(FileChunkRow.chunk_sha, FileChunkRow.size)
                .where(FileChunkRow.file_sha == sha256)
                .order_by(FileChunkRow.seq)
            ).all()
        return [(chunk, size) for chunk, size in rows] if rows else None

    def open(self, sha256: str, label: str | None = None) -> BinaryIO:
        """The file's bytes; ``label`` (its path) names it in errors."""
        recipe = self.recipe(sha256)
        if recipe is None:
            return self.blobs.open(sha256)
        return _Chunked(self.blobs, recipe, label or sha256[:12])  # type: ignore[return-value]

    def check(self, sha256: str, size: int) -> str | None:
        """None when the file reads back intact, else what is wrong (the first damaged
        chunk's problem: missing, wrong size, or content not matching its sha256). Each
        chunk is read once, for its own hash and the file's."""
        recipe = self.recipe(sha256)
        if recipe is None:
            return self.blobs.check(sha256, size)
        total = sum(length for _, length in recipe)
        if total != size:
            return f"size {total}, expected {size}"
        whole = hashlib.sha256()
        for chunk, length in recipe:
            try:
                with self.blobs.open(chunk) as stream:
                    data = stream.read(length + 1)
            except NotFound:
                return "missing"
            if len(data) != length:
                return f"size {len(data)}, expected {length}"
            if hashlib.sha256(data).hexdigest() != chunk:
                return "content does not match its sha256"
            whole.update(data)
        return None if whole.hexdigest() == sha256 else "content does not match its sha256"

    def source(self, manifest: Manifest) -> StoredFiles:
        """A crate source serving ``manifest``'s files from this store."""
        return StoredFiles(self, manifest)


class StoredFiles:
    """A crate's files (by path -> sha256) read from a FileStore."""

    def __init__(self, files: FileStore, manifest: Manifest) -> None:
        self.files = files
        self.shas = {f.path: f.sha256 for f in manifest.files}

    def open(self, path: str) -> BinaryIO:
        return self.files.open(self.shas[path], label=path)


def live_blobs(session: Session) -> set[str]:
    """Blobs some version needs: chunks of referenced files, and files stored whole.
    Recipes of files no version references any more are dropped here (under the gc lock)."""
    referenced = set(session.scalars(select(FileRow.sha256)).all())
    orphaned = set(session.scalars(select(FileChunkRow.file_sha).distinct()).all()) - referenced
    for sha in orphaned:
        session.execute(delete(FileChunkRow).where(FileChunkRow.file_sha == sha))
    chunks = set(session.scalars(select(FileChunkRow.chunk_sha)).all())
    return referenced | chunks


class _Chunked(io.RawIOBase):
    """A file read chunk by chunk (each chunk's size checked; the file's sha256 is checked by
    whoever reads it whole)."""

    def __init__(self, blobs: BlobStore, recipe: Recipe, label: str) -> None:
        self.blobs, self.chunks, self.label = blobs, iter(recipe), label
        self.buffer = b""

    def readable(self) -> bool:
        return True

    def _next_chunk(self) -> bytes | None:
        for chunk_sha, size in self.chunks:
            with self.blobs.open(chunk_sha) as stream:
                data = stream.read(size + 1)
            # Sizes are checked here; content is checked once, as the whole file's sha256
            # (by the crate as it reads, or by `check`), not hashed twice.
            if len(data) != size:
                raise IntegrityError(
                    f"{self.label} is corrupted in the registry "
                    f"(stored chunk {chunk_sha[:12]}… has {len(data)} bytes, expected {size})"
                )
            return data
        return None

    def read(self, size: int = -1) -> bytes:
        parts, have = [self.buffer], len(self.buffer)
        while size < 0 or have < size:
            data = self._next_chunk()
            if data is None:
                break
            parts.append(data)
            have += len(data)
        joined = b"".join(parts)
        if size < 0:
            self.buffer = b""
            return joined
        self.buffer = joined[size:]
        return joined[:size]

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def iter_unused(blobs: BlobStore, live: set[str], cutoff: float) -> Iterator[str]:
    """Blobs no version needs that are older than ``cutoff`` (gc's grace period)."""
    for sha, mtime, _ in list(blobs.iter_blobs()):
        if sha not in live and mtime <= cutoff:
            yield sha
