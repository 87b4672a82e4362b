"""PyTorch runtime: rebuilds a module from the crate's torch.export (``.pt2``) artifact.

A ``.pt2`` archive may carry pickled tensors or objects, and torch.export.load
falls back to ``weights_only=False`` when a sample-input file fails to load
safely. So before torch sees the bytes, every member is checked: weights and
constants must be raw tensors (no ``use_pickle``, no custom objects) and the
sample inputs must load with ``weights_only=True``.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from modelcrate.errors import RuntimeUnavailable, UnsafeContentError, UsageError

if TYPE_CHECKING:
    from modelcrate.crate import Crate
    from modelcrate.manifest import Artifact

_SAFE_CONSTANT_PREFIX = "tensor_"


def import_torch() -> Any:
    try:
        import torch
    except ImportError:
        raise RuntimeUnavailable(
            "PyTorch is not installed; install it with: pip install 'modelcrate[torch]'"
        ) from None
    return torch


def check_pt2(data: bytes | Path, label: str = "model.pt2") -> None:
    """Refuse a .pt2 archive (bytes or a file) that would make torch unpickle anything."""
    try:
        archive = zipfile.ZipFile(data if isinstance(data, Path) else io.BytesIO(data))
    except zipfile.BadZipFile:
        raise UnsafeContentError(f"{label} is not a torch.export archive (not a zip)") from None
    torch = import_torch()
    names = archive.namelist()
    if len(names) != len(set(names)):
        raise UnsafeContentError(f"{label}: duplicate members in the archive")
    if not any(n.split("/", 1)[-1].startswith("models/") for n in names):
        raise UnsafeContentError(f"{label} is not a torch.export archive (no models/)")
    for name in names:
        short = name.split("/", 1)[-1]
        if short.endswith("_config.json"):
            _check_payload_config(json.loads(archive.read(name)), f"{label}:{short}")
        elif short.startswith("data/sample_inputs/"):
            try:
                torch.load(io.BytesIO(archive.read(name)), weights_only=True)
            except Exception:
                raise UnsafeContentError(
                    f"{label}: sample inputs {short} need unpickling arbitrary objects; refused"
                ) from None
        elif short.endswith((".pt", ".pkl")) or "serialized_" in short:
            raise UnsafeContentError(f"{label}: pickled member {short} (legacy format) refused")


def _check_payload_config(config: dict[str, Any], label: str) -> None:
    for key, meta in config.get("config", {}).items():
        if meta.get("use_pickle"):
            raise UnsafeContentError(f"{label}: {key} is stored as a pickle; refused")
        path = meta.get("path_name", "")
        if "constants" in label and not path.startswith(_SAFE_CONSTANT_PREFIX):
            raise UnsafeContentError(f"{label}: {key} is a custom object ({path}); refused")


def load_module(crate: Crate, artifact: Artifact) -> Any:
    """Return a torch.nn.Module rebuilt from the crate's .pt2 artifact: read by path from
    the crate's local copy (no copy of the archive in Python memory), or from memory for
    an encrypted crate. The module is kept only if the archive passes its hash check."""
    torch = import_torch()
    local = crate.localize([artifact.path])
    if local is None:
        data = crate.read_bytes(artifact.path)
        check_pt2(data, artifact.path)
        return torch.export.load(io.BytesIO(data)).module()
    with local:  # the module is dropped if a hash fails
        path = local.path(artifact.path)
        check_pt2(path, artifact.path)
        program = torch.export.load(str(path))
    return program.module()


class TorchRuntime:
    """Runs the .pt2 artifact with PyTorch (for parity checks and torch-only ops)."""

    name = "torch"
    thread_safe = True

    def __init__(self, crate: Crate, artifact: Artifact) -> None:
        self.torch = import_torch()
        self.module = load_module(crate, artifact)
        self.output_names = [o.name for o in crate.manifest.signature.outputs]

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        tensors = [self.torch.from_numpy(np.ascontiguousarray(a)) for a in inputs.values()]
        with self.torch.no_grad():
            result = self.module(*tensors)
        flat = list(result) if isinstance(result, (tuple, list)) else [result]
        return {n: t.detach().numpy() for n, t in zip(self.output_names, flat, strict=True)}


FreezeSpec = str | Sequence[str] | None


def head_prefix(module: Any) -> str:
    """The name of the module owning the last parameters (the classifier head, usually)."""
    names = [name for name, _ in module.named_parameters()]
    if not names:
        raise UsageError("the model has no parameters to fine-tune")
    return names[-1].rsplit(".", 1)[0] if "." in names[-1] else ""


def freeze_parameters(module: Any, spec: FreezeSpec) -> list[str]:
    """Freeze parameters by name prefix (or ``"backbone"``: all but the head); returns the
    frozen names. ``None`` or ``"none"`` leaves everything trainable."""
    if spec is None or spec == "none":
        return []
    if spec == "backbone":
        head = head_prefix(module)
        keep = (head + ".") if head else ""
        chosen = [n for n, _ in module.named_parameters() if not n.startswith(keep)]
    else:
        prefixes = [spec] if isinstance(spec, str) else list(spec)
        chosen = [
            n
            for n, _ in module.named_parameters()
            if any(n == p or n.startswith(p.rstrip(".") + ".") for p in prefixes)
        ]
        if not chosen:
            names = sorted({n.rsplit(".", 1)[0] for n, _ in module.named_parameters()})
            raise UsageError(f"freeze {spec!r} matches no parameter; modules: {', '.join(names)}")
    for name, parameter in module.named_parameters():
        parameter.requires_grad_(name not in chosen)
    return chosen
