"""modelcrate: package, publish and reuse neural-network models.

import modelcrate as mc
crate = mc.pack(module, example_inputs=(x,), name="digits", version="1.0.0")
mc.publish(crate)
model = mc.load("digits@prod")
model.predict(x)
"""

from __future__ import annotations

import os
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from modelcrate.client import Client
from modelcrate.crate import Crate
from modelcrate.errors import (
    BadReference,
    CrateFormatError,
    InputError,
    IntegrityError,
    ModelcrateError,
    NotFound,
    PackError,
    RegistryError,
    RuntimeUnavailable,
    UnsafeContentError,
    UnsupportedSchemaError,
    UsageError,
    VersionConflict,
)
from modelcrate.manifest import Manifest
from modelcrate.model import Model, load
from modelcrate.optimize import compare, convert, optimize
from modelcrate.pack import pack
from modelcrate.registry.api import Registry
from modelcrate.registry.records import PublishResult

try:
    __version__ = version("modelcrate")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"


def publish(
    crate: Crate | str | os.PathLike[str], *, registry: Registry | str | None = None
) -> PublishResult:
    """Publish a crate (object, ``.crate`` file or directory) to a registry (default: embedded)."""
    reg = registry if isinstance(registry, Registry) else Registry.open(registry)
    return reg.publish(crate)


def pull(ref: str, to: str | os.PathLike[str], *, registry: Registry | str | None = None) -> Path:
    """Write the verified files of ``ref`` into the directory ``to``."""
    reg = registry if isinstance(registry, Registry) else Registry.open(registry)
    return reg.pull(ref, to)


__all__ = [
    "BadReference",
    "Client",
    "Crate",
    "CrateFormatError",
    "InputError",
    "IntegrityError",
    "Manifest",
    "Model",
    "ModelcrateError",
    "NotFound",
    "PackError",
    "PublishResult",
    "Registry",
    "RegistryError",
    "RuntimeUnavailable",
    "UnsafeContentError",
    "UnsupportedSchemaError",
    "UsageError",
    "VersionConflict",
    "__version__",
    "compare",
    "convert",
    "load",
    "optimize",
    "pack",
    "publish",
    "pull",
]
