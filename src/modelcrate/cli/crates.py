"""``pack`` and ``inspect``: build a crate and look inside one."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.markup import escape
from rich.table import Table

from modelcrate.cli.options import PATH, json_option, listed, local_registry, registry_option
from modelcrate.cli.output import console, errors, print_json
from modelcrate.display import human_size
from modelcrate.errors import UsageError
from modelcrate.refs import is_local_crate

if TYPE_CHECKING:
    from modelcrate.manifest import Manifest


def register(group: click.Group) -> None:
    group.add_command(pack_command)
    group.add_command(inspect_command)


@click.command("pack")
@click.argument("source", type=PATH)
@click.option("--name", required=True, help="Model name.")
@click.option("--version", required=True, help="Version, like 1.0.0.")
@click.option("--output", "-o", type=PATH, help="Where to write (default ./NAME-VERSION.crate).")
@click.option("--labels", type=PATH, help="Text file, one label per line.")
@click.option("--description", default="")
@click.option("--license")
@click.option("--tag", multiple=True, callback=listed, help="A tag; repeatable.")
@click.option("--metric", multiple=True, callback=listed, help="name=value; repeatable.")
@click.option("--model-card", type=PATH, help="README.md for the crate.")
@click.option(
    "--keras-allow",
    multiple=True,
    callback=listed,
    help="Keras class to trust (Lambda, a custom layer).",
)
@click.option(
    "--source-dir",
    type=PATH,
    help="The training code's directory, for provenance (default: the current one).",
)
@click.option(
    "--provenance/--no-provenance",
    default=True,
    help="Record the Git commit, branch, remote and changed files, the command line "
    "and the environment.",
)
@json_option
def pack_command(
    source: Path,
    name: str,
    version: str,
    output: Path | None,
    labels: Path | None,
    description: str,
    license: str | None,
    tag: list[str] | None,
    metric: list[str] | None,
    model_card: Path | None,
    keras_allow: list[str] | None,
    source_dir: Path | None,
    provenance: bool,
    as_json: bool,
) -> None:
    """Pack a model file (.onnx, .pt2, .ort, .keras, .h5, .tflite) or SavedModel directory.

    SOURCE is the model file or directory."""
    from modelcrate.pack import pack

    with errors.status(f"packing {source.name}…"):
        crate = pack(
            source,
            name=name,
            version=version,
            labels=labels,
            metrics=parse_metrics(metric or []),
            description=description,
            license=license,
            tags=tag,
            model_card=model_card,
            keras_allow=keras_allow,
            source_dir=source_dir,
            provenance=provenance,
        )
        path = crate.save(output or Path(f"{name}-{version}.crate"))
    if as_json:
        print_json({"path": str(path), "ref": crate.manifest.ref, "digest": crate.digest})
        return
    console.print(f"packed [bold]{crate.manifest.ref}[/bold] → {path}")
    console.print(f"digest {crate.digest}")
    if provenance and crate.manifest.provenance is None:
        where = source_dir or Path.cwd()
        console.print(f"no provenance recorded: {where} is not inside a Git work tree")


def parse_metrics(pairs: list[str]) -> dict[str, float]:
    metrics = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        try:
            metrics[key] = float(value)
        except ValueError:
            sep = ""
        if not sep or not key:
            raise UsageError(f"--metric {pair!r}: expected name=number, like accuracy=0.97")
    return metrics


@click.command("inspect")
@click.argument("target")
@registry_option
@json_option
def inspect_command(target: str, registry: str | None, as_json: bool) -> None:
    """Show a crate's manifest, signature and files.

    TARGET is a .crate file, a crate directory, or a reference (name@version)."""
    from modelcrate.crate import Crate

    if is_local_crate(target):
        crate = Crate.open(target)
        manifest, digest = crate.manifest, crate.digest
    else:
        manifest = local_registry(registry).manifest(target)
        digest = manifest.digest
    if as_json:
        print_json({"digest": digest, "manifest": manifest.to_dict()})
        return
    render_manifest(manifest, digest)


def render_manifest(manifest: Manifest, digest: str) -> None:
    console.print(f"[bold]{manifest.ref}[/bold]  {digest}")
    if manifest.description:
        console.print(manifest.description)
    facts = Table.grid(padding=(0, 2))
    if manifest.framework:
        facts.add_row("framework", f"{manifest.framework.name} {manifest.framework.version}")
    for key, value in (("license", manifest.license), ("tags", ", ".join(manifest.tags))):
        if value:
            facts.add_row(key, value)
    if manifest.labels:
        facts.add_row(
            "labels",
            f"{len(manifest.labels)}: {', '.join(manifest.labels[:10])}"
            + (" …" if len(manifest.labels) > 10 else ""),
        )
    for metric, score in manifest.metrics.items():
        facts.add_row(f"metric {metric}", f"{score:g}")
    console.print(facts)
    console.print(provenance_table(manifest))
    signature = Table(title="signature")
    for column in ("", "name", "dtype", "shape"):
        signature.add_column(column)
    for kind, specs in (
        ("input", manifest.signature.inputs),
        ("output", manifest.signature.outputs),
    ):
        for spec in specs:
            signature.add_row(kind, spec.name, spec.dtype, str(spec.shape))
    console.print(signature)
    artifacts = Table(title="artifacts")
    for column in ("kind", "path", "precision", "parity (max abs diff)"):
        artifacts.add_column(column)
    for artifact in manifest.artifacts:
        parity = (
            f"{artifact.parity.max_abs_diff:.2e} vs {artifact.parity.reference}"
            if artifact.parity
            else ""
        )
        artifacts.add_row(artifact.kind, artifact.path, artifact.precision, parity)
    console.print(artifacts)
    files = Table(title="files")
    for column in ("path", "size", "sha256"):
        files.add_column(column)
    for entry in manifest.files:
        files.add_row(entry.path, human_size(entry.size), entry.sha256[:16] + "…")
    console.print(files)


def provenance_table(manifest: Manifest) -> Table:
    """Where the crate came from: the Git source, command and environment, or why not."""
    table = Table.grid(padding=(0, 2))
    origin = manifest.provenance
    if origin is None:
        table.add_row(
            "source", "none recorded: packed outside a Git work tree, or with --no-provenance"
        )
        return table
    git = origin.source
    changed = ", ".join(git.changed_files[:10]) + (" …" if git.changed_count > 10 else "")
    for key, value in (
        ("source repo", git.remote or "(no remote)"),
        ("source commit", git.commit or "(no commit yet)"),
        ("source branch", git.branch or "(detached HEAD)"),
        ("source path", git.path or "(top of the work tree)"),
        ("source dirty", f"yes, {git.changed_count} files: {changed}" if git.dirty else "no"),
        ("command", origin.command or ""),
        ("python", f"{origin.python} on {origin.platform}"),
        ("packages", ", ".join(f"{k} {v}" for k, v in sorted(origin.packages.items()))),
    ):
        table.add_row(key, escape(value))
    return table
