"""Unstructured magnitude pruning with torch.nn.utils.prune, made permanent."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from modelcrate.errors import UsageError
from modelcrate.model import Model
from modelcrate.optimize.derived import Derived, Parameters


def apply(parent: Model, workdir: Path, *, amount: float) -> Derived:
    """The parent's torch module with ``amount`` of each weight matrix zeroed (L1)."""
    module, sparsity = prune_module(parent, amount)
    parameters: Parameters = {"amount": amount, "method": "l1"}
    return Derived(module, f"pruned{round(amount * 100)}", parameters, sparsity)


def prune_module(model: Model, amount: float) -> tuple[Any, float]:
    """The crate's torch module with the smallest ``amount`` of each weight matrix zeroed;
    returns (module, sparsity over the pruned weights)."""
    from torch.nn.utils import prune

    if not 0.0 < amount < 1.0:
        raise UsageError(f"--prune {amount}: expected a fraction between 0 and 1")
    module = model.to_torch()  # from the .pt2, or converted from ONNX
    zeros = total = 0
    for submodule in module.modules():
        weight = submodule._parameters.get("weight")
        if weight is None or weight.ndim < 2:
            continue  # biases and norms stay dense
        prune.l1_unstructured(submodule, name="weight", amount=amount)  # type: ignore[no-untyped-call]
        prune.remove(submodule, "weight")  # type: ignore[no-untyped-call]  # bake the mask in
        zeros += int((submodule.weight == 0).sum())
        total += submodule.weight.numel()
    if total == 0:
        raise UsageError(f"{model.manifest.ref} has no weight matrices to prune")
    return module, zeros / total
