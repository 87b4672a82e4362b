"""Registry: publish, resolve, alias, roll back, delete, collect garbage, verify.

The embedded registry is a directory: ``registry.db`` (SQLite) and ``blobs/``.
Publishing writes and verifies every blob first, then makes the version visible
in one transaction; a reader never sees a half-published version.
"""

from __future__ import annotations

import getpass
import hashlib
import os
import time
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING

from modelcrate.errors import NotFound, RegistryError, UsageError, VersionConflict
from modelcrate.refs import Ref, check_name, parse_ref, registry_kind
from modelcrate.registry.aliases import AliasMixin
from modelcrate.registry.audit import record
from modelcrate.registry.blobs import BlobStore, FileBlobStore, open_blob_store
from modelcrate.registry.cache import FileCache
from modelcrate.registry.chunks import FileStore
from modelcrate.registry.db import (
    Database,
    Row,
    Transaction,
    postgres_database,
    redacted,
    sqlite_database,
    stored_manifest,
)
from modelcrate.registry.evaluations import EvaluationMixin
from modelcrate.registry.lineage import (
    MAX_NODES,
    LineageGraph,
    dependents,
    index_parents,
    lineage_of,
)
from modelcrate.registry.records import (
    FileCheck,
    GcReport,
    ModelSummary,
    PackCheck,
    PublishResult,
    VersionInfo,
)
from modelcrate.registry.rollouts import RolloutMixin
from modelcrate.registry.trust import TrustMixin, signatures_of, store_signatures
from modelcrate.registry.webhooks import WebhookMixin

if TYPE_CHECKING:
    from modelcrate.crate import Crate
    from modelcrate.manifest import Manifest
    from modelcrate.registry.backup import BackupReport, DiskUsage
    from modelcrate.trust.signing import Policy

GC_GRACE_SECONDS = 3600.0
VERSION = "SELECT id, name, version, digest, manifest, description, size, created_at FROM versions"


def default_location() -> Path:
    """``$MODELCRATE_HOME``, else ``~/.modelcrate``."""
    home = os.environ.get("MODELCRATE_HOME")
    return Path(home) if home else Path.home() / ".modelcrate"


def os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (containers)
        return f"uid:{os.getuid()}"


class Registry(AliasMixin, TrustMixin, WebhookMixin, EvaluationMixin, RolloutMixin):
    """A registry: metadata in SQLite (embedded, the default) or PostgreSQL, blobs in a
    directory or S3. ``actor`` names who acts in the audit log (default: the OS user)."""

    def __init__(
        self,
        root: Path | None = None,
        *,
        db: Database | None = None,
        blobs: BlobStore | None = None,
        location: str | None = None,
        actor: str | None = None,
        cache_bytes: int | None = None,
    ) -> None:
        """``Registry(root)``: the embedded registry in directory ``root``; or give an
        ``db`` and a ``blobs`` store (see ``open`` for URLs). Loaded files are cached
        in ``root/cache`` (shared registries: ``$MODELCRATE_HOME/caches/<id>``), at most
        ``cache_bytes`` (default ``$MODELCRATE_CACHE_SIZE``, else 32 GiB)."""
        self.actor = actor or os_user()
        self.root = root
        if root is not None:
            root.mkdir(parents=True, exist_ok=True)
            self.blobs: BlobStore = blobs or FileBlobStore(root / "blobs")
            self.db = db or sqlite_database(root / "registry.db")
            self.location = location or str(root)
        elif db is None or blobs is None:
            raise UsageError("a registry needs a directory, or a database and a blob store")
        else:
            self.db, self.blobs = db, blobs
            self.location = location or db.location
        # A shared registry's cache is per machine and per registry (gc prunes it).
        cache_root = (
            root / "cache"
            if root is not None
            else (
                default_location()
                / "caches"
                / hashlib.sha256(self.location.encode()).hexdigest()[:16]
            )
        )
        self.files = FileStore(self.db, self.blobs, FileCache(cache_root, cache_bytes))
        # Pooled connections are closed when the registry goes away, not left to the GC.
        weakref.finalize(self, self.db.close)

    @classmethod
    def open(
        cls, location: str | os.PathLike[str] | None = None, *, actor: str | None = None
    ) -> Registry:
        """Open (creating if needed) the registry at ``location``: a directory (embedded;
        default ``$MODELCRATE_HOME``, then ``~/.modelcrate``) or
        ``postgresql://user:pass@host:port/db?blobs=s3://bucket/prefix`` (or ``?blobs=DIR``)."""
        if location is None:
            return cls(default_location(), actor=actor)
        text = os.fspath(location)
        kind = registry_kind(text)
        if kind == "postgresql":
            db, blob_location = postgres_database(text)
            blobs = open_blob_store(blob_location)
            return cls(db=db, blobs=blobs, location=redacted(text), actor=actor)
        if kind != "embedded":
            raise UsageError(
                f"registry {text!r}: Registry is the embedded and PostgreSQL backend; open "
                "a server or an OCI registry with modelcrate.open_registry(location)"
            )
        return cls(Path(text.removeprefix("file://")).expanduser(), actor=actor)

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # -- publish -------------------------------------------------------------

    def publish(
        self,
        crate: Crate | str | os.PathLike[str],
        *,
        progress: Callable[[int], None] | None = None,
        signatures: Sequence[bytes] = (),
        trust: Policy | None = None,
    ) -> PublishResult:
        """Store a crate as an immutable version; republishing identical content is a no-op.

        ``signatures``: sigstore bundles over the crate, stored with it. When the registry's
        policy or ``trust`` requires a signature, one of them (or one already stored) must be
        by a trusted key, or nothing is published. ``progress`` is called with the byte count
        of each file as it is stored."""
        from modelcrate.crate import Crate
        from modelcrate.trust.signing import check_bundle, enforce

        if not isinstance(crate, Crate):
            crate = Crate.open(crate)
        manifest = crate.manifest
        for bundle in signatures:
            check_bundle(crate, bundle)
        self._check_members(manifest)
        known = [*signatures, *signatures_of(self.db, manifest.digest)]
        enforce(crate, known, self._policy(trust))
        existing = self._find(manifest.name, manifest.version)
        if existing is not None:
            result = self._same_or_conflict(existing, manifest)
            crate.verify()  # "identical" only if the bytes are too, not just the manifest
            with self.db.write() as tx:
                store_signatures(tx, self.actor, crate, signatures)
            return result
        recipes = {}
        # A registry on local disk is usually loaded where it is published: its file cache
        # is filled in the same pass, so the first load copies nothing.
        warm = isinstance(self.blobs, FileBlobStore)
        with self.files.writer() as writer:  # new chunks go to packs, sealed before commit
            for entry in manifest.files:
                recipe = self.files.reuse(entry.sha256)
                if recipe is None:
                    with crate.open_unhashed(entry.path) as stream:
                        recipe = self.files.stage(
                            stream,
                            entry.sha256,
                            entry.size,
                            writer=writer,
                            label=entry.path,
                            cache=warm,
                        )
                recipes[entry.sha256] = recipe
                if progress is not None:
                    progress(entry.size)
        if warm and self.files.cache is not None:
            self.files.cache.evict()
        with self.db.write() as tx:
            tx.lock_writes()  # serializes with gc (and other publishers) on PostgreSQL
            digest = tx.scalar(
                "SELECT digest FROM versions WHERE name = ? AND version = ?",
                manifest.name,
                manifest.version,
            )
            if digest is not None:  # another publisher won while we wrote blobs
                return self._same_or_conflict(digest, manifest)
            for sha, recipe in recipes.items():
                self.files.record(tx, sha, recipe)
            version_id = tx.insert(
                "versions",
                name=manifest.name,
                version=manifest.version,
                digest=manifest.digest,
                manifest=manifest.canonical_bytes().decode(),
                description=manifest.description,
                size=sum(f.size for f in manifest.files),
                created_at=time.time(),
            )
            files = [
                {"version_id": version_id, "path": f.path, "sha256": f.sha256, "size": f.size}
                for f in manifest.files
            ]
            tx.insert_rows("version_files", files)
            tags = [{"version_id": version_id, "tag": t} for t in dict.fromkeys(manifest.tags)]
            tx.insert_rows("version_tags", tags)
            tx.insert_rows("version_parents", index_parents(manifest, version_id))
            record(
                tx,
                self.actor,
                "publish",
                name=manifest.name,
                version=manifest.version,
                digest=manifest.digest,
            )
            store_signatures(tx, self.actor, crate, signatures)
        return PublishResult(manifest.name, manifest.version, manifest.digest, created=True)

    def _check_members(self, manifest: Manifest) -> None:
        """A pipeline or ensemble can only be published where its members are."""
        if manifest.composition is None:
            return
        with self.db.read() as tx:
            for member in manifest.composition.members:
                if tx.scalar("SELECT 1 FROM versions WHERE digest = ?", member.digest) is None:
                    raise NotFound(
                        f"{manifest.ref} runs {member.ref} ({member.digest[:19]}…), which is "
                        "not in this registry; publish it first"
                    )

    def backup(self, to: str | os.PathLike[str]) -> BackupReport:
        """Write the whole registry (metadata and referenced blobs) to one tar file."""
        from modelcrate.registry.backup import backup

        return backup(self, to)

    def restore(self, source: str | os.PathLike[str]) -> BackupReport:
        """Load a backup into this (empty) registry; every blob and manifest is verified."""
        from modelcrate.registry.backup import restore

        return restore(self, source)

    def du(self, name: str | None = None) -> DiskUsage:
        """Logical bytes of the versions (of ``name``) and the bytes they take when stored."""
        from modelcrate.registry.backup import disk_usage

        return disk_usage(self, name)

    def lineage(self, ref: str, *, limit: int = MAX_NODES) -> LineageGraph:
        """Ancestors (by the parent digests each manifest records) and descendants of ``ref``,
        at most ``limit`` of each (``truncated`` says when there were more)."""
        return lineage_of(self.db, self.manifest(ref), limit)

    def _same_or_conflict(self, digest: str, manifest: Manifest) -> PublishResult:
        if digest != manifest.digest:
            raise VersionConflict(
                f"{manifest.ref} already exists with digest {digest[:19]}…; versions are "
                f"immutable (this crate is {manifest.digest[:19]}…): publish it as a new version"
            )
        return PublishResult(manifest.name, manifest.version, digest, created=False)

    def _find(self, name: str, version: str) -> str | None:
        """The digest of ``name@version``, if it is stored."""
        with self.db.read() as tx:
            return tx.scalar(  # type: ignore[no-any-return]
                "SELECT digest FROM versions WHERE name = ? AND version = ?", name, version
            )

    # -- resolve and read ----------------------------------------------------

    def resolve(self, ref: str | Ref) -> VersionInfo:
        """Resolve ``name``, ``name@version``, ``name@alias`` or ``name@sha256:…``."""
        parsed = parse_ref(ref) if isinstance(ref, str) else ref
        with self.db.read() as tx:
            return self._info(tx, self._resolve_row(tx, parsed))

    def by_digest(self, digest: str) -> VersionInfo:
        """The version with this digest, whatever its name (digests are unique here)."""
        with self.db.read() as tx:
            row = tx.first(f"{VERSION} WHERE digest = ?", digest)
            if row is None:
                raise NotFound(f"no version with digest {digest[:19]}…")
            return self._info(tx, row)

    def receive(self, stream: IO[bytes], sha256: str, size: int) -> None:
        """Store one uploaded file (checked against ``sha256``) ahead of the publish that
        lists it; it is kept for gc's grace period until then."""
        recipe = self.files.stage(stream, sha256, size)
        with self.db.write() as tx:
            self.files.record(tx, sha256, recipe)

    def _resolve_row(self, tx: Transaction, ref: Ref) -> Row:
        """The ``versions`` row ``ref`` names (id, name, version, digest, manifest, …)."""
        if ref.version:
            row = tx.first(f"{VERSION} WHERE name = ? AND version = ?", ref.name, ref.version)
        elif ref.digest:
            row = tx.first(f"{VERSION} WHERE name = ? AND digest = ?", ref.name, ref.digest)
        elif ref.alias:
            target = tx.scalar(
                "SELECT version FROM aliases WHERE name = ? AND alias = ?", ref.name, ref.alias
            )
            if target is None:
                self._require_model(tx, ref.name)
                raise NotFound(f"{ref}: model {ref.name!r} has no alias {ref.alias!r}")
            row = tx.first(f"{VERSION} WHERE name = ? AND version = ?", ref.name, target)
        else:
            row = tx.first(f"{VERSION} WHERE name = ? ORDER BY id DESC LIMIT 1", ref.name)
        if row is None:
            self._require_model(tx, ref.name)
            raise NotFound(f"{ref}: no such version of {ref.name!r}")
        return row

    def _require_model(self, tx: Transaction, name: str) -> None:
        if tx.scalar("SELECT 1 FROM versions WHERE name = ? LIMIT 1", name) is None:
            raise NotFound(f"no model named {name!r} in the registry")

    def _info(self, tx: Transaction, row: Row) -> VersionInfo:
        aliases = tx.column(
            "SELECT alias FROM aliases WHERE name = ? AND version = ?", row.name, row.version
        )
        return VersionInfo(
            row.name, row.version, row.digest, row.size, row.created_at, sorted(aliases)
        )

    def manifest(self, ref: str | Ref) -> Manifest:
        parsed = parse_ref(ref) if isinstance(ref, str) else ref
        with self.db.read() as tx:
            return stored_manifest(self._resolve_row(tx, parsed))

    def get(self, ref: str | Ref, *, trust: Policy | None = None) -> Crate:
        """The crate for ``ref``; its files are verified against the manifest as they are read.

        When the registry's policy or ``trust`` requires signatures, the crate must carry one
        by a trusted key (checked here, over every file) or SignatureError is raised."""
        from modelcrate.trust.signing import enforce

        crate = self._crate(ref)
        enforce(crate, signatures_of(self.db, crate.digest), self._policy(trust))
        return crate

    def _crate(self, ref: str | Ref) -> Crate:
        from modelcrate.crate import Crate

        manifest = self.manifest(ref)
        return Crate(manifest, self.files.source(manifest))

    def _policy(self, trust: Policy | None) -> Policy:
        from modelcrate.trust.signing import Policy

        return self.policy() | (trust or Policy())

    def pull(self, ref: str, to: str | os.PathLike[str], *, trust: Policy | None = None) -> Path:
        """Write the verified directory form of ``ref`` to ``to``, and its latest signature
        (if any) beside it as ``<to>.sig``, which ``model_signing verify`` accepts."""
        from modelcrate.trust.signing import sidecar

        crate = self.get(ref, trust=trust)
        path = crate.unpack(to)
        bundles = signatures_of(self.db, crate.digest)
        if bundles:
            sidecar(path).write_bytes(bundles[-1])
        return path

    # -- listing -------------------------------------------------------------

    def list_models(
        self, query: str | None = None, *, tag: str | None = None
    ) -> list[ModelSummary]:
        """Models whose name or description contains ``query`` and that carry ``tag``."""
        where, params = [], []
        if query:
            where.append("(name LIKE ? OR description LIKE ?)")
            params += [f"%{query}%"] * 2
        if tag:
            where.append("id IN (SELECT version_id FROM version_tags WHERE tag = ?)")
            params.append(tag)
        condition = f" WHERE {' AND '.join(where)}" if where else ""
        with self.db.read() as tx:
            rows = tx.all(
                f"SELECT id, name, version, description FROM versions{condition} ORDER BY name, id",
                *params,
            )
            tags: dict[int, list[str]] = {}
            tagged = "SELECT version_id, tag FROM version_tags WHERE version_id IN (?)"
            for version_id, tag_name in tx.values_in(tagged, [row.id for row in rows]):
                tags.setdefault(version_id, []).append(tag_name)
            aliases: dict[str, dict[str, str]] = {}
            moved = "SELECT name, alias, version FROM aliases WHERE name IN (?)"
            for name, alias, version in tx.values_in(moved, [row.name for row in rows]):
                aliases.setdefault(name, {})[alias] = version
        by_name: dict[str, list[Row]] = {}
        for row in rows:
            by_name.setdefault(row.name, []).append(row)
        return [
            ModelSummary(
                name=name,
                latest=versions[-1].version,
                versions=len(versions),
                aliases=dict(sorted(aliases.get(name, {}).items())),
                tags=sorted({t for v in versions for t in tags.get(v.id, [])}),
                description=versions[-1].description,
            )
            for name, versions in by_name.items()
        ]

    def versions(self, name: str) -> list[VersionInfo]:
        """All versions of ``name``, oldest first."""
        check_name(name)
        with self.db.read() as tx:
            self._require_model(tx, name)
            rows = tx.all(f"{VERSION} WHERE name = ? ORDER BY id", name)
            return [self._info(tx, row) for row in rows]

    # -- delete, gc, verify --------------------------------------------------

    def delete(self, ref: str, *, force: bool = False) -> VersionInfo:
        """Delete one version (blobs stay until ``gc``). Aliases on it block unless ``force``."""
        parsed = parse_ref(ref)
        if parsed.alias or not (parsed.version or parsed.digest):
            raise UsageError(f"{ref}: delete needs an exact version (name@1.0.0), not an alias")
        with self.db.write() as tx:
            row = self._resolve_row(tx, parsed)
            info = self._info(tx, row)
            if info.aliases and not force:
                raise RegistryError(
                    f"{info.ref} is the target of alias(es) {', '.join(info.aliases)}; "
                    "move them first or pass --force"
                )
            users = dependents(tx, row.digest)
            if users:
                raise RegistryError(
                    f"{info.ref} is a member of {', '.join(users)}; delete those first"
                )
            for alias in info.aliases:
                tx.execute("DELETE FROM aliases WHERE name = ? AND alias = ?", row.name, alias)
                self._alias_deleted(tx, row.name, alias, row.version)
            for table in ("version_files", "version_tags", "version_parents"):
                tx.execute(f"DELETE FROM {table} WHERE version_id = ?", row.id)
            tx.execute("DELETE FROM versions WHERE id = ?", row.id)
            tx.execute("DELETE FROM signatures WHERE digest = ?", row.digest)
            record(
                tx,
                self.actor,
                "delete",
                name=row.name,
                version=row.version,
                digest=row.digest,
            )
        return info

    def gc(self, *, grace_seconds: float = GC_GRACE_SECONDS) -> GcReport:
        """Free chunks no version references and rewrite packs that are mostly dead (or
        small, or legacy loose chunks) into new packs. Anything younger than the grace
        period is kept, so a publish that is still writing is never robbed."""
        from modelcrate.registry.collect import collect

        report = collect(self.files, grace_seconds=grace_seconds)
        if report.blobs_removed or report.packs_rewritten:
            with self.db.write() as tx:
                record(tx, self.actor, "gc", detail=report.describe())
        return report

    def verify(self, ref: str) -> list[FileCheck]:
        """Re-hash every chunk of every file of ``ref``; each FileCheck says what (if
        anything) is wrong."""
        manifest = self.manifest(ref)
        return [
            FileCheck(f.path, f.size, self.files.check(f.sha256, f.size)) for f in manifest.files
        ]

    def verify_store(self) -> list[PackCheck]:
        """Re-read every pack: each damaged pack, what is wrong with it and the versions
        whose files it holds chunks of (empty when everything is intact)."""
        from modelcrate.registry.collect import damaged_versions

        return damaged_versions(self.files)
