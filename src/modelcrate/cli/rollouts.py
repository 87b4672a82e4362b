"""``rollout start|status|promote|abort``: a candidate takes over an alias step by step."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click
from rich.table import Table

from modelcrate.cli.options import json_option, local_registry, registry_option
from modelcrate.cli.output import console, print_json
from modelcrate.display import when
from modelcrate.errors import NotFound, UsageError

if TYPE_CHECKING:
    from modelcrate.registry.records import Rollout


@click.group("rollout", no_args_is_help=True)
def rollout_group() -> None:
    """Canary and shadow rollouts on an alias, rolled back automatically on an SLO breach."""


def register(group: click.Group) -> None:
    group.add_command(rollout_group)


@rollout_group.command("start")
@click.argument("name")
@click.argument("alias")
@click.argument("version")
@click.option("--canary", type=int, help="Percent of traffic for the first step.")
@click.option("--steps", help="Percentages, like 10,50,100 (ends at 100).")
@click.option("--shadow", is_flag=True, help="Copies of every request only; stable answers.")
@click.option("--interval", default="60s", help="Per step: 60s, 5m, 1h.")
@click.option("--max-error-rate", type=float)
@click.option("--max-p99-ms", type=float)
@click.option("--max-disagreement", type=float)
@click.option("--allow-breaking", is_flag=True, help="Allow a breaking signature change.")
@registry_option
@json_option
def start_command(
    name: str,
    alias: str,
    version: str,
    canary: int | None,
    steps: str | None,
    shadow: bool,
    interval: str,
    max_error_rate: float | None,
    max_p99_ms: float | None,
    max_disagreement: float | None,
    allow_breaking: bool,
    registry: str | None,
    as_json: bool,
) -> None:
    """Start a rollout of VERSION on NAME@ALIAS; servers following the alias carry it out."""
    from modelcrate.publishing import rollout

    plan = None
    if steps is not None:
        try:
            plan = [int(s) for s in steps.split(",") if s.strip()]
        except ValueError:
            raise UsageError(f"--steps {steps}: comma-separated whole percentages") from None
    started = rollout(
        name,
        alias,
        version,
        canary=canary,
        steps=plan,
        shadow=shadow,
        interval=interval,
        max_error_rate=max_error_rate,
        max_p99_ms=max_p99_ms,
        max_disagreement=max_disagreement,
        allow_breaking=allow_breaking,
        registry=local_registry(registry),
    )
    if as_json:
        print_json(vars(started))
        return
    console.print(
        f"rollout {started.id} started: {name}@{alias} {started.stable} → {started.candidate} "
        f"({started.mode}{'' if started.mode == 'shadow' else f', {started.weight}% first'})"
    )


@rollout_group.command("status")
@click.argument("name")
@click.argument("alias")
@registry_option
@json_option
def status_command(name: str, alias: str, registry: str | None, as_json: bool) -> None:
    """The rollout's state (running, promoted, rolled_back, aborted) and its figures."""
    found = local_registry(registry).rollout(name, alias)
    if found is None:
        raise NotFound(f"no rollout on {name}@{alias}")
    if as_json:
        print_json(vars(found))
        return
    render(found)


@rollout_group.command("promote")
@click.argument("name")
@click.argument("alias")
@registry_option
def promote_command(name: str, alias: str, registry: str | None) -> None:
    """Move the alias to the candidate now."""
    ended = local_registry(registry).promote_rollout(name, alias)
    console.print(f"{name}@{alias} → {ended.candidate} (promoted)")


@rollout_group.command("abort")
@click.argument("name")
@click.argument("alias")
@registry_option
def abort_command(name: str, alias: str, registry: str | None) -> None:
    """Stop the rollout; all traffic goes back to the stable version."""
    ended = local_registry(registry).abort_rollout(name, alias)
    console.print(f"rollout on {name}@{alias} aborted; {ended.stable} answers everything")


def render(rollout: Rollout) -> None:
    steps = ",".join(map(str, rollout.steps))
    console.print(
        f"rollout {rollout.id} on {rollout.name}@{rollout.alias}: [bold]{rollout.state}[/bold] "
        f"({rollout.mode}; {rollout.stable} → {rollout.candidate}; "
        + (
            ""
            if rollout.mode == "shadow"
            else f"{rollout.weight}% at step {rollout.step + 1} of {steps}; "
        )
        + f"started {when(rollout.started_at)} by {rollout.started_by})"
    )
    if rollout.reason:
        console.print(f"reason: {rollout.reason}")
    if rollout.slos:
        console.print("SLOs: " + ", ".join(f"{k} {v:g}" for k, v in rollout.slos.items()))
    names = sorted({k for figures in rollout.figures.values() for k in figures})
    if names:
        table = Table("version", *names, title="figures (sliding window)")
        for version, figures in rollout.figures.items():
            table.add_row(version, *(f"{figures[k]:.4g}" if k in figures else "" for k in names))
        console.print(table)
