"""Optimization benchmarks (issue 4), run by benchmarks/run.py.

For each model: dynamic int8 via `mc.optimize`, then size ratio (int8 ÷ fp32
ONNX bytes), CPU latency ratio at batch 32 (the two sessions alternated, median
of 3 repetitions of 20 calls) and top-1 agreement on evaluation data (the
digits test split; seeded random inputs for the random-weight models).
"""

from __future__ import annotations

import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

import modelcrate as mc

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "examples" / "digits"))
from models import MiniLMSized, mlp_25mb  # noqa: E402
from train import train  # noqa: E402

BATCH = 32


def alternate_latency(a: mc.Model, b: mc.Model, batch: dict[str, np.ndarray]) -> float:
    """Median of 3 repetitions of (b time ÷ a time) over 20 calls each, alternated."""
    a.predict(batch)
    b.predict(batch)
    ratios = []
    for _ in range(3):
        times = []
        for model in (a, b):
            started = time.perf_counter()
            for _ in range(20):
                model.predict(batch)
            times.append(time.perf_counter() - started)
        ratios.append(times[1] / times[0])
    return statistics.median(ratios)


def bench(
    label: str,
    model: nn.Module,
    example: torch.Tensor,
    data: dict[str, np.ndarray],
    registry: mc.Registry,
) -> str:
    name = label.split()[0].lower()
    crate = mc.pack(model, example_inputs=(example,), name=name, version="1.0.0")
    registry.publish(crate)
    result = mc.optimize(f"{name}@1.0.0", quantize="int8", data=data, registry=registry)
    fp32 = mc.load(f"{name}@1.0.0", registry=registry)
    int8 = mc.load(f"{name}@1.0.0-int8", registry=registry)
    input_name = fp32.manifest.signature.inputs[0].name
    rows = next(iter(data.values()))
    batch = {input_name: np.concatenate([rows] * (BATCH // len(rows) + 1))[:BATCH]}
    latency = alternate_latency(fp32, int8, batch)
    report = result.report
    accuracy = (
        ""
        if report.accuracy is None
        else f" (accuracy {report.parent_accuracy:.4f} → {report.accuracy:.4f})"
    )
    size_mb = sum(f.size for f in fp32.manifest.files if f.path == "model.onnx") / 2**20
    return (
        f"| {label} | {size_mb:.1f} MB | {report.size_ratio:.2f} | {latency:.2f} | "
        f"{report.top1_agreement:.4f}{accuracy} | {report.samples} |"
    )


def main() -> list[str]:
    work = Path(tempfile.mkdtemp(prefix="modelcrate-optimize-"))
    try:
        registry = mc.Registry.open(work / "registry")
        torch.manual_seed(0)
        digits_model, _, x_test, y_test = train()
        rng = np.random.default_rng(0)
        rows = [
            bench(
                "digits CNN",
                digits_model,
                torch.from_numpy(x_test[:32]),
                {"x": x_test, "y": y_test},
                registry,
            ),
            bench(
                "MLP (~26 MB)",
                mlp_25mb().eval(),
                torch.randn(32, 1024),
                {"x": rng.standard_normal((512, 1024)).astype(np.float32)},
                registry,
            ),
            bench(
                "MiniLM-sized transformer (seq 128)",
                MiniLMSized().eval(),
                torch.randint(0, 30522, (2, 128)),
                {"ids": rng.integers(0, 30522, (64, 128))},
                registry,
            ),
        ]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return [
        "## Optimize: dynamic int8 vs fp32 (`mc.optimize(..., quantize='int8')`)",
        "",
        "| model | fp32 ONNX | size ratio (target ≤ 0.3) | latency ratio, batch 32 "
        "(target ≤ 0.7) | top-1 agreement (target ≥ 0.99 on digits) | eval rows |",
        "| --- | --- | --- | --- | --- | --- |",
        *rows,
        "",
    ]
