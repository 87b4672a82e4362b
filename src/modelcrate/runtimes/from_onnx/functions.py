"""ONNX operators as plain torch functions, each with the ONNX semantics of its node.

The converter calls these from the generated torch.fx graph (and on constants, to fold
them while converting); ``torch.export`` traces through them into core aten operators.
Shape arguments are lists whose items are ints or, inside a traced graph, symbolic sizes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from modelcrate.runtimes.from_onnx.layers import flat_pads

Dims = Sequence[Any]  # ints, or symbolic sizes while tracing


def div(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """ONNX Div: integer division truncates."""
    if not a.is_floating_point() and not b.is_floating_point():
        return torch.div(a, b, rounding_mode="trunc")
    return a / b


def variadic(*xs: torch.Tensor, kind: str) -> torch.Tensor:
    """ONNX Max, Min, Sum, Mean over any number of broadcast inputs."""
    out = xs[0]
    for x in xs[1:]:
        if kind == "Max":
            out = torch.maximum(out, x)
        elif kind == "Min":
            out = torch.minimum(out, x)
        else:
            out = out + x
    return out / len(xs) if kind == "Mean" else out


def selu(x: torch.Tensor, alpha: float, gamma: float) -> torch.Tensor:
    return gamma * torch.where(x > 0, x, alpha * (torch.exp(x) - 1))


def hard_sigmoid(x: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    return torch.clamp(alpha * x + beta, 0.0, 1.0)


def prelu(x: torch.Tensor, slope: torch.Tensor) -> torch.Tensor:
    return torch.where(x >= 0, x, x * slope)


def clip(x: torch.Tensor, low: float | None, high: float | None) -> torch.Tensor:
    return torch.clamp(x, low, high)


def softmax(x: torch.Tensor, axis: int, log: bool, coerce: bool) -> torch.Tensor:
    """Softmax/LogSoftmax; before opset 13 the input is seen as 2-D, split at ``axis``."""
    fn = F.log_softmax if log else F.softmax
    if not coerce:
        return fn(x, dim=axis)
    axis = axis % x.dim()
    flat = x.reshape(math.prod(x.shape[:axis]), -1)
    return fn(flat, dim=1).reshape(x.shape)


def transpose(x: torch.Tensor, perm: list[int] | None) -> torch.Tensor:
    return x.permute(perm if perm is not None else list(range(x.dim()))[::-1])


def reshape(x: torch.Tensor, shape: Dims, allowzero: int) -> torch.Tensor:
    """ONNX Reshape: a 0 copies the input's dimension unless ``allowzero``."""
    dims = [
        x.shape[i] if (not allowzero and isinstance(d, int) and d == 0) else d
        for i, d in enumerate(shape)
    ]
    return x.reshape(dims)


def flatten(x: torch.Tensor, axis: int) -> torch.Tensor:
    axis = axis if axis >= 0 else axis + x.dim()
    if axis == 0:
        return x.reshape(1, -1)
    return x.reshape(math.prod(x.shape[:axis]), -1)


def squeeze(x: torch.Tensor, axes: list[int] | None) -> torch.Tensor:
    if axes is None:
        return torch.squeeze(x)
    for axis in sorted((a % x.dim() for a in axes), reverse=True):
        x = x.squeeze(axis)
    return x


def unsqueeze(x: torch.Tensor, axes: list[int]) -> torch.Tensor:
    rank = x.dim() + len(axes)
    for axis in sorted(a % rank for a in axes):
        x = x.unsqueeze(axis)
    return x


def concat(*xs: torch.Tensor, axis: int) -> torch.Tensor:
    return torch.cat(xs, dim=axis)


def split(x: torch.Tensor, axis: int, sizes: list[int] | None, parts: int) -> tuple[Any, ...]:
    if sizes is not None:
        return tuple(torch.split(x, sizes, dim=axis))
    return tuple(torch.chunk(x, parts, dim=axis))


INT64_MAX = 2**63 - 1


def slice_(
    x: torch.Tensor, starts: list[int], ends: list[int], axes: list[int], steps: list[int]
) -> torch.Tensor:
    """ONNX Slice with positive steps (ends past the dimension are clamped by Python's
    slicing rules, as ONNX clamps them)."""
    index: list[slice] = [slice(None)] * x.dim()
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
        index[axis % x.dim()] = slice(start, None if end >= INT64_MAX else end, step)
    return x[tuple(index)]


def gather(x: torch.Tensor, indices: torch.Tensor, axis: int) -> torch.Tensor:
    """ONNX Gather: negative indices count from the end; the result takes the indices' shape."""
    axis = axis % x.dim()
    size = x.shape[axis]
    flat = indices.reshape(-1).to(torch.int64)
    flat = torch.where(flat < 0, flat + size, flat)
    picked = torch.index_select(x, axis, flat)
    return picked.reshape([*x.shape[:axis], *indices.shape, *x.shape[axis + 1 :]])


def expand(x: torch.Tensor, shape: Dims) -> torch.Tensor:
    return x.expand(torch.broadcast_shapes(x.shape, tuple(shape)))  # type: ignore[no-untyped-call]


def tile(x: torch.Tensor, repeats: list[int]) -> torch.Tensor:
    return x.repeat(repeats)


def cast(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return x.to(dtype)


def cast_like(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return x.to(like.dtype)


def pad(x: torch.Tensor, pads: list[int], mode: str, value: float) -> torch.Tensor:
    """ONNX Pad (constant, reflect or edge) over all axes, pads as (begin…, end…)."""
    rank = len(pads) // 2
    flat = flat_pads(pads[:rank], pads[rank:])
    while len(flat) > 2 and flat[-2:] == [0, 0]:
        flat = flat[:-2]  # F.pad's reflect/replicate modes reject padding of leading axes
    if mode == "constant":
        return F.pad(x, flat, value=value)
    return F.pad(x, flat, mode="reflect" if mode == "reflect" else "replicate")


def full(shape: Dims, value: float | int | bool, dtype: torch.dtype) -> torch.Tensor:
    return torch.full(list(shape), value, dtype=dtype)


def arange(start: Any, limit: Any, delta: Any, dtype: torch.dtype) -> torch.Tensor:
    return torch.arange(start, limit, delta, dtype=dtype)


REDUCERS = {
    "ReduceMean": torch.mean,
    "ReduceSum": torch.sum,
    "ReduceProd": torch.prod,
}


def reduce(x: torch.Tensor, kind: str, axes: list[int] | None, keepdims: bool) -> torch.Tensor:
    """ONNX Reduce* over ``axes`` (None: all axes)."""
    dims = list(range(x.dim())) if axes is None else [a % x.dim() for a in axes]
    if kind in ("ReduceMax", "ReduceMin"):
        fn = torch.amax if kind == "ReduceMax" else torch.amin
        return fn(x, dim=dims, keepdim=keepdims)
    if kind == "ReduceProd":
        for dim in sorted(dims, reverse=True):
            x = torch.prod(x, dim=dim, keepdim=keepdims)
        return x
    if kind == "ReduceL2":
        return torch.sqrt(torch.sum(x * x, dim=dims, keepdim=keepdims))
    if kind == "ReduceSumSquare":
        return torch.sum(x * x, dim=dims, keepdim=keepdims)
    return REDUCERS[kind](x, dim=dims, keepdim=keepdims)  # type: ignore[no-any-return,operator]


def arg(x: torch.Tensor, largest: bool, axis: int, keepdims: bool, last: bool) -> torch.Tensor:
    """ONNX ArgMax/ArgMin; ``last`` picks the last of equal values."""
    if last:
        flipped = torch.flip(x, dims=[axis])
        found = (torch.argmax if largest else torch.argmin)(flipped, dim=axis, keepdim=keepdims)
        return x.shape[axis] - 1 - found
    return (torch.argmax if largest else torch.argmin)(x, dim=axis, keepdim=keepdims)


def gemm(
    a: torch.Tensor,
    b: torch.Tensor,
    c: torch.Tensor | None,
    alpha: float,
    beta: float,
    trans_a: int,
    trans_b: int,
) -> torch.Tensor:
    out = alpha * ((a.T if trans_a else a) @ (b.T if trans_b else b))
    return out if c is None else out + beta * c


def pool(
    x: torch.Tensor,
    kind: str,
    kernel: list[int],
    strides: list[int],
    pads: list[int],
    dilations: list[int],
    ceil_mode: bool,
    count_include_pad: bool,
) -> torch.Tensor:
    """MaxPool / AveragePool in 1–3 spatial dimensions; asymmetric pads are applied first
    (with -inf for max pooling, zeros for average pooling counting the padding)."""
    spatial = len(kernel)
    begin, end = pads[:spatial], pads[spatial:]
    padding: list[int] = list(begin)
    if begin != end:
        fill = -math.inf if kind == "MaxPool" else 0.0
        x = F.pad(x, flat_pads(begin, end), value=fill)
        padding = [0] * spatial
    if kind == "MaxPool":
        fn = (F.max_pool1d, F.max_pool2d, F.max_pool3d)[spatial - 1]
        return fn(x, kernel, strides, padding, dilations, ceil_mode=ceil_mode)
    average = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[spatial - 1]
    return average(x, kernel, strides, padding, ceil_mode, count_include_pad)


def global_pool(x: torch.Tensor, kind: str) -> torch.Tensor:
    dims = list(range(2, x.dim()))
    if kind == "GlobalMaxPool":
        return torch.amax(x, dim=dims, keepdim=True)
    return torch.mean(x, dim=dims, keepdim=True)
