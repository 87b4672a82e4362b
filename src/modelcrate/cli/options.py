"""Options shared by several commands, declared once, and the click types commands use."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from modelcrate.registry.api import Registry

PATH = click.Path(path_type=Path)  # any path (commands say what they need of it)


def listed(_context: click.Context, _param: click.Parameter, value: tuple[Any, ...]) -> Any:
    """A repeatable option's values as a list, or None when it was not given."""
    return list(value) or None


registry_option = click.option(
    "--registry",
    "-r",
    envvar="MODELCRATE_REGISTRY",
    show_envvar=True,
    help="Registry directory (default: $MODELCRATE_HOME, then ~/.modelcrate).",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
trust_option = click.option(
    "--trust",
    multiple=True,
    callback=listed,
    help="Public key (.pub) or directory of keys whose signature is required (repeatable).",
)
identity_option = click.option(
    "--identity",
    help="Private key that decrypts an encrypted crate (else $MODELCRATE_PASSPHRASE).",
)


def local_registry(location: str | None) -> Registry:
    """The embedded or PostgreSQL registry the command works on (``--registry``)."""
    from modelcrate.registry.api import Registry

    return Registry.open(location)
