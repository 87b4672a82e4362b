"""Models used by the benchmarks (built locally, random weights; nothing downloaded)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import nn


class MLP(nn.Module):
    """Linear layers of the given widths with ReLU between them."""

    def __init__(self, widths: Sequence[int]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i, (fan_in, fan_out) in enumerate(itertools.pairwise(widths)):
            layers += [nn.Linear(fan_in, fan_out)] + ([nn.ReLU()] if i < len(widths) - 2 else [])
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def mlp_25mb() -> MLP:
    """A compute-bound MLP of ~6.5 M float32 parameters (~26 MB)."""
    return MLP([1024, 2048, 1536, 1024, 10])


def mlp_100mb() -> MLP:
    """~25 M float32 parameters (~100 MB), for pack/publish/load timings."""
    return MLP([1024, 4096, 4096, 1024, 10])
