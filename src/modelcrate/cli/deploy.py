"""``export``: write a deployment for another platform (Docker, KServe, Triton, TF Serving)
or the crate as an installable Python wheel."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from modelcrate.cli.options import JsonOption, RegistryOption, local_registry
from modelcrate.cli.output import console, print_json


def register(app: typer.Typer) -> None:
    app.command("export")(export_command)


def export_command(
    ref: Annotated[str, typer.Argument(help="The version to deploy, like digits@1.0.0.")],
    format: Annotated[
        str,
        typer.Option(
            "--format",
            "-f",
            help="docker | kserve | triton | tfserving | wheel | prometheus-rules",
        ),
    ],
    to: Annotated[Path, typer.Option("--to", help="Directory to write into.")],
    image: Annotated[str | None, typer.Option("--image", help="Container image (kserve).")] = None,
    max_error_rate: Annotated[
        float | None,
        typer.Option("--max-error-rate", help="prometheus-rules: alert above this 5xx share."),
    ] = None,
    max_p99_ms: Annotated[
        float | None, typer.Option("--max-p99-ms", help="prometheus-rules: alert above this p99.")
    ] = None,
    registry: RegistryOption = None,
    as_json: JsonOption = False,
) -> None:
    """Write what another platform needs to serve a version (or alert on it)."""
    from modelcrate.deploy import export

    thresholds = {
        k: v
        for k, v in (("max_error_rate", max_error_rate), ("max_p99_ms", max_p99_ms))
        if v is not None
    }
    written = export(ref, format, to, registry=local_registry(registry), image=image, **thresholds)
    if as_json:
        print_json([str(p) for p in written])
        return
    for path in written:
        console.print(f"wrote {path}")
