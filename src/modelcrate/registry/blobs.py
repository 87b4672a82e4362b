"""Content-addressed blob store on the local filesystem: ``blobs/sha256/ab/ab12…``.

Writes go to a temp file, are hashed while written, fsynced, then renamed into
place, so a blob path either does not exist or holds exactly its content.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from modelcrate.errors import IntegrityError, NotFound

CHUNK = 1024 * 1024
_SHA256 = re.compile(r"[0-9a-f]{64}")


class FileBlobStore:
    """Blobs under ``root/sha256``; temp files under ``root/tmp``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.tmp = root / "tmp"
        (root / "sha256").mkdir(parents=True, exist_ok=True)
        self.tmp.mkdir(exist_ok=True)

    def path(self, sha256: str) -> Path:
        if not _SHA256.fullmatch(sha256):
            raise NotFound(f"not a blob digest: {sha256!r}")
        return self.root / "sha256" / sha256[:2] / sha256

    def exists(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def touch(self, sha256: str) -> None:
        """Mark a reused blob as recently used, so a concurrent gc leaves it alone."""
        os.utime(self.path(sha256))

    def put(self, stream: BinaryIO, sha256: str, size: int) -> None:
        """Store ``stream`` as blob ``sha256``; raise IntegrityError if its bytes differ."""
        target = self.path(sha256)
        fd, tmp_name = _mkstemp(self.tmp)
        digest, written = hashlib.sha256(), 0
        try:
            with os.fdopen(fd, "wb") as out:
                while chunk := stream.read(CHUNK):
                    written += len(chunk)
                    if written > size:
                        raise IntegrityError(f"blob {sha256[:12]}… is longer than {size} bytes")
                    digest.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            if written != size or digest.hexdigest() != sha256:
                raise IntegrityError(
                    f"blob {sha256[:12]}… does not match its digest "
                    f"(got {written} bytes, sha256 {digest.hexdigest()[:12]}…)"
                )
            target.parent.mkdir(exist_ok=True)
            os.replace(tmp_name, target)
            _fsync_dir(target.parent)
        finally:
            Path(tmp_name).unlink(missing_ok=True)

    def open(self, sha256: str) -> BinaryIO:
        try:
            return self.path(sha256).open("rb")
        except FileNotFoundError:
            raise NotFound(f"blob sha256:{sha256[:12]}… is missing from the store") from None

    def check(self, sha256: str, size: int) -> str | None:
        """Re-hash one blob; None when intact, else what is wrong with it."""
        try:
            with self.open(sha256) as stream:
                digest, seen = hashlib.sha256(), 0
                while chunk := stream.read(CHUNK):
                    digest.update(chunk)
                    seen += len(chunk)
        except NotFound:
            return "missing"
        if seen != size:
            return f"size {seen}, expected {size}"
        if digest.hexdigest() != sha256:
            return "content does not match its sha256"
        return None

    def delete(self, sha256: str) -> int:
        path = self.path(sha256)
        try:
            size = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            return 0
        return size

    def iter_blobs(self) -> Iterator[tuple[str, float]]:
        """Every stored blob digest with its modification time."""
        for path in (self.root / "sha256").glob("*/*"):
            if _SHA256.fullmatch(path.name):
                yield path.name, path.stat().st_mtime

    def sweep_tmp(self, older_than: float) -> None:
        """Remove temp files left by interrupted writes."""
        cutoff = time.time() - older_than
        for path in self.tmp.iterdir():
            if path.stat().st_mtime < cutoff:
                path.unlink(missing_ok=True)


def _mkstemp(directory: Path) -> tuple[int, str]:
    import tempfile

    return tempfile.mkstemp(prefix="blob-", dir=directory)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
