"""Optimize a published crate into a new, traceable version with a measured parity report.

    mc.optimize("digits@1.0.0", quantize="int8")            # -> digits@1.0.0-int8
    mc.optimize("digits@1.0.0", quantize="int8", calibrate=data)   # static, QDQ
    mc.optimize("digits@1.0.0", fp16=True)
    mc.optimize("digits@1.0.0", prune=0.5)                   # needs the .pt2 artifact
    mc.compare("digits@1.0.0", "digits@1.0.0-int8", data=eval_data)

Every result records its lineage (parent digest, operation, parameters) and a
report (size ratio, output differences, top-1 agreement, accuracy when labels
are given, latency ratio) in its manifest. With ``max_accuracy_drop`` or
``min_agreement`` a result that is worse than allowed is refused and nothing
is published.
"""

from __future__ import annotations

import importlib
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from modelcrate.crate import Crate
from modelcrate.errors import PackError, UsageError
from modelcrate.manifest import Lineage, Parent, Report
from modelcrate.model import Model, load
from modelcrate.optimize.derived import Step
from modelcrate.optimize.parity import EvalData, eval_data, measure
from modelcrate.registry import ModelRegistry, as_registry

Data = dict[str, np.ndarray]
STEPS = {"quantize": "quantize", "fp16": "fp16", "prune": "prune", "convert": "convert"}  # module


@dataclass(frozen=True)
class Optimized:
    crate: Crate
    report: Report
    published: bool


def optimize(
    ref: str | os.PathLike[str] | Crate,
    *,
    quantize: str | None = None,
    calibrate: Data | None = None,
    fp16: bool = False,
    prune: float | None = None,
    data: Data | None = None,
    version: str | None = None,
    max_accuracy_drop: float | None = None,
    min_agreement: float | None = None,
    registry: ModelRegistry | str | None = None,
    publish: bool = True,
) -> Optimized:
    """Make one optimized child of ``ref``, check it against the limits, publish it."""
    operations = [
        op
        for op, on in (("quantize", quantize), ("fp16", fp16), ("prune", prune is not None))
        if on
    ]
    if len(operations) != 1:
        raise UsageError("choose exactly one of --quantize int8, --fp16 or --prune FRACTION")
    if quantize is not None and quantize != "int8":
        raise UsageError(f"--quantize {quantize!r}: only int8 is supported")
    if calibrate is not None and quantize is None:
        raise UsageError("--calibrate only applies to --quantize int8")
    reg = as_registry(registry)
    parent = load(ref, registry=reg) if not isinstance(ref, Crate) else load(ref)
    choices: dict[str, dict[str, Any]] = {
        "quantize": {"calibrate": calibrate},
        "fp16": {},
        "prune": {"amount": prune},
    }
    options = choices[operations[0]]

    def check(report: Report) -> None:
        _check_limits(report, max_accuracy_drop, min_agreement)

    evaluation = eval_data(parent, data)
    result = _derive(parent, operations[0], options, evaluation, version, check)
    if publish:
        reg.publish(result.crate)
    return Optimized(result.crate, result.report, publish)


def _derive(
    parent: Model,
    operation: str,
    options: dict[str, Any],
    evaluation: EvalData,
    version: str | None,
    check: Callable[[Report], None],
) -> Optimized:
    """Apply the ``operation`` step (its module's ``apply``) in a work directory, pack the
    child with its lineage, measure it against the parent, ``check`` the report, and pack it
    again with the report."""
    step: Step = importlib.import_module(f"modelcrate.optimize.{STEPS[operation]}")
    workdir = Path(tempfile.mkdtemp(prefix="modelcrate-optimize-"))
    try:
        made = step.apply(parent, workdir, **options)
        child_version = version or f"{parent.manifest.version}-{made.suffix}"
        lineage = Lineage(
            parents=[Parent(digest=parent.manifest.digest, ref=parent.manifest.ref)],
            operation=operation,
            parameters=made.parameters,
        )
        draft = _pack_child(parent, made.source, child_version, lineage, None)
        report = measure(parent, Model(draft), evaluation, sparsity=made.sparsity)
        check(report)
        child = _pack_child(parent, made.source, child_version, lineage, report)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return Optimized(child, report, False)


CONVERT_TOLERANCE = {"torch": 1e-4}  # max abs output difference; other targets: 1e-3


def convert(
    ref: str | os.PathLike[str] | Crate,
    *,
    to: str,
    version: str | None = None,
    registry: ModelRegistry | str | None = None,
    publish: bool = True,
) -> Optimized:
    """Convert ``ref`` to ``to`` (``ort``, ``onnx`` = ORT-optimized ONNX, ``tflite``, ``torch``)
    as a new version; the converted artifact is loaded back and must match the original's
    outputs (within 1e-4 for torch, 1e-3 otherwise)."""
    reg = as_registry(registry)
    parent = load(ref, registry=reg) if not isinstance(ref, Crate) else load(ref)

    def check(report: Report) -> None:
        if not report.max_abs_diff <= CONVERT_TOLERANCE.get(to, 1e-3):
            raise PackError(
                f"the {to} conversion differs from the original by "
                f"{report.max_abs_diff:.3g}; refused, nothing published"
            )

    result = _derive(parent, "convert", {"to": to}, eval_data(parent), version, check)
    if publish:
        reg.publish(result.crate)
    return Optimized(result.crate, result.report, publish)


def compare(
    a: str | Crate,
    b: str | Crate,
    *,
    data: Data | None = None,
    registry: ModelRegistry | str | None = None,
) -> Report:
    """Measure ``b`` against ``a`` on ``data`` (or ``a``'s samples), as optimize does."""
    reg = as_registry(registry)
    first = load(a) if isinstance(a, Crate) else load(a, registry=reg)
    second = load(b) if isinstance(b, Crate) else load(b, registry=reg)
    return measure(first, second, eval_data(first, data))


def _pack_child(
    parent: Model, source: Path | object, version: str, lineage: Lineage, report: Report | None
) -> Crate:
    from modelcrate.pack import pack

    manifest = parent.manifest
    samples = parent.samples()
    example = None
    if not isinstance(source, Path):  # a torch module (pruned, converted): export it again
        import torch

        inputs = samples if samples is not None else parent.example_inputs()
        example = tuple(torch.from_numpy(inputs[s.name]) for s in manifest.signature.inputs)
    return pack(
        source,
        name=manifest.name,
        version=version,
        example_inputs=example,
        labels=manifest.labels,
        description=manifest.description,
        license=manifest.license,
        tags=manifest.tags,
        lineage=lineage,
        report=report,
        samples=samples if isinstance(source, Path) else None,
        input_names=[s.name for s in manifest.signature.inputs],
        output_names=[s.name for s in manifest.signature.outputs],
    )


def _check_limits(report: Report, max_drop: float | None, min_agreement: float | None) -> None:
    if max_drop is not None:
        if report.accuracy is not None and report.parent_accuracy is not None:
            drop = report.parent_accuracy - report.accuracy
            before, after = report.parent_accuracy, report.accuracy
            what = f"accuracy fell by {drop:.4f} ({before:.4f} -> {after:.4f})"
        elif report.top1_agreement is not None:
            drop = 1.0 - report.top1_agreement
            what = f"top-1 agreement is {report.top1_agreement:.4f}"
        else:
            raise UsageError("--max-accuracy-drop needs a classifier output (or labels in --data)")
        if drop > max_drop:
            raise PackError(f"refused: {what}, more than the allowed {max_drop}; nothing published")
    if min_agreement is not None:
        if report.top1_agreement is None:
            raise UsageError("--min-agreement needs a classifier output")
        if report.top1_agreement < min_agreement:
            raise PackError(
                f"refused: top-1 agreement {report.top1_agreement:.4f} is below "
                f"{min_agreement}; nothing published"
            )
