"""Fine-tuning: adapt a published model to new data and pack the child with its lineage.

The trainable module comes from the parent crate alone (its ``.pt2`` program,
no source code needed). Parameters keep their original names, so parts can be
frozen by name prefix; ``freeze="backbone"`` freezes everything except the
head, the module that owns the last parameters. ``head=N`` gives that head N
outputs (new weights, seeded), for a new label set.

Note: a torch.export program is traced in inference mode, so dropout stays off
and batch-norm statistics stay frozen while fine-tuning.
"""

from __future__ import annotations

import copy
import os
from typing import TYPE_CHECKING, Any

import numpy as np

from modelcrate.errors import InputError, UsageError
from modelcrate.manifest import Lineage, Parent
from modelcrate.model import fingerprint
from modelcrate.registry import ModelRegistry
from modelcrate.reuse.training import (
    Settings,
    accuracy,
    classification_loss,
    fit,
    split,
)
from modelcrate.runtimes.torch import FreezeSpec, freeze_parameters, head_prefix

if TYPE_CHECKING:
    from modelcrate.crate import Crate


def replace_head(module: Any, outputs: int, seed: int) -> bool:
    """Give the head ``outputs`` rows (fresh weights); False when it already has that many."""
    import torch

    prefix = head_prefix(module)
    owner = module.get_submodule(prefix) if prefix else module
    weight = getattr(owner, "weight", None)
    if weight is None or weight.dim() != 2:
        raise UsageError(f"head {prefix!r} is not a linear layer; cannot give it {outputs} outputs")
    if weight.shape[0] == outputs:
        return False
    torch.manual_seed(seed)
    fresh = torch.nn.Linear(weight.shape[1], outputs, bias=getattr(owner, "bias", None) is not None)
    owner.weight = torch.nn.Parameter(fresh.weight.detach().clone())
    if fresh.bias is not None:
        owner.bias = torch.nn.Parameter(fresh.bias.detach().clone())
    return True


def finetune(
    ref: str | os.PathLike[str],
    data: tuple[np.ndarray, np.ndarray],
    *,
    head: int | None = None,
    labels: list[str] | None = None,
    freeze: FreezeSpec = "backbone",
    epochs: int = 3,
    lr: float = 1e-3,
    batch_size: int = 64,
    val_split: float = 0.2,
    patience: int = 2,
    seed: int = 0,
    name: str | None = None,
    version: str | None = None,
    registry: ModelRegistry | str | None = None,
    progress: bool | None = None,
) -> Crate:
    """Train a copy of ``ref`` on ``data`` = (inputs, targets) and return the child crate.

    Integer targets train a classifier (cross-entropy, accuracy reported before and
    after on the validation split); float targets use mean squared error. The child's
    manifest records the parent digest, a fingerprint of the data, the recipe and the
    metrics."""
    import torch

    from modelcrate.model import load
    from modelcrate.pack import pack

    settings = Settings(epochs, lr, batch_size, val_split, patience, seed, progress)
    settings.check()
    x, y = _check_data(data)
    parent = load(ref, registry=registry)
    manifest = parent.manifest
    module = parent.to_torch(trainable=True)
    classify = y.dtype.kind in "iu"
    _, val_idx = split(len(x), settings)
    before = None
    new_head = replace_head(module, head, seed) if head is not None else False
    if classify and not new_head:
        before = accuracy(module, x[val_idx], y[val_idx])
    frozen = freeze_parameters(module, freeze)
    reference = copy.deepcopy({k: v for k, v in module.state_dict().items() if k in frozen})
    if classify:
        loss_fn: Any = classification_loss(module, x)
        targets = y.astype(np.int64)
    else:
        loss_fn, targets = torch.nn.functional.mse_loss, y.astype(np.float32)
    history = fit(module, x, targets, loss_fn, settings)
    for key, value in reference.items():  # frozen means bit-identical, checked
        if not torch.equal(module.state_dict()[key], value):
            raise RuntimeError(f"frozen parameter {key} changed during fine-tuning")
    metrics = {"val_loss": min(history.val_loss)}
    if classify:
        metrics["accuracy"] = accuracy(module, x[val_idx], y[val_idx])
        if before is not None:
            metrics["accuracy_before"] = before
    data_id = fingerprint(x, y)
    out_labels = labels if labels is not None else (None if new_head else manifest.labels)
    if new_head and head is not None and labels is None and classify:
        out_labels = [str(i) for i in range(head)]
    return pack(
        module,
        example_inputs=(torch.from_numpy(np.ascontiguousarray(x[:32])),),
        name=name or manifest.name,
        version=version or f"{manifest.version}-ft-{data_id[7:15]}",
        description=f"{manifest.ref} fine-tuned on {len(x)} examples",
        labels=out_labels,
        metrics=metrics,
        input_names=[s.name for s in manifest.signature.inputs],
        output_names=[s.name for s in manifest.signature.outputs],
        lineage=Lineage(
            parents=[Parent(digest=manifest.digest, ref=manifest.ref)],
            operation="finetune",
            parameters={
                "data": data_id,
                "examples": len(x),
                "epochs": epochs,
                "epochs_run": len(history.val_loss),
                "best_epoch": history.best_epoch,
                "lr": lr,
                "batch_size": batch_size,
                "val_split": val_split,
                "patience": patience,
                "seed": seed,
                "freeze": _describe(freeze),
                "frozen_tensors": len(frozen),
                "head": head or 0,
            },
        ),
    )


def _check_data(data: Any) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise InputError("data must be (inputs, targets)")
    x, y = (np.asarray(a) for a in data)
    if len(x) != len(y):
        raise InputError(f"{len(x)} inputs but {len(y)} targets")
    if len(x) < 2:
        raise InputError("fine-tuning needs at least 2 examples (one for validation)")
    if x.dtype.kind == "f":
        x = x.astype(np.float32)
    return x, y


def _describe(spec: FreezeSpec) -> str:
    if spec is None:
        return "none"
    return spec if isinstance(spec, str) else ",".join(spec)
