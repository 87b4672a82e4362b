"""Bearer tokens with scopes, read from a TOML file.

    [[tokens]]
    name = "ci"
    sha256 = "…"          # sha256 hex of the token (preferred), or:
    token = "…"           # the token itself
    scopes = ["infer", "read"]

Scopes: ``infer`` (POST …/infer), ``read`` (metadata, stats, metrics,
repository index, registry reads), ``write`` (registry uploads, publish, alias
moves), ``admin`` (repository load/unload; implies ``write``). Health endpoints
are open. Without a token file every route but ``write`` and ``admin`` ones is
open, and those are refused even on loopback.
"""

from __future__ import annotations

import hashlib
import hmac
import tomllib
from dataclasses import dataclass
from pathlib import Path

from modelcrate.errors import Forbidden, NotAuthorized, UsageError

SCOPES = frozenset({"infer", "read", "write", "admin"})


@dataclass(frozen=True)
class Token:
    name: str
    sha256: bytes
    scopes: frozenset[str]


class Tokens:
    def __init__(self, tokens: list[Token]) -> None:
        self.tokens = tokens

    @property
    def enabled(self) -> bool:
        return bool(self.tokens)

    @classmethod
    def load(cls, path: str | Path | None) -> Tokens:
        if path is None:
            return cls([])
        path = Path(path)
        try:
            document = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise UsageError(f"token file {path}: {exc}") from None
        tokens = []
        for i, entry in enumerate(document.get("tokens", [])):
            tokens.append(_parse(entry, f"token file {path}: tokens[{i}]"))
        if not tokens:
            raise UsageError(f"token file {path} defines no [[tokens]]")
        return cls(tokens)

    def scopes_for(self, authorization: str | None) -> frozenset[str] | None:
        """The scopes of the bearer token in an Authorization header, None if unknown/absent."""
        token = self.token_for(authorization)
        return token.scopes if token is not None else None

    def token_for(self, authorization: str | None) -> Token | None:
        if not authorization or not authorization.lower().startswith("bearer "):
            return None
        presented = hashlib.sha256(authorization[7:].strip().encode()).digest()
        for token in self.tokens:
            if hmac.compare_digest(presented, token.sha256):
                return token
        return None


def authorize(tokens: Tokens, authorization: str | None, scope: str | None) -> None:
    """Raise NotAuthorized (401) or Forbidden (403) unless the bearer token grants ``scope``."""
    if scope is None:
        return
    if not tokens.enabled:
        if scope in ("admin", "write"):
            raise Forbidden(f"{scope} endpoints need a token: start the server with --token-file")
        return
    scopes = tokens.scopes_for(authorization)
    if scopes is None:
        raise NotAuthorized("missing or unknown bearer token")
    if scope not in scopes and not (scope == "write" and "admin" in scopes):
        raise Forbidden(f"this token lacks the {scope!r} scope")


def _parse(entry: object, where: str) -> Token:
    if not isinstance(entry, dict):
        raise UsageError(f"{where} must be a table")
    scopes = entry.get("scopes", [])
    if not isinstance(scopes, list) or not scopes or not set(scopes) <= SCOPES:
        raise UsageError(f"{where}: scopes must be a non-empty subset of {sorted(SCOPES)}")
    if "sha256" in entry:
        try:
            digest = bytes.fromhex(str(entry["sha256"]))
        except ValueError:
            digest = b""
        if len(digest) != 32:
            raise UsageError(f"{where}: sha256 must be 64 hex digits")
    elif isinstance(entry.get("token"), str) and len(entry["token"]) >= 16:
        digest = hashlib.sha256(entry["token"].encode()).digest()
    else:
        raise UsageError(f"{where}: needs sha256 = '<hex>' or token = '<at least 16 characters>'")
    return Token(str(entry.get("name", f"token-{len(scopes)}")), digest, frozenset(scopes))
