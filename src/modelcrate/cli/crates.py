"""``pack`` and ``inspect``: build a crate and look inside one."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from modelcrate.cli.options import JsonOption, RegistryOption, local_registry
from modelcrate.cli.output import console, errors, print_json
from modelcrate.display import human_size
from modelcrate.errors import UsageError
from modelcrate.refs import is_local_crate

if TYPE_CHECKING:
    from modelcrate.manifest import Manifest


def register(app: typer.Typer) -> None:
    app.command("pack")(pack_command)
    app.command("inspect")(inspect_command)


def pack_command(
    source: Annotated[
        Path, typer.Argument(help="A model file (.onnx .pt2 .ort .keras .h5 .tflite) or dir.")
    ],
    name: Annotated[str, typer.Option("--name", help="Model name.")],
    version: Annotated[str, typer.Option("--version", help="Version, like 1.0.0.")],
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Where to write (default ./NAME-VERSION.crate)."),
    ] = None,
    labels: Annotated[
        Path | None, typer.Option("--labels", help="Text file, one label per line.")
    ] = None,
    description: Annotated[str, typer.Option("--description")] = "",
    license: Annotated[str | None, typer.Option("--license")] = None,
    tag: Annotated[list[str] | None, typer.Option("--tag", help="A tag; repeatable.")] = None,
    metric: Annotated[
        list[str] | None, typer.Option("--metric", help="name=value; repeatable.")
    ] = None,
    model_card: Annotated[
        Path | None, typer.Option("--model-card", help="README.md for the crate.")
    ] = None,
    keras_allow: Annotated[
        list[str] | None,
        typer.Option("--keras-allow", help="Keras class to trust (Lambda, a custom layer)."),
    ] = None,
    source_dir: Annotated[
        Path | None,
        typer.Option(
            "--source-dir",
            help="The training code's directory, for provenance (default: the current one).",
        ),
    ] = None,
    provenance: Annotated[
        bool,
        typer.Option(
            "--provenance/--no-provenance",
            help="Record the Git commit, branch, remote and changed files, the command line "
            "and the environment.",
        ),
    ] = True,
    as_json: JsonOption = False,
) -> None:
    """Pack a model file (.onnx, .pt2, .ort, .keras, .h5, .tflite) or SavedModel directory."""
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


def inspect_command(
    target: Annotated[
        str, typer.Argument(help="A .crate file, a crate directory, or a reference.")
    ],
    registry: RegistryOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show a crate's manifest, signature and files."""
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
