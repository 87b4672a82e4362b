"""The registry verbs of the public API: publish, pull, push, sign, encrypt, lineage.

Each takes a registry by object or location (default: the embedded registry) and
hands off to the registry, the OCI client or a remote server.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from modelcrate.crate import Crate
from modelcrate.model import Model
from modelcrate.registry.api import Registry

if TYPE_CHECKING:
    from modelcrate.registry.lineage import LineageGraph
    from modelcrate.registry.records import PublishResult
    from modelcrate.registry.remote import PushResult
    from modelcrate.trust.signing import SignatureInfo, TrustArg


def publish(
    crate: Crate | Model | str | os.PathLike[str],
    *,
    registry: Registry | str | None = None,
    trust: TrustArg = None,
) -> PublishResult:
    """Publish a crate (object, ``.crate`` file or directory) to a registry (default: embedded).

    A local crate's signature (``<path>.sig``) is published with it. ``trust``: public
    key file(s)/directories; the crate must then be signed by one of them."""
    from modelcrate.trust.signing import as_policy, local_signatures

    if isinstance(crate, Model):
        crate = crate.crate
    signatures = [] if isinstance(crate, Crate) else local_signatures(crate)
    return _registry(registry).publish(crate, signatures=signatures, trust=as_policy(trust))


def pull(
    ref: str,
    to: str | os.PathLike[str],
    *,
    registry: Registry | str | None = None,
    trust: TrustArg = None,
) -> Path:
    """Write the verified files of ``ref`` into the directory ``to`` (signature: ``<to>.sig``).
    ``ref`` may name a server: ``https://host/digits@prod``."""
    from modelcrate.refs import split_remote
    from modelcrate.registry.remote import RemoteRegistry
    from modelcrate.trust.signing import as_policy, verify_local

    if ref.startswith("oci://"):
        from modelcrate.registry import oci

        oci.pull(ref, to)
        policy = as_policy(trust)
        if policy is not None:
            verify_local(Crate.open(to), to, policy)
        return Path(to)
    remote = split_remote(ref)
    if remote is not None:
        with RemoteRegistry(remote[0]) as server:
            path = server.pull(remote[1], to)
        policy = as_policy(trust)
        if policy is not None:
            verify_local(Crate.open(path), path, policy)
        return path
    return _registry(registry).pull(ref, to, trust=as_policy(trust))


def sign(
    target: str | os.PathLike[str],
    key: str | os.PathLike[str],
    *,
    registry: Registry | str | None = None,
) -> SignatureInfo:
    """Sign a registry version (``name@version``), or a local crate (writes ``<path>.sig``)."""
    from modelcrate.refs import is_local_crate
    from modelcrate.trust import signing
    from modelcrate.trust.keys import key_id, load_private

    if isinstance(target, os.PathLike) or is_local_crate(target):
        crate = Crate.open(target)
        crate.verify()
        signing.sidecar(target).write_bytes(signing.sign(crate, key))
        return signing.SignatureInfo(
            crate.manifest.ref, crate.digest, key_id(load_private(key).public_key())
        )
    return _registry(registry).sign(target, key)


def encrypt(
    ref: str,
    *,
    recipients: list[str | os.PathLike[str]] | None = None,
    passphrase: str | None = None,
    version: str | None = None,
    key: str | os.PathLike[str] | None = None,
    registry: Registry | str | None = None,
) -> PublishResult:
    """Publish ``ref`` again as ``version`` (default ``<version>-enc``) with its files
    encrypted at rest for the recipients' public keys and/or a passphrase; ``key`` signs
    the new version (needed where the registry requires signatures)."""
    from modelcrate.trust.crypto import encrypt as encrypt_crate
    from modelcrate.trust.signing import sign as sign_crate

    reg = _registry(registry)
    crate = encrypt_crate(
        reg.get(ref), recipients=recipients or [], passphrase=passphrase, version=version
    )
    signatures = [sign_crate(crate, key)] if key is not None else []
    return reg.publish(crate, signatures=signatures)


def push(
    ref: str,
    target: str | os.PathLike[str],
    *,
    registry: Registry | str | None = None,
    token: str | None = None,
) -> PushResult:
    """Copy a version (and its signatures) to another registry: a modelcrate server
    (``https://host``), a directory or a ``postgresql://`` URL. Only files the target lacks
    are sent."""
    from modelcrate.refs import is_remote
    from modelcrate.registry.remote import RemoteRegistry

    source = _registry(registry)
    crate, signatures = source.get(ref), source.signatures(ref)
    text = os.fspath(target)
    if text.startswith("oci://"):
        from modelcrate.registry import oci

        oci.push(crate, text)
        from modelcrate.registry.remote import PushResult

        files = len(crate.manifest.files)
        return PushResult(crate.name, crate.version, crate.digest, True, files, 0)
    if is_remote(text):
        with RemoteRegistry(text, token=token) as remote:
            return remote.publish(crate, signatures=signatures)
    with Registry.open(text) as other:
        have = sum(other.files.stored(f.sha256) for f in crate.manifest.files)
        result = other.publish(crate, signatures=signatures)
    from modelcrate.registry.remote import PushResult

    files = len(crate.manifest.files)
    return PushResult(
        result.name, result.version, result.digest, result.created, files - have, have
    )


def lineage(ref: str, *, registry: Registry | str | None = None) -> LineageGraph:
    """Ancestors and descendants of ``ref`` (by the parent digests manifests record)."""
    return _registry(registry).lineage(ref)


def _registry(registry: Registry | str | None) -> Registry:
    return registry if isinstance(registry, Registry) else Registry.open(registry)
