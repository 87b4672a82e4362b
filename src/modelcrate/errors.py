"""The one exception tree of modelcrate.

    ModelcrateError                     exit code 1 in the CLI
    ├── UsageError                      the caller asked for something malformed (exit code 2)
    │   ├── BadReference                a model reference does not parse
    │   └── NotAuthorized               no known bearer token (HTTP 401)
    │       └── Forbidden               the token lacks the scope, or the route needs one (403)
    ├── CrateFormatError                a crate or one of its files is not what the format allows
    │   ├── UnsafeContentError          a path, link, pickle or archive trick was refused
    │   └── UnsupportedSchemaError      the manifest's schema version is newer than this release
    ├── IntegrityError                  bytes do not match the size or sha256 that was recorded
    ├── RegistryError                   the registry cannot do what was asked
    │   ├── NotFound                    no such model, version, alias or blob
    │   ├── VersionConflict             the version exists with different content
    │   └── BreakingChange              an alias move would break the current target's clients
    ├── TrustError                      a signature or key check failed
    │   ├── SignatureError              unsigned, no trusted signer, or files differ from the signed
    │   └── DecryptionError             no identity, wrong key or passphrase, altered ciphertext
    ├── InputError                      inputs to predict do not match the crate's signature
    │   └── RequestRefused              a request refused for its size, type, host or pace (4xx)
    ├── PackError                       a model could not be packed (export failed, parity too low)
    ├── RuntimeUnavailable              an optional framework (torch, ...) is not installed
    └── ServerError                     a server failed, timed out or cannot be reached (5xx)

Errors inherit a builtin where a caller might reasonably catch that instead
(``NotFound`` is a ``LookupError``, ``InputError`` a ``ValueError``). Messages
name the thing and what was expected; they never carry tracebacks or secrets.

This is also the one mapping between errors and HTTP: each class has a stable
``code`` and an ``http_status``. Servers answer ``{"error": message, "code": code}``
(``error_body``) with that status; clients turn an answer back into the same class
(``from_http``), so a caller catches the same error locally and over the network.
"""

from __future__ import annotations


class ModelcrateError(Exception):
    """Root of every error modelcrate raises on purpose."""

    exit_code = 1
    code = "error"  # stable: JSON error bodies carry it
    http_status = 500


class UsageError(ModelcrateError):
    """The caller asked for something malformed."""

    exit_code = 2
    code, http_status = "usage", 400


class BadReference(UsageError, ValueError):
    """A model reference (``name@version``) does not parse."""

    code = "bad_reference"


class NotAuthorized(UsageError):
    """No bearer token, or one the server does not know."""

    code, http_status = "unauthorized", 401


class Forbidden(NotAuthorized):
    """The token lacks the scope a route needs, or the route needs a token at all."""

    code, http_status = "forbidden", 403


class CrateFormatError(ModelcrateError):
    """A crate or one of its files is not what the crate format allows."""

    code, http_status = "crate_format", 400


class UnsafeContentError(CrateFormatError):
    """A path, link, device, pickle or archive trick was refused."""

    code = "unsafe_content"


class UnsupportedSchemaError(CrateFormatError):
    """The manifest was written by a newer modelcrate than this one."""

    code = "unsupported_schema"


class IntegrityError(ModelcrateError):
    """Bytes do not match the size or sha256 recorded for them."""

    code, http_status = "integrity", 400


class RegistryError(ModelcrateError):
    """The registry cannot do what was asked."""

    code = "registry"


class NotFound(RegistryError, LookupError):
    """No such model, version, alias or blob."""

    code, http_status = "not_found", 404


class VersionConflict(RegistryError):
    """The version already exists with different content; versions are immutable."""

    code, http_status = "conflict", 409


class BreakingChange(RegistryError):
    """An alias move whose target changes the signature its clients call (409)."""

    code, http_status = "breaking_change", 409


class TrustError(ModelcrateError):
    """A signature, key or encryption check failed."""

    code, http_status = "trust", 403


class SignatureError(TrustError):
    """The crate is unsigned, signed by no trusted key, or its files differ from what was signed."""

    code = "signature"


class DecryptionError(TrustError):
    """An encrypted crate cannot be decrypted: no identity, wrong key/passphrase, or tampering."""

    code = "decryption"


class InputError(ModelcrateError, ValueError):
    """Inputs given to predict do not match the crate's signature."""

    code, http_status = "bad_input", 400


class PackError(ModelcrateError):
    """A model could not be packed (export failed, parity check failed, bad options)."""

    code = "pack"


class RuntimeUnavailable(ModelcrateError, ImportError):
    """An optional framework is not installed; the message says which extra to install."""

    code = "runtime_unavailable"


class RequestRefused(InputError):
    """A request refused before it reached a model: too large, wrong content type, unknown
    Host name, sent too slowly. Its HTTP status is the one the server answered."""

    code = "refused"

    def __init__(self, message: str, *, status: int = 400, code: str | None = None) -> None:
        super().__init__(message)
        self.http_status = status
        self.code = code or REFUSALS.get(status, "refused")


class ServerError(ModelcrateError):
    """A server failed, timed out, is overloaded or cannot be reached."""

    code = "server"

    def __init__(self, message: str, *, status: int = 500, code: str | None = None) -> None:
        super().__init__(message)
        self.http_status = status
        self.code = code or REFUSALS.get(status, "server")


REFUSALS = {
    408: "timeout",
    413: "too_large",
    415: "unsupported_media_type",
    421: "misdirected",
    431: "headers_too_large",
    503: "unavailable",
    504: "timeout",
}


def status_of(exc: BaseException) -> int:
    """The HTTP status for any error raised while answering a request (500 for bugs)."""
    return exc.http_status if isinstance(exc, ModelcrateError) else 500


def error_body(exc: ModelcrateError) -> dict[str, str]:
    """The JSON body a server answers for ``exc`` (with status ``exc.http_status``)."""
    return {"error": str(exc), "code": exc.code}


def from_http(status: int, body: object, where: str) -> ModelcrateError:
    """The error a server's answer stands for: by its ``code`` when it sent one (a
    modelcrate server always does), else by its status (any other OIP server)."""
    message = str(body.get("error", "")) if isinstance(body, dict) else ""
    code = body.get("code") if isinstance(body, dict) else None
    fallback = {401: "missing or unknown bearer token", 403: "the token lacks a scope"}
    text = f"{where}: {message or fallback.get(status, f'HTTP {status}')}"
    cls = _by_code().get(code) if isinstance(code, str) else None
    if cls is None:
        cls = _BY_STATUS.get(status)
    if cls is None or cls in (RequestRefused, ServerError):
        kind = RequestRefused if status < 500 else ServerError
        return kind(text, status=status, code=code if isinstance(code, str) else None)
    return cls(text)


_BY_STATUS: dict[int, type[ModelcrateError]] = {
    400: InputError,
    401: NotAuthorized,
    403: Forbidden,
    404: NotFound,
    409: VersionConflict,
}


def _by_code() -> dict[str, type[ModelcrateError]]:
    found: dict[str, type[ModelcrateError]] = {}
    pending: list[type[ModelcrateError]] = [ModelcrateError]
    while pending:
        cls = pending.pop()
        found.setdefault(cls.code, cls)
        pending.extend(cls.__subclasses__())
    return found


def first_line(exc: BaseException | str) -> str:
    """The first line of a foreign library's error, capped: for messages that name it."""
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__
