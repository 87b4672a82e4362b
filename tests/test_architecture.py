"""The shape of the code: no import cycle anywhere (function-level imports included), the
layer contracts in pyproject.toml, and a CLI whose metadata commands import no framework."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[1]
FRAMEWORKS = ("torch", "tensorflow", "onnx", "onnxruntime", "starlette", "uvicorn", "numpy")
# What metadata commands never import (validation libraries included: the manifest's
# records check crate.json themselves).
METADATA_FREE = (*FRAMEWORKS, "sqlalchemy", "alembic", "pydantic", "jsonschema")


def test_no_module_imports_itself_through_others() -> None:
    """Every import, at module level or inside a function, points down the graph (type-only
    imports are not imports at run time)."""
    graph = grimp.build_graph("modelcrate", exclude_type_checking_imports=True)
    modules = sorted(graph.modules)
    edges = {m: graph.find_modules_directly_imported_by(m) for m in modules}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(module: str) -> None:  # Tarjan's strongly connected components
        index[module] = low[module] = len(index)
        stack.append(module)
        for other in edges[module]:
            if other not in index:
                visit(other)
                low[module] = min(low[module], low[other])
            elif other in stack:
                low[module] = min(low[module], index[other])
        if low[module] == index[module]:
            component = []
            while True:
                top = stack.pop()
                component.append(top)
                if top == module:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for module in modules:
        if module not in index:
            visit(module)
    assert cycles == []


def test_the_layer_contracts_hold() -> None:
    result = subprocess.run(
        [str(Path(sys.executable).with_name("lint-imports"))],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout[-3000:]
    assert "0 broken" in result.stdout


def test_metadata_commands_import_no_framework(tmp_path: Path) -> None:
    """`--help`, `list`, `show` and `inspect` answer without torch, ONNX, ONNX Runtime,
    numpy, the server, SQLAlchemy, pydantic or jsonschema."""
    import modelcrate as mc
    from conftest import make_onnx

    crate = mc.pack(make_onnx(tmp_path / "m.onnx"), name="tiny", version="1.0.0")
    crate.save(tmp_path / "tiny.crate")
    registry = tmp_path / "registry"
    with mc.Registry.open(registry) as opened:
        opened.publish(crate)
    probe = (
        "import json, sys\n"
        "from modelcrate.cli import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        f"heavy = {{m.split('.')[0] for m in sys.modules}} & {set(METADATA_FREE)!r}\n"
        "print(json.dumps(sorted(heavy)), file=sys.stderr)\n"
    )
    for args in (
        ["--help"],
        ["list", "--registry", str(registry)],
        ["show", "tiny", "--registry", str(registry)],
        ["inspect", "tiny@1.0.0", "--registry", str(registry)],
        ["inspect", str(tmp_path / "tiny.crate")],
    ):
        run = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True)
        imported = json.loads(run.stderr.strip().splitlines()[-1])
        assert imported == [], (args, imported)


def test_the_command_table_names_the_module_of_every_command() -> None:
    """`modelcrate X` builds only X, from the module COMMANDS names for it: that module must
    register X, and every command must be in the table."""
    from modelcrate.cli import COMMANDS, build

    assert set(build().commands) == set(COMMANDS)
    for name in COMMANDS:
        assert set(build(name).commands) == {name}
