"""Reuse commands: finetune, features, layers, pipeline, ensemble, lineage."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table
from rich.tree import Tree

from modelcrate.cli.arrays import read_arrays
from modelcrate.cli.options import JsonOption, RegistryOption, local_registry
from modelcrate.cli.output import console, print_json
from modelcrate.errors import InputError, UsageError

if TYPE_CHECKING:
    from modelcrate.registry.lineage import LineageGraph


def register(app: typer.Typer) -> None:
    app.command("finetune")(finetune_command)
    app.command("features")(features_command)
    app.command("layers")(layers_command)
    app.command("pipeline")(pipeline_command)
    app.command("ensemble")(ensemble_command)
    app.command("lineage")(lineage_command)


def finetune_command(
    ref: Annotated[str, typer.Argument(help="The parent, like digits@prod.")],
    data: Annotated[
        Path,
        typer.Option("--data", help=".npz with the inputs (x, or the input name) and targets y."),
    ],
    epochs: Annotated[int, typer.Option("--epochs")] = 3,
    name: Annotated[str | None, typer.Option("--name", help="Default: the parent's.")] = None,
    version: Annotated[str | None, typer.Option("--version")] = None,
    head: Annotated[int | None, typer.Option("--head", help="Outputs of a new head.")] = None,
    freeze: Annotated[
        str, typer.Option("--freeze", help="backbone | none | comma-separated name prefixes.")
    ] = "backbone",
    lr: Annotated[float, typer.Option("--lr")] = 1e-3,
    batch_size: Annotated[int, typer.Option("--batch-size")] = 64,
    val_split: Annotated[float, typer.Option("--val-split")] = 0.2,
    patience: Annotated[int, typer.Option("--patience", help="Early stop after N epochs.")] = 2,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    registry: RegistryOption = None,
    as_json: JsonOption = False,
) -> None:
    """Fine-tune a published model on new data and publish the child with its lineage."""
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


def features_command(
    ref: Annotated[str, typer.Argument(help="The model to cut, like digits@1.0.0.")],
    layer: Annotated[str, typer.Option("--layer", help="Torch module path or ONNX tensor name.")],
    name: Annotated[str | None, typer.Option("--name")] = None,
    version: Annotated[str | None, typer.Option("--version")] = None,
    registry: RegistryOption = None,
) -> None:
    """Publish a feature extractor: the model up to LAYER, as its own crate."""
    from modelcrate.reuse.features import feature_extractor

    reg = local_registry(registry)
    model = feature_extractor(ref, layer, name=name, version=version, registry=reg)
    result = reg.publish(model.crate)
    output = model.manifest.signature.outputs[0]
    console.print(f"published [bold]{result.name}@{result.version}[/bold] → {output.describe()}")


def layers_command(
    ref: Annotated[str, typer.Argument(help="A reference or a .crate file.")],
    registry: RegistryOption = None,
    as_json: JsonOption = False,
) -> None:
    """List the layers a feature extractor can stop at."""
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


def pipeline_command(
    refs: Annotated[list[str], typer.Argument(help="Stages in order, like prep@1 digits@prod.")],
    name: Annotated[str, typer.Option("--name")],
    version: Annotated[str, typer.Option("--version")],
    registry: RegistryOption = None,
) -> None:
    """Publish a pipeline: each stage's outputs feed the next (members pinned by digest)."""
    from modelcrate.reuse.compose import pipeline

    reg = local_registry(registry)
    result = reg.publish(pipeline(*refs, name=name, version=version, registry=reg))
    console.print(f"published [bold]{result.name}@{result.version}[/bold] (pipeline)")


def ensemble_command(
    refs: Annotated[list[str], typer.Argument(help="Members, like a@1 b@1 c@1.")],
    name: Annotated[str, typer.Option("--name")],
    version: Annotated[str, typer.Option("--version")],
    combine: Annotated[str, typer.Option("--combine", help="mean | vote")] = "mean",
    registry: RegistryOption = None,
) -> None:
    """Publish an ensemble: every member gets the inputs; outputs are combined."""
    from modelcrate.reuse.compose import ensemble

    reg = local_registry(registry)
    if combine not in ("mean", "vote"):
        raise UsageError(f"--combine {combine!r}: expected mean or vote")
    crate = ensemble(
        refs,
        combine="vote" if combine == "vote" else "mean",
        name=name,
        version=version,
        registry=reg,
    )
    result = reg.publish(crate)
    console.print(f"published [bold]{result.name}@{result.version}[/bold] (ensemble, {combine})")


def lineage_command(
    ref: Annotated[str, typer.Argument(help="A version, like digits@2.0.0.")],
    registry: RegistryOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show where a version came from and what was made from it."""
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
