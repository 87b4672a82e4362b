"""``predict``: run a model on a .npy/.npz file or inline JSON data."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from modelcrate.cli.arrays import read_arrays
from modelcrate.cli.options import (
    PATH,
    identity_option,
    json_option,
    registry_option,
    trust_option,
)
from modelcrate.cli.output import console, print_json
from modelcrate.errors import InputError, UsageError


def register(group: click.Group) -> None:
    group.add_command(predict_command)


@click.command("predict")
@click.argument("ref")
@click.option(
    "--input", "-i", "input_path", type=PATH, help=".npy (one input) or .npz (by input name)."
)
@click.option("--data", "-d", help="JSON nested list, or {name: list}.")
@trust_option
@identity_option
@registry_option
@json_option
def predict_command(
    ref: str,
    input_path: Path | None,
    data: str | None,
    trust: list[str] | None,
    identity: str | None,
    registry: str | None,
    as_json: bool,
) -> None:
    """Run a model and print its outputs.

    REF is a reference (digits@prod) or a .crate file."""
    import numpy as np

    from modelcrate.model import load

    inputs = read_inputs(input_path, data)
    model = load(ref, registry=registry, trust=trust or None, identity=identity)
    outputs = model.predict(inputs)
    if as_json:
        print_json({name: value.tolist() for name, value in outputs.items()})
        return
    labels = model.labels
    for name, value in outputs.items():
        table = Table(title=f"{name} {list(value.shape)} {value.dtype}")
        table.add_column("row")
        table.add_column("values")
        if labels and value.ndim == 2 and value.shape[1] == len(labels):
            table.add_column("top label")
        for i, row in enumerate(value.reshape(value.shape[0], -1) if value.ndim else [value]):
            cells = [str(i), np.array2string(np.asarray(row), precision=4, threshold=12)]
            if labels and value.ndim == 2 and value.shape[1] == len(labels):
                cells.append(labels[int(np.argmax(row))])
            table.add_row(*cells)
        console.print(table)


def read_inputs(path: Path | None, data: str | None) -> Any:
    import numpy as np

    if (path is None) == (data is None):
        raise UsageError("give exactly one of --input FILE or --data JSON")
    if data is not None:
        try:
            value = json.loads(data)
        except json.JSONDecodeError as exc:
            raise InputError(f"--data is not valid JSON: {exc}") from None
        if isinstance(value, dict):
            return {k: np.asarray(v) for k, v in value.items()}
        return np.asarray(value)
    assert path is not None
    return read_arrays(path)
