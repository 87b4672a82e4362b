"""Encryption at rest: AES-256-GCM per file in chunks, one random data key per crate.

Scheme ``aes-256-gcm-chunked-v1``, built from ``cryptography``'s primitives:

- a random 32-byte data key per encrypted crate, wrapped for each recipient:
  ``ec`` / ``x25519`` by ephemeral-static ECDH + HKDF-SHA256 + AES-GCM,
  ``rsa-oaep`` by RSA-OAEP-SHA256, ``scrypt`` by a passphrase (n = 2**log_n,
  r = 8, p = 1) + AES-GCM;
- per file, a key derived from the data key with HKDF and a random salt;
- each chunk of ``chunk_size`` plaintext bytes is sealed on its own, with the
  chunk index as nonce and associated data binding the crate (name@version),
  the file's path and plaintext size, the chunk index and a last-chunk flag, so
  renamed, reordered, dropped or appended chunks and files all fail to open.

The manifest lists the ciphertext's size and sha256 (integrity is checked before
anything is decrypted) and, under ``encryption``, each file's plaintext size and
salt and the wrapped keys. Decryption happens in memory; plaintext never
touches the disk. The model card stays readable.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
from msgspec.structs import replace

from modelcrate.crate import Crate, DirectorySource, check_path, temporary_directory
from modelcrate.errors import DecryptionError, UsageError
from modelcrate.manifest import (
    MANIFEST_NAME,
    EncryptedFile,
    Encryption,
    FileEntry,
    Lineage,
    Manifest,
    Parent,
    WrappedKey,
    canonical_json,
)
from modelcrate.refs import check_version
from modelcrate.trust.keys import PrivateKey, PublicKey, key_id, load_private, load_public

CHUNK_SIZE = 1024 * 1024
TAG = 16
SCRYPT_LOG_N = 15
_WRAP_INFO = b"modelcrate wrap v1"
_FILE_INFO = b"modelcrate file key v1"


def encrypt(
    crate: Crate,
    *,
    recipients: Sequence[str | os.PathLike[str]] = (),
    passphrase: str | None = None,
    version: str | None = None,
    chunk_size: int = CHUNK_SIZE,
) -> Crate:
    """A new crate (``version``, default ``<version>-enc``) whose files are encrypted for the
    recipients' public keys and/or a passphrase. The model card stays in the clear."""
    if not recipients and not passphrase:
        raise UsageError("encrypt needs at least one --recipient public key or a passphrase")
    source = crate.manifest
    if source.encryption is not None:
        raise UsageError(f"{source.ref} is already encrypted")
    new_version = check_version(version or f"{source.version}-enc")
    ref = f"{source.name}@{new_version}"
    data_key = AESGCM.generate_key(bit_length=256)
    wrapped = [_wrap_for(load_public(r), data_key) for r in recipients]
    if passphrase:
        wrapped.append(_wrap_with_passphrase(passphrase, data_key))
    target = DirectorySource(Path())
    root = target.root = temporary_directory(target, "modelcrate-enc-")
    entries, encrypted = [], []
    for entry in source.files:
        plaintext = crate.read_bytes(entry.path)
        dest = root / check_path(entry.path)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if entry.path == source.model_card:
            dest.write_bytes(plaintext)
            entries.append(entry)
            continue
        salt = os.urandom(16)
        sealed = _seal(data_key, salt, ref, entry.path, plaintext, chunk_size)
        dest.write_bytes(sealed)
        entries.append(
            FileEntry(path=entry.path, size=len(sealed), sha256=hashlib.sha256(sealed).hexdigest())
        )
        encrypted.append(EncryptedFile(path=entry.path, size=len(plaintext), salt=_b64(salt)))
    manifest = replace(
        source,
        version=new_version,
        files=entries,
        encryption=Encryption(chunk_size=chunk_size, recipients=wrapped, files=encrypted),
        lineage=Lineage(
            parents=[Parent(digest=source.digest, ref=source.ref)],
            operation="encrypt",
            parameters={"scheme": "aes-256-gcm-chunked-v1", "recipients": len(wrapped)},
        ),
    )  # replacing checks the new manifest, as building one does
    (root / MANIFEST_NAME).write_bytes(manifest.file_bytes())
    return Crate(manifest, target)


PASSPHRASE_ENV = "MODELCRATE_PASSPHRASE"


def unlock(
    crate: Crate,
    identity: str | os.PathLike[str] | None = None,
    *,
    passphrase: str | None = None,
) -> Crate:
    """``crate`` with its data key unwrapped (by a private key file, else ``passphrase``, else
    ``$MODELCRATE_PASSPHRASE``), so ``read_bytes`` returns plaintext, in memory. A clear crate
    is returned as it is."""
    if not crate.encrypted:
        return crate
    secret = passphrase or os.environ.get(PASSPHRASE_ENV)
    decryptor = Decryptor.unlock(crate.manifest, identity=identity, passphrase=secret)
    return crate.with_decryptor(decryptor)


class Decryptor:
    """Opens the encrypted files of one crate with its unwrapped data key."""

    def __init__(self, manifest: Manifest, data_key: bytes) -> None:
        self.manifest = manifest
        self.data_key = data_key

    @classmethod
    def unlock(
        cls,
        manifest: Manifest,
        *,
        identity: str | os.PathLike[str] | None = None,
        passphrase: str | None = None,
    ) -> Decryptor:
        """Unwrap the data key with a private key file or a passphrase."""
        encryption = manifest.encryption
        if encryption is None:
            raise UsageError(f"{manifest.ref} is not encrypted")
        _check_listing(manifest, encryption)
        if identity is not None:
            return cls(manifest, _unwrap_with_key(manifest, load_private(identity)))
        if passphrase:
            return cls(manifest, _unwrap_with_passphrase(manifest, passphrase))
        raise DecryptionError(
            f"{manifest.ref} is encrypted; pass --identity KEY (a private key it was encrypted "
            "for) or set MODELCRATE_PASSPHRASE"
        )

    def decrypt(self, path: str, sealed: bytes) -> bytes:
        """Plaintext of ``path`` from its (already integrity-checked) ciphertext."""
        info = self.manifest.encrypted(path)
        encryption = self.manifest.encryption
        if info is None or encryption is None:
            return sealed
        return _open(self.data_key, info, self.manifest.ref, sealed, encryption.chunk_size)


# -- files -------------------------------------------------------------------


def _file_key(data_key: bytes, salt: bytes) -> AESGCM:
    derived = HKDF(hashes.SHA256(), 32, salt, _FILE_INFO).derive(data_key)
    return AESGCM(derived)


def _chunk_aad(ref: str, path: str, size: int, index: int, last: bool) -> bytes:
    return canonical_json({"crate": ref, "path": path, "size": size, "chunk": index, "last": last})


def _chunk_count(size: int, chunk_size: int) -> int:
    return max(1, -(-size // chunk_size))


def _seal(data_key: bytes, salt: bytes, ref: str, path: str, data: bytes, chunk: int) -> bytes:
    aead, count = _file_key(data_key, salt), _chunk_count(len(data), chunk)
    out = bytearray()
    for index in range(count):
        piece = data[index * chunk : (index + 1) * chunk]
        aad = _chunk_aad(ref, path, len(data), index, index == count - 1)
        out += aead.encrypt(index.to_bytes(12, "big"), piece, aad)
    return bytes(out)


def _open(data_key: bytes, info: EncryptedFile, ref: str, sealed: bytes, chunk: int) -> bytes:
    count = _chunk_count(info.size, chunk)
    if len(sealed) != info.size + TAG * count:
        raise DecryptionError(
            f"{ref}: {info.path} has {len(sealed)} encrypted bytes; {info.size} plaintext bytes "
            "need a different length (truncated or padded ciphertext)"
        )
    aead = _file_key(data_key, _unb64(info.salt))
    out = bytearray()
    for index in range(count):
        start = index * (chunk + TAG)
        piece = sealed[start : start + chunk + TAG]
        aad = _chunk_aad(ref, info.path, info.size, index, index == count - 1)
        try:
            out += aead.decrypt(index.to_bytes(12, "big"), piece, aad)
        except InvalidTag:
            raise DecryptionError(
                f"{ref}: {info.path} chunk {index} fails authentication (the ciphertext was "
                "altered, reordered, truncated or moved from another file)"
            ) from None
    return bytes(out)


def _check_listing(manifest: Manifest, encryption: Encryption) -> None:
    listed = {f.path for f in manifest.files}
    paths = [f.path for f in encryption.files]
    if len(set(paths)) != len(paths) or not set(paths) <= listed:
        raise DecryptionError(
            f"{manifest.ref}: the encryption section names files the crate does not list once"
        )


# -- key wrapping ------------------------------------------------------------


def _wrap_for(public: PublicKey, data_key: bytes) -> WrappedKey:
    if isinstance(public, rsa.RSAPublicKey):
        oaep = padding.OAEP(padding.MGF1(hashes.SHA256()), hashes.SHA256(), None)
        return WrappedKey(
            kind="rsa-oaep", key_id=key_id(public), wrapped=_b64(public.encrypt(data_key, oaep))
        )
    der = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    kind: Literal["ec", "x25519"]
    if isinstance(public, x25519.X25519PublicKey):
        x_ephemeral = x25519.X25519PrivateKey.generate()
        shared = x_ephemeral.exchange(public)
        ephemeral_der = x_ephemeral.public_key().public_bytes(*der)
        kind = "x25519"
    else:
        ec_ephemeral = ec.generate_private_key(public.curve)
        shared = ec_ephemeral.exchange(ec.ECDH(), public)
        ephemeral_der = ec_ephemeral.public_key().public_bytes(*der)
        kind = "ec"
    wrap_key = _wrap_key(shared, ephemeral_der, public)
    return WrappedKey(
        kind=kind,
        key_id=key_id(public),
        ephemeral=_b64(ephemeral_der),
        wrapped=_b64(_aead_wrap(wrap_key, data_key)),
    )


def _wrap_key(shared: bytes, ephemeral_der: bytes, recipient: PublicKey) -> bytes:
    recipient_der = recipient.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    info = _WRAP_INFO + hashlib.sha256(ephemeral_der + recipient_der).digest()
    return HKDF(hashes.SHA256(), 32, None, info).derive(shared)


def _wrap_with_passphrase(passphrase: str, data_key: bytes) -> WrappedKey:
    salt = os.urandom(16)
    key = Scrypt(salt, 32, 2**SCRYPT_LOG_N, 8, 1).derive(passphrase.encode())
    return WrappedKey(
        kind="scrypt",
        salt=_b64(salt),
        log_n=SCRYPT_LOG_N,
        wrapped=_b64(_aead_wrap(key, data_key)),
    )


def _aead_wrap(key: bytes, data_key: bytes) -> bytes:
    nonce = os.urandom(12)
    return nonce + AESGCM(key).encrypt(nonce, data_key, _WRAP_INFO)


def _aead_unwrap(key: bytes, blob: bytes) -> bytes:
    return AESGCM(key).decrypt(blob[:12], blob[12:], _WRAP_INFO)


def _unwrap_with_key(manifest: Manifest, private: PrivateKey) -> bytes:
    assert manifest.encryption is not None
    kid = key_id(private.public_key())
    mine = [r for r in manifest.encryption.recipients if r.key_id == kid]
    if not mine:
        known = ", ".join(r.key_id[:16] for r in manifest.encryption.recipients if r.key_id)
        raise DecryptionError(
            f"{manifest.ref} is not encrypted for this key ({kid[:16]}); "
            f"it is encrypted for: {known or 'a passphrase only'}"
        )
    recipient = mine[0]
    try:
        if isinstance(private, rsa.RSAPrivateKey) and recipient.kind == "rsa-oaep":
            oaep = padding.OAEP(padding.MGF1(hashes.SHA256()), hashes.SHA256(), None)
            return private.decrypt(_unb64(recipient.wrapped), oaep)
        if recipient.ephemeral is None:
            raise DecryptionError(f"{manifest.ref}: the wrapped key has no ephemeral public key")
        ephemeral = serialization.load_der_public_key(_unb64(recipient.ephemeral))
        if isinstance(private, x25519.X25519PrivateKey) and isinstance(
            ephemeral, x25519.X25519PublicKey
        ):
            shared = private.exchange(ephemeral)
        elif isinstance(private, ec.EllipticCurvePrivateKey) and isinstance(
            ephemeral, ec.EllipticCurvePublicKey
        ):
            shared = private.exchange(ec.ECDH(), ephemeral)
        else:
            raise DecryptionError(f"{manifest.ref}: the wrapped key does not fit this key's type")
        wrap_key = _wrap_key(shared, _unb64(recipient.ephemeral), private.public_key())
        return _aead_unwrap(wrap_key, _unb64(recipient.wrapped))
    except (InvalidTag, ValueError):
        raise DecryptionError(
            f"{manifest.ref}: the data key wrapped for {kid[:16]} does not open with this key "
            "(wrong key, or the wrapped key was altered)"
        ) from None


def _unwrap_with_passphrase(manifest: Manifest, passphrase: str) -> bytes:
    assert manifest.encryption is not None
    for recipient in manifest.encryption.recipients:
        if recipient.kind != "scrypt" or recipient.salt is None or recipient.log_n is None:
            continue
        key = Scrypt(_unb64(recipient.salt), 32, 2**recipient.log_n, 8, 1).derive(
            passphrase.encode()
        )
        try:
            return _aead_unwrap(key, _unb64(recipient.wrapped))
        except InvalidTag:
            continue
    raise DecryptionError(f"{manifest.ref}: wrong passphrase (or no passphrase recipient)")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: str) -> bytes:
    return base64.b64decode(text)
