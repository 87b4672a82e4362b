"""The training loop fine-tuning and distillation share.

Mini-batch Adam over a seeded shuffle, a held-out validation split, early
stopping on validation loss (the best epoch's weights are kept), and a progress
bar on stderr. Only parameters with ``requires_grad`` are handed to the
optimizer, so frozen tensors are never touched, not even by weight decay.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from modelcrate.errors import InputError, UsageError

Loss = Callable[[Any, Any], Any]  # (outputs, targets) -> scalar tensor


@dataclass(frozen=True)
class Settings:
    epochs: int = 3
    lr: float = 1e-3
    batch_size: int = 64
    val_split: float = 0.2
    patience: int = 2
    seed: int = 0
    progress: bool | None = None  # None: only when stderr is a terminal

    def check(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.patience < 1:
            raise UsageError("epochs, batch size and patience must be at least 1")
        if not 0 < self.val_split < 1:
            raise UsageError(f"validation split {self.val_split} must be between 0 and 1")
        if self.lr <= 0:
            raise UsageError(f"learning rate {self.lr} must be positive")


@dataclass
class History:
    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    best_epoch: int = 0
    stopped_early: bool = False


def split(n: int, settings: Settings) -> tuple[np.ndarray, np.ndarray]:
    """Seeded (train, validation) index arrays."""
    order = np.random.default_rng(settings.seed).permutation(n)
    n_val = max(1, round(n * settings.val_split))
    if n - n_val < 1:
        raise InputError(f"{n} examples are too few for a validation split of {settings.val_split}")
    return order[n_val:], order[:n_val]


def fit(
    module: Any, x: np.ndarray, target: np.ndarray, loss_fn: Loss, settings: Settings
) -> History:
    """Train ``module`` in place on (x, target) rows; returns the loss history."""
    import torch

    settings.check()
    torch.manual_seed(settings.seed)
    train_idx, val_idx = split(len(x), settings)
    params = [p for p in module.parameters() if p.requires_grad]
    if not params:
        raise UsageError("every parameter is frozen: nothing to train")
    optimizer = torch.optim.Adam(params, lr=settings.lr)
    xs, ts = torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(target)
    history = History()
    best_state, best_loss, waited = None, float("inf"), 0
    shuffle = np.random.default_rng(settings.seed + 1)
    with _progress(settings) as advance:
        for epoch in range(settings.epochs):
            order = shuffle.permutation(train_idx)
            total = 0.0
            for start in range(0, len(order), settings.batch_size):
                batch = torch.from_numpy(order[start : start + settings.batch_size])
                optimizer.zero_grad()
                loss = loss_fn(module(xs[batch]), ts[batch])
                loss.backward()
                optimizer.step()
                total += float(loss.detach()) * len(batch)
            history.train_loss.append(total / len(train_idx))
            val = evaluate(module, xs[val_idx], ts[val_idx], loss_fn)
            history.val_loss.append(val)
            advance(epoch + 1, history.train_loss[-1], val)
            if val < best_loss - 1e-7:
                best_loss, waited, history.best_epoch = val, 0, epoch + 1
                best_state = {k: v.detach().clone() for k, v in module.state_dict().items()}
            else:
                waited += 1
                if waited >= settings.patience:
                    history.stopped_early = epoch + 1 < settings.epochs
                    break
    if best_state is not None:
        module.load_state_dict(best_state)
    return history


def evaluate(module: Any, xs: Any, ts: Any, loss_fn: Loss) -> float:
    import torch

    with torch.no_grad():
        return float(loss_fn(module(xs), ts))


def accuracy(module: Any, x: np.ndarray, y: np.ndarray) -> float:
    import torch

    with torch.no_grad():
        scores = module(torch.from_numpy(np.ascontiguousarray(x)))
    return float((scores.argmax(dim=-1).numpy() == y).mean())


def classification_loss(module: Any, x: np.ndarray) -> Loss:
    """Cross-entropy on the module's scores; when its outputs are already probabilities
    (a Keras model ending in softmax, say), the negative log-likelihood of them instead."""
    import torch
    import torch.nn.functional as F

    with torch.no_grad():
        probe = module(torch.from_numpy(np.ascontiguousarray(x[:64])))
    rows = probe.sum(dim=-1)
    if (
        probe.dim() == 2
        and bool((probe >= 0).all())
        and torch.allclose(rows, torch.ones_like(rows), atol=1e-4)
    ):
        return lambda p, t: F.nll_loss(torch.log(p.clamp_min(1e-12)), t)
    return F.cross_entropy


class _progress:
    """A Rich progress bar over epochs (or nothing), as a context manager."""

    def __init__(self, settings: Settings) -> None:
        show = settings.progress if settings.progress is not None else sys.stderr.isatty()
        self.bar: Any = None
        self.settings = settings
        if show:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

            self.bar = Progress(
                TextColumn("training"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[losses]}"),
                console=Console(stderr=True),
            )

    def __enter__(self) -> Callable[[int, float, float], None]:
        if self.bar is None:
            return lambda *_: None
        self.bar.start()
        task = self.bar.add_task("train", total=self.settings.epochs, losses="")

        def advance(epoch: int, train: float, val: float) -> None:
            self.bar.update(task, completed=epoch, losses=f"loss {train:.4f} val {val:.4f}")

        return advance

    def __exit__(self, *_: object) -> None:
        if self.bar is not None:
            self.bar.stop()
