"""``webhooks add|list|test|remove|deliver``: registry events sent to HTTP receivers."""

from __future__ import annotations

from pathlib import Path

import click
from rich.table import Table

from modelcrate.cli.options import PATH, json_option, local_registry, registry_option
from modelcrate.cli.output import console, print_json
from modelcrate.display import when
from modelcrate.errors import UsageError


@click.group("webhooks", no_args_is_help=True)
def webhooks_group() -> None:
    """Send registry events (publish, alias moves, deletes) to HTTP receivers, signed."""


def register(group: click.Group) -> None:
    group.add_command(webhooks_group)


@webhooks_group.command("add")
@click.argument("url")
@click.option("--events", required=True, help="Comma-separated: publish,alias,delete,rollout,alert")
@click.option(
    "--secret-file",
    type=PATH,
    required=True,
    help="File holding the HMAC secret (16+ characters).",
)
@registry_option
@json_option
def add_command(
    url: str, events: str, secret_file: Path, registry: str | None, as_json: bool
) -> None:
    """Subscribe URL to EVENTS; deliveries are signed with the secret (X-Modelcrate-Signature).

    URL is where to POST events, like https://hooks.example/mc."""
    try:
        secret = secret_file.read_text()
    except OSError as exc:
        raise UsageError(f"--secret-file {secret_file}: {exc.strerror}") from None
    kinds = [e.strip() for e in events.split(",") if e.strip()]
    hook = local_registry(registry).add_webhook(url, kinds, secret)
    if as_json:
        print_json(vars(hook))
        return
    console.print(f"webhook {hook.id}: {hook.url} ← {', '.join(hook.events)}")


@webhooks_group.command("list")
@registry_option
@json_option
def list_command(registry: str | None, as_json: bool) -> None:
    """Every webhook with its pending deliveries and its latest attempt."""
    hooks = local_registry(registry).webhooks()
    if as_json:
        print_json([vars(h) for h in hooks])
        return
    table = Table("id", "url", "events", "pending", "last delivery", "added")
    for hook in hooks:
        if hook.last_event is None:
            last = "none yet"
        else:
            outcome = "ok" if hook.last_delivered else (hook.last_error or "failed")
            last = f"{hook.last_event}: {outcome}"
        table.add_row(
            str(hook.id),
            hook.url,
            ",".join(hook.events),
            str(hook.pending),
            last,
            f"{when(hook.created_at)} by {hook.created_by}",
        )
    console.print(table)


@webhooks_group.command("test")
@click.argument("hook_id", metavar="ID", type=int)
@registry_option
def test_command(hook_id: int, registry: str | None) -> None:
    """Send a test event to webhook ID now."""
    result = local_registry(registry).test_webhook(hook_id)
    if not result.delivered:
        raise UsageError(f"webhook {hook_id}: {result.error} (queued; `serve` retries it)")
    console.print(f"webhook {hook_id}: test event delivered (HTTP {result.status})")


@webhooks_group.command("remove")
@click.argument("hook_id", metavar="ID", type=int)
@registry_option
def remove_command(hook_id: int, registry: str | None) -> None:
    """Remove webhook ID and its undelivered events."""
    local_registry(registry).remove_webhook(hook_id)
    console.print(f"webhook {hook_id} removed")


@webhooks_group.command("deliver")
@registry_option
def deliver_command(registry: str | None) -> None:
    """Send every delivery that is due now (what a running `serve` does every second)."""
    results = local_registry(registry).deliver_webhooks()
    sent = sum(r.delivered for r in results)
    console.print(f"{sent} delivered, {len(results) - sent} failed (retried later)")
