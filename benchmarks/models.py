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


class MiniLMSized(nn.Module):
    """A MiniLM-sized text classifier (6 layers, 384 wide, 12 heads, 30,522-token vocabulary),
    random weights: token ids [batch, seq] -> logits [batch, classes]."""

    def __init__(
        self, vocab: int = 30522, width: int = 384, layers: int = 6, classes: int = 4
    ) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.position = nn.Embedding(512, width)
        layer = nn.TransformerEncoderLayer(width, 12, 4 * width, batch_first=True, dropout=0.0)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(width, classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(ids.shape[1], device=ids.device)
        hidden = self.encoder(self.embed(ids) + self.position(positions))
        return self.head(hidden.mean(dim=1))
