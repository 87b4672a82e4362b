"""Shared-registry benchmarks (issue 6), run by benchmarks/run.py.

Dedup: ten fine-tunes of one model whose backbone is frozen (only the last layer
changes, as `mc.finetune(..., freeze="backbone")` produces) are packed and
published to a fresh registry. Target: the ten cost <= 1.3x the stored bytes of
one. Baseline in the same run: whole-file content addressing (what the registry
did before chunking), where every changed file is stored again in full.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import torch

import modelcrate as mc

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from models import mlp_25mb  # noqa: E402

VERSIONS = 10


def main() -> list[str]:
    torch.manual_seed(0)
    model = mlp_25mb().eval()
    head = model.net[-1]
    example = (torch.randn(4, 1024),)
    with tempfile.TemporaryDirectory(prefix="mc-bench-dedup-") as scratch:
        registry = mc.Registry.open(Path(scratch) / "registry")
        started, one, whole_one = time.perf_counter(), 0, 0
        whole_files: dict[str, int] = {}
        for number in range(VERSIONS):
            with torch.no_grad():  # a fine-tune with a frozen backbone changes the head only
                head.weight.copy_(torch.randn_like(head.weight) * 0.05)
                head.bias.copy_(torch.randn_like(head.bias) * 0.05)
            crate = mc.pack(model, example_inputs=example, name="mlp", version=f"1.{number}.0")
            registry.publish(crate)
            whole_files.update({f.sha256: f.size for f in crate.manifest.files})
            if number == 0:
                one, whole_one = registry.du("mlp").stored_bytes, sum(whole_files.values())
        seconds = time.perf_counter() - started
        usage = registry.du("mlp")
    ratio = usage.stored_bytes / one
    whole = sum(whole_files.values()) / whole_one
    mb = 1024 * 1024
    return [
        "## Registry (issue 6)",
        "",
        "| measure | value | target |",
        "| --- | --- | --- |",
        f"| {VERSIONS} head-only fine-tunes of a 26 MB MLP, stored / one version (FastCDC "
        f"chunks) | **{ratio:.2f}x** ({usage.stored_bytes / mb:.0f} MB for "
        f"{usage.logical_bytes / mb:.0f} MB logical) | <= 1.3x |",
        f"| same, whole-file content addressing (baseline, same run) | {whole:.2f}x | |",
        f"| one version: stored / logical (ONNX, .pt2 and safetensors hold the same tensors) "
        f"| {one / (usage.logical_bytes / VERSIONS):.2f}x | |",
        f"| pack + publish of the {VERSIONS} versions | {seconds:.1f} s | |",
        "",
    ]


if __name__ == "__main__":
    print("\n".join(main()))
