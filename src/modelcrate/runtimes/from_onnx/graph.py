"""The conversion's state: the torch.fx graph being built, the module owning its weights,
and what each ONNX value has become (a constant, shape arithmetic, or a graph node)."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import torch

from modelcrate.errors import PackError
from modelcrate.runtimes.from_onnx.layers import parameter, tensor

Value = Any  # np.ndarray (a constant), Dims (shape arithmetic) or torch.fx.Node (a tensor)


@dataclass
class Dims:
    """An int64 shape vector (or scalar) whose items are ints or fx nodes giving an int."""

    items: list[Any]
    scalar: bool = False


@dataclass
class Node:
    """One ONNX node with its inputs resolved (None for an omitted optional input)."""

    op: str
    name: str
    inputs: list[Value | None]
    input_names: list[str]
    outputs: list[str]
    attrs: dict[str, Any]
    opset: int
    used: list[bool] = field(default_factory=list)  # which outputs anything reads

    def attr(self, key: str, default: Any = None) -> Any:
        return self.attrs.get(key, default)

    def refuse(self, why: str) -> PackError:
        return PackError(f"cannot convert ONNX node {self.name!r} ({self.op}) to PyTorch: {why}")


Handler = Callable[["Builder", Node], list[Value]]


class Builder:
    """Holds the graph being built, the module that owns its weights, and the values."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.graph = torch.fx.Graph()
        self.root = torch.nn.Module()
        self.values: dict[str, Value] = {}
        self.names: set[str] = set()
        self.constants: dict[int, tuple[np.ndarray, torch.fx.Node]] = {}
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
        self.shapes = static_shapes(model)
        self.readers: Counter[str] = Counter(
            name for n in model.graph.node for name in n.input if name
        )
        self.readers.update(o.name for o in model.graph.output)
        self.skip: set[str] = set()  # first outputs of nodes folded into an earlier one
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for proto in model.graph.node:
            for name in proto.input:
                self.consumers.setdefault(name, []).append(proto)

    def unique(self, hint: str) -> str:
        name = re.sub(r"\W+", "_", hint).strip("_") or "v"
        if name[0].isdigit():
            name = "v_" + name
        candidate, i = name, 1
        while candidate in self.names:
            i += 1
            candidate = f"{name}_{i}"
        self.names.add(candidate)
        return candidate

    def constant(self, array: np.ndarray, hint: str, trainable: bool = True) -> torch.fx.Node:
        """A get_attr node for a constant: a trainable parameter when it is a float array of
        more than one finite element (and ``trainable``), else a buffer. Each array is
        registered once."""
        known = self.constants.get(id(array))
        if known is not None and known[0] is array:  # (kept: an id is reused once freed)
            return known[1]
        name = self.unique(hint)
        weight = array.dtype.kind == "f" and array.size > 1 and bool(np.isfinite(array).all())
        if trainable and weight:
            self.root.register_parameter(name, parameter(array))
        else:
            self.root.register_buffer(name, tensor(array))
        node = self.graph.get_attr(name)
        self.constants[id(array)] = (array, node)
        return node

    def module(self, hint: str, module: torch.nn.Module) -> str:
        name = self.unique(hint)
        self.root.add_module(name, module)
        return name

    def tensor(self, value: Value, hint: str = "const") -> Any:
        """``value`` as something a graph call takes: a node, or a registered constant."""
        if isinstance(value, np.ndarray):
            return self.constant(value, hint)
        if isinstance(value, Dims):
            raise PackError(f"{hint}: computed shape values used as tensor data are not supported")
        return value

    def call(self, fn: Callable[..., Any], node: Node, args: list[Value], **kwargs: Any) -> Value:
        """``fn(*args, **kwargs)`` in the graph, or computed now when every arg is constant."""
        constant = all(isinstance(a, np.ndarray) or a is None for a in args)
        if constant and not has_node(list(kwargs.values())):
            tensors = [None if a is None else torch.from_numpy(np.array(a)) for a in args]
            with torch.no_grad():
                result = fn(*tensors, **kwargs)
            if isinstance(result, tuple):
                return tuple(r.numpy() for r in result)
            return result.numpy()
        hints = node.input_names + [""] * len(args)
        graph_args = tuple(
            None if a is None else self.tensor(a, hints[i] or node.name) for i, a in enumerate(args)
        )
        return self.graph.call_function(fn, graph_args, kwargs)

    def size(self, x: torch.fx.Node, source: str, axis: int) -> Any:
        """Dimension ``axis`` of ``x``: an int when shape inference knows it, else a node."""
        known = self.shapes.get(source)
        if known is not None and axis < len(known) and known[axis] is not None:
            return known[axis]
        return self.graph.call_method("size", (x, axis))

    def rank(self, source: str) -> int | None:
        known = self.shapes.get(source)
        return None if known is None else len(known)


def static_shapes(model: onnx.ModelProto) -> dict[str, list[int | None]]:
    """Each value's shape from ONNX shape inference (None for a dimension it cannot fix)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # a model shape inference rejects still converts, with fewer constants
        inferred = model
    shapes: dict[str, list[int | None]] = {}
    graph = inferred.graph
    for info in [*graph.input, *graph.value_info, *graph.output]:
        kind = info.type.WhichOneof("value")
        if kind != "tensor_type" or not info.type.tensor_type.HasField("shape"):
            continue
        dims = info.type.tensor_type.shape.dim
        shapes[info.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    return shapes


def has_node(value: Any) -> bool:
    if isinstance(value, torch.fx.Node):
        return True
    return isinstance(value, (list, tuple)) and any(has_node(v) for v in value)
