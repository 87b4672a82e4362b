"""Trust commands: keys generate, sign, encrypt, policy show/set, audit."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from modelcrate.cli.options import JsonOption, RegistryOption, TrustOption, local_registry
from modelcrate.cli.output import console, print_json
from modelcrate.display import when
from modelcrate.errors import UsageError

if TYPE_CHECKING:
    from modelcrate.trust.signing import Policy

keys_app = typer.Typer(help="Make key pairs for signing and encryption.", no_args_is_help=True)
policy_app = typer.Typer(help="The registry's signing policy.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(keys_app, name="keys")
    app.add_typer(policy_app, name="policy")
    app.command("sign")(sign_command)
    app.command("encrypt")(encrypt_command)
    app.command("audit")(audit_command)


@keys_app.command("generate")
def keys_generate_command(
    out: Annotated[Path, typer.Option("--out", help="Writes OUT.key (0600) and OUT.pub.")],
    kind: Annotated[
        str, typer.Option("--type", help="ec (signs and decrypts), x25519 or rsa (decrypt).")
    ] = "ec",
) -> None:
    """Generate a key pair (the private key is encrypted if MODELCRATE_KEY_PASSPHRASE is set)."""
    from modelcrate.trust.keys import KeyKind, generate

    if kind not in ("ec", "x25519", "rsa"):
        raise UsageError(f"--type {kind!r}: expected ec, x25519 or rsa")
    key_kind: KeyKind = kind  # type: ignore[assignment]
    private, public = generate(out, key_kind)
    console.print(f"wrote {private} (private, keep it secret) and {public} (public, share it)")


def sign_command(
    target: Annotated[str, typer.Argument(help="name@version, or a .crate file / crate dir.")],
    key: Annotated[Path, typer.Option("--key", help="EC private key (.key).")],
    registry: RegistryOption = None,
    as_json: JsonOption = False,
) -> None:
    """Sign a version (stored with it) or a local crate (written to <crate>.sig)."""
    from modelcrate import sign

    info = sign(target, key, registry=registry)
    if as_json:
        print_json(vars(info))
        return
    console.print(f"signed [bold]{info.ref}[/bold] {info.digest[:19]}… with key {info.key_id[:16]}")


def encrypt_command(
    ref: Annotated[str, typer.Argument(help="name@version to encrypt.")],
    recipient: Annotated[
        list[Path] | None,
        typer.Option("--recipient", help="Public key that may decrypt it (repeatable)."),
    ] = None,
    passphrase_env: Annotated[
        str | None,
        typer.Option("--passphrase-env", help="Also allow the passphrase in this env variable."),
    ] = None,
    version: Annotated[
        str | None, typer.Option("--version", help="New version (default: <version>-enc).")
    ] = None,
    key: Annotated[
        Path | None, typer.Option("--key", help="Sign the encrypted version with this EC key.")
    ] = None,
    registry: RegistryOption = None,
    as_json: JsonOption = False,
) -> None:
    """Publish a copy of a version whose files are encrypted at rest (AES-256-GCM)."""
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


@policy_app.command("show")
def policy_show_command(registry: RegistryOption = None, as_json: JsonOption = False) -> None:
    """Show whether signatures are required and which keys are trusted."""
    render_policy(local_registry(registry).policy(), as_json)


@policy_app.command("set")
def policy_set_command(
    require_signature: Annotated[
        bool | None,
        typer.Option(
            "--require-signature/--no-require-signature",
            help="Require a trusted signature on publish, pull, load and serve.",
            show_default=False,
        ),
    ] = None,
    trust: TrustOption = None,
    untrust: Annotated[
        list[str] | None, typer.Option("--untrust", help="Key name or id prefix to drop.")
    ] = None,
    registry: RegistryOption = None,
    as_json: JsonOption = False,
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


def audit_command(
    name: Annotated[str | None, typer.Argument(help="Only entries about this model.")] = None,
    limit: Annotated[int, typer.Option("--limit", help="Latest N entries.")] = 200,
    registry: RegistryOption = None,
    as_json: JsonOption = False,
) -> None:
    """List who published, moved, deleted, signed and changed policy, and when."""
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
