"""Deployment targets: ``export(ref, format, to)`` writes what another platform needs.

``docker`` (docker.py): a build context serving the crate with ``modelcrate serve``;
``kserve`` (kserve.py): an InferenceService using that image over OIP v2;
``triton`` (triton.py): a Triton model repository (``name/1/model.onnx`` +
``config.pbtxt``) generated from the crate's signature; ``tfserving`` (tfserving.py): a
TF Serving model directory (``name/1/saved_model.pb``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from modelcrate.errors import UsageError

if TYPE_CHECKING:
    from modelcrate.registry.api import Registry

Format = Literal["docker", "kserve", "triton", "tfserving"]
FORMATS: tuple[Format, ...] = ("docker", "kserve", "triton", "tfserving")


def export(
    ref: str,
    format: str,
    to: str | os.PathLike[str],
    *,
    registry: Registry | str | None = None,
    image: str | None = None,
) -> list[Path]:
    """Write the ``format`` deployment of ``ref`` under ``to``; returns the files written.
    ``image`` names the container image (kserve; default ``modelcrate-<name>:<version>``)."""
    from modelcrate.registry.api import Registry

    if format not in FORMATS:
        raise UsageError(f"export format {format!r}: expected one of {', '.join(FORMATS)}")
    reg = registry if isinstance(registry, Registry) else Registry.open(registry)
    crate = reg.get(ref)
    target = Path(to)
    if format == "docker":
        from modelcrate.deploy.docker import write_context

        return write_context(crate, target)
    if format == "kserve":
        from modelcrate.deploy.kserve import write_manifest

        return write_manifest(crate, target, image=image)
    if format == "tfserving":
        from modelcrate.deploy.tfserving import write_model_dir

        return write_model_dir(crate, target)
    from modelcrate.deploy.triton import write_repository

    return write_repository(crate, target)


def image_name(name: str, version: str) -> str:
    """The default image tag for a crate (tags allow [A-Za-z0-9_.-], 128 chars)."""
    tag = "".join(c if c.isalnum() or c in "_.-" else "-" for c in version)[:128]
    return f"modelcrate-{name}:{tag}"
