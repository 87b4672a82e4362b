"""Content-addressed blob stores: the local filesystem (``blobs/sha256/ab/ab12…``) and S3.

Filesystem writes go to a temp file, are hashed while written, fsynced, then
renamed into place, so a blob path either does not exist or holds exactly its
content. S3 uploads are staged and hashed locally first, so only verified
bytes are ever uploaded, under a key derived from their digest (never from a
client-given name); a repeated upload of a blob is harmless.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, BinaryIO

from modelcrate.errors import IntegrityError, NotFound, UsageError

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

    def put(self, stream: IO[bytes], sha256: str, size: int) -> None:
        """Store ``stream`` as blob ``sha256``; raise IntegrityError if its bytes differ."""
        target = self.path(sha256)
        fd, tmp_name = _mkstemp(self.tmp)
        try:
            with os.fdopen(fd, "wb") as out:
                copy_verified(stream, out, sha256, size)
                out.flush()
                os.fsync(out.fileno())
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

    def iter_blobs(self) -> Iterator[tuple[str, float, int]]:
        """Every stored blob: digest, modification time, size."""
        for path in (self.root / "sha256").glob("*/*"):
            if _SHA256.fullmatch(path.name):
                info = path.stat()
                yield path.name, info.st_mtime, info.st_size

    def sweep_tmp(self, older_than: float) -> None:
        """Remove temp files left by interrupted writes."""
        cutoff = time.time() - older_than
        for path in self.tmp.iterdir():
            if path.stat().st_mtime < cutoff:
                path.unlink(missing_ok=True)


def copy_verified(stream: IO[bytes], out: IO[bytes], sha256: str, size: int) -> None:
    """Copy ``stream`` to ``out``; raise IntegrityError unless it is exactly ``size`` bytes
    hashing to ``sha256`` (and stop reading as soon as it runs long)."""
    digest, written = hashlib.sha256(), 0
    while chunk := stream.read(CHUNK):
        written += len(chunk)
        if written > size:
            raise IntegrityError(f"blob {sha256[:12]}… is longer than {size} bytes")
        digest.update(chunk)
        out.write(chunk)
    if written != size or digest.hexdigest() != sha256:
        raise IntegrityError(
            f"blob {sha256[:12]}… does not match its digest "
            f"(got {written} bytes, sha256 {digest.hexdigest()[:12]}…)"
        )


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
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return True

    def touch(self, sha256: str) -> None:
        key = self.key(sha256)
        self.client.copy_object(
            Bucket=self.bucket, Key=key, CopySource={"Bucket": self.bucket, "Key": key},
            MetadataDirective="REPLACE", Metadata={"touched": str(time.time())},
        )  # fmt: skip

    def put(self, stream: IO[bytes], sha256: str, size: int) -> None:
        import tempfile

        with tempfile.TemporaryFile() as staged:
            copy_verified(stream, staged, sha256, size)
            staged.seek(0)
            self.client.upload_fileobj(staged, self.bucket, self.key(sha256))

    def open(self, sha256: str) -> BinaryIO:
        import io

        from botocore.exceptions import ClientError

        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self.key(sha256))["Body"]
        except ClientError:
            raise NotFound(f"blob sha256:{sha256[:12]}… is missing from the store") from None
        return io.BytesIO(body.read())

    def check(self, sha256: str, size: int) -> str | None:
        try:
            with self.open(sha256) as stream:
                data = stream.read()
        except NotFound:
            return "missing"
        if len(data) != size:
            return f"size {len(data)}, expected {size}"
        if hashlib.sha256(data).hexdigest() != sha256:
            return "content does not match its sha256"
        return None

    def delete(self, sha256: str) -> int:
        key = self.key(sha256)
        try:
            size = int(self.client.head_object(Bucket=self.bucket, Key=key)["ContentLength"])
        except Exception:
            return 0
        self.client.delete_object(Bucket=self.bucket, Key=key)
        return size

    def iter_blobs(self) -> Iterator[tuple[str, float, int]]:
        base = f"{self.prefix}/sha256/" if self.prefix else "sha256/"
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=base
        )
        for page in pages:
            for item in page.get("Contents", []):
                name = item["Key"].rsplit("/", 1)[-1]
                if _SHA256.fullmatch(name):
                    yield name, item["LastModified"].timestamp(), int(item["Size"])

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


def _mkstemp(directory: Path) -> tuple[int, str]:
    import tempfile

    return tempfile.mkstemp(prefix="blob-", dir=directory)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
