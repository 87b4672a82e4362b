"""``optimize``, ``convert``, ``compare`` and ``eval``: new versions with parity reports,
side-by-side figures, and a version's measured accuracy and latency."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.table import Table

from modelcrate.cli.arrays import read_arrays
from modelcrate.cli.options import PATH, json_option, local_registry, registry_option
from modelcrate.cli.output import console, errors, print_json

if TYPE_CHECKING:
    import numpy as np

    from modelcrate.manifest import Report
    from modelcrate.optimize import Optimized


def register(group: click.Group) -> None:
    for command in (optimize_command, compare_command, convert_command, eval_command):
        group.add_command(command)


@click.command("optimize")
@click.argument("ref")
@click.option("--quantize", help="int8")
@click.option("--calibrate", type=PATH, help=".npz of inputs: static int8 (QDQ).")
@click.option("--fp16", is_flag=True, help="float16 weights.")
@click.option("--prune", type=float, help="Fraction of each weight matrix to zero.")
@click.option("--data", type=PATH, help=".npz of inputs (+ y) to measure on.")
@click.option("--version", help="Default: PARENT-int8 …")
@click.option("--max-accuracy-drop", type=float)
@click.option("--min-agreement", type=float)
@registry_option
@json_option
def optimize_command(
    ref: str,
    quantize: str | None,
    calibrate: Path | None,
    fp16: bool,
    prune: float | None,
    data: Path | None,
    version: str | None,
    max_accuracy_drop: float | None,
    min_agreement: float | None,
    registry: str | None,
    as_json: bool,
) -> None:
    """Optimize a version into a new one (lineage + parity report) and publish it.

    REF is the parent, like digits@1.0.0."""
    from modelcrate.optimize import optimize

    with errors.status(f"optimizing {ref}…"):
        result = optimize(
            ref,
            quantize=quantize,
            calibrate=read_npz(calibrate),
            fp16=fp16,
            prune=prune,
            data=read_npz(data),
            version=version,
            max_accuracy_drop=max_accuracy_drop,
            min_agreement=min_agreement,
            registry=local_registry(registry),
        )
    render_result(result, as_json)


@click.command("convert")
@click.argument("ref")
@click.option("--to", required=True, help="ort | onnx (ORT-optimized) | tflite")
@click.option("--version", help="Default: PARENT-ort …")
@registry_option
@json_option
def convert_command(
    ref: str, to: str, version: str | None, registry: str | None, as_json: bool
) -> None:
    """Convert a version to another format as a new, parity-checked version.

    REF is the source version, like digits@1.0.0."""
    from modelcrate.optimize import convert

    with errors.status(f"converting {ref} to {to}…"):
        result = convert(ref, to=to, version=version, registry=local_registry(registry))
    render_result(result, as_json)


@click.command("eval")
@click.argument("ref")
@click.option("--data", type=PATH, required=True, help=".npz of inputs (+ labels y).")
@click.option("--record/--no-record", default=True, help="Keep it in the evaluation history.")
@registry_option
@json_option
def eval_command(ref: str, data: Path, record: bool, registry: str | None, as_json: bool) -> None:
    """Accuracy (labels y) and latency of a version, kept with the time and data fingerprint.

    REF is the version, like digits@1.1.0."""
    from modelcrate.optimize.evaluate import evaluate

    arrays = read_npz(data) or {}
    with errors.status(f"evaluating {ref}…"):
        result = evaluate(ref, arrays, record=record, registry=local_registry(registry))
    if as_json:
        print_json(
            {
                "ref": result.ref,
                "data": result.data,
                "samples": result.samples,
                "recorded": result.recorded is not None,
                **result.metrics,
            }
        )
        return
    table = Table(title=f"{result.ref} on {result.samples} samples ({result.data[:19]}…)")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for key, value in result.metrics.items():
        table.add_row(key, f"{value:.4f}" if abs(value) < 1000 else f"{value:,.0f}")
    console.print(table)
    if result.recorded is None:
        console.print("not recorded")


@click.command("compare")
@click.argument("first")
@click.argument("second")
@click.option("--data", type=PATH, help=".npz of inputs (+ y).")
@registry_option
@json_option
def compare_command(
    first: str, second: str, data: Path | None, registry: str | None, as_json: bool
) -> None:
    """Size, speed, accuracy and agreement of SECOND against FIRST.

    FIRST is the baseline (digits@1.0.0), SECOND the candidate (digits@1.0.0-int8)."""
    from modelcrate.optimize import compare

    report = compare(first, second, data=read_npz(data), registry=local_registry(registry))
    if as_json:
        print_json(report.to_dict())
        return
    render_report(report)


def render_result(result: Optimized, as_json: bool) -> None:
    if as_json:
        print_json(
            {
                "ref": result.crate.manifest.ref,
                "digest": result.crate.digest,
                "report": result.report.to_dict(),
            }
        )
        return
    console.print(f"published [bold]{result.crate.manifest.ref}[/bold] {result.crate.digest}")
    render_report(result.report)


def render_report(report: Report) -> None:
    table = Table(title=f"against {report.parent[:19]}… on {report.samples} rows of {report.data}")
    table.add_column("measure")
    table.add_column("value", justify="right")
    rows = [
        ("size ratio", f"{report.size_ratio:.3f}"),
        ("latency ratio (batch 32)", f"{report.latency_ratio:.3f}"),
        ("max abs diff", f"{report.max_abs_diff:.3g}"),
        ("mean abs diff", f"{report.mean_abs_diff:.3g}"),
    ]
    if report.top1_agreement is not None:
        rows.append(("top-1 agreement", f"{report.top1_agreement:.4f}"))
    if report.accuracy is not None and report.parent_accuracy is not None:
        rows.append(
            ("accuracy (parent → this)", f"{report.parent_accuracy:.4f} → {report.accuracy:.4f}")
        )
    if report.sparsity is not None:
        rows.append(("sparsity", f"{report.sparsity:.3f}"))
    for row in rows:
        table.add_row(*row)
    console.print(table)


def read_npz(path: Path | None) -> dict[str, np.ndarray] | None:
    """Arrays by name from an .npz (a single .npy becomes ``x``)."""
    if path is None:
        return None
    loaded = read_arrays(path)
    return loaded if isinstance(loaded, dict) else {"x": loaded}
