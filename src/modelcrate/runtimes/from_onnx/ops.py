"""Each supported ONNX operator: how one node becomes calls in the graph (``HANDLERS``).

A handler gets the node with its inputs resolved and returns one value per output:
a constant (numpy), shape arithmetic (``Dims``) or a graph node. Attributes and inputs
that must be known while converting (axes, pads, target shapes) are checked here, with an
error naming the node when they are not.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F

from modelcrate.runtimes.from_onnx import functions as fn
from modelcrate.runtimes.from_onnx import layers
from modelcrate.runtimes.from_onnx.graph import Builder, Dims, Handler, Node, Value

HANDLERS: dict[str, Handler] = {}


def handles(*ops: str) -> Callable[[Handler], Handler]:
    def register(handler: Handler) -> Handler:
        for op in ops:
            HANDLERS[op] = handler
        return handler

    return register


# --- helpers -------------------------------------------------------------------------


def text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def known(n: Node, index: int, what: str) -> np.ndarray | None:
    """Input ``index``, which must be known while converting (None when omitted)."""
    value = n.inputs[index] if index < len(n.inputs) else None
    if value is None or isinstance(value, np.ndarray):
        return value
    raise n.refuse(f"{what} must be a constant, not computed at run time")


def ints(n: Node, index: int, what: str) -> list[int] | None:
    """Input ``index`` as a list of ints (None when omitted); it must be a constant."""
    value = known(n, index, what)
    return None if value is None else [int(v) for v in value.reshape(-1)]


def scalar(n: Node, index: int, what: str) -> float | None:
    value = known(n, index, what)
    return None if value is None else float(value.reshape(-1)[0])


def dims_items(value: Value) -> list[Any] | None:
    """A shape vector's items (constant ints or nodes), or None for a tensor."""
    if isinstance(value, Dims):
        return list(value.items)
    if isinstance(value, np.ndarray) and value.dtype.kind in "iu":
        return [int(v) for v in value.reshape(-1)]
    return None


def as_dims(items: list[Any], scalar_: bool = False) -> Value:
    """Shape arithmetic's result: a constant when every item is known."""
    if all(isinstance(i, int) for i in items):
        array = np.array(items, dtype=np.int64)
        return array.reshape(()) if scalar_ else array
    return Dims(items, scalar_)


def torch_dtype(numpy_type: np.dtype | int) -> torch.dtype:
    """The torch dtype of a numpy dtype, or of an ONNX TensorProto type number."""
    if isinstance(numpy_type, int):
        numpy_type = onnx.helper.tensor_dtype_to_np_dtype(numpy_type)
    return torch.from_numpy(np.empty(0, dtype=numpy_type)).dtype


def getitems(b: Builder, value: Value, count: int) -> list[Value]:
    """The first ``count`` items of a tuple-valued call (or folded tuple)."""
    if isinstance(value, tuple):
        return list(value[:count])
    return [b.graph.call_function(operator.getitem, (value, i)) for i in range(count)]


def only_first_output(n: Node, what: str) -> None:
    if any(n.used[1:]):
        raise n.refuse(f"its {what} output is not supported")


def layer_name(n: Node, weight: str, bias: str = "") -> str:
    """A readable module name: a torch exporter's ``fc1.weight`` gives ``fc1``; tf2onnx's
    ``model/dense_1/MatMul`` gives ``dense_1``; else the node's own name."""
    for name, suffix in ((weight, ".weight"), (bias, ".bias")):
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    parts = [p for p in re.split(r"[/:]", n.name) if p]
    return parts[-2] if len(parts) >= 2 else n.name


def add_layer(b: Builder, n: Node, module: torch.nn.Module, *args: Any) -> Any:
    """Call ``module`` (named after the node's weight and bias inputs) on the node's first
    input, or on ``args``."""
    weight, bias = [*n.input_names[1:3], "", ""][:2]
    name = b.module(layer_name(n, weight, bias), module)
    return b.graph.call_module(name, args or (b.tensor(n.inputs[0]),))


def weights(n: Node, *indexes: int) -> list[np.ndarray | None]:
    """Inputs that must be constants (the weights of a layer); None where omitted."""
    return [known(n, i, f"input {i} (weights)") for i in indexes]


# --- elementwise ---------------------------------------------------------------------

UNARY: dict[str, Callable[..., Any]] = {
    "Relu": torch.relu,
    "Sigmoid": torch.sigmoid,
    "Tanh": torch.tanh,
    "Exp": torch.exp,
    "Log": torch.log,
    "Sqrt": torch.sqrt,
    "Neg": torch.neg,
    "Abs": torch.abs,
    "Erf": torch.erf,
    "Reciprocal": torch.reciprocal,
    "Floor": torch.floor,
    "Ceil": torch.ceil,
    "Sin": torch.sin,
    "Cos": torch.cos,
    "Sign": torch.sign,
    "Not": torch.logical_not,
    "Softplus": F.softplus,
    "HardSwish": F.hardswish,
    "IsNaN": torch.isnan,
}

BINARY: dict[str, Callable[..., Any]] = {
    "Add": torch.add,
    "Sub": torch.sub,
    "Mul": torch.mul,
    "Div": fn.div,
    "Pow": torch.pow,
    "Equal": torch.eq,
    "Less": torch.lt,
    "Greater": torch.gt,
    "LessOrEqual": torch.le,
    "GreaterOrEqual": torch.ge,
    "And": torch.logical_and,
    "Or": torch.logical_or,
    "Xor": torch.logical_xor,
}

DIMS_ARITHMETIC = {
    "Add": operator.add,
    "Sub": operator.sub,
    "Mul": operator.mul,
    "Div": operator.floordiv,
}


@handles(*UNARY)
def unary(b: Builder, n: Node) -> list[Value]:
    return [b.call(UNARY[n.op], n, [n.inputs[0]])]


@handles(*BINARY)
def binary(b: Builder, n: Node) -> list[Value]:
    if n.op in DIMS_ARITHMETIC and any(isinstance(x, Dims) for x in n.inputs):
        return [dims_arithmetic(b, n)]
    return [b.call(BINARY[n.op], n, n.inputs[:2])]


def dims_arithmetic(b: Builder, n: Node) -> Value:
    """Add/Sub/Mul/Div on shape values, item by item (scalars broadcast)."""
    left, right = (dims_items(x) for x in n.inputs[:2])
    if left is None or right is None:
        raise n.refuse("shape arithmetic mixed with tensor data is not supported")
    if len(left) == 1:
        left = left * len(right)
    if len(right) == 1:
        right = right * len(left)
    op = DIMS_ARITHMETIC[n.op]
    items = [
        b.graph.call_function(op, (x, y))
        if not (isinstance(x, int) and isinstance(y, int))
        else op(x, y)
        for x, y in zip(left, right, strict=True)
    ]
    scalar_ = all(isinstance(x, Dims) and x.scalar for x in n.inputs[:2] if isinstance(x, Dims))
    return as_dims(items, scalar_ and len(items) == 1)


@handles("Max", "Min", "Sum", "Mean")
def variadic(b: Builder, n: Node) -> list[Value]:
    return [b.call(fn.variadic, n, n.inputs, kind=n.op)]


@handles("Where")
def where(b: Builder, n: Node) -> list[Value]:
    return [b.call(torch.where, n, n.inputs[:3])]


@handles("Identity", "Dropout")
def identity(b: Builder, n: Node) -> list[Value]:
    only_first_output(n, "mask")
    return [n.inputs[0]]


@handles("LeakyRelu", "Elu", "Selu", "HardSigmoid", "Gelu", "PRelu", "Clip")
def activation(b: Builder, n: Node) -> list[Value]:
    x = n.inputs[0]
    if n.op == "LeakyRelu":
        return [b.call(F.leaky_relu, n, [x], negative_slope=n.attr("alpha", 0.01))]
    if n.op == "Elu":
        return [b.call(F.elu, n, [x], alpha=n.attr("alpha", 1.0))]
    if n.op == "Selu":
        alpha, gamma = n.attr("alpha", 1.6732632423543772), n.attr("gamma", 1.0507009873554805)
        return [b.call(fn.selu, n, [x], alpha=alpha, gamma=gamma)]
    if n.op == "HardSigmoid":
        return [
            b.call(fn.hard_sigmoid, n, [x], alpha=n.attr("alpha", 0.2), beta=n.attr("beta", 0.5))
        ]
    if n.op == "Gelu":
        return [b.call(F.gelu, n, [x], approximate=text(n.attr("approximate", "none")))]
    if n.op == "PRelu":
        return [b.call(fn.prelu, n, n.inputs[:2])]
    if n.opset < 11:
        low, high = n.attr("min"), n.attr("max")
    else:
        low, high = scalar(n, 1, "Clip's min"), scalar(n, 2, "Clip's max")
    return [b.call(fn.clip, n, [x], low=low, high=high)]


@handles("Softmax", "LogSoftmax")
def softmax(b: Builder, n: Node) -> list[Value]:
    coerce = n.opset < 13
    axis = n.attr("axis", 1 if coerce else -1)
    return [
        b.call(fn.softmax, n, [n.inputs[0]], axis=axis, log=n.op == "LogSoftmax", coerce=coerce)
    ]


# --- layers with weights -------------------------------------------------------------


@handles("MatMul")
def matmul(b: Builder, n: Node) -> list[Value]:
    x, w = n.inputs[:2]
    if not (isinstance(w, np.ndarray) and w.ndim == 2 and w.dtype.kind == "f") or isinstance(
        x, np.ndarray
    ):
        return [b.call(torch.matmul, n, [x, w])]
    bias, add = bias_after(b, n, w.shape[1])
    name = b.module(
        layer_name(n, n.input_names[1], add.input[1] if add is not None else ""),
        layers.linear(layers.tensor(w).t(), bias),
    )
    out = b.graph.call_module(name, (x,))
    if add is not None:  # the bias Add is part of the Linear now
        b.skip.add(add.output[0])
        b.values[add.output[0]] = out
    return [out]


def bias_after(b: Builder, n: Node, features: int) -> tuple[np.ndarray | None, Any]:
    """The constant bias of an Add that alone reads this MatMul's output, and that Add."""
    readers = b.consumers.get(n.outputs[0], [])
    if len(readers) != 1 or readers[0].op_type != "Add" or b.readers[n.outputs[0]] != 1:
        return None, None
    add = readers[0]
    other = add.input[1] if add.input[0] == n.outputs[0] else add.input[0]
    value = b.values.get(other)
    if not isinstance(value, np.ndarray) or value.size != features or value.dtype.kind != "f":
        return None, None
    if value.ndim > 1 and value.shape[-1] != features:
        return None, None
    if add.input[0] != n.outputs[0]:  # Add(b, y): same sum, keep the names straight
        add = onnx.helper.make_node("Add", [add.input[1], add.input[0]], add.output, add.name)
    return value.reshape(features), add


@handles("Gemm")
def gemm(b: Builder, n: Node) -> list[Value]:
    a, w = n.inputs[:2]
    c = n.inputs[2] if len(n.inputs) > 2 else None
    alpha, beta = n.attr("alpha", 1.0), n.attr("beta", 1.0)
    trans_a, trans_b = n.attr("transA", 0), n.attr("transB", 0)
    weight_like = isinstance(w, np.ndarray) and not isinstance(a, np.ndarray) and not trans_a
    out_features = (w.shape[0] if trans_b else w.shape[1]) if isinstance(w, np.ndarray) else 0
    bias_like = c is None or (isinstance(c, np.ndarray) and c.size in (1, out_features))
    if not (weight_like and bias_like):
        return [
            b.call(fn.gemm, n, [a, w, c], alpha=alpha, beta=beta, trans_a=trans_a, trans_b=trans_b)
        ]
    assert isinstance(w, np.ndarray)
    weight = layers.tensor(w) if trans_b else layers.tensor(w).t()
    if alpha != 1.0:
        weight = weight * alpha
    bias = None
    if c is not None:
        bias = np.broadcast_to(c.reshape(-1) * np.asarray(beta, dtype=c.dtype), out_features)
    return [add_layer(b, n, layers.linear(weight, bias))]


@handles("Conv")
def conv(b: Builder, n: Node) -> list[Value]:
    w, bias = weights(n, 1, 2)
    assert w is not None
    spatial = w.ndim - 2
    strides = n.attr("strides", [1] * spatial)
    dilations = n.attr("dilations", [1] * spatial)
    pads = explicit_pads(b, n, list(w.shape[2:]), strides, dilations)
    module = layers.Conv(
        w, bias, strides=strides, pads=pads, dilations=dilations, group=n.attr("group", 1)
    )
    return [add_layer(b, n, module)]


def explicit_pads(
    b: Builder, n: Node, kernel: list[int], strides: list[int], dilations: list[int]
) -> list[int]:
    """The node's pads as (begin…, end…), working out ``auto_pad`` SAME_* from the input's
    static spatial sizes."""
    spatial = len(kernel)
    mode = text(n.attr("auto_pad", "NOTSET"))
    if mode in ("NOTSET", ""):
        return list(n.attr("pads", [0] * 2 * spatial))
    if mode == "VALID":
        return [0] * 2 * spatial
    shape = b.shapes.get(n.input_names[0])
    sizes = shape[2:] if shape is not None else [None]
    if len(sizes) != spatial or any(s is None for s in sizes):
        raise n.refuse(f"auto_pad {mode} needs the input's spatial sizes, which are not static")
    begin, end = [], []
    for size, k, s, d in zip(sizes, kernel, strides, dilations, strict=True):
        assert size is not None
        total = max(0, (-(-size // s) - 1) * s + (k - 1) * d + 1 - size)
        small, large = total // 2, total - total // 2
        begin.append(small if mode == "SAME_UPPER" else large)
        end.append(large if mode == "SAME_UPPER" else small)
    return begin + end


@handles("BatchNormalization")
def batch_norm(b: Builder, n: Node) -> list[Value]:
    only_first_output(n, "running statistics")
    scale, bias, mean, var = weights(n, 1, 2, 3, 4)
    assert scale is not None and bias is not None and mean is not None and var is not None
    module = layers.BatchNorm(scale, bias, mean, var, n.attr("epsilon", 1e-5))
    return [add_layer(b, n, module)]


@handles("LayerNormalization")
def layer_norm(b: Builder, n: Node) -> list[Value]:
    only_first_output(n, "mean and inverse deviation")
    scale, bias = weights(n, 1, 2)
    assert scale is not None
    axis, rank = n.attr("axis", -1), b.rank(n.input_names[0])
    covered = -axis if axis < 0 else (rank - axis if rank is not None else None)
    if covered != scale.ndim:
        raise n.refuse(f"axis {axis} does not match the scale's {scale.ndim} dimensions")
    module = layers.LayerNorm(scale, bias, n.attr("epsilon", 1e-5))
    return [add_layer(b, n, module)]


DEFAULT_ACTIVATIONS = {"LSTM": ["Sigmoid", "Tanh", "Tanh"], "GRU": ["Sigmoid", "Tanh"]}


@handles("LSTM", "GRU")
def recurrent(b: Builder, n: Node) -> list[Value]:
    w, r, bias = weights(n, 1, 2, 3)
    assert w is not None and r is not None
    direction = text(n.attr("direction", "forward"))
    activations = [text(a) for a in n.attr("activations", [])]
    unsupported = [
        why
        for why, bad in (
            ("sequence_lens", len(n.inputs) > 4 and n.inputs[4] is not None),
            ("peepholes", len(n.inputs) > 7 and n.inputs[7] is not None),
            ("direction reverse", direction == "reverse"),
            ("layout 1 (batch first)", bool(n.attr("layout", 0))),
            ("clip", n.attr("clip") is not None),
            ("input_forget", bool(n.attr("input_forget", 0))),
            ("linear_before_reset=0", n.op == "GRU" and not n.attr("linear_before_reset", 0)),
            (
                "custom activations",
                activations
                not in ([], DEFAULT_ACTIVATIONS[n.op] * (1 + (direction == "bidirectional"))),
            ),
        )
        if bad
    ]
    if unsupported:
        raise n.refuse(f"{', '.join(unsupported)} not supported")
    module = layers.Recurrent(
        n.op,
        w,
        r,
        bias,
        hidden=n.attr("hidden_size", r.shape[-1]),
        bidirectional=direction == "bidirectional",
    )
    states = [n.inputs[i] if i < len(n.inputs) else None for i in (5, 6)]
    args = [b.tensor(n.inputs[0])] + [None if s is None else b.tensor(s) for s in states]
    out = add_layer(b, n, module, *args[: 3 if n.op == "LSTM" else 2])
    return getitems(b, out, 3 if n.op == "LSTM" else 2)


# --- shapes --------------------------------------------------------------------------


@handles("Shape")
def shape(b: Builder, n: Node) -> list[Value]:
    x = n.inputs[0]
    if isinstance(x, np.ndarray):
        items: list[Any] = list(x.shape)
    elif isinstance(x, Dims):
        items = [] if x.scalar else [len(x.items)]
    else:
        rank = b.rank(n.input_names[0])
        if rank is None or x is None:
            raise n.refuse("the input's rank is unknown (ONNX shape inference found none)")
        items = [b.size(x, n.input_names[0], i) for i in range(rank)]
    start, end = n.attr("start", 0), n.attr("end")
    return [as_dims(items[start:end])]


@handles("Gather")
def gather(b: Builder, n: Node) -> list[Value]:
    data, indices = n.inputs[:2]
    if isinstance(data, Dims):
        picked = ints(n, 1, "indices into a shape")
        assert picked is not None and isinstance(indices, np.ndarray)
        items = [data.items[i] for i in picked]
        return [as_dims(items, indices.ndim == 0)]
    return [b.call(fn.gather, n, [data, indices], axis=n.attr("axis", 0))]


@handles("Slice")
def slice_(b: Builder, n: Node) -> list[Value]:
    if n.opset < 10:
        starts, ends, axes = n.attr("starts"), n.attr("ends"), n.attr("axes")
        steps = None
    else:
        starts, ends = ints(n, 1, "starts"), ints(n, 2, "ends")
        axes, steps = ints(n, 3, "axes"), ints(n, 4, "steps")
    assert starts is not None and ends is not None
    axes = axes if axes is not None else list(range(len(starts)))
    steps = steps if steps is not None else [1] * len(starts)
    if any(s <= 0 for s in steps):
        raise n.refuse("negative slice steps are not supported")
    data = n.inputs[0]
    if isinstance(data, Dims):
        items = data.items[starts[0] : ends[0] : steps[0]]
        return [as_dims(items)]
    return [b.call(fn.slice_, n, [data], starts=starts, ends=ends, axes=axes, steps=steps)]


@handles("Concat")
def concat(b: Builder, n: Node) -> list[Value]:
    present = [x for x in n.inputs if x is not None]
    if any(isinstance(x, Dims) for x in present):
        items: list[Any] = []
        for x in present:
            part = dims_items(x)
            if part is None:
                raise n.refuse("shape values concatenated with tensor data")
            items += part
        return [as_dims(items)]
    return [b.call(fn.concat, n, present, axis=n.attr("axis"))]


def axes_of(n: Node, index: int) -> list[int] | None:
    """Axes given as an input (newer opsets) or an attribute (older ones)."""
    if len(n.inputs) > index and n.inputs[index] is not None:
        return ints(n, index, "axes")
    axes = n.attr("axes")
    return list(axes) if axes is not None else None


@handles("Unsqueeze")
def unsqueeze(b: Builder, n: Node) -> list[Value]:
    x, axes = n.inputs[0], axes_of(n, 1)
    assert axes is not None
    if isinstance(x, Dims):
        return [as_dims(list(x.items))] if x.scalar else [x]
    return [b.call(fn.unsqueeze, n, [x], axes=axes)]


@handles("Squeeze")
def squeeze(b: Builder, n: Node) -> list[Value]:
    x = n.inputs[0]
    if isinstance(x, Dims):
        return [as_dims(list(x.items), scalar_=len(x.items) == 1)]
    return [b.call(fn.squeeze, n, [x], axes=axes_of(n, 1))]


@handles("Cast")
def cast(b: Builder, n: Node) -> list[Value]:
    x = n.inputs[0]
    dtype = torch_dtype(n.attr("to"))
    if isinstance(x, Dims):
        if dtype.is_floating_point:
            raise n.refuse("shape values cast to floating point are not supported")
        return [x]
    return [b.call(fn.cast, n, [x], dtype=dtype)]


@handles("CastLike")
def cast_like(b: Builder, n: Node) -> list[Value]:
    return [b.call(fn.cast_like, n, n.inputs[:2])]


@handles("Reshape")
def reshape(b: Builder, n: Node) -> list[Value]:
    x, target = n.inputs[:2]
    if isinstance(x, Dims):
        return [as_dims(list(x.items))]  # a shape vector reshaped stays a vector
    items = dims_items(target) if target is not None else None
    if items is None:
        raise n.refuse("the target shape must be a constant or computed from shapes")
    return [b.call(fn.reshape, n, [x], shape=items, allowzero=n.attr("allowzero", 0))]


@handles("Flatten")
def flatten(b: Builder, n: Node) -> list[Value]:
    return [b.call(fn.flatten, n, [n.inputs[0]], axis=n.attr("axis", 1))]


@handles("Transpose")
def transpose(b: Builder, n: Node) -> list[Value]:
    perm = n.attr("perm")
    return [b.call(fn.transpose, n, [n.inputs[0]], perm=list(perm) if perm else None)]


@handles("Split")
def split(b: Builder, n: Node) -> list[Value]:
    sizes = ints(n, 1, "split sizes") if n.opset >= 13 else n.attr("split")
    out = b.call(
        fn.split,
        n,
        [n.inputs[0]],
        axis=n.attr("axis", 0),
        sizes=list(sizes) if sizes else None,
        parts=n.attr("num_outputs", len(n.outputs)),
    )
    return getitems(b, out, len(n.outputs))


@handles("Expand")
def expand(b: Builder, n: Node) -> list[Value]:
    items = dims_items(n.inputs[1])
    if items is None:
        raise n.refuse("the target shape must be a constant or computed from shapes")
    return [b.call(fn.expand, n, [n.inputs[0]], shape=items)]


@handles("Tile")
def tile(b: Builder, n: Node) -> list[Value]:
    return [b.call(fn.tile, n, [n.inputs[0]], repeats=ints(n, 1, "repeats"))]


@handles("ConstantOfShape")
def constant_of_shape(b: Builder, n: Node) -> list[Value]:
    proto = n.attr("value")
    value = (
        onnx.numpy_helper.to_array(proto).reshape(-1)
        if proto is not None
        else np.zeros(1, np.float32)
    )
    items = dims_items(n.inputs[0])
    if items is None:
        raise n.refuse("the shape must be a constant or computed from shapes")
    if all(isinstance(i, int) for i in items):
        return [np.full(items, value[0], dtype=value.dtype)]
    options = {"shape": items, "value": value[0].item(), "dtype": torch_dtype(value.dtype)}
    return [b.graph.call_function(fn.full, (), options)]


@handles("Range")
def range_(b: Builder, n: Node) -> list[Value]:
    parts = []
    for x in n.inputs[:3]:
        if isinstance(x, Dims) and x.scalar:
            parts.append(x.items[0])
        elif isinstance(x, np.ndarray):
            parts.append(x.item())
        else:
            raise n.refuse("start, limit and delta must be constants or computed from shapes")
    dtype = n.inputs[0].dtype if isinstance(n.inputs[0], np.ndarray) else np.dtype(np.int64)
    if not any(isinstance(p, torch.fx.Node) for p in parts):
        return [np.arange(*parts, dtype=dtype)]
    start, limit, delta = parts
    return [b.graph.call_function(fn.arange, (start, limit, delta), {"dtype": torch_dtype(dtype)})]


@handles("Pad")
def pad(b: Builder, n: Node) -> list[Value]:
    mode = text(n.attr("mode", "constant"))
    pads: list[int] | None
    if n.opset < 11:
        pads, value = list(n.attr("pads")), n.attr("value", 0.0)
    else:
        pads, value = ints(n, 1, "pads"), scalar(n, 2, "constant_value") or 0.0
        axes = ints(n, 3, "axes")
        rank = b.rank(n.input_names[0])
        if axes is not None and pads is not None:
            if rank is None:
                raise n.refuse("padding chosen axes needs the input's rank")
            full = [0] * (2 * rank)
            for i, axis in enumerate(axes):
                full[axis % rank], full[rank + axis % rank] = pads[i], pads[len(axes) + i]
            pads = full
    if mode not in ("constant", "reflect", "edge") or pads is None:
        raise n.refuse(f"pad mode {mode!r} is not supported" if pads else "no pads given")
    return [b.call(fn.pad, n, [n.inputs[0]], pads=pads, mode=mode, value=value)]


@handles("Constant")
def constant(b: Builder, n: Node) -> list[Value]:
    for key, value in n.attrs.items():
        if key == "value":
            return [onnx.numpy_helper.to_array(value)]
        if key in ("value_float", "value_int"):
            return [np.array(value, dtype=np.float32 if key == "value_float" else np.int64)]
        if key in ("value_floats", "value_ints"):
            return [np.array(value, dtype=np.float32 if key == "value_floats" else np.int64)]
    raise n.refuse("only tensor, float and int constants are supported")


# --- reductions and pooling ----------------------------------------------------------


@handles(
    "ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL2", "ReduceSumSquare"
)
def reduce(b: Builder, n: Node) -> list[Value]:
    axes = axes_of(n, 1)
    if not axes and n.attr("noop_with_empty_axes", 0):
        return [n.inputs[0]]
    keep = bool(n.attr("keepdims", 1))
    return [b.call(fn.reduce, n, [n.inputs[0]], kind=n.op, axes=axes or None, keepdims=keep)]


@handles("ArgMax", "ArgMin")
def arg(b: Builder, n: Node) -> list[Value]:
    return [
        b.call(
            fn.arg,
            n,
            [n.inputs[0]],
            largest=n.op == "ArgMax",
            axis=n.attr("axis", 0),
            keepdims=bool(n.attr("keepdims", 1)),
            last=bool(n.attr("select_last_index", 0)),
        )
    ]


@handles("MaxPool", "AveragePool")
def pool(b: Builder, n: Node) -> list[Value]:
    only_first_output(n, "indices")
    kernel = list(n.attr("kernel_shape"))
    spatial = len(kernel)
    strides = list(n.attr("strides", [1] * spatial))
    dilations = list(n.attr("dilations", [1] * spatial))
    pads = explicit_pads(b, n, kernel, strides, dilations)
    include = bool(n.attr("count_include_pad", 0))
    if n.op == "AveragePool" and pads[:spatial] != pads[spatial:] and not include:
        raise n.refuse("asymmetric padding without count_include_pad is not supported")
    if n.op == "AveragePool" and dilations != [1] * spatial:
        raise n.refuse("dilated average pooling is not supported")
    options = dict(kernel=kernel, strides=strides, pads=pads, dilations=dilations)
    return [
        b.call(
            fn.pool,
            n,
            [n.inputs[0]],
            kind=n.op,
            ceil_mode=bool(n.attr("ceil_mode", 0)),
            count_include_pad=include,
            **options,
        )
    ]


@handles("GlobalAveragePool", "GlobalMaxPool")
def global_pool(b: Builder, n: Node) -> list[Value]:
    return [b.call(fn.global_pool, n, [n.inputs[0]], kind=n.op)]
