"""``webhooks add|list|test|remove|deliver``: registry events sent to HTTP receivers."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from modelcrate.cli.options import JsonOption, RegistryOption, local_registry
from modelcrate.cli.output import console, print_json
from modelcrate.display import when
from modelcrate.errors import UsageError

webhooks_app = typer.Typer(
    help="Send registry events (publish, alias moves, deletes) to HTTP receivers, signed.",
    no_args_is_help=True,
)


def register(app: typer.Typer) -> None:
    app.add_typer(webhooks_app, name="webhooks")


@webhooks_app.command("add")
def add_command(
    url: Annotated[
        str, typer.Argument(help="Where to POST events, like https://hooks.example/mc.")
    ],
    events: Annotated[
        str, typer.Option("--events", help="Comma-separated: publish,alias,delete,rollout,alert")
    ],
    secret_file: Annotated[
        Path, typer.Option("--secret-file", help="File holding the HMAC secret (16+ characters).")
    ],
    registry: RegistryOption = None,
    as_json: JsonOption = False,
) -> None:
    """Subscribe URL to EVENTS; deliveries are signed with the secret (X-Modelcrate-Signature)."""
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


@webhooks_app.command("list")
def list_command(registry: RegistryOption = None, as_json: JsonOption = False) -> None:
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


@webhooks_app.command("test")
def test_command(
    hook_id: Annotated[int, typer.Argument(metavar="ID")], registry: RegistryOption = None
) -> None:
    """Send a test event to webhook ID now."""
    result = local_registry(registry).test_webhook(hook_id)
    if not result.delivered:
        raise UsageError(f"webhook {hook_id}: {result.error} (queued; `serve` retries it)")
    console.print(f"webhook {hook_id}: test event delivered (HTTP {result.status})")


@webhooks_app.command("remove")
def remove_command(
    hook_id: Annotated[int, typer.Argument(metavar="ID")], registry: RegistryOption = None
) -> None:
    """Remove webhook ID and its undelivered events."""
    local_registry(registry).remove_webhook(hook_id)
    console.print(f"webhook {hook_id} removed")


@webhooks_app.command("deliver")
def deliver_command(registry: RegistryOption = None) -> None:
    """Send every delivery that is due now (what a running `serve` does every second)."""
    results = local_registry(registry).deliver_webhooks()
    sent = sum(r.delivered for r in results)
    console.print(f"{sent} delivered, {len(results) - sent} failed (retried later)")
