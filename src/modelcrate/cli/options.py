"""Options shared by several commands, declared once."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from modelcrate.registry.api import Registry


RegistryOption = Annotated[
    str | None,
    typer.Option(
        "--registry",
        "-r",
        envvar="MODELCRATE_REGISTRY",
        help="Registry directory (default: $MODELCRATE_HOME, then ~/.modelcrate).",
        show_default=False,
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def local_registry(location: str | None) -> Registry:
    """The embedded or PostgreSQL registry the command works on (``--registry``)."""
    from modelcrate.registry.api import Registry

    return Registry.open(location)


TrustOption = Annotated[
    list[str] | None,
    typer.Option(
        "--trust",
        help="Public key (.pub) or directory of keys whose signature is required (repeatable).",
        show_default=False,
    ),
]
IdentityOption = Annotated[
    str | None,
    typer.Option(
        "--identity",
        help="Private key that decrypts an encrypted crate (else $MODELCRATE_PASSPHRASE).",
        show_default=False,
    ),
]
