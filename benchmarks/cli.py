"""How fast the CLI answers: metadata commands against `python -c pass` (issue: one shape).

Each command runs as a fresh process on a registry with one published version, 9 times;
the table gives median wall seconds and the ratio to `python -c pass` measured in the same
run (goal: at most 15x), plus the seconds spent importing (python -X importtime). The
package's bytecode is compiled first, as `pip install` does (a checkout run with
PYTHONDONTWRITEBYTECODE would otherwise recompile every module on every call).
"""

from __future__ import annotations

import compileall
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import modelcrate as mc

ROUNDS = 9
GOAL = 15.0


def wall(args: list[str], before: Callable[[], object] = lambda: None) -> float:
    """Median wall seconds of ``python ARGS``; ``before`` runs ahead of each call."""
    times = []
    for _ in range(ROUNDS):
        before()
        started = time.perf_counter()
        subprocess.run([sys.executable, *args], check=True, capture_output=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def import_seconds(args: list[str], before: Callable[[], object] = lambda: None) -> float:
    """Cumulative import time of the top-level imports (python -X importtime)."""
    before()
    run = subprocess.run(
        [sys.executable, "-X", "importtime", *args], capture_output=True, text=True, check=True
    )
    total = 0
    for line in run.stderr.splitlines():
        match = re.match(r"import time:\s+\d+ \|\s+(\d+) \| (\S.*)$", line)
        if match and not match.group(2).startswith(" "):
            total += int(match.group(1))
    return total / 1e6


def main() -> list[str]:
    compileall.compile_dir(Path(mc.__file__).parent, quiet=1)
    with tempfile.TemporaryDirectory(prefix="mc-bench-cli-") as scratch:
        root = Path(scratch)
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from conftest import make_onnx

        registry = mc.Registry.open(root / "registry")
        crate = mc.pack(make_onnx(root / "m.onnx"), name="tiny", version="1.0.0")
        registry.publish(crate)
        crate.save(root / "tiny.crate")
        at = ["--registry", str(registry.root)]
        commands = {
            "--help": ["--help"],
            "list": ["list", *at],
            "show tiny": ["show", "tiny", *at],
            "alias set": ["alias", "set", "tiny", "prod", "1.0.0", *at],
            "rollback": ["rollback", "tiny", "prod", *at],
            "inspect FILE": ["inspect", str(root / "tiny.crate")],
        }
        baseline = wall(["-c", "pass"])
        lines = [
            "## CLI latency (issue 14)",
            "",
            f"Fresh process per call, median of {ROUNDS}; `python -c pass` = "
            f"{baseline * 1000:.0f} ms in the same run; goal: at most {GOAL:g}x.",
            "",
            "| command | wall ms | x python -c pass | import ms | goal |",
            "| --- | --- | --- | --- | --- |",
        ]

        def move() -> object:  # a rollback needs a move to undo before each call
            return registry.set_alias("tiny", "prod", "1.0.0")

        for label, args in commands.items():
            command = ["-m", "modelcrate", *args]
            before = move if label == "rollback" else (lambda: None)
            seconds, imports = wall(command, before), import_seconds(command, before)
            ratio = seconds / baseline
            lines.append(
                f"| `{label}` | {seconds * 1000:.0f} | {ratio:.1f} | {imports * 1000:.0f} | "
                f"{'met' if ratio <= GOAL else 'missed'} |"
            )
        registry.close()
    lines += [
        "",
        "The metadata commands import no framework (torch, ONNX, ONNX Runtime, numpy, the "
        "server), no SQLAlchemy (only a schema migration imports it) and no pydantic or "
        "jsonschema (the manifest's msgspec records check crate.json in one pass); only the "
        "module of the command being run is imported. The CLI is built on click: Typer, "
        "which DESIGN.md names, builds a pydantic validator for every option on each call "
        "(docs/design-notes.md).",
        "",
    ]
    return lines


if __name__ == "__main__":
    print("\n".join(main()))
