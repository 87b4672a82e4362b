"""Signatures with OpenSSF model-signing: sigstore bundles over a crate's directory form.

A signature covers what ``modelcrate pull`` writes: ``crate.json`` plus every
file it lists, one sha256 per file (model-signing's ``files`` serialization).
So ``model_signing verify key DIR --signature SIG --public_key KEY`` accepts
our signatures, and we accept signatures that tool made over a pulled crate.

Checking a signature: the bundle must list exactly the crate's files with the
digests its manifest records (so the signature pins the manifest, and through
it every byte), its key hint must name a trusted key, and model-signing must
accept it over the crate's files, which it re-hashes. Signing is key-based and
offline; nothing here talks to a network.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from modelcrate.crate import Crate
from modelcrate.errors import RuntimeUnavailable, SignatureError, TrustError, UsageError
from modelcrate.manifest import MANIFEST_NAME
from modelcrate.trust.keys import TrustedKeys, key_id, load_private

MAX_BUNDLE_BYTES = 1024 * 1024
SIGNATURE_SUFFIX = ".sig"


@dataclass(frozen=True)
class SignatureInfo:
    ref: str
    digest: str
    key_id: str


@dataclass(frozen=True)
class Policy:
    """When a crate needs a signature, and whose signatures count."""

    require_signature: bool = False
    keys: TrustedKeys = field(default_factory=TrustedKeys)

    def __or__(self, other: Policy) -> Policy:
        return Policy(self.require_signature or other.require_signature, self.keys | other.keys)


TrustArg = Union["Policy", str, os.PathLike[str], Sequence[str | os.PathLike[str]], None]


def as_policy(trust: TrustArg) -> Policy | None:
    """``trust`` as a policy: a Policy as it is; key files/directories -> require a signature
    by one of those keys; None -> None (the registry's own policy still applies)."""
    if trust is None or isinstance(trust, Policy):
        return trust
    paths = [trust] if isinstance(trust, (str, os.PathLike)) else list(trust)
    return Policy(require_signature=True, keys=TrustedKeys.from_paths(paths))


def verify_local(crate: Crate, path: str | os.PathLike[str], policy: Policy) -> str | None:
    """Enforce ``policy`` on a crate read from ``path``, whose signature is ``path.sig``."""
    return enforce(crate, local_signatures(path), policy)


def local_signatures(
    path: str | os.PathLike[str], signature: str | os.PathLike[str] | None = None
) -> list[bytes]:
    """The signature of a local crate: ``signature`` if given (it must exist), else
    ``<path>.sig`` when there is one."""
    if signature is not None:
        if not Path(signature).is_file():
            raise UsageError(f"--signature {signature}: no such file")
        return [read_bundle(signature)]
    default = sidecar(path)
    return [read_bundle(default)] if default.is_file() else []


def sign(crate: Crate, key: str | os.PathLike[str]) -> bytes:
    """Sign ``crate`` with an EC private key; returns the sigstore bundle (JSON bytes)."""
    model_signing = _model_signing()
    private = load_private(key)
    from cryptography.hazmat.primitives.asymmetric import ec

    if not isinstance(private, ec.EllipticCurvePrivateKey):
        raise TrustError(
            f"{Path(key).name} is not an EC key; model-signing signs with EC keys "
            "(make one with `modelcrate keys generate --type ec`)"
        )
    with _directory_form(crate) as (root, scratch):
        out = scratch / "bundle.sig"
        config = model_signing.signing.Config()
        config.use_elliptic_key_signer(
            private_key=key, password=os.environ.get("MODELCRATE_KEY_PASSPHRASE")
        )
        config.sign(root, out)
        bundle = out.read_bytes()
    check_bundle(crate, bundle)
    if signer_id(bundle) != key_id(private.public_key()):
        raise TrustError("model-signing wrote a bundle whose key hint is not the signing key")
    return bundle


def sign_local(path: str | os.PathLike[str], key: str | os.PathLike[str]) -> SignatureInfo:
    """Sign the crate at ``path`` (verified first) and write ``<path>.sig``."""
    crate = Crate.open(path)
    crate.verify()
    bundle = sign(crate, key)
    sidecar(path).write_bytes(bundle)
    return SignatureInfo(crate.manifest.ref, crate.digest, signer_id(bundle) or "")


def signer_id(bundle: bytes) -> str | None:
    """The key id a bundle says it was signed with (its public-key hint), if any."""
    hint = _parse(bundle).get("verificationMaterial", {}).get("publicKey", {}).get("hint")
    return hint if isinstance(hint, str) else None


def check_bundle(crate: Crate, bundle: bytes) -> None:
    """Raise SignatureError unless ``bundle`` lists exactly this crate's files and digests."""
    statement = _statement(bundle)
    predicate = statement.get("predicate") or {}
    serialization = predicate.get("serialization") or {}
    if serialization.get("method") != "files" or serialization.get("hash_type") != "sha256":
        raise SignatureError(
            "the signature hashes the model in a way modelcrate does not check "
            f"(method {serialization.get('method')!r}, hash {serialization.get('hash_type')!r}); "
            "sign per file with sha256"
        )
    signed: dict[str, str] = {}
    for resource in predicate.get("resources") or []:
        if not isinstance(resource, dict) or resource.get("algorithm") != "sha256":
            raise SignatureError("the signature lists a resource without a sha256 digest")
        signed[str(resource.get("name"))] = str(resource.get("digest"))
    expected = {entry.path: entry.sha256 for entry in crate.manifest.files}
    expected[MANIFEST_NAME] = hashlib.sha256(crate.manifest.file_bytes()).hexdigest()
    missing = sorted(set(expected) - set(signed))
    extra = sorted(set(signed) - set(expected))
    changed = sorted(p for p in set(expected) & set(signed) if expected[p] != signed[p])
    if missing or extra or changed:
        parts = [
            f"not signed: {missing}" if missing else "",
            f"signed but not in the crate: {extra}" if extra else "",
            f"different from what was signed: {changed}" if changed else "",
        ]
        raise SignatureError(
            f"the signature is not for {crate.manifest.ref}: " + "; ".join(p for p in parts if p)
        )


def verify(crate: Crate, bundles: Sequence[bytes], keys: TrustedKeys) -> str:
    """Return the id of a trusted key that signed ``crate``; else raise SignatureError."""
    ref = crate.manifest.ref
    if not keys:
        raise SignatureError(
            f"cannot check {ref}'s signature: no trusted keys (pass --trust KEY.pub or DIR, "
            "or add keys with `modelcrate policy set --trust ...`)"
        )
    if not bundles:
        raise SignatureError(
            f"{ref} is not signed; a signature by a trusted key is required "
            "(sign it with `modelcrate sign ... --key KEY`)"
        )
    reasons = []
    with _directory_form(crate) as (root, scratch):
        for number, bundle in enumerate(bundles):
            try:
                check_bundle(crate, bundle)
                kid = signer_id(bundle)
                if kid is None or kid not in keys.pems:
                    reasons.append(f"signed by key {str(kid)[:16]}, which is not trusted")
                    continue
                _library_verify(root, scratch, number, bundle, keys.pems[kid])
                return kid
            except SignatureError as exc:
                reasons.append(str(exc))
    raise SignatureError(f"{ref}: no valid signature by a trusted key ({'; '.join(reasons)})")


def enforce(crate: Crate, bundles: Sequence[bytes], policy: Policy) -> str | None:
    """Check ``crate`` against ``policy``: the signer's key id, or None if none is required."""
    if not policy.require_signature:
        return None
    return verify(crate, bundles, policy.keys)


def sidecar(path: str | os.PathLike[str]) -> Path:
    """Where the signature of a local crate lives: ``x.crate`` -> ``x.crate.sig``."""
    path = Path(path)
    return path.with_name(path.name.rstrip("/") + SIGNATURE_SUFFIX)


def read_bundle(path: str | os.PathLike[str]) -> bytes:
    path = Path(path)
    with path.open("rb") as handle:
        data = handle.read(MAX_BUNDLE_BYTES + 1)
    if len(data) > MAX_BUNDLE_BYTES:
        raise SignatureError(f"{path.name} is larger than a signature bundle can be")
    _parse(data)
    return data


def _library_verify(root: Path, scratch: Path, number: int, bundle: bytes, pem: bytes) -> None:
    model_signing = _model_signing()
    bundle_path, key_path = scratch / f"bundle-{number}.sig", scratch / f"key-{number}.pub"
    bundle_path.write_bytes(bundle)
    key_path.write_bytes(pem)
    config = model_signing.verifying.Config().use_elliptic_key_verifier(public_key=key_path)
    try:
        config.verify(root, bundle_path)
    except Exception as exc:  # model-signing raises ValueError and parser errors alike
        text = str(exc).strip().splitlines()
        raise SignatureError(
            f"model-signing rejects the signature: {text[0][:300] if text else type(exc).__name__}"
        ) from None


@contextlib.contextmanager
def _directory_form(crate: Crate) -> Iterator[tuple[Path, Path]]:
    """A temporary directory form of ``crate``: hard links to its local copy (a crate
    directory, the registry's file cache) where there is one; model-signing re-hashes
    every file either way. An encrypted crate's files are signed as stored (ciphertext)."""
    scratch = Path(tempfile.mkdtemp(prefix="modelcrate-sign-"))
    root = scratch / f"{crate.name}-{crate.version}"
    local = crate.localize()
    try:
        root.mkdir()
        (root / MANIFEST_NAME).write_bytes(crate.manifest.file_bytes())
        for entry in crate.manifest.files:
            dest = root / entry.path
            dest.parent.mkdir(parents=True, exist_ok=True)
            if local is not None:
                try:
                    os.link(local.path(entry.path), dest)
                    continue
                except OSError:  # another filesystem: copy instead
                    pass
            with crate.source.open(entry.path) as stream, dest.open("wb") as out:
                shutil.copyfileobj(stream, out, 1024 * 1024)
        yield root, scratch
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _parse(bundle: bytes) -> dict[str, Any]:
    if len(bundle) > MAX_BUNDLE_BYTES:
        raise SignatureError("the signature bundle is too large")
    try:
        value = json.loads(bundle)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise SignatureError("the signature is not a sigstore bundle (not JSON)") from None
    if not isinstance(value, dict) or "dsseEnvelope" not in value:
        raise SignatureError("the signature is not a sigstore bundle with a DSSE envelope")
    return value


def _statement(bundle: bytes) -> dict[str, Any]:
    envelope = _parse(bundle)["dsseEnvelope"]
    try:
        payload = base64.b64decode(envelope["payload"], validate=True)
        statement = json.loads(payload)
    except (KeyError, TypeError, binascii.Error, ValueError):
        raise SignatureError("the signature's DSSE payload is not an in-toto statement") from None
    if not isinstance(statement, dict):
        raise SignatureError("the signature's DSSE payload is not an in-toto statement")
    return statement


def _model_signing() -> Any:
    try:
        import model_signing
    except ImportError:
        raise RuntimeUnavailable(
            "signing needs OpenSSF model-signing: pip install 'modelcrate[trust]'"
        ) from None
    return model_signing
