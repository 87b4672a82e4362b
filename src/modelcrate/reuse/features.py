"""Feature extraction: a model that returns an intermediate layer of another model.

The crate's ONNX graph is cut at the chosen tensor (``onnx.utils.Extractor``),
so the extractor runs on ONNX Runtime alone, like its parent. A layer is named
either by the torch module it came from (``fc1``, ``backbone.layer3``: the
exporter records each node's module path) or by an ONNX tensor name;
``layers()`` lists both.
"""

from __future__ import annotations

import ast
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelcrate.errors import CrateFormatError, UsageError
from modelcrate.manifest import Lineage, Parent
from modelcrate.registry import ModelRegistry

if TYPE_CHECKING:
    from modelcrate.crate import Crate
    from modelcrate.model import Model

_SCOPES = "pkg.torch.onnx.name_scopes"


@dataclass(frozen=True)
class Layer:
    module: str  # torch module path ('' when unknown)
    tensor: str  # the ONNX tensor holding its output
    op: str


def layers(model: Model) -> list[Layer]:
    """Every node output of the model's ONNX graph, with the torch module it belongs to."""
    graph = _onnx_model(model.crate).graph
    return [
        Layer(_module_path(node), output, node.op_type)
        for node in graph.node
        for output in node.output
        if output
    ]


def feature_extractor(
    ref: str | os.PathLike[str] | Model,
    layer: str,
    *,
    name: str | None = None,
    version: str | None = None,
    registry: ModelRegistry | str | None = None,
) -> Model:
    """A model computing ``layer`` of ``ref`` (module path or ONNX tensor name). Its crate
    (``.crate``, publishable) is named ``<name>-features`` at ``<version>-<layer>`` unless
    ``name``/``version`` say otherwise, with lineage back to the parent."""
    import onnx
    from onnx.utils import Extractor

    from modelcrate.model import Model, load
    from modelcrate.pack import pack

    parent = ref if isinstance(ref, Model) else load(ref, registry=registry)
    manifest = parent.manifest
    source = _onnx_model(parent.crate)
    tensor = _find_tensor(source, layer, manifest.ref)
    inputs = [i.name for i in source.graph.input]
    inferred = onnx.shape_inference.infer_shapes(source)
    cut = Extractor(inferred).extract_model(inputs, [tensor])
    suffix = re.sub(r"[^A-Za-z0-9]+", "-", layer).strip("-") or "features"
    with tempfile.TemporaryDirectory(prefix="modelcrate-features-") as scratch:
        path = Path(scratch) / "features.onnx"
        onnx.save(cut, path)
        crate = pack(
            path,
            name=name or f"{manifest.name}-features",
            version=version or f"{manifest.version}-{suffix}",
            description=f"{layer} of {manifest.ref}",
            samples=parent.samples(),
            lineage=Lineage(
                parents=[Parent(digest=manifest.digest, ref=manifest.ref)],
                operation="feature-extractor",
                parameters={"layer": layer, "tensor": tensor},
            ),
        )
    return Model(crate)  # pack copied the graph into the crate's own files


def _onnx_model(crate: Crate) -> Any:
    import onnx

    artifact = crate.manifest.artifact("onnx")
    if artifact is None:
        raise CrateFormatError(f"{crate.manifest.ref} has no ONNX artifact to cut a layer from")
    if artifact.data_files:
        raise UsageError(
            f"{crate.manifest.ref}: feature extraction from ONNX with external data is not "
            "supported yet"
        )
    return onnx.load_from_string(crate.read_bytes(artifact.path))


def _module_path(node: Any) -> str:
    for prop in node.metadata_props:
        if prop.key == _SCOPES:
            try:
                scopes = ast.literal_eval(prop.value)
            except (ValueError, SyntaxError):
                return ""
            # ['', 'fc1', 'linear']: the last entry names the op, the rest the module path.
            return ".".join(s for s in scopes[:-1] if s)
    return ""


def _find_tensor(model: Any, layer: str, ref: str) -> str:
    outputs = {out for node in model.graph.node for out in node.output}
    if layer in outputs:
        return layer
    matches: list[str] = [
        node.output[0]
        for node in model.graph.node
        if _module_path(node) == layer or _module_path(node).startswith(layer + ".")
    ]
    if not matches:
        modules = sorted({_module_path(n) for n in model.graph.node} - {""})
        raise UsageError(
            f"{ref} has no layer {layer!r}; torch modules: {', '.join(modules) or '(none)'}; "
            "or pass an ONNX tensor name (see modelcrate.layers())"
        )
    return matches[-1]  # the module's output is what its last node produces
