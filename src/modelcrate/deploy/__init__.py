"""Deployment targets: ``export(ref, format, to)`` writes what another platform needs.

Each target is a module named after its format with one verb, ``export(crate, target,
image=None) -> files``:

``docker`` (docker.py): a build context serving the crate with ``modelcrate serve``;
``kserve`` (kserve.py): an InferenceService using that image over OIP v2;
``triton`` (triton.py): a Triton model repository (``name/1/model.onnx`` +
``config.pbtxt``) generated from the crate's signature; ``tfserving`` (tfserving.py): a
TF Serving model directory (``name/1/saved_model.pb``); ``wheel`` (wheel.py): a
pip-installable Python package of the crate with a loader that needs only onnxruntime;
``prometheus-rules`` (prometheus_rules.py): alerting rules on the server's metrics.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

from modelcrate.errors import UsageError

if TYPE_CHECKING:
    from modelcrate.crate import Crate
    from modelcrate.registry.api import Registry

Format = Literal["docker", "kserve", "triton", "tfserving", "wheel", "prometheus-rules"]
FORMATS: tuple[Format, ...] = (  # module names, with - as _
    "docker",
    "kserve",
    "triton",
    "tfserving",
    "wheel",
    "prometheus-rules",
)


class Exporter(Protocol):
    """What each target module offers: one verb."""

    def export(
        self, crate: Crate, target: Path, *, image: str | None = None, **options: float
    ) -> list[Path]: ...


def export(
    ref: str,
    format: str,
    to: str | os.PathLike[str],
    *,
    registry: Registry | str | None = None,
    image: str | None = None,
    **options: float,
) -> list[Path]:
    """Write the ``format`` deployment of ``ref`` under ``to``; returns the files written.
    ``image`` names the container image (kserve; default ``modelcrate-<name>:<version>``);
    ``options``: the alert thresholds of prometheus-rules (max_error_rate, max_p99_ms)."""
    from modelcrate.registry.api import Registry

    if format not in FORMATS:
        raise UsageError(f"export format {format!r}: expected one of {', '.join(FORMATS)}")
    if options and format != "prometheus-rules":
        raise UsageError("alert thresholds apply to --format prometheus-rules only")
    reg = registry if isinstance(registry, Registry) else Registry.open(registry)
    crate = reg.get(ref)
    target: Exporter = importlib.import_module(f"modelcrate.deploy.{format.replace('-', '_')}")
    return target.export(crate, Path(to), image=image, **options)
