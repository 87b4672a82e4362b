"""Train a small CNN on scikit-learn's bundled 8x8 digits (no download) and pack it.

python examples/digits/train.py --out examples/digits/out
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

import modelcrate as mc

LABELS = [str(d) for d in range(10)]


class DigitsCNN(nn.Module):
    """Conv 1->16, Linear 1024->64->10: the reference model of BENCHMARKS.md."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 16, 3, padding=1)
        self.fc1 = nn.Linear(16 * 8 * 8, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv(x)).flatten(1)
        return self.fc2(torch.relu(self.fc1(x)))


def digits_data(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Train/test split of load_digits as float32 images in [0, 1], shape (n, 1, 8, 8)."""
    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None, :, :]
    x_train, x_test, y_train, y_test = train_test_split(
        images, digits.target, test_size=0.25, random_state=seed, stratify=digits.target
    )
    return x_train, x_test, y_train.astype(np.int64), y_test.astype(np.int64)


def train(epochs: int = 15, seed: int = 0) -> tuple[DigitsCNN, float, np.ndarray, np.ndarray]:
    """Train the CNN; returns (model, test accuracy, x_test, y_test)."""
    torch.manual_seed(seed)
    x_train, x_test, y_train, y_test = digits_data(seed)
    model = DigitsCNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    inputs, targets = torch.from_numpy(x_train), torch.from_numpy(y_train)
    for _ in range(epochs):
        model.train()
        for batch in torch.randperm(len(inputs)).split(64):
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(inputs[batch]), targets[batch])
            loss.backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        predicted = model(torch.from_numpy(x_test)).argmax(1).numpy()
    return model, float((predicted == y_test).mean()), x_test, y_test


def pack_digits(model: nn.Module, accuracy: float, version: str = "1.0.0") -> mc.Crate:
    card = Path(__file__).with_name("MODEL_CARD.md")
    _, x_test, _, _ = digits_data()
    return mc.pack(
        model,
        example_inputs=(torch.from_numpy(x_test[:32]),),  # kept in the crate as samples
        name="digits",
        version=version,
        labels=LABELS,
        metrics={"accuracy": round(accuracy, 4)},
        description="Handwritten digit classifier (8x8 grey images, scikit-learn digits).",
        license="Apache-2.0",
        tags=["vision", "classification", "example"],
        model_card=card,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("out"))
    parser.add_argument("--epochs", type=int, default=15)
    args = parser.parse_args()
    model, accuracy, _, _ = train(args.epochs)
    crate = pack_digits(model, accuracy)
    path = crate.save(args.out / f"digits-{crate.version}.crate")
    print(f"trained digits CNN: test accuracy {accuracy:.3f}")
    print(f"packed {crate.manifest.ref} -> {path} ({crate.digest})")


if __name__ == "__main__":
    main()
