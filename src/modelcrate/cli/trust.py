"""Trust commands: keys generate, sign, encrypt, policy show/set, audit."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.table import Table

from modelcrate.cli.options import (
    PATH,
    json_option,
    listed,
    local_registry,
    registry_option,
    trust_option,
)
from modelcrate.cli.output import console, print_json
from modelcrate.display import when
from modelcrate.errors import UsageError

if TYPE_CHECKING:
    from modelcrate.trust.signing import Policy


@click.group("keys", no_args_is_help=True)
def keys_group() -> None:
    """Make key pairs for signing and encryption."""


@click.group("policy", no_args_is_help=True)
def policy_group() -> None:
    """The registry's signing policy."""


def register(group: click.Group) -> None:
    for command in (keys_group, policy_group, sign_command, encrypt_command, audit_command):
        group.add_command(command)


@keys_group.command("generate")
@click.option("--out", type=PATH, required=True, help="Writes OUT.key (0600) and OUT.pub.")
@click.option(
    "--type", "kind", default="ec", help="ec (signs and decrypts), x25519 or rsa (decrypt)."
)
def keys_generate_command(out: Path, kind: str) -> None:
    """Generate a key pair (the private key is encrypted if MODELCRATE_KEY_PASSPHRASE is set)."""
    from modelcrate.trust.keys import KeyKind, generate

    if kind not in ("ec", "x25519", "rsa"):
        raise UsageError(f"--type {kind!r}: expected ec, x25519 or rsa")
    key_kind: KeyKind = kind  # type: ignore[assignment]
    private, public = generate(out, key_kind)
    console.print(f"wrote {private} (private, keep it secret) and {public} (public, share it)")


@click.command("sign")
@click.argument("target")
@click.option("--key", type=PATH, required=True, help="EC private key (.key).")
@registry_option
@json_option
def sign_command(target: str, key: Path, registry: str | None, as_json: bool) -> None:
    """Sign a version (stored with it) or a local crate (written to <crate>.sig).

    TARGET is name@version, or a .crate file / crate directory."""
    from modelcrate import sign

    info = sign(target, key, registry=registry)
    if as_json:
        print_json(vars(info))
        return
    console.print(f"signed [bold]{info.ref}[/bold] {info.digest[:19]}… with key {info.key_id[:16]}")


@click.command("encrypt")
@click.argument("ref")
@click.option(
    "--recipient",
    type=PATH,
    multiple=True,
    callback=listed,
    help="Public key that may decrypt it (repeatable).",
)
@click.option("--passphrase-env", help="Also allow the passphrase in this env variable.")
@click.option("--version", help="New version (default: <version>-enc).")
@click.option("--key", type=PATH, help="Sign the encrypted version with this EC key.")
@registry_option
@json_option
def encrypt_command(
    ref: str,
    recipient: list[Path] | None,
    passphrase_env: str | None,
    version: str | None,
    key: Path | None,
    registry: str | None,
    as_json: bool,
) -> None:
    """Publish a copy of a version whose files are encrypted at rest (AES-256-GCM).

    REF is the name@version to encrypt."""
    from modelcrate import encrypt

    passphrase = None
    if passphrase_env is not None:
        passphrase = os.environ.get(passphrase_env)
        if not passphrase:
            raise UsageError(f"--passphrase-env {passphrase_env}: that variable is empty or unset")
    result = encrypt(
        ref,
        recipients=list(recipient or []),
        passphrase=passphrase,
        version=version,
        key=key,
        registry=registry,
    )
    if as_json:
        print_json(vars(result))
        return
    console.print(f"published [bold]{result.name}@{result.version}[/bold] (encrypted)")


@policy_group.command("show")
@registry_option
@json_option
def policy_show_command(registry: str | None, as_json: bool) -> None:
    """Show whether signatures are required and which keys are trusted."""
    render_policy(local_registry(registry).policy(), as_json)


@policy_group.command("set")
@click.option(
    "--require-signature/--no-require-signature",
    default=None,
    show_default=False,
    help="Require a trusted signature on publish, pull, load and serve.",
)
@trust_option
@click.option("--untrust", multiple=True, callback=listed, help="Key name or id prefix to drop.")
@registry_option
@json_option
def policy_set_command(
    require_signature: bool | None,
    trust: list[str] | None,
    untrust: list[str] | None,
    registry: str | None,
    as_json: bool,
) -> None:
    """Change the registry's signing policy (every change goes to the audit log)."""
    if require_signature is None and not trust and not untrust:
        raise UsageError("nothing to change: give --require-signature, --trust or --untrust")
    policy = local_registry(registry).set_policy(
        require_signature=require_signature, trust=trust or [], untrust=untrust or []
    )
    render_policy(policy, as_json)


def render_policy(policy: Policy, as_json: bool) -> None:
    keys = [{"key_id": kid, "name": policy.keys.names.get(kid, "")} for kid in policy.keys.pems]
    if as_json:
        print_json({"require_signature": policy.require_signature, "trusted_keys": keys})
        return
    state = "required" if policy.require_signature else "not required"
    console.print(f"signatures: [bold]{state}[/bold]; trusted keys: {len(keys)}")
    for key in keys:
        console.print(f"  {key['name'] or '-'}  {key['key_id']}")


@click.command("audit")
@click.argument("name", required=False)
@click.option("--limit", type=int, default=200, help="Latest N entries.")
@registry_option
@json_option
def audit_command(name: str | None, limit: int, registry: str | None, as_json: bool) -> None:
    """List who published, moved, deleted, signed and changed policy, and when.

    NAME: only entries about this model."""
    entries = local_registry(registry).audit(name, limit=limit)
    if as_json:
        print_json([vars(e) for e in entries])
        return
    table = Table()
    for column in ("when", "who", "action", "model", "digest", "detail"):
        table.add_column(column)
    for e in entries:
        model = f"{e.name}@{e.version}" if e.name and e.version else (e.name or "")
        digest = e.digest[:19] + "…" if e.digest else ""
        table.add_row(when(e.at), e.actor, e.action, model, digest, e.detail)
    console.print(table if entries else "no audit entries")
