"""Evaluate one version on a data set: accuracy (or error, for float labels) and latency,
recorded in the registry with the time and the data's fingerprint.

    result = mc.evaluate("digits@1.1.0", data={"x": x, "y": y})   # record=True by default
    result.metrics["accuracy"], result.metrics["latency_ms_p99"]
    registry.evaluations("digits")                                 # the history

Predictions run in batches of 256. Latency is one row per call, in this process, after
a warm-up: the median and 99th percentile of up to 200 calls (or 2 seconds), plus the
throughput at batch 32 (samples per second).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np

from modelcrate.crate import Crate
from modelcrate.errors import InputError, UsageError
from modelcrate.model import Model, fingerprint, labelled, load
from modelcrate.refs import is_local_crate
from modelcrate.registry import ModelRegistry, as_registry
from modelcrate.registry.records import Evaluation

BATCH = 256
LATENCY_CALLS = 200
LATENCY_BUDGET_S = 2.0
THROUGHPUT_BATCH = 32


@dataclass(frozen=True)
class Evaluated:
    ref: str
    data: str  # sha256 fingerprint of the inputs and labels
    samples: int
    metrics: dict[str, float]
    recorded: Evaluation | None  # None when not recorded (record=False, or a crate file)


def evaluate(
    ref: str | os.PathLike[str] | Crate,
    data: dict[str, np.ndarray],
    *,
    record: bool = True,
    registry: ModelRegistry | str | None = None,
) -> Evaluated:
    """Measure ``ref`` on ``data`` (arrays named like the inputs, plus labels ``y``) and
    keep the result in the registry's evaluation history (a registry reference only)."""
    from modelcrate.registry.api import Registry

    reg = as_registry(registry)
    model = load(ref) if isinstance(ref, Crate) else load(ref, registry=reg)
    inputs, labels = labelled(model.manifest.signature.inputs, data)
    rows = _rows(inputs, labels)
    metrics = _quality(model, inputs, labels) | _latency(model, inputs)
    arrays = [inputs[n] for n in sorted(inputs)] + ([labels] if labels is not None else [])
    data_id = fingerprint(*arrays)
    stored = None
    from_registry = not isinstance(ref, (Crate, os.PathLike)) and not is_local_crate(str(ref))
    if record and from_registry:
        if not isinstance(reg, Registry):
            raise UsageError("evaluations are kept in an embedded or PostgreSQL registry")
        info = reg.resolve(str(ref))
        stored = reg.record_evaluation(info, data_id, rows, metrics)
    return Evaluated(model.manifest.ref, data_id, rows, metrics, stored)


def _rows(inputs: dict[str, np.ndarray], labels: np.ndarray | None) -> int:
    counts = {len(v) for v in inputs.values()}
    if len(counts) != 1 or (labels is not None and len(labels) not in counts):
        sizes = {k: len(v) for k, v in inputs.items()}
        if labels is not None:
            sizes["y"] = len(labels)
        raise InputError(f"the arrays have different numbers of rows: {sizes}")
    (count,) = counts
    if count == 0:
        raise InputError("the data set is empty")
    return count


def _quality(
    model: Model, inputs: dict[str, np.ndarray], labels: np.ndarray | None
) -> dict[str, float]:
    """Accuracy for integer labels (top-1 of the first output), MSE and MAE for float
    labels; nothing without labels."""
    if labels is None:
        return {}
    count = len(labels)
    outputs = []
    for start in range(0, count, BATCH):
        batch = {k: v[start : start + BATCH] for k, v in inputs.items()}
        outputs.append(next(iter(model.predict(batch).values())))
    scores = np.concatenate(outputs)
    if labels.dtype.kind in "iu":
        if scores.ndim != 2 or scores.shape[1] < 2:
            raise InputError(
                f"integer labels need class scores [rows, classes]; the model gives "
                f"{list(scores.shape)}"
            )
        return {"accuracy": float((scores.argmax(axis=1) == labels).mean())}
    if scores.shape != labels.shape:
        raise InputError(f"labels {list(labels.shape)} do not match outputs {list(scores.shape)}")
    error = scores.astype(np.float64) - labels.astype(np.float64)
    return {"mse": float((error**2).mean()), "mae": float(np.abs(error).mean())}


def _latency(model: Model, inputs: dict[str, np.ndarray]) -> dict[str, float]:
    one = {k: v[:1] for k, v in inputs.items()}
    model.predict(one)  # warm-up
    times: list[float] = []
    deadline = time.perf_counter() + LATENCY_BUDGET_S
    while len(times) < LATENCY_CALLS and (len(times) < 10 or time.perf_counter() < deadline):
        started = time.perf_counter()
        model.predict(one)
        times.append(time.perf_counter() - started)
    reps = -(-THROUGHPUT_BATCH // len(next(iter(inputs.values()))))
    batch = {k: np.concatenate([v] * reps)[:THROUGHPUT_BATCH] for k, v in inputs.items()}
    started = time.perf_counter()
    calls = 0
    while calls < 5 or time.perf_counter() - started < 0.5:
        model.predict(batch)
        calls += 1
    elapsed = time.perf_counter() - started
    return {
        "latency_ms_p50": float(np.percentile(times, 50) * 1000),
        "latency_ms_p99": float(np.percentile(times, 99) * 1000),
        "throughput_batch32": float(calls * THROUGHPUT_BATCH / elapsed),
    }
