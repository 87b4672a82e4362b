"""``optimize``, ``convert``, ``compare`` and ``eval``: new versions with parity reports,
side-by-side figures, and a version's measured accuracy and latency."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from modelcrate.cli.arrays import read_arrays
from modelcrate.cli.options import JsonOption, RegistryOption, local_registry
from modelcrate.cli.output import console, errors, print_json

if TYPE_CHECKING:
    import numpy as np

    from modelcrate.manifest import Report
    from modelcrate.optimize import Optimized


def register(app: typer.Typer) -> None:
    app.command("optimize")(optimize_command)
    app.command("compare")(compare_command)
    app.command("convert")(convert_command)
    app.command("eval")(eval_command)


def optimize_command(
    ref: Annotated[str, typer.Argument(help="The parent, like digits@1.0.0.")],
    quantize: Annotated[str | None, typer.Option("--quantize", help="int8")] = None,
    calibrate: Annotated[
        Path | None, typer.Option("--calibrate", help=".npz of inputs: static int8 (QDQ).")
    ] = None,
    fp16: Annotated[bool, typer.Option("--fp16", help="float16 weights.")] = False,
    prune: Annotated[
        float | None, typer.Option("--prune", help="Fraction of each weight matrix to zero.")
    ] = None,
    data: Annotated[
        Path | None, typer.Option("--data", help=".npz of inputs (+ y) to measure on.")
    ] = None,
    version: Annotated[str | None, typer.Option("--version", help="Default: PARENT-int8 …")] = None,
    max_accuracy_drop: Annotated[float | None, typer.Option("--max-accuracy-drop")] = None,
    min_agreement: Annotated[float | None, typer.Option("--min-agreement")] = None,
    registry: RegistryOption = None,
    as_json: JsonOption = False,
) -> None:
    """Optimize a version into a new one (lineage + parity report) and publish it."""
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


def convert_command(
    ref: Annotated[str, typer.Argument(help="The source version, like digits@1.0.0.")],
    to: Annotated[str, typer.Option("--to", help="ort | onnx (ORT-optimized) | tflite")],
    version: Annotated[str | None, typer.Option("--version", help="Default: PARENT-ort …")] = None,
    registry: RegistryOption = None,
    as_json: JsonOption = False,
) -> None:
    """Convert a version to another format as a new, parity-checked version."""
    from modelcrate.optimize import convert

    with errors.status(f"converting {ref} to {to}…"):
        result = convert(ref, to=to, version=version, registry=local_registry(registry))
    render_result(result, as_json)


def eval_command(
    ref: Annotated[str, typer.Argument(help="The version, like digits@1.1.0.")],
    data: Annotated[Path, typer.Option("--data", help=".npz of inputs (+ labels y).")],
    record: Annotated[
        bool, typer.Option("--record/--no-record", help="Keep it in the evaluation history.")
    ] = True,
    registry: RegistryOption = None,
    as_json: JsonOption = False,
) -> None:
    """Accuracy (labels y) and latency of a version, kept with the time and data fingerprint."""
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


def compare_command(
    first: Annotated[str, typer.Argument(help="Baseline, like digits@1.0.0.")],
    second: Annotated[str, typer.Argument(help="Candidate, like digits@1.0.0-int8.")],
    data: Annotated[Path | None, typer.Option("--data", help=".npz of inputs (+ y).")] = None,
    registry: RegistryOption = None,
    as_json: JsonOption = False,
) -> None:
    """Size, speed, accuracy and agreement of SECOND against FIRST."""
    from modelcrate.optimize import compare

    report = compare(first, second, data=read_npz(data), registry=local_registry(registry))
    if as_json:
        print_json(report.model_dump(mode="json"))
        return
    render_report(report)


def render_result(result: Optimized, as_json: bool) -> None:
    if as_json:
        print_json(
            {
                "ref": result.crate.manifest.ref,
                "digest": result.crate.digest,
                "report": result.report.model_dump(mode="json"),
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
