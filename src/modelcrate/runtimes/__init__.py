"""Runtimes run one artifact of a crate behind the same small protocol.

ONNX Runtime is the default and needs no deep-learning framework. PyTorch is
imported lazily, only when asked for (``Model.to_torch``).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np


class Runtime(Protocol):
    """Runs a model: named float/int arrays in, named arrays out."""

    name: str

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...
