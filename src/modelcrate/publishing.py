"""The registry verbs of the public API: publish, pull, push, sign, encrypt, lineage,
rollout.

Each takes a registry by object or location (default: the embedded registry) and
hands off to the registry, the OCI client or a remote server.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from modelcrate.crate import Crate
from modelcrate.errors import UsageError
from modelcrate.model import Model
from modelcrate.refs import split_remote
from modelcrate.registry import ModelRegistry, as_registry, open_registry
from modelcrate.registry.api import Registry

if TYPE_CHECKING:
    from modelcrate.registry.lineage import LineageGraph
    from modelcrate.registry.records import PublishResult, Rollout
    from modelcrate.registry.remote import PushResult
    from modelcrate.trust.signing import SignatureInfo, TrustArg


def publish(
    crate: Crate | Model | str | os.PathLike[str],
    *,
    registry: ModelRegistry | str | None = None,
    trust: TrustArg = None,
) -> PublishResult:
    """Publish a crate (object, ``.crate`` file or directory) to a registry (default: embedded).

    A local crate's signature (``<path>.sig``) is published with it. ``trust``: public
    key file(s)/directories; the crate must then be signed by one of them."""
    from modelcrate.trust.signing import as_policy, local_signatures

    if isinstance(crate, Model):
        crate = crate.crate
    signatures = [] if isinstance(crate, Crate) else local_signatures(crate)
    target, policy = as_registry(registry), as_policy(trust)
    if isinstance(target, Registry):
        return target.publish(crate, signatures=signatures, trust=policy)
    crate = crate if isinstance(crate, Crate) else Crate.open(crate)
    if policy is not None:  # a server or OCI registry: the caller's policy is checked here
        from modelcrate.trust.signing import enforce

        enforce(crate, signatures, policy)
    return target.publish(crate, signatures=signatures)


def pull(
    ref: str,
    to: str | os.PathLike[str],
    *,
    registry: ModelRegistry | str | None = None,
    trust: TrustArg = None,
) -> Path:
    """Write the verified files of ``ref`` into the directory ``to`` (signature: ``<to>.sig``).
    ``ref`` may say where it is: ``https://host/digits@prod``, ``oci://host/repo:tag``; else
    it is read from ``registry`` (any backend: a directory, PostgreSQL, https://, oci://)."""
    from modelcrate.trust.signing import as_policy, verify_local

    policy = as_policy(trust)
    if ref.startswith("oci://"):  # one artifact by its full address
        from modelcrate.registry import oci

        crate = oci.pull(ref, to)
        if policy is not None:
            verify_local(crate, to, policy)
        return Path(to)
    remote = split_remote(ref)
    source = open_registry(remote[0]) if remote is not None else as_registry(registry)
    try:
        return source.pull(remote[1] if remote is not None else ref, to, trust=policy)
    finally:
        if source is not registry:
            source.close()


def sign(
    target: str | os.PathLike[str],
    key: str | os.PathLike[str],
    *,
    registry: ModelRegistry | str | None = None,
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
    registry: ModelRegistry | str | None = None,
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
    registry: ModelRegistry | str | None = None,
    token: str | None = None,
) -> PushResult:
    """Copy a version (and its signatures) to another registry: a modelcrate server
    (``https://host``), a directory, a ``postgresql://`` URL, an OCI registry
    (``oci://host/prefix``, or ``oci://host/repo:tag`` for one tag). Only files the target
    lacks are sent."""
    from modelcrate.registry.remote import PushResult

    source = as_registry(registry)
    crate, signatures = source.get(ref), source.signatures(ref)
    text = os.fspath(target)
    files = len(crate.manifest.files)
    if text.startswith("oci://") and ":" in text.removeprefix("oci://").partition("/")[2]:
        # one artifact by its full address, oci://host[:port]/repo:tag
        from modelcrate.registry import oci

        oci.push(crate, text)
        return PushResult(crate.name, crate.version, crate.digest, True, files, 0)
    other = open_registry(text, token=token)
    try:
        have = 0
        if isinstance(other, Registry):
            have = sum(other.files.stored(f.sha256) for f in crate.manifest.files)
        result = other.publish(crate, signatures=signatures)
    finally:
        other.close()
    if isinstance(result, PushResult):
        return result
    counts = {"uploaded": files - have, "skipped": have}
    return PushResult(result.name, result.version, result.digest, result.created, **counts)


def lineage(ref: str, *, registry: ModelRegistry | str | None = None) -> LineageGraph:
    """Ancestors and descendants of ``ref`` (by the parent digests manifests record)."""
    return _registry(registry).lineage(ref)


def rollout(
    name: str,
    alias: str,
    version: str,
    *,
    canary: int | None = None,
    steps: list[int] | None = None,
    shadow: bool = False,
    interval: float | str = 60.0,
    max_error_rate: float | None = None,
    max_p99_ms: float | None = None,
    max_disagreement: float | None = None,
    allow_breaking: bool = False,
    registry: ModelRegistry | str | None = None,
) -> Rollout:
    """Start moving ``name@alias`` to ``version`` through a rollout the servers following
    the alias carry out: ``canary`` percent of the traffic first (``steps``: the
    percentages, ending at 100), or ``shadow`` copies only; each step lasts ``interval``
    (seconds, or "60s", "5m", "1h"). A breach of an SLO rolls it back automatically.
    Returns once the rollout is recorded."""
    if steps is None and canary is not None:
        steps = [canary, 100] if canary < 100 else [100]
    elif steps is not None and canary is not None and steps[0] != canary:
        raise UsageError(f"--canary {canary} and --steps starting at {steps[0]} disagree")
    return _registry(registry).start_rollout(
        name,
        alias,
        version,
        mode="shadow" if shadow else "canary",
        steps=steps,
        interval_s=seconds(interval),
        max_error_rate=max_error_rate,
        max_p99_ms=max_p99_ms,
        max_disagreement=max_disagreement,
        allow_breaking=allow_breaking,
    )


def seconds(value: float | str) -> float:
    """A duration: a number of seconds, or text like 90s, 5m, 1h."""
    if isinstance(value, (int, float)):
        return float(value)
    text = value.strip().lower()
    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    for suffix in ("ms", "s", "m", "h"):
        if text.endswith(suffix):
            number, factor = text[: -len(suffix)], units[suffix]
            break
    else:
        number, factor = text, 1.0
    try:
        return float(number) * factor
    except ValueError:
        raise UsageError(f"{value!r} is not a duration (like 60s, 5m or 1h)") from None


def _registry(registry: ModelRegistry | str | None) -> Registry:
    """The embedded or PostgreSQL registry (signing, encryption and lineage need one)."""
    opened = as_registry(registry)
    if not isinstance(opened, Registry):
        raise UsageError("this needs a local or PostgreSQL registry, not a server or OCI")
    return opened
