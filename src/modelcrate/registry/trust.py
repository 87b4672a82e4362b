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
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from sqlalchemy import Engine, delete, select
from sqlalchemy.orm import Session

from modelcrate.errors import NotFound, UsageError
from modelcrate.refs import Ref
from modelcrate.registry.audit import audit_entries, record
from modelcrate.registry.db import (
    SettingRow,
    SignatureRow,
    TrustedKeyRow,
    read_session,
    write_session,
)
from modelcrate.registry.records import AuditEntry, VersionInfo
from modelcrate.trust.signing import SignatureInfo

if TYPE_CHECKING:
    from modelcrate.crate import Crate
    from modelcrate.trust.signing import Policy


class _Registry(Protocol):
    engine: Engine
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
        from modelcrate.trust.signing import check_bundle, signer_id

        crate = self._crate(ref)
        check_bundle(crate, bundle)
        kid = signer_id(bundle) or "unknown"
        with write_session(self.engine) as session, session.begin():
            _store_signature(session, self.actor, crate, bundle, kid)
        return SignatureInfo(crate.manifest.ref, crate.digest, kid)

    def signatures(self: _Registry, ref: str | Ref) -> list[bytes]:
        """The signature bundles stored for ``ref``'s digest, oldest first."""
        digest = self.resolve(ref).digest
        return signatures_of(self.engine, digest)

    def check_signature(self: _Registry, ref: str, trust: Policy | None = None) -> str:
        """The id of a trusted key (registry's and ``trust``'s) that signed ``ref``, else
        SignatureError."""
        from modelcrate.trust.signing import verify

        crate = self._crate(ref)
        return verify(crate, signatures_of(self.engine, crate.digest), self._policy(trust).keys)

    # -- policy ----------------------------------------------------------------

    def policy(self: _Registry) -> Policy:
        """The registry's stored policy: whether signatures are required, and trusted keys."""
        from modelcrate.trust.keys import TrustedKeys
        from modelcrate.trust.signing import Policy

        with read_session(self.engine) as session:
            required = session.get(SettingRow, "require_signature")
            keys = session.scalars(select(TrustedKeyRow)).all()
            return Policy(
                require_signature=required is not None and required.value == "true",
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
        with write_session(self.engine) as session, session.begin():
            if require_signature is not None:
                session.merge(
                    SettingRow(key="require_signature", value=str(require_signature).lower())
                )
                record(
                    session, self.actor, "policy", detail=f"require_signature={require_signature}"
                )
            for kid, pem in added.pems.items():
                session.merge(TrustedKeyRow(key_id=kid, name=added.names[kid], pem=pem.decode()))
                record(session, self.actor, "trust-key", detail=f"{added.names[kid]} {kid}")
            for wanted in untrust:
                kid = _find_key(session, wanted)
                session.execute(delete(TrustedKeyRow).where(TrustedKeyRow.key_id == kid))
                record(session, self.actor, "untrust-key", detail=kid)
        return TrustMixin.policy(self)

    def audit(self: _Registry, name: str | None = None, *, limit: int = 200) -> list[AuditEntry]:
        """The latest ``limit`` audit entries (of model ``name``), oldest first (audit.py)."""
        return audit_entries(self.engine, name, limit)


def signatures_of(engine: Engine, digest: str) -> list[bytes]:
    with read_session(engine) as session:
        rows = session.scalars(
            select(SignatureRow).where(SignatureRow.digest == digest).order_by(SignatureRow.id)
        ).all()
        return [row.bundle.encode() for row in rows]


def _store_signature(session: Session, actor: str, crate: Crate, bundle: bytes, kid: str) -> None:
    existing = session.scalars(
        select(SignatureRow).where(SignatureRow.digest == crate.digest, SignatureRow.key_id == kid)
    ).first()
    if existing is not None:
        return  # this key already signed this version
    session.add(SignatureRow(digest=crate.digest, key_id=kid, bundle=bundle.decode()))
    record(
        session,
        actor,
        "sign",
        name=crate.name,
        version=crate.version,
        digest=crate.digest,
        detail=json.dumps({"key_id": kid}),
    )


def store_signatures(session: Session, actor: str, crate: Crate, bundles: Sequence[bytes]) -> None:
    """Store checked bundles for ``crate`` inside the caller's (publish) transaction."""
    from modelcrate.trust.signing import signer_id

    for bundle in bundles:
        _store_signature(session, actor, crate, bundle, signer_id(bundle) or "unknown")


def _find_key(session: Session, wanted: str) -> str:
    rows = session.scalars(select(TrustedKeyRow)).all()
    matches = [
        r.key_id
        for r in rows
        if r.name == wanted or (len(wanted) >= 8 and r.key_id.startswith(wanted))
    ]
    if not matches:
        raise NotFound(f"no trusted key named or starting with {wanted!r}")
    if len(matches) > 1:
        raise UsageError(f"{wanted!r} matches {len(matches)} trusted keys; give more of the id")
    return matches[0]
