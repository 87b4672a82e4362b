"""Pack files: many content-defined chunks appended to one file of tens of MB, with an index.

Storing each ~64 KiB chunk as its own file cost two fsyncs per chunk and left
16,000 files per GiB; a pack holds about a thousand chunks and costs one fsync.
Layout of a pack (``packs/ab/<32 hex>.pack``)::

    b"MCPACK1\\n"                       8 bytes
    chunk bytes, back to back
    footer: per chunk sha256 (32 bytes) + offset (u64) + size (u32)
    trailer: chunk count (u64) + footer offset (u64) + b"MCPACKND"

The database's ``chunks`` table (chunk sha256 -> pack, offset, size) is the
index readers use; the footer makes a pack self-describing, so ``verify`` can
tell a truncated or torn pack from a whole one. A pack is written under a temp
name, fsynced, then renamed into place (or uploaded to S3) *before* its index
rows commit: a crash leaves at most an unindexed temp file, which ``gc`` sweeps.
Packs are immutable; ``gc`` rewrites a mostly-dead pack into a new one.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import struct
import tempfile
import time
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from modelcrate.errors import IntegrityError
from modelcrate.registry.blobs import BlobStore, FileBlobStore
from modelcrate.registry.db import Database

MAGIC, END = b"MCPACK1\n", b"MCPACKND"
_ENTRY = struct.Struct("<32sQI")
_TRAILER = struct.Struct("<QQ8s")
PACK_TARGET = 64 * 1024 * 1024  # a pack is sealed once it holds this many bytes
MIN_CHUNK, AVG_CHUNK, MAX_CHUNK = 16 * 1024, 64 * 1024, 256 * 1024
BLOCK = 16 * 1024 * 1024  # bytes read from the source per step of the chunker
Recipe = list[tuple[str, int]]  # (chunk sha256, size), in order; [] for an empty file


@dataclass(frozen=True)
class Located:
    """Where a chunk's bytes are: a pack (offset, size), or a loose blob (pack is None)."""

    sha256: str
    size: int
    pack: str | None
    offset: int


class PackWriter:
    """Appends new chunks to packs; ``seal`` makes them durable and indexed.

    Used by one publish (or upload, restore, repack) at a time; concurrent
    writers each have their own packs. ``known`` returns which chunks the index
    already has, so they are not stored twice."""

    def __init__(
        self, db: Database, blobs: BlobStore, *, target: int | None = None, move: bool = False
    ) -> None:
        """``move``: the chunks are already indexed elsewhere (gc rewriting a pack), so
        sealing points their index rows at the new pack."""
        self.db, self.blobs, self.move = db, blobs, move
        self.target = PACK_TARGET if target is None else target
        self.tmp = blobs.tmp if isinstance(blobs, FileBlobStore) else Path(tempfile.gettempdir())
        self.handle: IO[bytes] | None = None
        self.pack, self.staged = "", Path()
        self.entries: list[tuple[str, int, int]] = []
        self.pending: set[str] = set()  # written into this writer's packs, not yet sealed
        self.sealed: set[str] = set()

    def known(self, shas: Iterable[str]) -> set[str]:
        """Which of ``shas`` are stored already (indexed, or written by this writer)."""
        wanted = set(shas)
        found = wanted & (self.pending | self.sealed)
        query = "SELECT sha256 FROM chunks WHERE sha256 IN (?)"
        with self.db.read() as tx:
            return found | {row[0] for row in tx.values_in(query, wanted - found)}

    def add(self, sha256: str, data: bytes | memoryview) -> None:
        """Append one chunk (the caller hashed it and checked it is not stored yet)."""
        if self.handle is None:
            fd, name = tempfile.mkstemp(prefix="pack-", dir=self.tmp)
            self.handle, self.staged = os.fdopen(fd, "wb"), Path(name)
            self.pack = secrets.token_hex(16)
            self.handle.write(MAGIC)
        offset = self.handle.tell()
        self.handle.write(data)
        self.entries.append((sha256, offset, len(data)))
        self.pending.add(sha256)
        if self.handle.tell() >= self.target:
            self.seal()

    def seal(self) -> None:
        """Write the footer, fsync, move the pack into the store, then index its chunks."""
        if self.handle is None:
            return
        handle, self.handle = self.handle, None
        try:
            footer = handle.tell()
            handle.write(b"".join(_ENTRY.pack(bytes.fromhex(s), o, n) for s, o, n in self.entries))
            handle.write(_TRAILER.pack(len(self.entries), footer, END))
            handle.flush()
            os.fsync(handle.fileno())
            size = handle.tell()
            handle.close()
            self.blobs.put_pack(self.staged, self.pack)
        except BaseException:
            handle.close()
            self.staged.unlink(missing_ok=True)
            raise
        rows = [
            {"sha256": s, "pack": self.pack, "offset": o, "size": n} for s, o, n in self.entries
        ]
        # A racing writer may have indexed the same chunk (keep theirs); a moved chunk's
        # row is pointed at its new place.
        conflict = (
            'ON CONFLICT (sha256) DO UPDATE SET pack = excluded.pack, "offset" = excluded."offset"'
            if self.move
            else "ON CONFLICT (sha256) DO NOTHING"
        )
        with self.db.write() as tx:
            tx.insert("packs", id=self.pack, size=size, created_at=time.time())
            tx.insert_rows("chunks", rows, conflict)
        self.sealed |= self.pending
        self.pending, self.entries = set(), []

    def abort(self) -> None:
        """Drop the pack being written (its chunks were never indexed)."""
        if self.handle is not None:
            self.handle.close()
            self.handle = None
            self.staged.unlink(missing_ok=True)
        self.pending, self.entries = set(), []

    def __enter__(self) -> PackWriter:
        return self

    def __exit__(self, kind: object, *_: object) -> None:
        if kind is None:
            self.seal()
        else:
            self.abort()


def stage_stream(
    writer: PackWriter,
    stream: IO[bytes],
    sha256: str,
    size: int,
    label: str = "",
    copy_to: IO[bytes] | None = None,
) -> Recipe:
    """Read ``stream`` once: hash it whole (on a second core), cut it into content-defined
    chunks, hash each, and append the new ones to ``writer``'s packs (and every byte to
    ``copy_to``, when given). Raises IntegrityError unless the stream is exactly ``size``
    bytes with ``sha256``; memory stays at one block."""
    label = label or f"file {sha256[:12]}…"
    whole, seen, recipe = hashlib.sha256(), 0, []
    buffer = bytearray(BLOCK + MAX_CHUNK)
    carry = 0  # bytes of an unfinished chunk kept at the start of the buffer
    with ThreadPoolExecutor(max_workers=1) as hasher:
        eof = False
        while not eof:
            view = memoryview(buffer)
            got = _read_full(stream, view[carry : carry + BLOCK])
            eof = got < BLOCK
            seen += got
            if seen > size:
                raise IntegrityError(f"{label} is longer than the {size} bytes listed")
            # hashlib releases the GIL: the whole-file hash runs beside the chunk hashes.
            hashed: Future[None] = hasher.submit(whole.update, view[carry : carry + got])
            if copy_to is not None:
                copy_to.write(view[carry : carry + got])
            end = carry + got
            cuts = _cuts(view[:end], final=eof)
            start = 0
            chunks = []
            for length in cuts:
                piece = view[start : start + length]
                chunks.append((hashlib.sha256(piece).hexdigest(), piece))
                start += length
            stored = writer.known(sha for sha, _ in chunks)
            for chunk_sha, piece in chunks:
                if chunk_sha not in stored:
                    writer.add(chunk_sha, piece)
                    stored.add(chunk_sha)
                recipe.append((chunk_sha, len(piece)))
            hashed.result()
            carry = end - start
            buffer[:carry] = buffer[start:end]
            del view, chunks
    if seen != size or whole.hexdigest() != sha256:
        raise IntegrityError(
            f"{label} does not match its digest (expected {size} bytes sha256 "
            f"{sha256[:12]}…, got {seen} bytes {whole.hexdigest()[:12]}…)"
        )
    return recipe


def _cuts(view: memoryview, *, final: bool) -> list[int]:
    """Chunk lengths for ``view``. FastCDC restarts its rolling hash at each cut, so a chunk
    is final once MAX_CHUNK bytes follow its start (or the data ends): cutting block by
    block gives exactly the cuts of the whole file (and of files stored by earlier releases)."""
    from fastcdc import fastcdc

    if not len(view):
        return []
    lengths = []
    for chunk in fastcdc(view, MIN_CHUNK, AVG_CHUNK, MAX_CHUNK):
        if not final and chunk.offset + MAX_CHUNK > len(view):
            break
        lengths.append(chunk.length)
    return lengths


def _read_full(stream: IO[bytes], view: memoryview) -> int:
    """Fill ``view`` from ``stream``; fewer bytes only at the end of the stream."""
    got = 0
    reader = getattr(stream, "readinto", None)
    while got < len(view):
        if reader is not None:
            count = reader(view[got:]) or 0
        else:
            data = stream.read(len(view) - got)
            count = len(data)
            view[got : got + count] = data
        if count == 0:
            break
        got += count
    return got


def read_footer(blobs: BlobStore, pack: str, size: int) -> list[tuple[str, int, int]]:
    """The (sha256, offset, size) entries a pack's footer lists; IntegrityError when the pack
    is truncated or torn (its trailer missing or not matching its length)."""
    if size < len(MAGIC) + _TRAILER.size:
        raise IntegrityError(f"pack {pack} is truncated ({size} bytes)")
    with blobs.open_range(pack, 0, len(MAGIC)) as stream:
        if stream.read(len(MAGIC)) != MAGIC:
            raise IntegrityError(f"pack {pack} does not start with a pack header")
    with blobs.open_range(pack, size - _TRAILER.size, _TRAILER.size + 1) as stream:
        trailer = stream.read(_TRAILER.size + 1)
    if len(trailer) != _TRAILER.size:
        raise IntegrityError(f"pack {pack} is truncated (or longer than its index says)")
    count, footer, end = _TRAILER.unpack(trailer)
    if end != END or footer + count * _ENTRY.size + _TRAILER.size != size:
        raise IntegrityError(f"pack {pack} is torn: its trailer does not match its length")
    with blobs.open_range(pack, footer, count * _ENTRY.size) as stream:
        data = stream.read(count * _ENTRY.size)
    entries = [_ENTRY.unpack_from(data, n * _ENTRY.size) for n in range(count)]
    if any(offset + length > footer for _, offset, length in entries):
        raise IntegrityError(f"pack {pack}: its footer points past the chunk data")
    return [(sha.hex(), offset, length) for sha, offset, length in entries]
