"""Registry commands: publish, list, show, pull, verify, delete, gc, backup, restore, du."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn
from rich.table import Table

from modelcrate.cli.crates import render_manifest
from modelcrate.cli.options import (
    PATH,
    json_option,
    local_registry,
    registry_option,
    trust_option,
)
from modelcrate.cli.output import console, errors, print_json
from modelcrate.display import human_size, when
from modelcrate.errors import IntegrityError, UsageError
from modelcrate.refs import is_local_crate, parse_ref

if TYPE_CHECKING:
    from modelcrate.registry.api import Registry
    from modelcrate.registry.records import Evaluation


def register(group: click.Group) -> None:
    for command in (
        publish_command,
        list_command,
        show_command,
        pull_command,
        verify_command,
        delete_command,
        gc_command,
        backup_command,
        restore_command,
        du_command,
        push_command,
    ):
        group.add_command(command)


@click.command("publish")
@click.argument("crate_path", metavar="CRATE", type=PATH)
@click.option("--signature", type=PATH, help="Signature bundle (default: <CRATE>.sig).")
@click.option("--require-signature", is_flag=True, help="Refuse it unless signed by a --trust key.")
@trust_option
@registry_option
@json_option
def publish_command(
    crate_path: Path,
    signature: Path | None,
    require_signature: bool,
    trust: list[str] | None,
    registry: str | None,
    as_json: bool,
) -> None:
    """Publish a crate into the registry (immutable; identical republish is a no-op).

    CRATE is a .crate file or a crate directory."""
    from modelcrate.crate import Crate
    from modelcrate.trust.keys import TrustedKeys
    from modelcrate.trust.signing import Policy, local_signatures

    crate = Crate.open(crate_path)
    bundles = local_signatures(crate_path, signature)
    policy = Policy(require_signature or bool(trust), TrustedKeys.from_paths(trust or []))
    total = sum(f.size for f in crate.manifest.files)
    columns = (TextColumn("publishing"), BarColumn(), DownloadColumn())
    with Progress(*columns, console=errors, transient=True) as progress:
        task = progress.add_task("publish", total=total)
        result = local_registry(registry).publish(
            crate,
            progress=lambda n: progress.advance(task, n),
            signatures=bundles,
            trust=policy,
        )
    if as_json:
        print_json(vars(result))
        return
    state = "published" if result.created else "already published (identical), nothing to do:"
    console.print(f"{state} [bold]{result.name}@{result.version}[/bold] {result.digest}")


@click.command("list")
@click.argument("query", required=False)
@click.option("--tag", help="Only models with this tag.")
@registry_option
@json_option
def list_command(query: str | None, tag: str | None, registry: str | None, as_json: bool) -> None:
    """List models (optionally searched by name/description and tag).

    QUERY is a substring of the name or description."""
    models = local_registry(registry).list_models(query, tag=tag)
    if as_json:
        print_json([vars(m) for m in models])
        return
    table = Table()
    for column in ("name", "latest", "versions", "aliases", "tags", "description"):
        table.add_column(column)
    for m in models:
        aliases = ", ".join(f"{a}→{v}" for a, v in m.aliases.items())
        table.add_row(m.name, m.latest, str(m.versions), aliases, ", ".join(m.tags), m.description)
    console.print(table if models else "no models")


@click.command("show")
@click.argument("ref")
@registry_option
@json_option
def show_command(ref: str, registry: str | None, as_json: bool) -> None:
    """Show a model's versions and aliases, or one version's manifest.

    REF is a name (all versions) or name@version / name@alias."""
    reg = local_registry(registry)
    parsed = parse_ref(ref)
    if parsed.version or parsed.alias or parsed.digest:
        info = reg.resolve(parsed)
        manifest = reg.manifest(parsed)
        evaluations = reg.evaluations(info.name, info.version)
        if as_json:
            history = [vars(e) for e in evaluations]
            print_json({**vars(info), "manifest": manifest.to_dict(), "evaluations": history})
            return
        render_manifest(manifest, info.digest)
        if info.aliases:
            console.print(f"aliases: {', '.join(info.aliases)}")
        render_evaluations(evaluations)
        return
    versions = reg.versions(parsed.name)
    if as_json:
        print_json([vars(v) for v in versions])
        return
    table = Table(title=parsed.name)
    for column in ("version", "aliases", "size", "published", "digest"):
        table.add_column(column)
    for v in versions:
        table.add_row(
            v.version,
            ", ".join(v.aliases),
            human_size(v.size),
            when(v.created_at),
            v.digest[:19] + "…",
        )
    console.print(table)
    render_evaluations(reg.evaluations(parsed.name))


def render_evaluations(evaluations: list[Evaluation]) -> None:
    """Each recorded evaluation (``modelcrate eval``), oldest first."""
    if not evaluations:
        return
    names = sorted({k for e in evaluations for k in e.metrics})
    table = Table("version", "evaluated", "data", "samples", *names, title="evaluations")
    for e in evaluations:
        figures = [f"{e.metrics[k]:.4g}" if k in e.metrics else "" for k in names]
        table.add_row(e.version, when(e.at), e.data[7:19], str(e.samples), *figures)
    console.print(table)


@click.command("pull")
@click.argument("ref")
@click.option(
    "--to",
    type=PATH,
    help="Directory to write (new or empty). For oci:// refs, "
    "leave it out to publish into the registry instead.",
)
@trust_option
@registry_option
def pull_command(ref: str, to: Path | None, trust: list[str] | None, registry: str | None) -> None:
    """Write a version's verified files into a directory (its signature to <dir>.sig).

    REF is name@version or name@alias; https://host/name@version; oci://host/repo:tag."""
    import tempfile

    from modelcrate import pull

    reg = local_registry(registry)
    if to is None:
        if not ref.startswith("oci://"):
            raise UsageError("give --to DIR (only oci:// pulls can go straight into the registry)")
        with errors.status(f"pulling {ref}…"), tempfile.TemporaryDirectory() as scratch:
            path = pull(ref, Path(scratch) / "crate", trust=trust or None)
            result = reg.publish(path)
        console.print(f"pulled {ref} → {result.name}@{result.version} {result.digest}")
        return
    with errors.status(f"pulling {ref}…"):
        path = pull(ref, to, registry=reg, trust=trust or None)
    console.print(f"pulled {ref} → {path}")


@click.command("verify")
@click.argument("target", required=False)
@trust_option
@registry_option
@json_option
def verify_command(
    target: str | None, trust: list[str] | None, registry: str | None, as_json: bool
) -> None:
    """Re-hash every file of a version (or crate); with --trust, also check its signature.
    Without a target, re-read every pack and name the versions a damaged one affects.

    TARGET is a reference, a .crate file or a crate directory."""
    from modelcrate.crate import Crate
    from modelcrate.trust.signing import as_policy, verify_local

    signer = None
    policy = as_policy(trust or None)
    if target is None:
        verify_store(local_registry(registry), as_json)
        return
    if is_local_crate(target):
        crate = Crate.open(target)
        crate.verify()
        rows = [{"path": target, "size": 0, "problem": None}]
        signer = verify_local(crate, target, policy) if policy else None
    else:
        reg = local_registry(registry)
        rows = [vars(c) for c in reg.verify(target)]
        intact = not any(r["problem"] for r in rows)
        signer = reg.check_signature(target, policy) if policy and intact else None
    bad = [r for r in rows if r["problem"]]
    if as_json:
        print_json({"ok": not bad, "files": rows, "signed_by": signer})
    else:
        for row in rows:
            mark = "[green]ok[/green]" if not row["problem"] else f"[red]{row['problem']}[/red]"
            console.print(f"{mark}  {row['path']}")
        if signer and policy:
            console.print(f"[green]signed[/green] by {policy.keys.describe(signer)}")
    if bad:
        raise IntegrityError(
            f"{target}: {len(bad)} file(s) failed verification: "
            + ", ".join(f"{r['path']} ({r['problem']})" for r in bad)
        )


def verify_store(reg: Registry, as_json: bool) -> None:
    with errors.status("re-reading every pack…"):
        damaged = reg.verify_store()
    if as_json:
        print_json({"ok": not damaged, "damaged_packs": [vars(d) for d in damaged]})
    for pack in damaged if not as_json else []:
        console.print(
            f"[red]{pack.problem}[/red]  pack {pack.pack}: "
            f"{', '.join(pack.versions) or 'no version'}"
        )
    if damaged:
        versions = sorted({v for d in damaged for v in d.versions})
        raise IntegrityError(
            f"{len(damaged)} damaged pack(s); affected versions: {', '.join(versions) or 'none'}"
        )
    if not as_json:
        console.print("[green]ok[/green]  every pack reads back intact")


@click.command("delete")
@click.argument("ref")
@click.option("--force", is_flag=True, help="Also remove aliases pointing at it.")
@registry_option
def delete_command(ref: str, force: bool, registry: str | None) -> None:
    """Delete a version. Its blobs are freed by `modelcrate gc`.

    REF is name@version."""
    info = local_registry(registry).delete(ref, force=force)
    console.print(f"deleted {info.ref}; run `modelcrate gc` to free {human_size(info.size)}")


@click.command("gc")
@click.option(
    "--grace",
    type=float,
    default=3600.0,
    help="Keep unreferenced blobs younger than this (seconds).",
)
@registry_option
@json_option
def gc_command(grace: float, registry: str | None, as_json: bool) -> None:
    """Remove blobs that no version references."""
    report = local_registry(registry).gc(grace_seconds=grace)
    if as_json:
        print_json(vars(report))
        return
    console.print(f"removed {report.blobs_removed} blob(s), freed {human_size(report.bytes_freed)}")


@click.command("backup")
@click.option("--to", type=PATH, required=True, help="The backup file to write (.tar).")
@registry_option
@json_option
def backup_command(to: Path, registry: str | None, as_json: bool) -> None:
    """Write the whole registry (metadata and blobs) to one reproducible tar file."""
    with errors.status("backing up…"):
        report = local_registry(registry).backup(to)
    if as_json:
        print_json(vars(report))
        return
    console.print(
        f"backed up {report.versions} version(s), {report.blobs} blob(s), "
        f"{human_size(report.bytes)} → {to}"
    )


@click.command("restore")
@click.argument("source", type=PATH)
@registry_option
@json_option
def restore_command(source: Path, registry: str | None, as_json: bool) -> None:
    """Restore a backup into an empty registry (every blob and manifest is verified).

    SOURCE is a file written by `modelcrate backup`."""
    with errors.status("restoring…"):
        report = local_registry(registry).restore(source)
    if as_json:
        print_json(vars(report))
        return
    console.print(f"restored {report.versions} version(s), {report.blobs} blob(s)")


@click.command("du")
@click.argument("name", required=False)
@registry_option
@json_option
def du_command(name: str | None, registry: str | None, as_json: bool) -> None:
    """Logical bytes (what the versions hold) vs stored bytes (shared blobs counted once).

    NAME: one model (default: all)."""
    usage = local_registry(registry).du(name)
    if as_json:
        print_json(
            {
                "logical_bytes": usage.logical_bytes,
                "stored_bytes": usage.stored_bytes,
                "cache_bytes": usage.cache_bytes,
                "versions": [vars(v) for v in usage.versions],
            }
        )
        return
    table = Table()
    for column in ("version", "logical", "new stored"):
        table.add_column(column)
    for v in usage.versions:
        table.add_row(v.version, human_size(v.logical_bytes), human_size(v.new_bytes))
    console.print(table)
    ratio = usage.stored_bytes / usage.logical_bytes if usage.logical_bytes else 1.0
    console.print(
        f"logical {human_size(usage.logical_bytes)}, stored {human_size(usage.stored_bytes)} "
        f"({ratio:.2f}x); file cache {human_size(usage.cache_bytes)}"
    )


@click.command("push")
@click.argument("ref")
@click.argument("target")
@click.option("--token", envvar="MODELCRATE_TOKEN", show_envvar=True, help="Bearer token.")
@registry_option
@json_option
def push_command(
    ref: str, target: str, token: str | None, registry: str | None, as_json: bool
) -> None:
    """Copy a version and its signatures to another registry (only missing files move).

    REF is the version to copy, like digits@1.0.0; TARGET is https://host (a modelcrate
    server), a directory or a URL."""
    from modelcrate import push

    with errors.status(f"pushing {ref}…"):
        result = push(ref, target, registry=local_registry(registry), token=token)
    if as_json:
        print_json(vars(result))
        return
    state = "pushed" if result.created else "already there:"
    console.print(
        f"{state} [bold]{result.name}@{result.version}[/bold] → {target} "
        f"({result.uploaded} file(s) sent, {result.skipped} already there)"
    )
