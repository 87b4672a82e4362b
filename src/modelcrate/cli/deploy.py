"""``export``: write a deployment for another platform (Docker, KServe, Triton, TF Serving)
or the crate as an installable Python wheel."""

from __future__ import annotations

from pathlib import Path

import click

from modelcrate.cli.options import PATH, json_option, local_registry, registry_option
from modelcrate.cli.output import console, print_json


def register(group: click.Group) -> None:
    group.add_command(export_command)


@click.command("export")
@click.argument("ref")
@click.option(
    "--format",
    "-f",
    "format",
    required=True,
    help="docker | kserve | triton | tfserving | wheel | prometheus-rules",
)
@click.option("--to", type=PATH, required=True, help="Directory to write into.")
@click.option("--image", help="Container image (kserve).")
@click.option("--max-error-rate", type=float, help="prometheus-rules: alert above this 5xx share.")
@click.option("--max-p99-ms", type=float, help="prometheus-rules: alert above this p99.")
@registry_option
@json_option
def export_command(
    ref: str,
    format: str,
    to: Path,
    image: str | None,
    max_error_rate: float | None,
    max_p99_ms: float | None,
    registry: str | None,
    as_json: bool,
) -> None:
    """Write what another platform needs to serve a version (or alert on it).

    REF is the version to deploy, like digits@1.0.0."""
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
