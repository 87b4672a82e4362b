"""Compare two models on the same inputs: outputs, top-1 agreement, accuracy, size, latency."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

import numpy as np

from modelcrate.manifest import Report
from modelcrate.model import Model, labelled

DataSource = Literal["crate samples", "user data", "random"]
LATENCY_BATCH = 32


@dataclass(frozen=True)
class EvalData:
    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None
    source: DataSource


def eval_data(model: Model, data: dict[str, np.ndarray] | None = None) -> EvalData:
    """User data (inputs by name, optional ``y``/``labels``), else the crate's samples,
    else seeded random inputs shaped by the signature."""
    if data is not None:
        inputs, labels = labelled(model.manifest.signature.inputs, data)
        return EvalData(inputs, labels, "user data")
    samples = model.samples()
    if samples:
        return EvalData(samples, None, "crate samples")
    return EvalData(model.example_inputs(), None, "random")


def measure(
    parent: Model, child: Model, data: EvalData, *, sparsity: float | None = None
) -> Report:
    """The parity report of ``child`` against ``parent`` on ``data``."""
    ours = parent.predict(data.inputs)
    theirs = child.predict(data.inputs)
    name = next(iter(ours))
    a, b = ours[name].astype(np.float64), theirs[name].astype(np.float64)
    diff = np.abs(a - b)
    agreement = parent_accuracy = accuracy = None
    if a.ndim == 2 and a.shape[1] > 1:
        agreement = float((a.argmax(1) == b.argmax(1)).mean())
        if data.labels is not None:
            parent_accuracy = float((a.argmax(1) == data.labels).mean())
            accuracy = float((b.argmax(1) == data.labels).mean())
    return Report(
        parent=parent.manifest.digest,
        data=data.source,
        samples=int(next(iter(data.inputs.values())).shape[0]),
        size_ratio=child.manifest.served_bytes() / parent.manifest.served_bytes(),
        max_abs_diff=float(diff.max()) if diff.size else 0.0,
        mean_abs_diff=float(diff.mean()) if diff.size else 0.0,
        top1_agreement=agreement,
        accuracy=accuracy,
        parent_accuracy=parent_accuracy,
        latency_ratio=latency(child, data) / latency(parent, data),
        sparsity=sparsity,
    )


def latency(model: Model, data: EvalData, repeats: int = 15) -> float:
    """Median seconds per call at batch 32 (rows of the data repeated to fill it)."""
    batch = {}
    for name, value in data.inputs.items():
        reps = -(-LATENCY_BATCH // max(1, value.shape[0]))
        batch[name] = np.concatenate([value] * reps)[:LATENCY_BATCH]
    model.predict(batch)  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        model.predict(batch)
        times.append(time.perf_counter() - started)
    return float(np.median(times))
