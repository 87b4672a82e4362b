"""ONNX -> PyTorch: rebuild an ONNX graph as a trainable ``torch.fx.GraphModule``.

    module = to_module(onnx.load("model.onnx"))   # a torch.nn.Module, inputs in ONNX order

Every ONNX node becomes a call in a torch.fx graph (``ops.py`` maps each operator, one
function per operator in ``functions.py``); nodes that own weights (Conv, Gemm, MatMul by a
constant, BatchNormalization, LayerNormalization, LSTM, GRU) become torch modules with
named ``nn.Parameter``s (``layers.py``), and other float initializers with more than one
element become parameters too, so the whole model trains. Shape arithmetic (Shape, Gather,
Slice, Concat on shapes) is resolved while converting: sizes known from ONNX shape inference
become constants, the others (a dynamic batch) stay symbolic, so the module keeps a
dynamic batch dimension under ``torch.export``. Nodes whose inputs are all constants are
computed once here. An operator without a converter is refused before anything is built,
with every such operator named.

Written here because the maintained converter, onnx2torch 1.5.15, imports torchvision at
import time (its NMS and RoIAlign converters), and torchvision cannot be installed beside
the CPU torch build this project pins.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from modelcrate.errors import CrateFormatError, PackError
from modelcrate.runtimes.from_onnx.graph import Builder, Dims, Handler, Node
from modelcrate.runtimes.from_onnx.ops import HANDLERS
from modelcrate.runtimes.onnxruntime import check_declared, external_data_files

if TYPE_CHECKING:
    from modelcrate.crate import Crate


def unsupported(model: onnx.ModelProto, handlers: dict[str, Handler]) -> Counter[str]:
    ops: Counter[str] = Counter()
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx"):
            ops[f"{node.domain}:{node.op_type}"] += 1
        elif node.op_type not in handlers:
            ops[node.op_type] += 1
    return ops


def to_module(
    model: onnx.ModelProto, arrays: dict[str, np.ndarray] | None = None
) -> torch.fx.GraphModule:
    """A torch module computing what ``model`` computes (inputs in the graph's order).
    ``arrays``: initializer values already read (those stored as ONNX external data)."""
    missing = unsupported(model, HANDLERS)
    if missing:
        listed = ", ".join(
            f"{op} ({n} node{'s' if n > 1 else ''})" for op, n in sorted(missing.items())
        )
        raise PackError(f"cannot convert to PyTorch: no converter for the ONNX ops {listed}")
    builder = Builder(model)
    initializers = {
        i.name: (arrays or {}).get(i.name)
        if i.data_location == onnx.TensorProto.EXTERNAL
        else numpy_helper.to_array(i)
        for i in model.graph.initializer
    }
    absent = sorted(name for name, value in initializers.items() if value is None)
    if absent:
        raise PackError(f"initializers stored as external data were not read: {absent[:5]}")
    builder.values.update(initializers)
    names = set(initializers)
    del initializers, arrays  # each value is released once its last reader is converted
    remaining = Counter(builder.readers)
    for spec in model.graph.input:
        if spec.name not in names:
            builder.values[spec.name] = builder.graph.placeholder(builder.unique(spec.name))
    for proto in model.graph.node:
        if proto.output[0] in builder.skip:
            continue
        node = Node(
            op=proto.op_type,
            name=proto.name or proto.output[0],
            inputs=[builder.values[i] if i else None for i in proto.input],
            input_names=list(proto.input),
            outputs=list(proto.output),
            attrs={a.name: onnx.helper.get_attribute_value(a) for a in proto.attribute},
            opset=builder.opset,
            used=[bool(o) and builder.readers[o] > 0 for o in proto.output],
        )
        results = HANDLERS[node.op](builder, node)
        for out, value in zip(node.outputs, results, strict=False):
            if out:
                builder.values[out] = value
        for name in proto.input:  # weights now live in the modules: drop the arrays
            remaining[name] -= 1
            if name and remaining[name] == 0:
                builder.values.pop(name, None)
    outputs = [output(builder, o.name) for o in model.graph.output]
    builder.graph.output(outputs[0] if len(outputs) == 1 else tuple(outputs))
    module = torch.fx.GraphModule(builder.root, builder.graph)
    module.eval()
    return module


def output(builder: Builder, name: str) -> Any:
    """A graph output; one that is constant (shape arithmetic included) is a buffer."""
    value = builder.values[name]
    if isinstance(value, Dims):
        raise PackError(f"output {name!r} is computed shape arithmetic; not supported")
    if isinstance(value, np.ndarray):
        return builder.constant(value, name, trainable=False)
    return value


def crate_module(crate: Crate) -> torch.fx.GraphModule:
    """The crate's ONNX artifact converted to a torch module (external data included)."""
    artifact = crate.manifest.artifact("onnx")
    if artifact is None:
        kinds = ", ".join(a.kind for a in crate.manifest.artifacts) or "none"
        raise CrateFormatError(
            f"{crate.manifest.ref} has no ONNX or torch-export artifact to rebuild a torch "
            f"module from (it has: {kinds})"
        )
    local = crate.localize([artifact.path, *artifact.data_files])
    if local is None:
        if artifact.data_files:
            raise CrateFormatError(
                f"{crate.manifest.ref}: converting an encrypted crate with ONNX external data "
                "to torch is not supported (decrypt it to a directory first)"
            )
        model = onnx.load_from_string(crate.read_bytes(artifact.path))
        return to_module(model)
    with local:  # dropped if a hash fails
        path = local.path(artifact.path)
        model = onnx.load(str(path), load_external_data=False)
        check_declared(crate, artifact, external_data_files(model))  # only hashed files
        return to_module(model, external_arrays(model, path.parent))


def external_arrays(model: onnx.ModelProto, directory: Path) -> dict[str, np.ndarray]:
    """Initializers kept as ONNX external data, read by offset straight into arrays (onnx's
    own loader refuses the registry cache's hard-linked files and copies every byte twice)."""
    arrays = {}
    for initializer in model.graph.initializer:
        if initializer.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {entry.key: entry.value for entry in initializer.external_data}
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(initializer.data_type))
        shape = [int(d) for d in initializer.dims]
        count = int(np.prod(shape, dtype=np.int64))
        source = directory / Path(info["location"]).name  # pack allows only plain names
        array = np.fromfile(source, dtype=dtype, count=count, offset=int(info.get("offset", 0)))
        if array.size != count:
            raise CrateFormatError(f"{source.name} is shorter than initializer {initializer.name}")
        arrays[initializer.name] = array.reshape(shape)
    return arrays
