"""Key pairs: generate, load, and name them by id; trusted-key sets read from files.

A key's id is the sha256 (hex) of its public key in PEM SubjectPublicKeyInfo
form, the same value OpenSSF model-signing writes as the key hint of a
signature bundle, so a bundle names the key that can check it.

Kinds: ``ec`` (P-256; signs, and can receive encrypted crates), ``x25519`` and
``rsa`` (3072 bits; receive encrypted crates). A private key file is created
with mode 0600 and never overwritten; it is encrypted with a passphrase when
``MODELCRATE_KEY_PASSPHRASE`` is set.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeAlias

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa, x25519

from modelcrate.errors import TrustError, UsageError

KeyKind = Literal["ec", "x25519", "rsa"]
PublicKey: TypeAlias = ec.EllipticCurvePublicKey | x25519.X25519PublicKey | rsa.RSAPublicKey
PrivateKey: TypeAlias = ec.EllipticCurvePrivateKey | x25519.X25519PrivateKey | rsa.RSAPrivateKey
PASSPHRASE_ENV = "MODELCRATE_KEY_PASSPHRASE"
MAX_KEY_FILE_BYTES = 64 * 1024


def generate(out: str | os.PathLike[str], kind: KeyKind = "ec") -> tuple[Path, Path]:
    """Write ``OUT.key`` (private, 0600) and ``OUT.pub``; returns both paths."""
    private: PrivateKey
    if kind == "ec":
        private = ec.generate_private_key(ec.SECP256R1())
    elif kind == "x25519":
        private = x25519.X25519PrivateKey.generate()
    elif kind == "rsa":
        private = rsa.generate_private_key(public_exponent=65537, key_size=3072)
    else:
        raise UsageError(f"key type {kind!r}: expected ec, x25519 or rsa")
    base = Path(out)
    key_path, pub_path = base.with_name(base.name + ".key"), base.with_name(base.name + ".pub")
    for path in (key_path, pub_path):
        if path.exists():
            raise UsageError(f"{path} exists; refusing to overwrite a key")
    passphrase = os.environ.get(PASSPHRASE_ENV)
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase.encode())
        if passphrase
        else serialization.NoEncryption()
    )
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )
    base.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    pub_path.write_bytes(public_pem(private.public_key()))
    return key_path, pub_path


def public_pem(key: PublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def key_id(key: PublicKey) -> str:
    """sha256 hex of the PEM public key: the id model-signing records as the bundle's key hint."""
    return hashlib.sha256(public_pem(key)).hexdigest()


def load_public(path: str | os.PathLike[str]) -> PublicKey:
    data = _read_key_file(Path(path))
    return parse_public(data, Path(path).name)


def parse_public(data: bytes, where: str) -> PublicKey:
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm):
        raise TrustError(f"{where} is not a PEM public key") from None
    if not isinstance(key, PublicKey):
        raise TrustError(f"{where}: {type(key).__name__} keys are not supported (ec, x25519, rsa)")
    return key


def load_private(path: str | os.PathLike[str]) -> PrivateKey:
    """Load a PEM private key; a passphrase comes from ``MODELCRATE_KEY_PASSPHRASE``."""
    path = Path(path)
    data = _read_key_file(path)
    passphrase = os.environ.get(PASSPHRASE_ENV)
    try:
        key = serialization.load_pem_private_key(
            data, password=passphrase.encode() if passphrase else None
        )
    except TypeError:
        raise TrustError(
            f"{path.name} is encrypted; set {PASSPHRASE_ENV} to its passphrase"
            if not passphrase
            else f"{path.name} is not encrypted; unset {PASSPHRASE_ENV}"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise TrustError(
            f"{path.name} is not a PEM private key (or the passphrase is wrong)"
        ) from None
    if not isinstance(key, PrivateKey):
        raise TrustError(f"{path.name}: {type(key).__name__} keys are not supported")
    return key


def _read_key_file(path: Path) -> bytes:
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_KEY_FILE_BYTES + 1)
    except FileNotFoundError:
        raise UsageError(f"{path}: no such key file") from None
    except IsADirectoryError:
        raise UsageError(f"{path} is a directory, not a key file") from None
    if len(data) > MAX_KEY_FILE_BYTES:
        raise TrustError(f"{path.name} is too large to be a key file")
    return data


@dataclass(frozen=True)
class TrustedKeys:
    """Public keys whose signatures are accepted, by key id (PEM bytes and a display name)."""

    pems: Mapping[str, bytes] = field(default_factory=dict)
    names: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_paths(cls, paths: Iterable[str | os.PathLike[str]]) -> TrustedKeys:
        """Keys from ``.pub`` files, or from every ``*.pub`` in the directories given."""
        pems: dict[str, bytes] = {}
        names: dict[str, str] = {}
        for given in paths:
            path = Path(given)
            files = sorted(path.glob("*.pub")) if path.is_dir() else [path]
            if path.is_dir() and not files:
                raise UsageError(f"{path}: no *.pub files to trust in this directory")
            for file in files:
                key = load_public(file)
                pems[key_id(key)] = public_pem(key)
                names[key_id(key)] = file.stem
        return cls(pems, names)

    def __bool__(self) -> bool:
        return bool(self.pems)

    def __or__(self, other: TrustedKeys) -> TrustedKeys:
        return TrustedKeys({**self.pems, **other.pems}, {**self.names, **other.names})

    def describe(self, kid: str) -> str:
        name = self.names.get(kid)
        return f"{name} ({kid[:16]})" if name else kid[:16]
