"""Models used by the benchmarks (built locally, random weights; nothing downloaded)."""

import torch
from torch import nn


class MLP25MB(nn.Module):
    """A compute-bound MLP of ~6.5 M float32 parameters (~26 MB)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(1024, 2048), nn.ReLU(), nn.Linear(2048, 1536), nn.ReLU(),
            nn.Linear(1536, 1024), nn.ReLU(), nn.Linear(1024, 10),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class MLP100MB(nn.Module):
    """~25 M float32 parameters (~100 MB), for pack/publish/load timings."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(1024, 4096), nn.ReLU(), nn.Linear(4096, 4096), nn.ReLU(),
            nn.Linear(4096, 1024), nn.ReLU(), nn.Linear(1024, 10),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
