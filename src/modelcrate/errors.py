"""The one exception tree of modelcrate.

    ModelcrateError                     exit code 1 in the CLI
    ├── UsageError                      the caller asked for something malformed (exit code 2)
    │   └── BadReference                a model reference does not parse
    ├── CrateFormatError                a crate or one of its files is not what the format allows
    │   ├── UnsafeContentError          a path, link, pickle or archive trick was refused
    │   └── UnsupportedSchemaError      the manifest's schema version is newer than this release
    ├── IntegrityError                  bytes do not match the size or sha256 that was recorded
    ├── RegistryError                   the registry cannot do what was asked
    │   ├── NotFound                    no such model, version, alias or blob
    │   └── VersionConflict             the version exists with different content
    ├── TrustError                      a signature or key check failed
    │   ├── SignatureError              unsigned, no trusted signer, or files differ from the signed
    │   └── DecryptionError             no identity, wrong key or passphrase, altered ciphertext
    ├── InputError                      inputs to predict do not match the crate's signature
    ├── PackError                       a model could not be packed (export failed, parity too low)
    └── RuntimeUnavailable              an optional framework (torch, ...) is not installed

Errors inherit a builtin where a caller might reasonably catch that instead
(``NotFound`` is a ``LookupError``, ``InputError`` a ``ValueError``). Messages
name the thing and what was expected; they never carry tracebacks or secrets.
"""

from __future__ import annotations


class ModelcrateError(Exception):
    """Root of every error modelcrate raises on purpose."""

    exit_code = 1


class UsageError(ModelcrateError):
    """The caller asked for something malformed."""

    exit_code = 2


class BadReference(UsageError, ValueError):
    """A model reference (``name@version``) does not parse."""


class CrateFormatError(ModelcrateError):
    """A crate or one of its files is not what the crate format allows."""


class UnsafeContentError(CrateFormatError):
    """A path, link, device, pickle or archive trick was refused."""


class UnsupportedSchemaError(CrateFormatError):
    """The manifest was written by a newer modelcrate than this one."""


class IntegrityError(ModelcrateError):
    """Bytes do not match the size or sha256 recorded for them."""


class RegistryError(ModelcrateError):
    """The registry cannot do what was asked."""


class NotFound(RegistryError, LookupError):
    """No such model, version, alias or blob."""


class VersionConflict(RegistryError):
    """The version already exists with different content; versions are immutable."""


class TrustError(ModelcrateError):
    """A signature, key or encryption check failed."""


class SignatureError(TrustError):
    """The crate is unsigned, signed by no trusted key, or its files differ from what was signed."""


class DecryptionError(TrustError):
    """An encrypted crate cannot be decrypted: no identity, wrong key/passphrase, or tampering."""


class InputError(ModelcrateError, ValueError):
    """Inputs given to predict do not match the crate's signature."""


class PackError(ModelcrateError):
    """A model could not be packed (export failed, parity check failed, bad options)."""


class RuntimeUnavailable(ModelcrateError, ImportError):
    """An optional framework is not installed; the message says which extra to install."""


def first_line(exc: BaseException) -> str:
    """The first line of a foreign library's error, capped: for messages that name it."""
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__
