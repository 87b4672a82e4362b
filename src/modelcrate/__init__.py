"""modelcrate: package, publish and reuse neural-network models.

import modelcrate as mc
crate = mc.pack(module, example_inputs=(x,), name="digits", version="1.0.0")
mc.publish(crate)
model = mc.load("digits@prod")
model.predict(x)

Names are imported on first use (PEP 562), so ``import modelcrate`` and the CLI
start fast and ``mc.load`` pulls in only what loading needs.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

from modelcrate.errors import (
    BadReference,
    BreakingChange,
    CrateFormatError,
    DecryptionError,
    Forbidden,
    InputError,
    IntegrityError,
    ModelcrateError,
    NotAuthorized,
    NotFound,
    PackError,
    RegistryError,
    RequestRefused,
    RuntimeUnavailable,
    ServerError,
    SignatureError,
    TrustError,
    UnsafeContentError,
    UnsupportedSchemaError,
    UsageError,
    VersionConflict,
)

if TYPE_CHECKING:
    from modelcrate.client import Client
    from modelcrate.crate import Crate
    from modelcrate.diff import CrateDiff, diff
    from modelcrate.manifest import Manifest
    from modelcrate.model import Model, load
    from modelcrate.optimize import compare, convert, optimize
    from modelcrate.optimize.evaluate import evaluate
    from modelcrate.pack import pack
    from modelcrate.publishing import encrypt, lineage, publish, pull, push, rollout, sign
    from modelcrate.registry import ModelRegistry, open_registry
    from modelcrate.registry.api import Registry
    from modelcrate.registry.lineage import LineageGraph
    from modelcrate.registry.records import PublishResult, Rollout
    from modelcrate.registry.remote import PushResult
    from modelcrate.reuse.compose import ensemble, pipeline
    from modelcrate.reuse.distill import distill
    from modelcrate.reuse.features import feature_extractor, layers
    from modelcrate.reuse.finetune import finetune
    from modelcrate.trust.signing import Policy, SignatureInfo

_LAZY = {
    "Client": "modelcrate.client",
    "Crate": "modelcrate.crate",
    "CrateDiff": "modelcrate.diff",
    "diff": "modelcrate.diff",
    "Manifest": "modelcrate.manifest",
    "Model": "modelcrate.model",
    "load": "modelcrate.model",
    "compare": "modelcrate.optimize",
    "convert": "modelcrate.optimize",
    "optimize": "modelcrate.optimize",
    "evaluate": "modelcrate.optimize.evaluate",
    "pack": "modelcrate.pack",
    "Registry": "modelcrate.registry.api",
    "ModelRegistry": "modelcrate.registry",
    "open_registry": "modelcrate.registry",
    "LineageGraph": "modelcrate.registry.lineage",
    "PublishResult": "modelcrate.registry.records",
    "Rollout": "modelcrate.registry.records",
    "PushResult": "modelcrate.registry.remote",
    "ensemble": "modelcrate.reuse.compose",
    "pipeline": "modelcrate.reuse.compose",
    "distill": "modelcrate.reuse.distill",
    "feature_extractor": "modelcrate.reuse.features",
    "layers": "modelcrate.reuse.features",
    "finetune": "modelcrate.reuse.finetune",
    "Policy": "modelcrate.trust.signing",
    "SignatureInfo": "modelcrate.trust.signing",
    "encrypt": "modelcrate.publishing",
    "lineage": "modelcrate.publishing",
    "publish": "modelcrate.publishing",
    "pull": "modelcrate.publishing",
    "push": "modelcrate.publishing",
    "rollout": "modelcrate.publishing",
    "sign": "modelcrate.publishing",
}


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("modelcrate")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0.0.0"


class _Package(types.ModuleType):
    """``modelcrate`` itself. ``pack`` and ``optimize`` name both public functions and
    subpackages; importing a subpackage would set the package attribute to the module, so
    that assignment is ignored and the name keeps resolving to the function."""

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and name in _LAZY:
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __getattr__(name: str) -> Any:
    if name == "__version__":
        globals()[name] = value = _version()
        return value
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'modelcrate' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "BadReference",
    "BreakingChange",
    "Client",
    "Crate",
    "CrateDiff",
    "CrateFormatError",
    "DecryptionError",
    "Forbidden",
    "InputError",
    "IntegrityError",
    "LineageGraph",
    "Manifest",
    "Model",
    "ModelRegistry",
    "ModelcrateError",
    "NotAuthorized",
    "NotFound",
    "PackError",
    "Policy",
    "PublishResult",
    "PushResult",
    "Registry",
    "RegistryError",
    "RequestRefused",
    "Rollout",
    "RuntimeUnavailable",
    "ServerError",
    "SignatureError",
    "SignatureInfo",
    "TrustError",
    "UnsafeContentError",
    "UnsupportedSchemaError",
    "UsageError",
    "VersionConflict",
    "__version__",
    "compare",
    "convert",
    "diff",
    "distill",
    "encrypt",
    "ensemble",
    "evaluate",
    "feature_extractor",
    "finetune",
    "layers",
    "lineage",
    "load",
    "open_registry",
    "optimize",
    "pack",
    "pipeline",
    "publish",
    "pull",
    "push",
    "rollout",
    "sign",
]
