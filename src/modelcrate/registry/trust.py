"""The registry's trust records: signatures per version, the signing policy, the audit log.

The policy (``require_signature`` and the trusted public keys) lives in the
registry database, so every process that opens the registry enforces it; a
command can add keys and demand a signature for itself (``--trust``), never
relax what the registry requires. Every change is written to the audit log in
the same transaction as the change itself.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from modelcrate.errors import NotFound, UsageError
from modelcrate.refs import Ref
from modelcrate.registry.audit import audit_entries, record
from modelcrate.registry.db import Database, Transaction
from modelcrate.registry.records import AuditEntry, VersionInfo

if TYPE_CHECKING:
    from modelcrate.crate import Crate
    from modelcrate.trust.signing import Policy, SignatureInfo


class _Registry(Protocol):
    db: Database
    actor: str

    def resolve(self, ref: str | Ref) -> VersionInfo: ...

    def get(self, ref: str | Ref, *, trust: Policy | None = None) -> Crate: ...

    def _crate(self, ref: str | Ref) -> Crate: ...

    def _policy(self, trust: Policy | None) -> Policy: ...


class TrustMixin:
    """Signatures, policy and audit log of a Registry (mixed into it)."""

    # -- signatures ------------------------------------------------------------

    def sign(self: _Registry, ref: str, key: str | os.PathLike[str]) -> SignatureInfo:
        """Sign the version ``ref`` with an EC private key and store the signature with it."""
        from modelcrate.trust.signing import sign

        crate = self._crate(ref)
        bundle = sign(crate, key)
        return TrustMixin.add_signature(self, ref, bundle)

    def add_signature(self: _Registry, ref: str, bundle: bytes) -> SignatureInfo:
        """Store a sigstore bundle made over ``ref``'s files (checked to list exactly them)."""
        from modelcrate.trust.signing import SignatureInfo, check_bundle, signer_id

        crate = self._crate(ref)
        check_bundle(crate, bundle)
        kid = signer_id(bundle) or "unknown"
        with self.db.write() as tx:
            _store_signature(tx, self.actor, crate, bundle, kid)
        return SignatureInfo(crate.manifest.ref, crate.digest, kid)

    def signatures(self: _Registry, ref: str | Ref) -> list[bytes]:
        """The signature bundles stored for ``ref``'s digest, oldest first."""
        digest = self.resolve(ref).digest
        return signatures_of(self.db, digest)

    def check_signature(self: _Registry, ref: str, trust: Policy | None = None) -> str:
        """The id of a trusted key (registry's and ``trust``'s) that signed ``ref``, else
        SignatureError."""
        from modelcrate.trust.signing import verify

        crate = self._crate(ref)
        return verify(crate, signatures_of(self.db, crate.digest), self._policy(trust).keys)

    # -- policy ----------------------------------------------------------------

    def policy(self: _Registry) -> Policy:
        """The registry's stored policy: whether signatures are required, and trusted keys."""
        from modelcrate.trust.keys import TrustedKeys
        from modelcrate.trust.signing import Policy

        with self.db.read() as tx:
            required = tx.scalar('SELECT value FROM settings WHERE "key" = ?', "require_signature")
            keys = tx.all("SELECT key_id, name, pem FROM trusted_keys")
        return Policy(
            require_signature=required == "true",
            keys=TrustedKeys(
                {k.key_id: k.pem.encode() for k in keys}, {k.key_id: k.name for k in keys}
            ),
        )

    def set_policy(
        self: _Registry,
        *,
        require_signature: bool | None = None,
        trust: Sequence[str | os.PathLike[str]] = (),
        untrust: Sequence[str] = (),
    ) -> Policy:
        """Change the stored policy; each change is audited. ``untrust``: key ids (or a
        unique prefix of 8+ characters) or names."""
        from modelcrate.trust.keys import TrustedKeys

        added = TrustedKeys.from_paths(trust)
        with self.db.write() as tx:
            if require_signature is not None:
                tx.execute(
                    'INSERT INTO settings ("key", value) VALUES (?, ?) '
                    'ON CONFLICT ("key") DO UPDATE SET value = excluded.value',
                    "require_signature",
                    str(require_signature).lower(),
                )
                record(tx, self.actor, "policy", detail=f"require_signature={require_signature}")
            for kid, pem in added.pems.items():
                tx.execute(
                    "INSERT INTO trusted_keys (key_id, name, pem, added_at) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (key_id) DO UPDATE SET name = excluded.name, pem = excluded.pem",
                    kid,
                    added.names[kid],
                    pem.decode(),
                    time.time(),
                )
                record(tx, self.actor, "trust-key", detail=f"{added.names[kid]} {kid}")
            for wanted in untrust:
                kid = _find_key(tx, wanted)
                tx.execute("DELETE FROM trusted_keys WHERE key_id = ?", kid)
                record(tx, self.actor, "untrust-key", detail=kid)
        return TrustMixin.policy(self)

    def audit(self: _Registry, name: str | None = None, *, limit: int = 200) -> list[AuditEntry]:
        """The latest ``limit`` audit entries (of model ``name``), oldest first (audit.py)."""
        return audit_entries(self.db, name, limit)


def signatures_of(db: Database, digest: str) -> list[bytes]:
    with db.read() as tx:
        rows = tx.column("SELECT bundle FROM signatures WHERE digest = ? ORDER BY id", digest)
    return [bundle.encode() for bundle in rows]


def _store_signature(tx: Transaction, actor: str, crate: Crate, bundle: bytes, kid: str) -> None:
    existing = tx.scalar(
        "SELECT id FROM signatures WHERE digest = ? AND key_id = ?", crate.digest, kid
    )
    if existing is not None:
        return  # this key already signed this version
    tx.insert(
        "signatures",
        digest=crate.digest,
        key_id=kid,
        bundle=bundle.decode(),
        created_at=time.time(),
    )
    record(
        tx,
        actor,
        "sign",
        name=crate.name,
        version=crate.version,
        digest=crate.digest,
        detail=json.dumps({"key_id": kid}),
    )


def store_signatures(tx: Transaction, actor: str, crate: Crate, bundles: Sequence[bytes]) -> None:
    """Store checked bundles for ``crate`` inside the caller's (publish) transaction."""
    from modelcrate.trust.signing import signer_id

    for bundle in bundles:
        _store_signature(tx, actor, crate, bundle, signer_id(bundle) or "unknown")


def _find_key(tx: Transaction, wanted: str) -> str:
    rows = tx.all("SELECT key_id, name FROM trusted_keys")
    matches = [
        r.key_id
        for r in rows
        if r.name == wanted or (len(wanted) >= 8 and r.key_id.startswith(wanted))
    ]
    if not matches:
        raise NotFound(f"no trusted key named or starting with {wanted!r}")
    if len(matches) > 1:
        raise UsageError(f"{wanted!r} matches {len(matches)} trusted keys; give more of the id")
    return str(matches[0])
