"""Registry commands: publish, list, show, pull, verify, delete, gc, backup, restore, du."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn
from rich.table import Table

from modelcrate.cli.crates import render_manifest
from modelcrate.cli.options import JsonOption, RegistryOption, TrustOption, local_registry
from modelcrate.cli.output import console, errors, print_json
from modelcrate.display import human_size, when
from modelcrate.errors import IntegrityError, UsageError
from modelcrate.refs import is_local_crate, parse_ref

if TYPE_CHECKING:
    from modelcrate.registry.api import Registry
    from modelcrate.registry.records import Evaluation


def register(app: typer.Typer) -> None:
    app.command("publish")(publish_command)
    app.command("list")(list_command)
    app.command("show")(show_command)
    app.command("pull")(pull_command)
    app.command("verify")(verify_command)
    app.command("delete")(delete_command)
    app.command("gc")(gc_command)
    app.command("backup")(backup_command)
    app.command("restore")(restore_command)
    app.command("du")(du_command)
    app.command("push")(push_command)


def publish_command(
    crate_path: Annotated[
        Path, typer.Argument(metavar="CRATE", help="A .crate file or crate directory.")
    ],
    signature: Annotated[
        Path | None,
        typer.Option("--signature", help="Signature bundle (default: <CRATE>.sig)."),
    ] = None,
    require_signature: Annotated[
        bool, typer.Option("--require-signature", help="Refuse it unless signed by a --trust key.")
    ] = False,
    trust: TrustOption = None,
    registry: RegistryOption = None,
    as_json: JsonOption = False,
) -> None:
    """Publish a crate into the registry (immutable; identical republish is a no-op)."""
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


def list_command(
    query: Annotated[str | None, typer.Argument(help="Substring of name or description.")] = None,
    tag: Annotated[str | None, typer.Option("--tag", help="Only models with this tag.")] = None,
    registry: RegistryOption = None,
    as_json: JsonOption = False,
) -> None:
    """List models (optionally searched by name/description and tag)."""
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


def show_command(
    ref: Annotated[str, typer.Argument(help="name (all versions) or name@version/alias.")],
    registry: RegistryOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show a model's versions and aliases, or one version's manifest."""
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


def pull_command(
    ref: Annotated[
        str,
        typer.Argument(
            help="name@version or name@alias; https://host/name@version; oci://host/repo:tag."
        ),
    ],
    to: Annotated[
        Path | None,
        typer.Option(
            "--to",
            help="Directory to write (new or empty). For oci:// refs, "
            "leave it out to publish into the registry instead.",
        ),
    ] = None,
    trust: TrustOption = None,
    registry: RegistryOption = None,
) -> None:
    """Write a version's verified files into a directory (its signature to <dir>.sig)."""
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


def verify_command(
    target: Annotated[
        str | None,
        typer.Argument(
            help="A reference, a .crate file or a crate directory (default: every "
            "pack of the registry)."
        ),
    ] = None,
    trust: TrustOption = None,
    registry: RegistryOption = None,
    as_json: JsonOption = False,
) -> None:
    """Re-hash every file of a version (or crate); with --trust, also check its signature.
    Without a target, re-read every pack and name the versions a damaged one affects."""
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


def delete_command(
    ref: Annotated[str, typer.Argument(help="name@version to delete.")],
    force: Annotated[
        bool, typer.Option("--force", help="Also remove aliases pointing at it.")
    ] = False,
    registry: RegistryOption = None,
) -> None:
    """Delete a version. Its blobs are freed by `modelcrate gc`."""
    info = local_registry(registry).delete(ref, force=force)
    console.print(f"deleted {info.ref}; run `modelcrate gc` to free {human_size(info.size)}")


def gc_command(
    grace: Annotated[
        float, typer.Option("--grace", help="Keep unreferenced blobs younger than this (seconds).")
    ] = 3600.0,
    registry: RegistryOption = None,
    as_json: JsonOption = False,
) -> None:
    """Remove blobs that no version references."""
    report = local_registry(registry).gc(grace_seconds=grace)
    if as_json:
        print_json(vars(report))
        return
    console.print(f"removed {report.blobs_removed} blob(s), freed {human_size(report.bytes_freed)}")


def backup_command(
    to: Annotated[Path, typer.Option("--to", help="The backup file to write (.tar).")],
    registry: RegistryOption = None,
    as_json: JsonOption = False,
) -> None:
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


def restore_command(
    source: Annotated[Path, typer.Argument(help="A file written by `modelcrate backup`.")],
    registry: RegistryOption = None,
    as_json: JsonOption = False,
) -> None:
    """Restore a backup into an empty registry (every blob and manifest is verified)."""
    with errors.status("restoring…"):
        report = local_registry(registry).restore(source)
    if as_json:
        print_json(vars(report))
        return
    console.print(f"restored {report.versions} version(s), {report.blobs} blob(s)")


def du_command(
    name: Annotated[str | None, typer.Argument(help="One model (default: all).")] = None,
    registry: RegistryOption = None,
    as_json: JsonOption = False,
) -> None:
    """Logical bytes (what the versions hold) vs stored bytes (shared blobs counted once)."""
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


def push_command(
    ref: Annotated[str, typer.Argument(help="The version to copy, like digits@1.0.0.")],
    target: Annotated[
        str, typer.Argument(help="https://host (a modelcrate server), a directory or a URL.")
    ],
    token: Annotated[
        str | None, typer.Option("--token", envvar="MODELCRATE_TOKEN", help="Bearer token.")
    ] = None,
    registry: RegistryOption = None,
    as_json: JsonOption = False,
) -> None:
    """Copy a version and its signatures to another registry (only missing files move)."""
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
