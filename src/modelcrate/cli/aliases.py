"""``alias set|history|delete`` and ``rollback``."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from modelcrate.cli.options import JsonOption, RegistryOption, local_registry
from modelcrate.cli.output import console, print_json
from modelcrate.display import when

alias_app = typer.Typer(help="Movable names for versions (prod, staging, …).", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(alias_app, name="alias")
    app.command("rollback")(rollback_command)


AllowBreaking = Annotated[
    bool,
    typer.Option(
        "--allow-breaking",
        help="Move even if the target's signature breaks the current target's clients "
        "(recorded in the audit log).",
    ),
]


@alias_app.command("set")
def set_command(
    name: str,
    alias: str,
    version: str,
    registry: RegistryOption = None,
    allow_breaking: AllowBreaking = False,
) -> None:
    """Point NAME@ALIAS at VERSION (refused if VERSION breaks the current target's clients)."""
    from modelcrate.registry import open_registry

    target = open_registry(registry)
    try:
        event = target.set_alias(name, alias, version, allow_breaking=allow_breaking)
    finally:
        target.close()
    before = f" (was {event.previous})" if event.previous else ""
    console.print(f"{name}@{alias} → {event.version}{before}")


@alias_app.command("history")
def history_command(
    name: str, alias: str, registry: RegistryOption = None, as_json: JsonOption = False
) -> None:
    """Every move of NAME@ALIAS, oldest first."""
    events = local_registry(registry).alias_history(name, alias)
    if as_json:
        print_json([vars(e) for e in events])
        return
    table = Table(title=f"{name}@{alias}")
    for column in ("when", "action", "from", "to"):
        table.add_column(column)
    for e in events:
        table.add_row(when(e.at), e.action, e.previous or "", e.version or "")
    console.print(table)


@alias_app.command("delete")
def delete_command(name: str, alias: str, registry: RegistryOption = None) -> None:
    """Remove NAME@ALIAS (the move is recorded in its history)."""
    local_registry(registry).delete_alias(name, alias)
    console.print(f"deleted alias {name}@{alias}")


def rollback_command(
    name: str, alias: str, registry: RegistryOption = None, allow_breaking: AllowBreaking = False
) -> None:
    """Move NAME@ALIAS back to its previous target (refused if that breaks current clients)."""
    event = local_registry(registry).rollback(name, alias, allow_breaking=allow_breaking)
    console.print(f"{name}@{alias} → {event.version} (was {event.previous})")
