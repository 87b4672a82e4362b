"""Reuse commands: finetune, features, layers, pipeline, ensemble, lineage."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.table import Table
from rich.tree import Tree

from modelcrate.cli.arrays import read_arrays
from modelcrate.cli.options import PATH, json_option, local_registry, registry_option
from modelcrate.cli.output import console, print_json
from modelcrate.errors import InputError, UsageError

if TYPE_CHECKING:
    from modelcrate.registry.lineage import LineageGraph


def register(group: click.Group) -> None:
    for command in (
        finetune_command,
        features_command,
        layers_command,
        pipeline_command,
        ensemble_command,
        lineage_command,
    ):
        group.add_command(command)


@click.command("finetune")
@click.argument("ref")
@click.option(
    "--data",
    type=PATH,
    required=True,
    help=".npz with the inputs (x, or the input name) and targets y.",
)
@click.option("--epochs", type=int, default=3)
@click.option("--name", help="Default: the parent's.")
@click.option("--version")
@click.option("--head", type=int, help="Outputs of a new head.")
@click.option(
    "--freeze", default="backbone", help="backbone | none | comma-separated name prefixes."
)
@click.option("--lr", type=float, default=1e-3)
@click.option("--batch-size", type=int, default=64)
@click.option("--val-split", type=float, default=0.2)
@click.option("--patience", type=int, default=2, help="Early stop after N epochs.")
@click.option("--seed", type=int, default=0)
@registry_option
@json_option
def finetune_command(
    ref: str,
    data: Path,
    epochs: int,
    name: str | None,
    version: str | None,
    head: int | None,
    freeze: str,
    lr: float,
    batch_size: int,
    val_split: float,
    patience: int,
    seed: int,
    registry: str | None,
    as_json: bool,
) -> None:
    """Fine-tune a published model on new data and publish the child with its lineage.

    REF is the parent, like digits@prod."""
    from modelcrate.reuse.finetune import finetune

    reg = local_registry(registry)
    arrays = read_arrays(data)
    if not isinstance(arrays, dict) or "y" not in arrays or len(arrays) != 2:
        raise InputError(f"{data.name} must be an .npz holding the inputs and the targets 'y'")
    y = arrays.pop("y")
    x = next(iter(arrays.values()))
    spec = freeze if freeze in ("backbone", "none") else [p for p in freeze.split(",") if p]
    child = finetune(
        ref,
        (x, y),
        head=head,
        freeze=spec,
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        val_split=val_split,
        patience=patience,
        seed=seed,
        name=name,
        version=version,
        registry=reg,
        progress=None,
    )
    result = reg.publish(child)
    metrics = child.manifest.metrics
    if as_json:
        print_json({**vars(result), "metrics": metrics})
        return
    shown = ", ".join(f"{k} {v:.4f}" for k, v in sorted(metrics.items()))
    console.print(f"published [bold]{result.name}@{result.version}[/bold] ({shown})")


@click.command("features")
@click.argument("ref")
@click.option("--layer", required=True, help="Torch module path or ONNX tensor name.")
@click.option("--name")
@click.option("--version")
@registry_option
def features_command(
    ref: str, layer: str, name: str | None, version: str | None, registry: str | None
) -> None:
    """Publish a feature extractor: the model up to LAYER, as its own crate.

    REF is the model to cut, like digits@1.0.0."""
    from modelcrate.reuse.features import feature_extractor

    reg = local_registry(registry)
    model = feature_extractor(ref, layer, name=name, version=version, registry=reg)
    result = reg.publish(model.crate)
    output = model.manifest.signature.outputs[0]
    console.print(f"published [bold]{result.name}@{result.version}[/bold] → {output.describe()}")


@click.command("layers")
@click.argument("ref")
@registry_option
@json_option
def layers_command(ref: str, registry: str | None, as_json: bool) -> None:
    """List the layers a feature extractor can stop at.

    REF is a reference or a .crate file."""
    from modelcrate.model import load
    from modelcrate.reuse.features import layers

    found = layers(load(ref, registry=registry))
    if as_json:
        print_json([vars(layer) for layer in found])
        return
    table = Table()
    for column in ("module", "tensor", "op"):
        table.add_column(column)
    for layer in found:
        table.add_row(layer.module or "-", layer.tensor, layer.op)
    console.print(table)


@click.command("pipeline")
@click.argument("refs", nargs=-1, required=True)
@click.option("--name", required=True)
@click.option("--version", required=True)
@registry_option
def pipeline_command(refs: tuple[str, ...], name: str, version: str, registry: str | None) -> None:
    """Publish a pipeline: each stage's outputs feed the next (members pinned by digest).

    REFS are the stages in order, like prep@1 digits@prod."""
    from modelcrate.reuse.compose import pipeline

    reg = local_registry(registry)
    result = reg.publish(pipeline(*refs, name=name, version=version, registry=reg))
    console.print(f"published [bold]{result.name}@{result.version}[/bold] (pipeline)")


@click.command("ensemble")
@click.argument("refs", nargs=-1, required=True)
@click.option("--name", required=True)
@click.option("--version", required=True)
@click.option("--combine", default="mean", help="mean | vote")
@registry_option
def ensemble_command(
    refs: tuple[str, ...], name: str, version: str, combine: str, registry: str | None
) -> None:
    """Publish an ensemble: every member gets the inputs; outputs are combined.

    REFS are the members, like a@1 b@1 c@1."""
    from modelcrate.reuse.compose import ensemble

    reg = local_registry(registry)
    if combine not in ("mean", "vote"):
        raise UsageError(f"--combine {combine!r}: expected mean or vote")
    crate = ensemble(
        list(refs),
        combine="vote" if combine == "vote" else "mean",
        name=name,
        version=version,
        registry=reg,
    )
    result = reg.publish(crate)
    console.print(f"published [bold]{result.name}@{result.version}[/bold] (ensemble, {combine})")


@click.command("lineage")
@click.argument("ref")
@registry_option
@json_option
def lineage_command(ref: str, registry: str | None, as_json: bool) -> None:
    """Show where a version came from and what was made from it.

    REF is a version, like digits@2.0.0."""
    graph = local_registry(registry).lineage(ref)
    if as_json:
        print_json(
            {
                "ref": graph.ref,
                "digest": graph.digest,
                "operation": graph.operation,
                "ancestors": [vars(n) for n in graph.ancestors],
                "descendants": [vars(n) for n in graph.descendants],
            }
        )
        return
    console.print(render_lineage(graph))


def render_lineage(graph: LineageGraph) -> Tree:
    root = Tree(
        f"[bold]{graph.ref}[/bold] {graph.digest[:19]}…"
        + (f" ({graph.operation})" if graph.operation else "")
    )
    if graph.ancestors:
        up = root.add("came from")
        for node in graph.ancestors:
            note = "" if node.in_registry else " [dim](not in this registry)[/dim]"
            up.add(
                f"{'  ' * (node.depth - 1)}{node.ref} {node.digest[:19]}…{note}"
                + (f" ({node.operation})" if node.operation else "")
            )
    if graph.descendants:
        down = root.add("made from it")
        for node in graph.descendants:
            down.add(f"{'  ' * (node.depth - 1)}{node.ref} ({node.operation or 'derived'})")
    if not graph.ancestors and not graph.descendants:
        root.add("[dim]no recorded parents or children[/dim]")
    return root
