"""Model references: ``name``, ``name@1.2.0``, ``name@prod``, ``name@sha256:…``.

One parser for the CLI, the Python API and the server. A version starts with a
digit (``1.0.0``, ``1.0.0-int8``); an alias starts with a letter (``prod``,
``staging``); a digest is ``sha256:`` and 64 hex digits. Anything that is an
existing path or ends in ``.crate`` is a local crate, not a registry reference.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from modelcrate.errors import BadReference, UsageError

NAME_PATTERN = r"[a-z0-9][a-z0-9._-]{0,63}"
VERSION_PATTERN = r"[0-9][0-9A-Za-z._+-]{0,63}"
ALIAS_PATTERN = r"[a-z][a-z0-9_-]{0,31}"
DIGEST_PATTERN = r"sha256:[0-9a-f]{64}"

_NAME = re.compile(NAME_PATTERN)
_VERSION = re.compile(VERSION_PATTERN)
_ALIAS = re.compile(ALIAS_PATTERN)
_DIGEST = re.compile(DIGEST_PATTERN)


@dataclass(frozen=True)
class Ref:
    """A parsed registry reference; exactly one of version/alias/digest may be set."""

    name: str
    version: str | None = None
    alias: str | None = None
    digest: str | None = None

    def __str__(self) -> str:
        target = self.version or self.alias or self.digest
        return f"{self.name}@{target}" if target else self.name


def check_name(name: str) -> str:
    """Return ``name`` if it is a valid model name, else raise BadReference."""
    return _check(
        _NAME,
        name,
        f"model name {name!r}: expected lowercase letters, digits, '.', '_' or '-', "
        "starting with a letter or digit, at most 64 characters",
    )


def check_version(version: str) -> str:
    """Return ``version`` if it is a valid version string, else raise BadReference."""
    return _check(
        _VERSION,
        version,
        f"version {version!r}: expected to start with a digit (like 1.0.0 or "
        "1.0.0-int8), then letters, digits, '.', '_', '+' or '-'",
    )


def check_alias(alias: str) -> str:
    """Return ``alias`` if it is a valid alias name, else raise BadReference."""
    return _check(
        _ALIAS,
        alias,
        f"alias {alias!r}: expected to start with a lowercase letter (like prod or "
        "staging), then lowercase letters, digits, '_' or '-'",
    )


def _check(pattern: re.Pattern[str], value: str, message: str) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise BadReference(message)
    return value


def parse_ref(text: str) -> Ref:
    """Parse ``name[@version|@alias|@sha256:…]`` into a Ref."""
    if not isinstance(text, str) or not text:
        raise BadReference("empty model reference: expected name, name@version or name@alias")
    name, sep, target = text.partition("@")
    check_name(name)
    if not sep:
        return Ref(name)
    if _DIGEST.fullmatch(target):
        return Ref(name, digest=target)
    if target[:1].isdigit():
        return Ref(name, version=check_version(target))
    if target.startswith("sha256:"):
        raise BadReference(f"digest {target!r}: expected sha256: followed by 64 hex digits")
    if not target:
        raise BadReference(f"reference {text!r}: nothing after '@'")
    return Ref(name, alias=check_alias(target))


def is_local_crate(text: str) -> bool:
    """True when ``text`` names a crate on disk (a .crate file or a crate directory)."""
    if text.endswith(".crate") or "/" in text or text.startswith("."):
        return True
    path = Path(text)
    return path.is_dir() and (path / "crate.json").is_file()


def is_remote(location: str) -> bool:
    """Whether ``location`` names a modelcrate server (``http(s)://…``)."""
    return location.startswith(("http://", "https://"))


def split_remote(text: str) -> tuple[str, str] | None:
    """``https://host[:port]/name@version`` -> (``https://host[:port]``, ``name@version``)."""
    if not is_remote(text):
        return None
    scheme, _, rest = text.partition("://")
    host, _, ref = rest.partition("/")
    return (f"{scheme}://{host}", ref) if ref else None


RegistryKind = Literal["embedded", "postgresql", "http", "oci"]
_SCHEMES: dict[str, RegistryKind] = {
    "postgresql": "postgresql",
    "postgres": "postgresql",
    "postgresql+psycopg": "postgresql",
    "http": "http",
    "https": "http",
    "oci": "oci",
    "file": "embedded",
}


def registry_kind(location: str) -> RegistryKind:
    """Which backend a registry location names: a directory (or ``file://``) is embedded;
    ``postgresql://``, ``https://`` (a modelcrate server) and ``oci://`` name the others."""
    if "://" not in location:
        return "embedded"
    scheme = location.split("://", 1)[0].lower()
    if scheme not in _SCHEMES:
        raise UsageError(
            f"registry {location!r}: unknown scheme {scheme!r}; use a directory, "
            "postgresql://, https:// or oci://"
        )
    return _SCHEMES[scheme]
