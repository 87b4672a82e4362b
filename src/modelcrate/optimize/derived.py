"""What one optimization step makes, and the one verb every step module offers:

    apply(parent: Model, workdir: Path, **options) -> Derived

``quantize.py`` (int8), ``fp16.py``, ``prune.py`` and ``convert.py`` each have it; the
step is chosen by name (``optimize/__init__.py``), packed as a child version with its
lineage, and measured against the parent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from modelcrate.errors import UsageError

if TYPE_CHECKING:
    from modelcrate.model import Model

Parameters = dict[str, str | int | float | bool]


@dataclass(frozen=True)
class Derived:
    """A step's result: a file to pack (ONNX, ORT, TFLite) or a torch module to export again,
    the child version's suffix, the parameters lineage records, and the sparsity reached."""

    source: Path | Any
    suffix: str
    parameters: Parameters = field(default_factory=dict)
    sparsity: float | None = None


class Step(Protocol):
    def apply(self, parent: Model, workdir: Path, **options: Any) -> Derived: ...


def onnx_bytes(parent: Model) -> bytes:
    """The parent's self-contained ONNX artifact (the input of the ONNX steps)."""
    onnx = parent.manifest.artifact("onnx")
    if onnx is None:
        raise UsageError(f"{parent.manifest.ref} has no ONNX artifact to optimize")
    if onnx.data_files:
        raise UsageError("optimizing models with ONNX external data is not supported yet")
    return parent.crate.read_bytes(onnx.path)
