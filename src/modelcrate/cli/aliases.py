"""``alias set|history|delete`` and ``rollback``."""

from __future__ import annotations

import click
from rich.table import Table

from modelcrate.cli.options import json_option, local_registry, registry_option
from modelcrate.cli.output import console, print_json
from modelcrate.display import when


@click.group("alias", no_args_is_help=True)
def alias_group() -> None:
    """Movable names for versions (prod, staging, …)."""


def register(group: click.Group) -> None:
    group.add_command(alias_group)
    group.add_command(rollback_command)


allow_breaking_option = click.option(
    "--allow-breaking",
    is_flag=True,
    help="Move even if the target's signature breaks the current target's clients "
    "(recorded in the audit log).",
)


@alias_group.command("set")
@click.argument("name")
@click.argument("alias")
@click.argument("version")
@registry_option
@allow_breaking_option
def set_command(
    name: str, alias: str, version: str, registry: str | None, allow_breaking: bool
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


@alias_group.command("history")
@click.argument("name")
@click.argument("alias")
@registry_option
@json_option
def history_command(name: str, alias: str, registry: str | None, as_json: bool) -> None:
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


@alias_group.command("delete")
@click.argument("name")
@click.argument("alias")
@registry_option
def delete_command(name: str, alias: str, registry: str | None) -> None:
    """Remove NAME@ALIAS (the move is recorded in its history)."""
    local_registry(registry).delete_alias(name, alias)
    console.print(f"deleted alias {name}@{alias}")


@click.command("rollback")
@click.argument("name")
@click.argument("alias")
@registry_option
@allow_breaking_option
def rollback_command(name: str, alias: str, registry: str | None, allow_breaking: bool) -> None:
    """Move NAME@ALIAS back to its previous target (refused if that breaks current clients)."""
    event = local_registry(registry).rollback(name, alias, allow_breaking=allow_breaking)
    console.print(f"{name}@{alias} → {event.version} (was {event.previous})")
