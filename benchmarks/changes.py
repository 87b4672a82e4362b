"""What changed between two versions (issue 19): `modelcrate diff` as the model grows.

Two versions of the scale benchmark's model (one MatMul, W float32 n x n as ONNX external
data) that differ in one 4 KiB stretch of W, published to one registry. Each step runs in
a fresh process under `/usr/bin/time` after `sync`, alternated with its baselines:

- I/O floor: `cat` of the two weight files to /dev/null (reads both once, keeps nothing);
- naive: numpy reads both W arrays whole and compares them (what a diff that loads both
  models does: peak RSS about twice the model);
- ours: `modelcrate diff NAME@1.0.0 NAME@1.1.0 --json` (materialises both versions in the
  file cache on first use, then compares W chunk by chunk through memory maps);
- `alias set` (which now reads both versions' manifests and checks the signature), for
  the record: its cost does not grow with the model.

python benchmarks/changes.py [0.1 1 4]     # sizes in GiB (default 0.1 1)
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from scale import (  # noqa: E402
    at_sizes,
    make_model,
    median_peak,
    modelcrate,
    shell,
    size_row,
    size_table,
    timed,
)

REPEAT = 3
NAIVE = """
import sys, numpy as np
a = np.fromfile(sys.argv[1], np.float32)
b = np.fromfile(sys.argv[2], np.float32)
print(int(np.count_nonzero(a != b)), float(np.abs(a - b).max()))
"""


def measure(gib: float, scratch: Path) -> dict[str, tuple[float, float]]:
    registry = scratch / "registry"
    first = make_model(scratch / "a", gib)
    second = make_model(scratch / "b", gib)
    with (scratch / "b" / "model.onnx.data").open("r+b") as handle:  # one changed stretch
        handle.seek((handle.seek(0, 2) // 2) & ~4095)
        handle.write(b"\x00" * 4096)
    for version, source in (("1.0.0", first), ("1.1.0", second)):
        crate = scratch / f"{version}.crate"
        subprocess.run(
            modelcrate(
                "pack", str(source), "--name", "big", "--version", version, "-o", str(crate)
            ),
            check=True,
            capture_output=True,
        )
        subprocess.run(
            modelcrate("publish", str(crate), "--registry", str(registry)),
            check=True,
            capture_output=True,
        )
    files = [str(scratch / side / "model.onnx.data") for side in ("a", "b")]
    runs: dict[str, list[tuple[float, float]]] = {}
    rounds = 1 if gib >= 4 else REPEAT
    diff = modelcrate("diff", "big@1.0.0", "big@1.1.0", "--json", "--registry", str(registry))
    first_diff = timed(diff)  # fills the file cache with both versions
    check = subprocess.run(diff, capture_output=True, text=True, check=True)
    (change,) = json.loads(check.stdout)["tensors"]["changes"]
    assert change["name"] == "W" and change["changed_fraction"] < 1e-3, change
    for _ in range(rounds):
        runs.setdefault("cat", []).append(timed(shell(f"cat {files[0]} {files[1]} > /dev/null")))
        runs.setdefault("naive", []).append(timed([sys.executable, "-c", NAIVE, *files]))
        runs.setdefault("diff", []).append(timed(diff))
    for _ in range(rounds):
        alias = modelcrate("alias", "set", "big", "prod", "1.0.0", "--registry", str(registry))
        runs.setdefault("alias", []).append(timed(alias))
        moved = modelcrate("alias", "set", "big", "prod", "1.1.0", "--registry", str(registry))
        runs.setdefault("alias", []).append(timed(moved))
    result = {step: median_peak(values) for step, values in runs.items()}
    result["diff, first (fills the cache)"] = first_diff
    return result


def table(results: dict[float, dict[str, tuple[float, float]]]) -> list[str]:
    lines = size_table(
        "## Diff between versions (issue 19)",
        "`python benchmarks/changes.py`; two published versions of the scale model (W as ONNX "
        "external data) differing in one 4 KiB stretch; fresh process per step after `sync`, "
        f"median wall of {REPEAT} alternated runs (1 at 4 GiB), highest peak RSS.",
    )
    for gib, steps in results.items():
        floor, naive = steps["cat"], steps["naive"]
        rows = [
            ("baseline: `cat` both weight files > /dev/null", floor, ""),
            ("baseline: numpy reads both whole and compares", naive, ""),
            (
                "`modelcrate diff --json`, cached",
                steps["diff"],
                f"{steps['diff'][0] / floor[0]:.1f}x cat time, "
                f"**{steps['diff'][0] / naive[0]:.2f}x** naive time, "
                f"**{steps['diff'][1] / naive[1]:.2f}x** naive RSS",
            ),
            (
                "`modelcrate diff`, first (fills the cache)",
                steps["diff, first (fills the cache)"],
                "",
            ),
            ("`alias set` (with its signature check)", steps["alias"], ""),
        ]
        lines += [size_row(gib, label, figure, ratio) for label, figure, ratio in rows]
    return lines


def main(sizes: list[float] | None = None) -> list[str]:
    return table(at_sizes("diff", sizes, measure))


if __name__ == "__main__":
    print("\n".join(main([float(a) for a in sys.argv[1:]] or None)))
