"""Blob stores: the local filesystem and S3. They hold pack files (``packs/ab/<id>.pack``,
see packs.py) and, from earlier releases, loose content-addressed blobs
(``sha256/ab/ab12…``), which stay readable.

A pack arrives complete: it is written and fsynced under a temp name by the
pack writer, then renamed into place (filesystem) or uploaded (S3), so a pack
path either does not exist or holds the whole pack. Keys are derived from
digests or random pack ids, never from a client-given name.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, BinaryIO

from modelcrate.errors import IntegrityError, NotFound, RegistryError, UsageError, first_line

CHUNK = 1024 * 1024
_SHA256 = re.compile(r"[0-9a-f]{64}")
_PACK_ID = re.compile(r"[0-9a-f]{32}")


def check_pack_id(pack: str) -> str:
    if not _PACK_ID.fullmatch(pack):
        raise NotFound(f"not a pack id: {pack!r}")
    return pack


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

    def open(self, sha256: str) -> BinaryIO:
        try:
            return self.path(sha256).open("rb")
        except FileNotFoundError:
            raise NotFound(f"blob sha256:{sha256[:12]}… is missing from the store") from None

    def delete(self, sha256: str) -> int:
        path = self.path(sha256)
        try:
            size = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            return 0
        return size

    def iter_blobs(self) -> Iterator[tuple[str, float, int]]:
        """Every stored blob: digest, modification time, size."""
        for path in (self.root / "sha256").glob("*/*"):
            if _SHA256.fullmatch(path.name):
                info = path.stat()
                yield path.name, info.st_mtime, info.st_size

    # -- packs ---------------------------------------------------------------

    def pack_path(self, pack: str) -> Path:
        return self.root / "packs" / pack[:2] / f"{check_pack_id(pack)}.pack"

    def put_pack(self, staged: Path, pack: str) -> None:
        """Move a complete, fsynced pack from ``tmp`` into place (atomic rename)."""
        target = self.pack_path(pack)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged, target)
        _fsync_dir(target.parent)

    def _open_pack(self, pack: str) -> BinaryIO:
        try:
            return self.pack_path(pack).open("rb")
        except FileNotFoundError:
            raise NotFound(f"pack {pack} is missing from the store") from None

    def open_range(self, pack: str, offset: int, length: int) -> BinaryIO:
        """A stream of ``length`` bytes of ``pack`` from ``offset``."""
        handle = self._open_pack(pack)
        handle.seek(offset)
        return _Window(handle, length)  # type: ignore[return-value]

    def copy_range(self, pack: str, offset: int, length: int, out: IO[bytes]) -> None:
        """Append ``length`` bytes of ``pack`` from ``offset`` to ``out`` inside the kernel
        (``copy_file_range``: no copy through Python, a reflink where the filesystem can)."""
        with self._open_pack(pack) as source:
            out.flush()
            position, left = offset, length
            while left:
                try:
                    count = os.copy_file_range(source.fileno(), out.fileno(), left, position)
                except OSError:  # not supported between these files: copy through memory
                    source.seek(position)
                    shutil.copyfileobj(_Window(source, left), out, CHUNK)
                    return
                if count == 0:
                    raise IntegrityError(f"pack {pack} ends {left} bytes early")
                position += count
                left -= count
            out.seek(0, os.SEEK_END)

    def delete_pack(self, pack: str) -> None:
        self.pack_path(pack).unlink(missing_ok=True)

    def iter_packs(self) -> Iterator[tuple[str, float, int]]:
        """Every pack: id, modification time, size."""
        for path in (self.root / "packs").glob("*/*.pack"):
            if _PACK_ID.fullmatch(path.stem):
                info = path.stat()
                yield path.stem, info.st_mtime, info.st_size

    def sweep_tmp(self, older_than: float) -> None:
        """Remove temp files (half-written packs among them) left by interrupted writes."""
        cutoff = time.time() - older_than
        for path in self.tmp.iterdir():
            if path.stat().st_mtime < cutoff:
                path.unlink(missing_ok=True)


def check_digest(sha256: str) -> str:
    if not _SHA256.fullmatch(sha256):
        raise NotFound(f"not a blob digest: {sha256!r}")
    return sha256


class S3BlobStore:
    """Blobs under ``s3://bucket/prefix/sha256/ab/ab12…`` (any S3-compatible endpoint; the
    endpoint and credentials come from the usual AWS settings, e.g. AWS_ENDPOINT_URL)."""

    def __init__(self, bucket: str, prefix: str = "") -> None:
        import boto3

        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.client = boto3.client("s3")
        self.location = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"

    def key(self, sha256: str) -> str:
        check_digest(sha256)
        base = f"{self.prefix}/sha256" if self.prefix else "sha256"
        return f"{base}/{sha256[:2]}/{sha256}"

    def exists(self, sha256: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self.key(sha256))
        except ClientError as exc:
            if _missing(exc):
                return False
            raise RegistryError(f"S3 lookup failed: {first_line(exc)}") from None
        return True

    def open(self, sha256: str) -> BinaryIO:
        import io

        from botocore.exceptions import ClientError

        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self.key(sha256))["Body"]
        except ClientError as exc:
            if _missing(exc):
                raise NotFound(f"blob sha256:{sha256[:12]}… is missing from the store") from None
            raise RegistryError(f"S3 read failed: {first_line(exc)}") from None
        return io.BytesIO(body.read())

    def delete(self, sha256: str) -> int:
        key = self.key(sha256)
        from botocore.exceptions import ClientError

        try:
            size = int(self.client.head_object(Bucket=self.bucket, Key=key)["ContentLength"])
        except ClientError as exc:
            if _missing(exc):
                return 0
            raise RegistryError(f"S3 delete failed: {first_line(exc)}") from None
        self.client.delete_object(Bucket=self.bucket, Key=key)
        return size

    def iter_blobs(self) -> Iterator[tuple[str, float, int]]:
        for name, mtime, size in self._list("sha256/"):
            if _SHA256.fullmatch(name):
                yield name, mtime, size

    def _list(self, under: str) -> Iterator[tuple[str, float, int]]:
        base = f"{self.prefix}/{under}" if self.prefix else under
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=base
        )
        for page in pages:
            for item in page.get("Contents", []):
                name = item["Key"].rsplit("/", 1)[-1]
                yield name, item["LastModified"].timestamp(), int(item["Size"])

    # -- packs: one object each, read by ranged GETs ---------------------------

    def pack_key(self, pack: str) -> str:
        base = f"{self.prefix}/packs" if self.prefix else "packs"
        return f"{base}/{pack[:2]}/{check_pack_id(pack)}.pack"

    def put_pack(self, staged: Path, pack: str) -> None:
        """Upload a complete pack (multipart for large ones), then drop the local copy."""
        try:
            self.client.upload_file(str(staged), self.bucket, self.pack_key(pack))
        finally:
            staged.unlink(missing_ok=True)

    def open_range(self, pack: str, offset: int, length: int) -> BinaryIO:
        from botocore.exceptions import ClientError

        if length == 0:
            import io

            return io.BytesIO(b"")
        try:
            body = self.client.get_object(
                Bucket=self.bucket,
                Key=self.pack_key(pack),
                Range=f"bytes={offset}-{offset + length - 1}",
            )["Body"]
        except ClientError as exc:
            if _missing(exc):
                raise NotFound(f"pack {pack} is missing from the store") from None
            raise RegistryError(f"S3 read of pack {pack} failed: {first_line(exc)}") from None
        return _Window(body, length)  # type: ignore[return-value]

    def delete_pack(self, pack: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self.pack_key(pack))

    def iter_packs(self) -> Iterator[tuple[str, float, int]]:
        for name, mtime, size in self._list("packs/"):
            stem = name.removesuffix(".pack")
            if name.endswith(".pack") and _PACK_ID.fullmatch(stem):
                yield stem, mtime, size

    def sweep_tmp(self, older_than: float) -> None:
        """Nothing to sweep: uploads are staged in local temp files that vanish on close."""


BlobStore = FileBlobStore | S3BlobStore


def open_blob_store(location: str) -> BlobStore:
    """``s3://bucket/prefix`` or a directory path."""
    if location.startswith("s3://"):
        bucket, _, prefix = location.removeprefix("s3://").partition("/")
        if not bucket:
            raise UsageError(f"blob store {location!r}: expected s3://bucket/prefix")
        return S3BlobStore(bucket, prefix)
    if "://" in location:
        raise UsageError(f"blob store {location!r}: expected s3://bucket/prefix or a directory")
    return FileBlobStore(Path(location).expanduser())


class _Window(io.RawIOBase):
    """At most ``length`` bytes of an open stream (a pack file, an S3 body), then EOF."""

    def __init__(self, stream: IO[bytes], length: int) -> None:
        self.stream, self.left = stream, length

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        view = memoryview(buffer)[: self.left]
        if not view:
            return 0
        reader = getattr(self.stream, "readinto", None)
        if reader is not None:
            count = reader(view) or 0
        else:  # botocore's StreamingBody has read() only
            data = self.stream.read(len(view))
            count = len(data)
            view[:count] = data
        self.left -= count
        return count

    def close(self) -> None:
        self.stream.close()
        super().close()


def checked_blocks(
    blocks: Iterator[bytes], errors: tuple[type[BaseException], ...]
) -> Iterator[bytes]:
    """The ``blocks`` of a streamed HTTP response, with the client library's ``errors``
    while reading them raised as RegistryError."""
    try:
        yield from blocks
    except errors as exc:
        raise RegistryError(f"download interrupted: {first_line(exc)}") from None


class ResponseStream(io.RawIOBase):
    """A streamed HTTP response body, given as its ``blocks`` (see ``checked_blocks``), as
    a readable stream; closing it calls ``close`` (the response's)."""

    def __init__(self, blocks: Iterator[bytes], close: Callable[[], None]) -> None:
        self.blocks, self.close_response = blocks, close
        self.pending = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        if not self.pending:
            self.pending = next(self.blocks, b"")
        count = min(len(buffer), len(self.pending))
        buffer[:count] = self.pending[:count]
        self.pending = self.pending[count:]
        return count

    def close(self) -> None:
        self.close_response()
        super().close()


def _missing(exc: Exception) -> bool:
    code = getattr(exc, "response", {}).get("Error", {}).get("Code")
    return code in ("404", "NoSuchKey", "NotFound")


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
