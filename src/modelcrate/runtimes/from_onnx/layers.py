"""The ONNX nodes that own weights, as torch modules with named, trainable parameters.

Each module computes exactly what its ONNX node computes, so a converted graph keeps the
ONNX model's outputs; the parameters carry the initializers' values. Matrix products with a
constant right-hand side become ``torch.nn.Linear`` (weight stored as [out, in]) so that the
head of a converted classifier can be replaced and frozen like a torch-born one.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from modelcrate.errors import PackError


def tensor(value: np.ndarray) -> torch.Tensor:
    """``value`` as a tensor, sharing its memory when it is contiguous and writable."""
    array = value if value.flags.c_contiguous else np.ascontiguousarray(value)  # keeps 0-d
    return torch.from_numpy(array if array.flags.writeable else array.copy())


def parameter(value: np.ndarray) -> torch.nn.Parameter:
    return torch.nn.Parameter(tensor(value))


def linear(weight: torch.Tensor, bias: np.ndarray | None) -> torch.nn.Linear:
    """A Linear layer computing ``x @ weight.T + bias`` (``weight`` is [out, in]; made
    contiguous here, which transposes a transposed view with torch's fast copy)."""
    out_features, in_features = weight.shape
    # On the meta device: no random initial weights are made only to be replaced.
    layer = torch.nn.Linear(in_features, out_features, bias=bias is not None, device="meta")
    layer.weight = torch.nn.Parameter(weight.contiguous())
    if bias is not None:
        layer.bias = parameter(bias.reshape(out_features))
    return layer


class Conv(torch.nn.Module):
    """ONNX Conv in 1, 2 or 3 spatial dimensions; asymmetric padding is applied first."""

    def __init__(
        self,
        weight: np.ndarray,
        bias: np.ndarray | None,
        *,
        strides: Sequence[int],
        pads: Sequence[int],
        dilations: Sequence[int],
        group: int,
    ) -> None:
        super().__init__()
        self.weight = parameter(weight)
        self.bias = parameter(bias) if bias is not None else None
        spatial = weight.ndim - 2
        if spatial not in (1, 2, 3):
            raise PackError(f"Conv with {spatial} spatial dimensions is not supported")
        self.conv = (F.conv1d, F.conv2d, F.conv3d)[spatial - 1]
        self.strides, self.dilations, self.group = list(strides), list(dilations), group
        begin, end = list(pads[:spatial]), list(pads[spatial:])
        self.padding = begin if begin == end else [0] * spatial
        self.extra = [] if begin == end else flat_pads(begin, end)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.extra:
            x = F.pad(x, self.extra)
        return self.conv(
            x, self.weight, self.bias, self.strides, self.padding, self.dilations, self.group
        )


def flat_pads(begin: Sequence[int], end: Sequence[int]) -> list[int]:
    """ONNX per-axis (begin…, end…) pads as F.pad's (last axis first) pairs."""
    out: list[int] = []
    for b, e in zip(reversed(begin), reversed(end), strict=True):
        out += [b, e]
    return out


class BatchNorm(torch.nn.Module):
    """ONNX BatchNormalization in inference mode: the running statistics are buffers (kept
    frozen when fine-tuning, as in a torch.export program), scale and bias are trainable."""

    running_mean: torch.Tensor
    running_var: torch.Tensor

    def __init__(
        self,
        scale: np.ndarray,
        bias: np.ndarray,
        mean: np.ndarray,
        var: np.ndarray,
        epsilon: float,
    ) -> None:
        super().__init__()
        self.weight, self.bias, self.epsilon = parameter(scale), parameter(bias), epsilon
        self.register_buffer("running_mean", tensor(mean))
        self.register_buffer("running_var", tensor(var))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(
            x,
            self.running_mean,
            self.running_var,
            self.weight,
            self.bias,
            False,
            0.0,
            self.epsilon,
        )


class LayerNorm(torch.nn.Module):
    """ONNX LayerNormalization over the trailing dimensions the scale covers."""

    def __init__(self, scale: np.ndarray, bias: np.ndarray | None, epsilon: float) -> None:
        super().__init__()
        self.shape = list(scale.shape)
        self.weight = parameter(scale)
        self.bias = parameter(bias) if bias is not None else None
        self.epsilon = epsilon

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.shape, self.weight, self.bias, self.epsilon)


# ONNX gate order -> torch gate order, in blocks of hidden_size rows.
LSTM_GATES = (0, 2, 3, 1)  # ONNX i, o, f, c -> torch i, f, g, o
GRU_GATES = (1, 0, 2)  # ONNX z, r, h -> torch r, z, n


class Recurrent(torch.nn.Module):
    """ONNX LSTM or GRU (one layer, forward or bidirectional, default activations, sequence
    first) on ``torch.nn.LSTM``/``GRU``; returns (Y, Y_h[, Y_c]) shaped as ONNX has them."""

    def __init__(
        self,
        kind: str,
        w: np.ndarray,
        r: np.ndarray,
        b: np.ndarray | None,
        *,
        hidden: int,
        bidirectional: bool,
    ) -> None:
        super().__init__()
        gates = LSTM_GATES if kind == "LSTM" else GRU_GATES
        directions, _, features = w.shape
        cls = torch.nn.LSTM if kind == "LSTM" else torch.nn.GRU
        self.rnn = cls(features, hidden, bidirectional=bidirectional)
        self.kind, self.hidden = kind, hidden
        if b is None:
            b = np.zeros((directions, 2 * len(gates) * hidden), dtype=w.dtype)
        for d in range(directions):
            suffix = "_l0" + ("_reverse" if d == 1 else "")
            split = len(gates) * hidden
            values = {
                "weight_ih": w[d],
                "weight_hh": r[d],
                "bias_ih": b[d][:split],
                "bias_hh": b[d][split:],
            }
            for name, value in values.items():
                blocks = np.split(value, len(gates))
                reordered = np.concatenate([blocks[g] for g in gates])
                with torch.no_grad():  # into the LSTM's own parameters (it tracks them)
                    getattr(self.rnn, name + suffix).copy_(torch.from_numpy(reordered))

    def forward(
        self, x: torch.Tensor, h0: torch.Tensor | None = None, c0: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, ...]:
        if self.kind == "LSTM":
            state = None if h0 is None else (h0, c0 if c0 is not None else torch.zeros_like(h0))
            y, (h, c) = self.rnn(x, state)
            states = [h, c]
        else:
            y, h = self.rnn(x, h0)
            states = [h]
        directions = 2 if self.rnn.bidirectional else 1
        # [seq, batch, dirs*H] -> [seq, dirs, batch, H]
        y = y.reshape(y.shape[0], y.shape[1], directions, self.hidden).transpose(1, 2)
        return (y, *states)
