"""Registry: publish, resolve, alias, roll back, delete, collect garbage, verify.

The embedded registry is a directory: ``registry.db`` (SQLite) and ``blobs/``.
Publishing writes and verifies every blob first, then makes the version visible
in one transaction; a reader never sees a half-published version.
"""

from __future__ import annotations

import getpass
import hashlib
import os
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING

from sqlalchemy import Engine, delete, func, or_, select
from sqlalchemy.orm import Session

from modelcrate.crate import Crate
from modelcrate.errors import NotFound, RegistryError, UsageError, VersionConflict
from modelcrate.manifest import Manifest
from modelcrate.refs import Ref, check_name, parse_ref, registry_kind
from modelcrate.registry.aliases import AliasMixin
from modelcrate.registry.audit import record
from modelcrate.registry.blobs import BlobStore, FileBlobStore, open_blob_store
from modelcrate.registry.cache import FileCache
from modelcrate.registry.chunks import FileStore
from modelcrate.registry.db import (
    AliasRow,
    FileRow,
    SignatureRow,
    TagRow,
    VersionRow,
    lock_writes,
    postgres_engine,
    read_session,
    sqlite_engine,
    write_session,
)
from modelcrate.registry.evaluations import EvaluationMixin
from modelcrate.registry.lineage import (
    MAX_NODES,
    LineageGraph,
    dependents,
    index_rows,
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
    from modelcrate.registry.backup import BackupReport, DiskUsage
    from modelcrate.trust.signing import Policy

GC_GRACE_SECONDS = 3600.0


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
        engine: Engine | None = None,
        blobs: BlobStore | None = None,
        location: str | None = None,
        actor: str | None = None,
        cache_bytes: int | None = None,
    ) -> None:
        """``Registry(root)``: the embedded registry in directory ``root``; or give an
        ``engine`` and a ``blobs`` store (see ``open`` for URLs). Loaded files are cached
        in ``root/cache`` (shared registries: ``$MODELCRATE_HOME/caches/<id>``), at most
        ``cache_bytes`` (default ``$MODELCRATE_CACHE_SIZE``, else 32 GiB)."""
        self.actor = actor or os_user()
        self.root = root
        if root is not None:
            root.mkdir(parents=True, exist_ok=True)
            self.blobs: BlobStore = blobs or FileBlobStore(root / "blobs")
            self.engine = engine or sqlite_engine(root / "registry.db")
            self.location = location or str(root)
        elif engine is None or blobs is None:
            raise UsageError("a registry needs a directory, or a database and a blob store")
        else:
            self.engine, self.blobs = engine, blobs
            self.location = location or str(engine.url)
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
        self.files = FileStore(self.engine, self.blobs, FileCache(cache_root, cache_bytes))
        # Pooled connections are closed when the registry goes away, not left to the GC.
        weakref.finalize(self, self.engine.dispose)

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
            engine, blob_location = postgres_engine(text)
            return cls(
                engine=engine, blobs=open_blob_store(blob_location), location=text, actor=actor
            )
        if kind != "embedded":
            raise UsageError(
                f"registry {text!r}: Registry is the embedded and PostgreSQL backend; open "
                "a server or an OCI registry with modelcrate.open_registry(location)"
            )
        return cls(Path(text.removeprefix("file://")).expanduser(), actor=actor)

    def close(self) -> None:
        self.engine.dispose()

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
        from modelcrate.trust.signing import check_bundle, enforce

        if not isinstance(crate, Crate):
            crate = Crate.open(crate)
        manifest = crate.manifest
        for bundle in signatures:
            check_bundle(crate, bundle)
        self._check_members(manifest)
        known = [*signatures, *signatures_of(self.engine, manifest.digest)]
        enforce(crate, known, self._policy(trust))
        existing = self._find(manifest.name, manifest.version)
        if existing is not None:
            result = self._same_or_conflict(existing, manifest)
            crate.verify()  # "identical" only if the bytes are too, not just the manifest
            with write_session(self.engine) as session, session.begin():
                store_signatures(session, self.actor, crate, signatures)
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
        with write_session(self.engine) as session, session.begin():
            lock_writes(session)  # serializes with gc (and other publishers) on PostgreSQL
            row = session.scalars(
                select(VersionRow).where(
                    VersionRow.name == manifest.name, VersionRow.version == manifest.version
                )
            ).first()
            if row is not None:  # another publisher won while we wrote blobs
                return self._same_or_conflict(row.digest, manifest)
            for sha, recipe in recipes.items():
                self.files.record(session, sha, recipe)
            session.add(
                VersionRow(
                    name=manifest.name,
                    version=manifest.version,
                    digest=manifest.digest,
                    manifest=manifest.canonical_bytes().decode(),
                    description=manifest.description,
                    size=sum(f.size for f in manifest.files),
                    files=[
                        FileRow(path=f.path, sha256=f.sha256, size=f.size) for f in manifest.files
                    ],
                    tags=[TagRow(tag=t) for t in manifest.tags],
                    parents=index_rows(manifest),
                )
            )
            record(
                session,
                self.actor,
                "publish",
                name=manifest.name,
                version=manifest.version,
                digest=manifest.digest,
            )
            store_signatures(session, self.actor, crate, signatures)
        return PublishResult(manifest.name, manifest.version, manifest.digest, created=True)

    def _check_members(self, manifest: Manifest) -> None:
        """A pipeline or ensemble can only be published where its members are."""
        if manifest.composition is None:
            return
        with read_session(self.engine) as session:
            for member in manifest.composition.members:
                found = session.scalar(
                    select(func.count()).where(VersionRow.digest == member.digest)
                )
                if not found:
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
        return lineage_of(self.engine, self.manifest(ref), limit)

    def _same_or_conflict(self, existing: VersionRow | str, manifest: Manifest) -> PublishResult:
        digest = existing if isinstance(existing, str) else existing.digest
        if digest != manifest.digest:
            raise VersionConflict(
                f"{manifest.ref} already exists with digest {digest[:19]}…; versions are "
                f"immutable (this crate is {manifest.digest[:19]}…): publish it as a new version"
            )
        return PublishResult(manifest.name, manifest.version, digest, created=False)

    def _find(self, name: str, version: str) -> VersionRow | None:
        with read_session(self.engine) as session:
            return session.scalars(
                select(VersionRow).where(VersionRow.name == name, VersionRow.version == version)
            ).first()

    # -- resolve and read ----------------------------------------------------

    def resolve(self, ref: str | Ref) -> VersionInfo:
        """Resolve ``name``, ``name@version``, ``name@alias`` or ``name@sha256:…``."""
        parsed = parse_ref(ref) if isinstance(ref, str) else ref
        with read_session(self.engine) as session:
            row = self._resolve_row(session, parsed)
            return self._info(session, row)

    def by_digest(self, digest: str) -> VersionInfo:
        """The version with this digest, whatever its name (digests are unique here)."""
        with read_session(self.engine) as session:
            row = session.scalars(select(VersionRow).where(VersionRow.digest == digest)).first()
            if row is None:
                raise NotFound(f"no version with digest {digest[:19]}…")
            return self._info(session, row)

    def receive(self, stream: IO[bytes], sha256: str, size: int) -> None:
        """Store one uploaded file (checked against ``sha256``) ahead of the publish that
        lists it; it is kept for gc's grace period until then."""
        recipe = self.files.stage(stream, sha256, size)
        with write_session(self.engine) as session, session.begin():
            self.files.record(session, sha256, recipe)

    def _resolve_row(self, session: Session, ref: Ref) -> VersionRow:
        query = select(VersionRow).where(VersionRow.name == ref.name)
        if ref.version:
            row = session.scalars(query.where(VersionRow.version == ref.version)).first()
        elif ref.digest:
            row = session.scalars(query.where(VersionRow.digest == ref.digest)).first()
        elif ref.alias:
            alias = session.get(AliasRow, (ref.name, ref.alias))
            if alias is None:
                self._require_model(session, ref.name)
                raise NotFound(f"{ref}: model {ref.name!r} has no alias {ref.alias!r}")
            row = session.scalars(query.where(VersionRow.version == alias.version)).first()
        else:
            row = session.scalars(query.order_by(VersionRow.id.desc())).first()
        if row is None:
            self._require_model(session, ref.name)
            raise NotFound(f"{ref}: no such version of {ref.name!r}")
        return row

    def _require_model(self, session: Session, name: str) -> None:
        if session.scalar(select(func.count()).where(VersionRow.name == name)) == 0:
            raise NotFound(f"no model named {name!r} in the registry")

    def _info(self, session: Session, row: VersionRow) -> VersionInfo:
        aliases = session.scalars(
            select(AliasRow.alias).where(AliasRow.name == row.name, AliasRow.version == row.version)
        ).all()
        return VersionInfo(
            row.name, row.version, row.digest, row.size, row.created_at, sorted(aliases)
        )

    def manifest(self, ref: str | Ref) -> Manifest:
        parsed = parse_ref(ref) if isinstance(ref, str) else ref
        with read_session(self.engine) as session:
            return self._resolve_row(session, parsed).stored_manifest()

    def get(self, ref: str | Ref, *, trust: Policy | None = None) -> Crate:
        """The crate for ``ref``; its files are verified against the manifest as they are read.

        When the registry's policy or ``trust`` requires signatures, the crate must carry one
        by a trusted key (checked here, over every file) or SignatureError is raised."""
        from modelcrate.trust.signing import enforce

        crate = self._crate(ref)
        enforce(crate, signatures_of(self.engine, crate.digest), self._policy(trust))
        return crate

    def _crate(self, ref: str | Ref) -> Crate:
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
        bundles = signatures_of(self.engine, crate.digest)
        if bundles:
            sidecar(path).write_bytes(bundles[-1])
        return path

    # -- listing -------------------------------------------------------------

    def list_models(
        self, query: str | None = None, *, tag: str | None = None
    ) -> list[ModelSummary]:
        """Models whose name or description contains ``query`` and that carry ``tag``."""
        with read_session(self.engine) as session:
            stmt = select(VersionRow).order_by(VersionRow.name, VersionRow.id)
            if query:
                pattern = f"%{query}%"
                stmt = stmt.where(
                    or_(VersionRow.name.like(pattern), VersionRow.description.like(pattern))
                )
            if tag:
                stmt = stmt.where(VersionRow.tags.any(TagRow.tag == tag))
            rows = session.scalars(stmt).all()
            by_name: dict[str, list[VersionRow]] = {}
            for row in rows:
                by_name.setdefault(row.name, []).append(row)
            summaries = []
            for name, versions in by_name.items():
                aliases = session.execute(
                    select(AliasRow.alias, AliasRow.version).where(AliasRow.name == name)
                ).all()
                summaries.append(
                    ModelSummary(
                        name=name,
                        latest=versions[-1].version,
                        versions=len(versions),
                        aliases={a: v for a, v in sorted(aliases)},
                        tags=sorted({t.tag for v in versions for t in v.tags}),
                        description=versions[-1].description,
                    )
                )
            return summaries

    def versions(self, name: str) -> list[VersionInfo]:
        """All versions of ``name``, oldest first."""
        check_name(name)
        with read_session(self.engine) as session:
            self._require_model(session, name)
            rows = session.scalars(
                select(VersionRow).where(VersionRow.name == name).order_by(VersionRow.id)
            ).all()
            return [self._info(session, row) for row in rows]

    # -- delete, gc, verify --------------------------------------------------

    def delete(self, ref: str, *, force: bool = False) -> VersionInfo:
        """Delete one version (blobs stay until ``gc``). Aliases on it block unless ``force``."""
        parsed = parse_ref(ref)
        if parsed.alias or not (parsed.version or parsed.digest):
            raise UsageError(f"{ref}: delete needs an exact version (name@1.0.0), not an alias")
        with write_session(self.engine) as session, session.begin():
            row = self._resolve_row(session, parsed)
            info = self._info(session, row)
            if info.aliases and not force:
                raise RegistryError(
                    f"{info.ref} is the target of alias(es) {', '.join(info.aliases)}; "
                    "move them first or pass --force"
                )
            users = dependents(self.engine, row.digest)
            if users:
                raise RegistryError(
                    f"{info.ref} is a member of {', '.join(users)}; delete those first"
                )
            for alias in info.aliases:
                session.delete(session.get(AliasRow, (row.name, alias)))
                self._alias_deleted(session, row.name, alias, row.version)
            session.delete(row)
            session.execute(delete(SignatureRow).where(SignatureRow.digest == row.digest))
            record(
                session,
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
            with write_session(self.engine) as session, session.begin():
                record(session, self.actor, "gc", detail=report.describe())
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
