"""Dedup: a registry stores each file as content-defined chunks (FastCDC) kept in pack files.

Versions that share tensors share chunks, even when the files differ elsewhere:
ten fine-tunes of one frozen backbone store the backbone once. A file's recipe
(its chunks, in order) is a set of ``file_chunks`` rows written in the same
transaction that makes a version visible; where each chunk lives is the pack
index (``chunks``: pack, offset, size; see packs.py). The whole file is
verified against its sha256 as it is read; ``check`` also re-hashes every
chunk. Chunks and whole files stored as loose blobs by earlier releases are
still read as blobs.
"""

from __future__ import annotations

import hashlib
import io
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING, BinaryIO

from modelcrate.errors import IntegrityError, NotFound, RegistryError
from modelcrate.registry.blobs import BlobStore
from modelcrate.registry.db import Database, Transaction
from modelcrate.registry.packs import Located, PackWriter, Recipe, stage_stream

if TYPE_CHECKING:
    from modelcrate.manifest import Manifest
    from modelcrate.registry.cache import FileCache

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()  # an empty file: no chunks, no blob
READ_BLOCK = 8 * 1024 * 1024


class FileStore:
    """Files by sha256, kept as chunks in packs plus recipes in the database."""

    def __init__(self, db: Database, blobs: BlobStore, cache: FileCache | None = None) -> None:
        self.db, self.blobs, self.cache = db, blobs, cache

    # -- writing -------------------------------------------------------------

    @contextmanager
    def writer(self) -> Iterator[PackWriter]:
        """A pack writer for one publish (or upload, restore): its packs are sealed (durable
        and indexed) when the block ends, dropped if it raises."""
        with PackWriter(self.db, self.blobs) as writer:
            yield writer

    def stage(
        self,
        stream: IO[bytes],
        sha256: str,
        size: int,
        *,
        writer: PackWriter | None = None,
        label: str = "",
        cache: bool = False,
    ) -> Recipe:
        """Verify ``stream`` against ``sha256``/``size`` while storing its new chunks; returns
        the recipe to ``record`` in the publishing transaction. ``cache``: also write the
        bytes into the local file cache in the same pass (the first load then copies nothing)."""
        if writer is None:
            with self.writer() as own:
                return self.stage(stream, sha256, size, writer=own, label=label, cache=cache)
        if not cache or self.cache is None:
            return stage_stream(writer, stream, sha256, size, label)
        with self.cache.incoming(sha256) as copy:
            return stage_stream(writer, stream, sha256, size, label, copy_to=copy)

    def record(self, tx: Transaction, sha256: str, recipe: Recipe) -> None:
        """Write a file's recipe inside the caller's transaction (no-op when it is there).

        Raises RegistryError when a chunk it needs is gone (a concurrent gc removed it
        before this transaction took the write lock): nothing is committed, publish again."""
        if not recipe:
            return
        if self._missing(tx, recipe):
            raise RegistryError(
                f"file {sha256[:12]}… lost chunks to a concurrent gc while it was being "
                "published; nothing was stored, publish again"
            )
        exists = tx.scalar("SELECT seq FROM file_chunks WHERE file_sha = ? LIMIT 1", sha256)
        if exists is None:
            rows = [
                {"file_sha": sha256, "seq": n, "chunk_sha": chunk, "size": length}
                for n, (chunk, length) in enumerate(recipe)
            ]
            tx.insert_rows("file_chunks", rows)

    def _missing(self, tx: Transaction, recipe: Recipe) -> bool:
        shas = {chunk for chunk, _ in recipe}
        indexed = {
            r[0] for r in tx.values_in("SELECT sha256 FROM chunks WHERE sha256 IN (?)", shas)
        }
        return any(not self.blobs.exists(sha) for sha in shas - indexed)

    # -- reading -------------------------------------------------------------

    def recipe(self, sha256: str) -> Recipe | None:
        """The file's chunks in order; None when it has no recipe (not stored, or stored
        whole by an earlier release)."""
        located = self.locate(sha256)
        return None if located is None else [(c.sha256, c.size) for c in located]

    def locate(self, sha256: str) -> list[Located] | None:
        """The file's chunks in order with where each lives (None: no recipe)."""
        if sha256 == EMPTY_SHA256:
            return []
        with self.db.read() as tx:
            rows = tx.all(
                'SELECT f.chunk_sha, f.size, c.pack, c."offset" FROM file_chunks f '
                "LEFT JOIN chunks c ON c.sha256 = f.chunk_sha WHERE f.file_sha = ? ORDER BY f.seq",
                sha256,
            )
        return [Located(c, n, p, o or 0) for c, n, p, o in rows] if rows else None

    def stored(self, sha256: str) -> bool:
        """Whether the whole file is stored (a pure read)."""
        located = self.locate(sha256)
        if located is None:
            return self.blobs.exists(sha256)
        return all(c.pack is not None or self.blobs.exists(c.sha256) for c in located)

    def reuse(self, sha256: str) -> Recipe | None:
        """The recipe of a stored file, or None when it must be stored (again)."""
        located = self.locate(sha256)
        if located is None:  # stored whole by the first release, or not at all
            return [] if self.blobs.exists(sha256) else None
        if not all(c.pack is not None or self.blobs.exists(c.sha256) for c in located):
            return None
        return [(c.sha256, c.size) for c in located]

    def open(self, sha256: str, label: str | None = None) -> BinaryIO:
        """The file's bytes as a stream; ``label`` (its path) names it in errors."""
        located = self.locate(sha256)
        if located is None:
            return self.blobs.open(sha256)
        reader = _Packed(self, sha256, located, label or sha256[:12])
        return io.BufferedReader(reader, READ_BLOCK)

    def write_to(self, sha256: str, out: IO[bytes], label: str) -> None:
        """Append the file's bytes to ``out``: pack ranges are copied inside the kernel
        where the store is a local directory. Sizes are checked; content is the reader's
        to check (the file cache hashes every file it serves)."""
        located = self.locate(sha256)
        if located is None:  # stored whole by the first release
            located = [Located(sha256, 0, None, 0)]
        copy = getattr(self.blobs, "copy_range", None)
        for run in runs(located):
            first = run[0]
            if first.pack is None or copy is None:
                with self._open_run(run) as stream:
                    shutil.copyfileobj(stream, out, READ_BLOCK)
            else:
                copy(first.pack, first.offset, sum(c.size for c in run), out)

    def check(self, sha256: str, size: int) -> str | None:
        """None when the file reads back intact, else what is wrong (the first damaged
        chunk's problem: missing, wrong size, or content not matching its sha256). Each
        chunk is read once, for its own hash and the file's."""
        located = self.locate(sha256)
        if located is None:  # stored whole by the first release
            located = [Located(sha256, size, None, 0)]
        total = sum(c.size for c in located)
        if total != size:
            return f"size {total}, expected {size}"
        whole = hashlib.sha256()
        try:
            for chunk, data in self.read_chunks(located):
                if len(data) != chunk.size:
                    return f"chunk {chunk.sha256[:12]}… is truncated in its pack"
                if hashlib.sha256(data).hexdigest() != chunk.sha256:
                    where = f"pack {chunk.pack}" if chunk.pack else "its blob"
                    return f"chunk {chunk.sha256[:12]}… is corrupted in {where}"
                whole.update(data)
        except NotFound:
            return "missing"
        return None if whole.hexdigest() == sha256 else "content does not match its sha256"

    def read_chunks(self, located: list[Located]) -> Iterator[tuple[Located, bytes]]:
        """Each chunk with its bytes, read run by run (one request per contiguous range of a
        pack). A short read yields fewer bytes (a loose blob's read goes one byte past its
        size, to see one that is too long); the caller judges them. NotFound: gone."""
        for run in runs(located):
            with self._open_run(run) as stream:
                for chunk in run:
                    yield chunk, stream.read(chunk.size + (chunk.pack is None))

    def _open_run(self, run: list[Located]) -> BinaryIO:
        first = run[0]
        if first.pack is None:
            return self.blobs.open(first.sha256)
        return self.blobs.open_range(first.pack, first.offset, sum(c.size for c in run))

    def source(self, manifest: Manifest) -> StoredFiles:
        """A crate source serving ``manifest``'s files from this store."""
        return StoredFiles(self, manifest)


def runs(located: list[Located]) -> Iterator[list[Located]]:
    """Chunks grouped into runs that are contiguous in one pack (one read each); a loose
    blob is a run of its own."""
    run: list[Located] = []
    for chunk in located:
        if run and (
            chunk.pack is None
            or run[-1].pack != chunk.pack
            or run[-1].offset + run[-1].size != chunk.offset
        ):
            yield run
            run = []
        run.append(chunk)
        if chunk.pack is None:
            yield run
            run = []
    if run:
        yield run


class StoredFiles:
    """A crate's files (by path -> sha256) read from a FileStore; ``local_directory`` gives
    them as files in the registry's file cache."""

    def __init__(self, files: FileStore, manifest: Manifest) -> None:
        self.files, self.manifest = files, manifest
        self.shas = {f.path: f.sha256 for f in manifest.files}

    def open(self, path: str) -> BinaryIO:
        return self.files.open(self.shas[path], label=path)

    def local_directory(self, paths: Sequence[str] | None = None) -> Path | None:
        """The crate's files in the local cache, ``paths`` at least (None: all; materialized
        now if needed; the caller hashes them); None when this registry has no cache."""
        if self.files.cache is None:
            return None
        return self.files.cache.directory(self.manifest, self.files.write_to, paths)

    def discard_local(self) -> None:
        """Forget the cached copy (it failed its check)."""
        if self.files.cache is not None:
            self.files.cache.discard(self.manifest)


class _Packed(io.RawIOBase):
    """A stored file read run by run from its packs. Sizes are checked here; content is
    checked once, as the whole file's sha256, by whoever reads it."""

    def __init__(self, store: FileStore, sha256: str, located: list[Located], label: str) -> None:
        self.store, self.sha256, self.label = store, sha256, label
        self.located, self.next = located, 0  # index of the first chunk not yet opened
        self.stream: BinaryIO | None = None
        self.left = 0  # bytes still expected from the open run

    def readable(self) -> bool:
        return True

    def _open_next(self) -> bool:
        if self.next >= len(self.located):
            return False
        run = next(runs(self.located[self.next :]))
        try:
            self.stream = self.store._open_run(run)
        except NotFound:
            # gc may have repacked these chunks since we looked them up: look again once.
            fresh = self.store.locate(self.sha256)
            if fresh is None or len(fresh) != len(self.located):
                raise
            self.located = fresh
            run = next(runs(self.located[self.next :]))
            self.stream = self.store._open_run(run)
        self.next += len(run)
        self.left = sum(c.size for c in run)
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        view, filled = memoryview(buffer), 0
        while filled < len(view):
            if self.stream is None and not self._open_next():
                break
            assert self.stream is not None
            want = min(len(view) - filled, self.left)
            count = self.stream.readinto(view[filled : filled + want]) if want else 0  # type: ignore[attr-defined]
            if want and not count:
                raise IntegrityError(
                    f"{self.label} is corrupted in the registry (a pack ends "
                    f"{self.left} bytes early)"
                )
            filled += count
            self.left -= count
            if self.left == 0:
                self.stream.close()
                self.stream = None
        return filled

    def close(self) -> None:
        if self.stream is not None:
            self.stream.close()
            self.stream = None
        super().close()
