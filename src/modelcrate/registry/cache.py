"""The file cache: verified files materialized once, so runtimes open them by path.

Layout (next to the registry, ``<registry>/cache``)::

    files/ab/<sha256>           one read-only copy of each file, content-addressed
    crates/<digest hex>/<path>  a crate's files as hard links into files/ (ONNX Runtime
                                finds external data beside the model by name)

Files are copied from the registry's packs (inside the kernel where it can)
and every file is hashed at every load that uses it, beside session creation
(see ``Crate.localize``): a damaged copy fails that load and is dropped. The
cache is bounded (``MODELCRATE_CACHE_SIZE``, default 32 GiB): least recently
used crates are evicted first, and files no cached crate links are removed.
Trust model: the cache is as trusted as the registry directory it sits in;
nothing is served from it without a hash check in the same load.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from modelcrate.errors import IntegrityError, UsageError

if TYPE_CHECKING:
    from modelcrate.manifest import FileEntry, Manifest

CACHE_SIZE_ENV = "MODELCRATE_CACHE_SIZE"
DEFAULT_CACHE_BYTES = 32 * 1024**3
IN_USE_SECONDS = 300.0  # a crate used this recently is never evicted (a load may be opening it)
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def cache_limit(text: str | None = None) -> int:
    """Bytes the cache may hold: ``MODELCRATE_CACHE_SIZE`` (``20G``, ``500M``, bytes)."""
    text = (text if text is not None else os.environ.get(CACHE_SIZE_ENV, "")).strip().lower()
    if not text:
        return DEFAULT_CACHE_BYTES
    number, unit = text.removesuffix("b").removesuffix("i"), ""
    if number and number[-1] in _UNITS:
        number, unit = number[:-1], number[-1]
    try:
        return int(float(number) * _UNITS[unit])
    except ValueError:
        raise UsageError(
            f"{CACHE_SIZE_ENV}={text!r}: expected a size such as 20G or 500M"
        ) from None


class FileCache:
    """Verified, read-only local copies of stored files, bounded in size."""

    def __init__(self, root: Path, limit: int | None = None) -> None:
        self.root, self.limit = root, cache_limit() if limit is None else limit
        self.files, self.crates, self.tmp = root / "files", root / "crates", root / "tmp"

    def directory(
        self,
        manifest: Manifest,
        write: Callable[[str, BinaryIO, str], None],
        paths: Sequence[str] | None = None,
    ) -> Path:
        """The crate's files as one local directory, materialized now where missing with
        ``write(sha256, out, path)``: ``paths`` (None: every file), so a runtime that reads
        one form of the weights does not copy the crate's others out of the store (a
        torch-packed crate holds three). Nothing here is hashed: every file the cache
        serves is hashed by the load that uses it (``Crate.localize``), beside session
        creation."""
        chosen = None if paths is None else set(paths)
        wanted = [f for f in manifest.files if chosen is None or f.path in chosen]
        target = self._crate_dir(manifest)
        if _complete(target, wanted):
            os.utime(target)
            return target
        for folder in (self.files, self.crates, self.tmp):
            folder.mkdir(parents=True, exist_ok=True)
        # Each file is linked into a staging directory as soon as it is in the cache, so an
        # eviction meanwhile (which drops files no entry links) cannot take it.
        staging = Path(tempfile.mkdtemp(prefix="crate-", dir=self.tmp))
        try:
            for entry in wanted:
                blob = self._blob(entry.sha256)
                if not (blob.is_file() and blob.stat().st_size == entry.size):
                    self._materialize(entry.path, entry.sha256, entry.size, write)
                link = staging / entry.path
                link.parent.mkdir(parents=True, exist_ok=True)
                _link_or_copy(blob, link)
            # Loaders race to fill the same entry (threads and processes). Under one lock an
            # entry only grows: a new one appears whole (the staged directory renamed), and a
            # missing file joins an existing one by a rename of its own. Nothing is removed,
            # since another load may be opening the files it has.
            with _locked(self.tmp / f"{target.name}.lock"):
                if target.is_dir():
                    for entry in wanted:
                        if not _complete(target, [entry]):
                            _link_into(staging / entry.path, target / entry.path, self.tmp)
                else:
                    os.replace(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        self.evict(keep=target)
        return target

    @contextlib.contextmanager
    def incoming(self, sha256: str) -> Iterator[BinaryIO]:
        """A file to write ``sha256``'s bytes into while they are verified elsewhere (publish);
        it joins the cache only if the block ends without an error."""
        blob = self._blob(sha256)
        for folder in (blob.parent, self.tmp):
            folder.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix="file-", dir=self.tmp)
        try:
            with os.fdopen(fd, "wb") as out:
                yield out
            os.chmod(name, 0o444)
            os.replace(name, blob)
        finally:
            Path(name).unlink(missing_ok=True)

    def _materialize(
        self, path: str, sha256: str, size: int, write: Callable[[str, BinaryIO, str], None]
    ) -> None:
        """Write one file from the store; it joins the cache when its size is right."""
        with self.incoming(sha256) as out:
            write(sha256, out, path)
            if out.tell() != size:
                raise IntegrityError(
                    f"{path} is corrupted in the registry ({out.tell()} bytes, expected {size})"
                )

    def _blob(self, sha256: str) -> Path:
        return self.files / sha256[:2] / sha256

    def _crate_dir(self, manifest: Manifest) -> Path:
        return self.crates / manifest.digest.removeprefix("sha256:")

    def discard(self, manifest: Manifest) -> None:
        """Drop a cached crate whose files failed their check at load (and those files)."""
        target = self._crate_dir(manifest)
        for entry in manifest.files:
            blob, link = self._blob(entry.sha256), target / entry.path
            if blob.exists() and link.exists() and os.path.samefile(blob, link):
                blob.unlink(missing_ok=True)
        shutil.rmtree(target, ignore_errors=True)

    def retain(self, digests: set[str], files: set[str]) -> int:
        """Drop cached crates and files no live version has (gc); returns bytes freed."""
        freed = 0
        if self.crates.is_dir():
            for crate in self.crates.iterdir():
                if f"sha256:{crate.name}" not in digests:
                    shutil.rmtree(crate, ignore_errors=True)
                    (self.tmp / f"{crate.name}.lock").unlink(missing_ok=True)
        for blob in self.files.glob("*/*") if self.files.is_dir() else []:
            if blob.name not in files:
                freed += blob.stat().st_size
                blob.unlink(missing_ok=True)
        return freed

    def size(self) -> int:
        """Bytes the cached files take (each file once, however many crates link it)."""
        if not self.files.is_dir():
            return 0
        return sum(p.stat().st_size for p in self.files.glob("*/*") if p.is_file())

    def evict(self, *, keep: Path | None = None) -> int:
        """Remove least recently used crates until the cache fits its bound; returns bytes freed."""
        total = self.size()
        if total <= self.limit:
            return 0
        freed, now = 0, time.time()
        listed = self.crates.iterdir() if self.crates.is_dir() else iter(())
        crates = sorted((p for p in listed if p.is_dir()), key=lambda p: p.stat().st_mtime)
        for crate in crates:
            if total - freed <= self.limit:
                break
            if crate == keep or now - crate.stat().st_mtime < IN_USE_SECONDS:
                continue
            shutil.rmtree(crate, ignore_errors=True)
            freed += self._drop_unlinked()
        if total - freed > self.limit:  # files no cached crate uses yet (warmed by publish)
            freed += self._drop_unlinked()
        return freed

    def _drop_unlinked(self) -> int:
        freed = 0
        for blob in self.files.glob("*/*"):
            info = blob.stat()
            if info.st_nlink == 1:  # no cached crate links it any more
                blob.unlink(missing_ok=True)
                freed += info.st_size
        return freed


def _complete(target: Path, entries: Sequence[FileEntry]) -> bool:
    return all(
        (target / f.path).is_file() and (target / f.path).stat().st_size == f.size for f in entries
    )


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` (flock: between processes, and between threads, each of
    which opens the file itself)."""
    import fcntl

    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _link_into(source: Path, link: Path, scratch: Path) -> None:
    """Put ``source`` at ``link`` in an existing entry, in one rename (a wrong-sized file
    there, left by a damaged copy, is replaced; whoever has it open keeps it)."""
    link.parent.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(prefix="file-", dir=scratch)) / "link"
    try:
        _link_or_copy(source, staged)
        os.replace(staged, link)
    finally:
        shutil.rmtree(staged.parent, ignore_errors=True)


def _link_or_copy(source: Path, link: Path) -> None:
    try:
        os.link(source, link)
    except OSError:  # a filesystem without hard links
        shutil.copyfile(source, link)
        os.chmod(link, 0o444)
