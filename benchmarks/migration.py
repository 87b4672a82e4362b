"""Migration and libraries (issue 16): time and peak memory as the model grows.

The scale benchmark's model (one MatMul, W float32 n x n as ONNX external data), packed
and published, at 0.1 and 1 GiB (4 GiB on request). Each step runs in a fresh process
under `/usr/bin/time` after `sync`, alternated with its baseline:

- baseline: `onnxruntime.InferenceSession(model.onnx)` plus one run (what serving the
  crate costs);
- `Model.to_torch()` on the ONNX-only crate (the on-the-fly conversion, checked against
  ONNX Runtime) plus one forward pass;
- `modelcrate convert NAME@1.0.0 --to torch` (conversion, torch.export, ONNX re-export,
  parity report, publish), at sizes below 2 GiB (one run; it takes minutes at 1 GiB);
- `modelcrate export --format wheel` against a baseline that zips the same files
  (stored, with Python's zipfile).

python benchmarks/migration.py [0.1 1 4]     # sizes in GiB (default 0.1 1)
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from scale import (  # noqa: E402
    LOAD_RAW,
    at_sizes,
    make_model,
    median_peak,
    modelcrate,
    size_row,
    size_table,
    timed,
)

REPEAT = 3
TO_TORCH = """
import sys, numpy as np, torch, modelcrate as mc
module = mc.load(sys.argv[1], registry=sys.argv[2]).to_torch()
n = module.W.shape[0] if hasattr(module, "W") else next(module.parameters()).shape[1]
with torch.no_grad():
    print(module(torch.ones((1, n)))[0, :2])
"""
ZIP = """
import sys, zipfile, pathlib
with zipfile.ZipFile(sys.argv[2], "w", zipfile.ZIP_STORED) as archive:
    for path in sorted(pathlib.Path(sys.argv[1]).iterdir()):
        archive.write(path, path.name)
"""


def measure(gib: float, scratch: Path) -> dict[str, tuple[float, float]]:
    registry = scratch / "registry"
    source = make_model(scratch / "src", gib)
    crate = scratch / "big.crate"
    for command in (
        modelcrate("pack", str(source), "--name", "big", "--version", "1.0.0", "-o", str(crate)),
        modelcrate("publish", str(crate), "--registry", str(registry)),
    ):
        subprocess.run(command, check=True, capture_output=True)
    runs: dict[str, list[tuple[float, float]]] = {}
    rounds = 1 if gib >= 4 else REPEAT
    wheel = modelcrate(
        "export",
        "big@1.0.0",
        "--format",
        "wheel",
        "--to",
        str(scratch / "dist"),
        "--registry",
        str(registry),
    )
    for _ in range(rounds):
        runs.setdefault("ort", []).append(timed([sys.executable, "-c", LOAD_RAW, str(source)]))
        torch_run = [sys.executable, "-c", TO_TORCH, "big@1.0.0", str(registry)]
        runs.setdefault("to_torch", []).append(timed(torch_run))
        zipped = [sys.executable, "-c", ZIP, str(source.parent), str(scratch / "files.zip")]
        runs.setdefault("zip", []).append(timed(zipped))
        runs.setdefault("wheel", []).append(timed(wheel))
    if gib < 2:
        convert = modelcrate("convert", "big@1.0.0", "--to", "torch", "--registry", str(registry))
        runs["convert"] = [timed(convert)]
    return {step: median_peak(values) for step, values in runs.items()}


def table(results: dict[float, dict[str, tuple[float, float]]]) -> list[str]:
    lines = size_table(
        "## Migration to PyTorch and crates as libraries (issue 16)",
        "`python benchmarks/migration.py`; the scale model (W as ONNX external data), "
        "published; fresh process per step after `sync`, median wall of "
        f"{REPEAT} alternated runs (1 at 4 GiB), highest peak RSS.",
    )
    for gib, steps in results.items():
        ort, zipped = steps["ort"], steps["zip"]
        rows = [
            ("baseline: ONNX Runtime session + one run", ort, ""),
            (
                "`Model.to_torch()` (convert, check against ORT) + one forward",
                steps["to_torch"],
                f"**{steps['to_torch'][0] / ort[0]:.2f}x** time, "
                f"**{steps['to_torch'][1] / ort[1]:.2f}x** RSS of the ORT baseline",
            ),
            ("baseline: zip the model files (stored)", zipped, ""),
            (
                "`export --format wheel`",
                steps["wheel"],
                f"**{steps['wheel'][0] / zipped[0]:.2f}x** time, "
                f"**{steps['wheel'][1] / zipped[1]:.2f}x** RSS of zip",
            ),
        ]
        if "convert" in steps:
            rows.append(
                (
                    "`convert --to torch` (one run: convert, export, parity, publish)",
                    steps["convert"],
                    f"{steps['convert'][0] / ort[0]:.1f}x time, "
                    f"{steps['convert'][1] / ort[1]:.2f}x RSS of the ORT baseline",
                )
            )
        lines += [size_row(gib, label, figure, ratio) for label, figure, ratio in rows]
    return lines


def main(sizes: list[float] | None = None) -> list[str]:
    return table(at_sizes("migration", sizes, measure))


if __name__ == "__main__":
    print("\n".join(main([float(a) for a in sys.argv[1:]] or None)))
