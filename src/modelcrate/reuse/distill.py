"""Knowledge distillation: train a smaller student to mimic a published teacher.

The teacher runs on ONNX Runtime over unlabeled inputs; the student (any torch
module with the teacher's input and output shapes) learns the teacher's
softened class distribution (KL divergence at a temperature, scaled by T²) or,
for non-class outputs, its values (mean squared error). Agreement with the
teacher is measured on a held-out split and recorded in the student's crate.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import numpy as np

from modelcrate.errors import InputError, UsageError
from modelcrate.manifest import Lineage, Parent
from modelcrate.model import fingerprint
from modelcrate.registry import ModelRegistry
from modelcrate.reuse.training import Settings, fit, split

if TYPE_CHECKING:
    from modelcrate.crate import Crate


def distill(
    teacher: str | os.PathLike[str],
    student: Any,
    data: np.ndarray,
    *,
    temperature: float = 2.0,
    epochs: int = 10,
    lr: float = 1e-3,
    batch_size: int = 64,
    val_split: float = 0.2,
    patience: int = 3,
    seed: int = 0,
    name: str | None = None,
    version: str = "1.0.0",
    registry: ModelRegistry | str | None = None,
    progress: bool | None = None,
) -> Crate:
    """Train ``student`` (a torch module) on the teacher's outputs for ``data`` (inputs
    only, no labels) and pack it; metrics: ``agreement`` (top-1, on the held-out split)
    and the parameter ratio student / teacher when the teacher has a torch artifact."""
    import torch

    from modelcrate.model import load
    from modelcrate.pack import pack

    if temperature <= 0:
        raise UsageError(f"temperature {temperature} must be positive")
    settings = Settings(epochs, lr, batch_size, val_split, patience, seed, progress)
    settings.check()
    x = np.ascontiguousarray(np.asarray(data, dtype=np.float32))
    if len(x) < 2:
        raise InputError("distillation needs at least 2 inputs")
    source = load(teacher, registry=registry)
    manifest = source.manifest
    targets = np.concatenate(
        [next(iter(source.predict(x[i : i + 256]).values())) for i in range(0, len(x), 256)]
    ).astype(np.float32)
    classify = targets.ndim == 2 and targets.shape[1] > 1

    def loss_fn(outputs: Any, wanted: Any) -> Any:
        if not classify:
            return torch.nn.functional.mse_loss(outputs, wanted)
        soft = torch.nn.functional.log_softmax(wanted / temperature, dim=-1)
        log_p = torch.nn.functional.log_softmax(outputs / temperature, dim=-1)
        kl = torch.nn.functional.kl_div(log_p, soft, log_target=True, reduction="batchmean")
        return kl * temperature**2

    student.train()
    history = fit(student, x, targets, loss_fn, settings)
    student.eval()
    _, val_idx = split(len(x), settings)
    with torch.no_grad():
        predicted = student(torch.from_numpy(x[val_idx])).numpy()
    metrics = {"val_loss": min(history.val_loss)}
    if classify:
        agree = predicted.argmax(axis=-1) == targets[val_idx].argmax(axis=-1)
        metrics["agreement"] = float(agree.mean())
    student_params = sum(p.numel() for p in student.parameters())
    if manifest.artifact("torch-export") is not None:
        teacher_params = sum(p.numel() for p in source.to_torch(trainable=False).parameters())
        metrics["parameter_ratio"] = student_params / teacher_params
    return pack(
        student,
        example_inputs=(torch.from_numpy(x[:32]),),
        name=name or f"{manifest.name}-student",
        version=version,
        description=f"distilled from {manifest.ref} on {len(x)} unlabeled inputs",
        labels=manifest.labels,
        metrics=metrics,
        input_names=[s.name for s in manifest.signature.inputs],
        output_names=[s.name for s in manifest.signature.outputs],
        lineage=Lineage(
            parents=[Parent(digest=manifest.digest, ref=manifest.ref)],
            operation="distill",
            parameters={
                "data": fingerprint(x),
                "examples": len(x),
                "temperature": temperature,
                "epochs": epochs,
                "epochs_run": len(history.val_loss),
                "lr": lr,
                "batch_size": batch_size,
                "seed": seed,
                "student_parameters": student_params,
            },
        ),
    )
