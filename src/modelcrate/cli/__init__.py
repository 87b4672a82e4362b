"""The ``modelcrate`` command. Each command parses options, calls the Python API, renders.

Errors from modelcrate become one line on stderr and the error's exit code
(1, or 2 for usage errors); ``--debug`` shows the traceback instead. Only the module that
defines the command being run is imported, and only that command is built (``COMMANDS``);
``--help`` and unknown commands get every one.
"""

from __future__ import annotations

import importlib
import sys
from typing import Annotated

import typer
from rich.markup import escape

from modelcrate.cli.output import errors
from modelcrate.errors import ModelcrateError

MODULES = (  # the order --help lists them in
    "crates",
    "registry",
    "aliases",
    "predict",
    "serving",
    "optimizing",
    "trust",
    "reuse",
    "deploy",
    "diff",
    "webhooks",
    "rollouts",
)
COMMANDS = {  # command (or command group) -> the module whose register() adds it
    **dict.fromkeys(("pack", "inspect"), "crates"),
    **dict.fromkeys(
        ("publish", "list", "show", "pull", "verify", "delete", "gc", "backup", "restore"),
        "registry",
    ),
    **dict.fromkeys(("du", "push"), "registry"),
    **dict.fromkeys(("alias", "rollback"), "aliases"),
    "predict": "predict",
    **dict.fromkeys(("serve", "ui", "bench"), "serving"),
    **dict.fromkeys(("optimize", "compare", "convert", "eval"), "optimizing"),
    **dict.fromkeys(("keys", "policy", "sign", "encrypt", "audit"), "trust"),
    **dict.fromkeys(("finetune", "features", "layers", "pipeline", "ensemble", "lineage"), "reuse"),
    "export": "deploy",
    "diff": "diff",
    "webhooks": "webhooks",
    "rollout": "rollouts",
}


def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
) -> None:
    """Package, publish and reuse neural-network models."""


def build(command: str | None = None) -> typer.Typer:
    """The CLI app with just ``command`` (from the module that defines it), or with every
    command when ``command`` is None or unknown."""
    app = typer.Typer(
        name="modelcrate",
        help="Package, publish and reuse neural-network models.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
    )
    app.callback()(_root)
    if command not in COMMANDS:
        for module in MODULES:
            importlib.import_module(f"modelcrate.cli.{module}").register(app)
        return app
    importlib.import_module(f"modelcrate.cli.{COMMANDS[command]}").register(app)
    # typer inspects every option of every registered command on each call: keep just one
    app.registered_commands = [c for c in app.registered_commands if c.name == command]
    app.registered_groups = [g for g in app.registered_groups if g.name == command]
    return app


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the CLI and turn errors into one line and an exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    command = next(
        (a for a in args if not a.startswith("-")), None
    )  # --debug: the only root option
    try:
        app = build(command)
        app(args=args, prog_name="modelcrate")  # standalone: usage errors exit 2 by themselves
    except ModelcrateError as exc:
        if debug:
            raise
        errors.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True)
        return exc.exit_code
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
