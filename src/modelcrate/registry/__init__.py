"""Registries store crates: immutable versions, movable aliases, signatures.

Every backend offers the same interface (``ModelRegistry``): the embedded registry and
PostgreSQL + S3 (``api.Registry``), another modelcrate server (``remote.RemoteRegistry``)
and an OCI distribution registry (``oci.OciRegistry``). ``open_registry`` picks one by
the location's scheme (``refs.registry_kind``) and imports only that backend.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from modelcrate.refs import Ref, registry_kind

if TYPE_CHECKING:
    from modelcrate.crate import Crate
    from modelcrate.manifest import Manifest
    from modelcrate.registry.records import AliasEvent, ModelSummary, PublishResult, VersionInfo
    from modelcrate.trust.signing import Policy


class ModelRegistry(Protocol):
    """What every registry backend does."""

    def resolve(self, ref: str | Ref) -> VersionInfo: ...

    def manifest(self, ref: str | Ref) -> Manifest: ...

    def get(self, ref: str | Ref, *, trust: Policy | None = None) -> Crate: ...

    def signatures(self, ref: str | Ref) -> list[bytes]: ...

    def list_models(self) -> list[ModelSummary]: ...

    def publish(self, crate: Crate, *, signatures: Sequence[bytes] = ()) -> PublishResult: ...

    def set_alias(
        self, name: str, alias: str, version: str, *, allow_breaking: bool = False
    ) -> AliasEvent: ...

    def pull(
        self, ref: str, to: str | os.PathLike[str], *, trust: Policy | None = None
    ) -> Path: ...

    def close(self) -> None: ...


def open_registry(
    location: str | os.PathLike[str] | None = None, *, token: str | None = None
) -> ModelRegistry:
    """The registry at ``location``: a directory (default ``$MODELCRATE_HOME``, then
    ``~/.modelcrate``), ``postgresql://…?blobs=s3://…``, ``https://host`` (a modelcrate
    server; ``token`` or ``$MODELCRATE_TOKEN``) or ``oci://host[/prefix]``."""
    text = None if location is None else os.fspath(location)
    kind = "embedded" if text is None else registry_kind(text)
    if kind == "http":
        from modelcrate.registry.remote import RemoteRegistry

        return RemoteRegistry(str(text), token=token)
    if kind == "oci":
        from modelcrate.registry.oci import OciRegistry

        return OciRegistry(str(text))
    from modelcrate.registry.api import Registry

    return Registry.open(text)


def as_registry(registry: ModelRegistry | str | os.PathLike[str] | None) -> ModelRegistry:
    """``registry`` itself, or the one at that location (None: the default registry)."""
    if registry is None or isinstance(registry, (str, os.PathLike)):
        return open_registry(registry)
    return registry
