"""Crate: a manifest plus its files, in directory form or single-file ``.crate`` form.

A ``.crate`` is an uncompressed POSIX tar with ``crate.json`` first, the other
files in sorted order, and fixed mtime/uid/gid/mode, so the same inputs always
give the same bytes. Reading never extracts: members are checked (regular files
only, safe names, no duplicates, sizes within limits, every file listed in the
manifest) and then read by offset, and every read is checked against the
size and sha256 the manifest records.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import tarfile
import tempfile
import threading
import weakref
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO, Protocol

from modelcrate.errors import (
    CrateFormatError,
    DecryptionError,
    IntegrityError,
    UnsafeContentError,
    first_line,
)
from modelcrate.manifest import (
    FILE_PATH_PATTERN,
    MANIFEST_NAME,
    MAX_MANIFEST_BYTES,
    FileEntry,
    Manifest,
    parse_manifest,
)


class Decryptor(Protocol):
    """Turns a file's sealed bytes into plaintext (``trust.crypto.unlock`` makes one)."""

    def decrypt(self, path: str, sealed: bytes) -> bytes: ...


CHUNK = 1024 * 1024
MAX_MEMBERS = 10_000
MAX_FILE_BYTES = 64 * 1024**3
_FILE_PATH = re.compile(FILE_PATH_PATTERN)
# A pickle stream starts with PROTO (0x80) and a protocol number; torch.save
# archives are zips holding a data.pkl. Neither is ever loaded from a crate.
_PICKLE_PROTOCOLS = frozenset(range(2, 6))


class FileSource(Protocol):
    """Where a crate's file bytes live: a directory, a .crate archive, a blob store."""

    def open(self, path: str) -> BinaryIO: ...


def check_path(path: str) -> str:
    """Return ``path`` if it is a safe relative path inside a crate, else raise."""
    if not isinstance(path, str) or not _FILE_PATH.fullmatch(path):
        raise UnsafeContentError(
            f"file name {path!r} is not allowed in a crate: expected a relative path of "
            "letters, digits, '.', '_', '-' segments (no '..', no absolute path, no backslash)"
        )
    return path


def hash_stream(stream: BinaryIO, head: bytes = b"") -> tuple[str, int]:
    """sha256 hex and size of ``head`` followed by the rest of ``stream``."""
    digest, size = hashlib.sha256(head), len(head)
    while chunk := stream.read(CHUNK):
        digest.update(chunk)
        size += len(chunk)
    return digest.hexdigest(), size


def sniff_pickle(head: bytes) -> bool:
    """True when ``head`` (a file's first 64 bytes) is a pickle stream or a torch.save archive.

    Format is told by magic bytes, never by extension. A safetensors file can
    start with 0x80 0x02 too (a header length of 640 bytes), so a header that
    reads as a small little-endian length followed by ``{`` is not a pickle.
    """
    if head.startswith(b"PK") and b"data.pkl" in head:
        return True
    if len(head) >= 2 and head[0] == 0x80 and head[1] in _PICKLE_PROTOCOLS:
        looks_like_safetensors = len(head) >= 9 and head[5:8] == b"\0\0\0" and head[8:9] == b"{"
        return not looks_like_safetensors
    return False


class DirectorySource:
    def __init__(self, root: Path) -> None:
        self.root = root

    def open(self, path: str) -> BinaryIO:
        full = self.root / check_path(path)
        if full.is_symlink() or not full.is_file():
            raise UnsafeContentError(f"{path!r} is not a regular file in {self.root.name}")
        return full.open("rb")

    def size(self, path: str) -> int:
        return (self.root / check_path(path)).lstat().st_size


class ArchiveSource:
    """Reads members of an uncompressed tar by offset, after they were all checked."""

    def __init__(self, archive: Path, offsets: dict[str, tuple[int, int]]) -> None:
        self.archive = archive
        self.offsets = offsets

    def open(self, path: str) -> BinaryIO:
        """The member's bytes, streamed from the archive (never read whole into memory)."""
        if path not in self.offsets:
            raise CrateFormatError(f"{self.archive.name} has no member {path!r}")
        start, size = self.offsets[path]
        handle = self.archive.open("rb")
        handle.seek(start)
        return io.BufferedReader(_Slice(handle, size), CHUNK)

    def size(self, path: str) -> int:
        if path not in self.offsets:
            raise CrateFormatError(f"{self.archive.name} has no member {path!r}")
        return self.offsets[path][1]


class _Slice(io.RawIOBase):
    """``size`` bytes of an open file from its current position."""

    def __init__(self, handle: BinaryIO, size: int) -> None:
        self.handle, self.left = handle, size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        view = memoryview(buffer)[: self.left]
        count = self.handle.readinto(view) if len(view) else 0  # type: ignore[attr-defined]
        self.left -= count or 0
        return count or 0

    def close(self) -> None:
        self.handle.close()
        super().close()


class LocalCopy:
    """A crate's files as paths in one local directory. Files not verified when it was made
    are hashed on a background thread (hashlib releases the GIL), so a runtime can build
    its session meanwhile; ``wait`` raises IntegrityError if any of them is not intact.
    As a context manager it waits on the way out, whether the block worked or failed (a
    damaged file explains a failure better than the runtime's own error)."""

    def __init__(self, crate: Crate, directory: Path, unverified: list[str]) -> None:
        self.crate, self.directory = crate, directory
        self.problem: BaseException | None = None
        self.thread = threading.Thread(target=self._check, args=(unverified,), daemon=True)
        self.thread.start()

    def path(self, name: str) -> Path:
        return self.directory / check_path(name)

    def _check(self, paths: list[str]) -> None:
        try:
            for path in paths:
                with self.path(path).open("rb") as stream:
                    self.crate.check_stream(self.crate.manifest.file(path), stream)
        except (OSError, IntegrityError, UnsafeContentError) as exc:
            self.problem = exc

    def __enter__(self) -> LocalCopy:
        return self

    def __exit__(self, *_: object) -> None:
        self.wait()

    def wait(self) -> None:
        """Block until every file is checked; raise what was wrong (the copy is discarded)."""
        self.thread.join()
        if self.problem is None:
            return
        discard = getattr(self.crate.source, "discard_local", None)
        if discard is not None:
            discard()
        if isinstance(self.problem, OSError):
            raise IntegrityError(
                f"{self.crate.manifest.ref}: a file is missing from its local copy "
                f"({first_line(self.problem)})"
            ) from None
        raise self.problem


class Crate:
    """One packaged model version: a validated manifest plus a source for its files.

    An encrypted crate reads its files' plaintext only after ``unlock``."""

    def __init__(
        self, manifest: Manifest, source: FileSource, decryptor: Decryptor | None = None
    ) -> None:
        self.manifest = manifest
        self.source = source
        self.decryptor = decryptor

    def __repr__(self) -> str:
        return f"Crate({self.manifest.ref}, {self.digest[:19]}…)"

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def digest(self) -> str:
        return self.manifest.digest

    # -- reading -------------------------------------------------------------

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> Crate:
        """Open a ``.crate`` file or a crate directory (nothing is extracted)."""
        path = Path(path)
        if path.is_dir():
            return cls._open_directory(path)
        if not path.is_file():
            raise CrateFormatError(f"{path}: no such crate file or directory")
        return cls._open_archive(path)

    @classmethod
    def _open_directory(cls, root: Path) -> Crate:
        manifest_path = root / MANIFEST_NAME
        if not manifest_path.is_file() or manifest_path.is_symlink():
            raise CrateFormatError(f"{root}: not a crate directory (no {MANIFEST_NAME})")
        manifest = parse_manifest(_read_capped(manifest_path))
        return cls(manifest, DirectorySource(root))

    @classmethod
    def _open_archive(cls, archive: Path) -> Crate:
        offsets, manifest_bytes = _scan_archive(archive)
        manifest = parse_manifest(manifest_bytes)
        listed = {entry.path for entry in manifest.files}
        unlisted = sorted(set(offsets) - listed)
        if unlisted:
            raise UnsafeContentError(f"{archive.name}: files not listed in crate.json: {unlisted}")
        for entry in manifest.files:
            if entry.path not in offsets:
                raise IntegrityError(f"{archive.name}: {entry.path} is listed but missing")
            if offsets[entry.path][1] != entry.size:
                raise IntegrityError(
                    f"{archive.name}: {entry.path} is {offsets[entry.path][1]} bytes, "
                    f"crate.json says {entry.size}"
                )
        return cls(manifest, ArchiveSource(archive, offsets))

    @property
    def encrypted(self) -> bool:
        return self.manifest.encryption is not None

    def with_decryptor(self, decryptor: Decryptor) -> Crate:
        """This crate reading its sealed files through ``decryptor`` (see ``trust.crypto``)."""
        return Crate(self.manifest, self.source, decryptor)

    def read_bytes(self, path: str) -> bytes:
        """One file's bytes after checking size and sha256, decrypted when the crate is
        encrypted (which needs ``trust.crypto.unlock``); never a pickle."""
        entry = self.manifest.file(path)
        with self.source.open(path) as stream:
            data = stream.read(entry.size + 1)
        sealed = self.manifest.encrypted(path) is not None
        check_bytes(entry, data, sniff=not sealed)
        if not sealed:
            return data
        if self.decryptor is None:
            raise DecryptionError(
                f"{self.manifest.ref} is encrypted; pass --identity KEY (a private key it was "
                "encrypted for) or set MODELCRATE_PASSPHRASE"
            )
        plain = self.decryptor.decrypt(path, data)
        if sniff_pickle(plain[:64]):
            raise pickled(path)
        return plain

    def open_verified(self, path: str) -> BinaryIO:
        """A stream of one file that refuses pickles and raises IntegrityError at its end if
        the bytes read differ from the manifest's size or sha256."""
        entry = self.manifest.file(path)
        sniff = self.manifest.encrypted(path) is None
        return _Verifying(entry, self.source.open(path), sniff)  # type: ignore[return-value]

    def open_unhashed(self, path: str) -> BinaryIO:
        """A stream of one file that refuses a pickle but leaves size and sha256 to the
        caller, who hashes it anyway (publish): the bytes are hashed once, not twice."""
        if self.manifest.encrypted(path) is None:
            with self.source.open(path) as probe:
                if sniff_pickle(probe.read(64)):
                    raise pickled(path)
        return self.source.open(path)

    def localize(self, paths: Sequence[str] | None = None) -> LocalCopy | None:
        """The crate's files as local paths, for runtimes that open models by path (ONNX
        Runtime with external data, torch.export, safetensors mmap). Files in a registry's
        cache or a crate directory are re-hashed in the background (``LocalCopy.wait``):
        ``paths``, the files the caller reads (None: every file). A runtime hashes only its
        artifact's files, not the crate's other forms of the weights (two more copies of
        the model's size in a packed torch model). From other sources (a remote registry)
        those files alone are copied to a temporary directory, verified as they are
        written. None for an encrypted crate: its plaintext never touches the disk."""
        if self.encrypted:
            return None
        if paths is None:
            read = [f.path for f in self.manifest.files]
        else:
            read = list(paths)
            for path in read:
                self.manifest.file(path)  # a path the manifest does not list is refused here
        cached = getattr(self.source, "local_directory", None)
        found = cached(read) if cached is not None else None
        if found is not None:
            return LocalCopy(self, found, read)
        if isinstance(self.source, DirectorySource):
            return LocalCopy(self, self.source.root, read)
        scratch = temporary_directory(self, "modelcrate-local-")
        return LocalCopy(self, self.unpack(scratch / "crate", read), [])

    def iter_files(self) -> Iterator[tuple[FileEntry, BinaryIO]]:
        """Yield each listed file with an open stream (the caller verifies while streaming)."""
        for entry in self.manifest.files:
            with self.source.open(entry.path) as stream:
                yield entry, stream

    def verify(self) -> None:
        """Re-hash every file; raise IntegrityError naming the first that does not match."""
        for entry, stream in self.iter_files():
            self.check_stream(entry, stream)

    def screen(self) -> None:
        """What a load checks of every file before it runs anything, without hashing: each
        is there, with its listed size (local crates), and none is a pickle (its first
        64 bytes). The files a runtime reads are then hashed as it reads them, and any
        other file when something reads it (``read_bytes``, ``localize``). ``verify``
        hashes every file at once."""
        sizes = getattr(self.source, "size", None)
        for entry in self.manifest.files:
            with self.source.open(entry.path) as stream:
                self._check_head(entry, stream.read(64))
            found = sizes(entry.path) if sizes is not None else entry.size
            if found != entry.size:
                raise corrupted(entry, found, ref=self.manifest.ref)

    def _check_head(self, entry: FileEntry, head: bytes) -> None:
        if self.manifest.encrypted(entry.path) is None and sniff_pickle(head):
            raise pickled(entry.path)

    def check_stream(self, entry: FileEntry, stream: BinaryIO) -> None:
        """Read ``stream`` to its end; raise unless it is exactly the file ``entry`` lists
        (and, unless encrypted, not a pickle)."""
        head = stream.read(64)
        self._check_head(entry, head)
        sha, size = hash_stream(stream, head)
        if size != entry.size or sha != entry.sha256:
            raise corrupted(entry, size, sha, ref=self.manifest.ref)

    # -- writing -------------------------------------------------------------

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the single-file ``.crate`` form (byte-reproducible); returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as raw:
                self._write_tar(raw)
                raw.flush()
                os.fsync(raw.fileno())
            os.replace(tmp_name, path)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise
        return path

    def _write_tar(self, raw: BinaryIO) -> None:
        with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
            manifest_bytes = self.manifest.file_bytes()
            tar.addfile(tar_info(MANIFEST_NAME, len(manifest_bytes)), io.BytesIO(manifest_bytes))
            for entry in sorted(self.manifest.files, key=lambda e: e.path):
                with self.open_verified(entry.path) as stream:
                    tar.addfile(tar_info(entry.path, entry.size), stream)

    def unpack(self, directory: str | os.PathLike[str], paths: Sequence[str] | None = None) -> Path:
        """Write the directory form, verifying every file; refuses a non-empty target.
        ``paths``: only these files (a partial copy, which is not a crate directory: what a
        runtime reads, fetched from a remote registry without the crate's other files)."""
        target = Path(directory)
        wanted = None if paths is None else set(paths)
        for path in sorted(wanted or ()):
            self.manifest.file(path)  # a path the manifest does not list is refused here
        if target.exists() and any(target.iterdir()):
            raise CrateFormatError(f"{target} is not empty; refusing to write into it")
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".unpack-", dir=target.parent))
        try:
            for entry in self.manifest.files:
                if wanted is not None and entry.path not in wanted:
                    continue
                dest = staging / check_path(entry.path)
                dest.parent.mkdir(parents=True, exist_ok=True)
                with self.open_verified(entry.path) as stream, dest.open("wb") as out:
                    shutil.copyfileobj(stream, out, CHUNK)
            (staging / MANIFEST_NAME).write_bytes(self.manifest.file_bytes())
            if target.exists():
                target.rmdir()
            os.replace(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return target


class _Verifying(io.RawIOBase):
    """A read-only stream that raises IntegrityError at EOF if size or sha256 differ."""

    def __init__(self, entry: FileEntry, stream: BinaryIO, sniff: bool = True) -> None:
        self.entry, self.stream, self.sniff = entry, stream, sniff
        self.hash, self.size, self.checked = hashlib.sha256(), 0, False

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self.stream.close()
        super().close()

    def read(self, size: int = -1) -> bytes:
        data = self.stream.read(size)
        if self.size == 0 and self.sniff and sniff_pickle(data[:64]):
            raise pickled(self.entry.path)
        self.hash.update(data)
        self.size += len(data)
        if self.size > self.entry.size:
            raise IntegrityError(
                f"{self.entry.path} is longer than the {self.entry.size} bytes listed"
            )
        if (not data or self.size == self.entry.size) and not self.checked:
            self.checked = True
            sha = self.hash.hexdigest()
            if self.size != self.entry.size or sha != self.entry.sha256:
                raise corrupted(self.entry, self.size, sha)
        return data

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def check_bytes(entry: FileEntry, data: bytes, *, sniff: bool = True) -> None:
    """Raise unless ``data`` is exactly the file ``entry`` describes (and, with ``sniff``,
    is not a pickle; ciphertext is sniffed after decryption instead)."""
    if sniff and sniff_pickle(data[:64]):
        raise pickled(entry.path)
    sha = hashlib.sha256(data).hexdigest()
    if len(data) != entry.size or sha != entry.sha256:
        raise corrupted(entry, len(data), sha)


def corrupted(entry: FileEntry, size: int, sha256: str = "", *, ref: str = "") -> IntegrityError:
    """The error for a file whose bytes are not the ones ``entry`` lists: ``size`` bytes
    (hashing to ``sha256``, when it was hashed) were found."""
    found = f"{size} bytes" + (f" sha256 {sha256[:12]}…" if sha256 else "")
    return IntegrityError(
        f"{ref + ': ' if ref else ''}{entry.path} is corrupted "
        f"(expected {entry.size} bytes sha256 {entry.sha256[:12]}…, found {found})"
    )


def pickled(path: str) -> UnsafeContentError:
    return UnsafeContentError(f"{path} is a pickle; crates never hold pickles")


def file_entry(path: Path, name: str) -> FileEntry:
    """Hash a file on disk into the FileEntry the manifest will list under ``name``."""
    with path.open("rb") as stream:
        sha, size = hash_stream(stream)
    return FileEntry(path=check_path(name), size=size, sha256=sha)


def temporary_directory(owner: object, prefix: str) -> Path:
    """A temp directory removed when ``owner`` is garbage-collected or at exit."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    weakref.finalize(owner, shutil.rmtree, path, True)
    return path


def tar_info(name: str, size: int) -> tarfile.TarInfo:
    """A tar member header with fixed mtime/uid/mode: the same bytes every time."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, 0, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _read_capped(path: Path) -> bytes:
    with path.open("rb") as handle:
        data = handle.read(MAX_MANIFEST_BYTES + 1)
    if len(data) > MAX_MANIFEST_BYTES:
        raise CrateFormatError(f"{path.name} is larger than {MAX_MANIFEST_BYTES} bytes")
    return data


def _scan_archive(archive: Path) -> tuple[dict[str, tuple[int, int]], bytes]:
    """Check every member of a .crate and return file offsets and the manifest bytes."""
    offsets: dict[str, tuple[int, int]] = {}
    manifest: bytes | None = None
    file_size = archive.stat().st_size
    try:
        with tarfile.open(archive, mode="r:") as tar:
            for count, member in enumerate(tar, start=1):
                if count > MAX_MEMBERS:
                    raise UnsafeContentError(f"{archive.name} has more than {MAX_MEMBERS} members")
                name = member.name
                if not member.isreg():
                    raise UnsafeContentError(
                        f"{archive.name}: member {name!r} is a link, directory or device; "
                        "crates hold regular files only"
                    )
                if name != MANIFEST_NAME:
                    check_path(name)
                if name in offsets or (name == MANIFEST_NAME and manifest is not None):
                    raise UnsafeContentError(f"{archive.name}: member {name!r} appears twice")
                if member.mode & 0o7000:
                    raise UnsafeContentError(
                        f"{archive.name}: member {name!r} has setuid/setgid bits"
                    )
                if member.size > MAX_FILE_BYTES or member.offset_data + member.size > file_size:
                    raise IntegrityError(
                        f"{archive.name}: member {name!r} is truncated or oversized"
                    )
                if name == MANIFEST_NAME:
                    if member.size > MAX_MANIFEST_BYTES:
                        raise CrateFormatError(f"{archive.name}: crate.json is too large")
                    extracted = tar.extractfile(member)
                    assert extracted is not None  # isreg() was checked above
                    manifest = extracted.read()
                else:
                    offsets[name] = (member.offset_data, member.size)
    except tarfile.TarError as exc:
        raise CrateFormatError(f"{archive.name} is not a readable .crate archive: {exc}") from None
    if manifest is None:
        raise CrateFormatError(f"{archive.name} has no crate.json")
    return offsets, manifest
