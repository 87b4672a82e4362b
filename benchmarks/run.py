"""`make bench`: every benchmark, one results table (benchmarks/results.md).

python benchmarks/run.py [foundation] [optimizing] [serving] [registry] [scale] [cli] [changes]
    [overload] [migration] [breakdown] [instructions] [stalls]
SCALE_GIB="0.1 1 4" python benchmarks/run.py scale                          # make bench-scale
"""

from __future__ import annotations

import datetime
import os
import platform
import sys
from pathlib import Path

import numpy as np
import onnxruntime
import torch

import modelcrate as mc

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import breakdown  # noqa: E402
import changes  # noqa: E402
import cli  # noqa: E402
import foundation  # noqa: E402
import instructions  # noqa: E402
import migration  # noqa: E402
import optimizing  # noqa: E402
import overload  # noqa: E402
import registry  # noqa: E402
import scale  # noqa: E402
import serving  # noqa: E402
import stalls  # noqa: E402


def sizes() -> list[float]:
    """Model sizes in GiB for the size suites: SCALE_GIB, by default 0.1 and 1."""
    return [float(g) for g in os.environ.get("SCALE_GIB", "0.1 1").split()]


SUITES = {
    "foundation": foundation.main,
    "optimizing": optimizing.main,
    "serving": serving.main,
    "registry": registry.main,
    "cli": cli.main,
    "overload": overload.main,
    "breakdown": breakdown.main,
    "instructions": instructions.main,
    "changes": lambda: changes.main(sizes()),
    "migration": lambda: migration.main(sizes()),
    "scale": lambda: scale.main(sizes()),
    "stalls": lambda: stalls.main(sizes()),
}


def main() -> None:
    chosen = sys.argv[1:] or list(SUITES)
    lines = [
        "# Benchmark results",
        "",
        f"- date: {datetime.date.today().isoformat()}",
        f"- machine: {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}",
        f"- versions: modelcrate {mc.__version__}, torch {torch.__version__}, "
        f"onnxruntime {onnxruntime.__version__}, numpy {np.__version__}",
        f"- last command: `python benchmarks/run.py {' '.join(chosen)}` (`make bench` runs "
        "all; a partial run replaces only its own sections)",
        "",
    ]
    sections = previous_sections()  # suites not run this time keep their last figures
    for name in chosen:
        fresh = SUITES[name]()
        sections[fresh[0]] = fresh
    for heading in sorted(sections, key=order):
        lines += sections[heading]
        if lines[-1]:
            lines.append("")  # a blank line before the next heading
    (HERE / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def previous_sections() -> dict[str, list[str]]:
    """The '## ' sections of the current results.md, by heading line."""
    path = HERE / "results.md"
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in path.read_text().splitlines() if path.exists() else []:
        if line.startswith("## "):
            current = sections.setdefault(line, [])
        if current is not None:
            current.append(line)
    return sections


def order(heading: str) -> int:
    """Sections in suite order (foundation, optimizing, serving, registry)."""
    words = [
        "Foundation",
        "Optimize",
        "Serving",
        "Registry (",
        "Registry at scale",
        "CLI",
        "Diff",
        "Overload",
        "Loader stalls",
        "Migration",
    ]
    return next((i for i, w in enumerate(words) if heading.startswith(f"## {w}")), len(words))


if __name__ == "__main__":
    main()
